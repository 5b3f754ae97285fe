//! The admin API (DESIGN §6): its own listener, plain HTTP, bearer token.
//!
//! `/healthz` and `/readyz` answer without the token (probes); everything
//! else needs `Authorization: Bearer <token>` of a token with the role the
//! route needs ([`crate::access`]: the one table of who may do what). Until replay is done the
//! application is not there yet: `/readyz` says 503, and so does the rest.
//! `/readyz` says 503 again once the event log refuses writes (a failed
//! disk): the instance can still answer associated clients, but must not be
//! sent new ones.
//!
//! Bodies are JSON whatever their `Content-Type` says (`curl -d` sends a
//! form type), at most [`MAX_BODY_BYTES`]; every bad input is a JSON 4xx.

// Handlers answer `Result<Response, Response>`, axum's idiom; the size of
// the error variant is axum's `Response`, not ours to shrink.
#![allow(clippy::result_large_err)]

use std::net::IpAddr;
use std::sync::{Arc, OnceLock};

use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, Path, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Json};
use bytes::Bytes;
use futures_util::StreamExt;
use ipnet::IpNet;
use serde::Deserialize;
use serde::de::DeserializeOwned;

pub mod answers;

use super::error::{AdminError, ErrorBody};
use crate::access::Principal;
use crate::app::App;
use crate::metrics::RuntimeLabel;
use crate::sessions::{Bind, BindError};
use crate::store::index::Reader;
use crate::wire::{ClientId, IndirectCode, Msisdn};

/// Shared by the admin handlers: the tokens, and the application once ready.
#[derive(Debug)]
pub struct AdminState {
    pub tokens: crate::access::Tokens,
    /// `[admin.oidc]`: the identity provider's access tokens.
    pub oidc: Option<Arc<crate::oidc::Verifier>>,
    pub app: OnceLock<Arc<App>>,
    /// Served from the start: `/metrics` answers during replay too.
    pub metrics: Arc<crate::metrics::Metrics>,
    /// The API document, generated from this code on first use
    /// (`crate::net::openapi`, which reads this module: the composition
    /// root hands it over).
    pub api_document: fn() -> &'static str,
}

/// Largest admin request body; the bodies are a few hundred bytes.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// Longest binding a request may ask for (`ttl_secs`): 31 days.
pub const MAX_SESSION_TTL_SECS: u64 = 31 * 24 * 3600;

pub fn router(state: Arc<AdminState>) -> axum::Router {
    let guarded = axum::Router::new()
        .route(
            "/admin/v1/codes/{code}",
            get(get_code).put(put_code).delete(delete_code),
        )
        .route("/admin/v1/codes/{code}/stats", get(code_stats))
        .route("/admin/v1/codes:import", axum::routing::post(import_codes))
        .route("/admin/v1/codes:export", get(export_codes))
        .route(
            "/admin/v1/associations/{clientid}",
            get(get_association).delete(delete_association),
        )
        .route(
            "/admin/v1/subscribers/{msisdn}",
            get(get_subscriber).delete(delete_subscriber),
        )
        .route(
            "/admin/v1/sessions/{*ip}",
            get(get_session).put(put_session).delete(delete_session),
        )
        .route("/admin/v1/audit", get(audit))
        .route("/admin/v1/events", get(events))
        .route("/admin/v1/status", get(status))
        .route("/admin/v1/reload", axum::routing::post(reload))
        .route("/admin/v1/retention", axum::routing::post(retention))
        .route("/metrics", get(metrics))
        .route_layer(middleware::from_fn_with_state(state.clone(), authorize));
    axum::Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        // What holds no data: the API's description and the console's
        // files (the console asks for a token before it asks for data).
        .route("/admin/v1/openapi.json", get(openapi))
        .route("/admin/console", get(super::console::page))
        .route("/admin/console/{asset}", get(super::console::asset))
        .merge(guarded)
        .fallback(|| async { AdminError::NotFound.into_response() })
        .method_not_allowed_fallback(|| async { AdminError::MethodNotAllowed.into_response() })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

/// Accepts admin connections until `shutdown`: at most `max_connections`
/// at once (more are closed at once), each under the public listener's
/// header, idle and size limits ([`super::conn`]).
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: axum::Router,
    limits: crate::config::Limits,
    admission: crate::limits::Admission,
    metrics: Arc<crate::metrics::Metrics>,
    shutdown: tokio_util::sync::CancellationToken,
    tracker: tokio_util::task::TaskTracker,
) {
    let limits = Arc::new(limits);
    let admit = |peer: std::net::SocketAddr| {
        let transport = super::admit::Transport::Admin;
        let admitted = super::admit::admit_with(&admission, &metrics, transport, peer.ip());
        if let Err(reason) = admitted {
            tracing::warn!(reason, "admin connection refused");
        }
        admitted.ok()
    };
    let stop = shutdown.clone();
    let serve = move |stream, _peer, slot| {
        let (router, limits, shutdown) = (router.clone(), limits.clone(), stop.clone());
        async move {
            let _slot = slot;
            // Operators' tools: no conduct rule (a token is needed anyway).
            let conduct = super::conn::Conduct::new();
            super::conn::serve(stream, &limits, shutdown, conduct, move |request| {
                // The router is always ready; its error type is Infallible.
                let answer = tower::Service::call(&mut router.clone(), request);
                async move {
                    match answer.await {
                        Ok(response) => response,
                        Err(never) => match never {},
                    }
                }
            })
            .await;
        }
    };
    super::conn::accept(listener, shutdown, tracker, None, admit, serve).await;
}

/// Who is calling (a JWT of the identity provider, [`crate::oidc`], or a
/// token of [`crate::access::Tokens`]: 401 if no one) and whether
/// they hold the role the route needs ([`crate::access::required_role`]:
/// 403 naming it if not). The caller goes on as a [`Principal`] in the
/// request's extensions: the actor its changes are recorded under.
async fn authorize(
    State(state): State<Arc<AdminState>>,
    mut request: Request,
    next: Next,
) -> Response {
    let given = request
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| bearer(v.as_bytes()))
        .unwrap_or(b"");
    let principal = match &state.oidc {
        Some(provider) if crate::oidc::looks_like_jwt(given) => {
            match provider.verify(given).await {
                Ok(principal) => principal,
                Err(refusal) => {
                    return AdminError::InvalidToken(refusal.to_string()).into_response();
                }
            }
        }
        _ => match state.tokens.authenticate(given) {
            Some(principal) => principal,
            None => return AdminError::Unauthorized.into_response(),
        },
    };
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or("", |p| p.as_str());
    match crate::access::required_role(request.method(), route) {
        Some(role) if principal.roles.contains(role) => {}
        needed => {
            let forbidden = AdminError::Forbidden {
                name: principal.name,
                role: needed.map_or("(none grants it)", |r| r.name()),
            };
            return forbidden.into_response();
        }
    }
    request.extensions_mut().insert(principal);
    next.run(request).await
}

