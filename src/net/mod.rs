//! Transports around the core: the public HTTPS (HTTP/1.1, HTTP/2) and
//! HTTP/3 listeners, the admin API, the one error map (`error`), and the
//! server's lifecycle (start, ready, graceful shutdown).
//!
//! [`start`] binds every listener (port 0 works: tests use it), serves the
//! admin API at once so probes see `/readyz` go from 503 to 200, replays the
//! log, then opens the public listener. [`Running::shutdown`] stops
//! accepting, lets in-flight requests finish, and closes the log.

pub mod admin;
pub mod admit;
pub mod conn;
pub mod error;
pub mod h3;
pub mod https;
pub mod limits;
pub mod metrics;
pub mod resolve;
pub mod tls;

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use http::HeaderValue;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Config, Secret};
use crate::core::{Refusal, Sessions};
use crate::deploy::{self, DeployError};
use crate::store::{Store, StoreError};
use crate::wire::{SubscriberKey, SubscriberRef};

pub use metrics::Metrics;

/// Unix time in milliseconds: the one clock the transports read.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Everything a request handler needs, shared by all connections.
#[derive(Debug)]
pub struct App {
    pub config: Config,
    pub store: Store,
    pub sessions: Sessions,
    pub key: SubscriberKey,
    pub metrics: Metrics,
    /// Association creations per subscriber (DESIGN §4's rate limit).
    pub creations: DefaultKeyedRateLimiter<SubscriberRef>,
    /// `Alt-Svc` advertising HTTP/3, when it is on.
    pub alt_svc: Option<HeaderValue>,
    /// Open client connections over all transports: the load signal for
    /// shedding unauthenticated requests.
    pub open_connections: AtomicUsize,
    pub limits: Limiters,
    /// Peer CMPs to forward to (`[federation]` peers).
    pub peers: Option<crate::federation::Peers>,
    /// What the resolution rule applies ([`crate::core::admit`]).
    pub rules: crate::core::Rules,
}

/// The keyed limits of `[limits]`, cheapest first.
#[derive(Debug)]
pub struct Limiters {
    pub per_address: Arc<limits::PerAddress>,
    pub tcp_accepts: limits::KeyedRate<std::net::IpAddr>,
    pub quic_connections: limits::KeyedRate<std::net::IpAddr>,
    pub requests_per_address: limits::KeyedRate<std::net::IpAddr>,
    /// Keyed by the association's sequence number: unique, and no allocation.
    pub requests_per_clientid: limits::KeyedRate<crate::store::Seq>,
    /// Requests without an association from off the MNO network, all
    /// together (the tarpit's pace).
    pub unauthenticated: Option<limits::Pace>,
    /// The same from inside the MNO pools (first scans, which may create an
    /// association): a budget of its own, so a flood from outside cannot
    /// starve subscribers' first scans.
    pub first_scans: Option<limits::Pace>,
    /// All new TLS and QUIC handshakes together.
    pub handshakes: Option<limits::Pace>,
    /// Returning clients (a TLS ticket or a QUIC NEW_TOKEN token this
    /// server issued), at the same rate: a queue of their own, which a flood
    /// of new handshakes cannot fill (a replayed ticket only competes with
    /// other returning clients).
    pub resumptions: Option<limits::Pace>,
    /// The saturation signal (`overload_lag`) of the main runtime (TCP,
    /// admin) and of QUIC's: each listener watches its own.
    pub main_lag: Option<Arc<limits::Lag>>,
    pub quic_lag: Option<Arc<limits::Lag>>,
    /// Sources whose connection was closed for its conduct.
    pub penalty: limits::PenaltyBox,
    /// `max_connections`: one count over TCP and QUIC together.
    pub connections: Arc<tokio::sync::Semaphore>,
    /// Tarpit waiters per source (`tarpit_per_source`).
    pub tarpit_sources: Option<Arc<limits::PerAddress>>,
    /// The federation listener's own admission (when it listens).
    pub federation: Option<admit::FederationLimits>,
    ipv6_prefix_len: u8,
}

