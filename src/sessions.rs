//! Session bindings: which subscriber holds which MNO address now.
//!
//! Two sources feed them, the admin API (`PUT /admin/v1/sessions/{ip}`) and
//! RADIUS accounting; both go through [`Bindings::bind`], the one place
//! that checks what every binding must satisfy: each network inside the
//! MNO's pools (`[mno] networks`), and the table no larger than
//! `max_bindings`. Requests only read the table ([`Bindings::table`]).

use ipnet::IpNet;

use crate::config::Config;
use crate::core::{BindingSource, MnoPolicy, Sessions};
use crate::wire::{Msisdn, SubscriberKey, SubscriberRef};

/// The bindings table and the rules for writing to it.
#[derive(Debug)]
pub struct Bindings {
    table: Sessions,
    key: SubscriberKey,
    mno: MnoPolicy,
    max_bindings: usize,
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
    /// The cap is `radius.max_bindings`, or its default without `[radius]`
    /// (admin bindings alone).
    pub fn new(config: &Config, secret: &[u8; SubscriberKey::LEN]) -> Self {
        let max_bindings = config
            .radius
            .as_ref()
            .map_or(crate::config::DEFAULT_MAX_BINDINGS, |r| r.max_bindings);
        Self {
            table: Sessions::default(),
            key: SubscriberKey::new(secret),
            mno: config.mno.clone(),
            max_bindings,
        }
    }

    /// Binds every one of `bind.networks`, or none: all must be MNO
    /// networks, and the new ones must fit under the cap. Returns the
    /// subscriber they are bound to.
    pub fn bind(&self, bind: Bind<'_>) -> Result<SubscriberRef, BindError> {
        if !bind.networks.iter().all(|n| self.mno.is_mno_network(n)) {
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
            self.table.bind_session(
                *network,
                subscriber,
                bind.expires_ms,
                bind.source.clone(),
                bind.unless_live_at,
            );
        }
        Ok(subscriber)
    }

    /// The key that makes a subscriber's reference from its MSISDN (one per
    /// deployment: `server.subscriber_secret`).
    pub fn key(&self) -> &SubscriberKey {
        &self.key
    }

    /// The table, to read (identify a request, show a binding) and to
    /// remove from.
    pub fn table(&self) -> &Sessions {
        &self.table
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
            mno: MnoPolicy {
                networks: vec!["127.1.0.0/16".parse().unwrap()],
                trusted_gateways: vec![],
            },
            max_bindings: MAX,
        }
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
                let inside = networks.iter().all(|n| bindings.mno.is_mno_network(n));
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
