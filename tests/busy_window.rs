//! A busy window: 5,000 distinct codes resolved once each between two
//! scan-statistics flushes, then SIGKILL. Every event the server wrote
//! must replay: `homecmp log verify` passes and the server starts again on
//! that log, in single-node mode and in cluster mode (where a second node
//! follows the stream and must apply every event too).
//!
//! The window's counts outgrow one event (`SCANS_PER_EVENT` codes): the
//! test also checks that they were written as several events of one
//! flush, none larger than the log's limit.

mod support;

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use homecmp::core::model::SCANS_PER_EVENT;
use reqwest::Method;
use serde_json::{Value, json};
use support::binary::{Served, log_command};

const CODES: usize = 5_000;
const SUBSCRIBER_IP: &str = "127.1.0.61";
const CLIENTID: &str = "busy-window-client";

/// The code of number `n`.
fn code(n: usize) -> String {
    format!("{}busy{n:05}", support::PREFIX)
}

fn config(data_dir: &Path, extra: &str) -> String {
    format!(
        "[server]\ndata_dir = \"{}\"\nlisten = \"127.0.0.1:0\"\nrouting_prefixes = [\"{}\"]\n\
         scan_stats_flush_secs = 10\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n\
         [limits]\nrequests_per_clientid_per_sec = 1000000\nrequests_per_address_per_sec = 1000000\n\
         {extra}",
        data_dir.display(),
        support::PREFIX,
    )
}

/// [`config`] for a node of a cluster: every node keys subscribers with the
/// same secret (the config requires it there).
fn cluster_config(data_dir: &Path, extra: &str) -> String {
    let secret = "subscriber_secret = \"5ec7e75ec7e75ec7e75ec7e75ec7e75ec7e75ec7e75ec7e75ec7e75ec7e75ec7\"\n";
    config(data_dir, extra).replacen("[admin]", &format!("{secret}[admin]"), 1)
}

/// Registers the codes: one import where the mode takes one, else one
/// PUT each, 32 at a time.
async fn register_codes(server: &Served, bulk: bool) {
    if bulk {
        let body: String = (0..CODES)
            .map(|n| {
                format!(
                    "{}\n",
                    json!({"code": code(n), "target": format!("https://example.org/{n}")})
                )
            })
            .collect();
        let (status, report) = server
            .admin(Method::POST, "/admin/v1/codes:import", Some(body.into()))
            .await;
        assert_eq!(status, 200, "{report}");
        return;
    }
    let puts = futures_util::stream::iter(0..CODES).map(|n| async move {
        let body = json!({"target": format!("https://example.org/{n}")}).to_string();
        let path = format!("/admin/v1/codes/{}", code(n));
        server.admin(Method::PUT, &path, Some(body.into())).await
    });
    let answers: Vec<_> = puts.buffer_unordered(32).collect().await;
    for (status, body) in answers {
        assert_eq!(status, 200, "{body}");
    }
}

/// Associates the one clientid, then resolves every code once with it.
async fn resolve_every_code(server: &Served) {
    let body = json!({"msisdn": "+447700900061"}).to_string();
    let path = format!("/admin/v1/sessions/{SUBSCRIBER_IP}");
    let (status, answer) = server.admin(Method::PUT, &path, Some(body.into())).await;
    assert_eq!(status, 200, "{answer}");
    let client = server.client(SUBSCRIBER_IP);
    let scan = |n: usize| {
        let url = server.resolve_url(&format!("code={}&clientid={CLIENTID}", code(n)));
        let client = client.clone();
        async move {
            let response = client.get(url).send().await.expect("an answer");
            (response.status().as_u16(), response.text().await.unwrap())
        }
    };
    // The first scan creates the association; the rest find it.
    let (status, body) = scan(0).await;
    assert_eq!(status, 200, "{body}");
    let scans = futures_util::stream::iter(1..CODES).map(scan);
    let answers: Vec<_> = scans.buffer_unordered(32).collect().await;
    for (status, body) in answers {
        assert_eq!(status, 200, "{body}");
    }
}

/// Every `scans_counted` event in the log at `data_dir` (read beside the
/// running server), as JSON.
fn scan_events(data_dir: &Path) -> Vec<Value> {
    let (code, out, err) = log_command(&["export"], data_dir);
    assert_eq!(code, 0, "log export: {err}");
    out.lines()
        .map(|line| serde_json::from_str::<Value>(line).unwrap())
        .filter(|event| event["kind"] == "scans_counted")
        .collect()
}