impl Limiters {
    fn new(config: &Config) -> Self {
        let l = &config.limits;
        Self {
            per_address: Arc::new(limits::PerAddress::new(l.max_connections_per_address)),
            tcp_accepts: limits::KeyedRate::per_second(
                l.accepts_per_address_per_sec,
                l.limiter_max_keys,
            ),
            quic_connections: limits::KeyedRate::per_second(
                config.http3.connections_per_address_per_sec,
                l.limiter_max_keys,
            ),
            requests_per_address: limits::KeyedRate::per_second(
                l.requests_per_address_per_sec,
                l.limiter_max_keys,
            ),
            requests_per_clientid: limits::KeyedRate::per_second(
                l.requests_per_clientid_per_sec,
                l.limiter_max_keys,
            ),
            unauthenticated: limits::Pace::per_second(l.unauthenticated_per_sec),
            first_scans: limits::Pace::per_second(l.first_scans_per_sec),
            handshakes: limits::Pace::per_second(l.handshakes_per_sec),
            resumptions: limits::Pace::per_second(l.handshakes_per_sec),
            main_lag: limits::Lag::new(l.overload_lag).map(Arc::new),
            quic_lag: limits::Lag::new(l.overload_lag).map(Arc::new),
            penalty: limits::PenaltyBox::new(l.penalty, l.limiter_max_keys),
            connections: Arc::new(tokio::sync::Semaphore::new(l.max_connections)),
            tarpit_sources: (l.tarpit_per_source > 0)
                .then(|| Arc::new(limits::PerAddress::new(l.tarpit_per_source))),
            federation: config
                .federation
                .as_ref()
                .filter(|federation| federation.listen.is_some())
                .map(|federation| admit::FederationLimits::new(federation, l)),
            ipv6_prefix_len: l.ipv6_prefix_len,
        }
    }

    /// The key per-source limits count `addr` under ([`limits::source_key`]).
    pub fn source(&self, addr: std::net::IpAddr) -> std::net::IpAddr {
        limits::source_key(addr, self.ipv6_prefix_len)
    }

    /// The handshake pace a new connection waits in, and its name (for
    /// `handshake_turns_total{queue}`).
    pub fn handshake_pace(&self, returning: bool) -> (Option<&limits::Pace>, &'static str) {
        match returning {
            true => (self.resumptions.as_ref(), "returning"),
            false => (self.handshakes.as_ref(), "new"),
        }
    }

    fn retain_recent(&self) {
        self.tcp_accepts.retain_recent();
        self.quic_connections.retain_recent();
        self.requests_per_address.retain_recent();
        self.requests_per_clientid.retain_recent();
        if let Some(federation) = &self.federation {
            federation.retain_recent();
        }
    }
}

impl App {
    /// A turn in the tarpit for a request without an association: paced to
    /// `unauthenticated_per_sec` (off the MNO network) or
    /// `first_scans_per_sec` (on it). Returns how long to wait for the turn
    /// (the caller waits, holding no lock, costing no CPU) and the
    /// source's place among the waiters, to hold meanwhile: a source (a
    /// per-address key) may have at most `tarpit_per_source` requests
    /// waiting, more are refused at once; a turn further than `tarpit_max`
    /// away is `Overloaded`.
    pub fn tarpit_turn(
        &self,
        on_mno_network: bool,
        source: IpAddr,
    ) -> Result<(Duration, Option<limits::AddressSlot>), Refusal> {
        let pace = match on_mno_network {
            true => &self.limits.first_scans,
            false => &self.limits.unauthenticated,
        };
        let Some(pace) = pace else {
            return Ok((Duration::ZERO, None));
        };
        let waiting = match &self.limits.tarpit_sources {
            Some(sources) => Some(sources.try_open(source).ok_or(Refusal::RateLimited {
                // A waiter's turn is at most `tarpit_max` away.
                wait: self.config.limits.tarpit_max,
            })?),
            None => None,
        };
        let wait = pace
            .reserve(self.config.limits.tarpit_max)
            .ok_or(Refusal::Overloaded)?;
        Ok((wait, waiting))
    }

