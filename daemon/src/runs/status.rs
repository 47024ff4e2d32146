//! What the run manager keeps of ended runs beside the current one: the last run's status
//! (`contract::RunStatus`) and summary, and the daemon's counters over its life.

use crate::contract::RunStatus;
use crate::metrics::Totals;
use crate::pipeline::RunSummary;

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
            self.totals.ended(r);
        }
        status.counted = true;
        status.gauges = None;
        self.status = status.clone();
        self.summary = Some(summary);
    }
}