/// The credentials of an `Authorization: Bearer <token>` header; the scheme
/// name is case-insensitive (RFC 9110 §11.1). Raw bytes: a header that is
/// not UTF-8 simply does not match.
fn bearer(value: &[u8]) -> Option<&[u8]> {
    let space = value.iter().position(|&b| b == b' ')?;
    let (scheme, rest) = value.split_at(space);
    scheme
        .eq_ignore_ascii_case(b"bearer")
        .then(|| rest.trim_ascii())
}

/// Now, by `who`: how an admin change is recorded.
fn stamp(who: &Principal) -> crate::store::Stamp {
    crate::store::Stamp::by(crate::clock::now_ms(), &who.name)
}

/// The application, or 503 while replay is still running.
fn ready(state: &AdminState) -> Result<&Arc<App>, Response> {
    state
        .app
        .get()
        .ok_or_else(|| AdminError::NotReady.into_response())
}

/// `/healthz`: the process answers.
#[utoipa::path(get, path = "/healthz", tag = "operations", summary = "Liveness",
    responses((status = 200, description = "ok", body = String, content_type = "text/plain")))]
async fn healthz() -> &'static str {
    "ok\n"
}

/// `/readyz`: plain `ready` when all is well (what a load balancer's probe
/// matches); otherwise JSON, every answer with `ready` and `reason`: 200
/// `{"ready": true, "degraded": true, "reason"}` while a cluster node is cut
/// from JetStream, 503 with the error body (`status`, `code`, `message`)
/// and `"ready": false` for `NOT_READY`, `LOG_UNAVAILABLE` and
/// `FOLLOWER_STOPPED`.
#[utoipa::path(get, path = "/readyz", tag = "operations",
    summary = "Readiness: the log replayed and writable",
    responses(
        (status = 200, description = "`ready` (text), or JSON {ready, degraded, reason} for a \
            cluster node cut from JetStream.", content(
            (String = "text/plain"),
            (answers::Degraded = "application/json"))),
        (status = 503, description = "NOT_READY, LOG_UNAVAILABLE, FOLLOWER_STOPPED (with ready: \
            false and reason).", body = answers::NotReady),
    ))]
async fn readyz(State(state): State<Arc<AdminState>>) -> Response {
    let Some(app) = state.app.get() else {
        return not_ready(AdminError::NotReady);
    };
    if let Err(error) = readiness(app) {
        return not_ready(error);
    }
    // Cut from JetStream, a cluster node still serves every association
    // it has (so it stays in rotation) and refuses creations with 503.
    if app.store.cluster().is_some_and(|link| !link.connected()) {
        return Json(answers::Degraded {
            ready: true,
            degraded: true,
            reason: "JetStream unreachable: associations are served, creations get 503",
        })
        .into_response();
    }
    "ready\n".into_response()
}

/// Whether a replayed node may be sent new clients: not once its log
/// refuses writes, nor once its cluster follower has stopped (`/readyz`
/// and the status's `ready`).
fn readiness(app: &App) -> Result<(), AdminError> {
    if app.store.log().is_poisoned() {
        return Err(AdminError::LogUnavailable);
    }
    match app.store.cluster().and_then(|link| link.stopped()) {
        Some(reason) => Err(AdminError::FollowerStopped(reason.to_owned())),
        None => Ok(()),
    }
}

/// A 503 of `/readyz`: the admin error body, with the fields every JSON
/// `/readyz` answer has.
fn not_ready(error: AdminError) -> Response {
    let (status, code) = error.wire();
    let message = error.to_string();
    let body = answers::NotReady {
        error: ErrorBody {
            status: status.as_u16(),
            code,
            message: &message,
        },
        ready: false,
        reason: &message,
    };
    (status, Json(body)).into_response()
}

/// `/metrics`: from the start (during replay, `homecmp_ready` is 0 and the
/// process and build figures are there); the index, log and cluster gauges
/// once the application is.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    summary = "Prometheus / OpenMetrics text (served during replay too)",
    responses((status = 200, description = "The metrics.", body = String,
        content_type = "application/openmetrics-text")))]
