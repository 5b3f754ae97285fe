//! `homecmp log stats|verify|export|replay`, run as the real binary on logs
//! written in-process through `Store`: the output a script reads, the exit
//! codes it relies on, what happens on a damaged log, and reading a log that
//! a live writer holds open.

use std::path::{Path, PathBuf};
use std::process::Command;

use homecmp::store::event::encode_value;
use homecmp::store::log::db_options;
use homecmp::store::{
    Associated, Event, IdentitySource, NewAssociation, Record, RevokeReason, Store,
};
use homecmp::wire::{ClientId, IndirectCode, SubscriberRef};
use serde_json::{Value, json};
use tempfile::TempDir;

/// 2023-11-14T22:13:20Z: the first event of the known log.
const T0: u64 = 1_700_000_000_000;
const MINUTE: u64 = 60_000;

fn at(minutes: u64) -> u64 {
    T0 + minutes * MINUTE
}

fn sub(n: u8) -> SubscriberRef {
    SubscriberRef([n; 32])
}

fn hex(n: u8) -> String {
    format!("{n:02x}").repeat(32)
}

fn code(text: &str) -> IndirectCode {
    IndirectCode::parse(text).unwrap()
}

fn new_association(id: &str, subscriber: SubscriberRef) -> NewAssociation {
    NewAssociation {
        clientid: ClientId::parse(id).unwrap(),
        subscriber,
        source: IdentitySource::SessionBinding,
        client_addr: "192.0.2.1".parse().unwrap(),
    }
}

fn events_dir(data_dir: &Path) -> PathBuf {
    data_dir.join(homecmp::LOG_DIR)
}

fn block_on<T>(future: impl Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(future)
}

/// Writes the ten events every test here knows by heart:
///
/// | seq | minute | event                                              |
/// |-----|--------|----------------------------------------------------|
/// | 1   | 0      | c-1 created for subscriber 1                       |
/// | 2   | 1      | c-2 created for subscriber 1                       |
/// | 3   | 2      | c-3 created for subscriber 2                       |
/// | 4   | 3      | code 2001000001abc registered                      |
/// | 5   | 4      | code 2001000001def registered                      |
/// | 6   | 5      | c-2 revoked (admin)                                |
/// | 7   | 6      | c-1 rebound to subscriber 2                        |
/// | 8   | 7      | code 2001000001def removed                         |
/// | 9   | 8      | c-3 revoked (superseded: subscriber 2 at cap 2)    |
/// | 10  | 8      | c-4 created for subscriber 2                       |
///
/// Final state: c-1 and c-4, both of subscriber 2; one code.
async fn write_known_events(store: &Store) {
    let created = |seq| Associated::Created {
        seq,
        superseded: vec![],
    };
    let cap = 10;
    let answer = store.associate(new_association("c-1", sub(1)), false, cap, at(0));
    assert_eq!(answer.await.unwrap(), created(1));
    let answer = store.associate(new_association("c-2", sub(1)), false, cap, at(1));
    assert_eq!(answer.await.unwrap(), created(2));
    let answer = store.associate(new_association("c-3", sub(2)), false, cap, at(2));
    assert_eq!(answer.await.unwrap(), created(3));
    let target = "https://example.org/abc";
    assert_eq!(
        store
            .register_code(&code("2001000001abc"), target, at(3))
            .await
            .unwrap(),
        4
    );
    let target = "https://example.org/def";
    assert_eq!(
        store
            .register_code(&code("2001000001def"), target, at(4))
            .await
            .unwrap(),
        5
    );
    let c2 = ClientId::parse("c-2").unwrap();
    assert!(store.revoke(&c2, at(5)).await.unwrap().is_some());
    let answer = store.associate(new_association("c-1", sub(2)), true, cap, at(6));
    assert!(matches!(
        answer.await.unwrap(),
        Associated::Rebound { seq: 7, .. }
    ));
    assert!(
        store
            .remove_code(&code("2001000001def"), at(7))
            .await
            .unwrap()
    );
    let answer = store.associate(new_association("c-4", sub(2)), false, 2, at(8));
    assert_eq!(
        answer.await.unwrap(),
        Associated::Created {
            seq: 10,
            superseded: vec![ClientId::parse("c-3").unwrap()]
        }
    );
}

/// A data dir holding the known log, with no handle left open on it.
fn known_log() -> TempDir {
    let dir = TempDir::new().unwrap();
    let store = Store::open(&events_dir(dir.path())).unwrap();
    block_on(write_known_events(&store));
    drop(store);
    dir
}

