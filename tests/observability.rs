//! The operators' kit against a real server: what `/metrics` exports (the
//! process, the build, the certificate, durable writes), the dashboard and
//! alert rules under `contrib/` using only what it exports, the rules
//! loaded and unit-tested by Prometheus' own `promtool`, and the systemd
//! unit verified by `systemd-analyze`.

mod support;

use std::collections::BTreeSet;
use std::path::Path;

use support::{TestServer, metric, tools};

const CODE: &str = "2001000001promo";

fn contrib(path: &str) -> String {
    let path = Path::new(
        &std::env::var("CARGO_MANIFEST_DIR").expect("cargo test sets CARGO_MANIFEST_DIR"),
    )
    .join("contrib")
    .join(path);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The metric names a text mentions: words starting `homecmp_` or `process_`.
fn names_in(text: &str) -> BTreeSet<String> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|word| word.starts_with("homecmp_") || word.starts_with("process_"))
        .map(str::to_owned)
        .collect()
}

/// The metric families an exposition declares (`# TYPE name type`).
fn families(exposition: &str) -> BTreeSet<String> {
    exposition
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.split(' ').next())
        .map(str::to_owned)
        .collect()
}

/// Whether `sample` (a name as a query writes it) is one of `families`'
/// samples: the family's name, or it with a suffix OpenMetrics adds.
fn exported(sample: &str, families: &BTreeSet<String>) -> bool {
    let suffixes = [
        "", "_total", "_bucket", "_sum", "_count", "_created", "_info",
    ];
    families.iter().any(|family| {
        suffixes
            .iter()
            .any(|suffix| sample == format!("{family}{suffix}"))
    })
}

/// The names `src/metrics.rs` registers (under `homecmp_`): a family with
/// labels shows in a scrape once it has its first sample.
fn declared() -> BTreeSet<String> {
    let source = include_str!("../src/metrics.rs");
    let block = source
        .split_once("metrics! {")
        .expect("the metrics! block")
        .1;
    block
        .lines()
        .filter_map(|line| line.split_once("= \""))
        .filter_map(|(_, rest)| rest.split_once('"'))
        .map(|(name, _)| format!("homecmp_{name}"))
        .collect()
}

#[tokio::test]
async fn every_metric_the_dashboard_and_the_alerts_use_is_exported() {
    let server = TestServer::start().await;
    let mut exported_families = families(&server.metrics().await);
    let declared = declared();
    assert!(
        declared.contains("homecmp_requests") && declared.len() >= 30,
        "{declared:?}"
    );
    exported_families.extend(declared);
    let dashboard: serde_json::Value =
        serde_json::from_str(&contrib("grafana/homecmp.json")).expect("the dashboard is JSON");
    let mut queries = String::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("targets") {
            queries.push_str(target["expr"].as_str().expect("an expr"));
            queries.push('\n');
        }
    }
    let used = names_in(&queries);
    let alerted = names_in(&contrib("prometheus/alerts.yml"));
    assert!(
        used.len() >= 20 && alerted.len() >= 8,
        "{used:?} {alerted:?}"
    );
    let missing: Vec<_> = used
        .iter()
        .chain(&alerted)
        .filter(|name| !exported(name, &exported_families))
        .collect();
    assert!(missing.is_empty(), "used but not exported: {missing:?}");
    server.stop().await;
}

#[tokio::test]
async fn metrics_show_the_process_the_build_the_certificate_and_durable_writes() {
    let server = TestServer::start().await;
    server.put_code(CODE, "https://example.org/").await;
    server.bind_session("127.1.0.1", "+447700900001").await;
    let mno = server.client("http2", "127.1.0.1");
    let (status, body) = server
        .resolve(&mno, &format!("code={CODE}&clientid=app"))
        .await;
    assert_eq!(status, 200, "{body}");
    let text = server.metrics().await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert_eq!(metric(&text, "homecmp_ready "), 1.0);
    let version = env!("CARGO_PKG_VERSION");
    assert!(text.contains(&format!("homecmp_build_info{{version=\"{version}\"}} 1")));
    let expiry = metric(
        &text,
        "homecmp_tls_certificate_expiry_timestamp_seconds{listener=\"public\"}",
    );
    assert!(expiry > now + 86400.0, "expiry {expiry}, now {now}");
    assert!(metric(&text, "homecmp_association_write_duration_seconds_count") >= 1.0);
    let fds = metric(&text, "process_open_fds ");
    let max_fds = metric(&text, "process_max_fds ");
    assert!(fds > 10.0 && max_fds >= fds, "{fds} of {max_fds}");
    assert!(metric(&text, "process_resident_memory_bytes ") > 1e6);
    let started = metric(&text, "process_start_time_seconds ");
    assert!(
        (now - 600.0..=now + 1.0).contains(&started),
        "{started} vs {now}"
    );
    server.stop().await;
}

/// The book's promtool commands (docs/book/src/admin-api.md), exactly as
/// printed, from the checkout's root: the rules load, and each alert fires
/// on the series that should fire it and not before (`alerts_test.yml`).
#[test]
fn the_alert_rules_load_and_fire_on_the_series_that_should_fire_them() {
    tools::require("promtool", "Debian's prometheus");
    let chapter = include_str!("../docs/book/src/admin-api.md");
    let after = chapter
        .split_once("**Dashboards, alerts, a service unit.**")
        .expect("docs/book/src/admin-api.md's section")
        .1;
    let block = after
        .split_once("```sh\n")
        .and_then(|(_, rest)| rest.split_once("```"))
        .expect("its sh block")
        .0;
    assert!(block.contains("promtool test rules"), "{block}");
    let run = std::process::Command::new("bash")
        .args(["-euo", "pipefail", "-c", block])
        .current_dir(
            std::env::var("CARGO_MANIFEST_DIR").expect("cargo test sets CARGO_MANIFEST_DIR"),
        )
        .output()
        .unwrap();
    let said =
        String::from_utf8_lossy(&run.stdout).into_owned() + &String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{block}\n{said}");
    assert_eq!(said.matches("SUCCESS").count(), 2, "{said}");
}

/// The unit as shipped, pointed at the binary this build made:
/// `systemd-analyze verify` finds no unknown key, no bad value, no missing
/// program.
#[test]
fn the_systemd_unit_verifies() {
    let analyze = tools::require("systemd-analyze", "Debian's systemd");
    let unit = contrib("systemd/homecmp.service");
    assert!(unit.contains("ExecStart=/usr/local/bin/homecmp serve"));
    for key in [
        "LimitNOFILE=",
        "StateDirectory=",
        "TimeoutStopSec=",
        "ProtectSystem=",
    ] {
        assert!(unit.contains(key), "{key}");
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("homecmp.service");
    let binary = env!("CARGO_BIN_EXE_homecmp");
    std::fs::write(&path, unit.replace("/usr/local/bin/homecmp", binary)).unwrap();
    let run = std::process::Command::new(analyze)
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    let said =
        String::from_utf8_lossy(&run.stdout).into_owned() + &String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success() && said.trim().is_empty(), "{said}");
}
