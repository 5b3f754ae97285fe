//! The composition root: [`start`] builds every part of a server from its
//! [`Config`] and wires them together; nothing below imports it.
//!
//! It binds every listener (port 0 works: tests use it), serves the admin
//! API at once so probes see `/readyz` go from 503 to 200, replays the log,
//! then opens the public listener. [`Running::shutdown`] stops accepting,
//! lets in-flight requests finish, writes the pending scan counts and an
//! index snapshot, and closes the log.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::app::App;
use crate::clock::now_ms;
use crate::config::{Config, Secret};
use crate::deploy::{self, DeployError};
use crate::net::{self, admin, h3, https};
use crate::store::owner::DataDirLock;
use crate::store::{Store, StoreError};
use crate::tls;

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
    Tls(#[from] crate::tls::TlsError),
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
    #[error(transparent)]
    Sessions(#[from] crate::sessions::kept::KeptError),
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
        let grace = self.app.limits().config.shutdown_grace;
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
    let data_dir_lock = DataDirLock::acquire(&config.data_dir, "homecmp serve")?;
    let secret = match &config.subscriber_secret {
        Some(secret) => *secret.expose(),
        None => deploy::subscriber_secret(&config.data_dir)?,
    };
    let admin_token = Secret::new(deploy::admin_token(&config.admin_token_path())?);
    let metrics = Arc::new(crate::metrics::Metrics::new());
    let listeners = Listeners::open(&config, &metrics).await?;
    let tasks = Tasks::default();
    // The admin API answers at once, so probes see /readyz go 503 -> 200.
    let admin_state = tasks.serve_admin(&config, listeners.admin, &admin_token, &metrics);

    let store = replay(&config).await?;
    if let Some(cluster) = &config.cluster {
        // Caught up with the shared stream before serving (readyz 503 until then).
        store.attach(crate::store::cluster::Link::join(cluster, &store).await?);
    }
    let radius = open_radius(&config).await?;
    let (federation, federation_listener) = open_federation(&config, &metrics).await?;
    let public_addr = listeners.public_addr;
    let bindings = Arc::new(crate::sessions::Bindings::open(&config, &secret, now_ms())?);
    if let Some(cluster) = &config.cluster {
        // Every node's bindings, before this one is ready.
        crate::sessions::shared::join(cluster, bindings.clone()).await?;
    }
    let app = Arc::new(App::new(
        config,
        store,
        metrics,
        bindings,
        listeners.certificate.clone(),
        public_addr,
        federation,
    ));
    admin_state.app.set(app.clone()).expect("set once");

    let federation_addr = federation_listener.and_then(|l| tasks.serve_federation(&app, l));
    let radius_addr = radius.and_then(|r| tasks.serve_radius(&app, r));
    let quic_runtime = tasks.serve_public(&app, listeners.public, listeners.quic);
    Ok(Running {
        public_addr: listeners.public_addr,
        admin_addr: listeners.admin_addr,
        radius_addr,
        federation_addr,
        admin_token,
        ca_cert: listeners.ca_cert,
        app,
        shutdown: tasks.shutdown,
        tracker: tasks.tracker,
        _quic_runtime: quic_runtime,
        _data_dir_lock: data_dir_lock,
    })
}

/// The server's tasks: every one is tracked, and stops on `shutdown`.
#[derive(Default)]
struct Tasks {
    shutdown: CancellationToken,
    tracker: TaskTracker,
}

impl Tasks {
    /// The admin API, at once: it answers `/readyz` (503) before the App
    /// exists, and everything else once `AdminState::app` is set.
    fn serve_admin(
        &self,
        config: &Config,
        listener: TcpListener,
        token: &Secret<String>,
        metrics: &Arc<crate::metrics::Metrics>,
    ) -> Arc<admin::AdminState> {
        let state = Arc::new(admin::AdminState {
            tokens: crate::access::Tokens::new(token.expose(), &config.data_dir),
            oidc: config.admin_oidc.clone().map(|provider| {
                let verifier = Arc::new(crate::oidc::Verifier::new(provider));
                let prefetching = verifier.clone();
                self.tracker
                    .spawn(async move { prefetching.prefetch().await });
                verifier
            }),
            app: Default::default(),
            metrics: metrics.clone(),
            api_document: crate::net::openapi::json,
        });
        self.tracker.spawn(admin::serve(
            listener,
            admin::router(state.clone()),
            config.limits.clone(),
            crate::limits::Admission::admin(config.admin_max_connections),
            metrics.clone(),
            self.shutdown.clone(),
            self.tracker.clone(),
        ));
        state
    }

    fn serve_federation(&self, app: &Arc<App>, listener: TcpListener) -> Option<SocketAddr> {
        let addr = listener.local_addr().ok();
        let (shutdown, tracker) = (self.shutdown.clone(), self.tracker.clone());
        let serve = net::federation::serve(app.clone(), listener, shutdown, tracker);
        self.tracker.spawn(serve);
        addr
    }

    /// RADIUS gets the bindings and the metrics, not the App.
    fn serve_radius(
        &self,
        app: &Arc<App>,
        (socket, clients): (tokio::net::UdpSocket, Vec<crate::radius::Client>),
    ) -> Option<SocketAddr> {
        let addr = socket.local_addr().ok();
        let config = app.config.radius.clone().expect("serving RADIUS");
        let serve = crate::radius::serve(
            config,
            app.bindings.clone(),
            app.metrics.clone(),
            socket,
            clients,
            self.shutdown.clone(),
        );
        self.tracker.spawn(serve);
        addr
    }

    /// The public listeners (HTTPS, and HTTP/3 on its own runtime) and the
    /// background work they need: housekeeping, the scan-count flush, the
    /// lag probes.
    fn serve_public(
        &self,
        app: &Arc<App>,
        public: (TcpListener, Arc<rustls::ServerConfig>),
        quic: Option<(h3::QuicRuntime, quinn::Endpoint)>,
    ) -> Option<h3::QuicRuntime> {
        let (shutdown, tracker) = (&self.shutdown, &self.tracker);
        tracker.spawn(housekeeping(app.clone(), shutdown.clone()));
        tracker.spawn(flush_scan_counts(app.clone(), shutdown.clone()));
        if app.config.snapshot_every_events > 0 {
            tracker.spawn(snapshot_while_serving(app.clone(), shutdown.clone()));
        }
        if let Some(lag) = app.limits().main_lag.clone() {
            tracker.spawn(lag.probe(shutdown.clone()));
        }
        let quic_runtime = quic.map(|(runtime, endpoint)| {
            let serve = h3::serve(app.clone(), endpoint, shutdown.clone(), tracker.clone());
            tracker.spawn_on(serve, runtime.handle());
            if let Some(lag) = app.limits().quic_lag.clone() {
                tracker.spawn_on(lag.probe(shutdown.clone()), runtime.handle());
            }
            runtime
        });
        let (listener, tls) = public;
        tracker.spawn(https::serve(
            app.clone(),
            listener,
            tokio_rustls::TlsAcceptor::from(tls),
            shutdown.clone(),
            tracker.clone(),
        ));
        quic_runtime
    }
}

/// The admin and public sockets, bound before anything slow happens (so a
/// port in use fails the start at once).
struct Listeners {
    admin: TcpListener,
    admin_addr: SocketAddr,
    public: (TcpListener, Arc<rustls::ServerConfig>),
    public_addr: SocketAddr,
    /// HTTP/3 on the UDP port of the same number, when it is on.
    quic: Option<(h3::QuicRuntime, quinn::Endpoint)>,
    ca_cert: Option<PathBuf>,
    certificate: Arc<tls::Certificate>,
}

impl Listeners {
    async fn open(config: &Config, metrics: &crate::metrics::Metrics) -> Result<Self, ServeError> {
        let certificates = load_certificates(config)?;
        metrics.certificate("public", &certificates.served.leaf());
        let admin = bind(config.admin_listen).await?;
        let public = bind(config.listen).await?;
        let admin_addr = local_addr(&admin, config.admin_listen)?;
        let public_addr = local_addr(&public, config.listen)?;
        let quic = match &certificates.quic {
            Some(quic_tls) => Some(open_quic(config, quic_tls, public_addr)?),
            None => None,
        };
        Ok(Self {
            admin,
            admin_addr,
            public: (public, certificates.https),
            public_addr,
            quic,
            ca_cert: certificates.ca_cert,
            certificate: certificates.served,
        })
    }
}

/// The RADIUS accounting socket and its clients, when `[radius]` is on.
async fn open_radius(
    config: &Config,
) -> Result<Option<(tokio::net::UdpSocket, Vec<crate::radius::Client>)>, ServeError> {
    let Some(radius) = &config.radius else {
        return Ok(None);
    };
    let clients = crate::radius::clients(radius)?;
    Ok(Some((crate::radius::bind(radius.listen).await?, clients)))
}

/// The peers to forward to and the federation listener (with its mutual
/// TLS), when `[federation]` is on.
async fn open_federation(
    config: &Config,
    metrics: &crate::metrics::Metrics,
) -> Result<(Option<crate::federation::Federation>, Option<TcpListener>), ServeError> {
    let Some(federation) = &config.federation else {
        return Ok((None, None));
    };
    let loaded = crate::federation::Federation::load(federation)?;
    if let Some(leaf) = &loaded.leaf {
        metrics.certificate("federation", leaf);
    }
    let listener = match federation.listen {
        Some(addr) => Some(bind(addr).await?),
        None => None,
    };
    Ok((Some(loaded), listener))
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
    /// The served certificate and key, which a reload swaps.
    served: Arc<tls::Certificate>,
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
    let served = Arc::new(tls::Certificate::load(&cert_path, &key_path)?);
    let https = tls::server_config_with(served.clone(), &[b"h2", b"http/1.1"])?;
    let quic = config
        .http3
        .enabled
        .then(|| tls::server_config_with(served.clone(), &[b"h3"]))
        .transpose()?;
    Ok(Certificates {
        served,
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

/// Writes the index snapshot again whenever the log has taken
/// `server.snapshot_every_events` events since the last one, so that a
/// start after a crash replays only those. Appends wait only for the
/// snapshot's copy in memory ([`crate::store::Store::write_snapshot`]).
async fn snapshot_while_serving(app: Arc<App>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        if app.store.events_since_snapshot() < app.config.snapshot_every_events {
            continue;
        }
        let started = std::time::Instant::now();
        match app.store.write_snapshot().await {
            Ok(seq) => tracing::info!(
                seq,
                millis = started.elapsed().as_millis() as u64,
                "index snapshot written while serving"
            ),
            Err(e) => {
                tracing::warn!(error = %e, "index snapshot not written; next try in a minute");
                tokio::time::sleep(Duration::from_secs(60)).await;
            }
        }
    }
}

/// Takes the counts not yet written and writes them (a failed write loses
/// them, and says so: they are statistics, not state).
async fn write_scan_counts(app: &App) {
    let counts = app.store.index().take_pending_scans();
    let rules = app.store.index().take_pending_rule_scans();
    if counts.is_empty() && rules.is_empty() {
        return;
    }
    let writer = app
        .config
        .cluster
        .as_ref()
        .map_or("local", |c| c.node.as_str());
    if let Err(e) = app
        .store
        .record_scans(counts, rules, writer, now_ms())
        .await
    {
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
        app.bindings.sweep(now_ms());
        app.creations.retain_recent();
        app.creations.shrink_to_fit();
        app.limits().retain_recent();
    }
}
