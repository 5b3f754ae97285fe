//! `homecmp backup`, `homecmp restore` and `homecmp log import`, run as an
//! operator runs them (the binary), against a real server's data dir: a
//! backup taken under load restores every association acknowledged before
//! it began, and a server starts on the restored dir; an export imported
//! into an empty data dir is the same log, record for record.

mod support;

use std::path::Path;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use homecmp::store::EventLog;
use reqwest::Method;
use support::{CODE, TARGET, TestServer, eventually};

/// Creations unthrottled and uncapped: the load makes hundreds.
const EXTRA: &str = "[auth]\nassociations_per_minute = 1000000\nmax_clientids_per_subscriber = 100000\n\
                     [limits]\nfirst_scans_per_sec = 0\nshutdown_grace_ms = 200\n";

/// How long the load may take to make progress.
const WITHIN: Duration = Duration::from_secs(20);

/// `homecmp <args...>`, as an operator types it.
fn homecmp(args: &[&dyn AsRef<std::ffi::OsStr>]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_homecmp"))
        .args(args.iter().map(|a| a.as_ref()))
        .output()
        .expect("run homecmp")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[track_caller]
fn assert_success(output: &Output) {
    assert!(
        output.status.success(),
        "stdout: {}\nstderr: {}",
        text(&output.stdout),
        text(&output.stderr)
    );
}

fn records(data_dir: &Path) -> Vec<(u64, homecmp::store::Record)> {
    let log = EventLog::open_read_only(&data_dir.join("events")).unwrap();
    log.read_from(1).map(Result::unwrap).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_under_load_restores_every_association_acknowledged_before_it() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = Arc::new(TestServer::in_dir(&data, EXTRA).await);
    server.put_code(CODE, TARGET).await;
    server.bind_session("127.1.0.1", "+447700900001").await;

    let acknowledged = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let load = tokio::spawn({
        let (server, acknowledged, stop) = (server.clone(), acknowledged.clone(), stop.clone());
        async move {
            let client = server.client("http2", "127.1.0.1");
            for i in 0..20_000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let id = format!("load-{i}");
                let (s, body) = server
                    .resolve(&client, &format!("code={CODE}&clientid={id}"))
                    .await;
                if s == 200 && body["association"] == "created" {
                    acknowledged.lock().unwrap().push(id);
                }
            }
        }
    });
    let count = || acknowledged.lock().unwrap().len();
    eventually("load under way before the backup", WITHIN, async || {
        count() > 20
    })
    .await;
    let before: Vec<String> = acknowledged.lock().unwrap().clone();
    let backup_dir = dir.path().join("backup");
    let output = tokio::task::spawn_blocking({
        let (data, backup_dir) = (data.clone(), backup_dir.clone());
        move || homecmp(&[&"backup", &"--data-dir", &data, &"--to", &backup_dir])
    })
    .await
    .unwrap();
    eventually("load after the backup began", WITHIN, async || {
        count() > before.len()
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    load.await.unwrap();
    assert_success(&output);
    // A live server holds RocksDB's lock: the backup copies.
    assert!(
        text(&output.stdout).contains(" by copy "),
        "{}",
        text(&output.stdout)
    );
    let during = acknowledged.lock().unwrap().len();
    assert!(
        before.len() > 20 && during > before.len(),
        "load before ({}) and during ({during}) the backup",
        before.len()
    );

    let restored = dir.path().join("restored");
    let output = homecmp(&[&"restore", &"--from", &backup_dir, &"--data-dir", &restored]);
    assert_success(&output);
    let output = homecmp(&[&"log", &"verify", &"--data-dir", &restored]);
    assert_success(&output);
    // A second restore into the same dir is refused, and changes nothing.
    let again = homecmp(&[&"restore", &"--from", &backup_dir, &"--data-dir", &restored]);
    assert!(!again.status.success());
    assert!(text(&again.stderr).contains("already has an event log"));

    Arc::into_inner(server).expect("load done").stop().await;
    // The server stopped: the backup is a RocksDB checkpoint.
    let output = homecmp(&[
        &"backup",
        &"--data-dir",
        &data,
        &"--to",
        &dir.path().join("backup-stopped"),
    ]);
    assert_success(&output);
    assert!(text(&output.stdout).contains(" by checkpoint "));

    // The subscriber key came along: the restored server knows its subscribers.
    assert_eq!(
        std::fs::read(data.join("subscriber.key")).unwrap(),
        std::fs::read(restored.join("subscriber.key")).unwrap()
    );
    let server = TestServer::in_dir(&restored, EXTRA).await;
    let index = server.running.app.store.index();
    for id in &before {
        assert!(
            index.association(id).is_some(),
            "{id} acknowledged before the backup, missing"
        );
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_imported_into_an_empty_data_dir_is_the_same_log() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = TestServer::in_dir(&data, EXTRA).await;
    server.put_code(CODE, TARGET).await;
    server
        .put_code("2001000001other", "https://example.org/other")
        .await;
    server.bind_session("127.1.0.1", "+447700900001").await;
    let client = server.client("http1", "127.1.0.1");
    for id in ["app-1", "app-2", "app-3"] {
        let (s, _) = server
            .resolve(&client, &format!("code={CODE}&clientid={id}"))
            .await;
        assert_eq!(s, 200);
    }
    let (s, _) = server
        .admin(Method::DELETE, "/admin/v1/associations/app-2", None)
        .await;
    assert_eq!(s, 200);
    let (s, _) = server
        .admin(Method::DELETE, "/admin/v1/codes/2001000001other", None)
        .await;
    assert_eq!(s, 200);
    server.stop().await;

    let export = homecmp(&[&"log", &"export", &"--data-dir", &data]);
    assert_success(&export);
    let file = dir.path().join("export.jsonl");
    std::fs::write(&file, &export.stdout).unwrap();

    let imported = dir.path().join("imported");
    let output = homecmp(&[
        &"log",
        &"import",
        &"--data-dir",
        &imported,
        &"--from",
        &file,
    ]);
    assert_success(&output);
    assert_eq!(
        records(&imported),
        records(&data),
        "the same log, record for record"
    );
    let replay = |d: &Path| {
        let out = homecmp(&[&"log", &"replay", &"--json", &"--data-dir", &d]);
        assert_success(&out);
        out.stdout
    };
    assert_eq!(replay(&imported), replay(&data), "the same state");

    // Into a data dir that has a log: refused.
    let again = homecmp(&[
        &"log",
        &"import",
        &"--data-dir",
        &imported,
        &"--from",
        &file,
    ]);
    assert!(!again.status.success());
    assert!(text(&again.stderr).contains("already has an event log"));

    // Lines out of order: refused naming the line, and no log is left behind.
    let lines: Vec<&str> = std::str::from_utf8(&export.stdout)
        .unwrap()
        .lines()
        .collect();
    let mut swapped = lines.clone();
    swapped.swap(1, 2);
    let bad = dir.path().join("bad");
    let refused = |lines: &[&str], why: &str| {
        std::fs::write(&file, lines.join("\n")).unwrap();
        let output = homecmp(&[&"log", &"import", &"--data-dir", &bad, &"--from", &file]);
        assert!(!output.status.success());
        assert!(
            text(&output.stderr).contains(why),
            "{}",
            text(&output.stderr)
        );
        assert!(!bad.join("events").exists());
    };
    refused(&swapped, "line 2: sequence 3 where 2 comes next");
    // An event that does not apply (app-2 revoked twice): refused too.
    let mut twice: Vec<&str> = lines.clone();
    let revoke = lines
        .iter()
        .position(|l| l.contains("association_revoked"))
        .unwrap();
    let repeated = lines[revoke].replacen(
        &format!("\"seq\":{}", revoke + 1),
        &format!("\"seq\":{}", lines.len() + 1),
        1,
    );
    twice.push(&repeated);
    refused(&twice, "does not apply");
}
