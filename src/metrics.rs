//! Prometheus metrics (prometheus-client), exposed on the admin listener.
//!
//! Counters are updated on the request path; gauges that mirror state (index
//! size, last sequence, sessions) are refreshed when `/metrics` is scraped.

use std::fmt::Write as _;
use std::sync::atomic::AtomicU64;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeLabelSet, EncodeLabelValue, EncodeMetric, LabelValueEncoder,
};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
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
            /// The process's own figures, under their standard names.
            process: Registry,
            $($(#[$doc])* pub $field: $ty,)*
        }

        impl Metrics {
            pub fn new() -> Self {
                let mut registry = Registry::with_prefix("homecmp");
                $(
                    let $field: $ty = metrics!(@make $ty $(, $make)?);
                    registry.register($name, $help, $field.clone());
                )*
                // A gauge of 1 with the version as a label: what both of
                // Prometheus' parsers (and promtool) read.
                let build = Family::<BuildLabels, Gauge>::default();
                build.get_or_create(&BuildLabels { version: env!("CARGO_PKG_VERSION") }).set(1);
                registry.register("build_info", "The running build: its version", build);
                let mut process = Registry::default();
                process.register_collector(Box::new(Process));
                Self { registry, process, $($field,)* }
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
    /// 0 while the event log is replayed, 1 once requests are served.
    ready: Gauge = "ready",
        "1 once the index is replayed and the listeners serve; 0 before (replay takes minutes at 100M events)";
    association_writes: Histogram = "association_write_duration_seconds",
        "Time to make an association durable (event log append with fsync, or the cluster's acknowledgement)",
        latency_histogram();
    tls_certificate_expiry: Family<ListenerLabel, Gauge> = "tls_certificate_expiry_timestamp_seconds",
        "When the certificate a listener serves expires (Unix seconds), by listener (public, federation)";
    index_associations: Gauge = "index_associations", "Associations in the index";
    index_subscribers: Gauge = "index_subscribers",
        "Subscribers with at least one association";
    index_codes: Gauge = "index_codes", "Registered codes";
    sessions: Gauge = "sessions", "Session bindings held (IP -> subscriber)";
    last_seq: Gauge<u64, AtomicU64> = "log_last_sequence",
        "Sequence number of the newest durable event";
    events_since_snapshot: Gauge<u64, AtomicU64> = "log_events_since_snapshot",
        "Events the log took since the index snapshot on disk: what a start after a crash would replay";
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
    /// Unix seconds of the last RADIUS packet read (any outcome).
    radius_last_packet: Gauge = "radius_last_packet_timestamp_seconds",
        "Unix time of the last RADIUS accounting packet received, whatever became of it (0: none yet)";
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

/// The running build.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct BuildLabels {
    pub version: &'static str,
}

/// A TLS listener: `public` or `federation`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ListenerLabel {
    pub listener: &'static str,
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
        let now = crate::clock::now_ms() / 1000;
        self.radius_last_packet.set(now as i64);
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

    /// When `listener`'s certificate (`cert`, DER) expires, for the alert
    /// that comes weeks before it does.
    pub fn certificate(&self, listener: &'static str, cert: &[u8]) {
        if let Some(not_after) = crate::tls::not_after(cert) {
            self.tls_certificate_expiry
                .get_or_create(&ListenerLabel { listener })
                .set(not_after);
        }
    }

    /// The Prometheus text exposition (OpenMetrics).
    pub fn encode(&self) -> String {
        use prometheus_client::encoding::text;
        let mut out = String::new();
        text::encode_registry(&mut out, &self.registry)
            .and_then(|()| text::encode_registry(&mut out, &self.process))
            .and_then(|()| text::encode_eof(&mut out))
            .expect("writing to a String cannot fail");
        out
    }
}

/// The process figures every Prometheus dashboard knows (`process_*`, as
/// the official clients name them), read from `/proc` at each scrape: CPU
/// time, memory, open and allowed file descriptors, start time. Nothing is
/// written when `/proc` cannot be read.
#[derive(Debug)]
struct Process;

impl Collector for Process {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Ok(me) = procfs::process::Process::myself() else {
            return Ok(());
        };
        if let Ok(stat) = me.stat() {
            let ticks = procfs::ticks_per_second() as f64;
            let cpu = (stat.utime + stat.stime) as f64 / ticks;
            let counter = ConstCounter::new(cpu);
            counter.encode(encoder.encode_descriptor(
                "process_cpu_seconds",
                "User and system CPU time spent, in seconds",
                None,
                counter.metric_type(),
            )?)?;
            let page = procfs::page_size() as i64;
            gauge(
                &mut encoder,
                "process_resident_memory_bytes",
                "Resident memory size in bytes",
                stat.rss as i64 * page,
            )?;
            gauge(
                &mut encoder,
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes",
                stat.vsize as i64,
            )?;
            if let Ok(boot) = procfs::boot_time_secs() {
                let started = boot as f64 + stat.starttime as f64 / ticks;
                let start = ConstGauge::new(started);
                start.encode(encoder.encode_descriptor(
                    "process_start_time_seconds",
                    "Start time of the process since the Unix epoch, in seconds",
                    None,
                    start.metric_type(),
                )?)?;
            }
        }
        if let Ok(open) = me.fd_count() {
            gauge(
                &mut encoder,
                "process_open_fds",
                "Open file descriptors",
                open as i64,
            )?;
        }
        let soft = me.limits().map(|limits| limits.max_open_files.soft_limit);
        if let Ok(procfs::process::LimitValue::Value(max)) = soft {
            gauge(
                &mut encoder,
                "process_max_fds",
                "Maximum number of open file descriptors (the soft limit)",
                max as i64,
            )?;
        }
        Ok(())
    }
}

fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: i64,
) -> Result<(), std::fmt::Error> {
    let gauge = ConstGauge::new(value);
    gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)
}