/// The known log as `homecmp log export` must print it, one value per line.
fn known_export() -> Vec<Value> {
    let line = |seq: u64, minute: u64, at: &str, event: Value| {
        let mut line = json!({ "seq": seq, "at": at, "at_ms": self::at(minute) });
        line.as_object_mut()
            .unwrap()
            .extend(event.as_object().unwrap().clone());
        line
    };
    let created = |clientid: &str, subscriber: u8| {
        json!({
            "kind": "association_created",
            "clientid": clientid,
            "subscriber": hex(subscriber),
            "source": "session_binding",
            "client_addr": "192.0.2.1",
        })
    };
    let revoked = |clientid: &str, subscriber: u8, reason: &str| {
        json!({
            "kind": "association_revoked",
            "clientid": clientid,
            "subscriber": hex(subscriber),
            "reason": reason,
        })
    };
    vec![
        line(1, 0, "2023-11-14T22:13:20.000Z", created("c-1", 1)),
        line(2, 1, "2023-11-14T22:14:20.000Z", created("c-2", 1)),
        line(3, 2, "2023-11-14T22:15:20.000Z", created("c-3", 2)),
        line(
            4,
            3,
            "2023-11-14T22:16:20.000Z",
            json!({
                "kind": "code_registered",
                "code": "2001000001abc",
                "target": "https://example.org/abc",
            }),
        ),
        line(
            5,
            4,
            "2023-11-14T22:17:20.000Z",
            json!({
                "kind": "code_registered",
                "code": "2001000001def",
                "target": "https://example.org/def",
            }),
        ),
        line(6, 5, "2023-11-14T22:18:20.000Z", revoked("c-2", 1, "admin")),
        line(
            7,
            6,
            "2023-11-14T22:19:20.000Z",
            json!({
                "kind": "association_rebound",
                "clientid": "c-1",
                "from": hex(1),
                "to": hex(2),
                "source": "session_binding",
                "client_addr": "192.0.2.1",
            }),
        ),
        line(
            8,
            7,
            "2023-11-14T22:20:20.000Z",
            json!({ "kind": "code_removed", "code": "2001000001def" }),
        ),
        line(
            9,
            8,
            "2023-11-14T22:21:20.000Z",
            revoked("c-3", 2, "superseded"),
        ),
        line(10, 8, "2023-11-14T22:21:20.000Z", created("c-4", 2)),
    ]
}

/// What a finished `homecmp` run left for its caller.
#[derive(Debug)]
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    /// Stdout split into lines of whitespace-separated words.
    fn words(&self) -> Vec<Vec<&str>> {
        self.stdout
            .lines()
            .map(|line| line.split_whitespace().collect())
            .collect()
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not one JSON value ({e}):\n{}", self.stdout))
    }

    fn json_lines(&self) -> Vec<Value> {
        self.stdout
            .lines()
            .map(|line| {
                serde_json::from_str(line)
                    .unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"))
            })
            .collect()
    }

    fn seqs(&self) -> Vec<u64> {
        self.json_lines()
            .iter()
            .map(|line| line["seq"].as_u64().unwrap())
            .collect()
    }

    #[track_caller]
    fn assert_ok(&self) -> &Self {
        assert_eq!(self.code, 0, "homecmp failed: {self:#?}");
        assert_eq!(self.stderr, "", "homecmp succeeded but wrote to stderr");
        self
    }
}

/// Runs `homecmp log <command> --data-dir <data_dir> <extra...>`.
fn homecmp_log(command: &str, data_dir: &Path, extra: &[&str]) -> Run {
    let output = Command::new(env!("CARGO_BIN_EXE_homecmp"))
        .args(["log", command, "--data-dir"])
        .arg(data_dir)
        .args(extra)
        .output()
        .expect("run homecmp");
    Run {
        code: output.status.code().expect("homecmp exited, not killed"),
        stdout: String::from_utf8(output.stdout).unwrap(),
        stderr: String::from_utf8(output.stderr).unwrap(),
    }
}

/// Opens the log with the raw RocksDB API, as a disk fault or a careless
/// hand would, and lets `damage` change it.
fn damage(data_dir: &Path, change: impl FnOnce(&rocksdb::DB)) {
    let db = homecmp::store::log::open_db(&db_options(), &events_dir(data_dir)).expect("raw open");
    change(&db);
    db.flush().unwrap();
}

