//! The admin API (DESIGN §6): its own listener, plain HTTP, bearer token.
//!
//! `/healthz` and `/readyz` answer without the token (probes); everything
//! else needs `Authorization: Bearer <token>`. Until replay is done the
//! application is not there yet: `/readyz` says 503, and so does the rest.

// Handlers answer `Result<Response, Response>`, axum's idiom; the size of
// the error variant is axum's `Response`, not ours to shrink.
#![allow(clippy::result_large_err)]

use std::net::IpAddr;
use std::sync::{Arc, OnceLock};

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;
use serde_json::json;

use super::App;
use super::metrics::RuntimeLabel;
use super::resolve::ErrorBody;
use crate::wire::{ClientId, IndirectCode, Msisdn};

/// Shared by the admin handlers: the token, and the application once ready.
#[derive(Debug)]
pub struct AdminState {
    pub token: String,
    pub app: OnceLock<Arc<App>>,
}

pub fn router(state: Arc<AdminState>) -> axum::Router {
    let guarded = axum::Router::new()
        .route(
            "/admin/v1/codes/{code}",
            get(get_code).put(put_code).delete(delete_code),
        )
        .route(
            "/admin/v1/associations/{clientid}",
            get(get_association).delete(delete_association),
        )
        .route(
            "/admin/v1/sessions/{ip}",
            get(get_session).put(put_session).delete(delete_session),
        )
        .route("/metrics", get(metrics))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token));
    axum::Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .merge(guarded)
        .fallback(|| async { error(StatusCode::NOT_FOUND, "NOT_FOUND", "no such admin resource") })
        .with_state(state)
}

fn error(status: StatusCode, code: &'static str, message: &str) -> Response {
    let body = ErrorBody {
        status: status.as_u16(),
        code,
        message,
    };
    (status, Json(body)).into_response()
}

async fn require_token(
    State(state): State<Arc<AdminState>>,
    request: Request,
    next: Next,
) -> Response {
    let given = request
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    let equal =
        aws_lc_rs::constant_time::verify_slices_are_equal(given.as_bytes(), state.token.as_bytes())
            .is_ok();
    if !equal {
        return error(
            StatusCode::UNAUTHORIZED,
            "UNAUTHORIZED",
            "missing or wrong bearer token",
        );
    }
    next.run(request).await
}

/// The application, or 503 while replay is still running.
fn ready(state: &AdminState) -> Result<&Arc<App>, Response> {
    state.app.get().ok_or_else(|| {
        error(
            StatusCode::SERVICE_UNAVAILABLE,
            "NOT_READY",
            "replaying the event log",
        )
    })
}

async fn readyz(State(state): State<Arc<AdminState>>) -> Response {
    match ready(&state) {
        Ok(_) => "ready\n".into_response(),
        Err(response) => response,
    }
}