async fn metrics(State(state): State<Arc<AdminState>>) -> Response {
    let m = &state.metrics;
    m.ready.set(i64::from(state.app.get().is_some()));
    if let Some(app) = state.app.get() {
        refresh(app);
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

/// The gauges that mirror the application's state, read at scrape time.
fn refresh(app: &App) {
    let counts = app.store.index().counts();
    let m = &app.metrics;
    m.index_associations.set(counts.associations as i64);
    m.index_subscribers.set(counts.subscribers as i64);
    m.index_codes.set(counts.codes as i64);
    m.sessions.set(app.bindings.table().len() as i64);
    m.last_seq.set(app.store.log().last_seq());
    m.events_since_snapshot
        .set(app.store.events_since_snapshot());
    m.log_poisoned.set(i64::from(app.store.log().is_poisoned()));
    if let Some(link) = app.store.cluster() {
        m.cluster_connected.set(i64::from(link.connected()));
        m.cluster_follower_stopped
            .set(i64::from(link.stopped().is_some()));
        m.cluster_conflicts
            .inner()
            .store(link.conflicts(), std::sync::atomic::Ordering::Relaxed);
    }
    for (runtime, lag) in [
        ("main", &app.limits().main_lag),
        ("quic", &app.limits().quic_lag),
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
}

/// `POST /admin/v1/reload`, as `SIGHUP`: the config, the certificate and
/// key read again ([`App::reload`]): what was reloaded; 422
/// `RELOAD_REFUSED` with the reason when the config does not validate or
/// the pair does not load, everything running kept.
#[utoipa::path(post, path = "/admin/v1/reload", tag = "operations",
    summary = "Read the configuration, certificate and key, federation peers and CA, rules \
        and limits again (as SIGHUP)",
    responses(
        (status = 200, description = "Reloaded.", body = answers::Reloaded),
        (status = 422, description = "RELOAD_REFUSED: everything running is kept.",
            body = ErrorBody),
    ))]
async fn reload(Ready(app): Ready) -> Answer {
    let reloaded = app
        .reload()
        .map_err(|e| AdminError::ReloadRefused(e).into_response())?;
    let leaf = app.certificate.leaf();
    let expires =
        crate::tls::not_after(&leaf).map(|secs| crate::clock::rfc3339(secs.max(0) as u64 * 1000));
    let answer = answers::Reloaded {
        reloaded,
        certificate_expires: expires,
    };
    Ok(Json(answer).into_response())
}

/// A history rewrite (erasure, retention) not done: 409 where the cluster's
/// stream cannot be rewritten (it says why), 503 otherwise.
fn rewrite_failed(e: crate::store::StoreError) -> Response {
    match e {
        crate::store::StoreError::Cluster(crate::store::cluster::ClusterError::Mismatch(why)) => {
            AdminError::NotInClusterMode(why).into_response()
        }
        e => unavailable(e),
    }
}

fn unavailable(e: impl std::fmt::Display) -> Response {
    tracing::error!(error = %e, "admin change not stored");
    AdminError::Unavailable.into_response()
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
    IndirectCode::parse(text).map_err(|e| AdminError::InvalidCode(e.to_string()).into_response())
}

fn parse_clientid(text: &str) -> Result<ClientId, Response> {
    ClientId::parse(text).map_err(|e| AdminError::InvalidClientId(e.to_string()).into_response())
}

/// An address (a /32 or /128) or a prefix (`2001:db8:1:2::/64`, the slash
/// as is or as `%2F`); an IPv4-mapped IPv6 address is its IPv4 address.
fn parse_network(text: &str) -> Result<IpNet, Response> {
    let parsed = match text.contains('/') {
        true => text.parse::<IpNet>().ok(),
        false => text.parse::<IpAddr>().ok().map(IpNet::from),
    };
    parsed
        .map(crate::core::canonical_net)
        .ok_or_else(|| AdminError::InvalidIp.into_response())
}

/// How a binding's network is shown: a lone address without its `/32`.
fn shown(network: IpNet) -> String {
    match network.prefix_len() == network.max_prefix_len() {
        true => network.addr().to_string(),
        false => network.to_string(),
    }
}

/// The one path parameter of a route, percent-decoded; a JSON 400 when it
/// does not decode to UTF-8 (axum's own rejection is plain text).
struct Param(String);

impl<S: Send + Sync> FromRequestParts<S> for Param {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut http::request::Parts,
        state: &S,
    ) -> Result<Self, Response> {
        Path::<String>::from_request_parts(parts, state)
            .await
            .map(|Path(text)| Param(text))
            .map_err(|e| AdminError::InvalidPath(e.body_text()).into_response())
    }
}

/// A JSON body, whatever the `Content-Type`; see the module docs.
struct JsonBody<T>(T);

/// Why a body was not taken: too large, or not the JSON expected.
enum BodyRejection {
    TooLarge,
    Invalid(String),
}

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = BodyRejection;

    async fn from_request(request: Request, state: &S) -> Result<Self, BodyRejection> {
        let bytes = Bytes::from_request(request, state)
            .await
            .map_err(|e| match e.status() {
                StatusCode::PAYLOAD_TOO_LARGE => BodyRejection::TooLarge,
                _ => BodyRejection::Invalid(e.body_text()),
            })?;
        serde_json::from_slice(&bytes)
            .map(JsonBody)
            .map_err(|e| BodyRejection::Invalid(e.to_string()))
    }
}

impl BodyRejection {
    fn response(self, expected: &str) -> Response {
        match self {
            BodyRejection::TooLarge => AdminError::BodyTooLarge(MAX_BODY_BYTES).into_response(),
            BodyRejection::Invalid(e) => {
                AdminError::InvalidBody(format!("{e}; expected {expected}")).into_response()
            }
        }
    }
}

/// Handlers take `Result<JsonBody, _>` and say what they expected; this is
/// only for a handler that does not.
impl IntoResponse for BodyRejection {
    fn into_response(self) -> Response {
        self.response("a JSON object")
    }
}

fn body<T>(body: Result<JsonBody<T>, BodyRejection>, expected: &str) -> Result<T, Response> {
    body.map(|JsonBody(body)| body)
        .map_err(|rejection| rejection.response(expected))
}

/// The path parameters of the admin routes, for the API document (the
/// handlers take them through [`Param`]).
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)]
struct CodePath {
    /// The Indirect Code Identifier (routing prefix, then the code).
    #[param(example = "2001000001promo")]
    code: String,
}

#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)]
struct ClientIdPath {
    /// An MCC's clientid.
    #[param(example = "my-app-1")]
    clientid: String,
}

#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)]
struct MsisdnPath {
    /// The subscriber's MSISDN (+447700900123, 00..., or digits).
    #[param(example = "+447700900123")]
    msisdn: String,
}

#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)]
struct IpPath {
    /// An address, or a prefix such as 2001:db8:1:2::/64 (the slash as is
    /// or as %2F).
    #[param(example = "127.1.0.1")]
    ip: String,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct CodeBody {
    /// Where the code sends a client no rule matches: an http(s) URL.
    #[schema(format = "uri", max_length = 2048)]
    target: String,
    /// Resolution rules, first match wins.
    #[serde(default)]
    #[schema(max_items = 16)]
    rules: Vec<crate::codes::RuleBody>,
}

#[utoipa::path(put, path = "/admin/v1/codes/{code}", tag = "codes", params(CodePath),
    summary = "Register a code (its target, and rules, replace what it had)",
    request_body = CodeBody,
    responses(
        (status = 200, description = "Registered (durable).", body = answers::Code),
        (status = 400, description = "INVALID_CODE, UNKNOWN_PREFIX, INVALID_TARGET, \
            INVALID_RULES, INVALID_BODY.", body = ErrorBody),
        (status = 413, description = "BODY_TOO_LARGE.", body = ErrorBody),
    ))]
