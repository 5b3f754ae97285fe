//! The traffic: lanes (a keep-alive connection per WiFi source and per MNO
//! source), request tasks on them, bounds and schedule.
//!
//! Each request task sends one request at a time. Closed loop: the next
//! request leaves as soon as the answer is in. Open loop: task `j` of `T`
//! sends its `k`-th request at `start + (j + k·T) / rate`; when an answer is
//! late the next request leaves late, but its latency still counts from the
//! time it should have left, so a stalled server cannot hide its stall
//! (coordinated omission corrected, as wrk2 does).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use tokio::sync::mpsc::{UnboundedSender, unbounded_channel};
use tokio::time::Sleep;

use crate::classes::{Outcome, Planned, Planner, Rng, Verdict, Via, judge};
use crate::client::{Answer, Client, Failure, Lane, Protocol};
use crate::data::Setup;
use crate::stats::{self, Collected, Example, Live, Phase, Sample};

/// How the traffic is shaped and bounded.
#[derive(Debug, Clone)]
pub struct RunPlan {
    pub protocols: Vec<Protocol>,
    pub connections: usize,
    pub streams: usize,
    pub rate: Option<f64>,
    pub warmup: Duration,
    /// Measured time bound (after warm-up).
    pub duration: Option<Duration>,
    /// Measured request bound (after warm-up).
    pub requests: Option<u64>,
    pub keepalive: bool,
    pub timeout: Duration,
    pub wifi_sources: Vec<IpAddr>,
    pub interval: Duration,
    /// Every legitimate request from this side (`--legit-from`), or half
    /// from each.
    pub legit_side: Option<Via>,
}

/// The connections of lane `i`: one from a WiFi source, one from the MNO
/// address of subscriber `home` (for the `mismatch` class).
#[derive(Debug)]
struct LaneSet {
    protocol: Protocol,
    wifi: Lane,
    mno: Lane,
    home: usize,
}

#[derive(Debug)]
struct Shared {
    plan: RunPlan,
    planner: Arc<Planner>,
    clients: BTreeMap<Protocol, Arc<Client>>,
    lanes: Vec<LaneSet>,
    start: Instant,
    measure_start: Instant,
    end: Option<Instant>,
    /// Measured requests handed out, against `plan.requests`.
    tickets: AtomicU64,
    /// Round robin over WiFi sources for per-request connections.
    next_source: AtomicUsize,
    stop: Arc<AtomicBool>,
    live: Arc<Live>,
    samples: UnboundedSender<Vec<Sample>>,
}

/// Runs the traffic until a bound is reached or `stop` is set; returns when
/// every request has been answered or timed out.
pub async fn run(
    plan: RunPlan,
    planner: Arc<Planner>,
    clients: BTreeMap<Protocol, Arc<Client>>,
    live: Arc<Live>,
    stop: Arc<AtomicBool>,
) -> Collected {
    let lanes = lane_sets(&plan, planner.setup());
    let (samples, received) = unbounded_channel();
    let collector = tokio::spawn(stats::collect(received, plan.interval, live.clone()));
    let start = Instant::now();
    let measure_start = start + plan.warmup;
    let shared = Arc::new(Shared {
        end: plan.duration.map(|d| measure_start + d),
        plan,
        planner,
        clients,
        lanes,
        start,
        measure_start,
        tickets: AtomicU64::new(0),
        next_source: AtomicUsize::new(0),
        stop,
        live,
        samples,
    });
    let slots = task_slots(&shared.lanes, shared.plan.streams, shared.plan.legit_side);
    let total = slots.len() as u64;
    // An HTTP/3 lane's streams share a task (see `lane_task`); any other
    // stream has a task of its own (HTTP/2 batches its writes already, and
    // measured slower on a shared task: 67-68k req/s against 91-97k).
    let mut tasks_of: BTreeMap<(usize, usize), Vec<Slot>> = BTreeMap::new();
    for (j, (lane, side)) in slots.into_iter().enumerate() {
        let task = match shared.lanes[lane].protocol {
            Protocol::Http3 => 0,
            Protocol::Http1 | Protocol::Http2 => j,
        };
        tasks_of
            .entry((lane, task))
            .or_default()
            .push((j as u64, side));
    }
    let mut tasks = tokio::task::JoinSet::new();
    for ((lane, _), slots) in tasks_of {
        tasks.spawn(lane_task(shared.clone(), lane, slots, total));
    }
    while let Some(done) = tasks.join_next().await {
        if let Err(e) = done
            && e.is_panic()
        {
            std::panic::resume_unwind(e.into_panic());
        }
    }
    shared.close().await;
    // The last sender of samples goes: the collector ends.
    drop(shared);
    collector.await.expect("the collector does not panic")
}

/// Lane `i`: protocols, WiFi sources and subscribers dealt out round robin.
fn lane_sets(plan: &RunPlan, setup: &Setup) -> Vec<LaneSet> {
    let subscribers = &setup.subscribers;
    (0..plan.connections)
        .map(|i| {
            let home = i % subscribers.len();
            LaneSet {
                protocol: plan.protocols[i % plan.protocols.len()],
                wifi: Lane::new(plan.wifi_sources[i % plan.wifi_sources.len()]),
                mno: Lane::new(subscribers[home].ip),
                home,
            }
        })
        .collect()
}

