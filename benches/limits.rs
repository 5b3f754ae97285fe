//! What each layer of `[limits]` costs per check, for the README's cost
//! column: the keyed limiters (per address, per clientid), the per-address
//! connection slots, the global paces (tarpit, handshakes) and the overload
//! signal. Compare with a whole resolution (`cargo bench --bench decision`).
//!
//! `cargo bench --bench limits`

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};

use homecmp::config::Config;
use homecmp::limits::{KeyedRate, Lag, Pace, PenaltyBox, PerAddress, Verdict, source_key};
use homecmp::net::conn::Conduct;

/// The i-th address of 127.0.0.0/8: distinct for i < 2^24.
fn address(i: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(0x7f00_0000 | (i & 0x00ff_ffff)))
}

fn keyed(c: &mut Criterion) {
    let mut group = c.benchmark_group("keyed_rate");
    // 10,000 active addresses, each checked in turn, well under its rate.
    let rate = KeyedRate::per_second(1_000_000, 1_000_000);
    let addresses: Vec<IpAddr> = (0..10_000).map(address).collect();
    for a in &addresses {
        rate.check(a);
    }
    let mut i = 0;
    group.bench_function("known_address_10k_keys", |b| {
        b.iter(|| {
            i = (i + 1) % addresses.len();
            black_box(rate.check(&addresses[i]))
        })
    });
    // A flood from ever new addresses: every check inserts a key.
    let fresh = KeyedRate::per_second(100, 1_000_000);
    let mut n = 0u32;
    group.bench_function("new_address", |b| {
        b.iter(|| {
            n = n.wrapping_add(1);
            black_box(fresh.check(&address(n)))
        })
    });
    // The table full of active keys: every check lets the key through
    // (Overflow) after counting the table again.
    let full = KeyedRate::new(1, 1_000_000, 10_000);
    for a in &addresses {
        full.check(a);
    }
    full.retain_recent();
    assert_eq!(full.check(&address(20_000)), Verdict::Overflow);
    group.bench_function("table_full_overflow", |b| {
        b.iter(|| {
            n = n.wrapping_add(1);
            black_box(full.check(&address(20_000 + n % 1000)))
        })
    });
    group.finish();
}

fn slots_and_paces(c: &mut Criterion) {
    let per_address = Arc::new(PerAddress::new(256));
    let a = address(7);
    c.bench_function("per_address_slot_open_close", |b| {
        b.iter(|| drop(black_box(per_address.try_open(a))))
    });
    // A pace far faster than the bench: every turn is free at once.
    let pace = Pace::per_second(1_000_000_000).unwrap();
    c.bench_function("pace_reserve_turn", |b| {
        b.iter(|| black_box(pace.reserve(Duration::from_secs(2))))
    });
    // A pace whose queue is full: every caller is refused at once.
    let queued = Pace::per_second(1).unwrap();
    while queued.reserve(Duration::from_secs(2)).is_some() {}
    c.bench_function("pace_refuse_beyond_max_wait", |b| {
        b.iter(|| black_box(queued.reserve(Duration::from_secs(2))))
    });
    let lag = Lag::new(Duration::from_millis(5)).unwrap();
    c.bench_function("overload_check", |b| b.iter(|| black_box(lag.overloaded())));
}

/// The checks every connection or request pays since the defaults got the
/// conduct rule: the penalty box at accept (empty, and holding 10,000
/// sources), the per-request conduct record and delay, the source key.
fn conduct_and_penalty(c: &mut Criterion) {
    let empty = PenaltyBox::new(Duration::from_secs(10), 1_000_000);
    let a = address(7);
    c.bench_function("penalty_check_empty", |b| {
        b.iter(|| black_box(empty.holds(a)))
    });
    let holding = PenaltyBox::new(Duration::from_secs(3600), 1_000_000);
    for i in 0..10_000 {
        holding.put(address(i));
    }
    let mut i = 0;
    c.bench_function("penalty_check_10k_held", |b| {
        b.iter(|| {
            i = (i + 1) % 20_000;
            black_box(holding.holds(address(i)))
        })
    });
    let limits = Config::parse("", Vec::new()).expect("defaults").limits;
    let conduct = Conduct::new();
    c.bench_function("conduct_delay_and_record_ok", |b| {
        b.iter(|| {
            black_box(conduct.delay(|| &limits));
            black_box(conduct.record(http::StatusCode::OK, || &limits))
        })
    });
    let v6: IpAddr = "2001:db8:1:2:aaaa:bbbb:cccc:dddd".parse().unwrap();
    c.bench_function("source_key_ipv6", |b| {
        b.iter(|| black_box(source_key(black_box(v6), 64)))
    });
}

criterion_group!(benches, keyed, slots_and_paces, conduct_and_penalty);
criterion_main!(benches);
