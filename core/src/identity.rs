//! Who the network says the client is (DESIGN §3).
//!
//! HTTPS end to end means nobody on the path can add headers to the MCC's
//! request, so identity comes from what the CMP itself sees: the transport
//! peer address, the operator's session bindings (client IP -> subscriber),
//! and headers only from peers listed as trusted gateways. Enrichment headers
//! from anyone else are a spoof attempt: ignored, and reported for counting.
//!
//! Which address a request comes from is decided once, by
//! [`identity_address`] (DESIGN §10): every transport hands it what it saw,
//! and the rest of this module, the limits and the decision see only the
//! [`Origin`] it returns.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use dashmap::DashMap;
use ipnet::IpNet;

use crate::model::IdentitySource;
use crate::refusal::Refusal;
use crate::wire::{Msisdn, SubscriberKey, SubscriberRef};

#[derive(Debug, Clone)]
pub struct MnoPolicy {
    /// Subscriber address pools: a client inside is on the MNO network.
    pub networks: Vec<IpNet>,
    /// Peers whose MSISDN header and `X-Forwarded-For` are believed.
    pub trusted_gateways: Vec<IpNet>,
}

impl MnoPolicy {
    pub fn is_mno_address(&self, addr: IpAddr) -> bool {
        self.networks.iter().any(|net| net.contains(&addr))
    }

    /// Whether all of `network` lies inside one subscriber pool.
    pub fn is_mno_network(&self, network: &IpNet) -> bool {
        self.networks.iter().any(|pool| pool.contains(network))
    }

    pub fn is_trusted_gateway(&self, addr: IpAddr) -> bool {
        self.trusted_gateways.iter().any(|net| net.contains(&addr))
    }
}

/// Made once: looking a header up by a `&str` parses the name each time.
const X_FORWARDED_FOR: http::HeaderName = http::HeaderName::from_static("x-forwarded-for");

/// What a transport saw of where a request came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// A TCP connection's peer: the TCP and TLS handshakes proved that the
    /// client receives at it, and it cannot change.
    Tcp { peer: IpAddr },
    /// A QUIC connection: `handshake`, the address its handshake completed
    /// from (the client received the server's handshake there), and
    /// `current`, the address its packets come from now. QUIC lets a
    /// client move (migration); quinn moves the connection to a new
    /// address at its first packet, before that path is validated, and
    /// does not say when it is.
    Quic { handshake: IpAddr, current: IpAddr },
}

/// The address a request counts as coming from, as far as the transport
/// can vouch for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// The client was shown to receive at this address.
    Validated(IpAddr),
    /// A QUIC connection that moved from `validated` to `current`: nothing
    /// shows that the client receives at `current` (one packet with a
    /// forged source address is enough to get here). Identity treats such
    /// a request as off the MNO network; limits count it under
    /// `validated`, the address the connection proved.
    Unvalidated { validated: IpAddr, current: IpAddr },
}

/// The one function that turns what a transport saw into the [`Origin`]
/// of a request (DESIGN §10): a TCP peer, or a QUIC connection's handshake
/// address for as long as it still comes from there. A QUIC connection
/// that migrated is [`Origin::Unvalidated`] until it comes back, whether
/// or not QUIC has validated the new path since: quinn does not say, and
/// a client that really moved opens a new connection (a new handshake)
/// to be identified from its new address. Addresses are canonical (an
/// IPv4-mapped IPv6 address is IPv4); a change of port alone (NAT
/// rebinding) is no move.
pub fn identity_address(seen: Seen) -> Origin {
    match seen {
        Seen::Tcp { peer } => Origin::Validated(peer.to_canonical()),
        Seen::Quic { handshake, current } => {
            let (validated, current) = (handshake.to_canonical(), current.to_canonical());
            match validated == current {
                true => Origin::Validated(validated),
                false => Origin::Unvalidated { validated, current },
            }
        }
    }
}

impl Origin {
    /// The address the connection proved: what per-address limits and
    /// penalties count, so a forged address never spends its owner's
    /// budget.
    pub fn validated(self) -> IpAddr {
        match self {
            Origin::Validated(addr)
            | Origin::Unvalidated {
                validated: addr, ..
            } => addr,
        }
    }
}

