//! Bulk code import at scale: N codes (default 1,000,000) as one NDJSON
//! body to `POST /admin/v1/codes:import` on a server started in-process
//! (release build, its own durable log), then the export back.
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
    let running = homecmp::net::start(Config::parse(&text, Vec::new()).unwrap())
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

    let started = Instant::now();
    let exported = client
        .get(format!("{admin}/admin/v1/codes:export"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let export = started.elapsed().as_secs_f64();
    assert_eq!(exported.lines().count() as u64, n);

    println!(
        "codes import: {n} codes ({:.0} MB NDJSON) in {import:.1} s = {:.0} codes/s, \
         {} durable batches; export in {export:.1} s",
        bytes as f64 / 1e6,
        n as f64 / import,
        report["batches_applied"]
    );
    running.shutdown().await;
}
