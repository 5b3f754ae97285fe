//! History rewritten without changing the state, against a real server and
//! its RocksDB files. Subscriber erasure (GDPR Art. 17): after `DELETE
//! /admin/v1/subscribers/...` no byte of the data dir and no line of an
//! export links the subscriber to its old clientids or client address;
//! everyone else's state is as before, `log verify` passes and a restarted
//! server agrees. Retention: `homecmp log compact --older-than` blanks what
//! ended before the cutoff, keeps the state, and frees disk space.

mod support;

use std::path::Path;
use std::process::Command;

use homecmp::store::{Event, EventLog, IdentitySource, Record, RevokeReason};
use homecmp::wire::SubscriberRef;
use reqwest::Method;
use support::{CODE, TARGET, TestServer};

const S: &str = "+447700900001";
const T: &str = "+447700900002";
const EXTRA: &str = "[auth]\non_mismatch = \"rebind\"\nassociations_per_minute = 100000\n\
                     max_clientids_per_subscriber = 1000\n[limits]\nfirst_scans_per_sec = 0\n\
                     shutdown_grace_ms = 200\n";

/// Every file under `dir`, concatenated: what a disk image would show.
fn all_bytes(dir: &Path) -> Vec<u8> {
    let mut bytes = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_dir() {
            bytes.extend(all_bytes(&entry.path()));
        } else {
            bytes.extend(std::fs::read(entry.path()).unwrap());
        }
    }
    bytes
}

