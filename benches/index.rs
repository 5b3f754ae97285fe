//! Index benches: how fast a lookup, how many bytes.
//!
//! The map itself was chosen by a comparison of dashmap and papaya that
//! this file ran until the choice was made (git history: "Benches: index map
//! comparison"); its numbers are in the README. The loser is out of the build.
//!
//! 1. `index_lookup/*`: the real [`homecmp::store::Index`] built with
//!    `Index::apply` from `AssociationCreated` records, hit and miss at 1M
//!    and 10M associations.
//! 2. Memory: heap bytes per association at 1M and 10M, counted by the
//!    global allocator below; printed and written to
//!    `<target>/criterion/index-memory.txt`.
//!
//! `cargo bench --bench index` runs it all (about 2 minutes, ~3 GB RAM at
//! 10M). Under `cargo test --benches` (criterion's test mode) the sizes shrink
//! to 20k and 100k so a test run stays quick.

// The only unsafe here is the counting allocator: `GlobalAlloc` is an unsafe
// trait and its methods forward raw pointers to `std::alloc::System`
// unchanged. The workspace denies unsafe_code; this bench file needs it to
// measure memory and nothing else uses it.
#![allow(unsafe_code)]

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::{OnceCell, RefCell};
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::mix;
use criterion::measurement::WallTime;
use criterion::{
    BenchmarkGroup, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main,
};
use homecmp::store::{Association, Event, IdentitySource, Index, Record};
use homecmp::wire::SubscriberRef;

// ---------------------------------------------------------------------------
// Counting allocator

/// Forwards to `System` and keeps two counters of what is live: the bytes
/// asked for, and an estimate of what glibc's malloc really uses for them
/// (16-byte chunks with an 8-byte header, 32 bytes at least).
struct Counting;

static LIVE_BYTES: AtomicUsize = AtomicUsize::new(0);
static LIVE_CHUNK_BYTES: AtomicUsize = AtomicUsize::new(0);

fn glibc_chunk(size: usize) -> usize {
    ((size + 8 + 15) & !15).max(32)
}

fn count_alloc(size: usize) {
    LIVE_BYTES.fetch_add(size, Ordering::Relaxed);
    LIVE_CHUNK_BYTES.fetch_add(glibc_chunk(size), Ordering::Relaxed);
}

fn count_dealloc(size: usize) {
    LIVE_BYTES.fetch_sub(size, Ordering::Relaxed);
    LIVE_CHUNK_BYTES.fetch_sub(glibc_chunk(size), Ordering::Relaxed);
}

