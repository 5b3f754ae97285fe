//! Writes survive their caller: store futures dropped at every `.await`
//! leave the index equal to a replay of the log, and the log replays.
//!
//! The failure this guards against: a request future (a client reset its
//! stream) dropped after the log's writer took its records but before the
//! index was updated. The event reached the disk, the index never saw it, the
//! clientid's lock was released, and the next scan created the association a
//! second time: a log that no longer replays, a server that no longer starts.

mod support;

use std::future::{Future, poll_fn};
use std::pin::pin;
use std::task::Poll;
use std::time::Duration;

use homecmp::store::index::Reader;
use homecmp::store::{self, EventLog, IdentitySource, Index, NewAssociation, Store};
use homecmp::wire::{ClientId, IndirectCode, SubscriberRef};

const NOW: u64 = 1_700_000_000_000;
const CLIENTS: usize = 240;
const SUBSCRIBERS: u8 = 5;

/// Polls `future` up to `polls` times, pausing `pause` between polls (so the
/// log's writer thread gets on, or not), then drops it. `true` if it ended.
async fn poll_then_drop(future: impl Future, polls: usize, pause: Duration) -> bool {
    let mut future = pin!(future);
    for _ in 0..polls {
        let ready = poll_fn(|cx| Poll::Ready(future.as_mut().poll(cx).is_ready())).await;
        if ready {
            return true;
        }
        match pause.is_zero() {
            true => tokio::task::yield_now().await,
            false => tokio::time::sleep(pause).await,
        }
    }
    false
}

fn clientid(i: usize) -> ClientId {
    named("mcc-", i)
}

fn named(prefix: &str, i: usize) -> ClientId {
    ClientId::parse(&format!("{prefix}{i}")).unwrap()
}

fn code(i: usize) -> IndirectCode {
    IndirectCode::parse(&format!("2001000001c{i}")).unwrap()
}

fn new_association(i: usize) -> NewAssociation {
    NewAssociation {
        clientid: clientid(i),
        subscriber: SubscriberRef([(i % usize::from(SUBSCRIBERS)) as u8; 32]),
        source: IdentitySource::SessionBinding,
        client_addr: "127.1.0.1".parse().unwrap(),
    }
}

/// Everything the index says about the clientids (`prefix` and a number)
/// and codes these tests use.
fn state(index: &Index, prefix: &str) -> String {
    let associations: Vec<_> = (0..CLIENTS)
        .map(|i| index.association(named(prefix, i).as_str()))
        .collect();
    let held: Vec<_> = (0..SUBSCRIBERS)
        .map(|s| index.clientids_of(&SubscriberRef([s; 32])))
        .collect();
    let codes: Vec<_> = (0..CLIENTS)
        .map(|i| index.code(&code(i), Reader::Operator))
        .collect();
    format!(
        "{:?}\n{associations:?}\n{held:?}\n{codes:?}",
        index.counts()
    )
}