/// The files under `dir` that hold `needle`.
fn files_with(dir: &Path, needle: &[u8]) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            found.extend(files_with(&path, needle));
        } else if contains(&std::fs::read(&path).unwrap(), needle) {
            found.push(path);
        }
    }
    found
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn export(data: &Path) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_homecmp"))
        .args(["log", "export", "--data-dir"])
        .arg(data)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_erased_subscriber_leaves_nothing_that_links_it_to_its_clientids() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = TestServer::in_dir(&data, EXTRA).await;
    server.put_code(CODE, TARGET).await;
    server.bind_session("127.1.0.1", S).await;
    server.bind_session("127.1.0.2", T).await;
    let s_client = server.client("http1", "127.1.0.1");
    let t_client = server.client("http1", "127.1.0.2");
    let wifi = server.client("http1", "127.2.0.1");
    let scan = |id: &str| format!("code={CODE}&clientid={id}");
    let unique = |name: &str| format!("{name}-{}", uuid::Uuid::new_v4());
    let (s1, s2, s3, t1, t2) = (
        unique("s1"),
        unique("s2"),
        unique("s3"),
        unique("t1"),
        unique("t2"),
    );
    for id in [&s1, &s2, &s3] {
        assert_eq!(server.resolve(&s_client, &scan(id)).await.0, 200);
    }
    for id in [&t1, &t2] {
        assert_eq!(server.resolve(&t_client, &scan(id)).await.0, 200);
    }
    // s3 moves from S to T, t2 from T to S (on_mismatch = "rebind").
    assert_eq!(server.resolve(&t_client, &scan(&s3)).await.0, 200);
    assert_eq!(server.resolve(&s_client, &scan(&t2)).await.0, 200);
    // The scan below can see what it looks for: before erasure, it is there.
    assert!(contains(&all_bytes(&data), s1.as_bytes()));

    let (status, body) = server
        .admin(Method::DELETE, &format!("/admin/v1/subscribers/{S}"), None)
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["associations_revoked"], 3, "{body}"); // s1, s2, t2
    assert_eq!(body["sessions_unbound"], 1, "{body}");
    let s_ref = body["subscriber"].as_str().unwrap().to_owned();

    // Everyone else as before; S's clientids are gone.
    assert_eq!(server.resolve(&wifi, &scan(&t1)).await.0, 200);
    assert_eq!(server.resolve(&wifi, &scan(&s3)).await.0, 200);
    for id in [&s1, &s2, &t2] {
        assert_eq!(server.resolve(&wifi, &scan(id)).await.0, 403, "{id}");
    }
    // And S, scanning again from its old address, is no longer known there.
    assert_eq!(server.resolve(&s_client, &scan(&s1)).await.0, 403);

    // No byte of the data dir links S to anything: not its keyed hash (hex
    // or raw), not the clientids only it had.
    let bytes = all_bytes(&data);
    let raw_ref: Vec<u8> = (0..32)
        .map(|i| u8::from_str_radix(&s_ref[2 * i..2 * i + 2], 16).unwrap())
        .collect();
    assert!(
        !contains(&bytes, &raw_ref),
        "S's keyed hash is still on disk: {:?}",
        files_with(&data, &raw_ref)
    );
    assert!(!contains(&bytes, s_ref.as_bytes()));
    for id in [&s1, &s2] {
        assert!(!contains(&bytes, id.as_bytes()), "{id} is still on disk");
    }
    // Nor any record: no event names S or its address 127.1.0.1.
    let log = EventLog::open_read_only(&data.join("events")).unwrap();
    for item in log.read_from(1) {
        let (seq, record) = item.unwrap();
        let text = format!("{:?}", record.event);
        assert!(!text.contains(&s_ref[..16]), "event {seq}: {text}");
        assert!(!text.contains("127.1.0.1"), "event {seq}: {text}");
        if let Event::AssociationRevoked { reason, .. } = record.event {
            assert_ne!(
                format!("{reason:?}"),
                "Erased",
                "erasure revocations are blanked too"
            );
        }
    }
    drop(log);
    let exported = export(&data);
    assert!(!exported.contains(&s_ref) && !exported.contains(&s1) && !exported.contains(&s2));
    assert!(exported.contains("\"kind\":\"redacted\""), "{exported}");

    // The log still verifies, and a restarted server has the same state.
    let verify = Command::new(env!("CARGO_BIN_EXE_homecmp"))
        .args(["log", "verify", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(verify.status.success(), "{verify:?}");
    // (A graceful stop writes the resolution counts: one event more.)
    let state = |c: homecmp::store::Counts| (c.associations, c.subscribers, c.codes);
    let before = state(server.running.app.store.index().counts());
    server.stop().await;
    let server = TestServer::in_dir(&data, EXTRA).await;
    assert_eq!(state(server.running.app.store.index().counts()), before);
    let index = server.running.app.store.index();
    assert!(index.association(&s3).is_some() && index.association(&t1).is_some());
    assert!(index.association(&s1).is_none() && index.association(&t2).is_none());
    server.stop().await;
}

fn homecmp_log(args: &[&str], data: &Path) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_homecmp"))
        .arg("log")
        .args(args)
        .arg("--data-dir")
        .arg(data)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

/// A data dir in `dir` holding a log as `log export` writes it, imported
/// (no HTTP, no fsync each): 12,000 associations of as many subscribers,
/// with UUID clientids; 11,600 ended 40 days ago, 200 ended today, 200
/// still live (23,800 records).
fn import_old_history(dir: &Path) -> std::path::PathBuf {
    let data = dir.join("data");
    let now = homecmp::clock::now_ms();
    let old = now - 40 * 24 * 3600 * 1000;
    let mut lines = Vec::new();
    let mut seq = 0;
    let mut line = |at_ms: u64, event: Event| {
        seq += 1;
        let record = Record {
            at_ms,
            event,
            actor: None,
        };
        let mut value = serde_json::to_value(&record).unwrap();
        value["seq"] = seq.into();
        lines.push(value.to_string());
    };
    for i in 0..12_000u32 {
        let clientid = uuid::Uuid::new_v4().to_string();
        let random = || uuid::Uuid::new_v4().simple().to_string();
        let subscriber = SubscriberRef::from_hex(&(random() + &random())).unwrap();
        line(
            old,
            Event::AssociationCreated {
                clientid: clientid.clone(),
                subscriber,
                source: IdentitySource::SessionBinding,
                client_addr: "127.1.0.9".parse().unwrap(),
            },
        );
        let ended_at = match i {
            0..11_600 => old + 1,
            11_600..11_800 => now,
            _ => continue,
        };
        line(
            ended_at,
            Event::AssociationRevoked {
                clientid,
                subscriber,
                reason: RevokeReason::Admin,
            },
        );
    }
    let file = dir.join("history.jsonl");
    std::fs::write(&file, lines.join("\n")).unwrap();
    let (ok, out) = homecmp_log(&["import", "--from", file.to_str().unwrap()], &data);
    assert!(ok, "{out}");
    data
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_blanks_old_ended_history_keeps_the_state_and_frees_disk() {
    let dir = tempfile::tempdir().unwrap();
    let data = import_old_history(dir.path());
    let (ok, state_before) = homecmp_log(&["replay", "--json"], &data);
    assert!(ok, "{state_before}");

    // Nothing ended 60 days ago: nothing to blank.
    let (ok, out) = homecmp_log(&["compact", "--older-than", "60d"], &data);
    assert!(ok && out.starts_with("blanked 0 of 23800 records"), "{out}");
    let (ok, out) = homecmp_log(&["compact", "--older-than", "30d"], &data);
    assert!(
        ok && out.starts_with("blanked 23200 of 23800 records"),
        "{out}"
    );
    let bytes = |text: &str, word: &str| -> u64 {
        let at = text.find(word).unwrap();
        text[..at]
            .split_whitespace()
            .last()
            .unwrap()
            .parse()
            .unwrap()
    };
    let (before, after) = (bytes(&out, "bytes on disk before"), bytes(&out, "after"));
    assert!(
        after * 2 < before,
        "disk space freed: {before} -> {after} bytes"
    );
    eprintln!("log compact: {before} -> {after} bytes on disk");

    let (ok, state_after) = homecmp_log(&["replay", "--json"], &data);
    assert!(ok);
    assert_eq!(state_after, state_before, "the same state");
    let (ok, out) = homecmp_log(&["verify"], &data);
    assert!(ok, "{out}");
    let log = EventLog::open_read_only(&data.join("events")).unwrap();
    assert_eq!(log.last_seq(), 23800, "the log stays contiguous");
    let kept = log
        .read_from(1)
        .filter(|item| !matches!(item.as_ref().unwrap().1.event, Event::Redacted { .. }))
        .count();
    assert_eq!(kept, 600, "200 live, 200 ended today, and their creations");
}

/// Retention online (`POST /admin/v1/retention`, a running server): the
/// same history, the same records blanked as `log compact` offline, the
/// state kept, the log verifying; a bad duration is 400.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_through_the_admin_api_blanks_what_log_compact_would() {
    let dir = tempfile::tempdir().unwrap();
    let data = import_old_history(dir.path());
    let server = TestServer::in_dir(&data, EXTRA).await;
    let counts = |s: &TestServer| {
        let c = s.running.app.store.index().counts();
        (c.associations, c.subscribers, c.codes)
    };
    let before = counts(&server);
    let retention = |older_than: &str| format!("/admin/v1/retention?older_than={older_than}");
    let (status, body) = server.admin(Method::POST, &retention("60d"), None).await;
    assert_eq!(
        (status, &body["records_rewritten"]),
        (200, &0.into()),
        "{body}"
    );
    let (status, body) = server.admin(Method::POST, &retention("30d"), None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["records_rewritten"], 23_200, "{body}");
    assert_eq!(body["records_scanned"], 23_800, "{body}");
    let (status, body) = server
        .admin(Method::POST, &retention("a while"), None)
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (400, Some("INVALID_QUERY"))
    );
    assert_eq!(counts(&server), before, "the same state");
    server.stop().await;
    let (ok, out) = homecmp_log(&["verify"], &data);
    assert!(ok, "{out}");
    let log = EventLog::open_read_only(&data.join("events")).unwrap();
    let kept = log
        .read_from(1)
        .filter(|item| !matches!(item.as_ref().unwrap().1.event, Event::Redacted { .. }))
        .count();
    // 600 as offline, and what the graceful stop wrote (its counts).
    assert!((600..=601).contains(&kept), "{kept}");
}

