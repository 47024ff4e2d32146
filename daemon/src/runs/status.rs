//! What `GET /run` reports of the current or last run, and the daemon's counters over its
//! life, which the run manager keeps beside the last run's status.

use std::path::PathBuf;

use serde::Serialize;
use serde_json::Value;

use super::EndReason;
use crate::metrics::Totals;
use crate::pipeline::{Gauges, RunSummary, StatsSnapshot};
use crate::source::SourceSummary;

/// What `GET /run` reports.
#[derive(Debug, Clone, Serialize)]
pub struct RunStatus {
    /// `idle` (no run yet), `running`, `finished` or `failed`.
    pub state: &'static str,
    /// `beamtime/source/stream` of the current or last run.
    pub stream: Option<String>,
    /// Its master file (`null` once a run that received nothing has ended: none was written).
    pub master: Option<PathBuf>,
    /// Frames the run expects (0: open-ended).
    pub frames_expected: u64,
    /// Start, ns since the Unix epoch.
    pub started_ns: u64,
    /// Seconds since start (or the run's duration once ended).
    pub elapsed_s: f64,
    /// Why it ended.
    pub end_reason: Option<EndReason>,
    /// The first error, if any.
    pub error: Option<String>,
    /// Indices recorded in the files: so far while running, all of them once ended.
    pub frames_recorded: u64,
    /// Of which never arrived (nothing written).
    pub frames_lost: u64,
    /// Of which dropped here (nothing written).
    pub frames_dropped: u64,
    /// Pipeline counters.
    pub counters: StatsSnapshot,
    /// Per source.
    pub sources: Vec<SourceSummary>,
    /// Queue fills and free buffers (while running).
    pub gauges: Option<Gauges>,
    /// A run several daemons take (started here): the whole detector's master, each
    /// daemon's part and, at the end, how each part ended.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detector: Option<Value>,
    /// Per sink, its own counters (filled in when asked).
    pub sinks: serde_json::Map<String, Value>,
    /// Whether its final counters are in the daemon's totals already.
    #[serde(skip)]
    pub(super) counted: bool,
}

impl RunStatus {
    pub(super) fn idle() -> Self {
        Self {
            state: "idle",
            stream: None,
            master: None,
            frames_expected: 0,
            started_ns: 0,
            elapsed_s: 0.0,
            end_reason: None,
            error: None,
            frames_recorded: 0,
            frames_lost: 0,
            frames_dropped: 0,
            counters: StatsSnapshot::default(),
            sinks: serde_json::Map::new(),
            sources: Vec::new(),
            gauges: None,
            detector: None,
            counted: false,
        }
    }
}

/// What the run manager keeps of ended runs: the last one's status and full summary, and
/// the counters of all of them.
pub(super) struct Ended {
    /// The last run's status (idle before the first).
    pub status: RunStatus,
    /// Its summary, until someone takes it.
    pub summary: Option<RunSummary>,
    /// Every ended run's counters, summed.
    pub totals: Totals,
}

impl Ended {
    /// Files the run `status` ended as, with its `summary`; its counters join the totals.
    pub fn record(&mut self, status: &mut RunStatus, summary: RunSummary) {
        self.totals.add(&status.counters, &status.sources);
        if let Some(r) = status.end_reason {
            let reason = serde_json::to_value(r).ok();
            let reason = reason.as_ref().and_then(Value::as_str).unwrap_or("unknown");
            *self.totals.runs.entry(reason.to_owned()).or_default() += 1;
        }
        status.counted = true;
        status.gauges = None;
        self.status = status.clone();
        self.summary = Some(summary);
    }
}
