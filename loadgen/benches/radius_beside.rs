//! RADIUS accounting under resolve load, in one run on one server (started
//! in-process on loopback, release build):
//!
//! 1. accounting alone: Starts from two gateways, each keeping a window of
//!    requests in flight, for `SECS` seconds: Accounting-Responses per
//!    second;
//! 2. resolves alone: `homecmp-loadgen --mix legit=1` over HTTP/2 for the
//!    same time: requests per second;
//! 3. both at once: both rates again;
//! 4. from Accounting-Response to a first scan: a Start for a fresh
//!    address, and as soon as its answer arrives a first scan from that
//!    address, `ROUNDS` times: how many created their association (the
//!    binding is applied before the answer is sent, so all must), and the
//!    time from the answer to the scan's 200.
//!
//! `cargo bench -p homecmp-loadgen --bench radius_beside [-- SECS]`
//! (default 5; `-- --test`, criterion's smoke flag, runs 1 s and 20 rounds).

use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use homecmp::config::Config;
use homecmp::radius::packet::{Status, accounting_request, session_attributes};
use homecmp::server::{self, Running};
use homecmp_loadgen::cli::Args;
use tokio::net::UdpSocket;

#[path = "../../tests/support/config.rs"]
mod config;

const SECRET: &str = "bench-secret";
const CODE: &str = "2001000001bench";
/// Requests each gateway keeps in flight.
const WINDOW: usize = 32;

async fn server(dir: &Path) -> Running {
    let secret = dir.join("radius.secret");
    std::fs::write(&secret, SECRET).unwrap();
    let extra = format!(
        "[auth]\nassociations_per_minute = 1000000\n\
         [mno]\nnetworks = [\"127.1.0.0/16\", \"127.8.0.0/16\", \"127.9.0.0/16\"]\n\
         [limits]\nfirst_scans_per_sec = 0\nrequests_per_address_per_sec = 0\n\
         requests_per_clientid_per_sec = 0\naccepts_per_address_per_sec = 0\n\
         max_connections_per_address = 0\nunauthenticated_per_sec = 0\nhandshakes_per_sec = 0\n\
         shutdown_grace_ms = 500\n\
         [radius]\nlisten = \"127.0.0.1:0\"\n\
         [[radius.clients]]\nnetwork = \"127.4.0.0/16\"\nsecret_file = \"{}\"\n",
        secret.display()
    );
    let text = config::config_text(&dir.join("data"), "", &extra);
    let config = Config::parse(&text, Vec::new()).expect("valid bench config");
    server::start(config).await.expect("server starts")
}

/// The `n`-th Start: an address in 127.8.0.0/16 (the loadgen's subscribers
/// are in 127.1.0.0/16), its own MSISDN and session.
fn start(n: u32, id: u8) -> Vec<u8> {
    let n = n % 65_000;
    let address = Ipv4Addr::new(127, 8, (n >> 8) as u8, n as u8);
    let attributes = session_attributes(
        Status::Start,
        address,
        &format!("+4477{n:08}"),
        &format!("bench-{n}"),
    );
    let attributes: Vec<(u8, &[u8])> = attributes.iter().map(|(k, v)| (*k, v.as_slice())).collect();
    accounting_request(id, &attributes, SECRET.as_bytes())
}

/// One gateway sending Starts until `stop`, `WINDOW` in flight; counts
/// answers into `answered`.
async fn gateway(server: &Running, index: u8, stop: Arc<AtomicBool>, answered: Arc<AtomicU64>) {
    let socket = UdpSocket::bind((Ipv4Addr::new(127, 4, 0, index), 0))
        .await
        .unwrap();
    let to = server.radius_addr.unwrap();
    let mut n = u32::from(index) << 24;
    let mut buffer = [0u8; 64];
    while !stop.load(Ordering::Relaxed) {
        for _ in 0..WINDOW {
            n = n.wrapping_add(1);
            socket.send_to(&start(n, n as u8), to).await.unwrap();
        }
        for _ in 0..WINDOW {
            let wait = tokio::time::timeout(Duration::from_millis(200), socket.recv(&mut buffer));
            match wait.await {
                Ok(Ok(_)) => answered.fetch_add(1, Ordering::Relaxed),
                _ => break,
            };
        }
    }
}

/// Accounting-Responses per second over `secs`.
async fn accounting(server: &Running, secs: f64) -> f64 {
    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let gateways = futures_util::future::join(
        gateway(server, 1, stop.clone(), answered.clone()),
        gateway(server, 2, stop.clone(), answered.clone()),
    );
    let timer = async {
        tokio::time::sleep(Duration::from_secs_f64(secs)).await;
        stop.store(true, Ordering::Relaxed);
    };
    tokio::join!(gateways, timer);
    answered.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64()
}

