//! Accounting: every answer, judged, lands here. One collector task owns all
//! histograms (no locks on the request path); request tasks send it
//! samples, in batches.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::sync::mpsc::UnboundedReceiver;

use crate::classes::{Class, Outcome, Verdict};
use crate::client::Protocol;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Warmup,
    Measured,
}

/// One finished request.
#[derive(Debug)]
pub struct Sample {
    pub class: Class,
    pub protocol: Protocol,
    pub phase: Phase,
    pub outcome: Outcome,
    pub verdict: Verdict,
    /// From the intended send time (open loop) or the actual one (closed loop).
    pub latency: Duration,
    /// When the answer was complete, since the run started.
    pub done_at: Duration,
    pub example: Option<Box<Example>>,
}

/// A request that did not get the prescribed answer, kept for the report.
#[derive(Debug, Clone, Serialize)]
pub struct Example {
    pub verdict: &'static str,
    pub class: &'static str,
    pub protocol: &'static str,
    pub source: IpAddr,
    pub request: String,
    pub headers: Vec<String>,
    pub expected: String,
    pub got: String,
    pub body: String,
}

/// Counters the progress bar reads while the collector writes them.
#[derive(Debug, Default)]
pub struct Live {
    pub completed: AtomicU64,
    pub measured: AtomicU64,
    pub mismatches: AtomicU64,
    pub security_failures: AtomicU64,
    pub errors: AtomicU64,
    pub load_refusals: AtomicU64,
    security_examples: AtomicUsize,
    mismatch_examples: AtomicUsize,
    error_examples: AtomicUsize,
}

impl Live {
    /// Whether a request task should describe this failure (a few of each kind).
    pub fn want_example(&self, verdict: Verdict) -> bool {
        let (counter, cap) = match verdict {
            Verdict::SecurityFailure => (&self.security_examples, 10),
            Verdict::Mismatch => (&self.mismatch_examples, 10),
            Verdict::Error => (&self.error_examples, 5),
            _ => return false,
        };
        counter.fetch_add(1, Ordering::Relaxed) < cap
    }
}

/// Latencies in microseconds, up to an hour, 3 significant digits.
pub fn histogram(sigfig: u8) -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, sigfig).expect("valid histogram bounds")
}

/// Counts and latencies of one class (or one protocol, or everything).
#[derive(Debug, Clone)]
pub struct Tally {
    pub sent: u64,
    pub outcomes: HashMap<Outcome, u64>,
    pub expected: u64,
    pub mismatches: u64,
    pub security_failures: u64,
    pub rate_limited: u64,
    pub overloaded: u64,
    pub errors: u64,
    /// Latency of answered requests (transport failures are not latencies).
    pub latency: Histogram<u64>,
}

impl Default for Tally {
    fn default() -> Self {
        Self {
            sent: 0,
            outcomes: HashMap::new(),
            expected: 0,
            mismatches: 0,
            security_failures: 0,
            rate_limited: 0,
            overloaded: 0,
            errors: 0,
            latency: histogram(3),
        }
    }
}

impl Tally {
    fn record(&mut self, sample: &Sample) {
        self.sent += 1;
        // No allocation per answer: the key is cloned once per distinct outcome.
        match self.outcomes.get_mut(&sample.outcome) {
            Some(n) => *n += 1,
            None => {
                self.outcomes.insert(sample.outcome.clone(), 1);
            }
        }
        match sample.verdict {
            Verdict::Expected => self.expected += 1,
            Verdict::Mismatch => self.mismatches += 1,
            Verdict::SecurityFailure => self.security_failures += 1,
            Verdict::RateLimited => self.rate_limited += 1,
            Verdict::Overloaded => self.overloaded += 1,
            Verdict::Error => self.errors += 1,
        }
        if sample.verdict != Verdict::Error {
            self.latency.saturating_record(micros(sample.latency));
        }
    }

    pub fn add(&mut self, other: &Tally) {
        self.sent += other.sent;
        for (outcome, n) in &other.outcomes {
            *self.outcomes.entry(outcome.clone()).or_default() += n;
        }
        self.expected += other.expected;
        self.mismatches += other.mismatches;
        self.security_failures += other.security_failures;
        self.rate_limited += other.rate_limited;
        self.overloaded += other.overloaded;
        self.errors += other.errors;
        self.latency
            .add(&other.latency)
            .expect("same histogram bounds");
    }
}

/// One time slice of the run (warm-up included).
#[derive(Debug, Clone)]
pub struct Slice {
    pub requests: u64,
    pub by_protocol: BTreeMap<Protocol, u64>,
    pub mismatches: u64,
    pub security_failures: u64,
    pub errors: u64,
    pub load_refusals: u64,
    pub latency: Histogram<u64>,
}

impl Default for Slice {
    fn default() -> Self {
        Self {
            requests: 0,
            by_protocol: BTreeMap::new(),
            mismatches: 0,
            security_failures: 0,
            errors: 0,
            load_refusals: 0,
            latency: histogram(2),
        }
    }
}