/// What the transport saw of the client: where the request came from and
/// the raw values of the two enrichment headers, if present.
/// `forwarded_for` is the *last* `X-Forwarded-For` line: a gateway appends
/// its own, so a line the client sent comes before it.
#[derive(Debug, Clone, Copy)]
pub struct ClientView<'a> {
    pub origin: Origin,
    pub msisdn_header: Option<&'a str>,
    pub forwarded_for: Option<&'a str>,
}

impl<'a> ClientView<'a> {
    /// The view of a request from `origin` with `headers`: the MSISDN header
    /// must appear at most once (two lines are refused, not guessed
    /// between), `X-Forwarded-For` is taken from its last line.
    pub fn from_headers(
        origin: Origin,
        headers: &'a http::HeaderMap,
        msisdn_header: &http::HeaderName,
    ) -> Result<Self, Refusal> {
        let mut lines = headers.get_all(msisdn_header).iter();
        let msisdn = lines.next();
        if lines.next().is_some() {
            return Err(Refusal::RepeatedHeader(msisdn_header.as_str().to_owned()));
        }
        let forwarded_for = headers.get_all(&X_FORWARDED_FOR).iter().next_back();
        Ok(Self {
            origin,
            msisdn_header: msisdn.and_then(|v| v.to_str().ok()),
            forwarded_for: forwarded_for.and_then(|v| v.to_str().ok()),
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The client address used for identity: the peer, or the address a
    /// trusted gateway forwarded.
    pub client_addr: IpAddr,
    pub on_mno_network: bool,
    pub subscriber: Option<(SubscriberRef, IdentitySource)>,
    /// Enrichment headers came from a peer that is not a trusted gateway.
    pub spoof_attempt: bool,
}

/// Session bindings client address or prefix -> subscriber, fed by the
/// operator, each with an expiry and the source that made it. In memory
/// here (the server keeps a copy on disk, `homecmp::sessions::kept`):
/// the operator's source (admin API, RADIUS accounting) re-feeds it; the
/// MSISDN itself is never kept. A binding covers one address (a /32 or /128) or a whole prefix
/// (an IPv6 subscriber is handed a /64); the longest live match wins.
#[derive(Debug, Default)]
pub struct Sessions {
    bindings: DashMap<IpNet, Binding>,
    /// Prefix lengths that have (or had) bindings, one bit each per family:
    /// a lookup tries only those, longest first.
    v4_lengths: PrefixLengths,
    v6_lengths: PrefixLengths,
}

#[derive(Debug, Clone)]
struct Binding {
    subscriber: SubscriberRef,
    expires_ms: u64,
    source: BindingSource,
}

/// Who made a binding: the admin API, or an accounting session (only that
/// session's Stop or Interim touches it again).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BindingSource {
    /// `PUT /admin/v1/sessions/{ip}`.
    Admin,
    /// RADIUS accounting: the gateway (NAS) address the records come from
    /// and the session's `Acct-Session-Id` as sent (empty when it had none).
    Radius { nas: IpAddr, session_id: Arc<[u8]> },
}

/// A set of prefix lengths 0..=128 as bits; only ever grows.
#[derive(Debug, Default)]
struct PrefixLengths([AtomicU64; 3]);

impl PrefixLengths {
    fn insert(&self, len: u8) {
        let len = usize::from(len);
        self.0[len / 64].fetch_or(1 << (len % 64), Ordering::Relaxed);
    }

    /// The lengths in the set, longest first.
    /// Three loads, then only the lengths in use (one or two, usually).
    fn longest_first(&self) -> impl Iterator<Item = u8> {
        let words = self.0.each_ref().map(|w| w.load(Ordering::Relaxed));
        (0..3).rev().flat_map(move |i| {
            let mut bits = words[i];
            std::iter::from_fn(move || {
                let bit = bits.checked_ilog2()?;
                bits &= !(1 << bit);
                Some((i * 64 + bit as usize) as u8)
            })
        })
    }
}

/// What a lookup found: the binding's network, subscriber, expiry and
/// source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bound {
    pub network: IpNet,
    pub subscriber: SubscriberRef,
    pub expires_ms: u64,
    pub source: BindingSource,
}

/// `addr` as the network sees it: an IPv4-mapped IPv6 address is IPv4.
pub fn canonical_net(net: IpNet) -> IpNet {
    match net {
        IpNet::V6(v6) if v6.prefix_len() >= 96 => match v6.addr().to_ipv4_mapped() {
            Some(v4) => IpNet::new(IpAddr::V4(v4), v6.prefix_len() - 96).expect("at most 32"),
            None => net,
        },
        _ => net,
    }
    .trunc()
}

impl Sessions {
    /// Binds `network` (an address is a /32 or /128) to `subscriber`: the
    /// tests' shorthand. The server binds through `homecmp::sessions`
    /// (`Bindings::bind`), which checks the MNO pools and the cap.
    #[cfg(test)]
    pub fn bind(&self, network: IpNet, subscriber: SubscriberRef, expires_ms: u64) {
        self.bind_session(network, subscriber, expires_ms, BindingSource::Admin, None);
    }

