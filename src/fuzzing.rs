//! Fuzz harnesses: one function per parser that faces the network or the
//! disk, taking arbitrary bytes. The cargo-fuzz targets in `fuzz/` call
//! them, and `tests/fuzz_corpora.rs` replays the committed corpora through
//! them as ordinary tests. A harness panics only when a parser breaks a
//! promise: a panic of its own, or a value that does not survive a round
//! trip through its own text or bytes.

use std::net::{IpAddr, Ipv4Addr};

use crate::core::{
    ClientView, MnoPolicy, Seen, Sessions, identify, identity_address, limit_address,
};
use crate::store::event::{decode_key, decode_value, encode_key, encode_value};
use crate::wire::{ClientId, IndirectCode, Msisdn, Query, SubscriberKey};

/// A harness: arbitrary bytes in, a panic only for a broken promise.
pub type Harness = fn(&[u8]);

/// Every harness, by the name of its fuzz target and corpus directory.
pub const TARGETS: &[(&str, Harness)] = &[
    ("query", query),
    ("indirect_code", indirect_code),
    ("clientid", clientid),
    ("msisdn", msisdn),
    ("event", event),
    ("client_hello", client_hello),
    ("enrichment", enrichment),
    ("radius", radius),
    ("snapshot", snapshot),
    ("code_row", code_row),
];

fn text(data: &[u8]) -> Option<&str> {
    std::str::from_utf8(data).ok()
}

/// The resolve query string; a parsed query re-encodes to one that parses
/// to the same values.
pub fn query(data: &[u8]) {
    let Some(text) = text(data) else { return };
    let Ok(parsed) = Query::parse(text, 4096) else {
        return;
    };
    let mut again = form_urlencoded::Serializer::new(String::new());
    again.append_pair("code", &parsed.code);
    if let Some(id) = &parsed.clientid {
        again.append_pair("clientid", id);
    }
    let again = again.finish();
    assert_eq!(Query::parse(&again, usize::MAX), Ok(parsed));
}

/// An Indirect Code: what parses keeps its text, and its parts make it up.
pub fn indirect_code(data: &[u8]) {
    let Some(text) = text(data) else { return };
    let Ok(code) = IndirectCode::parse(text) else {
        return;
    };
    assert!(IndirectCode::parse(code.as_str()) == Ok(code.clone()));
    assert_eq!(
        format!("{}{}", code.prefix(), code.value()).to_ascii_lowercase(),
        code.as_str().to_ascii_lowercase()
    );
}

/// A clientid: what parses keeps its text.
pub fn clientid(data: &[u8]) {
    let Some(text) = text(data) else { return };
    if let Ok(id) = ClientId::parse(text) {
        assert_eq!(id.as_str(), text);
        assert!(ClientId::parse(id.as_str()) == Ok(id));
    }
}

/// An MSISDN in any accepted format: its E.164 form parses to itself.
pub fn msisdn(data: &[u8]) {
    let Some(text) = text(data) else { return };
    if let Ok(msisdn) = Msisdn::parse(text) {
        assert!(msisdn.e164().starts_with('+'));
        assert!(Msisdn::parse(msisdn.e164()) == Ok(msisdn));
    }
}

/// A stored event record (and key): what decodes encodes back to bytes
/// that decode to the same record.
pub fn event(data: &[u8]) {
    if let Ok(seq) = decode_key(data) {
        assert_eq!(encode_key(seq).as_slice(), data);
    }
    if let Ok(record) = decode_value(data) {
        let value = encode_value(&record).expect("what decodes, encodes");
        assert_eq!(decode_value(&value), Ok(record));
    }
}

/// The peeked first TLS record: a ticket found is a part of the record.
pub fn client_hello(data: &[u8]) {
    if let Some(ticket) = crate::tls::offered_ticket(data) {
        let range = data.as_ptr_range();
        assert!(range.contains(&ticket.as_ptr()) || ticket.is_empty());
        assert!(ticket.len() <= data.len());
    }
}

