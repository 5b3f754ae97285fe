//! The report: one structure, printed as a table for people and written as
//! JSON for machines, and the exit status it implies.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::classes::Class;
use crate::cpu::CpuTimes;
use crate::error::{EXIT_CANNOT_RUN, Error};
use crate::files;
use crate::stats::{Collected, Example, Slice, Tally};

pub const FORMAT_VERSION: u32 = 1;

/// Exit statuses.
pub const EXIT_OK: u8 = 0;
pub const EXIT_CORRECTNESS: u8 = 1;
pub const EXIT_SECURITY: u8 = 2;
/// Nothing was answered at all: no verdict can be given.
pub const EXIT_NO_ANSWERS: u8 = EXIT_CANNOT_RUN;

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub version: u32,
    pub run: RunInfo,
    /// Measured phase, one row per class.
    pub classes: Vec<Row>,
    /// Measured phase, one row per protocol.
    pub protocols: Vec<Row>,
    pub total: Row,
    pub warmup: WarmupSummary,
    pub timeline: Vec<Point>,
    pub cpu: CpuReport,
    /// A few requests that were not answered as prescribed.
    pub examples: Vec<Example>,
    pub verdict: VerdictSummary,
}

#[derive(Debug, Clone, Serialize)]
pub struct RunInfo {
    pub target: String,
    pub protocols: Vec<&'static str>,
    /// `closed-loop` or `open-loop`.
    pub mode: &'static str,
    pub rate: Option<f64>,
    pub connections: usize,
    pub streams: usize,
    pub keepalive: bool,
    /// WiFi source addresses in use (keep-alive: one per connection).
    pub wifi_sources: usize,
    pub subscribers: usize,
    pub clientids: usize,
    pub mix: BTreeMap<&'static str, u32>,
    pub warmup_secs: f64,
    /// From the end of warm-up to the last measured answer.
    pub measured_secs: f64,
}

/// Counts and latencies of a class, a protocol, or everything.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub name: String,
    pub sent: u64,
    pub expected: Vec<String>,
    pub outcomes: BTreeMap<String, u64>,
    /// Answered as prescribed.
    pub matched: u64,
    pub mismatches: u64,
    pub security_failures: u64,
    pub rate_limited: u64,
    pub overloaded: u64,
    pub errors: u64,
    pub throughput_rps: f64,
    pub latency_us: Latency,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct Latency {
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
    pub mean: f64,
}

