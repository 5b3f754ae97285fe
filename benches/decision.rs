//! The full decision path of one resolution request, without the network:
//! query parsing, index lookup, identity, the core's decision, the code
//! lookup and the JSON answer (`net::resolve::handle`), for an associated
//! request and for each class of spoofed or unauthenticated request.
//!
//! `cargo bench --bench decision`
//!
//! `associated_browser_plain` and `associated_browser_10_rules` are the
//! same associated request with a phone browser's headers, to a plain code
//! and to a code with ten rules none of which holds (every rule is looked
//! at, the languages and the platform read once): what resolution rules
//! cost (issue 30's goal: within 10%).
//!
//! The per-address, per-clientid and unauthenticated request rates are off
//! here: one client address sends every request, and would be answered 429
//! (or made to wait) after its burst.

#[path = "../tests/support/config.rs"]
mod config;

use criterion::{Criterion, criterion_group, criterion_main};
use futures_util::FutureExt;
use http::{HeaderMap, HeaderValue, Method, Uri};

use config::config_text;
use homecmp::config::Config;
use homecmp::metrics::Protocol;
use homecmp::net::resolve::{self, ConnInfo};
use homecmp::store::{IdentitySource, NewAssociation};
use homecmp::wire::{ClientId, IndirectCode, Msisdn};

const CODE: &str = "2001000001promo";
/// A code with [`ten_rules`].
const RULES_CODE: &str = "2001000001rules";
/// A code with one rule on the network only (no header read).
const ONE_RULE_CODE: &str = "2001000001onerl";

/// A phone browser's headers.
const BROWSER: [(&str, &str); 2] = [
    ("accept-language", "de-DE,de;q=0.9,en;q=0.8"),
    (
        "user-agent",
        "Mozilla/5.0 (Linux; Android 15; Pixel 9) AppleWebKit/537.36 Chrome/131.0 Mobile",
    ),
];

/// Ten rules, none of which holds for [`BROWSER`] off-net: nine on
/// languages it does not accept, one on a platform it is not.
use homecmp::core::targeting::{Platform, TargetRule};

fn ten_rules() -> Vec<TargetRule> {
    let rule = |languages: &[&str], platforms: Vec<Platform>, i: usize| TargetRule {
        languages: languages.iter().map(|l| l.to_string()).collect(),
        platforms,
        network: None,
        from_ms: None,
        until_ms: None,
        target: format!("https://example.org/rule/{i}"),
    };
    let languages = ["fr", "es", "it", "pt-BR", "nl", "sv", "pl", "ja", "zh-Hant"];
    let mut rules: Vec<_> = languages
        .iter()
        .enumerate()
        .map(|(i, l)| rule(&[l], vec![], i))
        .collect();
    rules.push(rule(&[], vec![Platform::Ios], 9));
    rules
}

struct Case {
    name: &'static str,
    peer: &'static str,
    query: String,
    headers: Vec<(&'static str, &'static str)>,
    want: u16,
}

fn cases() -> Vec<Case> {
    let q = |rest: &str| format!("/mc/v1/resolve?code={CODE}{rest}");
    vec![
        Case {
            name: "associated",
            peer: "127.2.0.1",
            query: q("&clientid=bench-app"),
            headers: vec![],
            want: 200,
        },
        Case {
            name: "no_clientid",
            peer: "127.2.0.1",
            query: q(""),
            headers: vec![],
            want: 401,
        },
        Case {
            name: "unknown_clientid",
            peer: "127.2.0.1",
            query: q("&clientid=never-seen"),
            headers: vec![],
            want: 403,
        },
        Case {
            name: "malformed_code",
            peer: "127.2.0.1",
            query: "/mc/v1/resolve?code=zz&clientid=bench-app".into(),
            headers: vec![],
            want: 400,
        },
        Case {
            name: "malformed_clientid",
            peer: "127.2.0.1",
            query: q("&clientid=bad%20id"),
            headers: vec![],
            want: 400,
        },
        Case {
            name: "spoofed_msisdn",
            peer: "127.2.0.1",
            query: q("&clientid=never-seen"),
            headers: vec![("x-msisdn", "+447700900001")],
            want: 403,
        },
        Case {
            name: "spoofed_forwarded",
            peer: "127.2.0.1",
            query: q("&clientid=never-seen"),
            headers: vec![("x-forwarded-for", "127.1.0.1")],
            want: 403,
        },
        Case {
            name: "associated_browser_plain",
            peer: "127.2.0.1",
            query: q("&clientid=bench-app"),
            headers: BROWSER.to_vec(),
            want: 200,
        },
        Case {
            name: "associated_browser_1_rule",
            peer: "127.2.0.1",
            query: format!("/mc/v1/resolve?code={ONE_RULE_CODE}&clientid=bench-app"),
            headers: BROWSER.to_vec(),
            want: 200,
        },
        Case {
            name: "associated_browser_10_rules",
            peer: "127.2.0.1",
            query: format!("/mc/v1/resolve?code={RULES_CODE}&clientid=bench-app"),
            headers: BROWSER.to_vec(),
            want: 200,
        },
        Case {
            name: "mismatch",
            peer: "127.1.0.2",
            query: q("&clientid=bench-app"),
            headers: vec![],
            want: 403,
        },
    ]
}