/// Resolves per second from the load generator (legit only, HTTP/2).
async fn resolves(server: &Running, secs: f64) -> f64 {
    let argv = [
        "homecmp-loadgen".to_owned(),
        format!("--url=https://127.0.0.1:{}", server.public_addr.port()),
        format!("--admin=http://{}", server.admin_addr),
        format!("--token={}", server.admin_token.expose()),
        format!("--ca={}", server.ca_cert.as_ref().unwrap().display()),
        "--quiet".into(),
        "--mix=legit=1".into(),
        "--protocol=h2".into(),
        "--connections=4".into(),
        "--streams=8".into(),
        "--warmup=500ms".into(),
        format!("--duration={}ms", (secs * 1000.0) as u64),
    ];
    let args = Args::try_parse_from(argv).expect("valid loadgen arguments");
    let outcome = homecmp_loadgen::run(args).await.expect("loadgen runs");
    assert_eq!(outcome.exit_code, 0, "every resolve answered as prescribed");
    outcome.report.expect("a report").total.throughput_rps
}

/// `rounds` times: a Start for a fresh address, then at once a first scan
/// from it. Returns (created, median ms from the answer to the 200).
async fn answer_to_scan(server: &Running, rounds: u32) -> (u32, f64) {
    let ca = std::fs::read(server.ca_cert.as_ref().unwrap()).unwrap();
    let ca = reqwest::Certificate::from_pem(&ca).unwrap();
    let admin = reqwest::Client::new();
    let put = admin
        .put(format!(
            "http://{}/admin/v1/codes/{CODE}",
            server.admin_addr
        ))
        .bearer_auth(server.admin_token.expose())
        .body(r#"{"target":"https://example.org/bench"}"#)
        .send()
        .await
        .unwrap();
    assert!(put.status().is_success());
    let socket = UdpSocket::bind((Ipv4Addr::new(127, 4, 0, 3), 0))
        .await
        .unwrap();
    let to = server.radius_addr.unwrap();
    let mut buffer = [0u8; 64];
    let (mut created, mut times) = (0, Vec::new());
    for round in 0..rounds {
        let address = Ipv4Addr::new(127, 9, (round >> 8) as u8, round as u8);
        let attributes =
            session_attributes(Status::Start, address, &format!("+4478{round:08}"), "scan");
        let attributes: Vec<(u8, &[u8])> =
            attributes.iter().map(|(k, v)| (*k, v.as_slice())).collect();
        let client = reqwest::Client::builder()
            .add_root_certificate(ca.clone())
            .local_address(std::net::IpAddr::V4(address))
            .build()
            .unwrap();
        socket
            .send_to(
                &accounting_request(round as u8, &attributes, SECRET.as_bytes()),
                to,
            )
            .await
            .unwrap();
        socket.recv(&mut buffer).await.unwrap();
        let answered = Instant::now();
        let url = format!(
            "https://127.0.0.1:{}/mc/v1/resolve?code={CODE}&clientid=scan-{round}",
            server.public_addr.port()
        );
        let response = client.get(url).send().await.unwrap();
        if response.status() == 200 {
            created += 1;
        }
        times.push(answered.elapsed().as_secs_f64() * 1000.0);
    }
    times.sort_by(f64::total_cmp);
    (created, times[times.len() / 2])
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let smoke = std::env::args().any(|a| a == "--test");
    let secs: f64 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(if smoke { 1.0 } else { 5.0 });
    let rounds = if smoke { 20 } else { 500 };
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let server = server(dir.path()).await;

    let alone = accounting(&server, secs).await;
    let resolve_alone = resolves(&server, secs).await;
    let (beside, resolve_beside) = tokio::join!(accounting(&server, secs), resolves(&server, secs));
    let (created, median_ms) = answer_to_scan(&server, rounds).await;

    println!("RADIUS accounting beside resolves ({secs} s each, one server, 2 cores)");
    println!("{:<34} {:>14} {:>14}", "", "accounting/s", "resolves/s");
    println!("{:<34} {:>14.0} {:>14}", "accounting alone", alone, "-");
    println!(
        "{:<34} {:>14} {:>14.0}",
        "resolves alone (loadgen, h2)", "-", resolve_alone
    );
    println!(
        "{:<34} {:>14.0} {:>14.0}",
        "both at once", beside, resolve_beside
    );
    println!(
        "{:<34} {:>13.2}x {:>13.2}x",
        "both / alone",
        beside / alone,
        resolve_beside / resolve_alone
    );
    println!(
        "first scan right after the Accounting-Response: {created} of {rounds} created, \
         median {median_ms:.2} ms from the answer to the 200"
    );
    assert_eq!(created, rounds, "a binding is visible once answered");
    server.shutdown().await;
}
