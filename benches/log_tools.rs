//! The SRE's log tools at scale: a log of N association events (written
//! straight into RocksDB, as the startup bench does), then the binary's
//! `homecmp log verify`, `homecmp log export` (to `/dev/null`) and
//! `homecmp log replay --until N/2`, each a process of its own, timed from
//! spawn to exit. Beside them, in this process, the floor: RocksDB's own
//! iterator over the same records, and that scan plus the decode.
//!
//! `cargo bench --bench log_tools [-- N...]` (default 5000000). With
//! `HOMECMP_BEFORE=/path/to/an/older/homecmp`, each tool runs with both
//! binaries, alternating, three rounds, and the ratio of the medians is
//! printed (after / before). With `HOMECMP_LOG_DIR=/some/dir`, the log of
//! N events is kept in `/some/dir/N` and used again by the next run.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use common::generate;

/// Seconds `bin log <args>` took on `dir`, its output thrown away.
fn run_tool(bin: &str, dir: &Path, args: &[String]) -> f64 {
    let started = Instant::now();
    let status = Command::new(bin)
        .arg("log")
        .args(args)
        .arg("--data-dir")
        .arg(dir)
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "{bin} log {args:?}: {status}");
    started.elapsed().as_secs_f64()
}

/// Events a second of RocksDB's iterator alone, and of it with the decode
/// of every record (what any tool must at least do).
fn floor(dir: &Path) -> (f64, f64) {
    let log = homecmp::store::EventLog::open_read_only(&dir.join("events")).unwrap();
    let started = Instant::now();
    let mut n = 0u64;
    for item in log.raw().iterator(rocksdb::IteratorMode::Start) {
        let (key, _) = item.unwrap();
        n += u64::from(key.len() == 8);
    }
    let scan = n as f64 / started.elapsed().as_secs_f64();
    let started = Instant::now();
    let mut decoded = 0u64;
    for item in log.read_from(0) {
        item.unwrap();
        decoded += 1;
    }
    (scan, decoded as f64 / started.elapsed().as_secs_f64())
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

fn main() {
    let sizes = common::sizes(5_000_000);
    let after = env!("CARGO_BIN_EXE_homecmp").to_owned();
    let before = std::env::var("HOMECMP_BEFORE").ok();
    let rounds = if before.is_some() { 3 } else { 1 };
    for n in sizes {
        let temporary = tempfile::tempdir_in("/var/tmp").unwrap();
        let dir = match std::env::var_os("HOMECMP_LOG_DIR") {
            Some(kept) => Path::new(&kept).join(n.to_string()),
            None => temporary.path().to_owned(),
        };
        if !dir.join("events").exists() {
            generate(&dir.join("events"), n);
        }
        let dir = dir.as_path();
        let (scan, decode) = floor(dir);
        println!("{n} events");
        println!(
            "  floor: RocksDB scan {:.2} M/s, scan + decode {:.2} M/s",
            scan / 1e6,
            decode / 1e6
        );
        let tools: [(&str, Vec<String>, u64); 3] = [
            ("verify", vec!["verify".into()], n),
            ("export", vec!["export".into()], n),
            (
                "replay --until N/2",
                vec!["replay".into(), "--until".into(), (n / 2).to_string()],
                n / 2,
            ),
        ];
        for (name, args, events) in tools {
            let mut times: Vec<(f64, Option<f64>)> = Vec::new();
            for _ in 0..rounds {
                let old = before.as_ref().map(|b| run_tool(b, dir, &args));
                times.push((run_tool(&after, dir, &args), old));
            }
            let now = median(times.iter().map(|t| t.0).collect());
            let rate = |s: f64| events as f64 / s / 1e6;
            match before {
                Some(_) => {
                    let old = median(times.iter().filter_map(|t| t.1).collect());
                    println!(
                        "  {name:<20} {now:>7.2} s {:>6.2} M events/s   before {old:>7.2} s {:>6.2} M/s   {:.2}x",
                        rate(now),
                        rate(old),
                        old / now
                    );
                }
                None => println!("  {name:<20} {now:>7.2} s {:>6.2} M events/s", rate(now)),
            }
        }
    }
}