impl Latency {
    fn of(h: &Histogram<u64>) -> Self {
        Self {
            p50: h.value_at_quantile(0.5),
            p90: h.value_at_quantile(0.9),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
            mean: h.mean(),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct WarmupSummary {
    pub sent: u64,
    pub mismatches: u64,
    pub security_failures: u64,
    pub errors: u64,
}

/// One time slice.
#[derive(Debug, Clone, Serialize)]
pub struct Point {
    /// Start of the slice, seconds since the run started (warm-up included).
    pub t_secs: f64,
    /// Length of the slice (the last one may be shorter).
    pub secs: f64,
    pub requests: u64,
    pub rps: f64,
    pub rps_by_protocol: BTreeMap<&'static str, f64>,
    pub mismatches: u64,
    pub security_failures: u64,
    pub errors: u64,
    pub load_refusals: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct CpuReport {
    /// Wall time of the whole run, warm-up included.
    pub wall_secs: f64,
    pub loadgen: Option<ProcessCpu>,
    /// The process given with `--server-pid`.
    pub server: Option<ProcessCpu>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ProcessCpu {
    pub user_secs: f64,
    pub system_secs: f64,
    /// CPU seconds per wall second.
    pub cores: f64,
    /// Requests (warm-up included) per CPU second.
    pub requests_per_cpu_sec: f64,
}

impl ProcessCpu {
    pub fn new(used: CpuTimes, wall: Duration, requests: u64) -> Self {
        let cpu = used.total().as_secs_f64();
        Self {
            user_secs: used.user.as_secs_f64(),
            system_secs: used.system.as_secs_f64(),
            cores: cpu / wall.as_secs_f64().max(1e-9),
            requests_per_cpu_sec: if cpu > 0.0 {
                requests as f64 / cpu
            } else {
                0.0
            },
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct VerdictSummary {
    /// Requests that must be refused but were resolved (warm-up included).
    pub security_failures: u64,
    /// Answers other than prescribed, 429/503 and transport errors aside (warm-up included).
    pub mismatches: u64,
    /// Of those, legit requests refused.
    pub legit_refused: u64,
    pub exit_code: u8,
}

/// What the report is made from besides the collected samples.
#[derive(Debug, Clone)]
pub struct Context {
    pub run: RunInfo,
    pub warmup: Duration,
    pub wall: Duration,
    pub loadgen_cpu: Option<CpuTimes>,
    pub server_cpu: Option<CpuTimes>,
}

/// The report of a run: the measured phase per class, per protocol and in
/// total, the warm-up, the timeline, CPU, examples, and the verdict.
pub fn build(collected: Collected, mut context: Context) -> Report {
    let measured = measured_time(&collected, context.warmup);
    context.run.measured_secs = measured.as_secs_f64();
    let all = sum(collected.classes.values());
    let warm = sum(collected.warmup.values());
    let classes = collected
        .classes
        .iter()
        .map(|(class, tally)| Row::new(class.name(), expected_of(*class), tally, measured))
        .collect();
    let protocols = collected
        .protocols
        .iter()
        .map(|(protocol, tally)| Row::new(protocol.name(), Vec::new(), tally, measured))
        .collect();
    Report {
        version: FORMAT_VERSION,
        classes,
        protocols,
        total: Row::new("total", Vec::new(), &all, measured),
        warmup: WarmupSummary::of(&warm),
        timeline: timeline(&collected),
        cpu: CpuReport::new(&context, all.sent + warm.sent),
        verdict: VerdictSummary::new(&collected, &all, &warm),
        examples: collected.examples,
        run: context.run,
    }
}

/// From the end of warm-up to the last measured answer (at least 1 ms, as
/// rates are divided by it).
fn measured_time(collected: &Collected, warmup: Duration) -> Duration {
    collected
        .last_measured_done
        .saturating_sub(warmup)
        .max(Duration::from_millis(1))
}

fn sum<'a>(tallies: impl Iterator<Item = &'a Tally>) -> Tally {
    let mut total = Tally::default();
    tallies.for_each(|t| total.add(t));
    total
}

fn expected_of(class: Class) -> Vec<String> {
    class.expected().iter().map(ToString::to_string).collect()
}

impl Row {
    fn new(name: &str, expected: Vec<String>, tally: &Tally, measured: Duration) -> Self {
        Row {
            name: name.to_owned(),
            sent: tally.sent,
            expected,
            outcomes: tally
                .outcomes
                .iter()
                .map(|(outcome, n)| (outcome.to_string(), *n))
                .collect(),
            matched: tally.expected,
            mismatches: tally.mismatches,
            security_failures: tally.security_failures,
            rate_limited: tally.rate_limited,
            overloaded: tally.overloaded,
            errors: tally.errors,
            throughput_rps: tally.sent as f64 / measured.as_secs_f64(),
            latency_us: Latency::of(&tally.latency),
        }
    }
}

impl WarmupSummary {
    fn of(warm: &Tally) -> Self {
        Self {
            sent: warm.sent,
            mismatches: warm.mismatches,
            security_failures: warm.security_failures,
            errors: warm.errors,
        }
    }
}

/// One point per slice of the collector's timeline. Rates divide by the
/// slice's length, which for the last one ends at the last answer.
fn timeline(collected: &Collected) -> Vec<Point> {
    let interval = collected.interval.as_secs_f64();
    let end = collected.last_done.as_secs_f64();
    collected
        .timeline
        .iter()
        .enumerate()
        .map(|(i, slice)| {
            let t_secs = i as f64 * interval;
            let secs = (end - t_secs).clamp(1e-3, interval);
            Point::new(slice, t_secs, secs)
        })
        .collect()
}

impl Point {
    fn new(slice: &Slice, t_secs: f64, secs: f64) -> Self {
        let ms = |us: u64| us as f64 / 1000.0;
        Self {
            t_secs,
            secs,
            requests: slice.requests,
            rps: slice.requests as f64 / secs,
            rps_by_protocol: slice
                .by_protocol
                .iter()
                .map(|(p, n)| (p.name(), *n as f64 / secs))
                .collect(),
            mismatches: slice.mismatches,
            security_failures: slice.security_failures,
            errors: slice.errors,
            load_refusals: slice.load_refusals,
            p50_ms: ms(slice.latency.value_at_quantile(0.5)),
            p99_ms: ms(slice.latency.value_at_quantile(0.99)),
            max_ms: ms(slice.latency.max()),
        }
    }
}

impl CpuReport {
    /// `requests`: every request of the run, warm-up included.
    fn new(context: &Context, requests: u64) -> Self {
        let of = |used: CpuTimes| ProcessCpu::new(used, context.wall, requests);
        Self {
            wall_secs: context.wall.as_secs_f64(),
            loadgen: context.loadgen_cpu.map(of),
            server: context.server_cpu.map(of),
        }
    }
}

impl VerdictSummary {
    /// Over the whole run, warm-up included: `all` sums the measured
    /// classes, `warm` the warm-up's.
    fn new(collected: &Collected, all: &Tally, warm: &Tally) -> Self {
        let legit_refused = [&collected.classes, &collected.warmup]
            .iter()
            .filter_map(|m| m.get(&Class::Legit))
            .map(|t| t.mismatches)
            .sum();
        let security_failures = all.security_failures + warm.security_failures;
        let mismatches = all.mismatches + warm.mismatches;
        let answered = (all.sent - all.errors) + (warm.sent - warm.errors);
        Self {
            security_failures,
            mismatches,
            legit_refused,
            exit_code: exit_code(security_failures, mismatches, answered),
        }
    }
}

/// The worst that happened decides: a security failure, then a wrong
/// answer, then no answer at all.
fn exit_code(security_failures: u64, mismatches: u64, answered: u64) -> u8 {
    if security_failures > 0 {
        EXIT_SECURITY
    } else if mismatches > 0 {
        EXIT_CORRECTNESS
    } else if answered == 0 {
        EXIT_NO_ANSWERS
    } else {
        EXIT_OK
    }
}

impl Report {
    pub fn write_json(&self, path: &Path) -> Result<(), Error> {
        files::write_json(path, self)
    }

    /// The table and summary, for a terminal.
    pub fn text(&self) -> String {
        let mut out = String::new();
        self.write_heading(&mut out);
        self.write_table(&mut out);
        self.write_expected_and_seen(&mut out);
        self.write_cpu(&mut out);
        self.write_notes(&mut out);
        self.write_verdict(&mut out);
        out
    }

    /// What was run, how long, and what the warm-up saw.
    fn write_heading(&self, out: &mut String) {
        let run = &self.run;
        let shape = match run.rate {
            Some(rate) => format!("open loop at {rate} req/s"),
            None => "closed loop".to_owned(),
        };
        let _ = writeln!(
            out,
            "\n{} {} | {} | {} connections x {} streams | {} | {} WiFi sources, {} subscribers, {} clientids",
            run.target,
            run.protocols.join("+"),
            shape,
            run.connections,
            run.streams,
            if run.keepalive {
                "keep-alive"
            } else {
                "new connection per request"
            },
            run.wifi_sources,
            run.subscribers,
            run.clientids,
        );
        let _ = writeln!(
            out,
            "measured {:.2}s after {:.2}s warm-up ({} warm-up requests: {} mismatches, {} security failures, {} errors)\n",
            run.measured_secs,
            run.warmup_secs,
            self.warmup.sent,
            self.warmup.mismatches,
            self.warmup.security_failures,
            self.warmup.errors
        );
    }

    /// One line per class, then per protocol, then the total.
    fn write_table(&self, out: &mut String) {
        let header = format!(
            "{:<18} {:>9} {:>9} {:>6} {:>6} {:>6} {:>6} {:>6} {:>10} {:>9} {:>9} {:>9} {:>9} {:>9}",
            "class",
            "sent",
            "as-expect",
            "mism",
            "SEC",
            "429",
            "503",
            "err",
            "req/s",
            "p50",
            "p90",
            "p99",
            "p99.9",
            "max"
        );
        let _ = writeln!(out, "{header}");
        let _ = writeln!(out, "{}", "-".repeat(header.len()));
        for row in &self.classes {
            line(out, row);
        }
        let _ = writeln!(out, "{}", "-".repeat(header.len()));
        for row in &self.protocols {
            line(out, row);
        }
        line(out, &self.total);
    }

    /// Per class: the answers it expects and those it got.
    fn write_expected_and_seen(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "\nexpected and seen (status and association or error code)"
        );
        for row in &self.classes {
            let _ = writeln!(
                out,
                "  {:<18} expected {}",
                row.name,
                row.expected.join(" | ")
            );
            let seen: Vec<String> = row
                .outcomes
                .iter()
                .map(|(o, n)| format!("{o} x{n}"))
                .collect();
            let _ = writeln!(out, "  {:<18} seen     {}", "", seen.join(", "));
        }
    }

    /// CPU time of the loadgen and, when known, of the server.
    fn write_cpu(&self, out: &mut String) {
        if let Some(me) = &self.cpu.loadgen {
            let _ = writeln!(
                out,
                "\nloadgen CPU: {:.2}s user + {:.2}s system over {:.2}s = {:.2} cores; {:.0} requests per CPU second",
                me.user_secs, me.system_secs, self.cpu.wall_secs, me.cores, me.requests_per_cpu_sec
            );
        }
        if let Some(server) = &self.cpu.server {
            let _ = writeln!(
                out,
                "server CPU:  {:.2}s user + {:.2}s system = {:.2} cores; {:.0} requests per CPU second",
                server.user_secs, server.system_secs, server.cores, server.requests_per_cpu_sec
            );
        }
    }

    /// What the numbers need said: a short open loop, load protection, lost requests.
    fn write_notes(&self, out: &mut String) {
        let run = &self.run;
        if let Some(rate) = run.rate
            && self.total.throughput_rps < rate * 0.95
        {
            let _ = writeln!(
                out,
                "the open loop fell short of {rate} req/s ({:.1} reached): answers were slower than the \
                 schedule; latencies count from the intended send times. Add --connections or --streams.",
                self.total.throughput_rps
            );
        }
        let errors = self.total.errors + self.warmup.errors;
        let limited = self.total.rate_limited + self.total.overloaded;
        if limited > 0 {
            let _ = writeln!(
                out,
                "load protection answered {} requests with 429 RATE_LIMITED and {} with 503 OVERLOADED (not counted as mismatches)",
                self.total.rate_limited, self.total.overloaded
            );
        }
        if errors > 0 {
            let _ = writeln!(
                out,
                "{errors} requests got no HTTP answer (connect, TLS, QUIC or timeout); see examples in --json"
            );
        }
        for example in self
            .examples
            .iter()
            .filter(|e| e.verdict != "security-failure")
            .take(5)
        {
            let _ = writeln!(
                out,
                "  {} {} {} from {}: {} -> {} (expected {}) {}",
                example.verdict,
                example.class,
                example.protocol,
                example.source,
                example.request,
                example.got,
                example.expected,
                example.body
            );
        }
    }

    /// The one-line verdict that matches the exit code.
    fn write_verdict(&self, out: &mut String) {
        let v = &self.verdict;
        let _ = writeln!(
            out,
            "\nverdict: {}",
            match v.exit_code {
                EXIT_SECURITY => format!(
                    "SECURITY FAILURE: {} requests that must be refused were resolved",
                    v.security_failures
                ),
                EXIT_CORRECTNESS => format!(
                    "CORRECTNESS FAILURE: {} answers not as prescribed ({} legit requests refused)",
                    v.mismatches, v.legit_refused
                ),
                EXIT_NO_ANSWERS => "NO ANSWERS: not one request got an HTTP answer".to_owned(),
                _ if self.total.errors + self.warmup.errors > 0 => format!(
                    "every answer as prescribed, but {} requests got none",
                    self.total.errors + self.warmup.errors
                ),
                _ => "every answer as prescribed".to_owned(),
            }
        );
    }

    /// The loud part: printed to stderr when anything that must be refused was resolved.
    pub fn security_banner(&self) -> Option<String> {
        if self.verdict.security_failures == 0 {
            return None;
        }
        let bar = "!".repeat(78);
        let mut out = format!(
            "\n{bar}\n!! SECURITY FAILURE: {} requests that must be refused were RESOLVED (200)\n",
            self.verdict.security_failures
        );
        for row in self.classes.iter().filter(|r| r.security_failures > 0) {
            let _ = writeln!(out, "!!   {}: {} resolved", row.name, row.security_failures);
        }
        if self.warmup.security_failures > 0 {
            let _ = writeln!(
                out,
                "!!   during warm-up: {}",
                self.warmup.security_failures
            );
        }
        for e in self
            .examples
            .iter()
            .filter(|e| e.verdict == "security-failure")
        {
            let _ = writeln!(
                out,
                "!!   {} over {} from {}: {} [{}] -> {} {}",
                e.class,
                e.protocol,
                e.source,
                e.request,
                e.headers.join("; "),
                e.got,
                e.body
            );
        }
        let _ = writeln!(out, "{bar}");
        Some(out)
    }
}

fn line(out: &mut String, row: &Row) {
    let l = &row.latency_us;
    let _ = writeln!(
        out,
        "{:<18} {:>9} {:>9} {:>6} {:>6} {:>6} {:>6} {:>6} {:>10.1} {:>9} {:>9} {:>9} {:>9} {:>9}",
        row.name,
        row.sent,
        row.matched,
        row.mismatches,
        row.security_failures,
        row.rate_limited,
        row.overloaded,
        row.errors,
        row.throughput_rps,
        human(l.p50),
        human(l.p90),
        human(l.p99),
        human(l.p999),
        human(l.max)
    );
}

/// Microseconds as µs, ms or s.
pub fn human(us: u64) -> String {
    match us {
        0..1_000 => format!("{us}µs"),
        1_000..1_000_000 => format!("{:.2}ms", us as f64 / 1e3),
        _ => format!("{:.2}s", us as f64 / 1e6),
    }
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;

    use super::*;
    use crate::classes::{Outcome, Verdict};
    use crate::client::Protocol;
    use crate::stats::{Live, Phase, Sample};

    fn context() -> Context {
        Context {
            run: RunInfo {
                target: "https://127.0.0.1:1".into(),
                protocols: vec!["http2"],
                mode: "closed-loop",
                rate: None,
                connections: 1,
                streams: 1,
                keepalive: true,
                wifi_sources: 1,
                subscribers: 2,
                clientids: 2,
                mix: BTreeMap::new(),
                warmup_secs: 0.0,
                measured_secs: 0.0,
            },
            warmup: Duration::ZERO,
            wall: Duration::from_secs(1),
            loadgen_cpu: None,
            server_cpu: None,
        }
    }

    /// The exit status of a run whose answers were judged `verdicts`.
    fn exit_code(verdicts: &[(Class, Verdict)]) -> u8 {
        let live = Live::default();
        let mut collected = Collected::new(Duration::from_secs(1));
        for (i, (class, verdict)) in verdicts.iter().enumerate() {
            let outcome = match verdict {
                Verdict::Error => Outcome::Failed("connect"),
                _ => Outcome::Answer {
                    status: 200,
                    label: Cow::Borrowed("existing"),
                },
            };
            let sample = Sample {
                class: *class,
                protocol: Protocol::Http2,
                phase: Phase::Measured,
                outcome,
                verdict: *verdict,
                latency: Duration::from_millis(1),
                done_at: Duration::from_millis(i as u64),
                example: None,
            };
            collected.record(sample, &live);
        }
        build(collected, context()).verdict.exit_code
    }

    #[test]
    fn exit_status_follows_the_worst_verdict() {
        use Verdict::*;
        let legit = Class::Legit;
        let spoof = Class::SpoofedMsisdn;
        assert_eq!(exit_code(&[(legit, Expected), (spoof, Expected)]), EXIT_OK);
        assert_eq!(
            exit_code(&[(legit, Expected), (spoof, RateLimited), (spoof, Overloaded)]),
            EXIT_OK
        );
        assert_eq!(exit_code(&[(legit, Expected), (spoof, Error)]), EXIT_OK);
        assert_eq!(
            exit_code(&[(legit, Mismatch), (spoof, Expected)]),
            EXIT_CORRECTNESS
        );
        assert_eq!(
            exit_code(&[(legit, Mismatch), (spoof, SecurityFailure)]),
            EXIT_SECURITY
        );
        assert_eq!(
            exit_code(&[(legit, Error), (spoof, Error)]),
            EXIT_NO_ANSWERS
        );
    }

    #[test]
    fn human_durations() {
        assert_eq!(human(850), "850µs");
        assert_eq!(human(1250), "1.25ms");
        assert_eq!(human(2_100_000), "2.10s");
    }
}
