//! The event log and the store on a real RocksDB in a temp dir: append and
//! read back, contiguous sequence numbers under concurrency, group commit,
//! the store's association rules, and that a reopen rebuilds the same state.

use std::path::PathBuf;

use homecmp::store::index::Reader;
use homecmp::store::{
    self, Associated, Association, CodeEntry, Counts, Event, EventLog, IdentitySource, Index,
    LogError, NewAssociation, Record, RevokeReason, Seq, Store,
};
use homecmp::wire::{ClientId, IndirectCode, SubscriberRef};
use tempfile::TempDir;
use tokio::task::JoinSet;

/// Unix milliseconds of the first event in these tests (2023-11-14T22:13:20Z).
const NOW: u64 = 1_700_000_000_000;
/// A cap no test reaches unless it means to.
const CAP: usize = 100;

/// A fresh data dir (deleted on drop) and the path of its event log.
fn log_dir() -> (TempDir, PathBuf) {
    let dir = TempDir::new().expect("create a temp dir");
    let path = dir.path().join(homecmp::LOG_DIR);
    (dir, path)
}

/// A record that says which appender wrote it, so a test can check that
/// each sequence number holds what its appender sent.
fn tagged(task: u64, n: u64, part: u64) -> Record {
    Record {
        at_ms: NOW + n,
        actor: None,
        event: Event::CodeRegistered {
            code: format!("2001000001t{task}n{n}p{part}"),
            target: format!("https://example.org/{task}/{n}/{part}"),
        },
    }
}

fn numbered(n: u64) -> Record {
    tagged(0, n, 0)
}

fn read_all(log: &EventLog) -> Vec<(Seq, Record)> {
    log.read_from(0)
        .collect::<Result<_, _>>()
        .expect("the log reads back cleanly")
}

fn sub(n: u8) -> SubscriberRef {
    SubscriberRef([n; 32])
}

fn clientid(text: &str) -> ClientId {
    ClientId::parse(text).expect("a valid clientid")
}

fn new_association(id: &str, subscriber: SubscriberRef) -> NewAssociation {
    NewAssociation {
        clientid: clientid(id),
        subscriber,
        source: IdentitySource::SessionBinding,
        client_addr: "192.0.2.7".parse().unwrap(),
    }
}

fn record_at(log: &EventLog, seq: Seq) -> Record {
    let (found, record) = log
        .read_from(seq)
        .next()
        .expect("a record at that sequence")
        .expect("it reads back");
    assert_eq!(found, seq);
    record
}

// ---------------------------------------------------------------- event log

#[tokio::test]
async fn appended_records_read_back_in_order() {
    let (_dir, path) = log_dir();
    let log = EventLog::open(&path).unwrap();
    assert_eq!(log.last_seq(), 0);
    assert!(read_all(&log).is_empty());

    assert_eq!(log.append(vec![numbered(1)]).await.unwrap(), 1);
    assert_eq!(log.append(vec![numbered(2)]).await.unwrap(), 2);
    let batch: Vec<Record> = (3..=6).map(numbered).collect();
    assert_eq!(
        log.append(batch).await.unwrap(),
        3,
        "a batch answers with the sequence of its first record"
    );
    assert_eq!(log.last_seq(), 6);

    let expected: Vec<(Seq, Record)> = (1..=6).map(|n| (n, numbered(n))).collect();
    assert_eq!(read_all(&log), expected);
    let tail: Vec<Seq> = log.read_from(4).map(|item| item.unwrap().0).collect();
    assert_eq!(tail, [4, 5, 6]);
}

#[tokio::test]
async fn reopen_keeps_the_records_and_continues_the_sequence() {
    let (_dir, path) = log_dir();
    let log = EventLog::open(&path).unwrap();
    log.append((1..=5).map(numbered).collect()).await.unwrap();
    drop(log);

    let log = EventLog::open(&path).unwrap();
    assert_eq!(log.last_seq(), 5);
    assert_eq!(
        log.append(vec![numbered(6)]).await.unwrap(),
        6,
        "sequence numbers continue and are never reused"
    );
    drop(log);

    let log = EventLog::open_read_only(&path).unwrap();
    assert_eq!(log.last_seq(), 6);
    let expected: Vec<(Seq, Record)> = (1..=6).map(|n| (n, numbered(n))).collect();
    assert_eq!(read_all(&log), expected);
    assert!(
        matches!(log.append(vec![numbered(7)]).await, Err(LogError::Closed)),
        "a read-only handle refuses appends"
    );
}

