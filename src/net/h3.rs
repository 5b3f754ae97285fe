//! The public HTTP/3 listener: QUIC (quinn) on the UDP port of HTTPS, with
//! the same handler as HTTP/1.1 and HTTP/2 ([`super::resolve::handle`]).
//!
//! QUIC's own denial-of-service surface is handled before any handshake
//! state exists, cheapest first, for every Initial that arrives:
//!
//! 1. Per-source-address connection rate and open connections, for a
//!    validated address only (a spoofed source must not spend its owner's
//!    budget): over them, the Initial is ignored (no packet sent back, no
//!    state kept). An unvalidated client is charged when its handshake
//!    completes; if over, its first request is answered 429 (or 503) with
//!    `Retry-After` and the connection closed. A client back with a
//!    NEW_TOKEN token (single use) is not held to the rate: many
//!    subscribers can share an address.
//! 2. Handshakes in flight and connections open: over `max_handshakes` or
//!    `limits.max_connections`, ignored likewise.
//! 3. Address validation: `retry = always` answers every unvalidated
//!    Initial with a stateless Retry (the client must echo the token from
//!    its real address); `under_load` does so only once more than
//!    `retry_above_handshakes` handshakes are in flight; `never` does not.
//!    Clients that were validated before come back with a NEW_TOKEN token and
//!    skip the extra round trip.
//!
//! 0-RTT is off: association creation is not idempotent, and a replayed
//! first scan must not create anything.
//!
//! Migration is allowed (a phone's NAT rebinds, a client moves), but a
//! request counts as coming from the address the connection's handshake
//! completed from, and from nowhere else ([`crate::core::identity_address`]):
//! a request that arrives after the connection moved is off the MNO
//! network, and the connection is then drained (GOAWAY), so the client's
//! next request opens a new connection whose handshake proves its new
//! address.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use quinn::crypto::rustls::QuicServerConfig;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::admit::{Admitted, Transport, admit, admit_returning, handshake_step};
use super::conn::{Activity, Conduct};
use super::error::error_response;
use super::resolve::{self, ConnInfo};
use crate::app::App;
use crate::config::{Http3Config, RetryPolicy};
use crate::core::Refusal;
use crate::metrics::Protocol;

#[derive(Debug, thiserror::Error)]
pub enum H3Error {
    #[error("QUIC needs TLS 1.3 with an initial cipher suite: {0}")]
    Crypto(String),
    #[error("cannot start the QUIC runtime: {0}")]
    Runtime(std::io::Error),
    #[error("cannot open the QUIC endpoint: {0}")]
    Endpoint(std::io::Error),
}

/// The QUIC endpoint's configuration from ours.
pub fn server_config(
    tls: rustls::ServerConfig,
    h3: &Http3Config,
    limits: &crate::config::Limits,
) -> Result<quinn::ServerConfig, H3Error> {
    let crypto = QuicServerConfig::try_from(tls).map_err(|e| H3Error::Crypto(e.to_string()))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport
        .max_concurrent_bidi_streams(limits.max_concurrent_streams.into())
        // HTTP/3 needs a few unidirectional streams (control, QPACK).
        .max_concurrent_uni_streams(8u32.into())
        .max_idle_timeout(Some(
            quinn::IdleTimeout::try_from(limits.idle_timeout)
                .expect("idle timeout fits QUIC's varint"),
        ));
    config.transport_config(Arc::new(transport));
    config.max_incoming(h3.max_handshakes);
    config.retry_token_lifetime(Duration::from_secs(15));
    let mut tokens = quinn::ValidationTokenConfig::default();
    tokens
        .lifetime(Duration::from_secs(h3.validation_token_lifetime_secs))
        .sent(2);
    config.validation_token_config(tokens);
    // Migration lets a client move; a request that comes after a move is
    // not identified from its new address (see the module docs).
    config.migration(true);
    Ok(config)
}

/// Handshakes in flight on the HTTP/3 listener.
#[derive(Debug, Default)]
struct Gate {
    handshakes: AtomicUsize,
}

/// Binds the QUIC endpoint on `socket`.
pub fn endpoint(
    socket: UdpSocket,
    config: quinn::ServerConfig,
) -> Result<quinn::Endpoint, H3Error> {
    let runtime = Arc::new(quinn::TokioRuntime);
    quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        Some(config),
        socket,
        runtime,
    )
    .map_err(H3Error::Endpoint)
}

/// The runtime QUIC runs on, apart from the TCP listener's, so that a flood
/// of QUIC work (Initials, handshakes, requests) queues behind itself and
/// not in front of HTTPS requests. Shut down in the background when
/// dropped, which may happen inside the main runtime.
#[derive(Debug)]
pub struct QuicRuntime(Option<tokio::runtime::Runtime>);

