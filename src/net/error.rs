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

#[derive(Debug, Serialize)]
pub struct ErrorBody<'a> {
    pub status: u16,
    pub code: &'static str,
    pub message: &'a str,
}

/// DESIGN §4's table: status and code of each refusal.
pub fn wire_error(refusal: &Refusal) -> (StatusCode, &'static str) {
    match refusal {
        Refusal::InvalidCode(_) => (StatusCode::BAD_REQUEST, "INVALID_CODE"),
        Refusal::InvalidClientId(_) => (StatusCode::BAD_REQUEST, "INVALID_CLIENTID"),
        Refusal::ClientIdRequired => (StatusCode::UNAUTHORIZED, "CLIENTID_REQUIRED"),
        Refusal::RetryOnMnoNetwork => (StatusCode::FORBIDDEN, "RETRY_ON_MNO_NETWORK"),
        Refusal::SubscriberUnknown => (StatusCode::FORBIDDEN, "SUBSCRIBER_UNKNOWN"),
        Refusal::AssociationMismatch => (StatusCode::FORBIDDEN, "ASSOCIATION_MISMATCH"),
        Refusal::CodeNotFound => (StatusCode::NOT_FOUND, "CODE_NOT_FOUND"),
        Refusal::UnknownPrefix => (StatusCode::NOT_FOUND, "UNKNOWN_PREFIX"),
        Refusal::UpstreamUnavailable => (StatusCode::SERVICE_UNAVAILABLE, "UPSTREAM_UNAVAILABLE"),
        Refusal::RateLimited { .. } => (StatusCode::TOO_MANY_REQUESTS, "RATE_LIMITED"),
        Refusal::Overloaded => (StatusCode::SERVICE_UNAVAILABLE, "OVERLOADED"),
        Refusal::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE"),
        Refusal::RequestTooLarge => (StatusCode::URI_TOO_LONG, "REQUEST_TOO_LARGE"),
        Refusal::NotFound => (StatusCode::NOT_FOUND, "NOT_FOUND"),
        Refusal::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "METHOD_NOT_ALLOWED"),
        Refusal::RepeatedHeader(_) => (StatusCode::BAD_REQUEST, "INVALID_HEADER"),
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
    pub fn wire(&self) -> (StatusCode, &'static str) {
        match self {
            AdminError::Unauthorized => (StatusCode::UNAUTHORIZED, "UNAUTHORIZED"),
            AdminError::InvalidToken(_) => (StatusCode::UNAUTHORIZED, "INVALID_TOKEN"),
            AdminError::Forbidden { .. } => (StatusCode::FORBIDDEN, "FORBIDDEN"),
            AdminError::NotReady => (StatusCode::SERVICE_UNAVAILABLE, "NOT_READY"),
            AdminError::LogUnavailable => (StatusCode::SERVICE_UNAVAILABLE, "LOG_UNAVAILABLE"),
            AdminError::FollowerStopped(_) => (StatusCode::SERVICE_UNAVAILABLE, "FOLLOWER_STOPPED"),
            AdminError::NotInClusterMode(_) => (StatusCode::CONFLICT, "NOT_IN_CLUSTER_MODE"),
            AdminError::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE"),
            AdminError::NotFound => (StatusCode::NOT_FOUND, "NOT_FOUND"),
            AdminError::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "METHOD_NOT_ALLOWED"),
            AdminError::InvalidPath(_) => (StatusCode::BAD_REQUEST, "INVALID_PATH"),
            AdminError::InvalidBody(_) => (StatusCode::BAD_REQUEST, "INVALID_BODY"),
            AdminError::InvalidQuery(_) => (StatusCode::BAD_REQUEST, "INVALID_QUERY"),
            AdminError::BodyTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "BODY_TOO_LARGE"),
            AdminError::InvalidCode(_) => (StatusCode::BAD_REQUEST, "INVALID_CODE"),
            AdminError::InvalidClientId(_) => (StatusCode::BAD_REQUEST, "INVALID_CLIENTID"),
            AdminError::InvalidIp => (StatusCode::BAD_REQUEST, "INVALID_IP"),
            AdminError::InvalidMsisdn(_) => (StatusCode::BAD_REQUEST, "INVALID_MSISDN"),
            AdminError::InvalidTtl(_) => (StatusCode::BAD_REQUEST, "INVALID_TTL"),
            AdminError::InvalidTarget => (StatusCode::BAD_REQUEST, "INVALID_TARGET"),
            AdminError::InvalidRules(_) => (StatusCode::BAD_REQUEST, "INVALID_RULES"),
            AdminError::UnknownPrefix => (StatusCode::BAD_REQUEST, "UNKNOWN_PREFIX"),
            AdminError::NotInMnoNetwork => (StatusCode::BAD_REQUEST, "NOT_IN_MNO_NETWORK"),
            AdminError::BindingsFull => (StatusCode::SERVICE_UNAVAILABLE, "BINDINGS_FULL"),
            AdminError::CodeNotFound => (StatusCode::NOT_FOUND, "CODE_NOT_FOUND"),
            AdminError::NoAssociation => (StatusCode::NOT_FOUND, "NO_ASSOCIATION"),
            AdminError::NoSession => (StatusCode::NOT_FOUND, "NO_SESSION"),
            AdminError::ReloadRefused(_) => (StatusCode::UNPROCESSABLE_ENTITY, "RELOAD_REFUSED"),
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
