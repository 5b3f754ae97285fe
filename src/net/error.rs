//! Every error the HTTP APIs answer, mapped to the wire in this one place:
//! DESIGN §4's table for the public API ([`Refusal`], from the core) and the
//! admin API's ([`AdminError`]). Both answer `application/json`
//! `{"status": N, "code": "CODE", "message": "..."}`.
//!
//! One code, two statuses, on purpose: `UNKNOWN_PREFIX` is a 404 when a
//! client resolves a code of another CMP (there is nothing here to find)
//! and a 400 when an operator tries to register one (the request is wrong).

use std::time::Duration;

use axum::response::IntoResponse;
use bytes::Bytes;
use http::header::{CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderValue, Response, StatusCode};
use serde::Serialize;

use crate::core::{Refusal, retry_after_secs};

/// The body of every error answer, on both APIs (`Error` in the API
/// document).
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = Error)]
pub struct ErrorBody<'a> {
    pub status: u16,
    #[schema(inline)]
    pub code: ErrorCode,
    pub message: &'a str,
}

/// Declares [`ErrorCode`]: each code once, with its wire name.
macro_rules! error_codes {
    ($($variant:ident => $wire:literal,)*) => {
        /// Every error code the HTTP APIs answer. The API document lists
        /// exactly these ([`ErrorCode::ALL`]), and an answer can carry no
        /// other: the tables below map each refusal to one of them.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum ErrorCode {
            $($variant,)*
        }

        impl ErrorCode {
            pub const ALL: &[ErrorCode] = &[$(ErrorCode::$variant,)*];

            pub const fn as_str(self) -> &'static str {
                match self {
                    $(ErrorCode::$variant => $wire,)*
                }
            }
        }
    };
}

error_codes! {
    AssociationMismatch => "ASSOCIATION_MISMATCH",
    BindingsFull => "BINDINGS_FULL",
    BodyTooLarge => "BODY_TOO_LARGE",
    ClientidRequired => "CLIENTID_REQUIRED",
    CodeNotFound => "CODE_NOT_FOUND",
    FollowerStopped => "FOLLOWER_STOPPED",
    Forbidden => "FORBIDDEN",
    InvalidBody => "INVALID_BODY",
    InvalidClientid => "INVALID_CLIENTID",
    InvalidCode => "INVALID_CODE",
    InvalidHeader => "INVALID_HEADER",
    InvalidIp => "INVALID_IP",
    InvalidMsisdn => "INVALID_MSISDN",
    InvalidPath => "INVALID_PATH",
    InvalidQuery => "INVALID_QUERY",
    InvalidRules => "INVALID_RULES",
    InvalidTarget => "INVALID_TARGET",
    InvalidToken => "INVALID_TOKEN",
    InvalidTtl => "INVALID_TTL",
    LogUnavailable => "LOG_UNAVAILABLE",
    MethodNotAllowed => "METHOD_NOT_ALLOWED",
    NotFound => "NOT_FOUND",
    NotInClusterMode => "NOT_IN_CLUSTER_MODE",
    NotInMnoNetwork => "NOT_IN_MNO_NETWORK",
    NotReady => "NOT_READY",
    NoAssociation => "NO_ASSOCIATION",
    NoSession => "NO_SESSION",
    Overloaded => "OVERLOADED",
    RateLimited => "RATE_LIMITED",
    ReloadRefused => "RELOAD_REFUSED",
    RequestTooLarge => "REQUEST_TOO_LARGE",
    RetryOnMnoNetwork => "RETRY_ON_MNO_NETWORK",
    SubscriberUnknown => "SUBSCRIBER_UNKNOWN",
    Unauthorized => "UNAUTHORIZED",
    Unavailable => "UNAVAILABLE",
    UnknownPrefix => "UNKNOWN_PREFIX",
    UpstreamUnavailable => "UPSTREAM_UNAVAILABLE",
}

impl Serialize for ErrorCode {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl utoipa::PartialSchema for ErrorCode {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        let codes = ErrorCode::ALL.iter().map(|c| c.as_str());
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::Type::String)
            .enum_values(Some(codes))
            .into()
    }
}

impl utoipa::ToSchema for ErrorCode {}

