//! Event log benches, each next to a raw RocksDB baseline run in the same
//! process on the same disk with the same options, keys and values.
//!
//! - `append/*`: durable appends, events/s.
//!   - `eventlog/K`: K tokio tasks, each appending one record at a time
//!     through `EventLog::append` (group commit: one writer thread, one
//!     synced `WriteBatch` for whatever is queued).
//!   - `raw_threads/K`: K OS threads, each writing one event per synced
//!     `WriteBatch` straight to RocksDB (RocksDB groups concurrent synced
//!     writers into one WAL fsync itself). K = 1 is the one-fsync-per-event
//!     baseline.
//!   - `raw_batch/K`: one thread writing K events per synced `WriteBatch`:
//!     what perfect group commit of K appenders would cost.
//! - `replay/*`: reading a 200k-event log, events/s.
//!   - `replay_into_index`: `store::replay` into a fresh `Index` (read,
//!     check, decode, apply).
//!   - `raw_scan`: `db.iterator(IteratorMode::Start)` counting entries.
//!   - `raw_scan_decode`: the same plus decoding each value, to split the
//!     cost of reading from the cost of applying.
//!
//! `cargo bench --bench log` takes about 2 minutes. Logs live in temp dirs
//! under the system temp dir (set `TMPDIR` to bench another disk).

mod common;

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Barrier;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::mix;
use criterion::{
    BenchmarkId, Criterion, SamplingMode, Throughput, criterion_group, criterion_main,
};
use homecmp::store::event::{decode_value, encode_key, encode_value};
use homecmp::store::log::db_options;
use homecmp::store::{Event, EventLog, IdentitySource, Index, Record, replay};
use homecmp::wire::SubscriberRef;
use rocksdb::{DB, IteratorMode, WriteBatch, WriteOptions};

const APPENDERS: [usize; 3] = [1, 16, 64];

/// True under `cargo bench`; false under `cargo test --benches` (or
/// `-- --test`, `--list`), where criterion runs each bench once.
fn full_run() -> bool {
    let args: Vec<String> = std::env::args().collect();
    args.iter().any(|a| a == "--bench") && !args.iter().any(|a| a == "--test" || a == "--list")
}

