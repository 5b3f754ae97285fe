//! What every request handler shares: the configuration, the store, the
//! session bindings, the limiters and the metrics ([`App`]), built once by
//! [`crate::server::start`]. The listeners in [`crate::net`] read it; the
//! features get the part they need (RADIUS the bindings and the metrics,
//! import the store and the policy).

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use http::HeaderValue;

use crate::config::Config;
use crate::core::Refusal;
use crate::limits;
use crate::metrics::Metrics;
use crate::sessions::Bindings;
use crate::store::Store;
use crate::wire::SubscriberRef;

/// Everything a request handler needs, shared by all connections.
#[derive(Debug)]
pub struct App {
    pub config: Config,
    pub store: Store,
    /// Session bindings (admin API, RADIUS): [`crate::sessions`].
    pub bindings: Arc<Bindings>,
    /// The public listeners' certificate, which a reload swaps.
    pub certificate: Arc<crate::tls::Certificate>,
    pub metrics: Arc<Metrics>,
    /// Association creations per subscriber (DESIGN §4's rate limit).
    pub creations: DefaultKeyedRateLimiter<SubscriberRef>,
    /// `Alt-Svc` advertising HTTP/3, when it is on.
    pub alt_svc: Option<HeaderValue>,
    /// Open client connections over all transports: the load signal for
    /// shedding unauthenticated requests.
    pub open_connections: AtomicUsize,
    /// `[limits]` and the limiters made from it: swapped whole by a reload
    /// ([`Limiters::renewed`]); read through [`App::limits`].
    limiters: arc_swap::ArcSwap<Limiters>,
    reloading: std::sync::Mutex<()>,
    /// Peer CMPs to forward to (`[federation]` peers); a reload swaps them.
    peers: arc_swap::ArcSwapOption<crate::federation::Peers>,
    /// The federation listener's mutual TLS, when it listens; a reload
    /// swaps it.
    federation_tls: Option<arc_swap::ArcSwap<rustls::ServerConfig>>,
    /// What the resolution rule applies ([`crate::core::admit`]), from
    /// the config: swapped whole by a reload. The one place a request
    /// reads the MNO's pools and gateways and the policy from (not
    /// `config`, which stays as the server started).
    pub rules: arc_swap::ArcSwap<crate::core::Rules>,
}

/// The keyed limits of `[limits]`, cheapest first, with the numbers they
/// were made from: the one place a request reads its limits from.
#[derive(Debug)]
pub struct Limiters {
    /// `[limits]` as these limiters apply it (not `App::config`'s, which
    /// stays as the server started).
    pub config: crate::config::Limits,
    /// Admission to the public listeners ([`limits::Admission`]): TCP and
    /// QUIC share the penalty box and both connection caps.
    pub tcp: limits::Admission,
    pub quic: limits::Admission,
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
    /// TLS sessions that served an associated clientid: resuming one skips
    /// the address's accept rate ([`crate::tls::Returning`]).
    pub returning: Arc<crate::tls::Returning>,
    /// The saturation signal (`overload_lag`) of the main runtime (TCP,
    /// admin) and of QUIC's: each listener watches its own.
    pub main_lag: Option<Arc<limits::Lag>>,
    pub quic_lag: Option<Arc<limits::Lag>>,
    /// Tarpit waiters per source (`tarpit_per_source`).
    pub tarpit_sources: Option<Arc<limits::PerAddress>>,
    /// The federation listener's own admission (when it listens).
    pub federation: Option<Arc<limits::FederationLimits>>,
    ipv6_prefix_len: u8,
}

/// `[limits]` in force, as [`App::limits_config`] reads it.
#[derive(Debug)]
pub struct LimitsConfig(arc_swap::Guard<Arc<Limiters>>);

impl std::ops::Deref for LimitsConfig {
    type Target = crate::config::Limits;

    fn deref(&self) -> &crate::config::Limits {
        &self.0.config
    }
}

/// What a reload carries over from the running limiters
/// ([`Limiters::renewed`]).
struct Kept {
    penalty: Arc<limits::PenaltyBox>,
    per_address: Arc<limits::PerAddress>,
    connections: Arc<limits::Cap>,
    returning: Arc<crate::tls::Returning>,
    main_lag: Option<Arc<limits::Lag>>,
    quic_lag: Option<Arc<limits::Lag>>,
    tarpit_sources: Option<Arc<limits::PerAddress>>,
    federation: Option<Arc<limits::FederationLimits>>,
}

