//! One HTTP/1.1 or HTTP/2 connection's life, for the public and the admin
//! listener alike: protocol detection, header limits, and the rule that a
//! connection that says nothing is closed.
//!
//! hyper bounds the time to read an HTTP/1 request head once one has begun,
//! but not the wait before it: the HTTP/1-vs-2 detection of a connection
//! that never sends a byte, an HTTP/1 keep-alive connection between
//! requests, or an HTTP/2 connection with no open stream (which answers
//! PINGs forever). [`Activity`] watches requests in flight; a connection
//! with none is closed once it has been quiet for the header-read timeout
//! (before its first request) or the idle timeout (after one): HTTP/2 gets a
//! GOAWAY, HTTP/1 is closed between requests. A request in flight is never
//! cut by this rule. A request ends when its handler answers, so a client
//! that will not read its answer (an HTTP/2 window of 0) does not keep its
//! connection busy; but an answer marked [`StreamedBody`] (the admin
//! export, behind the token) keeps its request in flight until its body
//! has been sent, however long that takes.
//!
//! [`Conduct`] is the other rule: a connection whose requests keep being
//! refused costs the server, not the client. Past `refusals_before_slowdown`
//! refusals in a row each next request waits first (10 ms, doubling, up to
//! 1 s), past `refusals_before_close` the connection is closed (an HTTP/2
//! GOAWAY, a QUIC CONNECTION_CLOSE) and its source is refused new
//! connections for `penalty_secs`. One success ends the run. A 5xx is
//! the server's own state (overload, its log or JetStream down, a peer CMP
//! down: `OVERLOADED`, `UNAVAILABLE`, `UPSTREAM_UNAVAILABLE`), never the
//! client's conduct: it neither adds to the run nor ends it.

use std::convert::Infallible;
use std::future::Future;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use homecmp_coalesce::{Coalesced, Turns};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::app::App;
use crate::config::Limits;
use crate::metrics::Transport;

/// Requests in flight on one connection, and since when it has had none.
#[derive(Debug)]
pub struct Activity {
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    in_flight: usize,
    requests: u64,
    quiet_since: Instant,
}

/// A request in flight; dropping it (answered, or reset) ends it.
#[derive(Debug)]
pub struct Busy(Arc<Activity>);

/// In a response's extensions: its body streams for as long as it needs,
/// and its request counts as in flight until the body has been sent (see
/// the module docs). Only for answers a client had to be trusted to get.
#[derive(Debug, Clone, Copy)]
pub struct StreamedBody;

/// A response body that keeps its request in flight (if `_busy` is
/// there) until it is dropped: hyper drops it once sent, or when the
/// connection goes.
#[derive(Debug)]
pub struct InFlight<B> {
    body: B,
    _busy: Option<Busy>,
}

impl<B: hyper::body::Body + Unpin> hyper::body::Body for InFlight<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<B::Data>, B::Error>>> {
        std::pin::Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        let mut state = self.0.state.lock().expect("not poisoned");
        state.in_flight -= 1;
        if state.in_flight == 0 {
            state.quiet_since = Instant::now();
        }
    }
}

impl Activity {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(State {
                in_flight: 0,
                requests: 0,
                quiet_since: Instant::now(),
            }),
        })
    }

    /// Marks a request in flight until the guard is dropped.
    pub fn begin(self: &Arc<Self>) -> Busy {
        let mut state = self.state.lock().expect("not poisoned");
        state.in_flight += 1;
        state.requests += 1;
        Busy(self.clone())
    }

    /// Resolves once the connection has had no request in flight for
    /// `first` (before its first request) or `between` (after one).
    pub async fn quiet_for(&self, first: Duration, between: Duration) {
        loop {
            let left = {
                let state = self.state.lock().expect("not poisoned");
                let limit = if state.requests == 0 { first } else { between };
                match state.in_flight {
                    0 => limit.checked_sub(state.quiet_since.elapsed()),
                    // Busy: look again later; a request's own time is
                    // bounded elsewhere.
                    _ => Some(between),
                }
            };
            // A request may come (or end) meanwhile: look again within
            // `between` at the latest.
            match left {
                None | Some(Duration::ZERO) => return,
                Some(left) => tokio::time::sleep(left.min(between)).await,
            }
        }
    }
}

/// How one connection has behaved: the run of refused requests it is on.
#[derive(Debug, Default)]
pub struct Conduct {
    refused_in_a_row: AtomicU32,
    /// Cancelled when the connection has earned its close.
    close: CancellationToken,
}

