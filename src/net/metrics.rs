//! Prometheus metrics (prometheus-client), exposed on the admin listener.
//!
//! Counters are updated on the request path; gauges that mirror state (index
//! size, last sequence, sessions) are refreshed when `/metrics` is scraped.

use std::fmt::Write as _;
use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// The transport a request came over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    Http1,
    Http2,
    Http3,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Http1 => "http1",
            Protocol::Http2 => "http2",
            Protocol::Http3 => "http3",
        }
    }
}

impl EncodeLabelValue for Protocol {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        encoder.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct RequestLabels {
    /// `ok` or the error code of DESIGN §4.
    pub outcome: &'static str,
    pub protocol: Protocol,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

/// A refused connection: its transport (`tcp`, `quic`) and why.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct RefusedLabels {
    pub transport: &'static str,
    pub reason: &'static str,
}

#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub latency: Family<ProtocolLabel, Histogram>,
    /// Monitor mode: requests that enforce would have refused, by code.
    pub monitored: Family<ReasonLabels, Counter>,
    pub spoof_attempts: Counter,
    pub quic_moved_requests: Counter,
    pub associations_created: Counter,
    pub associations_superseded: Counter,
    pub associations_rebound: Counter,
    pub connections_refused: Family<RefusedLabels, Counter>,
    pub connections_open: Family<ProtocolLabel, Gauge>,
    pub quic_retries: Counter,
    pub tarpitted: Counter,
    pub limiter_overflow: Family<ReasonLabels, Counter>,
    pub index_associations: Gauge,
    pub index_subscribers: Gauge,
    pub index_codes: Gauge,
    pub sessions: Gauge,
    pub last_seq: Gauge<u64, AtomicU64>,
    /// 1 once a write failed: the log refuses writes until a restart.
    pub log_poisoned: Gauge,
    /// Cluster mode: 1 while connected to NATS.
    pub cluster_connected: Gauge,
    /// Cluster mode: 1 once the follower met an event it cannot apply.
    pub cluster_follower_stopped: Gauge,
    /// Cluster mode: publishes that lost a race to another node (retried).
    pub cluster_conflicts: Counter,
    pub runtime_lag: Family<RuntimeLabel, Gauge<f64, AtomicU64>>,
    pub overloaded: Family<RuntimeLabel, Gauge>,
    /// Requests without an association answered 503 because of load.
    pub shed: Counter,
    /// Accept-loop pauses of one lag period while overloaded.
    pub accept_pauses: Counter,
    pub handshake_turns: Family<QueueLabel, Counter>,
    /// Connections that earned a slow-down or a close by their conduct.
    pub abusive_connections: Family<StepLabel, Counter>,
    pub radius_packets: Family<RadiusLabels, Counter>,
    pub federation: Family<RadiusLabels, Counter>,
}

/// What became of a RADIUS datagram (`applied`, `ignored`, `duplicate`,
/// `dropped`, `unanswered`) and why (the status type, or the reason); the
/// same pair for federation requests.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct RadiusLabels {
    pub outcome: &'static str,
    pub reason: &'static str,
}

/// The handshake pace's queue: `new` or `returning` (offers a valid ticket).
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct QueueLabel {
    pub queue: &'static str,
}

/// What a connection earned by its run of refusals: `slowed` or `closed`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct StepLabel {
    pub step: &'static str,
}

/// `main` (TCP listener and admin API) or `quic`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct RuntimeLabel {
    pub runtime: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ProtocolLabel {
    pub protocol: Protocol,
}