async fn put_code(
    Ready(app): Ready,
    Extension(who): Extension<Principal>,
    Param(code): Param,
    json: Result<JsonBody<CodeBody>, BodyRejection>,
) -> Answer {
    let code = parse_code(&code)?;
    let expected = r#"{"target": "https://...", "rules": [...]}"#;
    let CodeBody { target, rules } = body(json, expected)?;
    if !app.rules.load().policy.owns(&code) {
        return Err(AdminError::UnknownPrefix.into_response());
    }
    if !crate::wire::valid_target(&target) {
        return Err(AdminError::InvalidTarget.into_response());
    }
    let rules =
        crate::codes::rules_of(rules).map_err(|e| AdminError::InvalidRules(e).into_response())?;
    let shown = crate::codes::bodies_of(&rules);
    let seq = app
        .store
        .register_code_with(&code, &target, rules, stamp(&who))
        .await
        .map_err(unavailable)?;
    let answer = answers::Code {
        code: code.as_str().to_owned(),
        target,
        seq,
        rules: shown,
    };
    Ok(Json(answer).into_response())
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct ImportQuery {
    /// Check only: nothing is written.
    #[serde(default)]
    dry_run: bool,
}

/// Bulk import (see [`crate::codes`]): the body streams through, batch by
/// batch. 200 when every row was taken, 422 with the same report when some
/// were not (the report says which batches were written).
#[utoipa::path(post, path = "/admin/v1/codes:import", tag = "codes", params(ImportQuery),
    summary = "Bulk import (NDJSON rows {code, target, rules}, or CSV code,target)",
    request_body(content(
        (String = "application/x-ndjson"),
        (String = "text/csv"),
    )),
    responses(
        (status = 200, description = "Every row taken.", body = crate::codes::Report),
        (status = 422, description = "Some rows refused (their batches not written).",
            body = crate::codes::Report),
        (status = 400, description = "INVALID_BODY.", body = ErrorBody),
        (status = 409, description = "NOT_IN_CLUSTER_MODE: in cluster mode, a change the \
            stream cannot take (the message says why).", body = ErrorBody),
        (status = 503, description = "Replaying the event log (NOT_READY), the log refuses \
            writes (LOG_UNAVAILABLE), or a batch was not written (UNAVAILABLE, with the report \
            of what was).", body = answers::ImportFailed),
    ))]
async fn import_codes(
    Ready(app): Ready,
    Extension(who): Extension<Principal>,
    query: Result<axum::extract::Query<ImportQuery>, axum::extract::rejection::QueryRejection>,
    request: Request,
) -> Answer {
    let axum::extract::Query(ImportQuery { dry_run }) = query.map_err(|e| {
        AdminError::InvalidBody(format!("{}; expected ?dry_run=true|false", e.body_text()))
            .into_response()
    })?;
    let content_type = request
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let format = crate::codes::Format::from_content_type(content_type);
    let body = request
        .into_body()
        .into_data_stream()
        .map(|chunk| chunk.map_err(|e| e.to_string()));
    // Its own task: a client that goes away mid-import leaves whole
    // batches written, never half of one.
    let app = app.clone();
    let import = tokio::spawn(async move {
        // The policy as it is when the import starts, for all its rows.
        let rules = app.rules.load_full();
        let actor = Some(who.name.as_str());
        crate::codes::import(&app.store, &rules.policy, body, format, dry_run, actor).await
    });
    let report = import
        .await
        .expect("import does not panic")
        .map_err(import_failed)?;
    let status = match report.errors_total {
        0 => StatusCode::OK,
        _ => StatusCode::UNPROCESSABLE_ENTITY,
    };
    Ok((status, Json(report)).into_response())
}

/// An import that did not run to its end: a body that broke off is the
/// client's (400, naming the line and batch it got to); a batch the store
/// did not write is 503 `UNAVAILABLE` naming the batch and its lines, with
/// the report of what was written before it.
fn import_failed(e: crate::codes::ImportError) -> Response {
    use crate::codes::ImportError;
    match e {
        ImportError::Body { .. } => AdminError::InvalidBody(e.to_string()).into_response(),
        ImportError::NotWritten {
            source:
                crate::store::StoreError::Cluster(crate::store::cluster::ClusterError::Mismatch(why)),
            ..
        } => AdminError::NotInClusterMode(why).into_response(),
        ImportError::NotWritten {
            ref report,
            ref source,
        } => {
            tracing::error!(error = %source, "{e}");
            let (status, code) = AdminError::Unavailable.wire();
            let message = e.to_string();
            let body = answers::ImportFailed {
                error: ErrorBody {
                    status: status.as_u16(),
                    code,
                    message: &message,
                },
                report,
            };
            (status, Json(body)).into_response()
        }
    }
}

/// Every code as NDJSON, by `seq`: what the import takes back. Streamed a
/// page at a time as the client reads ([`crate::codes::export`]).
#[utoipa::path(get, path = "/admin/v1/codes:export", tag = "codes",
    summary = "Every code, NDJSON {code, target, rules, seq} by seq, streamed",
    responses((status = 200, description = "The codes.", body = String,
        content_type = "application/x-ndjson")))]
async fn export_codes(Ready(app): Ready) -> Answer {
    let pages = crate::codes::export(app.store.clone(), crate::codes::EXPORT_PAGE);
    let body = axum::body::Body::from_stream(pages);
    // In flight until the last page is sent: the connection's quiet rule
    // must not cut an export that takes longer than the idle timeout.
    let streamed = axum::Extension(super::conn::StreamedBody);
    Ok((
        [(http::header::CONTENT_TYPE, "application/x-ndjson")],
        streamed,
        body,
    )
        .into_response())
}

/// Resolutions of a code, by protocol and kind: those written to the log
/// and those counted since (written within `server.scan_stats_flush_secs`).
#[utoipa::path(get, path = "/admin/v1/codes/{code}/stats", tag = "codes", params(CodePath),
    summary = "Resolution counts of a code",
    responses(
        (status = 200, description = "The counts.", body = answers::CodeStats),
        (status = 400, description = "INVALID_CODE.", body = ErrorBody),
        (status = 404, description = "CODE_NOT_FOUND.", body = ErrorBody),
    ))]
async fn code_stats(Ready(app): Ready, Param(code): Param) -> Answer {
    let code = parse_code(&code)?;
    let scans = app
        .store
        .index()
        .code_scans(&code, Reader::Operator)
        .ok_or_else(|| AdminError::CodeNotFound.into_response())?;
    let count = crate::core::model::ScanCount::from_slots(code.as_str().to_owned(), scans);
    let total: u64 = scans.iter().sum();
    // Per rule, for a code with rules: what each sent where.
    let entry = app.store.index().code(&code, Reader::Operator);
    let per_rule = app.store.index().code_rule_scans(&code, Reader::Operator);
    let rules = match (entry.and_then(|e| e.rules), per_rule) {
        (Some(rules), Some(counts)) => Some(
            (rules.rules().iter().zip(counts))
                .map(|(rule, resolutions)| answers::RuleScans {
                    target: rule.target.clone(),
                    resolutions,
                })
                .collect(),
        ),
        _ => None,
    };
    let stats = answers::CodeStats {
        code: count.code,
        resolutions: total,
        http1: count.http1,
        http2: count.http2,
        http3: count.http3,
        rules,
    };
    Ok(Json(stats).into_response())
}

