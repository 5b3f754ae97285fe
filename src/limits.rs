//! Keyed limits with bounded memory: per source address and per clientid.
//!
//! A flood from millions of addresses must neither exhaust memory nor turn
//! a per-address limit into a refusal of everyone. [`KeyedRate`] therefore
//! holds at most `max_keys` keys: when it is full, idle keys are dropped
//! (at most once a second); if it is still full, a new key is let through
//! unlimited and counted, leaving the global limits (connection cap,
//! handshakes in flight, shedding) to hold the line.

use std::hash::Hash;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use governor::clock::Clock;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

// The key a per-source limit counts a client under, and what a limit says:
// the resolution rule's words (`core::rule`).
pub use crate::core::{Verdict, source_key};

/// Checks between two counts of a limiter's keys.
const RECOUNT_EVERY: usize = 1024;

#[derive(Debug)]
pub struct KeyedRate<K: Hash + Eq + Clone> {
    limiter: Option<DefaultKeyedRateLimiter<K>>,
    max_keys: usize,
    /// The key count as last measured: counting visits every shard of the
    /// map (microseconds), so it is refreshed every `RECOUNT_EVERY` checks,
    /// and the table can overshoot `max_keys` by at most that many keys.
    keys: AtomicUsize,
    checks: AtomicUsize,
    started: Instant,
    /// Milliseconds since `started` of the last purge of idle keys.
    last_purge_ms: AtomicU64,
}

impl<K: Hash + Eq + Clone> KeyedRate<K> {
    /// `per_second == 0` switches the limit off.
    pub fn new(per_second: u32, burst: u32, max_keys: usize) -> Self {
        let limiter = NonZeroU32::new(per_second).map(|rate| {
            let burst = NonZeroU32::new(burst).unwrap_or(rate);
            RateLimiter::keyed(Quota::per_second(rate).allow_burst(burst))
        });
        Self {
            limiter,
            max_keys: max_keys.max(1),
            keys: AtomicUsize::new(0),
            checks: AtomicUsize::new(0),
            started: Instant::now(),
            last_purge_ms: AtomicU64::new(0),
        }
    }

    /// `rate` per second with bursts of twice that; 0 switches it off.
    pub fn per_second(rate: u32, max_keys: usize) -> Self {
        Self::new(rate, rate.saturating_mul(2), max_keys)
    }

    pub fn check(&self, key: &K) -> Verdict {
        let Some(limiter) = &self.limiter else {
            return Verdict::Allowed;
        };
        if self
            .checks
            .fetch_add(1, Ordering::Relaxed)
            .is_multiple_of(RECOUNT_EVERY)
        {
            self.keys.store(limiter.len(), Ordering::Relaxed);
        }
        if self.keys.load(Ordering::Relaxed) >= self.max_keys {
            self.purge(limiter);
            let keys = limiter.len();
            self.keys.store(keys, Ordering::Relaxed);
            if keys >= self.max_keys {
                return Verdict::Overflow;
            }
        }
        match limiter.check_key(key) {
            Ok(()) => Verdict::Allowed,
            Err(not_until) => Verdict::Limited(not_until.wait_time_from(limiter.clock().now())),
        }
    }