/// The request tasks to start: the lane of each, and the side its
/// legitimate requests keep to, if any.
///
/// A lane's legitimate requests leave half from WiFi, half from its
/// subscriber's MNO address: on a multiplexed lane, each task keeps to
/// one side, so each of its two connections carries a steady half of
/// its streams (an HTTP/1.1 lane's one task tosses a coin per request).
fn task_slots(
    lanes: &[LaneSet],
    streams: usize,
    legit_side: Option<Via>,
) -> Vec<(usize, Option<Via>)> {
    lanes
        .iter()
        .enumerate()
        .flat_map(|(i, lane)| {
            let streams = lane.protocol.streams(streams);
            (0..streams).map(move |k| {
                let half = (streams > 1).then_some(if k % 2 == 0 { Via::Wifi } else { Via::Mno });
                (i, legit_side.or(half))
            })
        })
        .collect()
}

/// A request task's number and the side its legitimate requests keep to.
type Slot = (u64, Option<Via>);

/// Request tasks of a lane, run on one tokio task: over HTTP/3 the requests
/// its streams send in one turn leave together (one datagram for several;
/// with a tokio task per stream, quinn's driver ran right after each one
/// that wrote and sent its request alone).
async fn lane_task(shared: Arc<Shared>, lane: usize, slots: Vec<Slot>, total: u64) {
    let mut streams: FuturesUnordered<_> = slots
        .into_iter()
        .map(|(j, side)| request_task(shared.clone(), lane, side, j, total))
        .collect();
    while streams.next().await.is_some() {}
}

/// One request at a time, on lane `lane`, as task `j` of `total`; its
/// legitimate requests leave from `side` if given.
async fn request_task(shared: Arc<Shared>, lane: usize, side: Option<Via>, j: u64, total: u64) {
    let set = &shared.lanes[lane];
    let client = &shared.clients[&set.protocol];
    let mut rng = Rng::from_time(j);
    let mut batch = Batch::new();
    // One timer for the task, moved on for each request.
    let deadline = tokio::time::sleep(shared.plan.timeout);
    tokio::pin!(deadline);
    for k in 0u64.. {
        let Some(intended) = shared.send_time(j + k * total).await else {
            break;
        };
        let Some(phase) = shared.admit(intended) else {
            break;
        };
        let home = shared.home(set, &mut rng);
        let planned = shared.planner.plan(&mut rng, home, side);
        let source = shared.source(set, &planned, home);
        let result = shared
            .answer_within(deadline.as_mut(), set, client, &planned, source)
            .await;
        let sample = shared.sample(set, &planned, source, phase, intended, result);
        if batch.push(sample, &shared.samples).is_err() {
            return;
        }
    }
    batch.flush(&shared.samples);
}

/// Samples a request task sends the collector at once, or what it has
/// after BATCH_PERIOD (the live view lags by no more).
const BATCH: usize = 64;
const BATCH_PERIOD: Duration = Duration::from_millis(50);

/// A request task's samples on their way to the collector: in batches (one
/// wake of the collector per batch), at least every BATCH_PERIOD, and
/// what is left when the task ends.
struct Batch {
    samples: Vec<Sample>,
    sent_at: Instant,
}

/// The collector has ended: nobody counts samples any more.
struct CollectorGone;

impl Batch {
    fn new() -> Self {
        Self {
            samples: Vec::with_capacity(BATCH),
            sent_at: Instant::now(),
        }
    }

    fn push(
        &mut self,
        sample: Sample,
        to: &UnboundedSender<Vec<Sample>>,
    ) -> Result<(), CollectorGone> {
        self.samples.push(sample);
        if self.samples.len() == BATCH || self.sent_at.elapsed() >= BATCH_PERIOD {
            self.sent_at = Instant::now();
            to.send(std::mem::take(&mut self.samples))
                .map_err(|_| CollectorGone)?;
            self.samples.reserve(BATCH);
        }
        Ok(())
    }

    fn flush(self, to: &UnboundedSender<Vec<Sample>>) {
        if !self.samples.is_empty() {
            let _ = to.send(self.samples);
        }
    }
}

impl LaneSet {
    fn lane(&self, via: Via) -> &Lane {
        match via {
            Via::Wifi => &self.wifi,
            Via::Mno => &self.mno,
        }
    }
}

impl Shared {
    /// When request `n` of the schedule should leave. Open loop: at
    /// `start + n / rate`, waited for; `None` past the end. Closed loop: now.
    async fn send_time(&self, n: u64) -> Option<Instant> {
        let Some(rate) = self.plan.rate else {
            return Some(Instant::now());
        };
        let at = self.start + Duration::from_secs_f64(n as f64 / rate);
        if self.end.is_some_and(|end| at >= end) {
            return None;
        }
        tokio::time::sleep_until(at.into()).await;
        Some(at)
    }