impl QuicRuntime {
    pub fn new(threads: usize) -> std::io::Result<Self> {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name("homecmp-quic")
            .enable_all()
            .build()
            .map(|runtime| Self(Some(runtime)))
    }

    pub fn handle(&self) -> &tokio::runtime::Handle {
        self.0.as_ref().expect("present until dropped").handle()
    }
}

impl Drop for QuicRuntime {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

/// Accepts QUIC connections until `shutdown`, then closes the endpoint
/// after in-flight requests had `limits.shutdown_grace` to finish.
pub async fn serve(
    app: Arc<App>,
    endpoint: quinn::Endpoint,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
    let gate = Arc::new(Gate::default());
    loop {
        let incoming = tokio::select! {
            _ = shutdown.cancelled() => break,
            incoming = endpoint.accept() => match incoming {
                Some(incoming) => incoming,
                None => break,
            },
        };
        // The address the handshake runs with: quinn answers the Initial
        // there, so a completed handshake proves the client receives at it.
        let handshake_addr = incoming.remote_address().ip().to_canonical();
        let source = app.limits().source(handshake_addr);
        let in_flight = gate.handshakes.load(Ordering::Relaxed);
        let admitted = match answer_initial(&app, &incoming, source, in_flight) {
            Initial::Ignore => {
                incoming.ignore();
                continue;
            }
            Initial::Retry => {
                app.metrics.quic_retries.inc();
                let _ = incoming.retry();
                continue;
            }
            Initial::Accept(admitted) => admitted,
        };
        let Ok(connecting) = incoming.accept() else {
            app.metrics
                .refused_connection(Transport::Quic, "invalid_initial");
            continue;
        };
        gate.handshakes.fetch_add(1, Ordering::Relaxed);
        tracker.spawn(handshake_and_serve(
            app.clone(),
            gate.clone(),
            connecting,
            admitted,
            handshake_addr,
            shutdown.clone(),
        ));
    }
    endpoint.close(0u32.into(), b"shutting down");
}

/// What to do with an Initial.
enum Initial {
    /// Drop it unanswered (its refusal is counted).
    Ignore,
    /// Answer with a stateless Retry: the client must prove its address.
    Retry,
    /// Start the handshake; admitted already if its address was validated.
    Accept(Option<Admitted>),
}

/// The checks of the module docs, cheapest first, before any handshake
/// state exists. `in_flight` is the handshakes under way.
fn answer_initial(
    app: &App,
    incoming: &quinn::Incoming,
    source: IpAddr,
    in_flight: usize,
) -> Initial {
    let h3 = &app.config.http3;
    let refused = |reason| {
        app.metrics.refused_connection(Transport::Quic, reason);
        Initial::Ignore
    };
    if app.quic_overloaded() {
        return refused("overloaded");
    }
    // Per-address state and limits only for a validated address (a Retry
    // token or a NEW_TOKEN token echoed from it): an Initial's source
    // address is trivially spoofed, and charging it would let an attacker
    // spend a victim's budget. An unvalidated client is charged once its
    // handshake completes, which proves the address too.
    let validated = incoming.remote_address_validated();
    // A client back with a NEW_TOKEN token this server issued (validated,
    // and not by a Retry) is returning: it is not held to its address's
    // connection rate (many subscribers share an address), and has a
    // handshake queue of its own, as TLS clients with a ticket do. Tokens
    // are single use: each was earned by a connection.
    let returning = validated && incoming.may_retry();
    let admit = match returning {
        true => admit_returning,
        false => admit,
    };
    let admitted = match validated {
        true => match admit(app, Transport::Quic, source) {
            Ok(admitted) => Some(admitted),
            Err(_) => return Initial::Ignore,
        },
        false => None,
    };
    let limits = app.limits_now();
    let (pace, queue) = limits.handshake_pace(returning);
    if let Some(pace) = pace {
        app.metrics.handshake_turn(queue);
        if pace.reserve(Duration::ZERO).is_none() {
            return refused("handshake_rate");
        }
    }
    // No handshake work while the global cap (TCP and QUIC together) is
    // reached, or too many handshakes are in flight.
    if admitted.is_none() && app.limits().quic.connections.available() == 0 {
        return refused("connection_cap");
    }
    if in_flight >= h3.max_handshakes {
        return refused("capacity");
    }
    let must_validate = match h3.retry {
        RetryPolicy::Always => true,
        RetryPolicy::UnderLoad => in_flight >= h3.retry_above_handshakes,
        RetryPolicy::Never => false,
    };
    if must_validate && !validated && incoming.may_retry() {
        return Initial::Retry;
    }
    Initial::Accept(admitted)
}

/// Finishes the handshake (within the header-read timeout), admits a
/// client that was not validated before, and serves the connection.
async fn handshake_and_serve(
    app: Arc<App>,
    gate: Arc<Gate>,
    connecting: quinn::Connecting,
    admitted: Option<Admitted>,
    handshake_addr: IpAddr,
    shutdown: CancellationToken,
) {
    let source = app.limits().source(handshake_addr);
    let limit = app.limits().config.header_read_timeout;
    let handshake = handshake_step(limit, connecting).await;
    gate.handshakes.fetch_sub(1, Ordering::Relaxed);
    let connection = match handshake {
        Ok(connection) => connection,
        Err(reason) => return app.metrics.refused_connection(Transport::Quic, reason),
    };
    // A completed handshake proves the address: admit it now.
    let admitted = match admitted {
        Some(admitted) => admitted,
        None => match admit(&app, Transport::Quic, source) {
            Ok(admitted) => admitted,
            Err(reason) => {
                let refusal = super::admit::refusal_after_handshake(reason, &app.limits().config);
                return answer_refusal(&app, connection, refusal).await;
            }
        },
    };
    let _serving = admitted.serving(&app, Protocol::Http3);
    serve_connection(&app, connection, handshake_addr, shutdown).await;
}

/// A connection whose handshake proved an address that is over its limits:
/// its first request is answered with the refusal (429 or 503, with
/// `Retry-After`), then it is drained and closed. The client is told to
/// slow down, instead of meeting what looks like a broken network.
async fn answer_refusal(app: &App, connection: quinn::Connection, refusal: Refusal) {
    let quic = connection.clone();
    let (limit, max_header_bytes) = {
        let limits = app.limits();
        (
            limits.config.header_read_timeout,
            limits.config.max_header_bytes,
        )
    };
    let built = h3::server::builder()
        .max_field_section_size(max_header_bytes as u64)
        .build::<_, Bytes>(h3_quinn::Connection::new(connection))
        .await;
    if let Ok(mut h3_conn) = built {
        let answered = async {
            let resolver = h3_conn.accept().await.ok()??;
            let (_request, mut stream) = resolver.resolve_request().await.ok()?;
            let (parts, body) = error_response(&refusal).into_parts();
            stream
                .send_response(http::Response::from_parts(parts, ()))
                .await
                .ok()?;
            stream.send_data(body).await.ok()?;
            stream.finish().await.ok()?;
            // Read the request to its end (as `serve_request` does): an
            // unread stream is answered with STOP_SENDING, a reset.
            while let Ok(Some(_)) = stream.recv_data().await {}
            Some(())
        };
        let _ = tokio::time::timeout(limit, answered).await;
        let _ = h3_conn.shutdown(0).await;
        let _ = tokio::time::timeout(LINGER, quic.closed()).await;
    }
    quic.close(H3_EXCESSIVE_LOAD.into(), b"address limit");
}

/// HTTP/3's error codes (RFC 9114 §8.1): a clean close, and a peer that
/// asks for more than it may.
const H3_NO_ERROR: u32 = 0x100;
const H3_EXCESSIVE_LOAD: u32 = 0x107;

/// Serves one QUIC connection's requests. Like [`super::conn`] for TCP: a
/// connection with no request in flight is closed after the header-read
/// timeout (before its first request) or the idle timeout (after one), and
/// a stream must bring its request head within the header-read timeout.
///
/// The requests run on this task, not one task each: the answers written
/// in one turn of it leave together when quinn's connection driver runs
/// next (one datagram for several answers), where a task per request had
/// the driver send each answer alone, right after the task that wrote it.
/// A request that waits (a durable write, a slow-down) waits here without
/// holding up the others.
async fn serve_connection(
    app: &Arc<App>,
    connection: quinn::Connection,
    handshake_addr: IpAddr,
    shutdown: CancellationToken,
) {
    let quic = connection.clone();
    let limits = app.limits().config.clone();
    let built = h3::server::builder()
        .max_field_section_size(limits.max_header_bytes as u64)
        .build::<_, Bytes>(h3_quinn::Connection::new(connection))
        .await;
    let Ok(mut h3_conn) = built else {
        return;
    };
    let activity = Activity::new();
    let conduct = Conduct::new();
    // Cancelled by a request that came after the connection moved.
    let moved = CancellationToken::new();
    let mut requests = FuturesUnordered::new();
    loop {
        let accepted = tokio::select! {
            Some(()) = requests.next(), if !requests.is_empty() => continue,
            _ = moved.cancelled() => {
                // Drained: the client's next request opens a connection
                // whose handshake proves where it is now.
                let _ = h3_conn.shutdown(0).await;
                break;
            }
            _ = conduct.closed() => return close_for_conduct(&quic, &mut requests).await,
            _ = shutdown.cancelled() => {
                // GOAWAY: finish what is in flight, take nothing new.
                let _ = h3_conn.shutdown(0).await;
                break;
            }
            _ = activity.quiet_for(limits.header_read_timeout, limits.idle_timeout) => {
                let _ = h3_conn.shutdown(0).await;
                break;
            }
            // Cancel-safe: `accept` awaits nothing after a stream is taken.
            accepted = h3_conn.accept() => accepted,
        };
        let resolver = match accepted {
            Ok(Some(resolver)) => resolver,
            Ok(None) | Err(_) => break,
        };
        let on = OnConnection {
            app: app.clone(),
            quic: quic.clone(),
            handshake_addr,
            conduct: conduct.clone(),
            moved: moved.clone(),
        };
        let busy = activity.begin();
        requests.push(async move {
            let _busy = busy;
            serve_request(on, resolver).await;
        });
    }
    let in_flight = async { while requests.next().await.is_some() {} };
    let _ = tokio::time::timeout(limits.shutdown_grace, in_flight).await;
    linger_and_close(&quic).await;
}

/// Closes a connection that earned it by a run of refusals: no drain, no
/// GOAWAY courtesy, but the answers written meanwhile (the refusal that
/// earned it) leave first, as a close discards what quinn has not sent.
async fn close_for_conduct<F: Future<Output = ()>>(
    quic: &quinn::Connection,
    requests: &mut FuturesUnordered<F>,
) {
    let answering = async {
        while requests.next().await.is_some() {}
        std::future::pending::<()>().await
    };
    let _ = tokio::time::timeout(ANSWERS_BEFORE_CLOSE, answering).await;
    quic.close(H3_EXCESSIVE_LOAD.into(), b"too many refused requests");
}

/// After a GOAWAY the client closes once it has its answers; closing first
/// could drop an answer still in flight (QUIC discards unsent and
/// unacknowledged stream data on close). Bounded: a client that never
/// closes is closed after `LINGER`.
async fn linger_and_close(quic: &quinn::Connection) {
    let _ = tokio::time::timeout(LINGER, quic.closed()).await;
    quic.close(H3_NO_ERROR.into(), b"");
}

/// How long a drained connection waits for its client to close it.
const LINGER: Duration = Duration::from_secs(1);

/// How long a connection closed for its conduct has to send the answers
/// already written (its driver sends them while this task waits).
const ANSWERS_BEFORE_CLOSE: Duration = Duration::from_millis(50);

/// What a request task needs of its connection.
struct OnConnection {
    app: Arc<App>,
    quic: quinn::Connection,
    handshake_addr: IpAddr,
    conduct: Arc<Conduct>,
    /// Cancelled when a request comes after the connection moved.
    moved: CancellationToken,
}

/// One request stream: its head within the header-read timeout, the
/// answer, then the rest of what the client sent, discarded.
async fn serve_request(
    on: OnConnection,
    resolver: h3::server::RequestResolver<h3_quinn::Connection, Bytes>,
) {
    let head_limit = on.app.limits().config.header_read_timeout;
    let Ok(Ok((request, mut stream))) =
        tokio::time::timeout(head_limit, resolver.resolve_request()).await
    else {
        return;
    };
    // Where the connection is now, as the one rule judges it.
    let origin = crate::core::identity_address(crate::core::Seen::Quic {
        handshake: on.handshake_addr,
        current: on.quic.remote_address().ip(),
    });
    if matches!(origin, crate::core::Origin::Unvalidated { .. }) {
        on.app.metrics.quic_moved_requests.inc();
        on.moved.cancel();
    }
    let conn = ConnInfo {
        origin,
        protocol: Protocol::Http3,
    };
    let (method, uri, headers) = (request.method(), request.uri(), request.headers());
    let response = resolve::handle_on(&on.app, conn, &on.conduct, method, uri, headers).await;
    let (parts, body) = response.into_parts();
    let sent = async {
        stream
            .send_response(http::Response::from_parts(parts, ()))
            .await?;
        stream.send_data(body).await?;
        stream.finish().await
    };
    if sent.await.is_err() {
        return;
    }
    // Read the request to its end before dropping the stream: the FIN of
    // a GET can arrive after its head, and quinn answers an unread stream
    // with STOP_SENDING code 0, which the client sees as a reset of the
    // request it already sent. Bounded in time; anything a client sends
    // after its head is discarded.
    let drained = async { while let Ok(Some(_)) = stream.recv_data().await {} };
    let _ = tokio::time::timeout(head_limit, drained).await;
}

/// A UDP socket on `addr` (the port of the HTTPS listener).
pub fn bind_udp(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    UdpSocket::bind(addr)
}