/// Buckets from 10 µs to about 5 s.
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.000_01, 2.5, 15))
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("homecmp");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "requests",
            "Resolution requests by outcome and protocol",
            requests.clone(),
        );
        let latency: Family<ProtocolLabel, Histogram> =
            Family::new_with_constructor(latency_histogram);
        registry.register(
            "request_duration_seconds",
            "Time from request head to response, by protocol",
            latency.clone(),
        );
        let monitored = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "monitor_would_refuse",
            "Monitor mode: requests resolved that enforce would refuse, by code",
            monitored.clone(),
        );
        let spoof_attempts = Counter::default();
        registry.register(
            "spoof_attempts",
            "Requests carrying MSISDN or X-Forwarded-For headers from an untrusted peer",
            spoof_attempts.clone(),
        );
        let quic_moved_requests = Counter::default();
        registry.register(
            "quic_moved_requests",
            "HTTP/3 requests that came after their connection moved to another address: off the MNO network, and the connection drained",
            quic_moved_requests.clone(),
        );
        let associations_created = Counter::default();
        registry.register(
            "associations_created",
            "Associations created",
            associations_created.clone(),
        );
        let associations_superseded = Counter::default();
        registry.register(
            "associations_superseded",
            "Associations revoked to keep a subscriber under the cap",
            associations_superseded.clone(),
        );
        let associations_rebound = Counter::default();
        registry.register(
            "associations_rebound",
            "Associations moved to another subscriber (policy rebind)",
            associations_rebound.clone(),
        );
        let connections_refused = Family::<RefusedLabels, Counter>::default();
        registry.register(
            "connections_refused",
            "New connections refused, dropped or failed before serving, by transport (tcp, quic) and reason",
            connections_refused.clone(),
        );
        let connections_open = Family::<ProtocolLabel, Gauge>::default();
        registry.register(
            "connections_open",
            "Open connections",
            connections_open.clone(),
        );
        let quic_retries = Counter::default();
        registry.register(
            "quic_retries",
            "QUIC Retry packets sent to validate a client address",
            quic_retries.clone(),
        );
        let tarpitted = Counter::default();
        registry.register(
            "tarpitted",
            "Requests without an association made to wait for the unauthenticated pace",
            tarpitted.clone(),
        );
        let limiter_overflow = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "limiter_overflow",
            "Checks let through because a keyed limiter was full of active keys, by limit",
            limiter_overflow.clone(),
        );
        let index_associations = Gauge::default();
        registry.register(
            "index_associations",
            "Associations in the index",
            index_associations.clone(),
        );
        let index_subscribers = Gauge::default();
        registry.register(
            "index_subscribers",
            "Subscribers with at least one association",
            index_subscribers.clone(),
        );
        let index_codes = Gauge::default();
        registry.register("index_codes", "Registered codes", index_codes.clone());
        let sessions = Gauge::default();
        registry.register(
            "sessions",
            "Session bindings held (IP -> subscriber)",
            sessions.clone(),
        );
        let last_seq = Gauge::<u64, AtomicU64>::default();
        registry.register(
            "log_last_sequence",
            "Sequence number of the newest durable event",
            last_seq.clone(),
        );
        let log_poisoned = Gauge::default();
        registry.register(
            "log_poisoned",
            "1 once an event log write failed (disk error): writes are refused until a restart",
            log_poisoned.clone(),
        );
        let cluster_connected = Gauge::default();
        registry.register(
            "cluster_connected",
            "Cluster mode: 1 while this node is connected to NATS JetStream",
            cluster_connected.clone(),
        );
        let cluster_conflicts = Counter::default();
        registry.register(
            "cluster_conflicts",
            "Cluster mode: changes that lost a race to another node and were planned again",
            cluster_conflicts.clone(),
        );
        let cluster_follower_stopped = Gauge::default();
        registry.register(
            "cluster_follower_stopped",
            "Cluster mode: 1 once this node met a stream event it cannot apply and stopped following (readyz 503 says why)",
            cluster_follower_stopped.clone(),
        );
        let runtime_lag = Family::<RuntimeLabel, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "runtime_lag_seconds",
            "Moving average of how late a runtime (main: TCP and admin; quic) polls a due task",
            runtime_lag.clone(),
        );
        let overloaded = Family::<RuntimeLabel, Gauge>::default();
        registry.register(
            "overloaded",
            "1 while a runtime's lag is over limits.overload_lag_ms: its listener takes on no new connections",
            overloaded.clone(),
        );
        let shed = Counter::default();
        registry.register(
            "shed",
            "Requests without an association answered 503 OVERLOADED: too many connections open",
            shed.clone(),
        );
        let accept_pauses = Counter::default();
        registry.register(
            "accept_pauses",
            "Pauses of the TCP accept loop, one lag probe period each, while overloaded",
            accept_pauses.clone(),
        );
        let handshake_turns = Family::<QueueLabel, Counter>::default();
        registry.register(
            "handshake_turns",
            "TLS connections queued for the handshake pace, by queue (new, returning)",
            handshake_turns.clone(),
        );
        let abusive_connections = Family::<StepLabel, Counter>::default();
        registry.register(
            "abusive_connections",
            "Connections on a run of refused requests, by what they earned: slowed (each next request waits), closed (and the source refused new connections for limits.penalty_secs)",
            abusive_connections.clone(),
        );
        let radius_packets = Family::<RadiusLabels, Counter>::default();
        registry.register(
            "radius_packets",
            "RADIUS accounting datagrams by outcome (applied, ignored: answered but unusable, duplicate: answered from the reply cache, dropped: unknown client, bad authenticator or not accounting, unanswered: max_bindings held) and reason",
            radius_packets.clone(),
        );
        let federation = Family::<RadiusLabels, Counter>::default();
        registry.register(
            "federation",
            "Federation (§9.3.2): forwarded to a peer CMP (outcome forwarded: resolved, not_found, busy, circuit_open, failed), answered to a peer (outcome answered, by result) peer connections taken (outcome connected) and refused (outcome refused: handshake, connections)",
            federation.clone(),
        );
        Self {
            registry,
            requests,
            latency,
            monitored,
            spoof_attempts,
            quic_moved_requests,
            associations_created,
            associations_superseded,
            associations_rebound,
            connections_refused,
            connections_open,
            quic_retries,
            tarpitted,
            limiter_overflow,
            index_associations,
            index_subscribers,
            index_codes,
            sessions,
            last_seq,
            log_poisoned,
            cluster_connected,
            cluster_follower_stopped,
            cluster_conflicts,
            runtime_lag,
            overloaded,
            shed,
            accept_pauses,
            handshake_turns,
            abusive_connections,
            radius_packets,
            federation,
        }
    }

    pub fn federation(&self, outcome: &'static str, reason: &'static str) {
        self.federation
            .get_or_create(&RadiusLabels { outcome, reason })
            .inc();
    }

    pub fn radius(&self, outcome: &'static str, reason: &'static str) {
        self.radius_packets
            .get_or_create(&RadiusLabels { outcome, reason })
            .inc();
    }

    pub fn request(&self, protocol: Protocol, outcome: &'static str, seconds: f64) {
        self.requests
            .get_or_create(&RequestLabels { outcome, protocol })
            .inc();
        self.latency
            .get_or_create(&ProtocolLabel { protocol })
            .observe(seconds);
    }

    pub fn refused_connection(&self, transport: super::admit::Transport, reason: &'static str) {
        self.connections_refused
            .get_or_create(&RefusedLabels {
                transport: transport.as_str(),
                reason,
            })
            .inc();
    }

    pub fn handshake_turn(&self, queue: &'static str) {
        self.handshake_turns
            .get_or_create(&QueueLabel { queue })
            .inc();
    }

    pub fn abusive_connection(&self, step: &'static str) {
        self.abusive_connections
            .get_or_create(&StepLabel { step })
            .inc();
    }

    pub fn limiter_overflow(&self, reason: &'static str) {
        self.limiter_overflow
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}
