//! A code's resolution rules alone ([`homecmp::core::targeting::choose`]):
//! a phone browser's headers read and ten rules matched, none of which
//! holds (every rule looked at), against one rule on the network only (no
//! header read). `cargo bench --bench targeting`.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use homecmp::core::targeting::{Compiled, Network, Platform, TargetRule, Traits, choose};

fn rule(languages: &[&str], platforms: Vec<Platform>, network: Option<Network>) -> TargetRule {
    TargetRule {
        languages: languages.iter().map(|l| l.to_string()).collect(),
        platforms,
        network,
        from_ms: None,
        until_ms: None,
        target: "https://example.org/rule".into(),
    }
}

fn bench(c: &mut Criterion) {
    let languages = ["fr", "es", "it", "pt-BR", "nl", "sv", "pl", "ja", "zh-Hant"];
    let mut ten: Vec<_> = languages.iter().map(|l| rule(&[l], vec![], None)).collect();
    ten.push(rule(&[], vec![Platform::Ios], None));
    let nine = Compiled::new(ten[..9].to_vec());
    let platform = Compiled::new(ten[9..].to_vec());
    let ten = Compiled::new(ten);
    let one = Compiled::new(vec![rule(&[], vec![], Some(Network::OnNet))]);
    let mut headers = http::HeaderMap::new();
    headers.insert(
        "accept-language",
        "de-DE,de;q=0.9,en;q=0.8".parse().unwrap(),
    );
    headers.insert(
        "user-agent",
        "Mozilla/5.0 (Linux; Android 15; Pixel 9) AppleWebKit/537.36 Chrome/131.0 Mobile"
            .parse()
            .unwrap(),
    );
    let traits = Traits {
        headers: &headers,
        on_net: false,
    };
    let mut group = c.benchmark_group("targeting");
    group.bench_function("ten_rules_none_holds", |b| {
        b.iter(|| choose(black_box(&ten), black_box(&traits), || 0))
    });
    group.bench_function("nine_language_rules", |b| {
        b.iter(|| choose(black_box(&nine), black_box(&traits), || 0))
    });
    group.bench_function("one_platform_rule", |b| {
        b.iter(|| choose(black_box(&platform), black_box(&traits), || 0))
    });
    group.bench_function("one_network_rule", |b| {
        b.iter(|| choose(black_box(&one), black_box(&traits), || 0))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
