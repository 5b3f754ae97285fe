//! Admission of a new connection, TCP, QUIC and federation alike, cheapest
//! check first: the penalty box, the source's connection rate, its open
//! connections, then the global cap. The public listeners share one set of
//! limiters (one count over TCP and QUIC); the federation listener has its
//! own ([`crate::limits::FederationLimits`]), and the admin listener its cap, so a flood of one port starves neither the
//! other's clients nor its peers. Each transport keeps only what is its
//! own: the ClientHello peek and TLS (`https.rs`), Retry and address
//! validation (`h3.rs`), the client certificate (`federation::listener`),
//! each after admission. Every refusal, admission's or a transport's, is
//! counted in `connections_refused_total{transport,reason}`.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use prometheus_client::metrics::gauge::Gauge;

use crate::app::App;
use crate::core::Refusal;
use crate::limits::{AddressSlot, Admission, Verdict};
pub use crate::metrics::Transport;
use crate::metrics::{Metrics, Protocol, ProtocolLabel};

/// A connection let in: holds a slot of its source and one of the global
/// cap; both are freed when it is dropped.
#[derive(Debug)]
pub struct Admitted {
    /// Over its address's accept rate, on a listener that queues (TCP):
    /// how long until the address's next turn. The transport makes a new
    /// client wait for it (a returning one need not).
    pub over_rate: Option<std::time::Duration>,
    /// Its source is in the penalty box, on a listener that lets a
    /// returning client prove itself (TCP): the transport refuses it unless
    /// it resumes a session that served an associated clientid.
    pub penalized: bool,
    _address: AddressSlot,
    _global: crate::limits::CapSlot,
}

/// Admits a connection from `source` (a per-source key) to `transport`, or
/// counts the refusal and says why (the metric's `reason`).
pub fn admit(app: &App, transport: Transport, source: IpAddr) -> Result<Admitted, &'static str> {
    let limits = app.limits();
    let admission = match transport {
        Transport::Tcp => Some(&limits.tcp),
        Transport::Quic => Some(&limits.quic),
        Transport::Federation => limits.federation.as_ref().map(|f| &f.admission),
        // The admin listener's admission is its own (it answers before
        // the App exists): `admit_with`.
        Transport::Admin => None,
    };
    match admission {
        Some(admission) => admit_with(admission, &app.metrics, transport, source),
        None => {
            app.metrics.refused_connection(transport, "no_listener");
            Err("no_listener")
        }
    }
}

/// [`admit`] for a client returning with a credential this server issued
/// (a single-use QUIC NEW_TOKEN token): not held to its address's
/// connection rate, since many subscribers can share an address; the
/// penalty box and the caps apply as to anyone. Public listeners only.
pub fn admit_returning(
    app: &App,
    transport: Transport,
    source: IpAddr,
) -> Result<Admitted, &'static str> {
    match transport {
        Transport::Quic => counted(
            &app.limits().quic,
            &app.metrics,
            transport,
            source,
            Rate::Exempt,
        ),
        Transport::Tcp => counted(
            &app.limits().tcp,
            &app.metrics,
            transport,
            source,
            Rate::Exempt,
        ),
        Transport::Federation | Transport::Admin => admit(app, transport, source),
    }
}

/// Whether a connection is held to its address's connection rate.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Rate {
    Checked,
    Exempt,
}

/// [`admit`] with the limits given: every listener's one admission path.
pub fn admit_with(
    admission: &Admission,
    metrics: &Metrics,
    transport: Transport,
    source: IpAddr,
) -> Result<Admitted, &'static str> {
    counted(admission, metrics, transport, source, Rate::Checked)
}

/// [`check`], counting a refusal under `transport`.
fn counted(
    admission: &Admission,
    metrics: &Metrics,
    transport: Transport,
    source: IpAddr,
    rate: Rate,
) -> Result<Admitted, &'static str> {
    let admitted = check(admission, metrics, source, rate);
    if let Err(reason) = admitted {
        metrics.refused_connection(transport, reason);
    }
    admitted
}

/// What a connection refused after its handshake (a QUIC client whose
/// address is proven only then, a TCP one from a source in the penalty box
/// that resumed a session that served nothing) is answered: over its address's rate or in
/// the penalty box, 429 with the wait; over a cap, 503.
pub fn refusal_after_handshake(reason: &str, limits: &crate::config::Limits) -> Refusal {
    match reason {
        "address_rate" => Refusal::RateLimited {
            wait: std::time::Duration::from_secs(1),
        },
        "penalty" => Refusal::RateLimited {
            wait: limits.penalty,
        },
        _ => Refusal::Overloaded,
    }
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

fn check(
    admission: &Admission,
    metrics: &Metrics,
    source: IpAddr,
    rate: Rate,
) -> Result<Admitted, &'static str> {
    // Behind a shared address, one user's conduct must not shut out the
    // subscribers beside it: where connections queue (TCP), a held source
    // is let in to show a proven session (not held to the accept rate:
    // it is served as returning or refused), elsewhere refused here.
    let penalized = admission.penalty.holds(source);
    if penalized && !admission.queue_over_rate {
        return Err("penalty");
    }
    let verdict = match rate {
        Rate::Checked if !penalized => admission.accepts.check(&source),
        _ => Verdict::Allowed,
    };
    let over_rate = match verdict {
        Verdict::Allowed => None,
        Verdict::Overflow => {
            metrics.limiter_overflow(admission.accepts_name);
            None
        }
        Verdict::Limited(wait) if admission.queue_over_rate => Some(wait),
        Verdict::Limited(_) => return Err("address_rate"),
    };
    let address = admission
        .per_address
        .try_open(source)
        .ok_or("address_cap")?;
    let global = admission.connections.try_open().ok_or("connection_cap")?;
    Ok(Admitted {
        over_rate,
        penalized,
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
