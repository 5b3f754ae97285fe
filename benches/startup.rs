//! Start-up and memory at scale: a log of N associations (written straight
//! into RocksDB, not through HTTP), then, each in a fresh process so that
//! resident memory is its own:
//!
//! - `full`: today's start, a replay of the whole log (then it writes the
//!   index snapshot, timed apart: the copy in memory, for which appends
//!   wait, and the save to disk, for which they do not);
//! - `snapshot`: a start from that snapshot (no events after it);
//! - `hashmap`: a plain `HashMap<[u8; 16], u64>` of N entries, the
//!   baseline for memory per association.
//!
//! `cargo bench --bench startup [-- N...]` (default 1000000). Prints wall
//! time to a ready index and resident-memory growth per association.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use homecmp::store::{Store, snapshot};

use common::{generate, mix, rss_kib};

fn rss() -> u64 {
    rss_kib("self")
}

/// One phase in this process; prints `ms rss_kib count [extra_ms]`.
fn phase(name: &str, arg: &str) {
    let before = rss();
    let started = Instant::now();
    match name {
        "hashmap" => {
            let n: u64 = arg.parse().unwrap();
            let mut map = std::collections::HashMap::with_capacity(0);
            for i in 0..n {
                let mut key = [0u8; 16];
                key[..8].copy_from_slice(&mix(i).to_le_bytes());
                key[8..].copy_from_slice(&mix(!i).to_le_bytes());
                map.insert(key, i);
            }
            let ms = started.elapsed().as_millis();
            println!("{ms} {} {}", rss() - before, map.len());
        }
        "full" | "snapshot" => {
            let dir = Path::new(arg);
            let (store, started_how) =
                Store::open_from(&dir.join("events"), &snapshot::path(dir)).unwrap();
            let ms = started.elapsed().as_millis();
            let grown = rss() - before;
            let count = store.index().counts().associations;
            assert_eq!(started_how.snapshot_seq.is_some(), name == "snapshot");
            // The snapshot as the server writes it, its two parts timed
            // apart: the copy (appends wait for it) and the save (they
            // do not).
            let (copy, save) = match name {
                "full" => {
                    let t = Instant::now();
                    let copied = snapshot::copy(store.index(), store.log().raw()).unwrap();
                    let copy = t.elapsed().as_millis();
                    let t = Instant::now();
                    copied.save(&snapshot::path(dir)).unwrap();
                    (copy, t.elapsed().as_millis())
                }
                _ => (0, 0),
            };
            println!("{ms} {grown} {count} {copy} {save}");
        }
        other => panic!("unknown phase {other}"),
    }
}

fn run_phase(name: &str, arg: &str) -> Vec<u64> {
    let out = Command::new(std::env::current_exe().unwrap())
        .env("HOMECMP_STARTUP_PHASE", name)
        .env("HOMECMP_STARTUP_ARG", arg)
        .output()
        .unwrap();
    assert!(out.status.success(), "{name}: {out:?}");
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .last()
        .unwrap()
        .split_whitespace()
        .map(|w| w.parse().unwrap())
        .collect()
}

fn main() {
    if let (Ok(name), Ok(arg)) = (
        std::env::var("HOMECMP_STARTUP_PHASE"),
        std::env::var("HOMECMP_STARTUP_ARG"),
    ) {
        return phase(&name, &arg);
    }
    let sizes = common::sizes(1_000_000);
    println!(
        "{:>11} {:>9} {:>9} {:>8} {:>9} {:>9} {:>13} {:>13} {:>13}",
        "assocs",
        "full s",
        "snap s",
        "ratio",
        "copy s",
        "save s",
        "B/assoc full",
        "B/assoc snap",
        "B/HashMap"
    );
    for n in sizes {
        let dir = tempfile::tempdir_in("/var/tmp").unwrap();
        generate(&dir.path().join("events"), n);
        let arg = dir.path().to_str().unwrap();
        let full = run_phase("full", arg);
        let snap = run_phase("snapshot", arg);
        let map = run_phase("hashmap", &n.to_string());
        assert_eq!((full[2], snap[2]), (n, n));
        let per = |kib: u64| (kib * 1024) as f64 / n as f64;
        println!(
            "{:>11} {:>9.2} {:>9.2} {:>7.1}x {:>9.2} {:>9.2} {:>13.0} {:>13.0} {:>13.0}",
            n,
            full[0] as f64 / 1000.0,
            snap[0] as f64 / 1000.0,
            full[0] as f64 / snap[0].max(1) as f64,
            full[3] as f64 / 1000.0,
            full[4] as f64 / 1000.0,
            per(full[1]),
            per(snap[1]),
            per(map[1]),
        );
    }
}