/// DESIGN §4's table: status and code of each refusal.
pub fn wire_error(refusal: &Refusal) -> (StatusCode, ErrorCode) {
    match refusal {
        Refusal::InvalidCode(_) => (StatusCode::BAD_REQUEST, ErrorCode::InvalidCode),
        Refusal::InvalidClientId(_) => (StatusCode::BAD_REQUEST, ErrorCode::InvalidClientid),
        Refusal::ClientIdRequired => (StatusCode::UNAUTHORIZED, ErrorCode::ClientidRequired),
        Refusal::RetryOnMnoNetwork => (StatusCode::FORBIDDEN, ErrorCode::RetryOnMnoNetwork),
        Refusal::SubscriberUnknown => (StatusCode::FORBIDDEN, ErrorCode::SubscriberUnknown),
        Refusal::AssociationMismatch => (StatusCode::FORBIDDEN, ErrorCode::AssociationMismatch),
        Refusal::CodeNotFound => (StatusCode::NOT_FOUND, ErrorCode::CodeNotFound),
        Refusal::UnknownPrefix => (StatusCode::NOT_FOUND, ErrorCode::UnknownPrefix),
        Refusal::UpstreamUnavailable => (
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::UpstreamUnavailable,
        ),
        Refusal::RateLimited { .. } => (StatusCode::TOO_MANY_REQUESTS, ErrorCode::RateLimited),
        Refusal::Overloaded => (StatusCode::SERVICE_UNAVAILABLE, ErrorCode::Overloaded),
        Refusal::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, ErrorCode::Unavailable),
        Refusal::RequestTooLarge => (StatusCode::URI_TOO_LONG, ErrorCode::RequestTooLarge),
        Refusal::NotFound => (StatusCode::NOT_FOUND, ErrorCode::NotFound),
        Refusal::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, ErrorCode::MethodNotAllowed),
        Refusal::RepeatedHeader(_) => (StatusCode::BAD_REQUEST, ErrorCode::InvalidHeader),
    }
}

/// How long a client should wait after a 503 the server chose (its load,
/// its log, a peer): short, so that it comes back as soon as it may work.
const SERVER_BUSY_WAIT: Duration = Duration::from_secs(1);

/// The `Retry-After` seconds of the refusals that carry one: every wait
/// goes through [`retry_after_secs`] (rounded up, at least 1).
pub fn retry_after(refusal: &Refusal) -> Option<u64> {
    let wait = match refusal {
        Refusal::RateLimited { wait } => *wait,
        Refusal::Overloaded | Refusal::Unavailable | Refusal::UpstreamUnavailable => {
            SERVER_BUSY_WAIT
        }
        _ => return None,
    };
    Some(retry_after_secs(wait))
}

pub fn json_response(status: StatusCode, body: Vec<u8>) -> Response<Bytes> {
    let mut response = Response::new(Bytes::from(body));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

pub fn error_response(refusal: &Refusal) -> Response<Bytes> {
    let (status, code) = wire_error(refusal);
    let message = refusal.to_string();
    let body = ErrorBody {
        status: status.as_u16(),
        code,
        message: &message,
    };
    let mut response = json_response(status, serde_json::to_vec(&body).expect("serialisable"));
    if let Some(secs) = retry_after(refusal) {
        response
            .headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from(secs));
    }
    response
}

/// What the admin API refuses, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdminError {
    #[error("missing or wrong bearer token")]
    Unauthorized,
    /// A JWT of the identity provider that does not pass: why.
    #[error("{0}")]
    InvalidToken(String),
    #[error("the token {name:?} lacks the role {role}")]
    Forbidden { name: String, role: &'static str },
    #[error("replaying the event log")]
    NotReady,
    #[error("the event log refuses writes after a disk error; restart once the disk is fixed")]
    LogUnavailable,
    #[error("this node stopped following the cluster stream: {0}")]
    FollowerStopped(String),
    /// What cluster mode cannot do here, and why.
    #[error("{0}")]
    NotInClusterMode(String),
    #[error("the event log refused the write; see the server log")]
    Unavailable,
    #[error("no such admin resource")]
    NotFound,
    #[error("this resource does not take that method")]
    MethodNotAllowed,
    #[error("{0}")]
    InvalidPath(String),
    #[error("{0}")]
    InvalidBody(String),
    #[error("{0}")]
    InvalidQuery(String),
    #[error("admin bodies are at most {0} bytes")]
    BodyTooLarge(usize),
    #[error("{0}")]
    InvalidCode(String),
    #[error("{0}")]
    InvalidClientId(String),
    #[error("expected an IPv4 or IPv6 address, or a prefix such as 2001:db8:1:2::/64")]
    InvalidIp,
    #[error("{0}")]
    InvalidMsisdn(String),
    #[error("ttl_secs must be 1 to {0} (31 days)")]
    InvalidTtl(u64),
    #[error("target must be an http(s) URL of at most 2048 characters without spaces")]
    InvalidTarget,
    #[error("{0}")]
    InvalidRules(String),
    #[error("this CMP does not own the code's routing prefix")]
    UnknownPrefix,
    #[error("the address is outside mno.networks, so the binding would never be used")]
    NotInMnoNetwork,
    #[error("the session bindings table is full (radius.max_bindings)")]
    BindingsFull,
    #[error("no such code")]
    CodeNotFound,
    #[error("this clientid has no association")]
    NoAssociation,
    #[error("no live binding for this address")]
    NoSession,
    #[error("reload refused, the running configuration is kept: {0}")]
    ReloadRefused(String),
}