#[utoipa::path(get, path = "/admin/v1/codes/{code}", tag = "codes", params(CodePath),
    summary = "A code, its target and its rules",
    responses(
        (status = 200, description = "The code.", body = answers::Code),
        (status = 400, description = "INVALID_CODE.", body = ErrorBody),
        (status = 404, description = "CODE_NOT_FOUND.", body = ErrorBody),
    ))]
async fn get_code(Ready(app): Ready, Param(code): Param) -> Answer {
    let code = parse_code(&code)?;
    let entry = app
        .store
        .index()
        .code(&code, Reader::Operator)
        .ok_or_else(|| AdminError::CodeNotFound.into_response())?;
    let rules = entry
        .rules
        .as_ref()
        .map(|r| crate::codes::bodies_of(r.rules()));
    let answer = answers::Code {
        code: code.as_str().to_owned(),
        target: entry.target.to_string(),
        seq: entry.seq,
        rules: rules.unwrap_or_default(),
    };
    Ok(Json(answer).into_response())
}

#[utoipa::path(delete, path = "/admin/v1/codes/{code}", tag = "codes", params(CodePath),
    summary = "Remove a code",
    responses(
        (status = 200, description = "Removed.", body = answers::CodeRemoved),
        (status = 400, description = "INVALID_CODE.", body = ErrorBody),
        (status = 404, description = "CODE_NOT_FOUND.", body = ErrorBody),
    ))]
async fn delete_code(
    Ready(app): Ready,
    Extension(who): Extension<Principal>,
    Param(code): Param,
) -> Answer {
    let code = parse_code(&code)?;
    let removed = app
        .store
        .remove_code(&code, stamp(&who))
        .await
        .map_err(unavailable)?;
    if !removed {
        return Err(AdminError::CodeNotFound.into_response());
    }
    let answer = answers::CodeRemoved {
        code: code.as_str().to_owned(),
        removed: true,
    };
    Ok(Json(answer).into_response())
}

fn no_association() -> Response {
    AdminError::NoAssociation.into_response()
}

#[utoipa::path(get, path = "/admin/v1/associations/{clientid}", tag = "subscribers",
    params(ClientIdPath), summary = "The association of a clientid",
    responses(
        (status = 200, description = "The association.", body = answers::Association),
        (status = 400, description = "INVALID_CLIENTID.", body = ErrorBody),
        (status = 404, description = "NO_ASSOCIATION.", body = ErrorBody),
    ))]
async fn get_association(Ready(app): Ready, Param(clientid): Param) -> Answer {
    let clientid = parse_clientid(&clientid)?;
    let a = app
        .store
        .index()
        .association(clientid.as_str())
        .ok_or_else(no_association)?;
    // The index keeps the sequence; the time is in the log's record there.
    let since_ms = match app.store.log().read_range(a.seq, a.seq).next() {
        Some(Ok((_, record))) => record.at_ms,
        Some(Err(e)) => return Err(unavailable(e)),
        None => return Err(unavailable(format!("event {} is not in the log", a.seq))),
    };
    let answer = answers::Association {
        clientid: clientid.as_str().to_owned(),
        subscriber: a.subscriber.to_hex(),
        since: crate::clock::rfc3339(since_ms),
        seq: a.seq,
    };
    Ok(Json(answer).into_response())
}

#[utoipa::path(delete, path = "/admin/v1/associations/{clientid}", tag = "subscribers",
    params(ClientIdPath), summary = "Revoke it (event association_revoked, reason admin)",
    responses(
        (status = 200, description = "Revoked.", body = answers::Revoked),
        (status = 400, description = "INVALID_CLIENTID.", body = ErrorBody),
        (status = 404, description = "NO_ASSOCIATION.", body = ErrorBody),
    ))]
async fn delete_association(
    Ready(app): Ready,
    Extension(who): Extension<Principal>,
    Param(clientid): Param,
) -> Answer {
    let clientid = parse_clientid(&clientid)?;
    app.store
        .revoke(&clientid, stamp(&who))
        .await
        .map_err(unavailable)?
        .ok_or_else(no_association)?;
    let answer = answers::Revoked {
        clientid: clientid.as_str().to_owned(),
        revoked: true,
    };
    Ok(Json(answer).into_response())
}

/// Erasure (GDPR Art. 17): the subscriber's session bindings dropped, its
/// associations revoked (reason `erased`), and its history rewritten so
/// that nothing in the log links it to a clientid or a client address.
#[utoipa::path(delete, path = "/admin/v1/subscribers/{msisdn}", tag = "subscribers",
    params(MsisdnPath), summary = "Erase a subscriber (GDPR Art. 17): bindings, associations \
        and every link in the history",
    responses(
        (status = 200, description = "Erased.", body = answers::Erasure),
        (status = 400, description = "INVALID_MSISDN.", body = ErrorBody),
        (status = 409, description = "NOT_IN_CLUSTER_MODE: in cluster mode, a stream made by an \
            earlier homecmp that denies deletes, or more history than one rewrite holds (the \
            message says which).", body = ErrorBody),
    ))]
async fn delete_subscriber(
    Ready(app): Ready,
    Extension(who): Extension<Principal>,
    Param(msisdn): Param,
) -> Answer {
    let msisdn = Msisdn::parse(&msisdn)
        .map_err(|e| AdminError::InvalidMsisdn(e.to_string()).into_response())?;
    let subscriber = app.bindings.key().subscriber_ref(&msisdn);
    let sessions = app.bindings.unbind_subscriber(&subscriber);
    // The store runs it as a task of its own: a client that goes away
    // mid-erasure does not leave the history half rewritten.
    let (revoked, rewritten) = app
        .store
        .erase_subscriber(subscriber, stamp(&who))
        .await
        .map_err(rewrite_failed)?;
    let answer = answers::Erasure {
        subscriber: subscriber.to_hex(),
        erased: true,
        sessions_unbound: sessions,
        associations_revoked: revoked.len(),
        records_rewritten: rewritten.records,
    };
    Ok(Json(answer).into_response())
}

/// `POST /admin/v1/retention?older_than=90d`: online retention, in
/// single-node and cluster mode alike: every record of an association or a
/// code that ended longer ago than `older_than` is blanked (as `homecmp
/// log compact` does offline; in cluster mode on every node and in the
/// stream).
#[utoipa::path(post, path = "/admin/v1/retention", tag = "subscribers",
    params(RetentionQuery), summary = "Retention, online: blank the records of associations and \
        codes that ended longer ago than older_than (single-node and cluster mode; homecmp log \
        compact does it offline)",
    responses(
        (status = 200, description = "Done: the cutoff, records rewritten and records looked at.",
            body = answers::Retention),
        (status = 400, description = "INVALID_QUERY: older_than missing or not a duration.",
            body = ErrorBody),
        (status = 409, description = "NOT_IN_CLUSTER_MODE: the cluster's stream was made before \
            erasure in cluster mode (run homecmp cluster migrate).", body = ErrorBody),
    ))]
