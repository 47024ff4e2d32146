//! The `run` thread: watches one run's pipeline until its files are closed, keeps the run's
//! status current while it goes, and files its end (status, summary, totals) with the run
//! manager's record of ended runs. `detingestd run` and `serve` run a run this one way.

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::status::Ended;
use super::{coordinate, supervise, EndReason};
use crate::cluster::merge::Merger;
use crate::contract::{DetectorStatus, RunState, RunStatus};
use crate::pipeline::{RunSummary, Running};

/// What the thread watches and where it reports.
pub(super) struct Watch {
    /// The run's status, read by `GET /run`.
    pub status: Arc<Mutex<RunStatus>>,
    /// Set when a stop was asked (the run then ends as `stop`).
    pub stop_requested: Arc<AtomicBool>,
    /// Where the run's end is filed.
    pub ended: Arc<Mutex<Ended>>,
    /// Indices the run records before it stops by itself (0: open-ended).
    pub limit: u64,
    /// End the run after this long without a frame.
    pub idle: Option<Duration>,
    /// The whole detector's merger, for a run several daemons take that started here.
    pub merger: Option<(Merger, DetectorStatus)>,
}

impl Watch {
    /// Runs on the `run` thread until the run's files (and a whole detector's master) are
    /// closed.
    pub fn run(self, running: Running) {
        let started = Instant::now();
        let merger = self.merger;
        let (summary, reason) =
            supervise(running, self.limit, self.idle, &self.stop_requested, |r| {
                if let Ok(mut s) = self.status.lock() {
                    show_progress(&mut s, r, started);
                    coordinate::show_merged(&mut s, merger.as_ref());
                }
            });
        // A detector several daemons take: its run ends with its whole master.
        if let Some((m, _)) = &merger {
            while !m.own_part_ended() {
                std::thread::sleep(Duration::from_millis(50));
                if let Ok(mut s) = self.status.lock() {
                    s.elapsed_s = started.elapsed().as_secs_f64();
                    coordinate::show_merged(&mut s, merger.as_ref());
                }
            }
        }
        let merged = merger.map(|(m, d)| coordinate::merge_status(d, &m.join()));
        // The record of ended runs before the run's status (the order `RunManager` keeps).
        let Ok(mut ended) = self.ended.lock() else {
            return;
        };
        let Ok(mut s) = self.status.lock() else {
            return;
        };
        show_end(&mut s, &summary, reason, merged);
        tracing::info!(stream = ?s.stream, reason = ?reason, frames = s.frames_recorded, lost = s.frames_lost, error = ?s.error, "run ended");
        ended.record(&mut s, summary);
    }
}

/// The run's counters, gauges and indices so far (its one stream's; the files' at the end).
fn show_progress(s: &mut RunStatus, r: &Running, started: Instant) {
    s.elapsed_s = started.elapsed().as_secs_f64();
    s.gauges = Some(r.gauges());
    s.counters = r.stats();
    s.frames_recorded = s.counters.recorded;
    s.frames_lost = s.counters.lost;
    s.frames_dropped = s.counters.dropped;
    s.sources = r.sources().iter().map(|s| s.summary()).collect();
}

/// The run's final status: its files' indices, why it ended, the whole detector's end.
fn show_end(
    s: &mut RunStatus,
    summary: &RunSummary,
    reason: EndReason,
    merged: Option<DetectorStatus>,
) {
    s.elapsed_s = summary.elapsed.as_secs_f64();
    s.counters = summary.stats;
    s.sources.clone_from(&summary.sources);
    s.end_reason = Some(reason);
    if merged.is_some() {
        s.detector = merged;
    }
    if let Some(report) = summary.streams.first() {
        s.frames_recorded = report.frames;
        s.frames_lost = report.lost;
        s.frames_dropped = report.dropped;
        s.error.clone_from(&report.error);
        if !report.opened {
            s.master = None; // nothing was received: no file was written
        }
    }
    s.state = if reason == EndReason::Error {
        RunState::Failed
    } else {
        RunState::Finished
    };
}