    /// Drops keys whose bucket is full again; at most once a second. While
    /// the table stays full, each check counts it again: the price of a
    /// flood that fills it, paid only then.
    fn purge(&self, limiter: &DefaultKeyedRateLimiter<K>) {
        let now_ms = self.started.elapsed().as_millis() as u64;
        let last = self.last_purge_ms.load(Ordering::Relaxed);
        if now_ms.saturating_sub(last) < 1000
            || self
                .last_purge_ms
                .compare_exchange(last, now_ms, Ordering::AcqRel, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        limiter.retain_recent();
        limiter.shrink_to_fit();
    }

    /// Periodic housekeeping.
    pub fn retain_recent(&self) {
        if let Some(limiter) = &self.limiter {
            limiter.retain_recent();
            limiter.shrink_to_fit();
            self.keys.store(limiter.len(), Ordering::Relaxed);
        }
    }

    pub fn len(&self) -> usize {
        self.limiter.as_ref().map_or(0, |l| l.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A global pace (a leaky bucket run as a queue): each caller reserves the
/// next free turn and sleeps once until it comes. Unlike polling a token
/// bucket, a thousand waiters cost a thousand timers, not a thousand
/// wake-ups per token.
#[derive(Debug)]
pub struct Pace {
    interval_ns: u64,
    /// Turns that may be taken at once after a quiet spell.
    burst_ns: u64,
    /// Nanoseconds since `start` of the next free turn.
    next_ns: AtomicU64,
    start: Instant,
}

impl Pace {
    /// `per_second` turns a second, bursts of `per_second / 10` (at least
    /// one); `None` when 0 (no pace).
    pub fn per_second(per_second: u32) -> Option<Self> {
        (per_second > 0).then(|| {
            let interval_ns = 1_000_000_000 / u64::from(per_second);
            Self {
                interval_ns,
                burst_ns: interval_ns * u64::from((per_second / 10).max(1)),
                next_ns: AtomicU64::new(0),
                start: Instant::now(),
            }
        })
    }

    /// Reserves a turn and says how long to wait for it; `None` (and no
    /// turn taken) when it is further away than `max_wait`.
    pub fn reserve(&self, max_wait: Duration) -> Option<Duration> {
        let now = self.start.elapsed().as_nanos() as u64;
        let max_wait = max_wait.as_nanos() as u64;
        let mut next = self.next_ns.load(Ordering::Acquire);
        loop {
            let slot = next.max(now.saturating_sub(self.burst_ns));
            let wait = slot.saturating_sub(now);
            if wait > max_wait {
                return None;
            }
            match self.next_ns.compare_exchange_weak(
                next,
                slot + self.interval_ns,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Some(Duration::from_nanos(wait)),
                Err(actual) => next = actual,
            }
        }
    }
}

/// The server's saturation signal: how late the runtime polls a task that is
/// due. A probe sleeps [`Lag::PERIOD`] at a time and folds how late it woke
/// into a moving average; above the threshold the server is overloaded.
/// Work that is waiting to run (handshakes, requests of every connection)
/// shows up here whatever its cause, CPU or lock, ours or a neighbour's.
#[derive(Debug)]
pub struct Lag {
    /// Changed by a reload.
    threshold_us: AtomicU64,
    /// Moving average of the probe's lateness, microseconds.
    average_us: AtomicU64,
}

impl Lag {
    pub const PERIOD: Duration = Duration::from_millis(10);

    /// `None` when `threshold` is zero (no overload detection).
    pub fn new(threshold: Duration) -> Option<Self> {
        (!threshold.is_zero()).then(|| Self {
            threshold_us: AtomicU64::new(threshold.as_micros() as u64),
            average_us: AtomicU64::new(0),
        })
    }

    /// Folds one lateness sample in, weight 1/4: a few periods of lag
    /// (tens of milliseconds) tip it, one late wake-up does not.
    pub fn record(&self, late: Duration) {
        let late = late.as_micros() as u64;
        let average = self.average_us.load(Ordering::Relaxed);
        self.average_us
            .store(average - average / 4 + late / 4, Ordering::Relaxed);
    }

    pub fn average(&self) -> Duration {
        Duration::from_micros(self.average_us.load(Ordering::Relaxed))
    }

    /// The lag past which it is overloaded, from now on (a reload).
    pub fn set_threshold(&self, threshold: Duration) {
        self.threshold_us
            .store(threshold.as_micros() as u64, Ordering::Relaxed);
    }

    pub fn overloaded(&self) -> bool {
        self.average_us.load(Ordering::Relaxed) > self.threshold_us.load(Ordering::Relaxed)
    }

    /// Measures until `shutdown`, on the runtime it is spawned on: the one
    /// writer of the average.
    pub async fn probe(self: Arc<Self>, shutdown: tokio_util::sync::CancellationToken) {
        loop {
            let due = tokio::time::Instant::now() + Self::PERIOD;
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep_until(due) => {}
            }
            self.record(tokio::time::Instant::now().saturating_duration_since(due));
        }
    }
}

/// Open connections per source address, capped. Memory is bounded by the
/// global connection cap: an address is only here while it has one open.
#[derive(Debug)]
pub struct PerAddress {
    open: DashMap<IpAddr, u32>,
    /// Changed by a reload; slots already open stay open.
    cap: std::sync::atomic::AtomicU32,
}

/// Holds one connection slot of an address; frees it when dropped.
#[derive(Debug)]
pub struct AddressSlot {
    owner: Arc<PerAddress>,
    addr: IpAddr,
}

impl PerAddress {
    /// `cap == 0` switches the limit off (slots are still counted).
    pub fn new(cap: u32) -> Self {
        let me = Self {
            open: DashMap::new(),
            cap: std::sync::atomic::AtomicU32::new(0),
        };
        me.set_cap(cap);
        me
    }

    /// From the next slot asked for on (a reload): `0` switches it off.
    pub fn set_cap(&self, cap: u32) {
        let cap = if cap == 0 { u32::MAX } else { cap };
        self.cap.store(cap, Ordering::Relaxed);
    }

    /// A slot for `addr`, or `None` when it already has `cap` connections.
    pub fn try_open(self: &Arc<Self>, addr: IpAddr) -> Option<AddressSlot> {
        let mut count = self.open.entry(addr).or_insert(0);
        if *count >= self.cap.load(Ordering::Relaxed) {
            return None;
        }
        *count += 1;
        Some(AddressSlot {
            owner: self.clone(),
            addr,
        })
    }

    pub fn addresses(&self) -> usize {
        self.open.len()
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        if let dashmap::mapref::entry::Entry::Occupied(mut entry) = self.owner.open.entry(self.addr)
        {
            *entry.get_mut() -= 1;
            if *entry.get() == 0 {
                entry.remove();
            }
        }
    }
}

/// A cap on open connections that a reload can move: a count and its
/// limit. A lower limit closes nobody; it lets nobody in until enough have
/// closed.
#[derive(Debug)]
pub struct Cap {
    open: AtomicUsize,
    max: AtomicUsize,
}

/// One connection a [`Cap`] counts; no longer counted once dropped.
#[derive(Debug)]
pub struct CapSlot {
    owner: Arc<Cap>,
}

impl Cap {
    pub fn new(max: usize) -> Self {
        Self {
            open: AtomicUsize::new(0),
            max: AtomicUsize::new(max),
        }
    }

    /// The limit for the connections let in from now on.
    pub fn set_max(&self, max: usize) {
        self.max.store(max, Ordering::Relaxed);
    }

    /// A slot, or `None` at the limit.
    pub fn try_open(self: &Arc<Self>) -> Option<CapSlot> {
        let max = self.max.load(Ordering::Relaxed);
        self.open
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |open| {
                (open < max).then_some(open + 1)
            })
            .ok()?;
        Some(CapSlot {
            owner: self.clone(),
        })
    }

    /// Slots left under the limit.
    pub fn available(&self) -> usize {
        let max = self.max.load(Ordering::Relaxed);
        max.saturating_sub(self.open.load(Ordering::Relaxed))
    }
}

impl Drop for CapSlot {
    fn drop(&mut self) {
        self.owner.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// One listener's admission, cheapest check first: its penalty box, the
/// source's accept rate, the source's open connections, the global cap.
/// The public TCP and QUIC listeners share the box and both caps (one
/// count over the two transports), each with an accept rate of its own;
/// the federation and admin listeners have their own of everything.
#[derive(Debug)]
pub struct Admission {
    pub penalty: Arc<PenaltyBox>,
    pub accepts: KeyedRate<IpAddr>,
    /// The `limit` label of `limiter_overflow_total` for `accepts`.
    pub accepts_name: &'static str,
    pub per_address: Arc<PerAddress>,
    pub connections: Arc<Cap>,
    /// Over the accept rate, a connection is admitted to wait for its turn
    /// (`Admitted::over_rate`) rather than closed, and from a source in the
    /// penalty box, admitted to prove it is returning
    /// (`Admitted::penalized`): the TCP listener's, whose clients can be
    /// many subscribers behind one address.
    pub queue_over_rate: bool,
}

impl Admission {
    /// The admin listener's: only its cap (`admin.max_connections`); an
    /// operator's tool may open as many connections from one address as
    /// it likes, and a token is needed for anything.
    pub fn admin(max_connections: usize) -> Self {
        Self {
            penalty: Arc::new(PenaltyBox::new(Duration::ZERO, 1)),
            accepts: KeyedRate::per_second(0, 1),
            accepts_name: "admin_accepts",
            per_address: Arc::new(PerAddress::new(0)),
            connections: Arc::new(Cap::new(max_connections)),
            queue_over_rate: false,
        }
    }

    /// Periodic housekeeping.
    pub fn retain_recent(&self) {
        self.accepts.retain_recent();
        self.penalty.sweep();
    }
}

/// The federation listener's admission (`[federation]`'s
/// `max_connections`, `max_connections_per_address`,
/// `accepts_per_address_per_sec`) and handshake pace
/// (`handshakes_per_sec`), with a penalty box of its own: a peer that earns
/// one (see `net::conn::Conduct`) is held off the federation port only.
#[derive(Debug)]
pub struct FederationLimits {
    pub admission: Admission,
    /// All TLS handshakes on the federation port together: each waits for
    /// its turn before any TLS work (the certificate check included).
    pub handshakes: Option<Pace>,
}

impl FederationLimits {
    pub fn new(
        federation: &crate::config::FederationConfig,
        limits: &crate::config::Limits,
    ) -> Self {
        let admission = Admission {
            penalty: Arc::new(PenaltyBox::new(limits.penalty, limits.limiter_max_keys)),
            accepts: KeyedRate::per_second(
                federation.accepts_per_address_per_sec,
                limits.limiter_max_keys,
            ),
            accepts_name: "federation_accepts",
            per_address: Arc::new(PerAddress::new(federation.max_connections_per_address)),
            connections: Arc::new(Cap::new(federation.max_connections)),
            queue_over_rate: false,
        };
        Self {
            admission,
            handshakes: Pace::per_second(federation.handshakes_per_sec),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limits_each_key_apart() {
        let rate = KeyedRate::new(1, 2, 100);
        assert_eq!(rate.check(&1), Verdict::Allowed);
        assert_eq!(rate.check(&1), Verdict::Allowed);
        assert!(matches!(rate.check(&1), Verdict::Limited(_)));
        assert_eq!(rate.check(&2), Verdict::Allowed);
    }

    #[test]
    fn a_full_table_lets_new_keys_through_instead_of_refusing_everyone() {
        let rate = KeyedRate::new(1, 1, 3);
        for key in 0..3 {
            assert_eq!(rate.check(&key), Verdict::Allowed);
        }
        // Housekeeping counts the keys (checks do so every RECOUNT_EVERY);
        // all three are still active, so the table is full.
        rate.retain_recent();
        assert_eq!(rate.check(&99), Verdict::Overflow);
        assert!(matches!(
            rate.check(&0),
            Verdict::Overflow | Verdict::Limited(_)
        ));
        assert!(rate.len() <= 3);
    }

    #[test]
    fn pace_queues_turns_and_refuses_beyond_the_longest_wait() {
        let pace = Pace::per_second(10).unwrap();
        // Burst of one turn, then one every 100 ms.
        assert_eq!(pace.reserve(Duration::ZERO), Some(Duration::ZERO));
        let second = pace.reserve(Duration::from_secs(1)).unwrap();
        let third = pace.reserve(Duration::from_secs(1)).unwrap();
        assert!(third > second && third - second >= Duration::from_millis(99));
        assert_eq!(pace.reserve(Duration::from_millis(50)), None);
        assert!(Pace::per_second(0).is_none());
    }

    #[test]
    fn lag_tips_into_overload_after_a_few_late_periods_and_recovers() {
        let lag = Lag::new(Duration::from_millis(20)).unwrap();
        lag.record(Duration::from_millis(60));
        assert!(!lag.overloaded(), "one late wake-up is not overload");
        for _ in 0..4 {
            lag.record(Duration::from_millis(60));
        }
        assert!(lag.overloaded(), "average {:?}", lag.average());
        for _ in 0..12 {
            lag.record(Duration::from_millis(1));
        }
        assert!(!lag.overloaded(), "average {:?}", lag.average());
        assert!(Lag::new(Duration::ZERO).is_none());
    }

    #[test]
    fn zero_switches_the_limit_off() {
        let rate = KeyedRate::<u8>::new(0, 0, 1);
        for _ in 0..100 {
            assert_eq!(rate.check(&1), Verdict::Allowed);
        }
    }

    #[test]
    fn per_address_slots_are_capped_and_freed() {
        let per = Arc::new(PerAddress::new(2));
        let a: IpAddr = "127.2.0.1".parse().unwrap();
        let first = per.try_open(a).unwrap();
        let _second = per.try_open(a).unwrap();
        assert!(per.try_open(a).is_none());
        assert!(per.try_open("127.2.0.2".parse().unwrap()).is_some());
        drop(first);
        assert!(per.try_open(a).is_some());
    }
}

#[cfg(test)]
mod source_key_tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn ipv4_mapped_is_ipv4_and_ipv6_counts_by_prefix() {
        assert_eq!(source_key(ip("::ffff:127.1.0.1"), 64), ip("127.1.0.1"));
        assert_eq!(source_key(ip("127.1.0.1"), 64), ip("127.1.0.1"));
        assert_eq!(
            source_key(ip("2001:db8:1:2:aaaa:bbbb:cccc:dddd"), 64),
            ip("2001:db8:1:2::")
        );
        assert_eq!(source_key(ip("2001:db8:1:2::9"), 48), ip("2001:db8:1::"));
        assert_eq!(source_key(ip("2001:db8::9"), 128), ip("2001:db8::9"));
        assert_eq!(source_key(ip("2001:db8::9"), 0), ip("::"));
    }
}

/// Sources whose connection was closed for abuse (see
/// [`crate::net::conn::Conduct`]): their new connections are refused before any
/// TLS or QUIC work until their time is up. Bounded like the keyed limits:
/// when full of live entries, a new one is not recorded (and counted).
#[derive(Debug)]
pub struct PenaltyBox {
    until: DashMap<IpAddr, Instant>,
    /// Entries, as last counted: an empty box costs one atomic load per
    /// check (counting the map visits every shard).
    entries: AtomicUsize,
    /// Milliseconds a new penalty lasts; changed by a reload (penalties
    /// already served keep their end).
    duration_ms: AtomicU64,
    max_keys: usize,
}

impl PenaltyBox {
    /// `duration` zero: nobody is ever held.
    pub fn new(duration: Duration, max_keys: usize) -> Self {
        Self {
            until: DashMap::new(),
            entries: AtomicUsize::new(0),
            duration_ms: AtomicU64::new(duration.as_millis() as u64),
            max_keys: max_keys.max(1),
        }
    }

    /// How long the penalties put from now on last.
    pub fn set_duration(&self, duration: Duration) {
        self.duration_ms
            .store(duration.as_millis() as u64, Ordering::Relaxed);
    }

    /// Whether `source` is serving a penalty now.
    pub fn holds(&self, source: IpAddr) -> bool {
        if self.entries.load(Ordering::Relaxed) == 0 {
            return false;
        }
        match self.until.get(&source).map(|until| *until) {
            Some(until) if until > Instant::now() => true,
            Some(_) => {
                self.until
                    .remove_if(&source, |_, until| *until <= Instant::now());
                false
            }
            None => false,
        }
    }

    /// Holds `source` for the penalty's duration; `false` if the box is full.
    pub fn put(&self, source: IpAddr) -> bool {
        let duration = Duration::from_millis(self.duration_ms.load(Ordering::Relaxed));
        if duration.is_zero() {
            return false;
        }
        if self.until.len() >= self.max_keys {
            self.sweep();
            if self.until.len() >= self.max_keys {
                return false;
            }
        }
        self.until.insert(source, Instant::now() + duration);
        self.entries.store(self.until.len(), Ordering::Relaxed);
        true
    }

    /// Forgets served penalties.
    pub fn sweep(&self) {
        let now = Instant::now();
        self.until.retain(|_, until| *until > now);
        self.entries.store(self.until.len(), Ordering::Relaxed);
    }
}

#[cfg(test)]
mod penalty_tests {
    use super::*;

    #[test]
    fn a_penalty_holds_for_its_time_and_the_box_stays_bounded() {
        let ip = |t: &str| t.parse::<IpAddr>().unwrap();
        let (a, b, c) = (ip("127.2.0.1"), ip("127.2.0.2"), ip("127.2.0.3"));
        // Long enough that no stall of a busy machine serves it mid-test.
        let long = PenaltyBox::new(Duration::from_secs(600), 2);
        assert!(!long.holds(a));
        assert!(long.put(a) && long.put(b));
        assert!(!long.put(c), "full of live penalties");
        assert!(long.holds(a) && !long.holds(c));
        // Short, and waited out: a stall only makes it more served.
        let short = PenaltyBox::new(Duration::from_millis(20), 2);
        assert!(short.put(a) && short.put(b));
        std::thread::sleep(Duration::from_millis(40));
        assert!(!short.holds(a), "served");
        assert!(short.put(c), "room again once the served ones are swept");
        let off = PenaltyBox::new(Duration::ZERO, 2);
        assert!(!off.put(a) && !off.holds(a));
    }
}
