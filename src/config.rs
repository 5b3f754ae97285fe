//! Typed configuration: TOML file, then `HOMECMP__SECTION__KEY` environment
//! overrides, then validation that reports every error at once.
//!
//! The keys of DESIGN §7 keep their names and meaning; the others are ours
//! and documented in `homecmp.example.toml`. Defaults are the embedded ones
//! `homecmp serve` runs on with no file at all.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;

use crate::core::{AuthMode, MismatchPolicy, MnoPolicy, Policy};
use crate::wire::RoutingPrefix;

/// A value that `Debug` never shows: keys and tokens stay out of logs,
/// panics and `{:?}` dumps of the configuration.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret<T>(T);

impl<T> Secret<T> {
    pub fn new(value: T) -> Self {
        Self(value)
    }

    pub fn expose(&self) -> &T {
        &self.0
    }
}

impl<T> std::fmt::Debug for Secret<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// Prefix of environment overrides: `HOMECMP__AUTH__MODE=monitor`.
pub const ENV_PREFIX: &str = "HOMECMP__";

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    /// Resolutions per code are counted in memory and written to the log
    /// (`scans_counted`) this often.
    pub scan_stats_flush: Duration,
    /// While serving, the index snapshot is written again once the log has
    /// taken this many events since the last one (0: only at a graceful
    /// stop): a start after a crash replays at most about this many.
    pub snapshot_every_events: u64,
    pub http3: Http3Config,
    /// Both or neither: neither means a self-signed certificate in data_dir.
    pub tls: Option<(PathBuf, PathBuf)>,
    pub policy: Policy,
    pub max_clientids_per_subscriber: usize,
    /// Association creations one subscriber may make per minute.
    pub associations_per_minute: u32,
    pub session_ttl: Duration,
    pub mno: MnoPolicy,
    pub msisdn_header: http::HeaderName,
    /// Hex secret keying subscriber refs; absent: generated into data_dir.
    pub subscriber_secret: Option<Secret<[u8; 32]>>,
    pub admin_listen: SocketAddr,
    pub admin_token_file: PathBuf,
    /// Admin connections open at once; more are closed at once.
    pub admin_max_connections: usize,
    /// `[admin.oidc]`: access tokens of the operator's identity provider
    /// are accepted too. `None`: off.
    pub admin_oidc: Option<OidcConfig>,
    pub limits: Limits,
    pub log_json: bool,
    /// Cluster mode (`[cluster]` with `nats_urls`): the log is a NATS
    /// JetStream stream shared by every node. `None`: one node, its own log.
    pub cluster: Option<ClusterConfig>,
    /// `[radius]` with `listen`: a RADIUS Accounting server feeding session
    /// bindings (see `crate::radius`). `None`: off.
    pub radius: Option<RadiusConfig>,
    /// `[federation]`: peer CMPs this one forwards to, and the mutual-TLS
    /// listener they call (see `crate::federation`). `None`: neither.
    pub federation: Option<FederationConfig>,
    /// Where this config came from: what a reload reads again.
    pub source: ConfigSource,
}

/// Where a [`Config`] came from, and so what a reload reads again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigSource {
    /// A file (`--config`), with the environment's overrides.
    File(PathBuf),
    /// The embedded defaults with the environment's overrides.
    Environment,
    /// Text a caller gave ([`Config::parse`]): nothing to read again.
    Given,
}

/// `[federation]` (§9.3.2): security between two CMPs.
#[derive(Debug, Clone)]
pub struct FederationConfig {
    /// Where peer CMPs call this one (mutual TLS); `None`: nobody can.
    pub listen: Option<SocketAddr>,
    /// This CMP's federation certificate chain and key: its server
    /// certificate on `listen` and its client certificate towards peers.
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// The community CA(s), PEM: a peer is trusted, as a server and as a
    /// client, only with a certificate issued by one of them.
    pub ca_file: PathBuf,
    /// The peer CMPs this one forwards to, by routing prefix.
    pub peers: Vec<PeerConfig>,
    /// The community's registry (MCR), asked for the CMP of a prefix that
    /// is neither this CMP's nor in `peers`.
    pub mcr_url: Option<String>,
    /// How long an MCR answer (a CMP, or none) is kept.
    pub mcr_cache: Duration,
    /// Whether the registry may name a CMP at a loopback, link-local,
    /// private or unspecified address (an IP literal, or a host name that
    /// resolves to one). Off: such an answer is refused.
    pub mcr_allow_private: bool,
    /// A forwarded request's whole budget: connect, TLS, answer.
    pub timeout: Duration,
    pub max_in_flight_per_peer: usize,
    /// Consecutive failures that open a peer's circuit, and for how long.
    pub failures_to_open: u32,
    pub open_for: Duration,
    /// Requests one peer (by address) may send to `listen` per second.
    pub requests_per_peer_per_sec: u32,
    /// Admission on `listen` (`crate::net::admit`), apart from the public
    /// listener's: connections open at once, per source address, new ones
    /// per address per second, and TLS handshakes per second, all together.
    pub max_connections: usize,
    pub max_connections_per_address: u32,
    pub accepts_per_address_per_sec: u32,
    pub handshakes_per_sec: u32,
}

/// One `[[federation.peers]]` entry.
#[derive(Debug, Clone)]
pub struct PeerConfig {
    pub prefix: RoutingPrefix,
    /// Its federation URL (`https://`, no trailing slash).
    pub url: String,
    /// The CA (PEM) that verifies this peer's certificate instead of the
    /// community's `ca_file`.
    pub ca_file: Option<PathBuf>,
    /// SHA-256 of the SubjectPublicKeyInfo its certificate must carry.
    pub spki_sha256: Option<[u8; 32]>,
}

/// Session bindings held at most when `radius.max_bindings` is not set
/// (admin bindings count too).
pub const DEFAULT_MAX_BINDINGS: usize = 4_000_000;

/// `[admin.oidc]`: who the identity provider is and how its access tokens
/// grant roles (see `crate::oidc`).
#[derive(Debug, Clone)]
pub struct OidcConfig {
    /// The `iss` every token must carry.
    pub issuer: String,
    /// The `aud` every token must carry (this API's identifier at the provider).
    pub audience: String,
    pub jwks: JwksSource,
    /// The claim that lists the roles: a name, or a dotted path.
    pub roles_claim: String,
    /// How long fetched keys are used before they are fetched again.
    pub refresh: Duration,
    /// Clock skew allowed on `exp` and `nbf`.
    pub leeway: Duration,
    /// The signature algorithms accepted (asymmetric only).
    pub algorithms: Vec<jsonwebtoken::Algorithm>,
}

/// Where the provider's public keys are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwksSource {
    File(PathBuf),
    Url(String),
}

/// `[radius]`: where the packet gateways send accounting, and with what.
#[derive(Debug, Clone)]
pub struct RadiusConfig {
    pub listen: SocketAddr,
    /// Client networks (a gateway's address or CIDR) and the file holding
    /// each one's shared secret; the longest match applies.
    pub clients: Vec<(IpNet, PathBuf)>,
    pub msisdn_attribute: crate::radius::packet::MsisdnAttribute,
    /// A binding lives this long after its Start or last Interim.
    pub binding_ttl: Duration,
    /// Session bindings held at most; Starts past it are not answered.
    pub max_bindings: usize,
}

