//! The public HTTPS listener: TCP accept, TLS, HTTP/1.1 and HTTP/2 (hyper).
//!
//! Cheapest refusals first: past the connection cap a socket is closed
//! before any TLS work; a handshake that does not finish within the
//! header-read timeout is dropped; hyper bounds header size and time, and
//! [`super::conn`] closes connections that send no request.

use std::net::SocketAddr;
use std::sync::Arc;

use http_body_util::Full;
use hyper::body::Incoming;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::admit::{Admitted, Transport, admit, handshake_step, refusal_after_handshake};
use super::conn::Conduct;
use super::error::error_response;
use super::resolve::{self, ConnInfo};
use crate::app::App;
use crate::core::Refusal;
use crate::limits::Verdict;
use crate::metrics::Protocol;
use crate::tls;

/// Accepts until `shutdown`, then lets open connections finish their
/// in-flight requests (hyper's graceful shutdown) under `tracker`.
pub async fn serve(
    app: Arc<App>,
    listener: TcpListener,
    tls: TlsAcceptor,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
    // Overloaded: stop accepting. New connections wait in the kernel's
    // backlog (past it, their SYNs are dropped and clients back off), which
    // costs less than accepting and closing them: a refused client
    // reconnects at once. Established connections are served.
    let overloaded = || {
        let overloaded = app.tcp_overloaded();
        if overloaded {
            app.metrics.accept_pauses.inc();
        }
        overloaded
    };
    let paused: Option<&(dyn Fn() -> bool + Send + Sync)> = match app.limits().main_lag {
        Some(_) => Some(&overloaded),
        None => None,
    };
    // Admission (super::admit): a refused socket is closed before any TLS.
    let admit = |peer: SocketAddr| admit(&app, Transport::Tcp, app.limits().source(peer.ip())).ok();
    let stop = shutdown.clone();
    let serve = |stream: TcpStream, peer, admitted| {
        let _ = stream.set_nodelay(true);
        handshake_and_serve(
            app.clone(),
            tls.clone(),
            stream,
            peer,
            admitted,
            stop.clone(),
        )
    };
    super::conn::accept(listener, shutdown, tracker, paused, admit, serve).await;
}

/// One admitted TCP connection: its turn at the handshake pace (returning
/// clients in a queue of their own), the TLS handshake within the header
/// timeout, then HTTP until it ends. From a source in the penalty box,
/// only a returning client is served (the rest are closed before TLS, or
/// answered 429 after it). Refusals are counted; the `admitted` guard
/// frees its slots when this returns.
async fn handshake_and_serve(
    app: Arc<App>,
    tls: TlsAcceptor,
    stream: TcpStream,
    peer: SocketAddr,
    admitted: Admitted,
    shutdown: CancellationToken,
) {
    let refused = |reason| app.metrics.refused_connection(Transport::Tcp, reason);
    let handshake_limit = app.limits().config.header_read_timeout;
    let over_rate = match turn_before_tls(&app, &tls, &stream, peer, &admitted).await {
        Ok(over_rate) => over_rate,
        Err(reason) => return refuse_quietly(stream, || refused(reason)),
    };
    let mark = tls::Returning::new_mark();
    let marked = |session: &mut rustls::ServerConnection| {
        session.set_resumption_data(&mark.bytes());
    };
    let stream = match handshake_step(handshake_limit, tls.accept_with(stream, marked)).await {
        Ok(stream) => stream,
        Err(reason) => return refused(reason),
    };
    let session = stream.get_ref().1;
    let protocol = match session.alpn_protocol() {
        Some(b"h2") => Protocol::Http2,
        _ => Protocol::Http1,
    };
    // Returning only if the session it resumed served an associated
    // clientid (a ticket alone proves nothing: anyone who completed a
    // handshake has one).
    let proven = app
        .limits()
        .returning
        .is_proven(session.received_resumption_data());
    let turn = match (proven, admitted.penalized, over_rate) {
        (true, _, _) | (false, false, None) => Ok(()),
        // Its source is in the penalty box: told how long, then closed.
        (false, true, _) => Err("penalty"),
        // Resumed, over its address's rate, not returning: it waits its
        // address's turn as a new client does, and past the bound is
        // answered 429.
        (false, false, Some(wait)) => {
            let source = app.limits().source(peer.ip());
            address_turn(&app, source, wait, handshake_limit).await
        }
    };
    if let Err(reason) = turn {
        refused(reason);
        let refusal = refusal_after_handshake(reason, &app.limits().config);
        return answer_refusal(&app, stream, refusal).await;
    }
    let _serving = admitted.serving(&app, protocol);
    let origin = crate::core::identity_address(crate::core::Seen::Tcp { peer: peer.ip() });
    let conn = ConnInfo { origin, protocol };
    serve_connection(app.clone(), conn, mark, stream, shutdown).await;
}