impl Limiters {
    pub fn new(config: &Config) -> Self {
        let l = &config.limits;
        let kept = Kept {
            penalty: Arc::new(limits::PenaltyBox::new(l.penalty, l.limiter_max_keys)),
            per_address: Arc::new(limits::PerAddress::new(l.max_connections_per_address)),
            connections: Arc::new(limits::Cap::new(l.max_connections)),
            returning: Arc::new(crate::tls::Returning::new(
                crate::tls::TICKETS_LAST,
                l.limiter_max_keys,
            )),
            main_lag: limits::Lag::new(l.overload_lag).map(Arc::new),
            quic_lag: limits::Lag::new(l.overload_lag).map(Arc::new),
            tarpit_sources: (l.tarpit_per_source > 0)
                .then(|| Arc::new(limits::PerAddress::new(l.tarpit_per_source))),
            federation: config
                .federation
                .as_ref()
                .filter(|federation| federation.listen.is_some())
                .map(|federation| Arc::new(limits::FederationLimits::new(federation, l))),
        };
        Self::with(config, kept)
    }

    /// What a reload to `config` puts in place of these. The rates start
    /// afresh (their state is a second's worth); what counts open
    /// connections and what sources have earned goes on, shared with these
    /// and changed at once: the connection caps take their new limits (a
    /// lower one closes nobody, it lets nobody in until enough have
    /// closed), the penalty box keeps who is in it (new penalties last the
    /// new time), proven TLS sessions stay proven, the runtime probes keep
    /// probing (to the new threshold).
    /// Taking effect at the next start only: `overload_lag` switched on
    /// from off, and the federation listener's limits.
    pub fn renewed(&self, config: &Config) -> Self {
        let l = &config.limits;
        self.tcp.penalty.set_duration(l.penalty);
        self.tcp.per_address.set_cap(l.max_connections_per_address);
        self.tcp.connections.set_max(l.max_connections);
        let lag = |lag: &Option<Arc<limits::Lag>>| {
            let lag = lag.clone().filter(|_| !l.overload_lag.is_zero());
            lag.inspect(|lag| lag.set_threshold(l.overload_lag))
        };
        let tarpit_sources = match (&self.tarpit_sources, l.tarpit_per_source) {
            (_, 0) => None,
            (Some(kept), cap) => {
                kept.set_cap(cap);
                Some(kept.clone())
            }
            (None, cap) => Some(Arc::new(limits::PerAddress::new(cap))),
        };
        let kept = Kept {
            penalty: self.tcp.penalty.clone(),
            per_address: self.tcp.per_address.clone(),
            connections: self.tcp.connections.clone(),
            returning: self.returning.clone(),
            main_lag: lag(&self.main_lag),
            quic_lag: lag(&self.quic_lag),
            tarpit_sources,
            federation: self.federation.clone(),
        };
        Self::with(config, kept)
    }

