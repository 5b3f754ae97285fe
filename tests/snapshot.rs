//! Index snapshots against a real server's data dir: a graceful stop writes
//! one; the next start loads it and replays only the events after it, to
//! the same state as a full replay; a damaged, foreign or outdated snapshot
//! is refused (named) and the whole log replayed; erasure removes it; a
//! server writes it again while serving, so a `kill -9` replays only what
//! followed the last one.

mod support;

use std::path::Path;
use std::time::Duration;

use homecmp::store::{Store, index::Contents, snapshot};
use reqwest::Method;
use support::{CODE, TARGET, TestServer};

const EXTRA: &str = "[auth]\nassociations_per_minute = 100000\nmax_clientids_per_subscriber = 1000\n\
                     [limits]\nfirst_scans_per_sec = 0\nshutdown_grace_ms = 200\n";

/// A comparable picture of an index.
fn state(contents: Contents) -> Contents {
    assert!(!contents.associations.is_empty() && !contents.lists.is_empty());
    contents
}

fn full_replay(data: &Path) -> Contents {
    let store = Store::open(&data.join("events")).unwrap();
    state(store.index().contents())
}

fn open_from(data: &Path) -> (homecmp::store::Started, Contents) {
    let (store, started) = Store::open_from(&data.join("events"), &snapshot::path(data)).unwrap();
    (started, state(store.index().contents()))
}

/// Clientid `i`: named for even `i`, a UUID (kept as 16 bytes) for odd.
fn clientid(i: u32) -> String {
    match i % 2 {
        0 => format!("app-{i}"),
        _ => uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, &i.to_le_bytes()).to_string(),
    }
}

