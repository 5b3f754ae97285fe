//! What JetStream alone can take on this machine, and what atomic batches
//! would buy: a real three-server JetStream cluster (R=3) on loopback, one
//! client, publishes shaped as cluster mode's (a 120-byte event on one of
//! 65,536 bucket subjects, `Nats-Msg-Id`, and the expected last sequence of
//! its subject), each configuration on a fresh stream.
//!
//! `cargo bench --bench cluster_publish [-- EVENTS]` (default 60,000)
//!
//! Printed per configuration: events per second, and the nats-servers' CPU
//! (user + system, all three) per event. Single publishes keep many
//! acknowledgements outstanding, as a busy node does; atomic batches
//! (ADR-50, nats-server 2.12+) send all but the last message of a batch
//! without a reply and commit with the last. Every event goes to a bucket
//! no other event of the run uses, so no expectation fails and no batch is
//! refused (a node's real batches would be: one lost race refuses the
//! whole batch).

use std::time::Instant;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, stream};
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;

mod common;

#[path = "../tests/support/nats.rs"]
#[allow(dead_code)]
mod nats;

const PAYLOAD: usize = 120;

#[derive(Clone, Copy)]
enum Mode {
    /// Single publishes, this many acknowledgements outstanding.
    Single { in_flight: usize },
    /// Atomic batches of `size`, this many batches outstanding (a stream
    /// takes at most 50).
    Batches { size: u64, in_flight: usize },
}

impl Mode {
    fn name(self) -> String {
        match self {
            Mode::Single { in_flight } => format!("single, {in_flight} outstanding"),
            Mode::Batches { size, in_flight } => {
                format!("atomic batches of {size}, {in_flight} outstanding")
            }
        }
    }
}

fn subject(stream: &str, event: u64) -> String {
    format!("{stream}.b.{event:04x}")
}

async fn single(js: &jetstream::Context, name: &str, events: u64, in_flight: usize) {
    let payload = bytes::Bytes::from(vec![7u8; PAYLOAD]);
    let mut acks = FuturesUnordered::new();
    for i in 0..events {
        let message = jetstream::message::PublishMessage::build()
            .payload(payload.clone())
            .message_id(format!("{name}-{i}"))
            .expected_last_subject_sequence(0);
        let ack = js.send_publish(subject(name, i), message).await.unwrap();
        acks.push(ack.into_future());
        if acks.len() >= in_flight {
            acks.next().await.unwrap().unwrap();
        }
    }
    while let Some(ack) = acks.next().await {
        ack.unwrap();
    }
}

async fn one_batch(client: async_nats::Client, name: String, events: std::ops::Range<u64>) {
    let payload = bytes::Bytes::from(vec![7u8; PAYLOAD]);
    let id = format!("{name}-{}", events.start);
    let last = events.end - 1;
    for (n, i) in events.enumerate() {
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Batch-Id", id.as_str());
        headers.insert("Nats-Batch-Sequence", (n + 1).to_string().as_str());
        headers.insert("Nats-Msg-Id", format!("{name}-{i}").as_str());
        headers.insert("Nats-Expected-Last-Subject-Sequence", "0");
        if i < last {
            client
                .publish_with_headers(subject(&name, i), headers, payload.clone())
                .await
                .unwrap();
            continue;
        }
        headers.insert("Nats-Batch-Commit", "1");
        let ack = client
            .request_with_headers(subject(&name, i), headers, payload.clone())
            .await
            .unwrap();
        let ack = String::from_utf8_lossy(&ack.payload);
        assert!(!ack.contains("\"error\""), "batch refused: {ack}");
    }
}

async fn batches(
    client: &async_nats::Client,
    name: &str,
    events: u64,
    size: u64,
    in_flight: usize,
) {
    let mut done = FuturesUnordered::new();
    for from in (0..events).step_by(size as usize) {
        let range = from..(from + size).min(events);
        done.push(tokio::spawn(one_batch(client.clone(), name.into(), range)));
        if done.len() >= in_flight {
            done.next().await.unwrap().unwrap();
        }
    }
    while let Some(batch) = done.next().await {
        batch.unwrap();
    }
}

/// CPU ticks (user + system) of the cluster's servers so far.
fn server_ticks(cluster: &nats::NatsCluster) -> u64 {
    cluster
        .pids()
        .iter()
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/stat")).ok())
        .map(|stat| {
            // Fields after the command's closing parenthesis: utime is the 12th, stime the 13th.
            let fields: Vec<&str> = stat
                .rsplit(')')
                .next()
                .unwrap()
                .split_whitespace()
                .collect();
            fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
        })
        .sum()
}

fn main() {
    let events: u64 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(60_000);
    assert!(events <= 65_536, "one bucket an event: at most 65,536");
    let ticks_per_sec = 100.0; // USER_HZ on Linux
    let modes = [
        Mode::Single { in_flight: 32 },
        Mode::Single { in_flight: 256 },
        Mode::Single { in_flight: 1024 },
        Mode::Batches {
            size: 10,
            in_flight: 32,
        },
        Mode::Batches {
            size: 100,
            in_flight: 16,
        },
    ];
    let cluster = nats::NatsCluster::start(3);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let client = async_nats::connect(cluster.url(0)).await.unwrap();
        let js = jetstream::new(client.clone());
        println!("{events} events a configuration, R=3, three nats-servers on this machine");
        for (n, mode) in modes.into_iter().enumerate() {
            let name = format!("PUBLISH{n}");
            let config = stream::Config {
                allow_atomic_publish: true,
                ..nats::r3_config(&name)
            };
            nats::stream_when_led(&js, config).await;
            let (ticks, started) = (server_ticks(&cluster), Instant::now());
            match mode {
                Mode::Single { in_flight } => single(&js, &name, events, in_flight).await,
                Mode::Batches { size, in_flight } => {
                    batches(&client, &name, events, size, in_flight).await
                }
            }
            let secs = started.elapsed().as_secs_f64();
            let cpu = (server_ticks(&cluster) - ticks) as f64 / ticks_per_sec;
            println!(
                "{:<38} {:>8.0} events/s  nats-servers {:>5.1} us CPU an event ({:.2} cores)",
                mode.name(),
                events as f64 / secs,
                cpu / events as f64 * 1e6,
                cpu / secs,
            );
        }
    });
}