/// Checks that `verify` refuses the log, naming `needle` on stderr, and that
/// the server-side open refuses it too.
#[track_caller]
fn assert_refused(data_dir: &Path, needle: &str) {
    let verify = homecmp_log("verify", data_dir, &[]);
    assert_eq!(verify.code, 1, "verify must fail: {verify:#?}");
    assert!(
        verify.stderr.starts_with("homecmp log: ") && verify.stderr.contains(needle),
        "verify must name {needle:?}: {verify:#?}"
    );
    assert!(!verify.stdout.contains("ok"), "{verify:#?}");

    match Store::open(&events_dir(data_dir)) {
        Ok(store) => panic!(
            "the store opened a damaged log (counts {:?})",
            store.index().counts()
        ),
        Err(e) => assert!(
            e.to_string().contains(needle),
            "the store's error must name {needle:?}: {e}"
        ),
    }
}

// ------------------------------------------------------------------- stats

#[test]
fn stats_counts_the_known_log() {
    let dir = known_log();
    let run = homecmp_log("stats", dir.path(), &[]);
    run.assert_ok();
    let words = run.words();
    let line = |first: &str| {
        words
            .iter()
            .find(|line| line.first() == Some(&first))
            .unwrap_or_else(|| panic!("no {first:?} line in:\n{}", run.stdout))
            .clone()
    };
    assert_eq!(line("events"), ["events", "10"]);
    assert_eq!(line("sequence"), ["sequence", "1", "..", "10"]);
    assert_eq!(
        line("time"),
        [
            "time",
            "2023-11-14T22:13:20.000Z",
            "..",
            "2023-11-14T22:21:20.000Z"
        ]
    );
    assert_eq!(line("disk")[..2], ["disk", "bytes"]);
    assert_eq!(line("association_created"), ["association_created", "4"]);
    assert_eq!(line("association_revoked"), ["association_revoked", "2"]);
    assert_eq!(line("association_rebound"), ["association_rebound", "1"]);
    assert_eq!(line("code_registered"), ["code_registered", "2"]);
    assert_eq!(line("code_removed"), ["code_removed", "1"]);
}

#[test]
fn stats_json_has_stable_fields() {
    let dir = known_log();
    let run = homecmp_log("stats", dir.path(), &["--json"]);
    let mut stats = run.assert_ok().json();
    let disk_bytes = stats["disk_bytes"].take();
    assert_eq!(
        stats,
        json!({
            "events": 10,
            "first_seq": 1,
            "last_seq": 10,
            "first_at": "2023-11-14T22:13:20.000Z",
            "last_at": "2023-11-14T22:21:20.000Z",
            "disk_bytes": null,
            "by_kind": {
                "association_created": 4,
                "association_revoked": 2,
                "association_rebound": 1,
                "code_registered": 2,
                "code_removed": 1,
            },
        })
    );
    assert!(
        disk_bytes.as_u64().is_some_and(|bytes| bytes > 0),
        "a log of 10 events takes some room on disk, stats says {disk_bytes}"
    );
}

#[test]
fn stats_of_an_empty_log() {
    let dir = TempDir::new().unwrap();
    drop(Store::open(&events_dir(dir.path())).unwrap());
    let run = homecmp_log("stats", dir.path(), &["--json"]);
    let stats = run.assert_ok().json();
    assert_eq!(stats["events"], 0);
    assert_eq!(stats["first_seq"], Value::Null);
    assert_eq!(stats["by_kind"], json!({}));
    homecmp_log("verify", dir.path(), &[]).assert_ok();
}

// ------------------------------------------------------------------ verify

#[test]
fn verify_accepts_a_sound_log() {
    let dir = known_log();
    let run = homecmp_log("verify", dir.path(), &[]);
    assert_eq!(run.assert_ok().stdout, "ok: 10 events, last sequence 10\n");
}

// ------------------------------------------------------------------ export

#[test]
fn export_writes_one_json_line_per_event() {
    let dir = known_log();
    let run = homecmp_log("export", dir.path(), &[]);
    assert_eq!(run.assert_ok().json_lines(), known_export());
}

#[test]
fn export_takes_an_inclusive_range() {
    let dir = known_log();
    let range = |extra: &[&str]| homecmp_log("export", dir.path(), extra).assert_ok().seqs();
    assert_eq!(range(&["--from", "4", "--to", "6"]), [4, 5, 6]);
    assert_eq!(range(&["--from", "9"]), [9, 10]);
    assert_eq!(range(&["--to", "2"]), [1, 2]);
    assert_eq!(range(&["--from", "7", "--to", "7"]), [7]);
    assert!(range(&["--from", "11"]).is_empty());
    assert!(range(&["--from", "6", "--to", "5"]).is_empty());

    let run = homecmp_log("export", dir.path(), &["--from", "4", "--to", "6"]);
    assert_eq!(run.json_lines(), known_export()[3..6]);
}