/// `[cluster]`: where the shared association stream lives.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    pub nats_urls: Vec<String>,
    /// The JetStream stream; its subjects are `<stream>.b.*` (clientid
    /// buckets), `<stream>.k.*` (codes), `<stream>.h` and `<stream>.gap`.
    pub stream: String,
    /// Copies JetStream keeps of each event (3: one server may fail).
    pub replicas: usize,
    /// This node's name in NATS and in message ids; must be unique.
    pub node: String,
    /// A NATS `.creds` file (JWT and seed), if the servers want one.
    pub credentials_file: Option<PathBuf>,
    /// A file holding an NKey user seed (`SU...`), for servers that
    /// authenticate users by NKey.
    pub nkey_seed_file: Option<PathBuf>,
    /// Root CA (PEM) for NATS over TLS; setting it requires TLS.
    pub tls_ca_file: Option<PathBuf>,
    /// How long a change may wait for JetStream's acknowledgement.
    pub publish_timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct Limits {
    pub max_connections: usize,
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_header_bytes: usize,
    pub max_concurrent_streams: u32,
    /// Longest accepted request target (path + query), bytes.
    pub max_uri_bytes: usize,
    pub shutdown_grace: Duration,
    /// Above this many open connections, requests whose clientid has no
    /// association are shed with `503 OVERLOADED`; associated clients are
    /// still served up to `max_connections`.
    pub shed_unauthenticated_above: usize,
    /// Open connections (TCP and QUIC together) one source address may hold.
    pub max_connections_per_address: u32,
    /// New TCP connections one source address may open per second.
    pub accepts_per_address_per_sec: u32,
    /// Resolution requests one source address may send per second.
    pub requests_per_address_per_sec: u32,
    /// Resolution requests one associated clientid may send per second.
    pub requests_per_clientid_per_sec: u32,
    /// Keys each per-address or per-clientid limiter may hold.
    pub limiter_max_keys: usize,
    /// Per-address limits count an IPv6 client by this many leading bits of
    /// its address (a subscriber is handed a whole /64).
    pub ipv6_prefix_len: u8,
    /// Requests without an association answered per second, all sources
    /// together; beyond it each waits for its turn (a tarpit), or gets 503
    /// at once when its turn is more than `tarpit_max` away. Associated
    /// clients never wait. 0: off.
    pub unauthenticated_per_sec: u32,
    /// The same pace for requests without an association from inside the
    /// MNO pools (first scans): a budget apart, so that a flood from
    /// outside does not starve them. 0: off.
    pub first_scans_per_sec: u32,
    pub tarpit_max: Duration,
    /// New TLS and QUIC handshakes per second, all sources together: past it
    /// a TCP connection waits for its turn (within the header-read timeout)
    /// and a QUIC Initial is dropped (the client retransmits). Established
    /// connections are not affected; returning clients (a TLS ticket or a
    /// QUIC NEW_TOKEN token this server issued) queue apart, at the same
    /// rate. 0: off.
    pub handshakes_per_sec: u32,
    /// Overload: when the runtime polls due tasks later than this on
    /// average, no new connections are taken on (the TCP accept loop
    /// pauses, QUIC Initials are dropped) until it catches up; established
    /// connections are served throughout. Zero: off.
    pub overload_lag: Duration,
    /// A connection on a run of this many refused requests waits before
    /// each next one (10 ms, doubling, up to 1 s). 0: never.
    pub refusals_before_slowdown: u32,
    /// ... and at this many is closed, its source refused new connections
    /// for `penalty`. 0: never.
    pub refusals_before_close: u32,
    pub penalty: Duration,
    /// Requests without an association one source may have waiting in the
    /// tarpit at once; more are refused at once (429), so a few addresses
    /// cannot fill the queue everyone shares. 0: no cap.
    pub tarpit_per_source: u32,
}

/// `server.http3` switches it on; the `[http3]` section tunes it.
#[derive(Debug, Clone)]
pub struct Http3Config {
    pub enabled: bool,
    pub retry: RetryPolicy,
    /// `under_load`: unvalidated handshakes in flight before Retry starts.
    pub retry_above_handshakes: usize,
    /// Handshakes in flight; more Initials are dropped unanswered.
    pub max_handshakes: usize,
    /// New QUIC connections one source address may open per second.
    pub connections_per_address_per_sec: u32,
    /// Lifetime of NEW_TOKEN validation tokens given to clients.
    pub validation_token_lifetime_secs: u64,
    /// Threads of QUIC's own runtime, apart from the one serving TCP.
    pub worker_threads: usize,
}

/// `http3.retry`: when QUIC Retry validates a client address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RetryPolicy {
    Always,
    #[default]
    UnderLoad,
    Never,
}

/// Reads `text` against the config's keys and their types only (no range
/// checks): the first unknown key or value of the wrong type, with its
/// place (`homecmp check` reads them all, one after another).
pub fn read_keys(text: &str) -> Result<(), toml::de::Error> {
    toml::from_str::<Raw>(text).map(|_| ())
}

