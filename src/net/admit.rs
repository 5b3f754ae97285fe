//! Admission of a new connection, TCP, QUIC and federation alike, cheapest
//! check first: the penalty box, the source's connection rate, its open
//! connections, then the global cap. The public listeners share one set of
//! limiters (one count over TCP and QUIC); the federation listener has its
//! own ([`FederationLimits`]), so a flood of one port starves neither the
//! other's clients nor its peers. Each transport keeps only what is its
//! own: the ClientHello peek and TLS (`https.rs`), Retry and address
//! validation (`h3.rs`), the client certificate (`federation::listener`),
//! each after admission. Every refusal, admission's or a transport's, is
//! counted in `connections_refused_total{transport,reason}`.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::App;
use super::limits::{AddressSlot, KeyedRate, Pace, PenaltyBox, PerAddress};
pub use super::metrics::Transport;
use super::metrics::{Protocol, ProtocolLabel};
use crate::config::{FederationConfig, Limits};

/// The federation listener's admission limiters (`[federation]`'s
/// `max_connections`, `max_connections_per_address`,
/// `accepts_per_address_per_sec`, `handshakes_per_sec`), and its penalty
/// box: a peer that earns one (see `net::conn::Conduct`) is held off the
/// federation port only.
#[derive(Debug)]
pub struct FederationLimits {
    pub penalty: PenaltyBox,
    accepts: KeyedRate<IpAddr>,
    per_address: Arc<PerAddress>,
    connections: Arc<Semaphore>,
    /// All TLS handshakes on the federation port together: each waits for
    /// its turn before any TLS work (the certificate check included).
    pub handshakes: Option<Pace>,
}

impl FederationLimits {
    pub fn new(federation: &FederationConfig, limits: &Limits) -> Self {
        Self {
            penalty: PenaltyBox::new(limits.penalty, limits.limiter_max_keys),
            accepts: KeyedRate::per_second(
                federation.accepts_per_address_per_sec,
                limits.limiter_max_keys,
            ),
            per_address: Arc::new(PerAddress::new(federation.max_connections_per_address)),
            connections: Arc::new(Semaphore::new(federation.max_connections)),
            handshakes: Pace::per_second(federation.handshakes_per_sec),
        }
    }

    /// Periodic housekeeping.
    pub fn retain_recent(&self) {
        self.accepts.retain_recent();
        self.penalty.sweep();
    }
}

/// A connection let in: holds a slot of its source and one of the global
/// cap; both are freed when it is dropped.
#[derive(Debug)]
pub struct Admitted {
    _address: AddressSlot,
    _global: OwnedSemaphorePermit,
}

/// Admits a connection from `source` (a per-source key) to `transport`, or
/// counts the refusal and says why (the metric's `reason`).
pub fn admit(app: &App, transport: Transport, source: IpAddr) -> Result<Admitted, &'static str> {
    let admitted = check(app, transport, source);
    if let Err(reason) = admitted {
        app.metrics.refused_connection(transport, reason);
    }
    admitted
}

/// One step of a handshake, bounded by `limit`: its value, or why the
/// connection is refused (the `reason` label of
/// `connections_refused_total`).
pub async fn handshake_step<T, E>(
    limit: std::time::Duration,
    step: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, &'static str> {
    match tokio::time::timeout(limit, step).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(_)) => Err("handshake_failed"),
        Err(_) => Err("handshake_timeout"),
    }
}

fn check(app: &App, transport: Transport, source: IpAddr) -> Result<Admitted, &'static str> {
    let public = &app.limits;
    let (penalty, rate, name, per_address, connections) = match transport {
        Transport::Tcp => (
            &public.penalty,
            &public.tcp_accepts,
            "tcp_accepts",
            &public.per_address,
            &public.connections,
        ),
        Transport::Quic => (
            &public.penalty,
            &public.quic_connections,
            "quic_connections",
            &public.per_address,
            &public.connections,
        ),
        Transport::Federation => {
            let federation = public.federation.as_ref().ok_or("no_listener")?;
            (
                &federation.penalty,
                &federation.accepts,
                "federation_accepts",
                &federation.per_address,
                &federation.connections,
            )
        }
    };
    if penalty.holds(source) {
        return Err("penalty");
    }
    if app.rate_verdict(name, rate.check(&source)).is_err() {
        return Err("address_rate");
    }
    let address = per_address.try_open(source).ok_or("address_cap")?;
    let global = connections
        .clone()
        .try_acquire_owned()
        .map_err(|_| "connection_cap")?;
    Ok(Admitted {
        _address: address,
        _global: global,
    })
}

/// A connection being served: counted in the open-connections load signal
/// and its protocol's gauge while it lives, with its admission.
#[derive(Debug)]
pub struct Serving {
    app: Arc<App>,
    gauge: Gauge,
    _admitted: Admitted,
}

impl Admitted {
    pub fn serving(self, app: &Arc<App>, protocol: Protocol) -> Serving {
        let gauge = app
            .metrics
            .connections_open
            .get_or_create(&ProtocolLabel { protocol })
            .clone();
        gauge.inc();
        app.open_connections.fetch_add(1, Ordering::Relaxed);
        Serving {
            app: app.clone(),
            gauge,
            _admitted: self,
        }
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        self.gauge.dec();
        self.app.open_connections.fetch_sub(1, Ordering::Relaxed);
    }
}