// ------------------------------------------------------------------ replay

#[test]
fn replay_summarises_the_state_at_a_sequence_number() {
    let dir = known_log();
    let run = homecmp_log("replay", dir.path(), &["--until", "3"]);
    assert_eq!(
        run.assert_ok().words(),
        [
            vec!["events", "applied", "3"],
            vec!["last", "sequence", "3"],
            vec!["associations", "3"],
            vec!["subscribers", "2"],
            vec!["codes", "0"],
        ]
    );

    let summary = |extra: &[&str]| homecmp_log("replay", dir.path(), extra).assert_ok().json();
    let state = |events: u64, associations: u64, subscribers: u64, codes: u64| {
        json!({
            "events": events,
            "counts": {
                "associations": associations,
                "subscribers": subscribers,
                "codes": codes,
                "last_seq": events,
            },
        })
    };
    assert_eq!(summary(&["--until", "6", "--json"]), state(6, 2, 2, 2));
    assert_eq!(summary(&["--until", "7", "--json"]), state(7, 2, 1, 2));
    assert_eq!(summary(&["--json"]), state(10, 2, 1, 1));
    assert_eq!(summary(&["--until", "99", "--json"]), state(10, 2, 1, 1));
}

#[test]
fn replay_summarises_the_state_at_a_time() {
    let dir = known_log();
    let summary = |until: &str| {
        let run = homecmp_log("replay", dir.path(), &["--until", until, "--json"]);
        let summary = run.assert_ok().json();
        let counts = &summary["counts"];
        [
            summary["events"].as_u64().unwrap(),
            counts["associations"].as_u64().unwrap(),
            counts["subscribers"].as_u64().unwrap(),
            counts["codes"].as_u64().unwrap(),
        ]
    };
    // Event 5 is at 22:17:20, event 6 at 22:18:20: the bound is inclusive.
    assert_eq!(summary("2023-11-14T22:17:20Z"), [5, 3, 2, 2]);
    assert_eq!(summary("2023-11-14T22:17:20.000Z"), [5, 3, 2, 2]);
    assert_eq!(summary("2023-11-14T22:18:19Z"), [5, 3, 2, 2]);
    assert_eq!(summary("2023-11-14T22:18:20Z"), [6, 2, 2, 2]);
    assert_eq!(summary("2023-11-14T22:00:00Z"), [0, 0, 0, 0]);
    assert_eq!(summary("2030-01-01T00:00:00Z"), [10, 2, 1, 1]);
}

#[test]
fn replay_refuses_a_bound_that_is_neither_seq_nor_time() {
    let dir = known_log();
    let run = homecmp_log("replay", dir.path(), &["--until", "yesterday"]);
    assert_eq!(run.code, 64, "a usage error: {run:#?}");
    assert!(
        run.stderr
            .contains("neither a sequence number nor an RFC 3339 time"),
        "{run:#?}"
    );
    assert_eq!(run.stdout, "");
}

// --------------------------------------------------------- damaged logs

#[test]
fn an_undecodable_record_is_named_and_refused() {
    let dir = known_log();
    damage(dir.path(), |db| {
        db.put(4u64.to_be_bytes(), b"\x01garbage").unwrap()
    });

    assert_refused(dir.path(), "sequence 4");
    // Export writes every good record before the bad one, then fails.
    let export = homecmp_log("export", dir.path(), &[]);
    assert_eq!(export.code, 1, "{export:#?}");
    assert_eq!(export.seqs(), [1, 2, 3]);
    assert!(export.stderr.contains("sequence 4"), "{export:#?}");
    let stats = homecmp_log("stats", dir.path(), &[]);
    assert_eq!(stats.code, 1, "{stats:#?}");
    assert!(stats.stderr.contains("sequence 4"), "{stats:#?}");
}

