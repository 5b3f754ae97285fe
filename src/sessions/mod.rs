//! Session bindings: which subscriber holds which MNO address now.
//!
//! Two sources feed them, the admin API (`PUT /admin/v1/sessions/{ip}`) and
//! RADIUS accounting; both go through [`Bindings::bind`], the one place
//! that checks what every binding must satisfy: each network inside the
//! MNO's pools (`[mno] networks`), and the table no larger than
//! `max_bindings`. Removals go through it too ([`Bindings::unbind`],
//! [`Bindings::unbind_session`], [`Bindings::unbind_subscriber`],
//! [`Bindings::sweep`]): every change is kept on disk ([`kept`]), so a
//! restart finds the live bindings. Requests only read the table
//! ([`Bindings::table`]).

pub mod kept;
pub mod shared;

use ipnet::IpNet;

use crate::config::Config;
use crate::core::{BindingSource, MnoPolicy, Sessions, canonical_net};
use crate::wire::{Msisdn, SubscriberKey, SubscriberRef};

/// The bindings table and the rules for writing to it.
#[derive(Debug)]
pub struct Bindings {
    table: Sessions,
    key: SubscriberKey,
    /// The MNO's pools: only addresses in them are bound (swapped by a
    /// reload, [`Bindings::set_mno`]).
    mno: arc_swap::ArcSwap<MnoPolicy>,
    max_bindings: usize,
    /// On disk (`data_dir/sessions`), when the server keeps them.
    kept: Option<kept::Kept>,
    /// Cluster mode: this node's changes go to every node ([`shared`]).
    shared: std::sync::OnceLock<shared::Publisher>,
    /// Cluster mode: the expiry every node holds for each binding (the
    /// last shared), so a refresh is shared only when it matters.
    held_elsewhere: dashmap::DashMap<IpNet, u64>,
}

/// One binding to make: `networks` (an address is a /32 or /128) for
/// `msisdn`'s subscriber until `expires_ms`.
#[derive(Debug)]
pub struct Bind<'a> {
    pub networks: &'a [IpNet],
    pub msisdn: &'a Msisdn,
    pub expires_ms: u64,
    pub source: BindingSource,
    /// `Some(now)` (a RADIUS Interim): a binding another source holds,
    /// still live at `now`, stays as it is. `None` binds whatever was there.
    pub unless_live_at: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BindError {
    #[error("the address is outside the MNO's networks")]
    NotInMnoNetwork,
    #[error("the bindings table is full (max_bindings)")]
    Full,
}

impl Bindings {
    /// Bindings in memory only. The cap is `radius.max_bindings`, or its
    /// default without `[radius]` (admin bindings alone).
    pub fn new(config: &Config, secret: &[u8; SubscriberKey::LEN]) -> Self {
        let max_bindings = config
            .radius
            .as_ref()
            .map_or(crate::config::DEFAULT_MAX_BINDINGS, |r| r.max_bindings);
        Self {
            table: Sessions::default(),
            key: SubscriberKey::new(secret),
            mno: arc_swap::ArcSwap::from_pointee(config.mno.clone()),
            max_bindings,
            kept: None,
            shared: std::sync::OnceLock::new(),
            held_elsewhere: dashmap::DashMap::new(),
        }
    }

    /// Bindings kept in `data_dir/sessions`, with the live ones found there
    /// (at `now_ms`) back in the table: a restart forgets nothing. A kept
    /// binding now outside the MNO's pools, expired, or over the cap is
    /// dropped (and deleted).
    pub fn open(
        config: &Config,
        secret: &[u8; SubscriberKey::LEN],
        now_ms: u64,
    ) -> Result<Self, kept::KeptError> {
        let mut bindings = Self::new(config, secret);
        let kept = kept::Kept::open(&config.data_dir.join(kept::DIR))?;
        for bound in kept.load() {
            let fits = bindings.table.len() < bindings.max_bindings;
            let usable =
                bound.expires_ms > now_ms && bindings.mno.load().is_mno_network(&bound.network);
            let network = bound.network;
            kept.mirror(&bindings.table, network, || {
                if usable && fits {
                    bindings.table.bind_session(
                        network,
                        bound.subscriber,
                        bound.expires_ms,
                        bound.source,
                        None,
                    );
                }
            });
        }
        tracing::info!(bindings = bindings.table.len(), "session bindings restored");
        bindings.kept = Some(kept);
        Ok(bindings)
    }

    /// Runs `change` of `network`, keeps the result on disk, and (in
    /// cluster mode) shares it with every node.
    fn changing<T>(&self, network: IpNet, change: impl FnOnce() -> T) -> T {
        let done = self.locally(network, change);
        self.share_change(network);
        done
    }

    /// Cluster mode: `network`'s state goes to every node.
    fn share_change(&self, network: IpNet) {
        if let Some(publisher) = self.shared.get() {
            self.note_held(network);
            publisher.changed(network);
        }
    }