async fn retention(
    Ready(app): Ready,
    Extension(who): Extension<Principal>,
    query: Result<axum::extract::Query<RetentionQuery>, axum::extract::rejection::QueryRejection>,
) -> Answer {
    let hint = "older_than is a duration such as 90d or 2160h";
    let axum::extract::Query(q) = query.map_err(|e| {
        AdminError::InvalidQuery(format!("{}; {hint}", e.body_text())).into_response()
    })?;
    let older_than = humantime::parse_duration(&q.older_than).map_err(|e| {
        AdminError::InvalidQuery(format!("older_than {:?}: {e}; {hint}", q.older_than))
            .into_response()
    })?;
    let now = crate::clock::now_ms();
    let cutoff = now.saturating_sub(u64::try_from(older_than.as_millis()).unwrap_or(u64::MAX));
    let rewritten = app
        .store
        .apply_retention(cutoff, stamp(&who))
        .await
        .map_err(rewrite_failed)?;
    let answer = answers::Retention {
        ended_before: crate::clock::rfc3339(cutoff),
        records_rewritten: rewritten.records,
        records_scanned: rewritten.scanned,
    };
    Ok(Json(answer).into_response())
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct RetentionQuery {
    /// A duration (humantime): 90d, 2160h.
    #[param(example = "90d")]
    older_than: String,
}

/// A subscriber's associated clientids (at most
/// `max_clientids_per_subscriber`), and the sessions bound to it.
#[utoipa::path(get, path = "/admin/v1/subscribers/{msisdn}", tag = "subscribers",
    params(MsisdnPath), summary = "A subscriber's associated clientids (looked up by MSISDN, \
        keyed as the server keys it)",
    responses(
        (status = 200, description = "The subscriber's keyed reference and its clientids, sorted \
            (none: an empty list).", body = answers::Subscriber),
        (status = 400, description = "INVALID_MSISDN.", body = ErrorBody),
    ))]
async fn get_subscriber(Ready(app): Ready, Param(msisdn): Param) -> Answer {
    let msisdn = Msisdn::parse(&msisdn)
        .map_err(|e| AdminError::InvalidMsisdn(e.to_string()).into_response())?;
    let subscriber = app.bindings.key().subscriber_ref(&msisdn);
    let mut clientids: Vec<String> = app
        .store
        .index()
        .clientids_of(&subscriber)
        .iter()
        .map(|c| c.as_str().to_owned())
        .collect();
    clientids.sort_unstable();
    let answer = answers::Subscriber {
        subscriber: subscriber.to_hex(),
        clientids,
    };
    Ok(Json(answer).into_response())
}

/// `GET /admin/v1/events?from=SEQ`: the log as server-sent events
/// ([`super::events`]), from `from` (by default, what is appended next).
#[utoipa::path(get, path = "/admin/v1/events", tag = "audit", params(EventsQuery),
    summary = "The event log, live: each record as a server-sent event once it is durable",
    description = "A text/event-stream that stays open: per record `id: <seq>`, \
        `event: <kind>`, `data: <the record as homecmp log export writes it>`; a `: keep-alive` \
        comment after 15 s without one; an `error` event (data: {error, seq}) where a record \
        does not read, and the stream ends. The console's live list reads it with fetch \
        (EventSource cannot send a token).",
    responses(
        (status = 200, description = "The stream.", body = String,
            content_type = "text/event-stream"),
        (status = 400, description = "INVALID_QUERY.", body = ErrorBody),
    ))]
async fn events(
    Ready(app): Ready,
    query: Result<axum::extract::Query<EventsQuery>, axum::extract::rejection::QueryRejection>,
) -> Answer {
    let axum::extract::Query(q) = query.map_err(|e| {
        let e = format!(
            "{}; the parameter is from (a sequence number)",
            e.body_text()
        );
        AdminError::InvalidQuery(e).into_response()
    })?;
    let log = app.store.log().clone();
    let from = q.from.unwrap_or_else(|| log.last_seq() + 1);
    let body = axum::body::Body::from_stream(super::events::stream(log, from));
    // In flight while it streams: the connection's quiet rule must not cut
    // a client watching a quiet log.
    let streamed = axum::Extension(super::conn::StreamedBody);
    let headers = [
        (http::header::CONTENT_TYPE, "text/event-stream"),
        (http::header::CACHE_CONTROL, "no-store"),
    ];
    Ok((headers, streamed, body).into_response())
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct EventsQuery {
    /// The first sequence to send (by default, the next one appended).
    #[param(nullable = false)]
    from: Option<crate::store::Seq>,
}

/// The node at a glance, for the console and `homecmp admin status`: its
/// index and log, and, where configured, the cluster link and the RADIUS
/// feed.
#[utoipa::path(get, path = "/admin/v1/status", tag = "operations",
    summary = "The node at a glance: index, log, cluster link, RADIUS feed",
    responses((status = 200, description = "The node's state.", body = answers::Status)))]
async fn status(Ready(app): Ready) -> Answer {
    let counts = app.store.index().counts();
    let log = app.store.log();
    let cluster = app.store.cluster().map(|link| answers::ClusterStatus {
        connected: link.connected(),
        stopped: link.stopped().map(str::to_owned),
        applied: link.applied(),
        conflicts: link.conflicts(),
    });
    let radius = app.config.radius.as_ref().map(|radius| {
        let last = app.metrics.radius_last_packet.get();
        answers::RadiusStatus {
            listen: radius.listen.to_string(),
            last_packet: (last > 0).then(|| crate::clock::rfc3339(last as u64 * 1000)),
        }
    });
    let answer = answers::Status {
        version: env!("CARGO_PKG_VERSION"),
        ready: readiness(&app).is_ok(),
        log: answers::LogStatus {
            last_seq: log.last_seq(),
            poisoned: log.is_poisoned(),
        },
        associations: counts.associations,
        subscribers: counts.subscribers,
        codes: counts.codes,
        sessions: app.bindings.table().len(),
        open_connections: app
            .open_connections
            .load(std::sync::atomic::Ordering::Relaxed),
        cluster,
        radius,
    };
    Ok(Json(answer).into_response())
}