/// A fresh replay of the log at `path` into a new index.
fn replayed(path: &std::path::Path, prefix: &str) -> String {
    let log = EventLog::open_read_only(path).unwrap();
    let index = Index::new();
    store::replay(&log, &index, |_, _| true).expect("the log replays");
    state(&index, prefix)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_dropped_at_every_await_leave_index_equal_to_replay() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(homecmp::LOG_DIR);
    let store = Store::open(&path).unwrap();
    // A cap of 3 over 5 subscribers: plenty of superseding in the mix.
    let cap = 3;
    for i in 0..CLIENTS {
        // Drop points: never polled, after the first poll (waiting for a
        // lock, for room in the queue, or for the writer), after several,
        // with and without giving the writer time to finish meanwhile.
        let polls = i % 4;
        let pause = Duration::from_micros([0, 50, 300][i % 3]);
        // A rival for the same subscriber's lock, so drops also happen while
        // waiting for a stripe.
        let rival = {
            let store = store.clone();
            let rival = new_association(i + CLIENTS / 2);
            tokio::spawn(async move { store.associate(rival, false, cap, NOW).await })
        };
        let first = store.associate(new_association(i), i % 7 == 0, cap, NOW);
        poll_then_drop(first, polls, pause).await;
        // The same scan again, to the end. Had the dropped one written its
        // event without the index seeing it, this would create the
        // association a second time, and the replay below would fail.
        store
            .associate(new_association(i), false, cap, NOW + 1)
            .await
            .expect("the store keeps working");
        rival.await.unwrap().expect("the rival is stored");

        let revoke_id = clientid(i / 2);
        poll_then_drop(store.revoke(&revoke_id, NOW + 2), polls, pause).await;
        let target = format!("https://example.org/{i}");
        poll_then_drop(
            store.register_code(&code(i), &target, NOW + 3),
            polls,
            pause,
        )
        .await;
        poll_then_drop(store.remove_code(&code(i / 3), NOW + 4), polls, pause).await;
    }
    // One write to the end: the writer answers in order, so everything
    // handed over before it has been written and applied.
    store
        .register_code(&code(0), "https://example.org/last", NOW + 5)
        .await
        .unwrap();
    let live = state(store.index(), "mcc-");
    assert_eq!(
        live,
        replayed(&path, "mcc-"),
        "the live index equals a fresh replay"
    );
    drop(store);
    let reopened = Store::open(&path).expect("the next start succeeds");
    assert_eq!(state(reopened.index(), "mcc-"), live);
}

/// The same over the real server: first scans whose HTTP/2 stream the client
/// resets 0–4 ms after sending, each followed by the same scan to the end;
/// then the log replays and the server starts again on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_scans_reset_mid_write_keep_log_and_index_together() {
    let dir = tempfile::tempdir().unwrap();
    // No cap to supersede at: a reset request that the server reads only
    // after its whole twin answered finds the association, and writes
    // nothing after the state below is taken (at the cap it could revoke
    // and create again, and the comparison would race it).
    let config = "[auth]\nassociations_per_minute = 100000\nmax_clientids_per_subscriber = 1000\n";
    let server = support::TestServer::in_dir(dir.path(), config).await;
    server.put_code(support::CODE, support::TARGET).await;
    server.bind_session("127.1.0.1", "+447700900001").await;
    let addr = server.running.public_addr;
    let (mut h2, _driver) = support::raw::h2_client(&server.ca_pem(), "127.1.0.1", addr).await;
    let whole = server.client("http2", "127.1.0.1");
    let tries = 150;
    let mut created = 0;
    for i in 0..tries {
        let query = format!("code={}&clientid=reset-{i}", support::CODE);
        let request = http::Request::get(server.url(&query)).body(()).unwrap();
        h2 = h2.ready().await.unwrap();
        let (_response, mut stream) = h2.send_request(request, true).unwrap();
        // Reset at a different moment each time (0-4 ms after sending).
        tokio::time::sleep(Duration::from_millis(i % 5)).await;
        stream.send_reset(h2::Reason::CANCEL);
        let (status, body) = server.resolve(&whole, &query).await;
        assert_eq!(status, 200, "{body}");
        created += usize::from(body["association"] == "created");
    }
    // Some first scans were written before their reset took effect: the
    // path where the index used to miss the event.
    assert!(created < tries as usize, "no reset came after a write");
    let log_path = dir.path().join(homecmp::LOG_DIR);
    let live = state(server.running.app.store.index(), "reset-");
    assert_eq!(live, replayed(&log_path, "reset-"));
    server.stop().await;

    let again = support::TestServer::in_dir(dir.path(), config).await;
    again.bind_session("127.1.0.1", "+447700900001").await;
    let client = again.client("http1", "127.2.0.1");
    let query = format!("code={}&clientid=reset-{}", support::CODE, tries - 1);
    let (status, body) = again.resolve(&client, &query).await;
    assert_eq!((status, &body["association"]), (200, &"existing".into()));
    again.stop().await;
}