/// What a connection has earned with its last answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Earned {
    Nothing,
    /// Its requests wait from now on (reported once, as it starts).
    SlowDown,
    /// Closed, and its source held for `penalty_secs` (reported once).
    Close,
}

/// The first wait of a slowed connection, doubled with each refusal.
const FIRST_SLOWDOWN: Duration = Duration::from_millis(10);
const LONGEST_SLOWDOWN: Duration = Duration::from_secs(1);

impl Conduct {
    pub fn new() -> Arc<Self> {
        Arc::default()
    }

    /// How long the next request waits before it is served. `limits` is
    /// read only after a refusal (a clean connection's requests never
    /// load them).
    pub fn delay<L: std::ops::Deref<Target = Limits>>(
        &self,
        limits: impl FnOnce() -> L,
    ) -> Duration {
        let run = self.refused_in_a_row.load(Ordering::Relaxed);
        if run == 0 {
            return Duration::ZERO;
        }
        let threshold = limits().refusals_before_slowdown;
        if threshold == 0 || run < threshold {
            return Duration::ZERO;
        }
        FIRST_SLOWDOWN
            .saturating_mul(1 << (run - threshold).min(16))
            .min(LONGEST_SLOWDOWN)
    }

    /// Records an answer's status: `refused` is any 4xx but a 404 (an
    /// authenticated client may scan a code that does not exist). A 5xx
    /// leaves the run as it is (see the module docs): a client the server
    /// turns away for its own reasons is not slowed or closed for it, and a
    /// 503 between refusals does not wipe a run clean either.
    pub fn record<L: std::ops::Deref<Target = Limits>>(
        &self,
        status: http::StatusCode,
        limits: impl FnOnce() -> L,
    ) -> Earned {
        if status.is_server_error() {
            return Earned::Nothing;
        }
        let refused = status.is_client_error() && status != http::StatusCode::NOT_FOUND;
        if !refused {
            self.refused_in_a_row.store(0, Ordering::Relaxed);
            return Earned::Nothing;
        }
        let run = self.refused_in_a_row.fetch_add(1, Ordering::Relaxed) + 1;
        let limits = limits();
        match run {
            _ if limits.refusals_before_close > 0 && run == limits.refusals_before_close => {
                self.close.cancel();
                Earned::Close
            }
            _ if limits.refusals_before_slowdown > 0 && run == limits.refusals_before_slowdown => {
                Earned::SlowDown
            }
            _ => Earned::Nothing,
        }
    }

    /// Resolves once the connection has earned its close.
    pub async fn closed(&self) {
        self.close.cancelled().await
    }
}

/// The one accept loop of every TCP listener (public, federation, admin):
/// accepts until `shutdown`, backing off on accept errors (EMFILE and
/// friends) instead of spinning. While `paused()` says so it takes no new
/// connection (they wait in the kernel's backlog; looked at again every
/// `Lag::PERIOD`). Each accepted connection, its address made canonical (a
/// dual-stack listener sees IPv4 clients as `::ffff:a.b.c.d`), goes to
/// `admit`: `None` closes it at once, before any TLS work; otherwise
/// `serve` gets it, with what `admit` returned, in a task of `tracker`.
pub async fn accept<A, G, F, Fut>(
    listener: tokio::net::TcpListener,
    shutdown: CancellationToken,
    tracker: tokio_util::task::TaskTracker,
    paused: Option<&(dyn Fn() -> bool + Send + Sync)>,
    mut admit: A,
    serve: F,
) where
    A: FnMut(std::net::SocketAddr) -> Option<G>,
    F: Fn(tokio::net::TcpStream, std::net::SocketAddr, G) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut recheck = tokio::time::interval(crate::limits::Lag::PERIOD);
    recheck.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let pause = paused.is_some_and(|paused| paused());
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => return,
            // Look at the load again each period (accept is cancel-safe).
            _ = recheck.tick(), if paused.is_some() => continue,
            accepted = listener.accept(), if !pause => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let peer = std::net::SocketAddr::new(peer.ip().to_canonical(), peer.port());
        let Some(admitted) = admit(peer) else {
            close_quietly(stream);
            continue;
        };
        tracker.spawn(serve(stream, peer, admitted));
    }
}

/// Closes a refused connection without a reset: the bytes it already sent
/// (a ClientHello, often) are read first, so the kernel ends it with a FIN
/// rather than an RST, which clients report as a network error. Never
/// waits: only what has arrived is read.
pub fn close_quietly(stream: tokio::net::TcpStream) {
    let mut sink = [0u8; 4096];
    while matches!(stream.try_read(&mut sink), Ok(n) if n > 0) {}
}