    fn with(config: &Config, kept: Kept) -> Self {
        let l = &config.limits;
        // Shared by TCP and QUIC: sources closed for their conduct, open
        // connections per source, and `max_connections` over both.
        let public = |accepts, accepts_name, queue_over_rate| limits::Admission {
            penalty: kept.penalty.clone(),
            accepts: limits::KeyedRate::per_second(accepts, l.limiter_max_keys),
            accepts_name,
            per_address: kept.per_address.clone(),
            connections: kept.connections.clone(),
            queue_over_rate,
        };
        let quic_rate = config.http3.connections_per_address_per_sec;
        Self {
            // A TCP client over its address's rate waits for its turn; a
            // QUIC Initial cannot wait: it is dropped (the client resends),
            // or answered 429 once its handshake proves the address.
            tcp: public(l.accepts_per_address_per_sec, "tcp_accepts", true),
            quic: public(quic_rate, "quic_connections", false),
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
            returning: kept.returning,
            main_lag: kept.main_lag,
            quic_lag: kept.quic_lag,
            tarpit_sources: kept.tarpit_sources,
            federation: kept.federation,
            ipv6_prefix_len: l.ipv6_prefix_len,
            config: l.clone(),
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

    pub fn retain_recent(&self) {
        // The two share one penalty box: swept twice, no harm.
        self.tcp.retain_recent();
        self.quic.retain_recent();
        self.requests_per_address.retain_recent();
        self.requests_per_clientid.retain_recent();
        self.returning.sweep();
        if let Some(federation) = &self.federation {
            federation.admission.retain_recent();
        }
    }
}

impl App {
    /// The limits in force now (`[limits]` and its limiters); a reload
    /// swaps them. Not to be held across an `.await` by a request: a
    /// connection that needs them for its life takes
    /// [`App::limits_now`].
    pub fn limits(&self) -> arc_swap::Guard<Arc<Limiters>> {
        self.limiters.load()
    }

    /// `[limits]` as in force now ([`Limiters::config`]).
    pub fn limits_config(&self) -> LimitsConfig {
        LimitsConfig(self.limiters.load())
    }

    /// [`App::limits`] to keep: a connection serves its life under the
    /// limits it was let in with.
    pub fn limits_now(&self) -> Arc<Limiters> {
        self.limiters.load_full()
    }

    /// The peer CMPs to forward to now, if any (held for one forward: a
    /// reload swaps them for the next).
    pub fn peers(&self) -> Option<Arc<crate::federation::Peers>> {
        self.peers.load_full()
    }

    /// The federation listener's TLS now, if it listens.
    pub fn federation_tls(&self) -> Option<Arc<rustls::ServerConfig>> {
        self.federation_tls.as_ref().map(|tls| tls.load_full())
    }

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
        let limits = self.limits();
        let pace = match on_mno_network {
            true => &limits.first_scans,
            false => &limits.unauthenticated,
        };
        let Some(pace) = pace else {
            return Ok((Duration::ZERO, None));
        };
        let waiting = match &limits.tarpit_sources {
            Some(sources) => Some(sources.try_open(source).ok_or(Refusal::RateLimited {
                // A waiter's turn is at most `tarpit_max` away.
                wait: limits.config.tarpit_max,
            })?),
            None => None,
        };
        let wait = pace
            .reserve(limits.config.tarpit_max)
            .ok_or(Refusal::Overloaded)?;
        Ok((wait, waiting))
    }

    /// Whether a request without an association should be shed now.
    /// (Runtime lag does not shed: a 503 at once frees a flooding client
    /// to send its next request, the tarpit holds it.)
    pub fn shedding(&self) -> bool {
        self.open_connections.load(Ordering::Relaxed)
            > self.limits().config.shed_unauthenticated_above
    }

    /// Whether the main runtime lags past `limits.overload_lag`: no new
    /// TCP connections are taken on until it catches up.
    pub fn tcp_overloaded(&self) -> bool {
        self.limits()
            .main_lag
            .as_ref()
            .is_some_and(|l| l.overloaded())
    }

    /// Whether QUIC's runtime lags past `limits.overload_lag`: Initials
    /// are dropped until it catches up.
    pub fn quic_overloaded(&self) -> bool {
        self.limits()
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

    /// A reload (`SIGHUP`, `POST /admin/v1/reload`): the config read again
    /// from its source (a file, or the environment) and checked, then the
    /// certificate and key read again from their files (served from the
    /// next handshake on) and the rules the config gives (the MNO's pools
    /// and trusted gateways, the routing prefixes and policy, the MSISDN
    /// header, the URI and IPv6 prefix limits) swapped in for the next
    /// request, `[limits]` ([`Limiters::renewed`]: the next request and
    /// the next connection are held to them; a connection already open
    /// keeps the timeouts it started with), and `[federation]`'s files and
    /// peers (its certificate, key and community CA for the listener's
    /// next handshake and the next forward, the peers and registry for
    /// the next forward). What it reloaded, or why it refused: then
    /// everything running stays as it was. The rest of the config
    /// (listeners, data dir, cluster, RADIUS, the federation listener
    /// switched on or off, HTTP/3's transport settings) takes effect at
    /// the next start.
    pub fn reload(&self) -> Result<Vec<&'static str>, String> {
        // One reload at a time (SIGHUP and the API at once): each renews
        // the limits the one before left.
        let _one = self
            .reloading
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let fresh = match self.config.reread() {
            Some(read) => Some(read.map_err(|e| format!("config: {e}"))?),
            None => None,
        };
        // Everything that can fail is read before anything is swapped.
        let federating = self.peers.load().is_some() || self.federation_tls.is_some();
        let federation = match fresh.as_ref().map(|c| c.federation.as_ref()) {
            Some(Some(federation)) => Some(Some(
                crate::federation::Federation::load(federation)
                    .map_err(|e| format!("federation: {e}"))?,
            )),
            // `[federation]` gone: forwarding stops.
            Some(None) if federating => Some(None),
            _ => None,
        };
        self.certificate.reload().map_err(|e| e.to_string())?;
        self.metrics.certificate("public", &self.certificate.leaf());
        let mut reloaded = vec!["certificate"];
        if let Some(federation) = federation {
            self.swap_federation(federation);
            reloaded.push("federation");
        }
        if let Some(fresh) = fresh {
            self.bindings.set_mno(fresh.mno.clone());
            self.rules.store(Arc::new(rules_of(&fresh)));
            reloaded.push("rules");
            self.limiters
                .store(Arc::new(self.limiters.load().renewed(&fresh)));
            reloaded.push("limits");
        }
        tracing::info!(?reloaded, "reloaded");
        Ok(reloaded)
    }
}

impl App {
    /// A reloaded `[federation]` in place of the running one: the peers
    /// for the next forward (none when it is gone), the listener's TLS for
    /// the next handshake (the listener itself stays where it listens, or
    /// off).
    fn swap_federation(&self, federation: Option<crate::federation::Federation>) {
        let Some(federation) = federation else {
            return self.peers.store(None);
        };
        if let Some(leaf) = &federation.leaf {
            self.metrics.certificate("federation", leaf);
        }
        self.peers.store(federation.peers.map(Arc::new));
        if let (Some(running), Some(fresh)) = (&self.federation_tls, federation.listener_tls) {
            running.store(fresh);
        }
    }
}

/// What of `config` the resolution rule reads (see [`App::rules`]).
fn rules_of(config: &Config) -> crate::core::Rules {
    crate::core::Rules {
        policy: config.policy.clone(),
        mno: config.mno.clone(),
        max_uri_bytes: config.limits.max_uri_bytes,
        ipv6_prefix_len: config.limits.ipv6_prefix_len,
        msisdn_header: config.msisdn_header.clone(),
    }
}

impl App {
    pub fn new(
        config: Config,
        store: Store,
        metrics: Arc<Metrics>,
        bindings: Arc<Bindings>,
        certificate: Arc<crate::tls::Certificate>,
        public_addr: SocketAddr,
        federation: Option<crate::federation::Federation>,
    ) -> Self {
        let (peers, federation_tls) = match federation {
            Some(federation) => (federation.peers, federation.listener_tls),
            None => (None, None),
        };
        let per_minute = NonZeroU32::new(config.associations_per_minute).unwrap_or(NonZeroU32::MIN);
        let alt_svc = config
            .http3
            .enabled
            .then(|| {
                HeaderValue::from_str(&format!("h3=\":{}\"; ma=86400", public_addr.port())).ok()
            })
            .flatten();
        App {
            bindings,
            certificate,
            metrics,
            creations: RateLimiter::keyed(Quota::per_minute(per_minute)),
            alt_svc,
            open_connections: AtomicUsize::new(0),
            limiters: arc_swap::ArcSwap::from_pointee(Limiters::new(&config)),
            reloading: std::sync::Mutex::new(()),
            peers: arc_swap::ArcSwapOption::from(peers.map(Arc::new)),
            federation_tls: federation_tls.map(arc_swap::ArcSwap::new),
            rules: arc_swap::ArcSwap::from_pointee(rules_of(&config)),
            store,
            config,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_max_connections(max: usize) -> Config {
        let text = format!("[limits]\nmax_connections = {max}\n");
        Config::parse(&text, Vec::new()).unwrap()
    }

    /// A reload that lowers `max_connections` below what is open closes
    /// nobody and lets nobody in until enough have closed; one that raises
    /// it again lets more in at once (a lowering in between leaves no debt
    /// behind). TCP and QUIC share the one cap.
    #[test]
    fn a_lowered_connection_cap_lets_nobody_in_until_enough_have_closed() {
        let limits = Limiters::new(&with_max_connections(4));
        let mut open: Vec<_> = (0..3)
            .map(|_| limits.tcp.connections.try_open().unwrap())
            .collect();
        let lowered = limits.renewed(&with_max_connections(2));
        assert_eq!(lowered.quic.connections.available(), 0, "3 open, cap 2");
        assert!(lowered.tcp.connections.try_open().is_none());
        open.pop();
        assert!(
            lowered.tcp.connections.try_open().is_none(),
            "2 open, cap 2"
        );
        open.pop();
        assert_eq!(lowered.tcp.connections.available(), 1);
        let raised = lowered.renewed(&with_max_connections(5));
        assert_eq!(raised.tcp.connections.available(), 4, "1 open, cap 5");
        assert!(Arc::ptr_eq(&raised.returning, &limits.returning), "kept");
    }
}