/// Enrichment headers as a gateway (or a forger) sends them: the first
/// byte picks the peer (a trusted gateway, a pool address, WiFi; from its
/// top bit on, a QUIC connection that moved there from WiFi), the rest is
/// `name: value` lines. Identity never panics, never believes a header
/// from anyone but the gateway, and never identifies a moved connection.
pub fn enrichment(data: &[u8]) {
    let Some((&pick, lines)) = data.split_first() else {
        return;
    };
    let peer = IpAddr::V4(match pick % 3 {
        0 => Ipv4Addr::new(127, 3, 0, 1),
        1 => Ipv4Addr::new(127, 1, 0, 1),
        _ => Ipv4Addr::new(127, 2, 0, 1),
    });
    let mut headers = http::HeaderMap::new();
    for line in lines.split(|&b| b == b'\n') {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (name, value) = (&line[..colon], line[colon + 1..].trim_ascii());
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(name),
            http::HeaderValue::from_bytes(value),
        ) {
            headers.append(name, value);
        }
    }
    let mno = MnoPolicy {
        networks: vec!["127.1.0.0/16".parse().expect("a CIDR")],
        trusted_gateways: vec!["127.3.0.1/32".parse().expect("a CIDR")],
    };
    let msisdn_header = http::HeaderName::from_static("x-msisdn");
    let moved = pick >= 128;
    let seen = match moved {
        true => Seen::Quic {
            handshake: IpAddr::V4(Ipv4Addr::new(127, 2, 0, 9)),
            current: peer,
        },
        false => Seen::Tcp { peer },
    };
    let Ok(view) = ClientView::from_headers(identity_address(seen), &headers, &msisdn_header)
    else {
        assert!(headers.get_all(&msisdn_header).iter().count() > 1);
        return;
    };
    let limited = limit_address(&mno, &view);
    let identity = identify(
        &mno,
        &view,
        &Sessions::default(),
        &SubscriberKey::new(&[7; 32]),
        0,
    );
    if moved {
        assert_eq!(limited, IpAddr::V4(Ipv4Addr::new(127, 2, 0, 9)));
        assert!(!identity.on_mno_network && identity.subscriber.is_none());
    } else if !mno.is_trusted_gateway(peer) {
        assert_eq!(limited, peer);
        assert_eq!(identity.client_addr, peer);
        assert!(identity.subscriber.is_none());
    }
}

/// A RADIUS datagram from a known client: read, checked against a secret,
/// its attributes read every way the server reads them; the answer to any
/// request that reads is one its sender accepts.
pub fn radius(data: &[u8]) {
    use crate::radius::packet::{Header, MsisdnAttribute, is_response_to};
    const SECRET: &[u8] = b"fuzzing-secret";
    let Ok(header) = Header::read(data) else {
        return;
    };
    let _ = header.verify(SECRET);
    if let Ok(request) = header.attributes() {
        let _ = (request.status(), request.session_id(), request.networks());
        for from in [
            MsisdnAttribute::CallingStationId,
            MsisdnAttribute::UserName,
            MsisdnAttribute::Vendor {
                vendor: 10415,
                kind: 7,
            },
        ] {
            let _ = request.msisdn(from);
        }
    }
    let answer = header.response(SECRET);
    assert!(is_response_to(&answer, header.packet, SECRET));
}

/// The body of an index snapshot (after its magic and log hash): read
/// back or refused, never a panic, and never more memory than a few
/// chunks past what the input holds.
pub fn snapshot(data: &[u8]) {
    let _ = crate::store::Index::undump(&mut &data[..]);
}

/// A row of a bulk code import, NDJSON and CSV: refused with a message or
/// read into a code this CMP owns and a target that the row gives back.
pub fn code_row(data: &[u8]) {
    use crate::codes::{Format, parse_row};
    let Some(line) = text(data) else { return };
    let policy = crate::core::Policy {
        mode: crate::core::AuthMode::Enforce,
        on_mismatch: crate::core::MismatchPolicy::Reject,
        routing_prefixes: vec![crate::wire::RoutingPrefix::parse("2001000001").expect("valid")],
        federated_prefixes: vec![],
        peer_registry: false,
    };
    for format in [Format::Ndjson, Format::Csv] {
        if let Ok((code, target, rules)) = parse_row(&policy, format, line) {
            assert!(policy.owns(&code), "{line:?}");
            assert!(crate::wire::valid_target(&target), "{line:?}");
            assert!(
                crate::core::targeting::check_rules(&rules).is_ok(),
                "{line:?}"
            );
        }
    }
}