    /// Binds `network` for `source` (an accounting session). With
    /// `unless_live_at: Some(now)` (an Interim), a binding of another
    /// source still live at `now` stays as it is: a late Interim does not
    /// take an address back. `None` (a Start) binds whatever was there.
    pub fn bind_session(
        &self,
        network: IpNet,
        subscriber: SubscriberRef,
        expires_ms: u64,
        source: BindingSource,
        unless_live_at: Option<u64>,
    ) {
        let network = canonical_net(network);
        match network {
            IpNet::V4(_) => self.v4_lengths.insert(network.prefix_len()),
            IpNet::V6(_) => self.v6_lengths.insert(network.prefix_len()),
        }
        let binding = Binding {
            subscriber,
            expires_ms,
            source,
        };
        match self.bindings.entry(network) {
            dashmap::Entry::Occupied(mut held)
                if unless_live_at.is_none_or(|now_ms| {
                    held.get().source == binding.source || held.get().expires_ms <= now_ms
                }) =>
            {
                held.insert(binding);
            }
            dashmap::Entry::Occupied(_) => {}
            dashmap::Entry::Vacant(free) => {
                free.insert(binding);
            }
        }
    }

    /// `true` if there was a binding for exactly `network`.
    pub fn unbind(&self, network: IpNet) -> bool {
        self.bindings.remove(&canonical_net(network)).is_some()
    }

    /// Removes the binding of exactly `network` if `source` made it;
    /// `true` if it did.
    pub fn unbind_session(&self, network: IpNet, source: &BindingSource) -> bool {
        self.bindings
            .remove_if(&canonical_net(network), |_, b| b.source == *source)
            .is_some()
    }

    /// Whether exactly `network` has a binding (live or not yet swept).
    pub fn is_bound(&self, network: IpNet) -> bool {
        self.bindings.contains_key(&canonical_net(network))
    }

    /// Drops every binding to `subscriber` (erasure); returns their networks.
    pub fn unbind_subscriber(&self, subscriber: &SubscriberRef) -> Vec<IpNet> {
        let mut gone = Vec::new();
        self.bindings.retain(|network, b| {
            let keep = b.subscriber != *subscriber;
            if !keep {
                gone.push(*network);
            }
            keep
        });
        gone
    }

    /// The binding of exactly `network`, live or not yet swept.
    pub fn get(&self, network: IpNet) -> Option<Bound> {
        let network = canonical_net(network);
        self.bindings.get(&network).map(|binding| Bound {
            network,
            subscriber: binding.subscriber,
            expires_ms: binding.expires_ms,
            source: binding.source.clone(),
        })
    }

    /// The subscriber of the longest live binding that covers `addr`: the
    /// request path's lookup (copies 32 bytes, nothing else).
    pub fn lookup(&self, addr: IpAddr, now_ms: u64) -> Option<SubscriberRef> {
        self.longest_live(addr, now_ms, |_, binding| binding.subscriber)
    }

    /// The longest live binding that covers `addr`, with its source.
    pub fn find(&self, addr: IpAddr, now_ms: u64) -> Option<Bound> {
        self.longest_live(addr, now_ms, |network, binding| Bound {
            network,
            subscriber: binding.subscriber,
            expires_ms: binding.expires_ms,
            source: binding.source.clone(),
        })
    }

    /// `seen` of the longest live binding that covers `addr`.
    fn longest_live<T>(
        &self,
        addr: IpAddr,
        now_ms: u64,
        seen: impl Fn(IpNet, &Binding) -> T,
    ) -> Option<T> {
        let addr = addr.to_canonical();
        let lengths = match addr {
            IpAddr::V4(_) => &self.v4_lengths,
            IpAddr::V6(_) => &self.v6_lengths,
        };
        lengths.longest_first().find_map(|len| {
            let network = IpNet::new(addr, len).ok()?.trunc();
            let binding = self.bindings.get(&network)?;
            (binding.expires_ms > now_ms).then(|| seen(network, &binding))
        })
    }