    /// Records the expiry every node will hold for `network` (the table's).
    fn note_held(&self, network: IpNet) {
        let network = canonical_net(network);
        match self.table.get(network) {
            Some(bound) => {
                self.held_elsewhere.insert(network, bound.expires_ms);
            }
            None => {
                self.held_elsewhere.remove(&network);
            }
        }
    }

    /// Runs `change` of `network` and keeps the result on disk, on this
    /// node only (an expiry every node sees by itself; a change another
    /// node shared).
    fn locally<T>(&self, network: IpNet, change: impl FnOnce() -> T) -> T {
        match &self.kept {
            Some(kept) => kept.mirror(&self.table, network, change),
            None => change(),
        }
    }

    /// Cluster mode: from now on this node's changes are shared through
    /// `publisher`.
    pub fn share(&self, publisher: shared::Publisher) {
        let _ = self.shared.set(publisher);
    }

    /// A change another node (or this one) shared: `payload` is the
    /// binding as kept, or empty once removed. Held to this node's pools
    /// and cap as any binding is.
    pub fn apply_shared(&self, network: IpNet, payload: &[u8]) {
        let bound = match payload.is_empty() {
            true => None,
            false => match kept::decode(&kept::network_key(network), payload) {
                Some(bound) => Some(bound),
                None => {
                    tracing::warn!(%network, "a shared session binding does not decode; ignored");
                    return;
                }
            },
        };
        self.locally(network, || match bound {
            Some(bound) => {
                let fits = self.table.is_bound(network) || self.table.len() < self.max_bindings;
                if fits && self.mno.load().is_mno_network(&network) {
                    self.table.bind_session(
                        network,
                        bound.subscriber,
                        bound.expires_ms,
                        bound.source,
                        None,
                    );
                }
            }
            None => {
                self.table.unbind(network);
            }
        });
        if self.shared.get().is_some() {
            self.note_held(network);
        }
    }

    /// Binds every one of `bind.networks`, or none: all must be MNO
    /// networks, and the new ones must fit under the cap. Returns the
    /// subscriber they are bound to.
    pub fn bind(&self, bind: Bind<'_>) -> Result<SubscriberRef, BindError> {
        if !bind
            .networks
            .iter()
            .all(|n| self.mno.load().is_mno_network(n))
        {
            return Err(BindError::NotInMnoNetwork);
        }
        let new = bind
            .networks
            .iter()
            .filter(|n| !self.table.is_bound(**n))
            .count();
        if self.table.len() + new > self.max_bindings {
            return Err(BindError::Full);
        }
        let subscriber = self.key.subscriber_ref(bind.msisdn);
        for network in bind.networks {
            let change = || {
                self.table.bind_session(
                    *network,
                    subscriber,
                    bind.expires_ms,
                    bind.source.clone(),
                    bind.unless_live_at,
                )
            };
            // Cluster mode: shared when the others must know (a refresh
            // only now and then); single node: nothing to compare.
            if self.shared.get().is_none() {
                self.locally(*network, change);
                continue;
            }
            let held = self
                .held_elsewhere
                .get(&canonical_net(*network))
                .map(|e| *e);
            let before = self.table.get(*network);
            self.locally(*network, change);
            let after = self.table.get(*network);
            if worth_sharing(
                before.as_ref(),
                after.as_ref(),
                held,
                crate::clock::now_ms(),
            ) {
                self.share_change(*network);
            }
        }
        Ok(subscriber)
    }

    /// Removes the binding of exactly `network` (admin); `true` if there
    /// was one.
    pub fn unbind(&self, network: IpNet) -> bool {
        self.changing(network, || self.table.unbind(network))
    }

    /// Removes the binding of exactly `network` if `source` made it (an
    /// accounting Stop); `true` if it did.
    pub fn unbind_session(&self, network: IpNet, source: &BindingSource) -> bool {
        self.changing(network, || self.table.unbind_session(network, source))
    }

    /// Drops every binding to `subscriber` (erasure), on disk too, with no
    /// copy left in the files; returns how many.
    pub fn unbind_subscriber(&self, subscriber: &SubscriberRef) -> usize {
        let gone = self.table.unbind_subscriber(subscriber);
        for network in &gone {
            self.changing(*network, || ());
        }
        if let Some(kept) = self.kept.as_ref().filter(|_| !gone.is_empty()) {
            kept.purge();
        }
        gone.len()
    }

    /// Drops expired bindings, on disk too; returns how many are left.
    pub fn sweep(&self, now_ms: u64) -> usize {
        for network in self.table.sweep(now_ms) {
            self.locally(network, || ());
            self.held_elsewhere.remove(&network);
        }
        self.table.len()
    }

    /// The key that makes a subscriber's reference from its MSISDN (one per
    /// deployment: `server.subscriber_secret`).
    /// The MNO's pools from now on (a reload).
    pub fn set_mno(&self, mno: MnoPolicy) {
        self.mno.store(std::sync::Arc::new(mno));
    }

    pub fn key(&self) -> &SubscriberKey {
        &self.key
    }