// SAFETY: every method forwards its arguments to `System` untouched and only
// updates counters on the side, so `System`'s guarantees carry over.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same contract as our caller's.
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() {
            count_alloc(layout.size());
        }
        ptr
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same contract as our caller's.
        let ptr = unsafe { System.alloc_zeroed(layout) };
        if !ptr.is_null() {
            count_alloc(layout.size());
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System` through us with this layout.
        unsafe { System.dealloc(ptr, layout) };
        count_dealloc(layout.size());
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `ptr` came from `System` through us with this layout.
        let new = unsafe { System.realloc(ptr, layout, new_size) };
        if !new.is_null() {
            count_dealloc(layout.size());
            count_alloc(new_size);
        }
        new
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[derive(Clone, Copy)]
struct Heap {
    bytes: usize,
    chunks: usize,
}

fn heap() -> Heap {
    Heap {
        bytes: LIVE_BYTES.load(Ordering::Relaxed),
        chunks: LIVE_CHUNK_BYTES.load(Ordering::Relaxed),
    }
}

/// Memory findings, printed and collected for the report file.
struct MemoryReport {
    lines: Vec<String>,
}

impl MemoryReport {
    fn record(&mut self, what: &str, n: usize, before: Heap, after: Heap) {
        let bytes = after.bytes.saturating_sub(before.bytes) as f64 / n as f64;
        let chunks = after.chunks.saturating_sub(before.chunks) as f64 / n as f64;
        let line = format!(
            "{what:<44} n={:<6} {bytes:>7.1} bytes/association requested, {chunks:>7.1} with glibc chunk overhead, {:>8.1} MiB total",
            label(n),
            after.chunks.saturating_sub(before.chunks) as f64 / (1 << 20) as f64,
        );
        eprintln!("memory: {line}");
        self.lines.push(line);
    }

    fn write(&self) {
        if self.lines.is_empty() {
            return;
        }
        let dir = criterion_home();
        let path = dir.join("index-memory.txt");
        let text = format!(
            "# homecmp benches/index.rs: live heap per association after the build\n\
             # (clientids are 36-char UUID strings; requested = sum of Layout sizes;\n\
             # chunk = glibc malloc chunk estimate, max(32, round16(size + 8)))\n{}\n",
            self.lines.join("\n")
        );
        match std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(&path, text)) {
            Ok(()) => eprintln!("memory: written to {}", path.display()),
            Err(e) => eprintln!("memory: cannot write {}: {e}", path.display()),
        }
    }
}

/// Where criterion writes its reports: `$CRITERION_HOME`, else
/// `<target>/criterion` found from this executable (`<target>/release/deps/`).
fn criterion_home() -> PathBuf {
    if let Some(home) = std::env::var_os("CRITERION_HOME") {
        return PathBuf::from(home);
    }
    std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.parent()?.join("criterion")))
        .unwrap_or_else(|| PathBuf::from("target/criterion"))
}

// ---------------------------------------------------------------------------
// Data

/// True under `cargo bench`; false under `cargo test --benches` (or
/// `-- --test`, `--list`), where criterion runs each bench once.
fn full_run() -> bool {
    let args: Vec<String> = std::env::args().collect();
    args.iter().any(|a| a == "--bench") && !args.iter().any(|a| a == "--test" || a == "--list")
}

fn label(n: usize) -> String {
    match n {
        n if n % 1_000_000 == 0 => format!("{}M", n / 1_000_000),
        n if n % 1_000 == 0 => format!("{}k", n / 1_000),
        n => n.to_string(),
    }
}

const PRESENT: u64 = 1;
const ABSENT: u64 = 2;

/// The `i`-th clientid of a set: a v4-shaped UUID string (36 chars). The low
/// 56 bits hold `set` and `i` untouched, so keys are distinct within a set and
/// never shared between sets; the rest looks random.
fn clientid(set: u64, i: u64) -> String {
    let hi = mix(i ^ (set << 56));
    let lo = (set << 48) | (i & 0xFFFF_FFFF_FFFF);
    let bytes = ((u128::from(hi) << 64) | u128::from(lo)).to_be_bytes();
    uuid::Builder::from_random_bytes(bytes)
        .into_uuid()
        .hyphenated()
        .to_string()
}

fn subscriber(n: u64) -> SubscriberRef {
    let mut bytes = [0u8; 32];
    for (k, chunk) in bytes.chunks_mut(8).enumerate() {
        chunk.copy_from_slice(&mix(n ^ ((k as u64) << 60)).to_le_bytes());
    }
    SubscriberRef(bytes)
}

/// Lookup keys: `PROBES` clientids of `set`, drawn at random from `0..n`,
/// so consecutive lookups land far apart in the map (as real traffic does).
const PROBES: usize = 1 << 16;

fn probes(set: u64, n: usize) -> Vec<Box<str>> {
    (0..PROBES as u64)
        .map(|k| clientid(set, mix(k ^ 0xABCD) % n as u64).into_boxed_str())
        .collect()
}

// ---------------------------------------------------------------------------
// Benches

/// Benches lookups in the map that `map` returns (built on first use, so a
/// name filter that skips these benches also skips the build):
/// single-threaded, and with more threads sharing the map (then the time is
/// per lookup over all threads, so throughput is the aggregate).
fn bench_lookup<'m, M, F>(
    group: &mut BenchmarkGroup<'_, WallTime>,
    name: &str,
    probes: &[Box<str>],
    threads: &[usize],
    map: impl Fn() -> &'m M,
    lookup: F,
) where
    M: Sync + 'm,
    F: Fn(&M, &str) -> Option<Association> + Sync,
{
    let mask = probes.len() - 1;
    for &t in threads {
        let id = if threads.len() == 1 {
            BenchmarkId::from_parameter(name)
        } else {
            BenchmarkId::new(name, format!("{t}thread"))
        };
        if t == 1 {
            group.bench_function(id, |b| {
                let map = map();
                let mut i = 0usize;
                b.iter(|| {
                    i = i.wrapping_add(1);
                    black_box(lookup(map, &probes[i & mask]))
                });
            });
        } else {
            group.bench_function(id, |b| {
                let map = map();
                b.iter_custom(|iters| {
                    let start = Instant::now();
                    std::thread::scope(|s| {
                        for k in 0..t {
                            let lookup = &lookup;
                            let share = (iters as usize + t - 1 - k) / t;
                            s.spawn(move || {
                                for j in 0..share {
                                    black_box(lookup(map, &probes[(j * t + k) & mask]));
                                }
                            });
                        }
                    });
                    start.elapsed()
                });
            });
        }
    }
}

fn build_index(n: usize, per_subscriber: u64) -> Index {
    let index = Index::new();
    for i in 0..n as u64 {
        let record = Record {
            at_ms: 1_700_000_000_000 + i,
            actor: None,
            event: Event::AssociationCreated {
                clientid: clientid(PRESENT, i),
                subscriber: subscriber(i / per_subscriber),
                source: IdentitySource::SessionBinding,
                client_addr: IpAddr::V4(Ipv4Addr::from(0x0A00_0000 | (i as u32 & 0xFF_FFFF))),
            },
        };
        index
            .apply(i + 1, &record)
            .expect("distinct clientids apply");
    }
    index
}

/// `also_shared`: measure the memory of a second index where subscribers
/// hold 4 clientids each (they then share one by-subscriber entry).
fn index_lookup(c: &mut Criterion, memory: &RefCell<MemoryReport>, n: usize, also_shared: bool) {
    let hits = probes(PRESENT, n);
    let misses = probes(ABSENT, n);
    let mut group = c.benchmark_group(format!("index_lookup/{}", label(n)));
    group.throughput(Throughput::Elements(1));
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(3));

    let cell = OnceCell::new();
    let index = || {
        cell.get_or_init(|| {
            let before = heap();
            let started = Instant::now();
            let index = build_index(n, 1);
            let took = started.elapsed();
            memory
                .borrow_mut()
                .record("Index, 1 clientid per subscriber", n, before, heap());
            eprintln!(
                "index: built {} associations in {:.1} s ({:.0} applies/s)",
                label(n),
                took.as_secs_f64(),
                n as f64 / took.as_secs_f64()
            );
            assert_eq!(index.counts().associations, n);
            if also_shared {
                let before = heap();
                let shared = build_index(n, 4);
                memory
                    .borrow_mut()
                    .record("Index, 4 clientids per subscriber", n, before, heap());
                drop(shared);
            }
            index
        })
    };
    let get = |index: &Index, k: &str| index.association(k);
    bench_lookup(&mut group, "hit", &hits, &[1], index, get);
    bench_lookup(&mut group, "miss", &misses, &[1], index, get);
    group.finish();
}

fn benches(c: &mut Criterion) {
    let (small, large) = if full_run() {
        (1_000_000, 10_000_000)
    } else {
        (20_000, 100_000)
    };
    let memory = RefCell::new(MemoryReport { lines: Vec::new() });
    index_lookup(c, &memory, small, true);
    index_lookup(c, &memory, large, false);
    memory.borrow().write();
}

criterion_group!(index, benches);
criterion_main!(index);