impl AdminError {
    /// The admin API's table: status and code of each error.
    pub fn wire(&self) -> (StatusCode, ErrorCode) {
        match self {
            AdminError::Unauthorized => (StatusCode::UNAUTHORIZED, ErrorCode::Unauthorized),
            AdminError::InvalidToken(_) => (StatusCode::UNAUTHORIZED, ErrorCode::InvalidToken),
            AdminError::Forbidden { .. } => (StatusCode::FORBIDDEN, ErrorCode::Forbidden),
            AdminError::NotReady => (StatusCode::SERVICE_UNAVAILABLE, ErrorCode::NotReady),
            AdminError::LogUnavailable => {
                (StatusCode::SERVICE_UNAVAILABLE, ErrorCode::LogUnavailable)
            }
            AdminError::FollowerStopped(_) => {
                (StatusCode::SERVICE_UNAVAILABLE, ErrorCode::FollowerStopped)
            }
            AdminError::NotInClusterMode(_) => (StatusCode::CONFLICT, ErrorCode::NotInClusterMode),
            AdminError::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, ErrorCode::Unavailable),
            AdminError::NotFound => (StatusCode::NOT_FOUND, ErrorCode::NotFound),
            AdminError::MethodNotAllowed => {
                (StatusCode::METHOD_NOT_ALLOWED, ErrorCode::MethodNotAllowed)
            }
            AdminError::InvalidPath(_) => (StatusCode::BAD_REQUEST, ErrorCode::InvalidPath),
            AdminError::InvalidBody(_) => (StatusCode::BAD_REQUEST, ErrorCode::InvalidBody),
            AdminError::InvalidQuery(_) => (StatusCode::BAD_REQUEST, ErrorCode::InvalidQuery),
            AdminError::BodyTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, ErrorCode::BodyTooLarge),
            AdminError::InvalidCode(_) => (StatusCode::BAD_REQUEST, ErrorCode::InvalidCode),
            AdminError::InvalidClientId(_) => (StatusCode::BAD_REQUEST, ErrorCode::InvalidClientid),
            AdminError::InvalidIp => (StatusCode::BAD_REQUEST, ErrorCode::InvalidIp),
            AdminError::InvalidMsisdn(_) => (StatusCode::BAD_REQUEST, ErrorCode::InvalidMsisdn),
            AdminError::InvalidTtl(_) => (StatusCode::BAD_REQUEST, ErrorCode::InvalidTtl),
            AdminError::InvalidTarget => (StatusCode::BAD_REQUEST, ErrorCode::InvalidTarget),
            AdminError::InvalidRules(_) => (StatusCode::BAD_REQUEST, ErrorCode::InvalidRules),
            AdminError::UnknownPrefix => (StatusCode::BAD_REQUEST, ErrorCode::UnknownPrefix),
            AdminError::NotInMnoNetwork => (StatusCode::BAD_REQUEST, ErrorCode::NotInMnoNetwork),
            AdminError::BindingsFull => (StatusCode::SERVICE_UNAVAILABLE, ErrorCode::BindingsFull),
            AdminError::CodeNotFound => (StatusCode::NOT_FOUND, ErrorCode::CodeNotFound),
            AdminError::NoAssociation => (StatusCode::NOT_FOUND, ErrorCode::NoAssociation),
            AdminError::NoSession => (StatusCode::NOT_FOUND, ErrorCode::NoSession),
            AdminError::ReloadRefused(_) => {
                (StatusCode::UNPROCESSABLE_ENTITY, ErrorCode::ReloadRefused)
            }
        }
    }
}

impl IntoResponse for AdminError {
    fn into_response(self) -> axum::response::Response {
        let (status, code) = self.wire();
        let message = self.to_string();
        let body = ErrorBody {
            status: status.as_u16(),
            code,
            message: &message,
        };
        (status, axum::Json(body)).into_response()
    }
}