/// hyper's executor for HTTP/2 streams: a stream's future is first polled
/// right here, on the connection's own task, and becomes a task of its own
/// only if it has to wait (a slowed or tarpitted request, a first scan's
/// durable write, a peer). Most resolves answer on that first poll: no task
/// to allocate, schedule and wake per stream, and the answers to one read's
/// streams leave in one write.
#[derive(Debug, Clone, Copy)]
pub struct FirstPollInline;

impl<F> hyper::rt::Executor<F> for FirstPollInline
where
    F: Future<Output = ()> + Send + 'static,
{
    fn execute(&self, future: F) {
        let mut future = Box::pin(future);
        // Polled again, with a real waker, as soon as it is spawned: a
        // future registers the waker of its latest poll.
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        // A handler that panics costs its own stream (dropped: reset), not
        // the connection's other streams, as it would in a task of its own.
        let first = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            future.as_mut().poll(&mut cx)
        }));
        match first {
            Ok(std::task::Poll::Ready(())) => {}
            Ok(std::task::Poll::Pending) => {
                tokio::spawn(future);
            }
            Err(_) => tracing::error!("a request's handler panicked; its stream is reset"),
        }
    }
}

/// Serves HTTP/1.1 or HTTP/2 (whichever the client speaks) on `io` with
/// `handle`, until the client leaves, the connection has been quiet too
/// long (see the module docs), `close` is cancelled (it earned it), or
/// `shutdown`; then drains in-flight requests for up to the idle timeout.
pub async fn serve<I, F, Fut, B>(
    io: I,
    limits: &Limits,
    shutdown: CancellationToken,
    conduct: Arc<Conduct>,
    handle: F,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    F: Fn(hyper::Request<Incoming>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = hyper::Response<B>> + Send + 'static,
    B: hyper::body::Body + Unpin + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut builder = auto::Builder::new(FirstPollInline);
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes.max(8192))
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.max_concurrent_streams)
        .max_header_list_size(limits.max_header_bytes as u32)
        .keep_alive_interval(Some(limits.idle_timeout))
        .keep_alive_timeout(limits.header_read_timeout);
    let activity = Activity::new();
    let watched = activity.clone();
    let service = hyper::service::service_fn(move |request| {
        let busy = activity.begin();
        let answer = handle(request);
        async move {
            let response = answer.await;
            let streamed = response.extensions().get::<StreamedBody>().is_some();
            let busy = streamed.then_some(busy);
            Ok::<_, Infallible>(response.map(|body| InFlight { body, _busy: busy }))
        }
    });
    // Answers leave once per turn of this task (see homecmp_coalesce).
    let turns = Turns::default();
    let connection =
        builder.serve_connection(TokioIo::new(Coalesced::new(io, turns.clone())), service);
    tokio::pin!(connection);
    // How long to wait for in-flight requests once closing: a quiet
    // connection has none, so only its GOAWAY to flush.
    let drain = tokio::select! {
        _ = std::future::poll_fn(|cx| turns.poll(&mut connection.as_mut(), cx)) => return,
        _ = shutdown.cancelled() => limits.idle_timeout,
        _ = watched.quiet_for(limits.header_read_timeout, limits.idle_timeout) => {
            limits.header_read_timeout
        }
        // No drain for a connection closed for its conduct.
        _ = conduct.closed() => Duration::ZERO,
    };
    connection.as_mut().graceful_shutdown();
    let draining = std::future::poll_fn(|cx| turns.poll(&mut connection.as_mut(), cx));
    let _ = tokio::time::timeout(drain, draining).await;
}

