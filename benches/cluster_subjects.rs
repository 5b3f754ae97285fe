//! Cluster mode's subject layout, measured: a subject per clientid against
//! a subject per hash bucket of clientids, on a real three-server
//! JetStream cluster (R=3) on loopback.
//!
//! `cargo bench --bench cluster_subjects [-- CREATIONS [BUCKETS]]`
//!
//! Each layout makes CREATIONS first-writer-wins creations of distinct
//! clientids from 32 concurrent writers, as cluster mode does: read the
//! subject's last sequence from the stream leader, then publish with
//! `Nats-Expected-Last-Subject-Sequence`, again after a lost race. Printed:
//! creations per second, races lost, and the servers' resident memory
//! after, per stored event (JetStream keeps every subject of a stream in
//! memory). Needs nats-server 2.11+ (`scripts/dev test` installs it).
//!
//! `FILL=1000000,10000000 cargo bench --bench cluster_subjects [-- CREATIONS]`
//! measures at scale instead: for each layout (a subject per clientid,
//! then the product's 65,536 buckets), on a fresh cluster, the stream is
//! filled with one event per clientid up to each level (publishes
//! pipelined, without the expected-sequence check: only the stream's size
//! matters), then CREATIONS (default 20,000) first-writer-wins creations
//! are timed at that size, and each server's resident memory is read.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, context, stream};

mod common;

#[path = "../tests/support/nats.rs"]
#[allow(dead_code)]
mod nats;

const WRITERS: usize = 32;

#[derive(Clone, Copy)]
enum Layout {
    PerClientid,
    Buckets(u64),
}

impl Layout {
    fn subject(self, stream: &str, clientid: u64) -> String {
        // A stand-in for the hash of the clientid.
        let hash = common::mix(clientid);
        match self {
            Layout::PerClientid => format!("{stream}.c.{hash:016x}"),
            Layout::Buckets(n) => format!("{stream}.b.{}", hash % n),
        }
    }

    fn name(self) -> String {
        match self {
            Layout::PerClientid => "subject per clientid".into(),
            Layout::Buckets(n) => format!("{n} hash buckets"),
        }
    }
}

async fn create(
    js: &jetstream::Context,
    stream: &stream::Stream,
    subject: String,
    payload: bytes::Bytes,
    conflicts: &AtomicU64,
) {
    loop {
        let last = match stream.get_last_raw_message_by_subject(&subject).await {
            Ok(m) => m.sequence,
            Err(e) if e.kind() == stream::LastRawMessageErrorKind::NoMessageFound => 0,
            Err(e) => panic!("last on {subject}: {e}"),
        };
        let message = jetstream::message::PublishMessage::build()
            .payload(payload.clone())
            .expected_last_subject_sequence(last);
        match js
            .send_publish(subject.clone(), message)
            .await
            .unwrap()
            .await
        {
            Ok(_) => return,
            // 10071, or 10164 (checked before replication), as in the server.
            Err(e)
                if e.kind() == context::PublishErrorKind::WrongLastSequence
                    || e.to_string().contains("wrong last sequence") =>
            {
                conflicts.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => panic!("publish: {e}"),
        }
    }
}

async fn run(cluster: &nats::NatsCluster, layout: Layout, name: &str, creations: u64) {
    let client = async_nats::connect(cluster.url(0)).await.unwrap();
    let js = jetstream::new(client);
    let stream = nats::stream_when_led(&js, nats::r3_config(name)).await;
    let pids = cluster.pids();
    let rss_before: u64 = pids.iter().map(|&p| common::rss_kib(&p.to_string())).sum();
    let (rate, lost) = timed_creations(&js, &stream, layout, name, 0, creations).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_after: u64 = pids.iter().map(|&p| common::rss_kib(&p.to_string())).sum();
    println!(
        "{:<22} {:>9.0} creations/s  {:>7} races lost  {:>8.0} B of server RSS per event (3 servers)",
        layout.name(),
        rate,
        lost,
        (rss_after.saturating_sub(rss_before) * 1024) as f64 / creations as f64,
    );
}

/// Fills `name` with one event per clientid `from..to` on `layout`'s
/// subjects, many publishes in flight.
async fn fill(js: &jetstream::Context, layout: Layout, name: &str, from: u64, to: u64) {
    use futures_util::StreamExt;
    let payload = bytes::Bytes::from(vec![7u8; 120]);
    let mut acks = futures_util::stream::FuturesUnordered::new();
    for i in from..to {
        let ack = js
            .publish(layout.subject(name, i), payload.clone())
            .await
            .unwrap();
        acks.push(ack.into_future());
        if acks.len() >= 4096 {
            acks.next().await.unwrap().unwrap();
        }
    }
    while let Some(ack) = acks.next().await {
        ack.unwrap();
    }
}

/// Creations per second, races lost, at `name`'s current size: `creations`
/// clientids never used before (from `first` on).
async fn timed_creations(
    js: &jetstream::Context,
    stream: &stream::Stream,
    layout: Layout,
    name: &str,
    first: u64,
    creations: u64,
) -> (f64, u64) {
    let next = Arc::new(AtomicU64::new(first));
    let conflicts = Arc::new(AtomicU64::new(0));
    // ~the size of an association_created record.
    let payload = bytes::Bytes::from(vec![7u8; 120]);
    let started = Instant::now();
    let writers: Vec<_> = (0..WRITERS)
        .map(|_| {
            let (js, stream, next, conflicts, payload, name) = (
                js.clone(),
                stream.clone(),
                next.clone(),
                conflicts.clone(),
                payload.clone(),
                name.to_owned(),
            );
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= first + creations {
                        return;
                    }
                    let subject = layout.subject(&name, i);
                    create(&js, &stream, subject, payload.clone(), &conflicts).await;
                }
            })
        })
        .collect();
    for w in writers {
        w.await.unwrap();
    }
    let rate = creations as f64 / started.elapsed().as_secs_f64();
    (rate, conflicts.load(Ordering::Relaxed))
}