/// Waits until the flushes have written a count for every code; returns
/// the number of codes per flush (events of one flush share `at_ms`).
async fn wait_for_flush(data_dir: &Path) -> BTreeMap<u64, usize> {
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let events = scan_events(data_dir);
        let counted: HashSet<&str> = events
            .iter()
            .flat_map(|e| e["codes"].as_array().unwrap())
            .map(|c| c["code"].as_str().unwrap())
            .collect();
        if counted.len() >= CODES {
            let mut per_flush = BTreeMap::new();
            for event in &events {
                let codes = event["codes"].as_array().unwrap().len();
                assert!(codes <= SCANS_PER_EVENT, "one event carries {codes} codes");
                *per_flush
                    .entry(event["at_ms"].as_u64().unwrap())
                    .or_default() += codes;
            }
            return per_flush;
        }
        assert!(
            Instant::now() < deadline,
            "after 40 s the log counts {} of {CODES} codes",
            counted.len()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// What must hold of a log after the kill: it verifies, and the server
/// starts on it again and still has every count and the association.
async fn assert_replays(dir: &Path, name: &str, config: &str) {
    let data_dir = dir.join(name);
    let (exit, out, err) = log_command(&["verify"], &data_dir);
    assert_eq!(exit, 0, "log verify after the kill: {out}{err}");
    let restarted = Served::start(dir, &format!("{name}-restarted"), config);
    let path = format!("/admin/v1/codes/{}/stats", code(CODES - 1));
    let (status, stats) = restarted.admin(Method::GET, &path, None).await;
    assert_eq!((status, &stats["resolutions"]), (200, &json!(1)), "{stats}");
    let client = restarted.client(SUBSCRIBER_IP);
    let url = restarted.resolve_url(&format!("code={}&clientid={CLIENTID}", code(0)));
    let answer: Value = client.get(url).send().await.unwrap().json().await.unwrap();
    assert_eq!(answer["association"], "existing", "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_window_replays_after_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("single");
    let config = config(&data_dir, "");
    let server = Served::start(dir.path(), "single", &config);
    register_codes(&server, true).await;
    resolve_every_code(&server).await;
    let per_flush = wait_for_flush(&data_dir).await;
    assert!(
        per_flush.values().any(|&codes| codes > SCANS_PER_EVENT),
        "no flush outgrew one event: {per_flush:?}"
    );
    server.kill9();
    assert_replays(dir.path(), "single", &config).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_window_replays_after_sigkill_in_cluster_mode() {
    let nats = support::nats::NatsCluster::start(1);
    let dir = tempfile::tempdir().unwrap();
    let cluster = |node: &str| {
        format!(
            "[cluster]\nnats_urls = {}\nnode = \"{node}\"\nreplicas = 1\n",
            nats.urls_toml(&[0])
        )
    };
    let node_config = |node: &str| cluster_config(&dir.path().join(node), &cluster(node));
    let (config_a, config_b) = (node_config("a"), node_config("b"));
    let a = Served::start(dir.path(), "a", &config_a);
    let b = Served::start(dir.path(), "b", &config_b);
    register_codes(&a, false).await;
    resolve_every_code(&a).await;
    let per_flush = wait_for_flush(&dir.path().join("a")).await;
    assert!(
        per_flush.values().any(|&codes| codes > SCANS_PER_EVENT),
        "no flush outgrew one event: {per_flush:?}"
    );
    a.kill9();
    // The follower applied every event of the stream, and stayed ready.
    let counted = wait_for_flush(&dir.path().join("b")).await;
    assert_eq!(counted, per_flush, "node b's log differs from node a's");
    let ready = reqwest::Client::new().get(format!("{}/readyz", b.ready.admin));
    let (status, _) = support::checked(&reqwest::Method::GET, "/readyz", ready).await;
    assert_eq!(status, 200, "{}", b.stderr());
    assert_replays(dir.path(), "a", &config_a).await;
}

/// A node that meets a stream event it cannot apply stops following, and
/// says so: `/readyz` 503 `FOLLOWER_STOPPED` with the reason, the
/// `homecmp_cluster_follower_stopped` gauge at 1, an error line in its log.
/// It never stalls silently.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_that_cannot_apply_an_event_stops_loudly() {
    let nats = support::nats::NatsCluster::start(1);
    let dir = tempfile::tempdir().unwrap();
    let extra = format!(
        "[cluster]\nnats_urls = {}\nnode = \"a\"\nreplicas = 1\n",
        nats.urls_toml(&[0])
    );
    let node = Served::start(
        dir.path(),
        "a",
        &cluster_config(&dir.path().join("a"), &extra),
    );
    // What no homecmp node writes: a message that is not an event.
    let client = async_nats::connect(nats.url(0)).await.unwrap();
    let js = async_nats::jetstream::new(client);
    js.publish(
        "HOMECMP.b.0000",
        bytes::Bytes::from_static(b"\x01not an event"),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    let readyz = format!("{}/readyz", node.ready.admin);
    let deadline = Instant::now() + Duration::from_secs(20);
    let body = loop {
        let request = reqwest::Client::new().get(&readyz);
        let (status, body) = support::checked(&reqwest::Method::GET, "/readyz", request).await;
        if status == 503 {
            break body;
        }
        assert!(Instant::now() < deadline, "readyz still {status}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(body["code"], "FOLLOWER_STOPPED", "{body}");
    assert_eq!(body["ready"], false, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("is not an event"),
        "{body}"
    );
    let (status, metrics) = node.admin(Method::GET, "/metrics", None).await;
    assert_eq!(status, 200);
    let metrics = metrics.as_str().unwrap();
    assert_eq!(
        support::metric(metrics, "homecmp_cluster_follower_stopped "),
        1.0,
        "{metrics}"
    );
    assert!(
        node.stderr().contains("stops following it"),
        "{}",
        node.stderr()
    );
}