/// Rewrites never interleave (issue 24): erasures of the same and of other
/// subscribers at once, with creations going on, over a history where
/// clientids moved between the erased subscribers (each rebind record is
/// rewritten by two erasures: one after the other, each sees what the
/// other wrote; at once, one would overwrite the other and leave its
/// subscriber named). Then the log verifies, names no erased subscriber,
/// and a restarted server refuses every erased clientid and resolves every
/// other one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_erasures_and_creations_never_interleave_their_rewrites() {
    const SUBSCRIBERS: usize = 6;
    const ERASED: usize = 4;
    const CHAINS: usize = 48;
    let msisdn = |s: usize| format!("+4477009001{s:02}");
    let ip = |s: usize| format!("127.1.0.{}", 20 + s);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = TestServer::in_dir(&data, EXTRA).await;
    server.put_code(CODE, TARGET).await;
    // A longer log: each rewrite's two passes take a while.
    let codes: String = (0..4000)
        .map(|n| {
            format!(
                "{{\"code\":\"{}filler{n}\",\"target\":\"{TARGET}\"}}\n",
                support::PREFIX
            )
        })
        .collect();
    let (status, report) = server.import(codes, "", "application/x-ndjson").await;
    assert_eq!(status, 200, "{report}");
    let clients: Vec<_> = (0..SUBSCRIBERS)
        .map(|s| server.client("http2", &ip(s)))
        .collect();
    for s in 0..SUBSCRIBERS {
        server.bind_session(&ip(s), &msisdn(s)).await;
    }
    let scan = |id: &str| format!("code={CODE}&clientid={id}");
    // Chain k starts at subscriber k % 4 and moves to the next erased one
    // and the one after that: rebind records between erased subscribers.
    let mut kept = Vec::new();
    let mut erased_ids = Vec::new();
    for k in 0..CHAINS {
        let id = format!("chain-{k}");
        for hop in 0..3 {
            let s = (k + hop) % ERASED;
            let (status, body) = server.resolve(&clients[s], &scan(&id)).await;
            assert_eq!(status, 200, "{body}");
        }
        erased_ids.push(id);
    }
    for k in 0..8 {
        let id = format!("kept-{k}");
        let s = ERASED + k % (SUBSCRIBERS - ERASED);
        assert_eq!(server.resolve(&clients[s], &scan(&id)).await.0, 200);
        kept.push(id);
    }

    // The deterministic part: an erasure waits for the rewrite under way.
    let held = server.running.app.store.hold_rewrites().await;
    let waiting = {
        let url = format!(
            "http://{}/admin/v1/subscribers/{}",
            server.running.admin_addr,
            msisdn(0)
        );
        let token = server.running.admin_token.expose().clone();
        tokio::spawn(async move {
            reqwest::Client::new()
                .delete(url)
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
                .status()
        })
    };
    // The test is that nothing happens: time for an erasure that does not
    // wait to finish.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(
        !waiting.is_finished(),
        "an erasure ran beside another rewrite"
    );
    assert!(
        !server
            .running
            .app
            .store
            .index()
            .clientids_of(&subscriber_of(&server, &msisdn(0)))
            .is_empty(),
        "it has not started revoking either"
    );

    // The rest at once: every erased subscriber once more (0 twice, so the
    // same subscriber too), creations for the others meanwhile.
    let mut tasks = tokio::task::JoinSet::new();
    for s in (0..ERASED).chain([0, 1]) {
        let url = format!(
            "http://{}/admin/v1/subscribers/{}",
            server.running.admin_addr,
            msisdn(s)
        );
        let token = server.running.admin_token.expose().clone();
        tasks.spawn(async move {
            let status = reqwest::Client::new()
                .delete(url)
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
                .status();
            assert_eq!(status, 200);
        });
    }
    for k in 0..16 {
        let id = format!("kept-new-{k}");
        let s = ERASED + k % (SUBSCRIBERS - ERASED);
        let client = clients[s].clone();
        let url = server.url(&scan(&id));
        tasks.spawn(async move {
            let response = client.get(url).send().await.unwrap();
            assert_eq!(response.status(), 200);
        });
        kept.push(id);
    }
    drop(held);
    assert_eq!(waiting.await.unwrap(), 200);
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }

    let (verified, text) = homecmp_log(&["verify"], &data);
    assert!(verified, "{text}");
    let exported = export(&data);
    for s in 0..ERASED {
        let hex = subscriber_of(&server, &msisdn(s)).to_hex();
        assert!(
            !exported.contains(&hex),
            "subscriber {s} is still named in the log"
        );
    }
    for id in &erased_ids {
        assert!(
            !exported.contains(&format!("\"{id}\"")),
            "{id} is still in the log"
        );
    }
    server.stop().await;

    let server = TestServer::in_dir(&data, EXTRA).await;
    let wifi = server.client("http1", "127.2.0.1");
    for id in &erased_ids {
        let (status, body) = server.resolve(&wifi, &scan(id)).await;
        assert_eq!(
            (status, body["code"].as_str()),
            (403, Some("RETRY_ON_MNO_NETWORK")),
            "{id}"
        );
    }
    for id in &kept {
        let (status, body) = server.resolve(&wifi, &scan(id)).await;
        assert_eq!(
            (status, &body["association"]),
            (200, &"existing".into()),
            "{id}"
        );
    }
    server.stop().await;
}

/// The keyed hash the server gives `msisdn`.
fn subscriber_of(server: &TestServer, msisdn: &str) -> SubscriberRef {
    server
        .running
        .app
        .bindings
        .key()
        .subscriber_ref(&homecmp::wire::Msisdn::parse(msisdn).unwrap())
}
