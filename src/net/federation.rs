//! The federation listener: peer CMPs resolve this CMP's codes here, over
//! TLS 1.3 with a client certificate from the community CA (the handshake
//! refuses anyone else).
//!
//! A connection is admitted as on the public listener, before any TLS
//! work: [`crate::net::admit`] with [`Transport::Federation`] (the
//! federation's own penalty box, per-address connection rate and cap, and
//! global cap: `[federation]`'s `max_connections*`,
//! `accepts_per_address_per_sec`), then a turn at the federation's
//! handshake pace (`handshakes_per_sec`), and only then the handshake (and
//! with it the client certificate check), within the header-read timeout.
//! A peer is a client like any other past that: its requests are rate
//! limited per address (`requests_per_peer_per_sec`, then 429), a malformed
//! one is answered 400, a run of refused requests slows and then closes its
//! connection and holds its address off this port for `limits.penalty_secs`
//! (`net::conn::Conduct`), and the connection timeouts of `[limits]`
//! apply. It asks for a code only; it learns the target, or
//! `CODE_NOT_FOUND`, or `UNKNOWN_PREFIX` for a code that is not this CMP's.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Response, StatusCode};
use http_body_util::Full;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::admit::{Admitted, Transport, admit};
use super::conn::{Conduct, judge};
use super::error::{error_response, json_response};
use crate::app::App;
use crate::core::Refusal;
use crate::federation::RESOLVE_PATH;
use crate::limits::KeyedRate;
use crate::store::index::Reader;
use crate::wire::{IndirectCode, Query};

/// Serves peers on `listener` until `shutdown`.
pub async fn serve(
    app: Arc<App>,
    listener: TcpListener,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
    let federation = app.config.federation.as_ref().expect("serving federation");
    let rate = Arc::new(KeyedRate::per_second(
        federation.requests_per_peer_per_sec,
        app.limits().config.limiter_max_keys,
    ));
    let admit = |peer: SocketAddr| {
        // Refused here: closed before any TLS work, counted by admit().
        admit(&app, Transport::Federation, app.limits().source(peer.ip())).ok()
    };
    let stop = shutdown.clone();
    let serve = |stream, peer, admitted| {
        let (app, rate) = (app.clone(), rate.clone());
        handshake_and_serve(app, rate, stream, peer, admitted, stop.clone())
    };
    super::conn::accept(listener, shutdown, tracker, None, admit, serve).await;
}

/// One admitted connection: its turn at the handshake pace, the mutual-TLS
/// handshake within the header-read timeout, then HTTP until it ends. The
/// `admitted` guard frees its slots when this returns.
async fn handshake_and_serve(
    app: Arc<App>,
    rate: Arc<KeyedRate<std::net::IpAddr>>,
    stream: TcpStream,
    peer: SocketAddr,
    _admitted: Admitted,
    shutdown: CancellationToken,
) {
    let limits = app.limits_now();
    let handshake_limit = limits.config.header_read_timeout;
    let pace = limits
        .federation
        .as_ref()
        .and_then(|federation| federation.handshakes.as_ref());
    let wait = match pace.map(|pace| pace.reserve(handshake_limit)) {
        None => std::time::Duration::ZERO,
        Some(Some(wait)) => wait,
        Some(None) => {
            return app
                .metrics
                .refused_connection(Transport::Federation, "handshake_rate");
        }
    };
    // The TLS a reload left last (a new community CA, a renewed certificate).
    let acceptor = TlsAcceptor::from(app.federation_tls().expect("serving federation"));
    let handshake = async {
        tokio::time::sleep(wait).await;
        super::admit::handshake_step(handshake_limit, acceptor.accept(stream)).await
    };
    // A connection still waiting for its handshake has nothing to drain.
    let tls = tokio::select! {
        _ = shutdown.cancelled() => return,
        handshake = handshake => match handshake {
            Ok(tls) => tls,
            // No certificate, one from another CA, a bad or a slow handshake.
            _ => return app.metrics.federation("refused", "handshake"),
        },
    };
    app.metrics.federation("connected", "mutual_tls");
    let limits = app.limits().config.clone();
    let conduct = Conduct::new();
    let judged = conduct.clone();
    super::conn::serve(tls, &limits, shutdown, conduct, move |request| {
        let (app, rate, conduct) = (app.clone(), rate.clone(), judged.clone());
        async move {
            let delay = conduct.delay(|| app.limits_config());
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            let response = answer(&app, &rate, peer, request.method(), request.uri());
            judge(
                &app,
                Transport::Federation,
                &conduct,
                peer.ip(),
                response.status(),
            );
            let (parts, body) = response.into_parts();
            Response::from_parts(parts, Full::new(body))
        }
    })
    .await;
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
    let query = match Query::parse(uri.query().unwrap_or(""), app.limits().config.max_uri_bytes) {
        Ok(query) => query,
        Err(_) => return refused(Refusal::RequestTooLarge, "malformed"),
    };
    let code = match IndirectCode::parse(&query.code) {
        Ok(code) => code,
        Err(e) => return refused(Refusal::InvalidCode(e), "malformed"),
    };
    if !app.rules.load().policy.owns(&code) {
        return refused(Refusal::UnknownPrefix, "unknown_prefix");
    }
    let Some(entry) = app.store.index().code(&code, Reader::Peer) else {
        return refused(Refusal::CodeNotFound, "code_not_found");
    };
    app.metrics.federation("answered", "resolved");
    let body = serde_json::json!({"code": code.as_str(), "type": "url", "target": &*entry.target});
    json_response(StatusCode::OK, body.to_string().into_bytes())
}
