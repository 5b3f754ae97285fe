//! Bulk code import at scale: N codes (default 1,000,000) as one NDJSON
//! body to `POST /admin/v1/codes:import` on a server started in-process
//! (release build, its own durable log), then the export back, read as it
//! streams: time to its first byte, total time, and how far memory rises
//! while it runs (flat in N: the export holds one page of codes).
//!
//! `cargo bench --bench codes_import [-- N]`; `-- --test` (criterion's
//! smoke flag) runs 20,000.

use std::time::Instant;

use homecmp::config::Config;

#[path = "../tests/support/config.rs"]
mod config;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let smoke = std::env::args().any(|a| a == "--test");
    let n: u64 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(if smoke { 20_000 } else { 1_000_000 });
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let text = config::config_text(dir.path(), "", "");
    let running = homecmp::server::start(Config::parse(&text, Vec::new()).unwrap())
        .await
        .unwrap();
    let body: String = (0..n)
        .map(|i| {
            format!("{{\"code\":\"2001000001c{i:07}\",\"target\":\"https://example.org/landing/{i}\"}}\n")
        })
        .collect();
    let bytes = body.len();
    let client = reqwest::Client::new();
    let admin = format!("http://{}", running.admin_addr);
    let token = running.admin_token.expose().clone();

    let started = Instant::now();
    let response = client
        .post(format!("{admin}/admin/v1/codes:import"))
        .bearer_auth(&token)
        .header("content-type", "application/x-ndjson")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let report: serde_json::Value = response.json().await.unwrap();
    let import = started.elapsed().as_secs_f64();
    assert_eq!(report["applied"].as_u64(), Some(n));

    // One page as the export reads it, timed alone: two scans of the codes.
    let started = Instant::now();
    let page = running.app.store.index().codes_after_seq(
        0,
        homecmp::codes::EXPORT_PAGE,
        homecmp::store::index::Reader::Operator,
    );
    let page_ms = started.elapsed().as_secs_f64() * 1000.0;
    drop(page);

    // The export read as it streams (lines counted, not kept): when its
    // first byte comes, and how far the process's memory rises meanwhile
    // (server and client are this one process).
    let rss_before = rss_bytes();
    let mut rss_peak = rss_before;
    let started = Instant::now();
    let mut response = client
        .get(format!("{admin}/admin/v1/codes:export"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    let mut first_byte = None;
    let mut lines = 0u64;
    while let Some(chunk) = response.chunk().await.unwrap() {
        first_byte.get_or_insert_with(|| started.elapsed().as_secs_f64());
        lines += chunk.iter().filter(|&&b| b == b'\n').count() as u64;
        rss_peak = rss_peak.max(rss_bytes());
    }
    let export = started.elapsed().as_secs_f64();
    assert_eq!(lines, n);

    println!(
        "codes import: {n} codes ({:.0} MB NDJSON) in {import:.1} s = {:.0} codes/s, \
         {} durable batches; export in {export:.1} s, first byte after {:.0} ms, \
         memory +{:.0} MB while it ran; one page alone {page_ms:.0} ms",
        bytes as f64 / 1e6,
        n as f64 / import,
        report["batches_applied"],
        first_byte.unwrap_or(export) * 1000.0,
        rss_peak.saturating_sub(rss_before) as f64 / 1e6,
    );
    running.shutdown().await;
}

/// This process's resident memory (Linux `/proc/self/statm`), 0 elsewhere.
fn rss_bytes() -> u64 {
    let pages = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|statm| statm.split_whitespace().nth(1)?.parse::<u64>().ok());
    pages.unwrap_or(0) * 4096
}
