//! A run's end: why it ended, and the watch over a running pipeline until its files are
//! closed.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::pipeline::{RunSummary, Running};

pub use crate::contract::EndReason;

/// Watches a running pipeline until every file is closed: ends it after `idle` without a
/// new frame, calls `tick` every 50 ms. Returns the summary and why it ended.
pub fn supervise(
    running: Running,
    limit: u64,
    idle: Option<Duration>,
    stop_requested: &AtomicBool,
    mut tick: impl FnMut(&Running),
) -> (RunSummary, EndReason) {
    let mut last = (running.stats().indexed, Instant::now());
    let mut idle_hit = false;
    while !running.sources_finished() {
        std::thread::sleep(Duration::from_millis(50));
        let now = running.stats().indexed;
        if now != last.0 {
            last = (now, Instant::now());
        } else if idle.is_some_and(|t| last.1.elapsed() >= t) && !idle_hit {
            tracing::info!("no frame for the idle timeout; ending the run");
            idle_hit = true;
            running.stop();
        }
        tick(&running);
    }
    let summary = running.wait();
    let recorded = summary.streams.first().map_or(0, |s| s.frames);
    let reason = if !summary.ok() {
        EndReason::Error
    } else if idle_hit {
        EndReason::Idle
    } else if limit > 0 && recorded >= limit {
        EndReason::Count
    } else if stop_requested.load(Ordering::Relaxed) {
        EndReason::Stop
    } else {
        EndReason::Source
    };
    (summary, reason)
}