    /// Whether a request without an association should be shed now.
    /// (Runtime lag does not shed: a 503 at once frees a flooding client
    /// to send its next request, the tarpit holds it.)
    pub fn shedding(&self) -> bool {
        self.open_connections.load(Ordering::Relaxed)
            > self.config.limits.shed_unauthenticated_above
    }

    /// Whether the main runtime lags past `limits.overload_lag`: no new
    /// TCP connections are taken on until it catches up.
    pub fn tcp_overloaded(&self) -> bool {
        self.limits
            .main_lag
            .as_ref()
            .is_some_and(|l| l.overloaded())
    }

    /// Whether QUIC's runtime lags past `limits.overload_lag`: Initials
    /// are dropped until it catches up.
    pub fn quic_overloaded(&self) -> bool {
        self.limits
            .quic_lag
            .as_ref()
            .is_some_and(|l| l.overloaded())
    }

    /// Counts a keyed limit's verdict; `Err(RateLimited)` when over it.
    pub fn rate_verdict(
        &self,
        limit: &'static str,
        verdict: limits::Verdict,
    ) -> Result<(), Refusal> {
        match verdict {
            limits::Verdict::Allowed => Ok(()),
            limits::Verdict::Overflow => {
                self.metrics.limiter_overflow(limit);
                Ok(())
            }
            limits::Verdict::Limited(wait) => Err(Refusal::RateLimited { wait }),
        }
    }

