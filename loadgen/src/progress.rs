//! The live progress bar: phase, elapsed time, current rate and the failure
//! counters, refreshed a few times a second from the collector's counters.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::stats::Live;

const TICK: Duration = Duration::from_millis(250);

/// A bar that hides itself with `--quiet` or when stderr is not a terminal.
pub fn bar(quiet: bool, len: u64, template: &str) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(
        Some(len),
        if quiet {
            ProgressDrawTarget::hidden()
        } else {
            ProgressDrawTarget::stderr()
        },
    );
    bar.set_style(
        ProgressStyle::with_template(template)
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar
}

/// What the run is bounded by, for the bar's length.
#[derive(Debug, Clone, Copy)]
pub enum Bound {
    /// Warm-up plus measured time.
    Time(Duration),
    /// Measured requests.
    Count(u64),
}

/// Draws the run's progress until dropped.
#[derive(Debug)]
pub struct RunProgress {
    task: tokio::task::JoinHandle<()>,
    bar: ProgressBar,
}

impl RunProgress {
    pub fn start(quiet: bool, bound: Bound, warmup: Duration, live: Arc<Live>) -> Self {
        let len = match bound {
            Bound::Time(d) => d.as_millis() as u64,
            Bound::Count(n) => n,
        };
        let bar = bar(
            quiet,
            len,
            "{spinner} {prefix:9} [{elapsed_precise}] [{bar:30}] {percent:>3}%  {msg}",
        );
        let drawn = bar.clone();
        let task = tokio::spawn(async move {
            let started = Instant::now();
            let mut last = (started, 0u64);
            let mut tick = tokio::time::interval(TICK);
            loop {
                tick.tick().await;
                let now = Instant::now();
                let completed = live.completed.load(Ordering::Relaxed);
                let rate = (completed - last.1) as f64
                    / now.duration_since(last.0).as_secs_f64().max(1e-3);
                last = (now, completed);
                let elapsed = now.duration_since(started);
                drawn.set_prefix(if elapsed < warmup {
                    "warm-up"
                } else {
                    "measuring"
                });
                drawn.set_position(match bound {
                    Bound::Time(_) => elapsed.as_millis() as u64,
                    Bound::Count(_) => live.measured.load(Ordering::Relaxed),
                });
                drawn.set_message(message(&live, rate));
            }
        });
        Self { task, bar }
    }

    pub fn finish(self) {
        self.task.abort();
        self.bar.finish_and_clear();
    }
}

fn message(live: &Live, rate: f64) -> String {
    let security = live.security_failures.load(Ordering::Relaxed);
    let mut text = format!(
        "{rate:>8.0} req/s  mismatches {}  errors {}  429/503 {}",
        live.mismatches.load(Ordering::Relaxed),
        live.errors.load(Ordering::Relaxed),
        live.load_refusals.load(Ordering::Relaxed),
    );
    if security > 0 {
        text.push_str(&format!("  SECURITY FAILURES {security}"));
    }
    text
}