#[test]
fn reads_that_end_before_a_damaged_record_succeed() {
    let dir = known_log();
    damage(dir.path(), |db| {
        db.put(4u64.to_be_bytes(), b"\x01garbage").unwrap()
    });
    // An SRE rebuilding the state as it was before the damage can.
    let replay = homecmp_log("replay", dir.path(), &["--until", "3", "--json"]);
    replay.assert_ok();
    let summary: Value = serde_json::from_str(&replay.stdout).unwrap();
    assert_eq!(summary["events"], 3, "{replay:#?}");
    let export = homecmp_log("export", dir.path(), &["--to", "3"]);
    export.assert_ok();
    assert_eq!(export.seqs(), [1, 2, 3]);
    // One step further reaches the damage.
    assert_eq!(homecmp_log("replay", dir.path(), &["--until", "4"]).code, 1);
}

#[test]
fn an_unknown_format_version_is_named_and_refused() {
    let dir = known_log();
    damage(dir.path(), |db| {
        let mut value = db.get(7u64.to_be_bytes()).unwrap().expect("record 7");
        value[0] = 0x7f;
        db.put(7u64.to_be_bytes(), value).unwrap();
    });
    assert_refused(dir.path(), "sequence 7");
}

#[test]
fn a_truncated_record_is_named_and_refused() {
    let dir = known_log();
    damage(dir.path(), |db| {
        let value = db.get(2u64.to_be_bytes()).unwrap().expect("record 2");
        db.put(2u64.to_be_bytes(), &value[..value.len() - 5])
            .unwrap();
    });
    assert_refused(dir.path(), "sequence 2");
}

#[test]
fn a_gap_in_the_sequence_is_named_and_refused() {
    let dir = known_log();
    damage(dir.path(), |db| db.delete(5u64.to_be_bytes()).unwrap());
    assert_refused(dir.path(), "expected 5, found 6");
}

#[test]
fn a_gap_after_the_last_record_is_named_and_refused() {
    let dir = known_log();
    let stray = Record {
        at_ms: at(9),
        actor: None,
        event: Event::CodeRemoved {
            code: "2001000001abc".into(),
        },
    };
    damage(dir.path(), |db| {
        db.put(13u64.to_be_bytes(), encode_value(&stray).unwrap())
            .unwrap()
    });
    assert_refused(dir.path(), "expected 11, found 13");
}

#[test]
fn a_log_that_does_not_start_at_one_is_refused() {
    let dir = known_log();
    damage(dir.path(), |db| db.delete(1u64.to_be_bytes()).unwrap());
    assert_refused(dir.path(), "expected 1, found 2");
}

#[test]
fn an_event_that_does_not_apply_is_named_and_refused() {
    let dir = known_log();
    // Decodes fine, but c-2 was revoked at 6: the log contradicts itself.
    let contradiction = Record {
        at_ms: at(9),
        actor: None,
        event: Event::AssociationRevoked {
            clientid: "c-2".into(),
            subscriber: sub(1),
            reason: RevokeReason::Admin,
        },
    };
    damage(dir.path(), |db| {
        db.put(11u64.to_be_bytes(), encode_value(&contradiction).unwrap())
            .unwrap()
    });
    assert_refused(dir.path(), "event 11");
    // The records themselves are fine: export shows them all.
    let export = homecmp_log("export", dir.path(), &[]);
    assert_eq!(export.assert_ok().seqs(), (1..=11).collect::<Vec<_>>());
}

// ------------------------------------------------------------------ repair

/// The known log plus what a torn write leaves: event 11 that does not
/// apply (c-4 created twice), then a record 12 that does not decode.
fn contradicted_log() -> TempDir {
    let dir = known_log();
    let twice = Record {
        at_ms: at(9),
        actor: None,
        event: Event::AssociationCreated {
            clientid: "c-4".into(),
            subscriber: sub(2),
            source: IdentitySource::SessionBinding,
            client_addr: "192.0.2.1".parse().unwrap(),
        },
    };
    damage(dir.path(), |db| {
        db.put(11u64.to_be_bytes(), encode_value(&twice).unwrap())
            .unwrap();
        db.put(12u64.to_be_bytes(), b"\x01garbage").unwrap();
    });
    dir
}

