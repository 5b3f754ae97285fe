//! Session bindings shared in cluster mode, measured: a real three-server
//! JetStream cluster (R=3) on loopback and two homecmp nodes started
//! in-process; RADIUS Starts flood node A while node B follows.
//!
//! `cargo bench --bench cluster_bindings [-- SECS]` (default 5; `-- --test`,
//! criterion's smoke flag, runs 1 s)
//!
//! 1. **Sustained**: two gateways send Starts for distinct addresses to A,
//!    each keeping a window of requests in flight, for SECS seconds. Printed:
//!    Starts A answered per second (each applied on A and published before
//!    or after its answer, see the book's cluster chapter), and bindings per
//!    second as B has them: every answered binding, counted from the first
//!    Start until B holds the last.
//! 2. **Propagation under that load**: meanwhile a probe sends one Start at
//!    a time for a fresh address and, on A's answer, polls B until it holds
//!    it. Printed: p50, p99 and max from A's answer to visible on B.
//!
//! Needs nats-server 2.11+ (`scripts/dev test` installs it).

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use homecmp::config::Config;
use homecmp::radius::packet::{Status, accounting_request, session_attributes};
use homecmp::server::{self, Running};
use ipnet::IpNet;
use tokio::net::UdpSocket;

#[path = "../tests/support/config.rs"]
mod config;
#[path = "../tests/support/nats.rs"]
#[allow(dead_code)]
mod nats;

const SECRET: &str = "bench-secret";
/// Every node keys subscribers with the same secret (cluster mode needs it).
const SUBSCRIBER_SECRET: &str = "5ec7e75ec7e75ec7e75ec7e75ec7e75ec7e75ec7e75ec7e75ec7e75ec7e75ec7";
/// Requests each gateway keeps in flight.
const WINDOW: usize = 64;
/// Flood addresses: 127.16.0.0/12 holds a million; the probe's are in 127.9.0.0/16.
const FLOOD_BASE: u32 = u32::from_be_bytes([127, 16, 0, 0]);
const FLOOD_SPACE: u32 = 1 << 20;

async fn node(dir: &Path, name: &str, nats: &nats::NatsCluster) -> Running {
    let secret = dir.join("radius.secret");
    std::fs::write(&secret, SECRET).unwrap();
    let extra = format!(
        "[mno]\nnetworks = [\"127.16.0.0/12\", \"127.9.0.0/16\"]\n\
         [limits]\nshutdown_grace_ms = 200\n\
         [radius]\nlisten = \"127.0.0.1:0\"\n\
         [[radius.clients]]\nnetwork = \"127.4.0.0/16\"\nsecret_file = \"{}\"\n\
         [cluster]\nnats_urls = {}\nnode = \"{name}\"\n",
        secret.display(),
        nats.urls_toml(&[0, 1, 2]),
    );
    let server_keys = format!("subscriber_secret = \"{SUBSCRIBER_SECRET}\"");
    let text = config::config_text(&dir.join(name), &server_keys, &extra);
    let config = Config::parse(&text, Vec::new()).expect("valid bench config");
    server::start(config).await.expect("node starts")
}

fn flood_address(n: u32) -> Ipv4Addr {
    Ipv4Addr::from(FLOOD_BASE + n % FLOOD_SPACE)
}

fn start(address: Ipv4Addr, n: u32) -> Vec<u8> {
    let attributes = session_attributes(
        Status::Start,
        address,
        &format!("+4477{:08}", n % 100_000_000),
        &format!("bench-{n}"),
    );
    let attributes: Vec<(u8, &[u8])> = attributes.iter().map(|(k, v)| (*k, v.as_slice())).collect();
    accounting_request(n as u8, &attributes, SECRET.as_bytes())
}