/// The API document, generated from this code (`crate::net::openapi`);
/// `docs/openapi.json` is the same document, committed.
#[utoipa::path(get, path = "/admin/v1/openapi.json", tag = "operations",
    operation_id = "api_document",
    summary = "This document",
    responses((status = 200, description = "OpenAPI 3.1, generated from the server's code (the \
        same as docs/openapi.json).", body = Object)))]
async fn openapi(State(state): State<Arc<AdminState>>) -> Response {
    let doc = (state.api_document)();
    ([(http::header::CONTENT_TYPE, "application/json")], doc).into_response()
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct AuditQuery {
    /// Events that change this code.
    #[param(nullable = false)]
    code: Option<String>,
    /// An MSISDN (keyed as the server keys it) or a keyed ref (64 hex).
    #[param(nullable = false)]
    subscriber: Option<String>,
    /// A token name or an identity-provider subject.
    #[param(nullable = false)]
    actor: Option<String>,
    /// An event kind.
    #[param(schema_with = event_kinds)]
    kind: Option<String>,
    /// RFC 3339, inclusive.
    #[param(format = DateTime, nullable = false)]
    since: Option<String>,
    /// RFC 3339, inclusive.
    #[param(format = DateTime, nullable = false)]
    until: Option<String>,
    /// 1 to 1000 (default 100).
    #[param(schema_with = audit_limit)]
    limit: Option<usize>,
    /// Events before this sequence number: the `next` of the page before.
    #[param(nullable = false)]
    before: Option<u64>,
}

/// The audit's `kind`, for the API document: the log's event kinds.
fn event_kinds() -> utoipa::openapi::Object {
    let kinds = crate::core::model::Event::KINDS.iter().copied();
    utoipa::openapi::ObjectBuilder::new()
        .description(Some("An event kind."))
        .schema_type(utoipa::openapi::Type::String)
        .enum_values(Some(kinds))
        .build()
}

/// The audit's `limit`, for the API document: the store's bounds.
fn audit_limit() -> utoipa::openapi::Object {
    utoipa::openapi::ObjectBuilder::new()
        .description(Some(format!(
            "1 to {} (default {AUDIT_PAGE}).",
            crate::store::audit::MAX_LIMIT
        )))
        .schema_type(utoipa::openapi::Type::Integer)
        .minimum(Some(1))
        .maximum(Some(crate::store::audit::MAX_LIMIT as f64))
        .build()
}

/// Default page size of `GET /admin/v1/audit`.
const AUDIT_PAGE: usize = 100;

/// `GET /admin/v1/audit`: the log's events that match, newest first,
/// from the audit index ([`crate::store::audit`]), as `log export` shows
/// them; `next` is where the next page starts (`before=`), `null` at the
/// end.
#[utoipa::path(get, path = "/admin/v1/audit", tag = "audit", params(AuditQuery),
    summary = "Who changed what, when: the log's events, newest first",
    responses(
        (status = 200, description = "A page.", body = answers::AuditPage),
        (status = 400, description = "INVALID_QUERY, INVALID_MSISDN, INVALID_CODE.",
            body = ErrorBody),
    ))]
async fn audit(
    Ready(app): Ready,
    query: Result<axum::extract::Query<AuditQuery>, axum::extract::rejection::QueryRejection>,
) -> Answer {
    let axum::extract::Query(q) = query.map_err(|e| {
        let expected = "code, subscriber, actor, kind, since, until, limit, before";
        AdminError::InvalidQuery(format!("{}; the parameters are {expected}", e.body_text()))
            .into_response()
    })?;
    let filter = audit_filter(&app, &q)?;
    let limit = q.limit.unwrap_or(AUDIT_PAGE);
    if !(1..=crate::store::audit::MAX_LIMIT).contains(&limit) {
        let max = crate::store::audit::MAX_LIMIT;
        let e = AdminError::InvalidQuery(format!("limit must be 1 to {max}"));
        return Err(e.into_response());
    }
    let log = app.store.log().clone();
    let before = q.before;
    let page = tokio::task::spawn_blocking(move || log.audit(&filter, before, limit))
        .await
        .expect("the audit query does not panic")
        .map_err(unavailable)?;
    let events: Vec<_> = page
        .records
        .iter()
        .map(|(seq, record)| crate::sre::ExportLine::new(*seq, record))
        .collect();
    let answer = answers::AuditPage {
        events,
        next: page.next,
    };
    Ok(Json(answer).into_response())
}

/// The query's filter, each field checked (400 naming it).
fn audit_filter(app: &App, q: &AuditQuery) -> Result<crate::store::audit::Filter, Response> {
    let invalid = |e: String| AdminError::InvalidQuery(e).into_response();
    let code = match &q.code {
        Some(code) => Some(parse_code(code)?.as_str().to_owned()),
        None => None,
    };
    let subscriber = match &q.subscriber {
        None => None,
        Some(text) => Some(match crate::wire::SubscriberRef::from_hex(text) {
            Some(keyed) => keyed,
            None => {
                let msisdn = Msisdn::parse(text)
                    .map_err(|e| AdminError::InvalidMsisdn(e.to_string()).into_response())?;
                app.bindings.key().subscriber_ref(&msisdn)
            }
        }),
    };
    if let Some(kind) = &q.kind
        && !crate::core::model::Event::KINDS.contains(&kind.as_str())
    {
        let kinds = crate::core::model::Event::KINDS.join(", ");
        return Err(invalid(format!("kind {kind:?} is none of {kinds}")));
    }
    let time = |name: &str, text: &Option<String>| match text {
        None => Ok(None),
        Some(text) => match text.parse::<crate::sre::Until>() {
            Ok(crate::sre::Until::Time(ms)) => Ok(Some(ms)),
            _ => Err(invalid(format!(
                "{name} must be an RFC 3339 time, such as 2026-12-07T10:00:00Z"
            ))),
        },
    };
    Ok(crate::store::audit::Filter {
        code,
        subscriber,
        actor: q.actor.clone(),
        kind: q.kind.clone(),
        since_ms: time("since", &q.since)?,
        until_ms: time("until", &q.until)?,
    })
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct SessionBody {
    /// The subscriber's MSISDN (+E.164, 00..., or digits).
    msisdn: String,
    /// Seconds the binding lives; default `auth.session_ttl_secs`.
    #[schema(schema_with = session_ttl, nullable = false)]
    ttl_secs: Option<u64>,
}

/// `ttl_secs`, for the API document: 1 to [`MAX_SESSION_TTL_SECS`].
fn session_ttl() -> utoipa::openapi::Object {
    utoipa::openapi::ObjectBuilder::new()
        .schema_type(utoipa::openapi::Type::Integer)
        .minimum(Some(1))
        .maximum(Some(MAX_SESSION_TTL_SECS as f64))
        .build()
}

#[utoipa::path(put, path = "/admin/v1/sessions/{ip}", tag = "sessions", params(IpPath),
    summary = "Bind an address or prefix to a subscriber",
    request_body = SessionBody,
    responses(
        (status = 200, description = "Bound.", body = answers::SessionBound),
        (status = 400, description = "INVALID_IP, INVALID_MSISDN, INVALID_TTL, \
            NOT_IN_MNO_NETWORK, INVALID_BODY.", body = ErrorBody),
        (status = 413, description = "BODY_TOO_LARGE.", body = ErrorBody),
        (status = 503, description = "Replaying the event log (NOT_READY), or the bindings \
            table is full (BINDINGS_FULL).", body = ErrorBody),
    ))]