/// A typical event: a new association with a UUID clientid (distinct per
/// `i`, so a log of them replays cleanly).
fn record(i: u64) -> Record {
    let bytes = ((u128::from(mix(i)) << 64) | u128::from(i)).to_be_bytes();
    let mut subscriber = [0u8; 32];
    for (k, chunk) in subscriber.chunks_mut(8).enumerate() {
        chunk.copy_from_slice(&mix(i ^ ((k as u64) << 60)).to_le_bytes());
    }
    Record {
        at_ms: 1_700_000_000_000 + i,
        actor: None,
        event: Event::AssociationCreated {
            clientid: uuid::Builder::from_random_bytes(bytes)
                .into_uuid()
                .hyphenated()
                .to_string(),
            subscriber: SubscriberRef(subscriber),
            source: IdentitySource::SessionBinding,
            client_addr: IpAddr::V4(Ipv4Addr::from(0x0A00_0000 | (i as u32 & 0xFF_FFFF))),
        },
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// What `EventLog`'s writer uses: a WAL fsync before the write returns.
fn synced() -> WriteOptions {
    let mut sync = WriteOptions::default();
    sync.set_sync(true);
    sync
}

fn append(c: &mut Criterion) {
    let rt = runtime();
    let dir = tempfile::tempdir().expect("temp dir");
    let log = EventLog::open(&dir.path().join("eventlog")).expect("open event log");
    let db = DB::open(&db_options(), dir.path().join("raw")).expect("open raw db");
    let raw_next = AtomicU64::new(1);
    let sync = synced();

    let mut group = c.benchmark_group("append");
    group.sampling_mode(SamplingMode::Flat);
    group.sample_size(10);
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(4));

    // One iteration = every appender appends one event, so an iteration is
    // `k` events and criterion's throughput is events/s.
    for k in APPENDERS {
        group.throughput(Throughput::Elements(k as u64));

        group.bench_function(BenchmarkId::new("eventlog", k), |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let start = Instant::now();
                    let tasks: Vec<_> = (0..k as u64)
                        .map(|t| {
                            let log = log.clone();
                            tokio::spawn(async move {
                                for j in 0..iters {
                                    let seq =
                                        log.append(vec![record(j * 64 + t)]).await.expect("append");
                                    black_box(seq);
                                }
                            })
                        })
                        .collect();
                    for task in tasks {
                        task.await.expect("appender task");
                    }
                    start.elapsed()
                })
            });
        });

        group.bench_function(BenchmarkId::new("raw_threads", k), |b| {
            b.iter_custom(|iters| {
                let ready = Barrier::new(k + 1);
                std::thread::scope(|s| {
                    for _ in 0..k {
                        s.spawn(|| {
                            // WriteOptions is Send but not Sync: one each.
                            let sync = synced();
                            ready.wait();
                            for _ in 0..iters {
                                let seq = raw_next.fetch_add(1, Ordering::Relaxed);
                                let mut batch = WriteBatch::default();
                                batch.put(encode_key(seq), encode_value(&record(seq)).unwrap());
                                db.write_opt(batch, &sync).expect("raw write");
                            }
                        });
                    }
                    ready.wait();
                    Instant::now()
                })
                .elapsed()
            });
        });

        if k > 1 {
            group.bench_function(BenchmarkId::new("raw_batch", k), |b| {
                b.iter_custom(|iters| {
                    let start = Instant::now();
                    for _ in 0..iters {
                        let mut batch = WriteBatch::default();
                        for _ in 0..k {
                            let seq = raw_next.fetch_add(1, Ordering::Relaxed);
                            batch.put(encode_key(seq), encode_value(&record(seq)).unwrap());
                        }
                        db.write_opt(batch, &sync).expect("raw write");
                    }
                    start.elapsed()
                });
            });
        }
    }
    group.finish();
    eprintln!(
        "append: eventlog wrote {} events, raw wrote {}",
        log.last_seq(),
        raw_next.load(Ordering::Relaxed) - 1
    );
}

fn replay_scan(c: &mut Criterion) {
    let events: u64 = if full_run() { 200_000 } else { 2_000 };
    let rt = runtime();
    let dir = tempfile::tempdir().expect("temp dir");
    let log = EventLog::open(&dir.path().join("eventlog")).expect("open event log");
    rt.block_on(async {
        let mut next = 1;
        while next <= events {
            let last = (next + 4095).min(events);
            let records = (next..=last).map(record).collect();
            log.append(records).await.expect("fill the log");
            next = last + 1;
        }
    });
    // From memtable to SST, as a log reopened at start-up would read it.
    log.raw().flush().expect("flush");
    eprintln!(
        "replay: {events} events, {:.1} MiB on disk",
        log.disk_bytes() as f64 / (1 << 20) as f64
    );

    let mut group = c.benchmark_group("replay");
    group.sampling_mode(SamplingMode::Flat);
    group.sample_size(10);
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(5));
    group.throughput(Throughput::Elements(events));

    group.bench_function(BenchmarkId::new("replay_into_index", events), |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let index = Index::new();
                let start = Instant::now();
                let done = replay(&log, &index, |_, _| true).expect("replay");
                total += start.elapsed();
                assert_eq!(done.events, events);
                // Freeing the index is not part of a replay.
                drop(index);
            }
            total
        });
    });

    group.bench_function(BenchmarkId::new("raw_scan", events), |b| {
        b.iter(|| {
            let mut n = 0u64;
            for item in log.raw().iterator(IteratorMode::Start) {
                black_box(item.expect("raw read"));
                n += 1;
            }
            assert_eq!(n, events);
        });
    });

    group.bench_function(BenchmarkId::new("raw_scan_decode", events), |b| {
        b.iter(|| {
            let mut n = 0u64;
            for item in log.raw().iterator(IteratorMode::Start) {
                let (_, value) = item.expect("raw read");
                black_box(decode_value(&value).expect("decode"));
                n += 1;
            }
            assert_eq!(n, events);
        });
    });
    group.finish();
}

criterion_group!(log, append, replay_scan);
criterion_main!(log);