    /// The table, to read (identify a request, show a binding).
    pub fn table(&self) -> &Sessions {
        &self.table
    }
}

/// Whether a bind changed what other nodes must know: a binding that
/// appears, leaves, or changes subscriber or source, always; a refresh
/// (an accounting Interim: only the expiry moves) once less than half of
/// the new lifetime is left on the copy the others hold (`held_elsewhere`,
/// the expiry last shared), so a busy hour's Interims cost no publish each.
fn worth_sharing(
    before: Option<&crate::core::Bound>,
    after: Option<&crate::core::Bound>,
    held_elsewhere: Option<u64>,
    now_ms: u64,
) -> bool {
    match (before, after) {
        (Some(before), Some(after))
            if before.subscriber == after.subscriber && before.source == after.source =>
        {
            let held = held_elsewhere.unwrap_or(0).saturating_sub(now_ms);
            let new = after.expires_ms.saturating_sub(now_ms);
            held < new / 2
        }
        (None, None) => false,
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const MAX: usize = 6;

    fn bindings() -> Bindings {
        Bindings {
            table: Sessions::default(),
            key: SubscriberKey::new(&[7; 32]),
            mno: arc_swap::ArcSwap::from_pointee(MnoPolicy {
                networks: vec!["127.1.0.0/16".parse().unwrap()],
                trusted_gateways: vec![],
            }),
            max_bindings: MAX,
            kept: None,
            shared: std::sync::OnceLock::new(),
            held_elsewhere: dashmap::DashMap::new(),
        }
    }

    #[test]
    fn an_interim_is_shared_only_once_half_its_lifetime_has_passed() {
        let bindings = bindings();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        bindings.share(shared::Publisher::for_test(tx));
        let network: IpNet = "127.1.0.9/32".parse().unwrap();
        let msisdn = Msisdn::parse("+447700900009").unwrap();
        let now = crate::clock::now_ms();
        let bind = |expires_ms, who: &Msisdn| {
            bindings
                .bind(Bind {
                    networks: &[network],
                    msisdn: who,
                    expires_ms,
                    source: BindingSource::Admin,
                    unless_live_at: None,
                })
                .unwrap();
        };
        let mut shared = || std::iter::from_fn(|| rx.try_recv().ok()).count();
        bind(now + 3_600_000, &msisdn);
        assert_eq!(shared(), 1, "a new binding");
        bind(now + 3_660_000, &msisdn);
        assert_eq!(
            shared(),
            0,
            "a refresh with most of its lifetime left elsewhere"
        );
        bind(now + 7_300_000, &msisdn);
        assert_eq!(
            shared(),
            1,
            "less than half of the new lifetime held elsewhere"
        );
        bind(now + 7_300_000, &Msisdn::parse("+447700900010").unwrap());
        assert_eq!(shared(), 1, "another subscriber");
        bindings.unbind(network);
        assert_eq!(shared(), 1, "a removal");
    }

    /// An address inside the MNO pool (127.1.0.x) or outside it (127.2.0.x).
    fn any_network() -> impl Strategy<Value = IpNet> {
        (any::<bool>(), 0u8..12).prop_map(|(inside, host)| {
            let second = if inside { 1 } else { 2 };
            format!("127.{second}.0.{host}/32").parse().unwrap()
        })
    }

    proptest! {
        /// Whatever is asked, in whatever order: every binding is inside
        /// the MNO's pools, the table never holds more than the cap, and a
        /// bind makes all of its bindings or none.
        #[test]
        fn every_binding_is_inside_the_pools_and_the_table_is_bounded(
            asks in proptest::collection::vec(
                (proptest::collection::vec(any_network(), 1..4), 0u8..3),
                1..40,
            ),
        ) {
            let bindings = bindings();
            for (networks, who) in asks {
                let msisdn = Msisdn::parse(&format!("+44770090000{who}")).unwrap();
                let before = bindings.table().len();
                let result = bindings.bind(Bind {
                    networks: &networks,
                    msisdn: &msisdn,
                    expires_ms: u64::MAX,
                    source: BindingSource::Admin,
                    unless_live_at: None,
                });
                let inside = networks.iter().all(|n| bindings.mno.load().is_mno_network(n));
                match result {
                    Ok(subscriber) => {
                        prop_assert!(inside);
                        for n in &networks {
                            prop_assert_eq!(bindings.table().lookup(n.addr(), 0), Some(subscriber));
                        }
                    }
                    Err(BindError::NotInMnoNetwork) => {
                        prop_assert!(!inside);
                        prop_assert_eq!(bindings.table().len(), before);
                    }
                    Err(BindError::Full) => prop_assert_eq!(bindings.table().len(), before),
                }
                prop_assert!(bindings.table().len() <= MAX);
            }
            let outside: IpNet = "127.2.0.0/24".parse().unwrap();
            for host in 0..12u8 {
                let addr = std::net::IpAddr::from([127, 2, 0, host]);
                prop_assert!(outside.contains(&addr));
                prop_assert_eq!(bindings.table().lookup(addr, 0), None);
            }
        }
    }
}
