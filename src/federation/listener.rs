//! The federation listener: peer CMPs resolve this CMP's codes here, over
//! TLS 1.3 with a client certificate from the community CA (the handshake
//! refuses anyone else). A peer is a client like any other past that: its
//! requests are rate limited per address (`requests_per_peer_per_sec`,
//! then 429), a malformed one is answered 400, and the connection limits
//! and timeouts of `[limits]` apply. It asks for a code only; it learns
//! the target, or `CODE_NOT_FOUND`, or `UNKNOWN_PREFIX` for a code that is
//! not this CMP's.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Response, StatusCode};
use http_body_util::Full;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::RESOLVE_PATH;
use crate::core::Refusal;
use crate::net::App;
use crate::net::error::{error_response, json_response};
use crate::net::limits::KeyedRate;
use crate::wire::{IndirectCode, Query};

/// Peer connections open at once; more are closed at once.
const MAX_CONNECTIONS: usize = 256;

/// Serves peers on `listener` until `shutdown`.
pub async fn serve(
    app: Arc<App>,
    listener: TcpListener,
    acceptor: TlsAcceptor,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
    let federation = app.config.federation.as_ref().expect("serving federation");
    let rate = Arc::new(KeyedRate::per_second(
        federation.requests_per_peer_per_sec,
        app.config.limits.limiter_max_keys,
    ));
    let full = || app.metrics.federation("refused", "connections");
    let serve = |tcp, peer: SocketAddr| {
        let (app, acceptor, rate, shutdown) = (
            app.clone(),
            acceptor.clone(),
            rate.clone(),
            shutdown.clone(),
        );
        async move {
            let handshake = acceptor.accept(tcp);
            let tls = match tokio::time::timeout(app.config.limits.header_read_timeout, handshake)
                .await
            {
                Ok(Ok(tls)) => tls,
                // No certificate, one from another CA, a bad handshake.
                _ => return app.metrics.federation("refused", "handshake"),
            };
            app.metrics.federation("connected", "mutual_tls");
            let limits = app.config.limits.clone();
            let conduct = crate::net::conn::Conduct::new();
            crate::net::conn::serve(tls, &limits, shutdown, conduct, move |request| {
                let (app, rate) = (app.clone(), rate.clone());
                async move {
                    let response = answer(&app, &rate, peer, request.method(), request.uri());
                    let (parts, body) = response.into_parts();
                    Response::from_parts(parts, Full::new(body))
                }
            })
            .await;
        }
    };
    let connections = crate::net::conn::accept(
        listener,
        MAX_CONNECTIONS,
        shutdown.clone(),
        tracker,
        full,
        serve,
    );
    connections.await;
}

fn answer(
    app: &App,
    rate: &KeyedRate<std::net::IpAddr>,
    peer: SocketAddr,
    method: &Method,
    uri: &http::Uri,
) -> Response<Bytes> {
    let refused = |refusal: Refusal, reason: &'static str| {
        app.metrics.federation("answered", reason);
        error_response(&refusal)
    };
    if uri.path() != RESOLVE_PATH {
        return refused(Refusal::NotFound, "not_found");
    }
    if method != Method::GET {
        return refused(Refusal::MethodNotAllowed, "method");
    }
    if let Err(refusal) =
        app.rate_verdict("requests_per_peer", rate.check(&peer.ip().to_canonical()))
    {
        return refused(refusal, "rate_limited");
    }
    let query = match Query::parse(uri.query().unwrap_or(""), app.config.limits.max_uri_bytes) {
        Ok(query) => query,
        Err(_) => return refused(Refusal::RequestTooLarge, "malformed"),
    };
    let code = match IndirectCode::parse(&query.code) {
        Ok(code) => code,
        Err(e) => return refused(Refusal::InvalidCode(e), "malformed"),
    };
    if !app.config.policy.owns(&code) {
        return refused(Refusal::UnknownPrefix, "unknown_prefix");
    }
    let Some(entry) = app.store.index().code(&code) else {
        return refused(Refusal::CodeNotFound, "code_not_found");
    };
    app.metrics.federation("answered", "resolved");
    let body = serde_json::json!({"code": code.as_str(), "type": "url", "target": &*entry.target});
    json_response(StatusCode::OK, body.to_string().into_bytes())
}