/// Runs `tasks` appenders of `appends` appends each (every fifth a batch of
/// three records) and returns every (seq, record) they were answered with,
/// in sequence order.
async fn append_concurrently(log: &EventLog, tasks: u64, appends: u64) -> Vec<(Seq, Record)> {
    let mut running = JoinSet::new();
    for task in 0..tasks {
        let log = log.clone();
        running.spawn(async move {
            let mut answered = Vec::new();
            for n in 0..appends {
                let parts = if n % 5 == 0 { 3 } else { 1 };
                let records: Vec<Record> = (0..parts).map(|part| tagged(task, n, part)).collect();
                let first = log.append(records.clone()).await.unwrap();
                answered.extend((first..).zip(records));
            }
            answered
        });
    }
    let mut all = Vec::new();
    while let Some(answered) = running.join_next().await {
        all.extend(answered.unwrap());
    }
    all.sort_by_key(|(seq, _)| *seq);
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_appenders_get_distinct_contiguous_sequences() {
    let (_dir, path) = log_dir();
    let log = EventLog::open(&path).unwrap();
    let appended = append_concurrently(&log, 64, 50).await;

    let total = appended.len() as u64;
    assert_eq!(total, 64 * (40 + 10 * 3));
    let seqs: Vec<Seq> = appended.iter().map(|(seq, _)| *seq).collect();
    assert_eq!(
        seqs,
        (1..=total).collect::<Vec<_>>(),
        "every record got its own sequence number, with no gap"
    );
    assert_eq!(log.last_seq(), total);
    assert_eq!(
        read_all(&log),
        appended,
        "each sequence number holds what its appender sent"
    );
}

/// `Cumulative WAL: N writes, M syncs, ...` from RocksDB's own statistics.
fn wal_writes_and_syncs(log: &EventLog) -> (u64, u64) {
    let stats = log
        .raw()
        .property_value("rocksdb.dbstats")
        .unwrap()
        .expect("RocksDB keeps DB stats");
    let line = stats
        .lines()
        .find(|line| line.starts_with("Cumulative WAL:"))
        .unwrap_or_else(|| panic!("no WAL line in:\n{stats}"));
    // RocksDB abbreviates large counts: 12K, 3M.
    let count = |word: &str| -> u64 {
        let (digits, scale) = match word.strip_suffix('K') {
            Some(d) => (d, 1_000),
            None => match word.strip_suffix('M') {
                Some(d) => (d, 1_000_000),
                None => (word, 1),
            },
        };
        digits.parse::<u64>().expect("a count") * scale
    };
    let words: Vec<&str> = line.split_whitespace().collect();
    // ["Cumulative", "WAL:", N, "writes,", M, "syncs,", ...]
    assert_eq!((words[3], words[5]), ("writes,", "syncs,"), "{line}");
    (count(words[2]), count(words[4]))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_appends_share_one_write_and_one_fsync() {
    let (_dir, path) = log_dir();
    let log = EventLog::open(&path).unwrap();
    let appends = 64 * 50;
    append_concurrently(&log, 64, 50).await;

    let (writes, syncs) = wal_writes_and_syncs(&log);
    assert!(
        writes >= 1 && syncs >= 1,
        "appends are synced: {writes} writes, {syncs} syncs"
    );
    assert!(
        writes < appends && syncs < appends,
        "{appends} concurrent appends took {writes} WAL writes and {syncs} syncs: no group commit"
    );
    println!("{appends} appends: {writes} WAL writes, {syncs} syncs");
}

// ------------------------------------------------------------------- store

#[tokio::test]
async fn associate_creates_once() {
    let (_dir, path) = log_dir();
    let store = Store::open(&path).unwrap();

    let created = store
        .associate(new_association("mcc-1", sub(1)), false, CAP, NOW)
        .await
        .unwrap();
    assert_eq!(
        created,
        Associated::Created {
            seq: 1,
            superseded: vec![]
        }
    );
    let standing = Association {
        subscriber: sub(1),
        seq: 1,
    };
    assert_eq!(store.index().association("mcc-1"), Some(standing));

    // Asked again, by its own subscriber or another one (without rebind), the
    // store answers with what stands and writes nothing.
    for (who, rebind) in [(sub(1), false), (sub(1), true), (sub(2), false)] {
        let again = store
            .associate(new_association("mcc-1", who), rebind, CAP, NOW + 1)
            .await
            .unwrap();
        assert_eq!(
            again,
            Associated::Existing(standing),
            "{who:?} rebind={rebind}"
        );
    }
    assert_eq!(store.log().last_seq(), 1);
    assert_eq!(store.index().clientids_of(&sub(1)), [clientid("mcc-1")]);
    assert!(store.index().clientids_of(&sub(2)).is_empty());
    assert_eq!(
        record_at(store.log(), 1),
        Record {
            at_ms: NOW,
            actor: None,
            event: Event::AssociationCreated {
                clientid: "mcc-1".into(),
                subscriber: sub(1),
                source: IdentitySource::SessionBinding,
                client_addr: "192.0.2.7".parse().unwrap(),
            }
        }
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_associate_of_one_clientid_creates_it_once() {
    let (_dir, path) = log_dir();
    let store = Store::open(&path).unwrap();
    let mut running = JoinSet::new();
    for n in 0..32u8 {
        let store = store.clone();
        running.spawn(async move {
            let asked = new_association("contested", sub(n));
            (n, store.associate(asked, false, CAP, NOW).await.unwrap())
        });
    }
    let mut created = Vec::new();
    let mut existing = Vec::new();
    while let Some(answer) = running.join_next().await {
        match answer.unwrap() {
            (n, Associated::Created { seq, superseded }) => {
                assert!(superseded.is_empty());
                created.push((n, seq));
            }
            (_, Associated::Existing(association)) => existing.push(association),
            (n, other) => panic!("task {n} got {other:?}"),
        }
    }

    assert_eq!(created.len(), 1, "exactly one creation, got {created:?}");
    let (winner, seq) = created[0];
    assert_eq!(seq, 1);
    assert_eq!(existing.len(), 31);
    for association in existing {
        assert_eq!((association.subscriber, association.seq), (sub(winner), 1));
    }
    assert_eq!(store.log().last_seq(), 1, "the others wrote nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_rebinds_of_one_clientid_form_one_chain() {
    let (_dir, path) = log_dir();
    let store = Store::open(&path).unwrap();
    let mut running = JoinSet::new();
    for n in 0..32u8 {
        let store = store.clone();
        running.spawn(async move {
            let asked = new_association("contested", sub(n));
            store.associate(asked, true, CAP, NOW).await.unwrap()
        });
    }
    let mut answers = Vec::new();
    while let Some(answer) = running.join_next().await {
        answers.push(answer.unwrap());
    }
    let creations = answers
        .iter()
        .filter(|a| matches!(a, Associated::Created { .. }))
        .count();
    let rebinds = answers
        .iter()
        .filter(|a| matches!(a, Associated::Rebound { .. }))
        .count();
    assert_eq!((creations, rebinds), (1, 31), "{answers:?}");

    // In log order, each rebind starts where the previous change left it.
    let events = read_all(store.log());
    assert_eq!(events.len(), 32);
    let mut owner = match &events[0].1.event {
        Event::AssociationCreated { subscriber, .. } => *subscriber,
        other => panic!("first event is {other:?}"),
    };
    for (seq, record) in &events[1..] {
        match &record.event {
            Event::AssociationRebound { from, to, .. } => {
                assert_eq!(*from, owner, "rebind at {seq} starts from the owner");
                owner = *to;
            }
            other => panic!("event {seq} is {other:?}"),
        }
    }
    let standing = store.index().association("contested").unwrap();
    assert_eq!((standing.subscriber, standing.seq), (owner, 32));
    assert_eq!(store.index().counts().subscribers, 1);
}

#[tokio::test]
async fn the_cap_supersedes_the_oldest_clientid() {
    let (_dir, path) = log_dir();
    let store = Store::open(&path).unwrap();
    let cap = 2;
    let mut at = NOW;
    let mut associate = async |id: &str, subscriber: SubscriberRef| {
        at += 1;
        store
            .associate(new_association(id, subscriber), false, cap, at)
            .await
            .unwrap()
    };
    assert!(matches!(
        associate("a", sub(1)).await,
        Associated::Created { seq: 1, .. }
    ));
    assert!(matches!(
        associate("other", sub(2)).await,
        Associated::Created { seq: 2, .. }
    ));
    assert!(matches!(
        associate("b", sub(1)).await,
        Associated::Created { seq: 3, .. }
    ));

    let third = associate("c", sub(1)).await;
    assert_eq!(
        third,
        Associated::Created {
            seq: 5,
            superseded: vec![clientid("a")]
        }
    );
    // The revocation and the creation are one batch: same time, adjacent.
    assert_eq!(
        record_at(store.log(), 4),
        Record {
            at_ms: NOW + 4,
            actor: None,
            event: Event::AssociationRevoked {
                clientid: "a".into(),
                subscriber: sub(1),
                reason: RevokeReason::Superseded,
            }
        }
    );
    assert!(matches!(
        record_at(store.log(), 5),
        Record { at_ms, event: Event::AssociationCreated { clientid, .. }, .. }
            if at_ms == NOW + 4 && clientid == "c"
    ));
    assert_eq!(store.index().association("a"), None);
    assert_eq!(
        store.index().clientids_of(&sub(1)),
        [clientid("b"), clientid("c")]
    );
    assert_eq!(
        store.index().clientids_of(&sub(2)),
        [clientid("other")],
        "other subscribers are untouched"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_cap_holds_under_concurrent_associations() {
    let (_dir, path) = log_dir();
    let store = Store::open(&path).unwrap();
    let cap = 3;
    let mut running = JoinSet::new();
    for n in 0..40 {
        let store = store.clone();
        running.spawn(async move {
            let asked = new_association(&format!("phone-{n}"), sub(7));
            store.associate(asked, false, cap, NOW + n).await.unwrap()
        });
    }
    let mut superseded = 0;
    while let Some(answer) = running.join_next().await {
        match answer.unwrap() {
            Associated::Created {
                superseded: gone, ..
            } => superseded += gone.len(),
            other => panic!("expected a creation, got {other:?}"),
        }
    }
    assert_eq!(superseded, 40 - cap);
    assert_eq!(store.index().clientids_of(&sub(7)).len(), cap);
    assert_eq!(store.index().counts().associations, cap);
    assert_eq!(store.log().last_seq(), 40 + 37);
}

#[tokio::test]
async fn rebind_moves_a_clientid_to_the_new_subscriber() {
    let (_dir, path) = log_dir();
    let store = Store::open(&path).unwrap();
    let cap = 2;
    store
        .associate(new_association("moving", sub(1)), false, cap, NOW)
        .await
        .unwrap();
    for id in ["x", "y"] {
        store
            .associate(new_association(id, sub(2)), false, cap, NOW)
            .await
            .unwrap();
    }
    let refused = store
        .associate(new_association("moving", sub(2)), false, cap, NOW + 1)
        .await
        .unwrap();
    assert!(
        matches!(refused, Associated::Existing(a) if a.subscriber == sub(1)),
        "without rebind the clientid stays: {refused:?}"
    );

    let moved = store
        .associate(new_association("moving", sub(2)), true, cap, NOW + 2)
        .await
        .unwrap();
    assert_eq!(
        moved,
        Associated::Rebound {
            seq: 5,
            from: sub(1),
            superseded: vec![clientid("x")]
        },
        "the new subscriber is at the cap, so its oldest goes"
    );
    assert_eq!(
        store.index().association("moving"),
        Some(Association {
            subscriber: sub(2),
            seq: 5
        })
    );
    assert!(store.index().clientids_of(&sub(1)).is_empty());
    assert_eq!(
        store.index().clientids_of(&sub(2)),
        [clientid("y"), clientid("moving")]
    );
    assert_eq!(
        record_at(store.log(), 5).event,
        Event::AssociationRebound {
            clientid: "moving".into(),
            from: sub(1),
            to: sub(2),
            source: IdentitySource::SessionBinding,
            client_addr: "192.0.2.7".parse().unwrap(),
        }
    );
}

#[tokio::test]
async fn revoke_removes_the_association() {
    let (_dir, path) = log_dir();
    let store = Store::open(&path).unwrap();
    store
        .associate(new_association("gone", sub(1)), false, CAP, NOW)
        .await
        .unwrap();

    let revoked = store.revoke(&clientid("gone"), NOW + 1).await.unwrap();
    assert_eq!(
        revoked,
        Some(Association {
            subscriber: sub(1),
            seq: 1
        })
    );
    assert_eq!(store.index().association("gone"), None);
    assert!(store.index().clientids_of(&sub(1)).is_empty());
    assert_eq!(
        record_at(store.log(), 2),
        Record {
            at_ms: NOW + 1,
            actor: None,
            event: Event::AssociationRevoked {
                clientid: "gone".into(),
                subscriber: sub(1),
                reason: RevokeReason::Admin,
            }
        }
    );

    assert_eq!(
        store.revoke(&clientid("gone"), NOW + 2).await.unwrap(),
        None
    );
    assert_eq!(store.log().last_seq(), 2, "revoking nothing writes nothing");
    let again = store
        .associate(new_association("gone", sub(2)), false, CAP, NOW + 3)
        .await
        .unwrap();
    assert!(matches!(again, Associated::Created { seq: 3, .. }));
}

#[tokio::test]
async fn codes_are_registered_replaced_and_removed() {
    let (_dir, path) = log_dir();
    let store = Store::open(&path).unwrap();
    let code = IndirectCode::parse("6001900107f52810d5promo").unwrap();
    let same_code = IndirectCode::parse("6001900107F52810D5promo").unwrap();

    assert_eq!(
        store
            .register_code(&code, "https://a.example/", NOW)
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        store
            .register_code(&same_code, "https://b.example/", NOW)
            .await
            .unwrap(),
        2
    );
    let entry = store
        .index()
        .code(&code, Reader::Operator)
        .expect("registered");
    assert_eq!((&*entry.target, entry.seq), ("https://b.example/", 2));
    assert_eq!(
        record_at(store.log(), 2).event,
        Event::CodeRegistered {
            code: "6001900107F52810D5promo".into(),
            target: "https://b.example/".into(),
        },
        "the log keeps the canonical code"
    );

    assert!(store.remove_code(&code, NOW + 1).await.unwrap());
    assert_eq!(store.index().code(&code, Reader::Operator), None);
    assert_eq!(
        record_at(store.log(), 3).event,
        Event::CodeRemoved {
            code: "6001900107F52810D5promo".into()
        }
    );
    assert!(!store.remove_code(&code, NOW + 2).await.unwrap());
    assert_eq!(store.log().last_seq(), 3, "removing nothing writes nothing");
}

/// Everything a test can ask the index about the clientids, subscribers and
/// codes `reopen_rebuilds_the_same_state` uses.
#[derive(Debug, PartialEq)]
struct Snapshot {
    counts: Counts,
    associations: Vec<Option<Association>>,
    clientids: Vec<Vec<ClientId>>,
    codes: Vec<Option<CodeEntry>>,
}

fn snapshot(index: &Index, codes: &[IndirectCode]) -> Snapshot {
    Snapshot {
        counts: index.counts(),
        associations: (0..20)
            .map(|i| index.association(&format!("mcc-{i}")))
            .collect(),
        clientids: (0..6).map(|s| index.clientids_of(&sub(s))).collect(),
        codes: codes
            .iter()
            .map(|code| index.code(code, Reader::Operator))
            .collect(),
    }
}

#[tokio::test]
async fn reopen_rebuilds_the_same_state() {
    let (_dir, path) = log_dir();
    let codes: Vec<IndirectCode> = ["2001000001one", "2001000001two", "2001000001three"]
        .iter()
        .map(|text| IndirectCode::parse(text).unwrap())
        .collect();
    let store = Store::open(&path).unwrap();
    for i in 0..20u8 {
        let asked = new_association(&format!("mcc-{i}"), sub(i % 5));
        store
            .associate(asked, false, 3, NOW + u64::from(i))
            .await
            .unwrap();
    }
    let moved = store
        .associate(new_association("mcc-19", sub(0)), true, 3, NOW + 20)
        .await
        .unwrap();
    assert!(matches!(moved, Associated::Rebound { .. }), "{moved:?}");
    store.revoke(&clientid("mcc-18"), NOW + 21).await.unwrap();
    for (n, code) in codes.iter().enumerate() {
        let target = format!("https://example.org/{n}");
        store.register_code(code, &target, NOW + 22).await.unwrap();
    }
    store.remove_code(&codes[1], NOW + 23).await.unwrap();

    let before = snapshot(store.index(), &codes);
    assert_eq!(before.counts.last_seq, store.log().last_seq());
    assert_eq!(before.counts.codes, 2);
    assert_eq!(before.counts.associations, 13);

    // A read-only replay beside the live writer sees the same state.
    let reader = EventLog::open_read_only(&path).unwrap();
    let index = Index::new();
    let replayed = store::replay(&reader, &index, |_, _| true).unwrap();
    assert_eq!(replayed.events, before.counts.last_seq);
    assert_eq!(snapshot(&index, &codes), before);
    drop(reader);

    drop(store);
    let store = Store::open(&path).unwrap();
    assert_eq!(snapshot(store.index(), &codes), before);
    assert_eq!(store.log().last_seq(), before.counts.last_seq);
    let next = store
        .associate(new_association("after-reopen", sub(9)), false, 3, NOW + 24)
        .await
        .unwrap();
    assert_eq!(
        next,
        Associated::Created {
            seq: before.counts.last_seq + 1,
            superseded: vec![]
        }
    );
}