#[test]
fn repair_keeps_a_copy_and_cuts_after_the_last_consistent_event() {
    let dir = contradicted_log();
    assert_refused(dir.path(), "event 11");
    let repair = homecmp_log("repair", dir.path(), &[]);
    repair.assert_ok();
    assert!(
        repair
            .stdout
            .contains("kept events 1..=10; removed 2 records"),
        "{repair:#?}"
    );
    assert!(
        repair.stdout.contains("c-4 is already associated"),
        "{repair:#?}"
    );
    homecmp_log("verify", dir.path(), &[]).assert_ok();
    let store = Store::open(&events_dir(dir.path())).expect("the server's open succeeds");
    assert_eq!(store.log().last_seq(), 10);
    drop(store);
    // The copy is the log as it was: still 12 records, still refused.
    let backups: Vec<_> = std::fs::read_dir(dir.path().join("backups"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .collect();
    assert_eq!(backups.len(), 1, "{backups:?}");
    let copy = TempDir::new().unwrap();
    std::fs::rename(&backups[0], events_dir(copy.path())).unwrap();
    let export = homecmp_log("export", copy.path(), &["--to", "11"]);
    assert_eq!(export.assert_ok().seqs(), (1..=11).collect::<Vec<_>>());
    assert_refused(copy.path(), "event 11");
    // A sound log is left alone.
    let again = homecmp_log("repair", dir.path(), &[]);
    assert!(
        again.assert_ok().stdout.contains("nothing cut"),
        "{again:#?}"
    );
}

#[test]
fn repair_until_cuts_earlier_but_never_past_the_damage() {
    let dir = contradicted_log();
    let past = homecmp_log("repair", dir.path(), &["--until", "11"]);
    assert_eq!(past.code, 74, "{past:#?}");
    assert!(
        past.stderr.contains("past the last consistent event, 10"),
        "{past:#?}"
    );
    let repair = homecmp_log("repair", dir.path(), &["--until", "7"]);
    repair.assert_ok();
    let export = homecmp_log("export", dir.path(), &[]);
    assert_eq!(export.assert_ok().seqs(), (1..=7).collect::<Vec<_>>());
}

#[test]
fn repair_refuses_a_log_a_server_holds() {
    let dir = known_log();
    let store = Store::open(&events_dir(dir.path())).unwrap();
    let repair = homecmp_log("repair", dir.path(), &[]);
    assert_eq!(repair.code, 74, "{repair:#?}");
    assert!(repair.stderr.contains("still running"), "{repair:#?}");
    drop(store);
}

// ---------------------------------------------------- no log, live writer

#[test]
fn a_missing_data_dir_exits_66() {
    let dir = TempDir::new().unwrap();
    let missing = dir.path().join("nowhere");
    for command in ["stats", "verify", "export", "replay"] {
        for data_dir in [&missing, &dir.path().to_path_buf()] {
            let run = homecmp_log(command, data_dir, &[]);
            assert_eq!(run.code, 66, "{command} on {data_dir:?}: {run:#?}");
            assert!(run.stderr.starts_with("homecmp log: "), "{run:#?}");
            assert_eq!(run.stdout, "");
        }
    }
    assert!(
        !missing.exists(),
        "a read-only command created the data dir"
    );
    assert!(
        !events_dir(dir.path()).exists(),
        "a read-only command created the log"
    );
}

#[test]
fn the_log_is_readable_beside_a_live_writer() {
    let dir = TempDir::new().unwrap();
    let store = Store::open(&events_dir(dir.path())).unwrap();
    block_on(write_known_events(&store));

    // The store still holds the log open for writing.
    let stats = homecmp_log("stats", dir.path(), &["--json"])
        .assert_ok()
        .json();
    assert_eq!(
        (&stats["events"], &stats["last_seq"]),
        (&json!(10), &json!(10))
    );
    let verify = homecmp_log("verify", dir.path(), &[]);
    assert_eq!(
        verify.assert_ok().stdout,
        "ok: 10 events, last sequence 10\n"
    );

    // What the writer adds later is seen by the next command.
    let answer = block_on(store.associate(new_association("c-5", sub(3)), false, 10, at(9)));
    assert!(matches!(
        answer.unwrap(),
        Associated::Created { seq: 11, .. }
    ));
    let export = homecmp_log("export", dir.path(), &["--from", "11"]);
    let lines = export.assert_ok().json_lines();
    assert_eq!(lines.len(), 1);
    assert_eq!(
        (&lines[0]["seq"], &lines[0]["clientid"]),
        (&json!(11), &json!("c-5"))
    );
    let replay = homecmp_log("replay", dir.path(), &["--json"])
        .assert_ok()
        .json();
    assert_eq!(replay["counts"]["associations"], 3);

    // And the writer goes on writing.
    let revoked = block_on(store.revoke(&ClientId::parse("c-5").unwrap(), at(10)));
    assert!(revoked.unwrap().is_some());
    assert_eq!(store.log().last_seq(), 12);
}
