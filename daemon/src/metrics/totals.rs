//! The daemon's counters over its whole life: each ended run's final counts added to those
//! before, and the current run's added at reading time, so a Prometheus counter only grows
//! from run to run (a run's own counters start at zero).

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::{Map, Value};

/// Counters summed over runs: the pipeline's, each source's (by name), and runs by end reason.
#[derive(Debug, Clone, Default)]
pub struct Totals {
    /// The pipeline's counters (`StatsSnapshot`'s fields), summed.
    pub pipeline: Map<String, Value>,
    /// Each source's numeric fields (`SourceSummary`'s, with its UDP packet counts), summed
    /// per source name.
    pub sources: BTreeMap<String, Map<String, Value>>,
    /// Ended runs by reason (`stop`, `count`, `idle`, `source`, `error`).
    pub runs: BTreeMap<String, u64>,
}

impl Totals {
    /// Adds one run's counters (its final ones, or the current run's so far): the pipeline's
    /// and each source's, whose `name` field says which it is.
    pub fn add<C: Serialize, S: Serialize>(&mut self, counters: &C, sources: &[S]) {
        if let Ok(Value::Object(c)) = serde_json::to_value(counters) {
            add_numbers(&mut self.pipeline, &c);
        }
        for s in sources {
            if let Ok(Value::Object(fields)) = serde_json::to_value(s) {
                let name = fields.get("name").and_then(Value::as_str).unwrap_or("");
                add_numbers(self.sources.entry(name.to_owned()).or_default(), &fields);
            }
        }
    }

    /// These totals with the current run's counters added.
    pub fn with<C: Serialize, S: Serialize>(&self, counters: &C, sources: &[S]) -> Self {
        let mut t = self.clone();
        t.add(counters, sources);
        t
    }
}

/// Adds every unsigned number of `from` into `into`, recursing into objects.
fn add_numbers(into: &mut Map<String, Value>, from: &Map<String, Value>) {
    for (k, v) in from {
        match v {
            Value::Number(n) => {
                if let Some(n) = n.as_u64() {
                    let sum = into.get(k).and_then(Value::as_u64).unwrap_or(0) + n;
                    into.insert(k.clone(), Value::from(sum));
                }
            }
            Value::Object(inner) => {
                let slot = into
                    .entry(k.clone())
                    .or_insert_with(|| Value::Object(Map::new()));
                if let Value::Object(slot) = slot {
                    add_numbers(slot, inner);
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_add_up_per_counter_and_per_source() {
        let run = |n: u64| {
            let c = serde_json::json!({"recorded": n, "lost": 1, "name": "not a number"});
            let s = serde_json::json!({"name": "det", "sent": n, "malformed": 2,
                                       "packets": {"accepted": n}});
            (c, vec![s])
        };
        let mut t = Totals::default();
        let (c, s) = run(10);
        t.add(&c, &s);
        let (c, s) = run(5);
        let now = t.with(&c, &s);
        assert_eq!(now.pipeline["recorded"], 15);
        assert_eq!(now.pipeline["lost"], 2);
        assert_eq!(now.sources["det"]["sent"], 15);
        assert_eq!(now.sources["det"]["malformed"], 4);
        assert_eq!(now.sources["det"]["packets"]["accepted"], 15);
        assert_eq!(t.pipeline["recorded"], 10, "with() leaves the totals alone");
    }
}