async fn metrics(Ready(app): Ready) -> Response {
    let counts = app.store.index().counts();
    let m = &app.metrics;
    m.index_associations.set(counts.associations as i64);
    m.index_subscribers.set(counts.subscribers as i64);
    m.index_codes.set(counts.codes as i64);
    m.sessions.set(app.sessions.len() as i64);
    m.last_seq.set(app.store.log().last_seq());
    for (runtime, lag) in [
        ("main", &app.limits.main_lag),
        ("quic", &app.limits.quic_lag),
    ] {
        if let Some(lag) = lag {
            let label = RuntimeLabel { runtime };
            m.runtime_lag
                .get_or_create(&label)
                .set(lag.average().as_secs_f64());
            m.overloaded
                .get_or_create(&label)
                .set(i64::from(lag.overloaded()));
        }
    }
    (
        [(
            http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        m.encode(),
    )
        .into_response()
}

fn unavailable(e: impl std::fmt::Display) -> Response {
    tracing::error!(error = %e, "admin change not stored");
    error(
        StatusCode::SERVICE_UNAVAILABLE,
        "UNAVAILABLE",
        "the event log refused the write; see the server log",
    )
}

/// Handlers answer `Ok` with their JSON, `Err` with an error response.
type Answer = Result<Response, Response>;

/// The application, for handlers that need it: 503 until replay is done.
struct Ready(Arc<App>);

impl axum::extract::FromRequestParts<Arc<AdminState>> for Ready {
    type Rejection = Response;

    async fn from_request_parts(
        _parts: &mut http::request::Parts,
        state: &Arc<AdminState>,
    ) -> Result<Self, Response> {
        ready(state).cloned().map(Ready)
    }
}

fn parse_code(text: &str) -> Result<IndirectCode, Response> {
    IndirectCode::parse(text)
        .map_err(|e| error(StatusCode::BAD_REQUEST, "INVALID_CODE", &e.to_string()))
}

fn parse_clientid(text: &str) -> Result<ClientId, Response> {
    ClientId::parse(text)
        .map_err(|e| error(StatusCode::BAD_REQUEST, "INVALID_CLIENTID", &e.to_string()))
}

fn parse_ip(text: &str) -> Result<IpAddr, Response> {
    text.parse().map_err(|_| {
        error(
            StatusCode::BAD_REQUEST,
            "INVALID_IP",
            "expected an IPv4 or IPv6 address",
        )
    })
}

fn body<T>(body: Result<Json<T>, JsonRejection>, expected: &str) -> Result<T, Response> {
    body.map(|Json(b)| b).map_err(|e| {
        error(
            StatusCode::BAD_REQUEST,
            "INVALID_BODY",
            &format!("{e}; expected {expected}"),
        )
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CodeBody {
    target: String,
}

/// Longest accepted target URL.
const MAX_TARGET_LEN: usize = 2048;

fn valid_target(target: &str) -> bool {
    (target.starts_with("https://") || target.starts_with("http://"))
        && target.len() <= MAX_TARGET_LEN
        && target.len() > "https://".len()
        && !target.chars().any(|c| c.is_whitespace() || c.is_control())
}

async fn put_code(
    Ready(app): Ready,
    Path(code): Path<String>,
    json: Result<Json<CodeBody>, JsonRejection>,
) -> Answer {
    let code = parse_code(&code)?;
    let CodeBody { target } = body(json, r#"{"target": "https://..."}"#)?;
    if !app
        .config
        .policy
        .routing_prefixes
        .iter()
        .any(|p| p.as_str() == code.prefix())
    {
        return Err(error(
            StatusCode::BAD_REQUEST,
            "UNKNOWN_PREFIX",
            "this CMP does not own the code's routing prefix",
        ));
    }
    if !valid_target(&target) {
        return Err(error(
            StatusCode::BAD_REQUEST,
            "INVALID_TARGET",
            "target must be an http(s) URL of at most 2048 characters without spaces",
        ));
    }
    let seq = app
        .store
        .register_code(&code, &target, super::now_ms())
        .await
        .map_err(unavailable)?;
    Ok(Json(json!({"code": code.as_str(), "target": target, "seq": seq})).into_response())
}

async fn get_code(Ready(app): Ready, Path(code): Path<String>) -> Answer {
    let code = parse_code(&code)?;
    let entry = app
        .store
        .index()
        .code(&code)
        .ok_or_else(|| error(StatusCode::NOT_FOUND, "CODE_NOT_FOUND", "no such code"))?;
    Ok(
        Json(json!({"code": code.as_str(), "target": &*entry.target, "seq": entry.seq}))
            .into_response(),
    )
}

async fn delete_code(Ready(app): Ready, Path(code): Path<String>) -> Answer {
    let code = parse_code(&code)?;
    let removed = app
        .store
        .remove_code(&code, super::now_ms())
        .await
        .map_err(unavailable)?;
    if !removed {
        return Err(error(
            StatusCode::NOT_FOUND,
            "CODE_NOT_FOUND",
            "no such code",
        ));
    }
    Ok(Json(json!({"code": code.as_str(), "removed": true})).into_response())
}

fn no_association() -> Response {
    error(
        StatusCode::NOT_FOUND,
        "NO_ASSOCIATION",
        "this clientid has no association",
    )
}

async fn get_association(Ready(app): Ready, Path(clientid): Path<String>) -> Answer {
    let clientid = parse_clientid(&clientid)?;
    let a = app
        .store
        .index()
        .association(clientid.as_str())
        .ok_or_else(no_association)?;
    Ok(Json(json!({
        "clientid": clientid.as_str(),
        "subscriber": a.subscriber.to_hex(),
        "since": crate::sre::rfc3339(a.since_ms),
        "seq": a.seq,
    }))
    .into_response())
}

async fn delete_association(Ready(app): Ready, Path(clientid): Path<String>) -> Answer {
    let clientid = parse_clientid(&clientid)?;
    app.store
        .revoke(&clientid, super::now_ms())
        .await
        .map_err(unavailable)?
        .ok_or_else(no_association)?;
    Ok(Json(json!({"clientid": clientid.as_str(), "revoked": true})).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SessionBody {
    msisdn: String,
    /// Seconds the binding lives; default `auth.session_ttl_secs`.
    ttl_secs: Option<u64>,
}

async fn put_session(
    Ready(app): Ready,
    Path(ip): Path<String>,
    json: Result<Json<SessionBody>, JsonRejection>,
) -> Answer {
    let ip = parse_ip(&ip)?;
    let SessionBody { msisdn, ttl_secs } = body(json, r#"{"msisdn": "+E164"}"#)?;
    let msisdn = Msisdn::parse(&msisdn)
        .map_err(|e| error(StatusCode::BAD_REQUEST, "INVALID_MSISDN", &e.to_string()))?;
    if !app.config.mno.is_mno_address(ip) {
        return Err(error(
            StatusCode::BAD_REQUEST,
            "NOT_IN_MNO_NETWORK",
            "the address is outside mno.networks, so the binding would never be used",
        ));
    }
    let ttl_ms = ttl_secs.map_or(app.config.session_ttl.as_millis() as u64, |s| {
        s.saturating_mul(1000)
    });
    let expires_ms = super::now_ms().saturating_add(ttl_ms);
    let subscriber = app.key.subscriber_ref(&msisdn);
    app.sessions.bind(ip, subscriber, expires_ms);
    Ok(Json(json!({
        "ip": ip,
        "subscriber": subscriber.to_hex(),
        "expires": crate::sre::rfc3339(expires_ms),
    }))
    .into_response())
}

fn no_session() -> Response {
    error(
        StatusCode::NOT_FOUND,
        "NO_SESSION",
        "no live binding for this address",
    )
}

async fn get_session(Ready(app): Ready, Path(ip): Path<String>) -> Answer {
    let ip = parse_ip(&ip)?;
    let subscriber = app
        .sessions
        .lookup(ip, super::now_ms())
        .ok_or_else(no_session)?;
    Ok(Json(json!({"ip": ip, "subscriber": subscriber.to_hex()})).into_response())
}

async fn delete_session(Ready(app): Ready, Path(ip): Path<String>) -> Answer {
    let ip = parse_ip(&ip)?;
    if !app.sessions.unbind(ip) {
        return Err(no_session());
    }
    Ok(Json(json!({"ip": ip, "removed": true})).into_response())
}