fn bench(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let text = config_text(
        dir.path(),
        "http3 = false",
        "[limits]\nrequests_per_address_per_sec = 0\nrequests_per_clientid_per_sec = 0\nunauthenticated_per_sec = 0\n",
    );
    let config = Config::parse(&text, Vec::new()).unwrap();
    let running = runtime.block_on(homecmp::server::start(config)).unwrap();
    let app = running.app.clone();
    runtime.block_on(async {
        let code = IndirectCode::parse(CODE).unwrap();
        app.store
            .register_code(&code, "https://example.org/promo", 0)
            .await
            .unwrap();
        let rules_code = IndirectCode::parse(RULES_CODE).unwrap();
        app.store
            .register_code_with(&rules_code, "https://example.org/promo", ten_rules(), 0)
            .await
            .unwrap();
        let on_net = homecmp::core::targeting::TargetRule {
            network: Some(homecmp::core::targeting::Network::OnNet),
            ..ten_rules().remove(0)
        };
        let one_rule_code = IndirectCode::parse(ONE_RULE_CODE).unwrap();
        app.store
            .register_code_with(
                &one_rule_code,
                "https://example.org/promo",
                vec![TargetRule {
                    languages: vec![],
                    ..on_net
                }],
                0,
            )
            .await
            .unwrap();
        let owner = app
            .bindings
            .key()
            .subscriber_ref(&Msisdn::parse("+447700900001").unwrap());
        app.bindings
            .bind(homecmp::sessions::Bind {
                networks: &["127.1.0.2/32".parse().unwrap()],
                msisdn: &Msisdn::parse("+447700900002").unwrap(),
                expires_ms: u64::MAX,
                source: homecmp::core::BindingSource::Admin,
                unless_live_at: None,
            })
            .unwrap();
        let new = NewAssociation {
            clientid: ClientId::parse("bench-app").unwrap(),
            subscriber: owner,
            source: IdentitySource::SessionBinding,
            client_addr: "127.1.0.1".parse().unwrap(),
        };
        app.store.associate(new, false, 8, 0).await.unwrap();
    });

    let mut group = c.benchmark_group("decision");
    for case in cases() {
        let uri: Uri = case.query.parse().unwrap();
        let mut headers = HeaderMap::new();
        for (name, value) in &case.headers {
            headers.insert(*name, HeaderValue::from_static(value));
        }
        let conn = ConnInfo {
            origin: homecmp::core::identity_address(homecmp::core::Seen::Tcp {
                peer: case.peer.parse().unwrap(),
            }),
            protocol: Protocol::Http2,
        };
        // These paths never wait (no association is created): poll once.
        let answer = |app: &homecmp::app::App| {
            resolve::handle(app, conn, &Method::GET, &uri, &headers)
                .now_or_never()
                .expect("decided without waiting")
        };
        let first = answer(&app);
        assert_eq!(first.status().as_u16(), case.want, "{}", case.name);
        if case.name.starts_with("associated_browser") {
            // No rule holds: the code's own target, as the plain code's.
            let body = String::from_utf8_lossy(first.body()).into_owned();
            assert!(body.contains("https://example.org/promo"), "{body}");
        }
        group.bench_function(case.name, |b| b.iter(|| answer(&app)));
    }
    group.finish();
    runtime.block_on(running.shutdown());
}

criterion_group!(benches, bench);
criterion_main!(benches);