    /// Drops expired bindings; returns their networks.
    pub fn sweep(&self, now_ms: u64) -> Vec<IpNet> {
        let mut gone = Vec::new();
        self.bindings.retain(|network, b| {
            let keep = b.expires_ms > now_ms;
            if !keep {
                gone.push(*network);
            }
            keep
        });
        gone
    }

    pub fn len(&self) -> usize {
        self.bindings.len()
    }

    pub fn is_empty(&self) -> bool {
        self.bindings.is_empty()
    }
}

/// The address per-address limits should count a request under: a trusted
/// gateway's requests by the client address it forwards (its own address
/// is shared by every subscriber behind it), anyone else's by its own
/// validated address.
pub fn limit_address(mno: &MnoPolicy, view: &ClientView<'_>) -> IpAddr {
    match view.origin {
        Origin::Validated(peer) if mno.is_trusted_gateway(peer) => {
            forwarded_client(view.forwarded_for).unwrap_or(peer)
        }
        origin => origin.validated(),
    }
}

/// The rightmost entry of an `X-Forwarded-For` line: the address the
/// gateway itself saw (the ones before it are the client's own claims).
fn forwarded_client(line: Option<&str>) -> Option<IpAddr> {
    line?
        .rsplit(',')
        .next()?
        .trim()
        .parse::<IpAddr>()
        .ok()
        .map(|addr| addr.to_canonical())
}

/// Decides the client address, whether it is on the MNO network, and which
/// subscriber it is, if the network can tell.
pub fn identify(
    mno: &MnoPolicy,
    view: &ClientView<'_>,
    sessions: &Sessions,
    key: &SubscriberKey,
    now_ms: u64,
) -> Identity {
    let has_headers = view.msisdn_header.is_some() || view.forwarded_for.is_some();
    let peer = match view.origin {
        Origin::Validated(peer) => peer,
        // Off the MNO network whatever the address says, and no gateway.
        Origin::Unvalidated { current, .. } => {
            return Identity {
                client_addr: current,
                on_mno_network: false,
                subscriber: None,
                spoof_attempt: has_headers,
            };
        }
    };
    if !mno.is_trusted_gateway(peer) {
        return from_address(mno, peer, sessions, now_ms, has_headers);
    }
    let client_addr = forwarded_client(view.forwarded_for).unwrap_or(peer);
    let enriched = view
        .msisdn_header
        .and_then(|text| Msisdn::parse(text).ok())
        .map(|msisdn| key.subscriber_ref(&msisdn));
    match enriched {
        Some(subscriber) => Identity {
            client_addr,
            on_mno_network: true,
            subscriber: Some((subscriber, IdentitySource::GatewayHeader)),
            spoof_attempt: false,
        },
        None => from_address(mno, client_addr, sessions, now_ms, false),
    }
}

fn from_address(
    mno: &MnoPolicy,
    client_addr: IpAddr,
    sessions: &Sessions,
    now_ms: u64,
    spoof_attempt: bool,
) -> Identity {
    let on_mno_network = mno.is_mno_address(client_addr);
    let subscriber = if on_mno_network {
        sessions
            .lookup(client_addr, now_ms)
            .map(|s| (s, IdentitySource::SessionBinding))
    } else {
        None
    };
    Identity {
        client_addr,
        on_mno_network,
        subscriber,
        spoof_attempt,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mno() -> MnoPolicy {
        MnoPolicy {
            networks: vec!["127.1.0.0/16".parse().unwrap()],
            trusted_gateways: vec!["127.3.0.1/32".parse().unwrap()],
        }
    }

    fn key() -> SubscriberKey {
        SubscriberKey::new(&[9; 32])
    }

    fn view<'a>(peer: &str, msisdn: Option<&'a str>, xff: Option<&'a str>) -> ClientView<'a> {
        ClientView {
            origin: identity_address(Seen::Tcp {
                peer: peer.parse().unwrap(),
            }),
            msisdn_header: msisdn,
            forwarded_for: xff,
        }
    }

    fn sub(msisdn: &str) -> SubscriberRef {
        key().subscriber_ref(&Msisdn::parse(msisdn).unwrap())
    }

    #[test]
    fn session_binding_identifies_pool_addresses() {
        let sessions = Sessions::default();
        sessions.bind("127.1.0.5/32".parse().unwrap(), sub("+447700900001"), 100);
        let id = identify(
            &mno(),
            &view("127.1.0.5", None, None),
            &sessions,
            &key(),
            50,
        );
        assert!(id.on_mno_network);
        assert_eq!(
            id.subscriber,
            Some((sub("+447700900001"), IdentitySource::SessionBinding))
        );
        let expired = identify(
            &mno(),
            &view("127.1.0.5", None, None),
            &sessions,
            &key(),
            100,
        );
        assert_eq!(expired.subscriber, None);
        let wifi = identify(
            &mno(),
            &view("127.2.0.5", None, None),
            &sessions,
            &key(),
            50,
        );
        assert!(!wifi.on_mno_network);
        assert_eq!(sessions.sweep(100).len(), 1);
        assert!(sessions.is_empty());
    }

    #[test]
    fn prefix_bindings_and_mapped_addresses() {
        let sessions = Sessions::default();
        let one = sub("+447700900001");
        let two = sub("+447700900002");
        sessions.bind("2001:db8:1:2::/64".parse().unwrap(), one, 100);
        sessions.bind("2001:db8:1:2::9/128".parse().unwrap(), two, 100);
        sessions.bind("::ffff:127.1.0.7/128".parse().unwrap(), two, 100);
        let at = |addr: &str| sessions.lookup(addr.parse().unwrap(), 50);
        assert_eq!(at("2001:db8:1:2:ffff::1"), Some(one), "the /64 covers it");
        assert_eq!(at("2001:db8:1:2::9"), Some(two), "the longest match wins");
        assert_eq!(at("2001:db8:1:3::1"), None);
        assert_eq!(at("127.1.0.7"), Some(two), "a mapped binding is IPv4");
        assert_eq!(at("::ffff:127.1.0.7"), Some(two), "and so is a mapped peer");
        let found = sessions
            .find("2001:db8:1:2::5".parse().unwrap(), 50)
            .unwrap();
        assert_eq!(found.network, "2001:db8:1:2::/64".parse::<IpNet>().unwrap());
        assert!(sessions.unbind("2001:db8:1:2::/64".parse().unwrap()));
        assert_eq!(at("2001:db8:1:2:ffff::1"), None);
        assert_eq!(
            sessions.lookup("2001:db8:1:2::9".parse().unwrap(), 100),
            None
        );
    }

    #[test]
    fn a_binding_says_who_made_it_and_only_its_session_changes_it() {
        let sessions = Sessions::default();
        let net = |text: &str| text.parse::<IpNet>().unwrap();
        let radius = |nas: &str, id: &str| BindingSource::Radius {
            nas: nas.parse().unwrap(),
            session_id: Arc::from(id.as_bytes()),
        };
        sessions.bind(net("127.1.0.5/32"), sub("+447700900001"), 100);
        let at = |addr: &str| sessions.find(addr.parse().unwrap(), 50).unwrap();
        assert_eq!(at("127.1.0.5").source, BindingSource::Admin);

        let gateway = radius("10.0.0.1", "s-1");
        sessions.bind_session(
            net("127.1.0.6/32"),
            sub("+447700900002"),
            100,
            gateway.clone(),
            None,
        );
        assert_eq!(at("127.1.0.6").source, gateway);
        // Another session's Interim, or the same id from another gateway,
        // does not take it; its own Stop removes it.
        for other in [radius("10.0.0.1", "s-2"), radius("10.0.0.2", "s-1")] {
            sessions.bind_session(
                net("127.1.0.6/32"),
                sub("+447700900003"),
                100,
                other.clone(),
                Some(50),
            );
            assert_eq!(at("127.1.0.6").subscriber, sub("+447700900002"));
            assert!(!sessions.unbind_session(net("127.1.0.6/32"), &other));
        }
        assert!(
            !sessions.unbind_session(net("127.1.0.5/32"), &gateway),
            "not the admin's"
        );
        assert!(sessions.unbind_session(net("127.1.0.6/32"), &gateway));
        assert_eq!(sessions.find("127.1.0.6".parse().unwrap(), 50), None);
    }

    #[test]
    fn a_trusted_gateway_is_limited_per_forwarded_client() {
        let gateway = view("127.3.0.1", None, Some("10.0.0.1, 127.1.9.9"));
        assert_eq!(
            limit_address(&mno(), &gateway),
            "127.1.9.9".parse::<IpAddr>().unwrap()
        );
        let other = view("127.2.0.1", None, Some("127.1.9.9"));
        assert_eq!(
            limit_address(&mno(), &other),
            "127.2.0.1".parse::<IpAddr>().unwrap()
        );
        let mapped = view("::ffff:127.2.0.1", None, None);
        assert_eq!(
            limit_address(&mno(), &mapped),
            "127.2.0.1".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn trusted_gateway_headers_are_believed() {
        let sessions = Sessions::default();
        let id = identify(
            &mno(),
            &view(
                "127.3.0.1",
                Some("447700900002"),
                Some("10.9.9.9, 127.1.4.4"),
            ),
            &sessions,
            &key(),
            0,
        );
        assert_eq!(id.client_addr, "127.1.4.4".parse::<IpAddr>().unwrap());
        assert!(id.on_mno_network && !id.spoof_attempt);
        assert_eq!(
            id.subscriber,
            Some((sub("+447700900002"), IdentitySource::GatewayHeader))
        );
    }

    #[test]
    fn headers_from_anyone_else_are_spoofs_and_ignored() {
        let sessions = Sessions::default();
        for (msisdn, xff) in [(Some("+447700900003"), None), (None, Some("127.1.0.9"))] {
            let id = identify(
                &mno(),
                &view("127.2.0.7", msisdn, xff),
                &sessions,
                &key(),
                0,
            );
            assert!(id.spoof_attempt);
            assert!(!id.on_mno_network);
            assert_eq!(id.subscriber, None);
            assert_eq!(id.client_addr, "127.2.0.7".parse::<IpAddr>().unwrap());
        }
        // Even from inside the pool, a header does not name the subscriber.
        let id = identify(
            &mno(),
            &view("127.1.0.7", Some("+447700900003"), None),
            &sessions,
            &key(),
            0,
        );
        assert!(id.spoof_attempt && id.on_mno_network);
        assert_eq!(id.subscriber, None);
    }

    fn any_ip() -> impl proptest::strategy::Strategy<Value = IpAddr> {
        use proptest::prelude::*;
        prop_oneof![
            // Mostly inside the test pools and gateways, to hit them.
            (1u8..4, any::<u8>(), any::<u8>()).prop_map(|(b, c, d)| IpAddr::from([127, b, c, d])),
            any::<[u8; 4]>().prop_map(IpAddr::from),
            any::<[u8; 16]>().prop_map(IpAddr::from),
            // IPv4-mapped IPv6, as a dual-stack socket reports IPv4.
            (1u8..4, any::<u8>()).prop_map(|(b, d)| {
                IpAddr::V6(std::net::Ipv4Addr::new(127, b, 0, d).to_ipv6_mapped())
            }),
        ]
    }

    proptest::proptest! {
        /// A QUIC request from anywhere but the address its connection's
        /// handshake completed from is off the MNO network, whatever is
        /// bound to that address and whatever headers it carries, and is
        /// limited under the handshake's address.
        #[test]
        fn a_moved_quic_connection_is_never_identified(
            handshake in any_ip(),
            current in any_ip(),
            msisdn in proptest::option::of("\\+?4477009000[0-9]{2}"),
            xff in proptest::option::of("127\\.1\\.0\\.[0-9]{1,2}"),
        ) {
            let sessions = Sessions::default();
            for addr in [handshake, current] {
                sessions.bind(IpNet::from(addr.to_canonical()), sub("+447700900001"), 100);
            }
            let origin = identity_address(Seen::Quic { handshake, current });
            let view = ClientView {
                origin,
                msisdn_header: msisdn.as_deref(),
                forwarded_for: xff.as_deref(),
            };
            let id = identify(&mno(), &view, &sessions, &key(), 50);
            if handshake.to_canonical() != current.to_canonical() {
                proptest::prop_assert_eq!(origin, Origin::Unvalidated {
                    validated: handshake.to_canonical(),
                    current: current.to_canonical(),
                });
                proptest::prop_assert!(!id.on_mno_network);
                proptest::prop_assert_eq!(id.subscriber, None);
                proptest::prop_assert_eq!(limit_address(&mno(), &view), handshake.to_canonical());
            } else {
                // Not moved: as a TCP peer at that address is.
                let tcp = ClientView { origin: identity_address(Seen::Tcp { peer: current }), ..view };
                proptest::prop_assert_eq!(origin, Origin::Validated(current.to_canonical()));
                proptest::prop_assert_eq!(id, identify(&mno(), &tcp, &sessions, &key(), 50));
            }
        }
    }
}
