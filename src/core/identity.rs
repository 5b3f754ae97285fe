//! Who the network says the client is (DESIGN §3).
//!
//! HTTPS end to end means nobody on the path can add headers to the MCC's
//! request, so identity comes from what the CMP itself sees: the transport
//! peer address, the operator's session bindings (client IP -> subscriber),
//! and headers only from peers listed as trusted gateways. Enrichment headers
//! from anyone else are a spoof attempt: ignored, and reported for counting.

use std::net::IpAddr;

use dashmap::DashMap;
use ipnet::IpNet;

use crate::store::IdentitySource;
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

    pub fn is_trusted_gateway(&self, addr: IpAddr) -> bool {
        self.trusted_gateways.iter().any(|net| net.contains(&addr))
    }
}

/// What the transport saw of the client: its peer address and the raw values
/// of the two enrichment headers, if present.
#[derive(Debug, Clone, Copy)]
pub struct ClientView<'a> {
    pub peer: IpAddr,
    pub msisdn_header: Option<&'a str>,
    pub forwarded_for: Option<&'a str>,
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

/// Session bindings client IP -> subscriber, fed by the operator, each with
/// an expiry. Memory only: the operator's source (admin API, later RADIUS
/// accounting) re-feeds it; the MSISDN itself is never kept.
#[derive(Debug, Default)]
pub struct Sessions {
    bindings: DashMap<IpAddr, Binding>,
}

#[derive(Debug, Clone, Copy)]
struct Binding {
    subscriber: SubscriberRef,
    expires_ms: u64,
}

impl Sessions {
    pub fn bind(&self, addr: IpAddr, subscriber: SubscriberRef, expires_ms: u64) {
        self.bindings.insert(
            addr,
            Binding {
                subscriber,
                expires_ms,
            },
        );
    }

    /// `true` if there was a binding.
    pub fn unbind(&self, addr: IpAddr) -> bool {
        self.bindings.remove(&addr).is_some()
    }

    pub fn lookup(&self, addr: IpAddr, now_ms: u64) -> Option<SubscriberRef> {
        let binding = *self.bindings.get(&addr)?;
        (binding.expires_ms > now_ms).then_some(binding.subscriber)
    }

    /// Drops expired bindings; returns how many are left.
    pub fn sweep(&self, now_ms: u64) -> usize {
        self.bindings.retain(|_, b| b.expires_ms > now_ms);
        self.bindings.len()
    }

    pub fn len(&self) -> usize {
        self.bindings.len()
    }

    pub fn is_empty(&self) -> bool {
        self.bindings.is_empty()
    }
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
    if !mno.is_trusted_gateway(view.peer) {
        return from_address(mno, view.peer, sessions, now_ms, has_headers);
    }
    // The gateway appends the address it saw: the rightmost entry is its own.
    let client_addr = view
        .forwarded_for
        .and_then(|list| list.rsplit(',').next())
        .and_then(|last| last.trim().parse().ok())
        .unwrap_or(view.peer);
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
            peer: peer.parse().unwrap(),
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
        sessions.bind("127.1.0.5".parse().unwrap(), sub("+447700900001"), 100);
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
        assert_eq!(sessions.sweep(100), 0);
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
}