/// Gateway `index` sends Starts for addresses `index, index + 2, ...` until
/// `stop`, `WINDOW` in flight; returns the addresses A answered.
async fn gateway(a: &Running, index: u32, stop: &AtomicBool) -> Vec<u32> {
    let socket = UdpSocket::bind((Ipv4Addr::new(127, 4, 0, index as u8 + 1), 0))
        .await
        .unwrap();
    let to = a.radius_addr.unwrap();
    let (mut n, mut answered) = (index, Vec::new());
    let mut buffer = [0u8; 64];
    while !stop.load(Ordering::Relaxed) {
        let mut sent = Vec::with_capacity(WINDOW);
        for _ in 0..WINDOW {
            socket
                .send_to(&start(flood_address(n), n), to)
                .await
                .unwrap();
            sent.push(n);
            n += 2;
        }
        // An answer names its request by the identifier (`n as u8`,
        // distinct within a window).
        for _ in 0..WINDOW {
            let wait = tokio::time::timeout(Duration::from_millis(500), socket.recv(&mut buffer));
            match wait.await {
                Ok(Ok(len)) if len > 1 => {
                    answered.extend(sent.iter().filter(|&&n| n as u8 == buffer[1]));
                }
                _ => break,
            }
        }
    }
    answered
}

/// One Start at a time for fresh addresses until `stop`; for each, the
/// time from A's answer until B holds the binding.
async fn probe(a: &Running, b: &Running, stop: &AtomicBool) -> Vec<Duration> {
    let socket = UdpSocket::bind((Ipv4Addr::new(127, 4, 0, 9), 0))
        .await
        .unwrap();
    let to = a.radius_addr.unwrap();
    let mut buffer = [0u8; 64];
    let mut times = Vec::new();
    let mut round = 0u32;
    while !stop.load(Ordering::Relaxed) && round < 60_000 {
        let address = Ipv4Addr::new(127, 9, (round >> 8) as u8, round as u8);
        socket.send_to(&start(address, round), to).await.unwrap();
        let wait = tokio::time::timeout(Duration::from_secs(2), socket.recv(&mut buffer));
        if !matches!(wait.await, Ok(Ok(_))) {
            round += 1;
            continue;
        }
        let answered = Instant::now();
        let net = IpNet::from(IpAddr::V4(address));
        while !b.app.bindings.table().is_bound(net) {
            assert!(
                answered.elapsed() < Duration::from_secs(30),
                "{address} never reached B"
            );
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        times.push(answered.elapsed());
        round += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    times
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 * p) as usize).min(sorted.len().saturating_sub(1));
    sorted.get(i).map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let smoke = std::env::args().any(|a| a == "--test");
    let secs: f64 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(if smoke { 1.0 } else { 5.0 });
    let cluster = nats::NatsCluster::start(3);
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let a = node(dir.path(), "a", &cluster).await;
    let b = node(dir.path(), "b", &cluster).await;

    let stop = AtomicBool::new(false);
    let started = Instant::now();
    let timer = async {
        tokio::time::sleep(Duration::from_secs_f64(secs)).await;
        stop.store(true, Ordering::Relaxed);
    };
    let (first, second, probed, ()) = tokio::join!(
        gateway(&a, 0, &stop),
        gateway(&a, 1, &stop),
        probe(&a, &b, &stop),
        timer
    );
    let flood_secs = started.elapsed().as_secs_f64();
    let answered: Vec<u32> = first.into_iter().chain(second).collect();
    let table = b.app.bindings.table();
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut missing: Vec<u32> = answered.clone();
    while !missing.is_empty() {
        missing.retain(|&n| !table.is_bound(IpNet::from(IpAddr::V4(flood_address(n)))));
        assert!(
            Instant::now() < deadline,
            "{} bindings never reached B",
            missing.len()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let on_b_secs = started.elapsed().as_secs_f64();
    let mut probed = probed;
    probed.sort();

    println!(
        "session bindings in cluster mode: RADIUS Starts to A, B following (3 nats-servers R=3, 2 cores)"
    );
    println!(
        "Starts answered by A: {} in {flood_secs:.1} s = {:.0}/s",
        answered.len(),
        answered.len() as f64 / flood_secs
    );
    println!(
        "bindings held by B: all {} after {on_b_secs:.1} s = {:.0}/s",
        answered.len(),
        answered.len() as f64 / on_b_secs
    );
    println!(
        "from A's answer to visible on B, under that load ({} probes): p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        probed.len(),
        percentile(&probed, 0.5),
        percentile(&probed, 0.99),
        probed.last().map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    );
    assert!(!answered.is_empty() && !probed.is_empty(), "the bench ran");
    a.shutdown().await;
    b.shutdown().await;
}