async fn put_session(
    Ready(app): Ready,
    Param(ip): Param,
    json: Result<JsonBody<SessionBody>, BodyRejection>,
) -> Answer {
    let network = parse_network(&ip)?;
    let SessionBody { msisdn, ttl_secs } = body(json, r#"{"msisdn": "+E164"}"#)?;
    let msisdn = Msisdn::parse(&msisdn)
        .map_err(|e| AdminError::InvalidMsisdn(e.to_string()).into_response())?;
    let ttl_ms = match ttl_secs {
        None => app.config.session_ttl.as_millis() as u64,
        Some(secs @ 1..=MAX_SESSION_TTL_SECS) => secs * 1000,
        Some(_) => {
            return Err(AdminError::InvalidTtl(MAX_SESSION_TTL_SECS).into_response());
        }
    };
    let expires_ms = crate::clock::now_ms().saturating_add(ttl_ms);
    let subscriber = app
        .bindings
        .bind(Bind {
            networks: &[network],
            msisdn: &msisdn,
            expires_ms,
            source: crate::core::BindingSource::Admin,
            unless_live_at: None,
        })
        .map_err(|e| match e {
            BindError::NotInMnoNetwork => AdminError::NotInMnoNetwork.into_response(),
            BindError::Full => AdminError::BindingsFull.into_response(),
        })?;
    let answer = answers::SessionBound {
        ip: shown(network),
        subscriber: subscriber.to_hex(),
        expires: crate::clock::rfc3339(expires_ms),
    };
    Ok(Json(answer).into_response())
}

fn no_session() -> Response {
    AdminError::NoSession.into_response()
}

/// An address: the binding that covers it (the longest prefix). A prefix:
/// the binding of exactly that prefix. Says who made it (`source`: `admin`,
/// or `radius` with the gateway's address and the Acct-Session-Id) and
/// when it expires.
#[utoipa::path(get, path = "/admin/v1/sessions/{ip}", tag = "sessions", params(IpPath),
    summary = "The binding that covers an address (or exactly a prefix)",
    responses(
        (status = 200, description = "The binding.", body = answers::Session),
        (status = 400, description = "INVALID_IP.", body = ErrorBody),
        (status = 404, description = "NO_SESSION.", body = ErrorBody),
    ))]
async fn get_session(Ready(app): Ready, Param(ip): Param) -> Answer {
    let network = parse_network(&ip)?;
    let bound = app
        .bindings
        .table()
        .find(network.addr(), crate::clock::now_ms())
        .filter(|b| !ip.contains('/') || b.network == network)
        .ok_or_else(no_session)?;
    let (source, nas, acct_session_id) = match &bound.source {
        crate::core::BindingSource::Admin => (answers::SessionSource::Admin, None, None),
        crate::core::BindingSource::Radius { nas, session_id } => (
            answers::SessionSource::Radius,
            Some(nas.to_string()),
            Some(String::from_utf8_lossy(session_id).into_owned()),
        ),
    };
    let answer = answers::Session {
        ip: shown(network),
        network: bound.network.to_string(),
        subscriber: bound.subscriber.to_hex(),
        expires: crate::clock::rfc3339(bound.expires_ms),
        source,
        nas,
        acct_session_id,
    };
    Ok(Json(answer).into_response())
}

#[utoipa::path(delete, path = "/admin/v1/sessions/{ip}", tag = "sessions", params(IpPath),
    summary = "Remove a binding",
    responses(
        (status = 200, description = "Removed.", body = answers::SessionRemoved),
        (status = 400, description = "INVALID_IP.", body = ErrorBody),
        (status = 404, description = "NO_SESSION.", body = ErrorBody),
    ))]
async fn delete_session(Ready(app): Ready, Param(ip): Param) -> Answer {
    let network = parse_network(&ip)?;
    if !app.bindings.unbind(network) {
        return Err(no_session());
    }
    let answer = answers::SessionRemoved {
        ip: shown(network),
        removed: true,
    };
    Ok(Json(answer).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use serde_json::json;

    /// The admin state while the log replays: no application yet.
    fn before_replay() -> Arc<AdminState> {
        Arc::new(AdminState {
            tokens: crate::access::Tokens::new(
                &"t".repeat(32),
                std::path::Path::new("/nonexistent"),
            ),
            oidc: None,
            app: OnceLock::new(),
            metrics: Arc::new(crate::metrics::Metrics::new()),
            api_document: || "{}",
        })
    }

    #[tokio::test]
    async fn readyz_before_replay_is_json_with_ready_false() {
        let state = before_replay();
        let response = readyz(State(state)).await;
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        let content_type = response.headers()[http::header::CONTENT_TYPE].clone();
        assert_eq!(content_type, "application/json");
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let body: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(
            (&body["code"], &body["ready"], &body["status"]),
            (&json!("NOT_READY"), &json!(false), &json!(503))
        );
        assert_eq!(body["reason"], body["message"]);
    }

    #[tokio::test]
    async fn metrics_are_served_during_replay_with_ready_0() {
        let state = before_replay();
        let response = metrics(State(state)).await;
        assert_eq!(response.status(), StatusCode::OK);
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let text = String::from_utf8(bytes.to_vec()).unwrap();
        assert!(text.contains("\nhomecmp_ready 0\n"), "{text}");
        let version = env!("CARGO_PKG_VERSION");
        let build = format!("homecmp_build_info{{version=\"{version}\"}} 1");
        assert!(text.contains(&build), "{text}");
        for name in ["process_cpu_seconds_total", "process_resident_memory_bytes"] {
            assert!(text.contains(&format!("\n{name} ")), "{name} in {text}");
        }
        assert!(text.ends_with("# EOF\n"));
    }
}