/// Every problem found, one line each.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid configuration:\n  {}", .0.join("\n  "))]
pub struct ConfigErrors(pub Vec<String>);

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct Raw {
    server: RawServer,
    auth: RawAuth,
    mno: RawMno,
    admin: RawAdmin,
    limits: RawLimits,
    log: RawLog,
    http3: RawHttp3,
    cluster: RawCluster,
    radius: RawRadius,
    federation: RawFederation,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawFederation {
    listen: String,
    cert_file: Option<PathBuf>,
    key_file: Option<PathBuf>,
    ca_file: Option<PathBuf>,
    peers: Vec<RawPeer>,
    mcr_url: String,
    mcr_cache_secs: u64,
    mcr_allow_private: bool,
    timeout_ms: u64,
    max_in_flight_per_peer: usize,
    failures_to_open: u32,
    open_ms: u64,
    requests_per_peer_per_sec: u32,
    max_connections: usize,
    max_connections_per_address: u32,
    accepts_per_address_per_sec: u32,
    handshakes_per_sec: u32,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPeer {
    prefix: String,
    url: String,
    ca_file: Option<PathBuf>,
    spki_sha256: Option<String>,
}

impl Default for RawFederation {
    fn default() -> Self {
        Self {
            listen: String::new(),
            cert_file: None,
            key_file: None,
            ca_file: None,
            peers: Vec::new(),
            mcr_url: String::new(),
            mcr_cache_secs: 300,
            mcr_allow_private: false,
            timeout_ms: 1500,
            max_in_flight_per_peer: 256,
            failures_to_open: 5,
            open_ms: 5000,
            requests_per_peer_per_sec: 5000,
            max_connections: 256,
            max_connections_per_address: 32,
            accepts_per_address_per_sec: 20,
            handshakes_per_sec: 100,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawRadius {
    listen: String,
    clients: Vec<RawRadiusClient>,
    msisdn_attribute: String,
    binding_ttl_secs: u64,
    max_bindings: usize,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRadiusClient {
    network: String,
    secret_file: PathBuf,
}

impl Default for RawRadius {
    fn default() -> Self {
        Self {
            listen: String::new(),
            clients: Vec::new(),
            msisdn_attribute: "calling-station-id".into(),
            binding_ttl_secs: 2 * 3600,
            max_bindings: DEFAULT_MAX_BINDINGS,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawCluster {
    nats_urls: Vec<String>,
    stream: String,
    replicas: usize,
    node: String,
    credentials_file: Option<PathBuf>,
    nkey_seed_file: Option<PathBuf>,
    tls_ca_file: Option<PathBuf>,
    publish_timeout_ms: u64,
}

impl Default for RawCluster {
    fn default() -> Self {
        Self {
            nats_urls: Vec::new(),
            stream: "HOMECMP".into(),
            replicas: 3,
            node: String::new(),
            credentials_file: None,
            nkey_seed_file: None,
            tls_ca_file: None,
            publish_timeout_ms: 2000,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawHttp3 {
    retry: RetryPolicy,
    retry_above_handshakes: usize,
    max_handshakes: usize,
    connections_per_address_per_sec: u32,
    validation_token_lifetime_secs: u64,
    worker_threads: usize,
}

impl Default for RawHttp3 {
    fn default() -> Self {
        Self {
            retry: RetryPolicy::UnderLoad,
            retry_above_handshakes: 64,
            max_handshakes: 1024,
            connections_per_address_per_sec: 20,
            validation_token_lifetime_secs: 14 * 24 * 3600,
            worker_threads: 1,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawServer {
    data_dir: PathBuf,
    listen: String,
    http3: bool,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    routing_prefixes: Vec<String>,
    subscriber_secret: Option<String>,
    scan_stats_flush_secs: u64,
    snapshot_every_events: u64,
}

impl Default for RawServer {
    fn default() -> Self {
        Self {
            data_dir: "./homecmp-data".into(),
            listen: "127.0.0.1:8443".into(),
            http3: true,
            tls_cert: None,
            tls_key: None,
            routing_prefixes: vec!["2001000001".into()],
            subscriber_secret: None,
            scan_stats_flush_secs: 10,
            snapshot_every_events: 1_000_000,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawAuth {
    mode: AuthMode,
    on_mismatch: MismatchPolicy,
    max_clientids_per_subscriber: usize,
    associations_per_minute: u32,
    session_ttl_secs: u64,
}

impl Default for RawAuth {
    fn default() -> Self {
        Self {
            mode: AuthMode::Enforce,
            on_mismatch: MismatchPolicy::Reject,
            max_clientids_per_subscriber: 8,
            associations_per_minute: 10,
            session_ttl_secs: 24 * 3600,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawMno {
    networks: Vec<String>,
    trusted_gateways: Vec<String>,
    msisdn_header: String,
}

impl Default for RawMno {
    fn default() -> Self {
        Self {
            networks: vec!["127.1.0.0/16".into()],
            trusted_gateways: vec![],
            msisdn_header: "X-MSISDN".into(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawAdmin {
    listen: String,
    token_file: PathBuf,
    max_connections: usize,
    oidc: Option<RawOidc>,
}

/// `[admin.oidc]`: single sign-on with the operator's identity provider.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOidc {
    issuer: String,
    audience: String,
    jwks_file: Option<PathBuf>,
    jwks_url: Option<String>,
    #[serde(default = "RawOidc::default_roles_claim")]
    roles_claim: String,
    #[serde(default = "RawOidc::default_refresh_secs")]
    refresh_secs: u64,
    #[serde(default = "RawOidc::default_leeway_secs")]
    leeway_secs: u64,
    #[serde(default = "RawOidc::default_algorithms")]
    algorithms: Vec<String>,
}

impl RawOidc {
    fn default_roles_claim() -> String {
        "roles".into()
    }
    fn default_refresh_secs() -> u64 {
        300
    }
    fn default_leeway_secs() -> u64 {
        60
    }
    fn default_algorithms() -> Vec<String> {
        vec!["RS256".into(), "ES256".into()]
    }
}

impl Default for RawAdmin {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8444".into(),
            token_file: "admin.token".into(),
            max_connections: 64,
            oidc: None,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawLimits {
    max_connections: usize,
    header_read_timeout_ms: u64,
    idle_timeout_ms: u64,
    max_header_bytes: usize,
    max_concurrent_streams: u32,
    max_uri_bytes: usize,
    shutdown_grace_ms: u64,
    /// 0: 80% of max_connections.
    shed_unauthenticated_above: usize,
    max_connections_per_address: u32,
    accepts_per_address_per_sec: u32,
    requests_per_address_per_sec: u32,
    requests_per_clientid_per_sec: u32,
    limiter_max_keys: usize,
    ipv6_prefix_len: u8,
    unauthenticated_per_sec: u32,
    first_scans_per_sec: u32,
    tarpit_max_ms: u64,
    handshakes_per_sec: AutoOr,
    overload_lag_ms: u64,
    refusals_before_slowdown: u32,
    refusals_before_close: u32,
    penalty_secs: u64,
    tarpit_per_source: u32,
}

/// A number, or `"auto"`: derived from the machine at start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
enum AutoOr {
    Value(u32),
    Word(Auto),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Auto {
    Auto,
}

/// `handshakes_per_sec = "auto"`: per core. A full TLS handshake costs
/// about 0.6 ms of server CPU here and a QUIC one 1.2 ms (README, attack
/// matrix), so this bounds handshake work to 15–30% of the machine.
pub const HANDSHAKES_PER_SEC_PER_CORE: u32 = 250;

fn cores() -> u32 {
    std::thread::available_parallelism().map_or(1, |n| n.get() as u32)
}

impl Default for RawLimits {
    fn default() -> Self {
        Self {
            max_connections: 10_000,
            header_read_timeout_ms: 5_000,
            idle_timeout_ms: 30_000,
            max_header_bytes: 16 * 1024,
            max_concurrent_streams: 100,
            max_uri_bytes: 2048,
            shutdown_grace_ms: 10_000,
            shed_unauthenticated_above: 0,
            max_connections_per_address: 256,
            accepts_per_address_per_sec: 100,
            requests_per_address_per_sec: 2000,
            requests_per_clientid_per_sec: 100,
            limiter_max_keys: 1_000_000,
            ipv6_prefix_len: 64,
            unauthenticated_per_sec: 10_000,
            first_scans_per_sec: 10_000,
            tarpit_max_ms: 2_000,
            handshakes_per_sec: AutoOr::Word(Auto::Auto),
            overload_lag_ms: 5,
            refusals_before_slowdown: 16,
            refusals_before_close: 64,
            penalty_secs: 10,
            tarpit_per_source: 8,
        }
    }
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawLog {
    json: bool,
}

impl Config {
    /// Embedded defaults plus environment overrides.
    pub fn from_env() -> Result<Self, ConfigErrors> {
        let config = Self::parse("", std::env::vars())?;
        Ok(Self {
            source: ConfigSource::Environment,
            ..config
        })
    }

    /// Reads `path`, applies environment overrides, validates.
    pub fn load(path: &Path) -> Result<Self, ConfigErrors> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigErrors(vec![format!("cannot read {}: {e}", path.display())]))?;
        let config = Self::parse(&text, std::env::vars())?;
        Ok(Self {
            source: ConfigSource::File(path.to_owned()),
            ..config
        })
    }

    /// This config as its source says it is now (a reload); `None` for a
    /// config given as text, which has nothing to read again.
    pub fn reread(&self) -> Option<Result<Self, ConfigErrors>> {
        match &self.source {
            ConfigSource::File(path) => Some(Self::load(path)),
            ConfigSource::Environment => Some(Self::from_env()),
            ConfigSource::Given => None,
        }
    }

    /// Parses TOML text with `HOMECMP__SECTION__KEY` overrides from `env`.
    pub fn parse(
        text: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigErrors> {
        let mut table: toml::Table =
            toml::from_str(text).map_err(|e| ConfigErrors(vec![e.to_string()]))?;
        let mut errors = Vec::new();
        for (name, value) in env {
            let Some(path) = name.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            match path.split_once("__") {
                Some((section, key)) => {
                    let section = section.to_ascii_lowercase();
                    let key = key.to_ascii_lowercase();
                    let entry = table
                        .entry(section)
                        .or_insert_with(|| toml::Value::Table(Default::default()));
                    match entry.as_table_mut() {
                        Some(t) => {
                            t.insert(key, env_value(&value));
                        }
                        None => errors.push(format!("{name}: not a section")),
                    }
                }
                None => errors.push(format!("{name}: expected {ENV_PREFIX}SECTION__KEY")),
            }
        }
        let raw: Raw = toml::Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| ConfigErrors(vec![e.to_string()]))?;
        let config = validate(raw, &mut errors);
        if errors.is_empty() {
            Ok(config)
        } else {
            Err(ConfigErrors(errors))
        }
    }

    /// Where the admin token lives (relative paths are under data_dir).
    pub fn admin_token_path(&self) -> PathBuf {
        self.data_dir.join(&self.admin_token_file)
    }
}

/// An override value is TOML if it parses as TOML (`true`, `8`, `["a"]`),
/// else a plain string (`127.0.0.1:9443`).
fn env_value(text: &str) -> toml::Value {
    toml::from_str::<toml::Table>(&format!("v = {text}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(text.to_owned()))
}

fn validate(raw: Raw, errors: &mut Vec<String>) -> Config {
    check_bounds(&raw, errors);
    let http3 = http3(&raw);
    let mut addr = |key: &str, text: &str| -> SocketAddr {
        text.parse().unwrap_or_else(|_| {
            errors.push(format!("{key}: {text:?} is not an address:port"));
            SocketAddr::from(([127, 0, 0, 1], 0))
        })
    };
    let listen = addr("server.listen", &raw.server.listen);
    let admin_listen = addr("admin.listen", &raw.admin.listen);
    let tls = match (raw.server.tls_cert, raw.server.tls_key) {
        (Some(cert), Some(key)) => Some((cert, key)),
        (None, None) => None,
        _ => {
            errors.push("server.tls_cert and server.tls_key: give both or neither".into());
            None
        }
    };
    let routing_prefixes = routing_prefixes(&raw.server.routing_prefixes, errors);
    let cluster = cluster(raw.cluster, errors);
    let radius = radius(raw.radius, errors);
    if !(1..=3600).contains(&raw.server.scan_stats_flush_secs) {
        errors.push(format!(
            "server.scan_stats_flush_secs: {} must be 1 to 3600",
            raw.server.scan_stats_flush_secs
        ));
    }
    let federation = federation(raw.federation, &routing_prefixes, errors);
    if cluster.is_some() && raw.server.subscriber_secret.is_none() {
        errors.push(
            "cluster: every node must key subscribers alike: set server.subscriber_secret \
             (the same 64 hex digits on every node)"
                .into(),
        );
    }
    let subscriber_secret = raw.server.subscriber_secret.as_deref().and_then(|hex| {
        let secret = parse_secret(hex).map(Secret);
        if secret.is_none() {
            errors.push("server.subscriber_secret: expected 64 hex digits".into());
        }
        secret
    });
    let (mno, msisdn_header) = mno(&raw.mno, errors);
    let auth = &raw.auth;
    if auth.max_clientids_per_subscriber == 0 {
        errors.push("auth.max_clientids_per_subscriber: must be at least 1".into());
    }
    if auth.associations_per_minute == 0 {
        errors.push("auth.associations_per_minute: must be at least 1".into());
    }
    Config {
        source: ConfigSource::Given,
        scan_stats_flush: Duration::from_secs(raw.server.scan_stats_flush_secs),
        snapshot_every_events: raw.server.snapshot_every_events,
        data_dir: raw.server.data_dir,
        listen,
        http3,
        tls,
        policy: policy(auth, federation.as_ref(), routing_prefixes),
        max_clientids_per_subscriber: auth.max_clientids_per_subscriber,
        associations_per_minute: auth.associations_per_minute,
        session_ttl: Duration::from_secs(auth.session_ttl_secs),
        mno,
        msisdn_header,
        subscriber_secret,
        admin_listen,
        admin_token_file: raw.admin.token_file,
        admin_max_connections: raw.admin.max_connections,
        admin_oidc: raw.admin.oidc.and_then(|o| oidc(o, errors)),
        limits: limits(&raw.limits),
        log_json: raw.log.json,
        cluster,
        radius,
        federation,
    }
}

/// `[admin.oidc]`, checked: one source of keys, an http(s) URL, known
/// asymmetric algorithms, bounded times.
fn oidc(raw: RawOidc, errors: &mut Vec<String>) -> Option<OidcConfig> {
    let before = errors.len();
    for (key, value) in [("issuer", &raw.issuer), ("audience", &raw.audience)] {
        if value.trim().is_empty() {
            errors.push(format!("admin.oidc.{key}: must not be empty"));
        }
    }
    let jwks = match (raw.jwks_file, raw.jwks_url) {
        (Some(file), None) => JwksSource::File(file),
        (None, Some(url)) if url.starts_with("https://") || url.starts_with("http://") => {
            JwksSource::Url(url)
        }
        (None, Some(url)) => {
            errors.push(format!(
                "admin.oidc.jwks_url: {url:?} is not an http(s) URL"
            ));
            JwksSource::Url(url)
        }
        _ => {
            errors.push("admin.oidc: give jwks_file or jwks_url (one of them)".into());
            JwksSource::File(PathBuf::new())
        }
    };
    if !(10..=86_400).contains(&raw.refresh_secs) {
        errors.push("admin.oidc.refresh_secs: must be 10 to 86400".into());
    }
    if raw.leeway_secs > 300 {
        errors.push("admin.oidc.leeway_secs: at most 300".into());
    }
    let mut algorithms = Vec::new();
    for name in &raw.algorithms {
        match name.parse::<jsonwebtoken::Algorithm>() {
            Ok(alg) if !name.starts_with("HS") => algorithms.push(alg),
            _ => errors.push(format!(
                "admin.oidc.algorithms: {name:?} is not one of RS256, RS384, RS512, PS256, PS384, \
                 PS512, ES256, ES384, EdDSA"
            )),
        }
    }
    if raw.algorithms.is_empty() {
        errors.push("admin.oidc.algorithms: name at least one".into());
    }
    (errors.len() == before).then(|| OidcConfig {
        issuer: raw.issuer,
        audience: raw.audience,
        jwks,
        roles_claim: raw.roles_claim,
        refresh: Duration::from_secs(raw.refresh_secs),
        leeway: Duration::from_secs(raw.leeway_secs),
        algorithms,
    })
}

/// What the resolution rule applies: `[auth]`'s mode, the prefixes this
/// CMP owns and those its peers do.
fn policy(
    auth: &RawAuth,
    federation: Option<&FederationConfig>,
    routing_prefixes: Vec<RoutingPrefix>,
) -> Policy {
    Policy {
        mode: auth.mode,
        on_mismatch: auth.on_mismatch,
        federated_prefixes: federation
            .iter()
            .flat_map(|f| f.peers.iter().map(|peer| peer.prefix.clone()))
            .collect(),
        peer_registry: federation.is_some_and(|f| f.mcr_url.is_some()),
        routing_prefixes,
    }
}

fn routing_prefixes(texts: &[String], errors: &mut Vec<String>) -> Vec<RoutingPrefix> {
    let parse = |text: &String| {
        RoutingPrefix::parse(text)
            .map_err(|e| errors.push(format!("server.routing_prefixes: {text:?}: {e}")))
            .ok()
    };
    texts.iter().filter_map(parse).collect()
}

/// `[mno]`: the networks, the trusted gateways, the MSISDN header.
fn mno(raw: &RawMno, errors: &mut Vec<String>) -> (MnoPolicy, http::HeaderName) {
    let mut nets = |key: &str, list: &[String]| -> Vec<IpNet> {
        list.iter()
            .filter_map(|text| match parse_net(text) {
                Some(net) => Some(net),
                None => {
                    errors.push(format!("{key}: {text:?} is not an IP address or CIDR"));
                    None
                }
            })
            .collect()
    };
    let networks = nets("mno.networks", &raw.networks);
    let trusted_gateways = nets("mno.trusted_gateways", &raw.trusted_gateways);
    let msisdn_header =
        http::HeaderName::try_from(raw.msisdn_header.as_str()).unwrap_or_else(|_| {
            errors.push(format!(
                "mno.msisdn_header: {:?} is not a header name",
                raw.msisdn_header
            ));
            http::HeaderName::from_static("x-msisdn")
        });
    let policy = MnoPolicy {
        networks,
        trusted_gateways,
    };
    (policy, msisdn_header)
}

/// Values that must not be 0, and upper bounds: past them a value is a
/// typo, and some (a QUIC idle timeout, a date for a session's expiry) have
/// hard limits downstream. A flat table.
fn check_bounds(raw: &Raw, errors: &mut Vec<String>) {
    let auth = &raw.auth;
    let limits = &raw.limits;
    for (key, value) in [
        ("limits.max_connections", limits.max_connections as u64),
        (
            "limits.header_read_timeout_ms",
            limits.header_read_timeout_ms,
        ),
        ("limits.idle_timeout_ms", limits.idle_timeout_ms),
        ("limits.max_header_bytes", limits.max_header_bytes as u64),
        (
            "limits.max_concurrent_streams",
            limits.max_concurrent_streams.into(),
        ),
        ("limits.max_uri_bytes", limits.max_uri_bytes as u64),
        ("limits.limiter_max_keys", limits.limiter_max_keys as u64),
        ("admin.max_connections", raw.admin.max_connections as u64),
        ("http3.max_handshakes", raw.http3.max_handshakes as u64),
        ("http3.worker_threads", raw.http3.worker_threads as u64),
    ] {
        if value == 0 {
            errors.push(format!("{key}: must be greater than 0"));
        }
    }
    const HOUR_MS: u64 = 3_600_000;
    for (key, value, max) in [
        (
            "limits.header_read_timeout_ms",
            limits.header_read_timeout_ms,
            HOUR_MS,
        ),
        (
            "limits.idle_timeout_ms",
            limits.idle_timeout_ms,
            24 * HOUR_MS,
        ),
        (
            "limits.shutdown_grace_ms",
            limits.shutdown_grace_ms,
            HOUR_MS,
        ),
        ("limits.tarpit_max_ms", limits.tarpit_max_ms, 60_000),
        ("limits.overload_lag_ms", limits.overload_lag_ms, 10_000),
        ("limits.penalty_secs", limits.penalty_secs, 24 * 3600),
        (
            "limits.max_header_bytes",
            limits.max_header_bytes as u64,
            1 << 20,
        ),
        ("limits.max_uri_bytes", limits.max_uri_bytes as u64, 1 << 16),
        (
            "auth.session_ttl_secs",
            auth.session_ttl_secs,
            31 * 24 * 3600,
        ),
        (
            "http3.validation_token_lifetime_secs",
            raw.http3.validation_token_lifetime_secs,
            366 * 24 * 3600,
        ),
        (
            "http3.worker_threads",
            raw.http3.worker_threads as u64,
            1024,
        ),
        ("limits.ipv6_prefix_len", limits.ipv6_prefix_len.into(), 128),
    ] {
        if value > max {
            errors.push(format!(
                "{key}: {value} is more than the most allowed, {max}"
            ));
        }
    }
}

/// `[limits]`, in the units the server uses. A flat table.
fn limits(limits: &RawLimits) -> Limits {
    Limits {
        max_connections: limits.max_connections,
        header_read_timeout: Duration::from_millis(limits.header_read_timeout_ms),
        idle_timeout: Duration::from_millis(limits.idle_timeout_ms),
        max_header_bytes: limits.max_header_bytes,
        max_concurrent_streams: limits.max_concurrent_streams,
        max_uri_bytes: limits.max_uri_bytes,
        shutdown_grace: Duration::from_millis(limits.shutdown_grace_ms),
        shed_unauthenticated_above: match limits.shed_unauthenticated_above {
            0 => (limits.max_connections.saturating_mul(8) / 10).max(1),
            n => n,
        },
        max_connections_per_address: limits.max_connections_per_address,
        accepts_per_address_per_sec: limits.accepts_per_address_per_sec,
        requests_per_address_per_sec: limits.requests_per_address_per_sec,
        requests_per_clientid_per_sec: limits.requests_per_clientid_per_sec,
        limiter_max_keys: limits.limiter_max_keys,
        ipv6_prefix_len: limits.ipv6_prefix_len,
        unauthenticated_per_sec: limits.unauthenticated_per_sec,
        first_scans_per_sec: limits.first_scans_per_sec,
        tarpit_max: Duration::from_millis(limits.tarpit_max_ms),
        handshakes_per_sec: match limits.handshakes_per_sec {
            AutoOr::Value(n) => n,
            AutoOr::Word(Auto::Auto) => HANDSHAKES_PER_SEC_PER_CORE * cores(),
        },
        overload_lag: Duration::from_millis(limits.overload_lag_ms),
        refusals_before_slowdown: limits.refusals_before_slowdown,
        refusals_before_close: limits.refusals_before_close,
        penalty: Duration::from_secs(limits.penalty_secs),
        tarpit_per_source: limits.tarpit_per_source,
    }
}

fn http3(raw: &Raw) -> Http3Config {
    Http3Config {
        enabled: raw.server.http3,
        retry: raw.http3.retry,
        retry_above_handshakes: raw.http3.retry_above_handshakes,
        max_handshakes: raw.http3.max_handshakes,
        connections_per_address_per_sec: raw.http3.connections_per_address_per_sec,
        validation_token_lifetime_secs: raw.http3.validation_token_lifetime_secs,
        worker_threads: raw.http3.worker_threads,
    }
}

fn federation(
    raw: RawFederation,
    own: &[RoutingPrefix],
    errors: &mut Vec<String>,
) -> Option<FederationConfig> {
    if raw.listen.is_empty() && raw.peers.is_empty() && raw.mcr_url.is_empty() {
        return None;
    }
    let listen = (!raw.listen.is_empty()).then(|| {
        raw.listen.parse().unwrap_or_else(|_| {
            errors.push(format!(
                "federation.listen: {:?} is not an address:port",
                raw.listen
            ));
            SocketAddr::from(([127, 0, 0, 1], 0))
        })
    });
    let mut file = |key: &str, path: Option<PathBuf>| {
        path.unwrap_or_else(|| {
            errors.push(format!(
                "federation.{key}: required (this CMP's federation certificate, its key, the community CA)"
            ));
            PathBuf::new()
        })
    };
    let cert_file = file("cert_file", raw.cert_file);
    let key_file = file("key_file", raw.key_file);
    let ca_file = file("ca_file", raw.ca_file);
    let mut peers: Vec<PeerConfig> = Vec::new();
    for peer in raw.peers {
        if let Some(peer) = peer_config(peer, own, &peers, errors) {
            peers.push(peer);
        }
    }
    if !(100..=60_000).contains(&raw.timeout_ms) {
        errors.push(format!(
            "federation.timeout_ms: {} must be 100 to 60000",
            raw.timeout_ms
        ));
    }
    if raw.max_in_flight_per_peer == 0 || raw.failures_to_open == 0 || raw.max_connections == 0 {
        errors.push(
            "federation.max_in_flight_per_peer, failures_to_open and max_connections: at least 1"
                .into(),
        );
    }
    let mcr_url = (!raw.mcr_url.is_empty()).then(|| {
        if !raw.mcr_url.starts_with("https://") || raw.mcr_url.parse::<http::Uri>().is_err() {
            errors.push(format!(
                "federation.mcr_url: {:?} is not an https:// URL",
                raw.mcr_url
            ));
        }
        raw.mcr_url.trim_end_matches('/').to_owned()
    });
    Some(FederationConfig {
        listen,
        cert_file,
        key_file,
        ca_file,
        peers,
        mcr_url,
        mcr_cache: Duration::from_secs(raw.mcr_cache_secs),
        mcr_allow_private: raw.mcr_allow_private,
        timeout: Duration::from_millis(raw.timeout_ms),
        max_in_flight_per_peer: raw.max_in_flight_per_peer,
        failures_to_open: raw.failures_to_open,
        open_for: Duration::from_millis(raw.open_ms),
        requests_per_peer_per_sec: raw.requests_per_peer_per_sec,
        max_connections: raw.max_connections,
        max_connections_per_address: raw.max_connections_per_address,
        accepts_per_address_per_sec: raw.accepts_per_address_per_sec,
        handshakes_per_sec: raw.handshakes_per_sec,
    })
}

/// One `[[federation.peers]]`: `None` when its prefix does not parse
/// (other mistakes are reported and the peer kept, so all are reported).
fn peer_config(
    peer: RawPeer,
    own: &[RoutingPrefix],
    peers: &[PeerConfig],
    errors: &mut Vec<String>,
) -> Option<PeerConfig> {
    let prefix = match RoutingPrefix::parse(&peer.prefix) {
        Ok(prefix) => prefix,
        Err(e) => {
            errors.push(format!("federation.peers.prefix: {:?}: {e}", peer.prefix));
            return None;
        }
    };
    if own.contains(&prefix) || peers.iter().any(|p| p.prefix == prefix) {
        errors.push(format!(
            "federation.peers.prefix: {:?} is this CMP's or listed twice",
            peer.prefix
        ));
    }
    if !peer.url.starts_with("https://") || peer.url.parse::<http::Uri>().is_err() {
        errors.push(format!(
            "federation.peers.url: {:?} is not an https:// URL",
            peer.url
        ));
    }
    let spki_sha256 = peer.spki_sha256.as_deref().and_then(|text| {
        let pin = parse_sha256(text);
        if pin.is_none() {
            errors.push(format!(
                "federation.peers.spki_sha256: {text:?} is not a SHA-256 (64 hex digits, or base64)"
            ));
        }
        pin
    });
    Some(PeerConfig {
        prefix,
        url: peer.url.trim_end_matches('/').to_owned(),
        ca_file: peer.ca_file,
        spki_sha256,
    })
}

/// A SHA-256 written as 64 hex digits (either case, `:` between bytes
/// allowed, as `openssl` prints it) or base64 (standard or URL-safe, padded
/// or not, as HPKP pins are written).
fn parse_sha256(text: &str) -> Option<[u8; 32]> {
    use base64::Engine;
    let hex: String = text.chars().filter(|c| *c != ':').collect();
    if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        let mut digest = [0; 32];
        for (byte, pair) in digest.iter_mut().zip(hex.as_bytes().chunks(2)) {
            *byte = u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok()?;
        }
        return Some(digest);
    }
    let unpadded = text.trim_end_matches('=');
    let engines = [
        base64::engine::general_purpose::STANDARD_NO_PAD,
        base64::engine::general_purpose::URL_SAFE_NO_PAD,
    ];
    engines
        .iter()
        .find_map(|engine| engine.decode(unpadded).ok())
        .and_then(|bytes| bytes.try_into().ok())
}

fn radius(raw: RawRadius, errors: &mut Vec<String>) -> Option<RadiusConfig> {
    if raw.listen.is_empty() {
        return None;
    }
    let listen = raw.listen.parse().unwrap_or_else(|_| {
        errors.push(format!(
            "radius.listen: {:?} is not an address:port",
            raw.listen
        ));
        SocketAddr::from(([127, 0, 0, 1], 0))
    });
    if raw.clients.is_empty() {
        errors.push(
            "radius.clients: list the gateways ([[radius.clients]] network, secret_file)".into(),
        );
    }
    let mut clients = Vec::new();
    for client in raw.clients {
        match client
            .network
            .parse::<IpNet>()
            .or_else(|_| client.network.parse::<std::net::IpAddr>().map(IpNet::from))
        {
            Ok(network) => clients.push((network.trunc(), client.secret_file)),
            Err(_) => errors.push(format!(
                "radius.clients.network: {:?} is not an address or CIDR",
                client.network
            )),
        }
    }
    let msisdn_attribute = raw.msisdn_attribute.parse().unwrap_or_else(|e| {
        errors.push(format!("radius.msisdn_attribute: {e}"));
        crate::radius::packet::MsisdnAttribute::CallingStationId
    });
    if !(1..=30 * 24 * 3600).contains(&raw.binding_ttl_secs) {
        errors.push(format!(
            "radius.binding_ttl_secs: {} must be 1 to 2592000 (30 days)",
            raw.binding_ttl_secs
        ));
    }
    if raw.max_bindings == 0 {
        errors.push("radius.max_bindings: must be at least 1".into());
    }
    Some(RadiusConfig {
        listen,
        clients,
        msisdn_attribute,
        binding_ttl: Duration::from_secs(raw.binding_ttl_secs),
        max_bindings: raw.max_bindings,
    })
}

fn cluster(raw: RawCluster, errors: &mut Vec<String>) -> Option<ClusterConfig> {
    if raw.nats_urls.is_empty() {
        return None;
    }
    let token_ok = |s: &str| {
        !s.is_empty()
            && s.len() <= 64
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    if !token_ok(&raw.stream) {
        errors.push(format!(
            "cluster.stream: {:?} must be 1 to 64 of A-Z a-z 0-9 - _",
            raw.stream
        ));
    }
    if !token_ok(&raw.node) {
        errors.push(format!(
            "cluster.node: {:?} must be set, unique per node, 1 to 64 of A-Z a-z 0-9 - _",
            raw.node
        ));
    }
    if !(1..=5).contains(&raw.replicas) {
        errors.push(format!(
            "cluster.replicas: {} must be 1 to 5 (JetStream's limit)",
            raw.replicas
        ));
    }
    if !(100..=60_000).contains(&raw.publish_timeout_ms) {
        errors.push(format!(
            "cluster.publish_timeout_ms: {} must be 100 to 60000",
            raw.publish_timeout_ms
        ));
    }
    Some(ClusterConfig {
        nats_urls: raw.nats_urls,
        stream: raw.stream,
        replicas: raw.replicas,
        node: raw.node,
        credentials_file: raw.credentials_file,
        nkey_seed_file: raw.nkey_seed_file,
        tls_ca_file: raw.tls_ca_file,
        publish_timeout: Duration::from_millis(raw.publish_timeout_ms),
    })
}

/// A CIDR, or a bare address as a /32 or /128.
fn parse_net(text: &str) -> Option<IpNet> {
    text.parse::<IpNet>()
        .ok()
        .or_else(|| text.parse::<std::net::IpAddr>().ok().map(IpNet::from))
}

fn parse_secret(hex: &str) -> Option<[u8; 32]> {
    crate::wire::SubscriberRef::from_hex(hex).map(|r| r.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env() -> Vec<(String, String)> {
        vec![]
    }

    #[test]
    fn empty_file_gives_the_embedded_defaults() {
        let c = Config::parse("", no_env()).unwrap();
        assert_eq!(c.listen, "127.0.0.1:8443".parse().unwrap());
        assert_eq!(c.admin_listen, "127.0.0.1:8444".parse().unwrap());
        assert_eq!(c.policy.mode, AuthMode::Enforce);
        assert_eq!(c.max_clientids_per_subscriber, 8);
        assert!(c.http3.enabled && c.tls.is_none());
        assert_eq!(c.http3.retry, RetryPolicy::UnderLoad);
        assert_eq!(
            c.admin_token_path(),
            PathBuf::from("./homecmp-data/admin.token")
        );
    }

    #[test]
    fn every_error_is_listed() {
        let text = r#"
            [server]
            listen = "nope"
            routing_prefixes = ["2000000001", "zz"]
            tls_cert = "/x.pem"
            [auth]
            max_clientids_per_subscriber = 0
            [mno]
            networks = ["10.0.0.0/33"]
        "#;
        let errors = Config::parse(text, no_env()).unwrap_err().0;
        assert_eq!(errors.len(), 6, "{errors:#?}");
        assert!(errors.iter().any(|e| e.starts_with("server.listen")));
        assert!(errors.iter().any(|e| e.contains("reserved")));
        assert!(errors.iter().any(|e| e.starts_with("mno.networks")));
    }

    #[test]
    fn the_example_config_is_valid_and_matches_the_defaults() {
        let example = include_str!("../homecmp.example.toml");
        let c = Config::parse(example, no_env()).unwrap();
        let d = Config::parse("", no_env()).unwrap();
        assert_eq!(format!("{c:?}"), format!("{d:?}"));
    }

    #[test]
    fn huge_values_are_refused_not_panicked_on() {
        let text = r#"
            [limits]
            idle_timeout_ms = 9223372036854775807
            header_read_timeout_ms = 9223372036854775807
            [auth]
            session_ttl_secs = 9223372036854775807
        "#;
        let errors = Config::parse(text, no_env()).unwrap_err().0;
        assert_eq!(errors.len(), 3, "{errors:#?}");
        // A small server is a valid one; shedding still leaves room.
        let small = Config::parse("[limits]\nmax_connections = 4", no_env()).unwrap();
        assert_eq!(small.limits.shed_unauthenticated_above, 3);
    }

    #[test]
    fn debug_output_shows_no_secret() {
        let secret = "ab".repeat(32);
        let text = format!("[server]\nsubscriber_secret = \"{secret}\"");
        let config = Config::parse(&text, no_env()).unwrap();
        assert!(config.subscriber_secret.is_some());
        let shown = format!("{config:?}");
        assert!(
            !shown.contains("171, 171") && !shown.contains(&secret),
            "{shown}"
        );
    }

    #[test]
    fn cluster_mode_is_off_by_default_and_checked_when_on() {
        assert!(Config::parse("", no_env()).unwrap().cluster.is_none());
        let secret = "ab".repeat(32);
        let on = format!(
            "[server]\nsubscriber_secret = \"{secret}\"\n\
             [cluster]\nnats_urls = [\"nats://127.0.0.1:4222\"]\nnode = \"cmp-1\"\n"
        );
        let cluster = Config::parse(&on, no_env()).unwrap().cluster.unwrap();
        assert_eq!((cluster.stream.as_str(), cluster.replicas), ("HOMECMP", 3));

        let bad = "[cluster]\nnats_urls = [\"nats://x\"]\nstream = \"a.b\"\nreplicas = 7\n";
        let errors = Config::parse(bad, no_env()).unwrap_err().0.join("\n");
        for key in [
            "cluster.stream",
            "cluster.node",
            "cluster.replicas",
            "server.subscriber_secret",
        ] {
            assert!(errors.contains(key), "{key} missing from:\n{errors}");
        }
    }

    #[test]
    fn radius_is_off_by_default_and_checked_when_on() {
        assert!(Config::parse("", no_env()).unwrap().radius.is_none());
        let on = "[radius]\nlisten = \"0.0.0.0:1813\"\nmsisdn_attribute = \"vendor:10415:7\"\n\
                  [[radius.clients]]\nnetwork = \"10.20.0.7\"\nsecret_file = \"/s\"\n\
                  [[radius.clients]]\nnetwork = \"10.20.0.0/16\"\nsecret_file = \"/t\"\n";
        let radius = Config::parse(on, no_env()).unwrap().radius.unwrap();
        assert_eq!(
            radius.clients[0].0,
            "10.20.0.7/32".parse::<IpNet>().unwrap()
        );
        assert_eq!(radius.binding_ttl, Duration::from_secs(7200));
        let bad = "[radius]\nlisten = \"1813\"\nmsisdn_attribute = \"imsi\"\n\
                   binding_ttl_secs = 0\nmax_bindings = 0\n\
                   [[radius.clients]]\nnetwork = \"10.20.0.0/33\"\nsecret_file = \"/s\"\n";
        let errors = Config::parse(bad, no_env()).unwrap_err().0;
        for key in [
            "radius.listen",
            "radius.msisdn_attribute",
            "radius.binding_ttl_secs",
            "radius.max_bindings",
            "radius.clients.network",
        ] {
            assert!(
                errors.iter().any(|e| e.starts_with(key)),
                "{key}: {errors:#?}"
            );
        }
        let no_clients = Config::parse("[radius]\nlisten = \"127.0.0.1:1813\"", no_env());
        assert!(no_clients.unwrap_err().0[0].starts_with("radius.clients"));
    }

    #[test]
    fn federation_is_off_by_default_and_checked_when_on() {
        let off = Config::parse("", no_env()).unwrap();
        assert!(off.federation.is_none() && off.policy.federated_prefixes.is_empty());
        let on = "[federation]\ncert_file = \"/c\"\nkey_file = \"/k\"\nca_file = \"/ca\"\n\
                  [[federation.peers]]\nprefix = \"2001000002\"\nurl = \"https://b.example:8445/\"\n";
        let config = Config::parse(on, no_env()).unwrap();
        let federation = config.federation.unwrap();
        assert_eq!(federation.peers[0].url, "https://b.example:8445");
        assert_eq!(federation.peers[0].spki_sha256, None);
        assert!(!federation.mcr_allow_private, "refused unless configured");
        assert_eq!(federation.listen, None);
        assert_eq!(config.policy.federated_prefixes[0].as_str(), "2001000002");
        let bad = "[federation]\nlisten = \"8445\"\ntimeout_ms = 5\n\
                   [[federation.peers]]\nprefix = \"2001000001\"\nurl = \"http://b\"\n";
        let errors = Config::parse(bad, no_env()).unwrap_err().0;
        for key in [
            "federation.listen",
            "federation.cert_file",
            "federation.key_file",
            "federation.ca_file",
            "federation.peers.prefix",
            "federation.peers.url",
            "federation.timeout_ms",
        ] {
            assert!(
                errors.iter().any(|e| e.starts_with(key)),
                "{key}: {errors:#?}"
            );
        }
    }

    #[test]
    fn a_peer_pin_is_read_in_hex_or_base64_and_refused_otherwise() {
        let digest: [u8; 32] = std::array::from_fn(|i| (i as u8).wrapping_mul(37) ^ 0xf8);
        let hex: String = digest.iter().map(|b| format!("{b:02X}")).collect();
        let colons = digest
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>();
        use base64::Engine;
        let standard = base64::engine::general_purpose::STANDARD.encode(digest);
        let url_safe = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest);
        assert!(standard.contains(['+', '/']) && url_safe.contains(['-', '_']));
        for text in [hex.clone(), colons.join(":"), standard, url_safe] {
            assert_eq!(parse_sha256(&text), Some(digest), "{text}");
        }
        for bad in [&hex[2..], "", "not a digest", &format!("{hex}00")] {
            assert_eq!(parse_sha256(bad), None, "{bad}");
        }
        let peer = |pin: &str| {
            format!(
                "[federation]\ncert_file = \"/c\"\nkey_file = \"/k\"\nca_file = \"/ca\"\n\
                 [[federation.peers]]\nprefix = \"2001000002\"\nurl = \"https://b:8445\"\n\
                 ca_file = \"/b-ca\"\nspki_sha256 = \"{pin}\"\n"
            )
        };
        let config = Config::parse(&peer(&hex), no_env()).unwrap();
        let pinned = &config.federation.unwrap().peers[0];
        assert_eq!(pinned.spki_sha256, Some(digest));
        assert_eq!(pinned.ca_file.as_deref(), Some(Path::new("/b-ca")));
        let errors = Config::parse(&peer("abc"), no_env()).unwrap_err().0;
        assert!(
            errors[0].starts_with("federation.peers.spki_sha256") && errors.len() == 1,
            "{errors:#?}"
        );
    }

    #[test]
    fn the_readme_cluster_example_is_valid() {
        let readme = include_str!("../docs/book/src/cluster.md");
        let section = &readme[readme.find("## Cluster mode").unwrap()..];
        let start = section.find("```toml\n").unwrap() + "```toml\n".len();
        let block = &section[start..start + section[start..].find("```").unwrap()];
        let text = block.replace("<the same 64 hex digits on every node>", &"cd".repeat(32));
        let cluster = Config::parse(&text, no_env()).unwrap().cluster.unwrap();
        assert_eq!(cluster.nats_urls.len(), 3);
        assert_eq!(cluster.node, "cmp-1");
    }

    #[test]
    fn the_readme_federation_example_is_valid_with_or_without_its_pins() {
        let readme = include_str!("../docs/book/src/federation.md");
        let section = &readme[readme.find("## Federation").unwrap()..];
        let start = section.find("```toml\n").unwrap() + "```toml\n".len();
        let block = &section[start..start + section[start..].find("```").unwrap()];
        let federation = Config::parse(block, no_env()).unwrap().federation.unwrap();
        assert_eq!(federation.peers.len(), 1);
        let pinned = block
            .replace("# mcr_url", "mcr_url")
            .replace("# ca_file", "ca_file")
            .replace(
                "# spki_sha256 = \"base64 or hex of SHA-256(SubjectPublicKeyInfo)\"",
                &format!("spki_sha256 = \"{}\"", "ab".repeat(32)),
            );
        let federation = Config::parse(&pinned, no_env())
            .unwrap()
            .federation
            .unwrap();
        assert!(federation.mcr_url.is_some());
        let peer = &federation.peers[0];
        assert!(peer.ca_file.is_some() && peer.spki_sha256 == Some([0xab; 32]));
    }

    #[test]
    fn unknown_keys_and_bad_enums_are_refused() {
        assert!(Config::parse("[server]\nlisten_port = 1", no_env()).is_err());
        assert!(Config::parse("[auth]\nmode = \"lenient\"", no_env()).is_err());
    }

    #[test]
    fn environment_overrides_the_file() {
        let env = vec![
            ("HOMECMP__AUTH__MODE".to_owned(), "monitor".to_owned()),
            (
                "HOMECMP__SERVER__LISTEN".to_owned(),
                "127.0.0.1:9443".to_owned(),
            ),
            (
                "HOMECMP__MNO__NETWORKS".to_owned(),
                r#"["10.0.0.0/8", "192.0.2.1"]"#.to_owned(),
            ),
            ("HOMECMP__SERVER__HTTP3".to_owned(), "false".to_owned()),
            ("OTHER".to_owned(), "x".to_owned()),
        ];
        let c = Config::parse("[auth]\nmode = \"off\"", env).unwrap();
        assert_eq!(c.policy.mode, AuthMode::Monitor);
        assert_eq!(c.listen.port(), 9443);
        assert_eq!(c.mno.networks.len(), 2);
        assert!(!c.http3.enabled);
    }
}
