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

/// Which listener a connection came to (the `transport` label of
/// `connections_refused_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Tcp,
    Quic,
    /// The federation listener (peer CMPs, mutual TLS).
    Federation,
    /// The admin listener.
    Admin,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Tcp => "tcp",
            Transport::Quic => "quic",
            Transport::Federation => "federation",
            Transport::Admin => "admin",
        }
    }
}

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

/// Declares the metrics as data: each one once, with its field, its type,
/// its name (under the `homecmp_` prefix) and its help text (and a
/// constructor where `Default` is not it). `Metrics::new` registers them,
/// in this order.
macro_rules! metrics {
    ($($(#[$doc:meta])* $field:ident: $ty:ty = $name:literal, $help:literal $(, $make:expr)?;)*) => {
        #[derive(Debug)]
        pub struct Metrics {
            registry: Registry,
            $($(#[$doc])* pub $field: $ty,)*
        }

        impl Metrics {
            pub fn new() -> Self {
                let mut registry = Registry::with_prefix("homecmp");
                $(
                    let $field: $ty = metrics!(@make $ty $(, $make)?);
                    registry.register($name, $help, $field.clone());
                )*
                Self { registry, $($field,)* }
            }
        }
    };
    (@make $ty:ty) => { <$ty>::default() };
    (@make $ty:ty, $make:expr) => { $make };
}

metrics! {
    requests: Family<RequestLabels, Counter> = "requests",
        "Resolution requests by outcome and protocol";
    latency: Family<ProtocolLabel, Histogram> = "request_duration_seconds",
        "Time from request head to response, by protocol",
        Family::new_with_constructor(latency_histogram);
    /// Monitor mode: requests that enforce would have refused, by code.
    monitored: Family<ReasonLabels, Counter> = "monitor_would_refuse",
        "Monitor mode: requests resolved that enforce would refuse, by code";
    spoof_attempts: Counter = "spoof_attempts",
        "Requests carrying MSISDN or X-Forwarded-For headers from an untrusted peer";
    quic_moved_requests: Counter = "quic_moved_requests",
        "HTTP/3 requests that came after their connection moved to another address: off the MNO network, and the connection drained";
    associations_created: Counter = "associations_created", "Associations created";
    associations_superseded: Counter = "associations_superseded",
        "Associations revoked to keep a subscriber under the cap";
    associations_rebound: Counter = "associations_rebound",
        "Associations moved to another subscriber (policy rebind)";
    connections_refused: Family<RefusedLabels, Counter> = "connections_refused",
        "New connections refused, dropped or failed before serving, by transport (tcp, quic) and reason";
    connections_open: Family<ProtocolLabel, Gauge> = "connections_open", "Open connections";
    quic_retries: Counter = "quic_retries",
        "QUIC Retry packets sent to validate a client address";
    tarpitted: Counter = "tarpitted",
        "Requests without an association made to wait for the unauthenticated pace";
    limiter_overflow: Family<ReasonLabels, Counter> = "limiter_overflow",
        "Checks let through because a keyed limiter was full of active keys, by limit";
    index_associations: Gauge = "index_associations", "Associations in the index";
    index_subscribers: Gauge = "index_subscribers",
        "Subscribers with at least one association";
    index_codes: Gauge = "index_codes", "Registered codes";
    sessions: Gauge = "sessions", "Session bindings held (IP -> subscriber)";
    last_seq: Gauge<u64, AtomicU64> = "log_last_sequence",
        "Sequence number of the newest durable event";
    /// 1 once a write failed: the log refuses writes until a restart.
    log_poisoned: Gauge = "log_poisoned",
        "1 once an event log write failed (disk error): writes are refused until a restart";
    /// Cluster mode: 1 while connected to NATS.
    cluster_connected: Gauge = "cluster_connected",
        "Cluster mode: 1 while this node is connected to NATS JetStream";
    /// Cluster mode: publishes that lost a race to another node (retried).
    cluster_conflicts: Counter = "cluster_conflicts",
        "Cluster mode: changes that lost a race to another node and were planned again";
    /// Cluster mode: 1 once the follower met an event it cannot apply.
    cluster_follower_stopped: Gauge = "cluster_follower_stopped",
        "Cluster mode: 1 once this node met a stream event it cannot apply and stopped following (readyz 503 says why)";
    runtime_lag: Family<RuntimeLabel, Gauge<f64, AtomicU64>> = "runtime_lag_seconds",
        "Moving average of how late a runtime (main: TCP and admin; quic) polls a due task";
    overloaded: Family<RuntimeLabel, Gauge> = "overloaded",
        "1 while a runtime's lag is over limits.overload_lag_ms: its listener takes on no new connections";
    /// Requests without an association answered 503 because of load.
    shed: Counter = "shed",
        "Requests without an association answered 503 OVERLOADED: too many connections open";
    /// Accept-loop pauses of one lag period while overloaded.
    accept_pauses: Counter = "accept_pauses",
        "Pauses of the TCP accept loop, one lag probe period each, while overloaded";
    handshake_turns: Family<QueueLabel, Counter> = "handshake_turns",
        "TLS connections queued for the handshake pace, by queue (new, returning)";
    /// Connections that earned a slow-down or a close by their conduct.
    abusive_connections: Family<StepLabel, Counter> = "abusive_connections",
        "Connections on a run of refused requests, by what they earned: slowed (each next request waits), closed (and the source refused new connections for limits.penalty_secs)";
    radius_packets: Family<RadiusLabels, Counter> = "radius_packets",
        "RADIUS accounting datagrams by outcome (applied, ignored: answered but unusable, duplicate: answered from the reply cache, dropped: unknown client, bad authenticator or not accounting, unanswered: max_bindings held) and reason";
    federation: Family<RadiusLabels, Counter> = "federation",
        "Federation (§9.3.2): forwarded to a peer CMP (outcome forwarded: resolved, not_found, busy, circuit_open, failed), answered to a peer (outcome answered, by result) peer connections taken (outcome connected) and refused (outcome refused: handshake, connections)";
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

    pub fn refused_connection(&self, transport: Transport, reason: &'static str) {
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