    /// Takes one creation from `subscriber`'s budget
    /// (`auth.associations_per_minute`).
    pub fn creation_budget(&self, subscriber: &SubscriberRef) -> limits::Verdict {
        match self.creations.check_key(subscriber) {
            Ok(()) => limits::Verdict::Allowed,
            Err(not_until) => limits::Verdict::Limited(
                not_until.wait_time_from(governor::clock::Clock::now(self.creations.clock())),
            ),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot create data dir {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Deploy(#[from] DeployError),
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Http3(#[from] h3::H3Error),
    #[error("cannot open the event log: {0}")]
    Store(#[from] StoreError),
    #[error("cannot join the cluster: {0}")]
    Cluster(#[from] crate::store::cluster::ClusterError),
    #[error(transparent)]
    Radius(#[from] crate::radius::RadiusError),
    #[error(transparent)]
    Federation(#[from] crate::federation::FederationError),
    #[error(transparent)]
    InUse(#[from] crate::store::owner::LockError),
}

/// A started server.
#[derive(Debug)]
pub struct Running {
    pub public_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    /// The RADIUS accounting socket, when `[radius]` is on.
    pub radius_addr: Option<SocketAddr>,
    /// The federation listener, when `federation.listen` is set.
    pub federation_addr: Option<SocketAddr>,
    pub admin_token: Secret<String>,
    /// The CA to trust when the certificate was generated (no `tls_cert`).
    pub ca_cert: Option<PathBuf>,
    pub app: Arc<App>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
    /// Dropped last: QUIC's tasks are tracked by `tracker`.
    _quic_runtime: Option<h3::QuicRuntime>,
    /// Released once the server is gone ([`crate::store::owner`]).
    _data_dir_lock: crate::store::owner::DataDirLock,
}

impl Running {
    /// Stops accepting, waits up to `limits.shutdown_grace` for in-flight
    /// requests, then drops the application (and with it the log writer).
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        self.tracker.close();
        let grace = self.app.config.limits.shutdown_grace;
        if tokio::time::timeout(grace, self.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!("shutdown grace over; closing remaining connections");
        }
        write_scan_counts(&self.app).await;
        // The next start loads this and replays only what comes after it.
        match self.app.store.write_snapshot().await {
            Ok(seq) => tracing::info!(seq, "index snapshot written"),
            Err(e) => tracing::warn!(error = %e, "index snapshot not written"),
        }
    }
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, ServeError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Bind { addr, source })
}

/// Starts the server described by `config`; returns once the public
/// listener accepts (the log has been replayed).
pub async fn start(config: Config) -> Result<Running, ServeError> {
    create_private_dir(&config.data_dir)?;
    // For the server's whole life: no offline tool rewrites this data dir
    // meanwhile, and no second server starts on it.
    let data_dir_lock =
        crate::store::owner::DataDirLock::acquire(&config.data_dir, "homecmp serve")?;
    let secret = match &config.subscriber_secret {
        Some(secret) => *secret.expose(),
        None => deploy::subscriber_secret(&config.data_dir)?,
    };
    let admin_token = Secret::new(deploy::admin_token(&config.admin_token_path())?);
    let certificates = load_certificates(&config)?;
    let admin_listener = bind(config.admin_listen).await?;
    let public_listener = bind(config.listen).await?;
    let admin_addr = local_addr(&admin_listener, config.admin_listen)?;
    let public_addr = local_addr(&public_listener, config.listen)?;
    // HTTP/3 on the UDP port of the same number.
    let quic = match &certificates.quic {
        Some(quic_tls) => Some(open_quic(&config, quic_tls, public_addr)?),
        None => None,
    };

    let shutdown = CancellationToken::new();
    let tracker = TaskTracker::new();
    // The admin API answers at once, so probes see /readyz go 503 -> 200.
    let admin_state = Arc::new(admin::AdminState {
        token: admin_token.clone(),
        app: Default::default(),
    });
    tracker.spawn(admin::serve(
        admin_listener,
        admin::router(admin_state.clone()),
        config.limits.clone(),
        config.admin_max_connections,
        shutdown.clone(),
        tracker.clone(),
    ));

    let store = replay(&config).await?;
    if let Some(cluster) = &config.cluster {
        // Caught up with the shared stream before serving (readyz 503 until then).
        store.attach(crate::store::cluster::Link::join(cluster, &store).await?);
    }
    let radius = match &config.radius {
        Some(radius) => {
            let clients = crate::radius::clients(radius)?;
            Some((crate::radius::bind(radius.listen).await?, clients))
        }
        None => None,
    };
    let (peers, federation) = match &config.federation {
        Some(federation) => {
            let peers = (!federation.peers.is_empty() || federation.mcr_url.is_some())
                .then(|| crate::federation::Peers::new(federation))
                .transpose()?;
            let listener = match federation.listen {
                Some(addr) => {
                    let (certs, key) = tls::load(&federation.cert_file, &federation.key_file)?;
                    let roots = tls::roots(&federation.ca_file)?;
                    let tls = tls::mutual_server_config(certs, key, roots)?;
                    Some((bind(addr).await?, tokio_rustls::TlsAcceptor::from(tls)))
                }
                None => None,
            };
            (peers, listener)
        }
        None => (None, None),
    };
    let app = Arc::new(App::new(config, store, &secret, public_addr, peers));
    admin_state.app.set(app.clone()).expect("set once");
    let federation_addr = match federation {
        Some((listener, acceptor)) => {
            let addr = listener.local_addr().ok();
            tracker.spawn(crate::federation::serve(
                app.clone(),
                listener,
                acceptor,
                shutdown.clone(),
                tracker.clone(),
            ));
            addr
        }
        None => None,
    };
    let radius_addr = match radius {
        Some((socket, clients)) => {
            let addr = socket.local_addr().ok();
            tracker.spawn(crate::radius::serve(
                app.clone(),
                socket,
                clients,
                shutdown.clone(),
            ));
            addr
        }
        None => None,
    };

    tracker.spawn(housekeeping(app.clone(), shutdown.clone()));
    tracker.spawn(flush_scan_counts(app.clone(), shutdown.clone()));
    if let Some(lag) = app.limits.main_lag.clone() {
        tracker.spawn(lag.probe(shutdown.clone()));
    }
    let quic_runtime = quic.map(|(runtime, endpoint)| {
        let serve = h3::serve(app.clone(), endpoint, shutdown.clone(), tracker.clone());
        tracker.spawn_on(serve, runtime.handle());
        if let Some(lag) = app.limits.quic_lag.clone() {
            tracker.spawn_on(lag.probe(shutdown.clone()), runtime.handle());
        }
        runtime
    });
    tracker.spawn(https::serve(
        app.clone(),
        public_listener,
        tokio_rustls::TlsAcceptor::from(certificates.https),
        shutdown.clone(),
        tracker.clone(),
    ));
    Ok(Running {
        public_addr,
        admin_addr,
        radius_addr,
        federation_addr,
        admin_token,
        ca_cert: certificates.ca_cert,
        app,
        shutdown,
        tracker,
        _quic_runtime: quic_runtime,
        _data_dir_lock: data_dir_lock,
    })
}

/// The data dir, owner only: it holds the subscriber key, the admin token
/// and the log.
fn create_private_dir(path: &std::path::Path) -> Result<(), ServeError> {
    let mut dir = std::fs::DirBuilder::new();
    dir.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut dir, 0o700);
    dir.create(path).map_err(|source| ServeError::DataDir {
        path: path.to_owned(),
        source,
    })
}

/// The TLS configurations of the listeners, from the configured
/// certificate or one generated into the data dir (with its CA).
struct Certificates {
    https: Arc<rustls::ServerConfig>,
    quic: Option<Arc<rustls::ServerConfig>>,
    ca_cert: Option<PathBuf>,
}

fn load_certificates(config: &Config) -> Result<Certificates, ServeError> {
    let (cert_path, key_path, ca_cert) = match &config.tls {
        Some((cert, key)) => (cert.clone(), key.clone(), None),
        None => {
            let ip = config.listen.ip();
            let extra = match ip.is_unspecified() {
                true => vec![],
                false => vec![ip.to_string()],
            };
            let generated = deploy::self_signed_tls(&config.data_dir, &extra)?;
            (generated.cert, generated.key, Some(generated.ca_cert))
        }
    };
    let (certs, key) = tls::load(&cert_path, &key_path)?;
    let https = tls::server_config(certs.clone(), key.clone_key(), &[b"h2", b"http/1.1"])?;
    let quic = config
        .http3
        .enabled
        .then(|| tls::server_config(certs, key, &[b"h3"]))
        .transpose()?;
    Ok(Certificates {
        https,
        quic,
        ca_cert,
    })
}

fn local_addr(listener: &TcpListener, configured: SocketAddr) -> Result<SocketAddr, ServeError> {
    listener.local_addr().map_err(|source| ServeError::Bind {
        addr: configured,
        source,
    })
}

/// The QUIC endpoint on UDP `addr`, on a runtime of its own.
fn open_quic(
    config: &Config,
    quic_tls: &rustls::ServerConfig,
    addr: SocketAddr,
) -> Result<(h3::QuicRuntime, quinn::Endpoint), ServeError> {
    let quic_config = h3::server_config(quic_tls.clone(), &config.http3, &config.limits)?;
    let socket = h3::bind_udp(addr).map_err(|source| ServeError::Bind { addr, source })?;
    let runtime =
        h3::QuicRuntime::new(config.http3.worker_threads).map_err(h3::H3Error::Runtime)?;
    // quinn spawns its drivers on, and registers the socket with, the
    // runtime entered here.
    let endpoint = {
        let _entered = runtime.handle().enter();
        h3::endpoint(socket, quic_config)?
    };
    Ok((runtime, endpoint))
}

/// Opens the log and rebuilds the index from it, off the async threads.
async fn replay(config: &Config) -> Result<Store, ServeError> {
    let log_path = config.data_dir.join(crate::LOG_DIR);
    let snapshot = crate::store::snapshot::path(&config.data_dir);
    let started = std::time::Instant::now();
    let (store, how) = tokio::task::spawn_blocking(move || Store::open_from(&log_path, &snapshot))
        .await
        .expect("replay task does not panic")?;
    let counts = store.index().counts();
    tracing::info!(
        associations = counts.associations,
        codes = counts.codes,
        last_seq = counts.last_seq,
        snapshot_seq = how.snapshot_seq,
        replayed = how.replayed,
        millis = started.elapsed().as_millis() as u64,
        "index rebuilt"
    );
    Ok(store)
}

impl App {
    fn new(
        config: Config,
        store: Store,
        secret: &[u8; 32],
        public_addr: SocketAddr,
        peers: Option<crate::federation::Peers>,
    ) -> Self {
        let per_minute = NonZeroU32::new(config.associations_per_minute).unwrap_or(NonZeroU32::MIN);
        let alt_svc = config
            .http3
            .enabled
            .then(|| {
                HeaderValue::from_str(&format!("h3=\":{}\"; ma=86400", public_addr.port())).ok()
            })
            .flatten();
        App {
            sessions: Sessions::default(),
            key: SubscriberKey::new(secret),
            metrics: Metrics::new(),
            creations: RateLimiter::keyed(Quota::per_minute(per_minute)),
            alt_svc,
            open_connections: AtomicUsize::new(0),
            limits: Limiters::new(&config),
            peers,
            rules: crate::core::Rules {
                policy: config.policy.clone(),
                mno: config.mno.clone(),
                max_uri_bytes: config.limits.max_uri_bytes,
                ipv6_prefix_len: config.limits.ipv6_prefix_len,
                msisdn_header: config.msisdn_header.clone(),
            },
            store,
            config,
        }
    }
}

/// Writes the resolution counts per code every `server.scan_stats_flush_secs`,
/// so that no request writes to disk for them.
async fn flush_scan_counts(app: Arc<App>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(app.config.scan_stats_flush);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        write_scan_counts(&app).await;
    }
}

/// Takes the counts not yet written and writes them (a failed write loses
/// them, and says so: they are statistics, not state).
async fn write_scan_counts(app: &App) {
    let counts = app.store.index().take_pending_scans();
    if counts.is_empty() {
        return;
    }
    let writer = app
        .config
        .cluster
        .as_ref()
        .map_or("local", |c| c.node.as_str());
    if let Err(e) = app.store.record_scans(counts, writer, now_ms()).await {
        tracing::warn!(error = %e, "resolution counts not written");
    }
}

/// Keeps memory bounded: expired session bindings and idle rate-limiter
/// keys are dropped every few seconds.
async fn housekeeping(app: Arc<App>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        app.sessions.sweep(now_ms());
        app.creations.retain_recent();
        app.creations.shrink_to_fit();
        app.limits.retain_recent();
        app.limits.penalty.sweep();
    }
}

impl App {
    /// Records what a connection's answer says about its conduct: counts a
    /// slow-down, and on a close holds `peer`'s source in the penalty box.
    /// A trusted gateway's connection carries many subscribers: it is not
    /// judged as one client (they are limited per forwarded address).
    pub fn judge(&self, conduct: &conn::Conduct, peer: IpAddr, status: http::StatusCode) {
        if self.config.mno.is_trusted_gateway(peer) {
            return;
        }
        match conduct.record(status, &self.config.limits) {
            conn::Earned::Nothing => {}
            conn::Earned::SlowDown => self.metrics.abusive_connection("slowed"),
            conn::Earned::Close => {
                self.metrics.abusive_connection("closed");
                if !self.limits.penalty.put(self.limits.source(peer)) {
                    self.metrics.limiter_overflow("penalty");
                }
            }
        }
    }
}