/// Records what a connection's answer says about its conduct: counts a
/// slow-down, and on a close holds `peer`'s source in the penalty box of
/// the listener it came to (the federation's holds a peer off that port
/// only). One rule for every listener. A trusted gateway's connection
/// carries many subscribers: it is not judged as one client (they are
/// limited per forwarded address).
pub fn judge(
    app: &App,
    transport: Transport,
    conduct: &Conduct,
    peer: std::net::IpAddr,
    status: http::StatusCode,
) {
    let federation = transport == Transport::Federation;
    if !federation && app.rules.load().mno.is_trusted_gateway(peer) {
        return;
    }
    match conduct.record(status, || app.limits_config()) {
        Earned::Nothing => {}
        Earned::SlowDown => app.metrics.abusive_connection("slowed"),
        Earned::Close => {
            app.metrics.abusive_connection("closed");
            let limits = app.limits();
            let penalty = match federation {
                true => limits.federation.as_ref().map(|f| &f.admission.penalty),
                false => Some(&limits.tcp.penalty),
            };
            if !penalty.is_some_and(|p| p.put(limits.source(peer))) {
                app.metrics.limiter_overflow("penalty");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_of_refusals_slows_then_closes_and_one_success_ends_it() {
        let mut limits = crate::config::Config::parse("", Vec::new()).unwrap().limits;
        limits.refusals_before_slowdown = 3;
        limits.refusals_before_close = 6;
        let conduct = Conduct::new();
        let refuse = || conduct.record(http::StatusCode::FORBIDDEN, || &limits);
        assert_eq!([refuse(), refuse()], [Earned::Nothing; 2]);
        assert_eq!(conduct.delay(|| &limits), Duration::ZERO);
        assert_eq!(refuse(), Earned::SlowDown);
        assert_eq!(conduct.delay(|| &limits), FIRST_SLOWDOWN);
        assert_eq!(refuse(), Earned::Nothing);
        assert_eq!(conduct.delay(|| &limits), FIRST_SLOWDOWN * 2);
        assert_eq!(
            conduct.record(http::StatusCode::OK, || &limits),
            Earned::Nothing
        );
        assert_eq!(
            conduct.delay(|| &limits),
            Duration::ZERO,
            "a success ends the run"
        );
        assert_eq!(
            conduct.record(http::StatusCode::NOT_FOUND, || &limits),
            Earned::Nothing
        );
        // The server's own 503s neither count nor end a run.
        for _ in 0..20 {
            let earned = conduct.record(http::StatusCode::SERVICE_UNAVAILABLE, || &limits);
            assert_eq!(earned, Earned::Nothing);
        }
        assert_eq!(conduct.delay(|| &limits), Duration::ZERO);
        assert_eq!([refuse(), refuse()], [Earned::Nothing; 2]);
        conduct.record(http::StatusCode::SERVICE_UNAVAILABLE, || &limits);
        assert_eq!(refuse(), Earned::SlowDown, "the run went on past the 503");
        conduct.record(http::StatusCode::OK, || &limits);
        let earned: Vec<_> = (0..6).map(|_| refuse()).collect();
        assert_eq!(earned[2], Earned::SlowDown);
        assert_eq!(earned[5], Earned::Close);
        assert!(conduct.close.is_cancelled());
        for _ in 0..40 {
            refuse();
        }
        assert_eq!(conduct.delay(|| &limits), LONGEST_SLOWDOWN);
    }

    #[tokio::test]
    async fn a_stream_answers_inline_or_waits_in_a_task_of_its_own() {
        use hyper::rt::Executor;
        let (answered, mut at_once) = tokio::sync::oneshot::channel();
        FirstPollInline.execute(async move {
            let _ = answered.send(());
        });
        assert!(at_once.try_recv().is_ok(), "a ready future ran inline");

        let (go, wait) = tokio::sync::oneshot::channel::<()>();
        let (answered, later) = tokio::sync::oneshot::channel();
        FirstPollInline.execute(async move {
            let _ = wait.await;
            let _ = answered.send(());
        });
        go.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(5), later)
            .await
            .expect("a waiting future is woken in its own task")
            .unwrap();
        FirstPollInline.execute(async { panic!("a handler's bug") });
        let (answered, mut after) = tokio::sync::oneshot::channel();
        FirstPollInline.execute(async move {
            let _ = answered.send(());
        });
        assert!(
            after.try_recv().is_ok(),
            "a panic costs only its own stream"
        );
    }

    #[tokio::test]
    async fn quiet_counts_from_the_last_request_and_never_cuts_one() {
        let activity = Activity::new();
        let (first, between) = (Duration::from_millis(100), Duration::from_millis(300));
        let started = Instant::now();
        activity.quiet_for(first, between).await;
        let waited = started.elapsed();
        assert!(
            waited >= first && waited < between,
            "no request: the first limit ({waited:?})"
        );

        let busy = activity.begin();
        let quiet = tokio::spawn({
            let activity = activity.clone();
            async move { activity.quiet_for(first, between).await }
        });
        tokio::time::sleep(between * 3).await;
        assert!(!quiet.is_finished(), "a request in flight is never cut");
        drop(busy);
        let ended = Instant::now();
        quiet.await.unwrap();
        assert!(ended.elapsed() >= between, "{:?}", ended.elapsed());
    }
}