    /// The phase a request meant to leave at `intended` counts in, or `None`
    /// when it must not leave: stopped, past the end, or the measured
    /// requests all handed out.
    fn admit(&self, intended: Instant) -> Option<Phase> {
        if self.stop.load(Ordering::Relaxed) || self.end.is_some_and(|end| intended >= end) {
            return None;
        }
        let phase = if intended < self.measure_start {
            Phase::Warmup
        } else {
            Phase::Measured
        };
        if phase == Phase::Measured
            && let Some(limit) = self.plan.requests
            && self.tickets.fetch_add(1, Ordering::Relaxed) >= limit
        {
            return None;
        }
        Some(phase)
    }

    /// The subscriber whose MNO address a request may leave from:
    /// keep-alive lanes keep their own; new connections take any.
    fn home(&self, set: &LaneSet, rng: &mut Rng) -> usize {
        if self.plan.keepalive {
            set.home
        } else {
            rng.below(self.planner.setup().subscribers.len() as u64) as usize
        }
    }

    fn source(&self, set: &LaneSet, planned: &Planned, home: usize) -> IpAddr {
        match (planned.via, self.plan.keepalive) {
            (via, true) => set.lane(via).source,
            (Via::Wifi, false) => {
                let n = self.next_source.fetch_add(1, Ordering::Relaxed);
                self.plan.wifi_sources[n % self.plan.wifi_sources.len()]
            }
            (Via::Mno, false) => self.planner.setup().subscribers[home].ip,
        }
    }

    /// The answer, or a timeout failure when there is none within the
    /// plan's timeout (`deadline` is the task's timer, moved on here).
    async fn answer_within(
        &self,
        mut deadline: Pin<&mut Sleep>,
        set: &LaneSet,
        client: &Client,
        planned: &Planned,
        source: IpAddr,
    ) -> Result<Answer, Failure> {
        deadline
            .as_mut()
            .reset(tokio::time::Instant::now() + self.plan.timeout);
        tokio::select! {
            biased;
            result = self.execute(set, client, planned, source) => result,
            () = deadline => Err(Failure::at(Failure::TIMEOUT)(format!(
                "no answer within {:?}",
                self.plan.timeout
            ))),
        }
    }

    async fn execute(
        &self,
        set: &LaneSet,
        client: &Client,
        planned: &Planned,
        source: IpAddr,
    ) -> Result<Answer, Failure> {
        if self.plan.keepalive {
            set.lane(planned.via).send(client, &planned.request).await
        } else {
            let mut conn = Box::pin(client.connect(source)).await?;
            let result = client.send(&mut conn, &planned.request).await;
            conn.close();
            result
        }
    }

    /// The finished request as the collector takes it: judged, timed from
    /// `intended`, and described if it is one of the few failures kept as
    /// examples.
    fn sample(
        &self,
        set: &LaneSet,
        planned: &Planned,
        source: IpAddr,
        phase: Phase,
        intended: Instant,
        result: Result<Answer, Failure>,
    ) -> Sample {
        let done = Instant::now();
        let outcome = match &result {
            Ok(answer) => Outcome::from_answer(answer.status, &answer.body),
            Err(failure) => Outcome::Failed(failure.kind),
        };
        let verdict = judge(planned.class, planned.expect, &outcome);
        let example =
            (verdict != Verdict::Expected && self.live.want_example(verdict)).then(|| {
                Box::new(example(
                    planned,
                    set.protocol,
                    source,
                    verdict,
                    &outcome,
                    &result,
                ))
            });
        Sample {
            class: planned.class,
            protocol: set.protocol,
            phase,
            outcome,
            verdict,
            latency: done.saturating_duration_since(intended),
            done_at: done.saturating_duration_since(self.start),
            example,
        }
    }

    /// Closes every kept connection and the QUIC endpoints.
    async fn close(&self) {
        for lane in &self.lanes {
            lane.wifi.close().await;
            lane.mno.close().await;
        }
        for client in self.clients.values() {
            client.shutdown().await;
        }
    }
}

fn example(
    planned: &Planned,
    protocol: Protocol,
    source: IpAddr,
    verdict: Verdict,
    outcome: &Outcome,
    result: &Result<Answer, Failure>,
) -> Example {
    let mut request = format!("GET {}", planned.request.path);
    if request.len() > 200 {
        request.truncate(200);
        request.push_str("...");
    }
    let body = match result {
        Ok(answer) => {
            String::from_utf8_lossy(&answer.body[..answer.body.len().min(300)]).into_owned()
        }
        Err(failure) => failure.to_string(),
    };
    Example {
        verdict: match verdict {
            Verdict::SecurityFailure => "security-failure",
            Verdict::Mismatch => "mismatch",
            _ => "error",
        },
        class: planned.class.name(),
        protocol: protocol.name(),
        source,
        request,
        headers: planned
            .request
            .headers
            .iter()
            .map(|(n, v)| format!("{n}: {}", v.to_str().unwrap_or("?")))
            .collect(),
        expected: planned.expect.to_string(),
        got: outcome.to_string(),
        body,
    }
}