/// Before any TLS work: a client that offers a ticket this server issued
/// resumes (a cheap handshake, in a queue of its own, so a flood of new
/// handshakes does not hold it up); one that does not waits its address's
/// turn if it is over its address's rate, and is closed if its source is
/// in the penalty box. Then its turn at the handshake pace. The address's
/// rate it still owes (whether it is returning is known only after the
/// handshake), or why it is refused. A client that sends nothing takes no
/// turn.
async fn turn_before_tls(
    app: &App,
    tls: &TlsAcceptor,
    stream: &TcpStream,
    peer: SocketAddr,
    admitted: &Admitted,
) -> Result<Option<std::time::Duration>, &'static str> {
    let handshake_limit = app.limits().config.header_read_timeout;
    let mut over_rate = admitted.over_rate;
    if !admitted.penalized && app.limits().handshakes.is_none() && over_rate.is_none() {
        return Ok(over_rate);
    }
    let hello = handshake_step(handshake_limit, peek_first_record(stream)).await?;
    let ticketed = tls::offered_ticket(&hello)
        .is_some_and(|ticket| tls.config().ticketer.decrypt(ticket).is_some());
    if admitted.penalized && !ticketed {
        // Its source is in the penalty box and it cannot be returning.
        return Err("penalty");
    }
    if let Some(wait) = over_rate.take_if(|_| !ticketed) {
        let source = app.limits().source(peer.ip());
        address_turn(app, source, wait, handshake_limit).await?;
    }
    let limits = app.limits_now();
    let (pace, queue) = limits.handshake_pace(ticketed);
    app.metrics.handshake_turn(queue);
    if let Some(pace) = pace {
        match pace.reserve(handshake_limit) {
            Some(wait) => tokio::time::sleep(wait).await,
            None => return Err("handshake_rate"),
        }
    }
    Ok(over_rate)
}

/// Answers every request of a connection refused after its TLS handshake
/// with `refusal` (429 or 503, with `Retry-After`), then closes it: an app
/// can tell "slow down" from a broken network.
async fn answer_refusal<I>(app: &App, io: I, refusal: Refusal)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let answered = CancellationToken::new();
    let close = answered.clone();
    let answer = move |_request: hyper::Request<Incoming>| {
        close.cancel();
        let (parts, body) = error_response(&refusal).into_parts();
        std::future::ready(hyper::Response::from_parts(parts, Full::new(body)))
    };
    let limits = app.limits().config.clone();
    super::conn::serve(io, &limits, answered, Conduct::new(), answer).await;
}

/// A new client over its address's accept rate (`accepts_per_address_per_sec`)
/// waits for its address's next turn instead of being refused, if that
/// comes within `limit`: a burst from a busy shared address is delayed,
/// not reset. Each turn is taken from the limiter when it comes, so the
/// waiters together stay within the rate; past `limit`, refused.
async fn address_turn(
    app: &App,
    source: std::net::IpAddr,
    mut wait: std::time::Duration,
    limit: std::time::Duration,
) -> Result<(), &'static str> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if tokio::time::Instant::now() + wait > deadline {
            return Err("address_rate");
        }
        tokio::time::sleep(wait).await;
        match app.limits().tcp.accepts.check(&source) {
            Verdict::Limited(next) => wait = next,
            Verdict::Allowed | Verdict::Overflow => return Ok(()),
        }
    }
}

/// Counts a refusal and closes the connection without a reset
/// ([`super::conn::close_quietly`]).
fn refuse_quietly(stream: TcpStream, count: impl FnOnce()) {
    count();
    super::conn::close_quietly(stream);
}

/// The client's first TLS record, peeked (left in the socket for rustls):
/// as much of it as arrives within a few milliseconds of its first byte, at
/// most 4 KiB. An error when the client closes first.
async fn peek_first_record(stream: &TcpStream) -> std::io::Result<Vec<u8>> {
    let mut record = vec![0; 4096];
    for _ in 0..20 {
        let n = stream.peek(&mut record).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let whole = n >= 5 && n >= 5 + usize::from(u16::from_be_bytes([record[3], record[4]]));
        if whole || n == record.len() {
            record.truncate(n);
            return Ok(record);
        }
        // A ClientHello larger than a segment: the rest is on its way.
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
    Ok(record)
}

/// `true` the first time it is asked of `flag`: a read first, so a
/// connection's answers do not each write to the flag they share.
fn first_time(flag: &std::sync::atomic::AtomicBool) -> bool {
    use std::sync::atomic::Ordering::Relaxed;
    !flag.load(Relaxed) && !flag.swap(true, Relaxed)
}

/// Serves one TLS connection with the resolve handler (see [`super::conn`]
/// for its timeouts and for what a run of refused requests earns).
async fn serve_connection<I>(
    app: Arc<App>,
    conn: ConnInfo,
    mark: tls::SessionMark,
    io: I,
    shutdown: CancellationToken,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let limits = app.limits().config.clone();
    let conduct = Conduct::new();
    let judged = conduct.clone();
    // Proven once: the first answer that served an associated clientid.
    let proven = Arc::new(std::sync::atomic::AtomicBool::new(false));
    super::conn::serve(
        io,
        &limits,
        shutdown,
        conduct,
        move |request: hyper::Request<Incoming>| {
            let (app, conduct, proven) = (app.clone(), judged.clone(), proven.clone());
            async move {
                let (method, uri, headers) = (request.method(), request.uri(), request.headers());
                let response = resolve::handle_on(&app, conn, &conduct, method, uri, headers).await;
                // Only a resolved code is answered 2xx or 3xx, and only for
                // an associated clientid: this session's tickets now return.
                let served = response.status().is_success() || response.status().is_redirection();
                if served && first_time(&proven) {
                    app.limits().returning.prove(mark);
                }
                let (mut parts, body) = response.into_parts();
                if let Some(alt_svc) = &app.alt_svc {
                    parts.headers.insert(http::header::ALT_SVC, alt_svc.clone());
                }
                hyper::Response::from_parts(parts, Full::new(body))
            }
        },
    )
    .await;
}
