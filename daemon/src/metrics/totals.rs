//! The daemon's counters over its whole life: each ended run's final counts added to those
//! before, and the current run's added at reading time, so a Prometheus counter only grows
//! from run to run (a run's own counters start at zero).

use std::collections::BTreeMap;

use crate::contract::{Counters, EndReason, KindCounts, SourceSummary, StatsSnapshot};

/// Counters summed over runs: the pipeline's, each source's (by name), and runs by end reason.
#[derive(Debug, Clone, Default)]
pub struct Totals {
    /// The pipeline's counters, summed.
    pub pipeline: Counters,
    /// Each source's counters, summed per source name.
    pub sources: BTreeMap<String, SourceTotals>,
    /// Ended runs by reason.
    pub runs: BTreeMap<&'static str, u64>,
}

/// One source's counters summed over runs.
#[derive(Debug, Clone, Default)]
pub struct SourceTotals {
    /// The counters every source has.
    pub common: Counters,
    /// Its kind's: the start of their metrics' names and help, and the counters.
    pub kind: Option<((&'static str, &'static str), Counters)>,
}

impl Totals {
    /// Adds one run's counters (its final ones, or the current run's so far).
    pub fn add(&mut self, counters: &StatsSnapshot, sources: &[SourceSummary]) {
        self.pipeline.add(&counters.counters());
        for s in sources {
            let t = self.sources.entry(s.name.clone()).or_default();
            t.common.add(&s.counters());
            if let Some(k) = &s.kind {
                add_kind(t, k.as_ref());
            }
        }
    }

    /// Counts one ended run.
    pub fn ended(&mut self, reason: EndReason) {
        *self.runs.entry(reason.name()).or_default() += 1;
    }

    /// These totals with the current run's counters added.
    pub fn with(&self, counters: &StatsSnapshot, sources: &[SourceSummary]) -> Self {
        let mut t = self.clone();
        t.add(counters, sources);
        t
    }
}

fn add_kind(t: &mut SourceTotals, k: &dyn KindCounts) {
    let slot = t.kind.get_or_insert_with(|| (k.metric(), Counters::new()));
    slot.1.add(&k.counters());
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::contract::status::fixture::Packets;

    #[test]
    fn runs_add_up_per_counter_and_per_source() {
        let run = |n: u64| {
            let c = StatsSnapshot {
                recorded: n,
                lost: 1,
                ..Default::default()
            };
            let s = SourceSummary {
                name: "det".into(),
                sent: n,
                dropped: 0,
                torn: 0,
                malformed: 2,
                kind: Some(Arc::new(Packets(0, n, 0))),
                bound: None,
            };
            (c, vec![s])
        };
        let mut t = Totals::default();
        let (c, s) = run(10);
        t.add(&c, &s);
        let (c, s) = run(5);
        let now = t.with(&c, &s);
        assert_eq!(now.pipeline.get("indices_recorded"), Some(15));
        assert_eq!(now.pipeline.get("indices_lost"), Some(2));
        let det = &now.sources["det"];
        assert_eq!(det.common.get("source_frames"), Some(15));
        assert_eq!(det.common.get("source_frames_malformed"), Some(4));
        assert_eq!(det.kind.as_ref().unwrap().1.get("accepted"), Some(15));
        assert_eq!(
            t.pipeline.get("indices_recorded"),
            Some(10),
            "with() leaves the totals alone"
        );
    }
}
