//! The resolution rule alone ([`homecmp::core::admit`]), at 10M
//! associations: what the core spends on a spoofed request (a clientid with
//! no association, from off the MNO network: refused) and on an associated
//! one (resolved), without I/O, limiters or sockets. The facts come from
//! the real index ([`homecmp::store::Index`], built with `Index::apply`);
//! every budget answers "allowed" and the tarpit "no wait", so what is
//! measured is the rule: parse, one index lookup, identity, the decision.
//!
//! Goals (issue 25): a spoofed request refused in at most 50 ns, an
//! associated one admitted in at most 100 ns.
//!
//! `cargo bench --bench rule` (about a minute, ~1.5 GB RAM for the index).
//! `HOMECMP_RULE_ASSOCIATIONS=1000000` for a smaller index. Under
//! `cargo test --benches` the index has 10k associations.

mod common;

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use common::mix;
use criterion::{Criterion, criterion_group, criterion_main};
use homecmp::core::{
    self, Admitted, AuthMode, ClientView, Facts, Identity, MismatchPolicy, MnoPolicy, Policy,
    Refusal, Request, Rules, Seen, Sessions, Verdict, identity_address,
};
use homecmp::store::{Association, Event, IdentitySource, Index, Record};
use homecmp::wire::{ClientIdRef, RoutingPrefix, SubscriberKey, SubscriberRef};

/// The facts, from the index; every budget allowed, no tarpit wait.
struct IndexFacts<'a> {
    index: &'a Index,
    sessions: &'a Sessions,
    mno: &'a MnoPolicy,
    key: &'a SubscriberKey,
}

impl Facts for IndexFacts<'_> {
    fn association(&mut self, clientid: &ClientIdRef<'_>) -> Option<Association> {
        self.index.association(clientid.as_str())
    }
    fn address_budget(&mut self, _: IpAddr) -> Verdict {
        Verdict::Allowed
    }
    fn clientid_budget(&mut self, _: &Association) -> Verdict {
        Verdict::Allowed
    }
    fn creation_budget(&mut self, _: &SubscriberRef) -> Verdict {
        Verdict::Allowed
    }
    fn shedding(&mut self) -> bool {
        false
    }
    fn identity(&mut self, view: &ClientView<'_>) -> Identity {
        core::identify(self.mno, view, self.sessions, self.key, 0)
    }
    fn tarpit(&mut self, _: bool, _: IpAddr) -> Result<Duration, Refusal> {
        Ok(Duration::ZERO)
    }
}

/// True under `cargo bench`; false under `cargo test --benches`.
fn full_run() -> bool {
    let args: Vec<String> = std::env::args().collect();
    args.iter().any(|a| a == "--bench") && !args.iter().any(|a| a == "--test" || a == "--list")
}

/// The `i`-th clientid of a set: a UUID string, as apps send.
fn clientid(set: u64, i: u64) -> String {
    let bytes = ((u128::from(mix(i ^ (set << 56))) << 64) | u128::from(i)).to_be_bytes();
    uuid::Builder::from_random_bytes(bytes)
        .into_uuid()
        .hyphenated()
        .to_string()
}

fn build_index(n: u64) -> Index {
    let index = Index::new();
    for i in 0..n {
        let record = Record {
            at_ms: 1_700_000_000_000,
            actor: None,
            event: Event::AssociationCreated {
                clientid: clientid(1, i),
                subscriber: SubscriberRef(mix(i / 2).to_le_bytes().repeat(4).try_into().unwrap()),
                source: IdentitySource::SessionBinding,
                client_addr: IpAddr::V4(Ipv4Addr::new(127, 1, 0, 1)),
            },
        };
        index.apply(i + 1, &record).expect("distinct clientids");
    }
    index
}

fn rules() -> Rules {
    Rules {
        policy: Policy {
            mode: AuthMode::Enforce,
            on_mismatch: MismatchPolicy::Reject,
            routing_prefixes: vec![RoutingPrefix::parse("2001000001").unwrap()],
            federated_prefixes: vec![],
            peer_registry: false,
        },
        mno: MnoPolicy {
            networks: vec!["127.1.0.0/16".parse().unwrap()],
            trusted_gateways: vec![],
        },
        max_uri_bytes: 2048,
        ipv6_prefix_len: 64,
        msisdn_header: http::HeaderName::from_static("x-msisdn"),
    }
}

fn bench(c: &mut Criterion) {
    let n = match full_run() {
        true => std::env::var("HOMECMP_RULE_ASSOCIATIONS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(10_000_000),
        false => 10_000,
    };
    let index = build_index(n);
    let (rules, sessions, key) = (rules(), Sessions::default(), SubscriberKey::new(&[7; 32]));
    let headers = http::HeaderMap::new();
    let wifi = identity_address(Seen::Tcp {
        peer: IpAddr::V4(Ipv4Addr::new(127, 2, 0, 1)),
    });
    // Queries of many different clientids, so lookups miss the CPU caches
    // as they do at 10M.
    let queries = |set: u64| -> Vec<String> {
        (0..4096u64)
            .map(|i| {
                let id = clientid(set, mix(i) % n);
                format!("code=2001000001promo&clientid={id}")
            })
            .collect()
    };
    let (spoofed, associated) = (queries(2), queries(1));
    let mut group = c.benchmark_group(format!("rule_{}M", n as f64 / 1e6));
    for (name, queries, admitted) in [
        ("spoofed_refused", &spoofed, false),
        ("associated_admitted", &associated, true),
    ] {
        let mut at = 0;
        group.bench_function(name, |b| {
            b.iter(|| {
                let mut facts = IndexFacts {
                    index: &index,
                    sessions: &sessions,
                    mno: &rules.mno,
                    key: &key,
                };
                let query = &queries[at % queries.len()];
                at += 1;
                let request = Request {
                    origin: wifi,
                    headers: &headers,
                    query,
                };
                let mut parsed = None;
                let outcome = core::admit(&rules, request, &mut parsed, &mut facts);
                let passed = matches!(
                    outcome.verdict,
                    Ok(core::Passed {
                        then: Admitted::Resolve(_),
                        ..
                    })
                );
                assert_eq!(passed, admitted);
                black_box(outcome.wait);
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