/// Everything the report is made from.
#[derive(Debug)]
pub struct Collected {
    pub classes: BTreeMap<Class, Tally>,
    pub protocols: BTreeMap<Protocol, Tally>,
    pub warmup: BTreeMap<Class, Tally>,
    pub timeline: Vec<Slice>,
    pub interval: Duration,
    pub examples: Vec<Example>,
    /// Answer time of the last measured request, since the run started.
    pub last_measured_done: Duration,
    /// Answer time of the last request of all.
    pub last_done: Duration,
}

impl Collected {
    pub fn new(interval: Duration) -> Self {
        Self {
            classes: BTreeMap::new(),
            protocols: BTreeMap::new(),
            warmup: BTreeMap::new(),
            timeline: Vec::new(),
            interval,
            examples: Vec::new(),
            last_measured_done: Duration::ZERO,
            last_done: Duration::ZERO,
        }
    }

    pub fn record(&mut self, mut sample: Sample, live: &Live) {
        let classes = match sample.phase {
            Phase::Warmup => &mut self.warmup,
            Phase::Measured => &mut self.classes,
        };
        classes.entry(sample.class).or_default().record(&sample);
        if sample.phase == Phase::Measured {
            self.protocols
                .entry(sample.protocol)
                .or_default()
                .record(&sample);
            self.last_measured_done = self.last_measured_done.max(sample.done_at);
            live.measured.fetch_add(1, Ordering::Relaxed);
        }
        self.last_done = self.last_done.max(sample.done_at);
        let index = (sample.done_at.as_nanos() / self.interval.as_nanos().max(1)) as usize;
        if self.timeline.len() <= index {
            self.timeline.resize_with(index + 1, Slice::default);
        }
        let slice = &mut self.timeline[index];
        slice.requests += 1;
        *slice.by_protocol.entry(sample.protocol).or_default() += 1;
        let counter = match sample.verdict {
            Verdict::Expected => None,
            Verdict::Mismatch => {
                slice.mismatches += 1;
                Some(&live.mismatches)
            }
            Verdict::SecurityFailure => {
                slice.security_failures += 1;
                Some(&live.security_failures)
            }
            Verdict::Error => {
                slice.errors += 1;
                Some(&live.errors)
            }
            Verdict::RateLimited | Verdict::Overloaded => {
                slice.load_refusals += 1;
                Some(&live.load_refusals)
            }
        };
        if let Some(counter) = counter {
            counter.fetch_add(1, Ordering::Relaxed);
        }
        if sample.verdict != Verdict::Error {
            slice.latency.saturating_record(micros(sample.latency));
        }
        live.completed.fetch_add(1, Ordering::Relaxed);
        if let Some(example) = sample.example.take() {
            self.examples.push(*example);
        }
    }
}

/// Receives samples until every request task has finished.
pub async fn collect(
    mut samples: UnboundedReceiver<Vec<Sample>>,
    interval: Duration,
    live: Arc<Live>,
) -> Collected {
    let mut collected = Collected::new(interval);
    while let Some(batch) = samples.recv().await {
        for sample in batch {
            collected.record(sample, &live);
        }
    }
    collected
}

pub fn micros(d: Duration) -> u64 {
    d.as_micros().min(u128::from(u64::MAX)) as u64
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;

    use super::*;

    fn sample(class: Class, phase: Phase, verdict: Verdict, at_ms: u64) -> Sample {
        Sample {
            class,
            protocol: Protocol::Http2,
            phase,
            outcome: Outcome::Answer {
                status: 200,
                label: Cow::Borrowed("existing"),
            },
            verdict,
            latency: Duration::from_micros(1500),
            done_at: Duration::from_millis(at_ms),
            example: None,
        }
    }

    #[test]
    fn samples_are_split_by_phase_class_and_time() {
        let live = Live::default();
        let mut c = Collected::new(Duration::from_secs(1));
        c.record(
            sample(Class::Legit, Phase::Warmup, Verdict::Expected, 100),
            &live,
        );
        c.record(
            sample(Class::Legit, Phase::Measured, Verdict::Expected, 1200),
            &live,
        );
        c.record(
            sample(
                Class::Mismatch,
                Phase::Measured,
                Verdict::SecurityFailure,
                2500,
            ),
            &live,
        );
        assert_eq!(c.warmup[&Class::Legit].sent, 1);
        let existing = Outcome::Answer {
            status: 200,
            label: Cow::Borrowed("existing"),
        };
        assert_eq!(c.classes[&Class::Legit].outcomes[&existing], 1);
        assert_eq!(c.classes[&Class::Mismatch].security_failures, 1);
        assert_eq!(c.timeline.len(), 3);
        assert_eq!(c.timeline[2].security_failures, 1);
        assert_eq!(c.last_measured_done, Duration::from_millis(2500));
        assert_eq!(live.security_failures.load(Ordering::Relaxed), 1);
        assert_eq!(live.measured.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn example_budget() {
        let live = Live::default();
        let kept = (0..50)
            .filter(|_| live.want_example(Verdict::Error))
            .count();
        assert_eq!(kept, 5);
        assert!(live.want_example(Verdict::SecurityFailure));
        assert!(!live.want_example(Verdict::Expected));
    }
}