/// Bytes of the files under `dir`.
fn dir_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| match entry.file_type() {
            Ok(t) if t.is_dir() => dir_bytes(&entry.path()),
            _ => entry.metadata().map_or(0, |m| m.len()),
        })
        .sum()
}

/// The `FILL` mode (see the module docs).
async fn at_scale(levels: &[u64], creations: u64) {
    println!(
        "{creations} creations timed at each size, {WRITERS} writers, R=3 on three local nats-servers"
    );
    for layout in [Layout::PerClientid, Layout::Buckets(65_536)] {
        let cluster = nats::NatsCluster::start(3);
        let js = jetstream::new(async_nats::connect(cluster.url(0)).await.unwrap());
        let name = "SCALE";
        let stream = nats::stream_when_led(&js, nats::r3_config(name)).await;
        let rss = || -> Vec<u64> {
            let pids = cluster.pids();
            pids.iter()
                .map(|&p| common::rss_kib(&p.to_string()))
                .collect()
        };
        let empty: u64 = rss().iter().sum::<u64>() / 3;
        let mut filled = 0;
        // Clientids timed at each size come from far above the fill's.
        let mut timed = 1 << 40;
        for &level in levels {
            let started = Instant::now();
            fill(&js, layout, name, filled, level).await;
            let fill_rate = (level - filled) as f64 / started.elapsed().as_secs_f64();
            filled = level;
            let (rate, lost) = timed_creations(&js, &stream, layout, name, timed, creations).await;
            timed += creations;
            tokio::time::sleep(Duration::from_secs(3)).await;
            let per_server = rss();
            let mean = per_server.iter().sum::<u64>() / 3;
            let disk = dir_bytes(cluster.dir()) / 3;
            println!(
                "{:<22} {:>11} clientids  filled at {:>7.0}/s  {:>7.0} creations/s  {:>5} races lost  \
                 RSS per server {:>6} MiB ({:?} MiB)  {:>5.0} B per clientid over the empty stream  \
                 disk per server {:>6} MiB",
                layout.name(),
                level,
                fill_rate,
                rate,
                lost,
                mean / 1024,
                per_server.iter().map(|k| k / 1024).collect::<Vec<_>>(),
                (mean.saturating_sub(empty) * 1024) as f64 / (level + timed - (1 << 40)) as f64,
                disk >> 20,
            );
        }
    }
}

fn main() {
    if let Ok(levels) = std::env::var("FILL") {
        let levels: Vec<u64> = levels.split(',').map(|l| l.parse().unwrap()).collect();
        let creations = std::env::args()
            .skip(1)
            .find(|a| !a.starts_with("--"))
            .and_then(|a| a.parse().ok())
            .unwrap_or(20_000);
        let runtime = tokio::runtime::Runtime::new().unwrap();
        runtime.block_on(at_scale(&levels, creations));
        return;
    }
    let mut args = std::env::args().skip(1).filter(|a| !a.starts_with("--"));
    // `cargo bench --benches -- --test` (criterion's smoke run): small.
    let smoke = std::env::args().any(|a| a == "--test");
    let default = if smoke { 2_000 } else { 50_000 };
    let creations: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(default);
    let buckets: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(1024);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        println!("{creations} creations, {WRITERS} writers, R=3 on three local nats-servers");
        // Alternating, each layout on a fresh stream of the same cluster.
        let cluster = nats::NatsCluster::start(3);
        for round in 0..2 {
            run(
                &cluster,
                Layout::PerClientid,
                &format!("PERCLIENT{round}"),
                creations,
            )
            .await;
            run(
                &cluster,
                Layout::Buckets(buckets),
                &format!("BUCKETS{round}"),
                creations,
            )
            .await;
        }
    });
}