async fn scans(server: &TestServer, ip: &str, ids: std::ops::Range<u32>) {
    let client = server.client("http1", ip);
    for i in ids {
        let (s, b) = server
            .resolve(&client, &format!("code={CODE}&clientid={}", clientid(i)))
            .await;
        assert_eq!(s, 200, "{b}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_loads_the_snapshot_and_replays_only_what_follows() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = TestServer::in_dir(&data, EXTRA).await;
    server.put_code(CODE, TARGET).await;
    server.bind_session("127.1.0.1", "+447700900001").await;
    scans(&server, "127.1.0.1", 0..20).await;
    server.stop().await;
    let file = snapshot::path(&data);
    assert!(file.is_file(), "a graceful stop writes the snapshot");

    let (started, from_snapshot) = open_from(&data);
    // 21 changes, then the resolution counts written at the stop.
    assert_eq!(started.snapshot_seq, Some(22));
    assert_eq!(started.replayed, 0);
    assert_eq!(from_snapshot, full_replay(&data));

    // An older snapshot (a crash after more events): the tail is replayed.
    let old = std::fs::read(&file).unwrap();
    let server = TestServer::in_dir(&data, EXTRA).await;
    server.bind_session("127.1.0.1", "+447700900001").await;
    server.bind_session("127.1.0.2", "+447700900002").await;
    scans(&server, "127.1.0.1", 20..25).await;
    scans(&server, "127.1.0.2", 25..30).await;
    for gone in [clientid(4), clientid(7)] {
        let path = format!("/admin/v1/associations/{gone}");
        let (s, _) = server.admin(Method::DELETE, &path, None).await;
        assert_eq!(s, 200);
    }
    server.stop().await;
    // A snapshot with freed entries and two subscribers' lists.
    let (started, from_snapshot) = open_from(&data);
    assert_eq!((started.snapshot_seq, started.replayed), (Some(35), 0));
    assert_eq!(from_snapshot, full_replay(&data));
    assert_eq!(from_snapshot.lists.len(), 2);

    std::fs::write(&file, &old).unwrap();
    let (started, from_snapshot) = open_from(&data);
    assert_eq!(started.snapshot_seq, Some(22));
    assert_eq!(started.replayed, 13);
    assert_eq!(from_snapshot, full_replay(&data));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_foreign_or_outdated_snapshot_is_refused_and_the_log_replayed() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let other = dir.path().join("other");
    for (d, n) in [(&data, 12), (&other, 5)] {
        let server = TestServer::in_dir(d, EXTRA).await;
        server.put_code(CODE, TARGET).await;
        server.bind_session("127.1.0.1", "+447700900001").await;
        scans(&server, "127.1.0.1", 0..n).await;
        server.stop().await;
    }
    let file = snapshot::path(&data);
    let good = std::fs::read(&file).unwrap();
    let expected = full_replay(&data);
    let mut cases: Vec<(&str, Vec<u8>)> = Vec::new();
    let mut flipped = good.clone();
    let middle = flipped.len() / 2;
    flipped[middle] ^= 0x40;
    // Damage is found by the checksum, or earlier by a parse that fails.
    cases.push(("the snapshot is damaged", flipped));
    cases.push(("damaged", good[..good.len() / 3].to_vec()));
    let garbage = b"something else entirely".repeat(3);
    cases.push(("not a homecmp index snapshot", garbage));
    cases.push((
        "does not match the log",
        std::fs::read(snapshot::path(&other)).unwrap(),
    ));
    for (why, bytes) in cases {
        std::fs::write(&file, &bytes).unwrap();
        let (started, from_log) = open_from(&data);
        let refused = started.snapshot_refused.unwrap_or_default();
        assert!(refused.contains(why), "{why}: {refused}");
        assert_eq!(started.snapshot_seq, None);
        assert_eq!(
            started.replayed, 14,
            "13 changes and the counts written at the stop"
        );
        assert_eq!(from_log, expected);
    }
    // A log cut below the snapshot (log repair --until): refused too.
    std::fs::write(&file, &good).unwrap();
    let repair = std::process::Command::new(env!("CARGO_BIN_EXE_homecmp"))
        .args(["log", "repair", "--until", "5", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(repair.status.success(), "{repair:?}");
    let (started, from_log) = open_from(&data);
    assert!(
        started
            .snapshot_refused
            .unwrap()
            .contains("the log ends at 5")
    );
    assert_eq!(from_log, full_replay(&data));
    assert_eq!(from_log.associations.len(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn erasure_removes_the_snapshot_that_holds_the_subscriber() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = TestServer::in_dir(&data, EXTRA).await;
    server.put_code(CODE, TARGET).await;
    server.bind_session("127.1.0.1", "+447700900001").await;
    let clientid = format!("erased-{}", uuid::Uuid::new_v4());
    let client = server.client("http1", "127.1.0.1");
    let (s, _) = server
        .resolve(&client, &format!("code={CODE}&clientid={clientid}"))
        .await;
    assert_eq!(s, 200);
    server.stop().await;
    let file = snapshot::path(&data);
    let held = std::fs::read(&file).unwrap();
    assert!(
        held.windows(clientid.len())
            .any(|w| w == clientid.as_bytes())
    );

    let server = TestServer::in_dir(&data, EXTRA).await;
    let (s, body) = server
        .admin(Method::DELETE, "/admin/v1/subscribers/+447700900001", None)
        .await;
    assert_eq!(s, 200, "{body}");
    assert!(!file.exists(), "the old snapshot is gone with the erasure");
    server.stop().await;
    let fresh = std::fs::read(&file).unwrap();
    assert!(
        !fresh
            .windows(clientid.len())
            .any(|w| w == clientid.as_bytes())
    );
}

/// While serving, every `server.snapshot_every_events` events the snapshot
/// is written again (appends going on); after a `kill -9` the next start
/// loads the last one and replays only what followed, to the state a full
/// replay gives, with every acknowledged association there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_is_written_while_serving_and_a_crash_replays_only_what_followed() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = format!(
        "[server]\ndata_dir = \"{}\"\nlisten = \"127.0.0.1:0\"\nsnapshot_every_events = 40\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n[mno]\nnetworks = [\"127.1.0.0/16\"]\n{EXTRA}",
        data.display()
    );
    let served = support::binary::Served::start(dir.path(), "snapshots", &config);
    let body = |text: &str| Some(reqwest::Body::from(text.to_owned()));
    let target = format!("{{\"target\": \"{TARGET}\"}}");
    let path = format!("/admin/v1/codes/{CODE}");
    assert_eq!(served.admin(Method::PUT, &path, body(&target)).await.0, 200);
    let bind = r#"{"msisdn": "+447700900001"}"#;
    let put = served.admin(Method::PUT, "/admin/v1/sessions/127.1.0.1", body(bind));
    assert_eq!(put.await.0, 200);
    let client = served.client("127.1.0.1");
    let scan = async |i: u32| {
        let url = served.resolve_url(&format!("code={CODE}&clientid={}", clientid(i)));
        let response = client.get(url).send().await.unwrap();
        assert_eq!(response.status(), 200);
    };
    for i in 0..100 {
        scan(i).await;
    }
    let log = served.stderr_log.clone();
    support::eventually(
        "a snapshot written while serving",
        Duration::from_secs(20),
        async || {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            text.contains("index snapshot written while serving")
        },
    )
    .await;
    for i in 100..110 {
        scan(i).await;
    }
    // What a crash would replay now, told to the operator.
    let (status, metrics) = served.admin(Method::GET, "/metrics", None).await;
    assert_eq!(status, 200);
    let metrics = metrics.as_str().unwrap();
    let gauge = |name: &str| -> u64 {
        let prefix = format!("{name} ");
        let line = metrics.lines().find_map(|l| l.strip_prefix(&prefix));
        line.unwrap_or_else(|| panic!("{name} exported"))
            .parse()
            .unwrap()
    };
    let since = gauge("homecmp_log_events_since_snapshot");
    let last = gauge("homecmp_log_last_sequence");
    assert!(
        last >= 110 && since < last,
        "{since} of {last}: a snapshot is on disk"
    );
    drop(served); // kill -9

    let (started, from_snapshot) = open_from(&data);
    let snapshot_seq = started
        .snapshot_seq
        .expect("the snapshot written while serving");
    assert!(snapshot_seq >= 40, "{started:?}");
    assert!(started.replayed > 0, "the scans after it: {started:?}");
    assert_eq!(from_snapshot, full_replay(&data));
    assert_eq!(
        from_snapshot.associations.len(),
        110,
        "every acknowledged one"
    );
}
