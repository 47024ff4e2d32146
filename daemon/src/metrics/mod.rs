//! `GET /metrics`: the daemon's counters, gauges and latency histograms in the Prometheus
//! text exposition format (0.0.4), encoded by `prometheus-client` at each scrape from a
//! [`Reading`] of the run manager (docs/OPERATIONS.md lists every metric).
//!
//! Counters are the daemon's whole life ([`Totals`]: every ended run plus the current one),
//! so they only grow. Labels are bounded: `source` (configured sources), `sink` (configured
//! sinks), `queue`, `pool`, `state`, `reason`; the stream's name appears only in
//! `detingest_run_info`, for the current run. The histograms are statics the hot path
//! records into with relaxed atomics.

pub mod frame_values;
mod histogram;
mod totals;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::{Registry, Unit};

use crate::contract::{ByName, Counter, EndReason, Gauges, Kind, RunState};

pub use histogram::LatencyHistogram;
pub use totals::Totals;

/// Time a compression worker spent encoding one chunk.
pub static COMPRESS_SECONDS: LatencyHistogram = LatencyHistogram::new();
/// Time the writer spent in one direct chunk write.
pub static WRITE_SECONDS: LatencyHistogram = LatencyHistogram::new();
/// From a frame's write to its notification reaching the sinks.
pub static NOTIFY_LATENCY_SECONDS: LatencyHistogram = LatencyHistogram::new();

/// The `Content-Type` of what [`render`] returns.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// What one scrape reports.
#[derive(Debug, Clone)]
pub struct Reading {
    /// Counters over the daemon's life.
    pub totals: Totals,
    /// Where the current or last run is.
    pub state: RunState,
    /// The current or last run's stream.
    pub stream: Option<String>,
    /// Queue fills and free buffers of the running pipeline (none between runs).
    pub gauges: Option<Gauges>,
    /// Streams with open files.
    pub files_open: u64,
    /// Each sink's counters, by sink name.
    pub sinks: ByName,
    /// When the daemon started, s since the Unix epoch.
    pub started_s: f64,
    /// Indices in the whole detector's master of a run this daemon coordinates (several
    /// daemons, one detector); `None` otherwise.
    pub detector_merged: Option<u64>,
    /// Each daemon of that run and its part's state (running, finished, unreachable, died,
    /// unknown).
    pub detector_parts: Vec<(String, String)>,
}

/// The Prometheus text of `r`.
pub fn render(r: Reading) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(r));
    let mut out = String::new();
    if let Err(e) = prometheus_client::encoding::prometheus_text::encode(&mut out, &registry) {
        tracing::error!(error = %e, "cannot encode the metrics");
    }
    out
}

impl Default for Reading {
    fn default() -> Self {
        Self {
            totals: Totals::default(),
            state: RunState::Idle,
            stream: None,
            gauges: None,
            files_open: 0,
            sinks: ByName::default(),
            started_s: 0.0,
            detector_merged: None,
            detector_parts: Vec::new(),
        }
    }
}

/// One counter as one family: a total as a counter, a level or flag as a gauge; a name
/// ending in `_bytes` in bytes. `samples` are its value per label set.
fn counter_family<'a>(
    enc: &mut DescriptorEncoder,
    name: &str,
    c: &Counter,
    help: &str,
    samples: impl IntoIterator<Item = (Vec<(&'static str, String)>, u64)> + 'a,
) -> Result<(), std::fmt::Error> {
    let (name, unit) = match name.strip_suffix("_bytes") {
        Some(n) => (n, Some(&Unit::Bytes)),
        None => (name, None),
    };
    match c.kind {
        Kind::Total => family(
            enc,
            name,
            help,
            unit,
            samples.into_iter().map(|(l, v)| (l, ConstCounter::new(v))),
        ),
        Kind::Level | Kind::Flag => family(
            enc,
            name,
            help,
            unit,
            (samples.into_iter()).map(|(l, v)| (l, ConstGauge::new(v as i64))),
        ),
    }
}

/// Writes one metric family: its descriptor, then one sample per label set.
fn family<M: EncodeMetric>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    samples: impl IntoIterator<Item = (Vec<(&'static str, String)>, M)>,
) -> Result<(), std::fmt::Error> {
    let mut samples = samples.into_iter().peekable();
    let Some((_, first)) = samples.peek() else {
        return Ok(());
    };
    let mut m = enc.encode_descriptor(name, help, unit, first.metric_type())?;
    for (labels, metric) in samples {
        if labels.is_empty() {
            return metric.encode(m);
        } else {
            metric.encode(m.encode_family(&labels)?)?;
        }
    }
    Ok(())
}

fn one<M>(metric: M) -> [(Vec<(&'static str, String)>, M); 1] {
    [(Vec::new(), metric)]
}

/// Samples of one label: `(its value, the metric)` each.
fn by<M, V: ToString>(
    label: &'static str,
    samples: impl IntoIterator<Item = (V, M)>,
) -> impl Iterator<Item = (Vec<(&'static str, String)>, M)> {
    samples
        .into_iter()
        .map(move |(v, m)| (vec![(label, v.to_string())], m))
}

impl Collector for Reading {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let t = &self.totals;
        for c in t.pipeline.values() {
            let name = format!("detingest_{}", c.metric);
            counter_family(&mut enc, &name, c, c.help, [(Vec::new(), c.value)])?;
        }
        let first = t.sources.values().next();
        for c in first.map(|s| s.common.values()).unwrap_or_default() {
            let samples = (t.sources.iter()).map(|(src, s)| {
                (
                    vec![("source", src.clone())],
                    s.common.get(c.name).unwrap_or(0),
                )
            });
            let name = format!("detingest_{}", c.metric);
            counter_family(&mut enc, &name, c, c.help, samples)?;
        }
        self.encode_packets(&mut enc)?;
        let runs = EndReason::ALL.map(|reason| {
            let n = t.runs.get(reason.name()).copied().unwrap_or(0);
            (reason.name(), ConstCounter::new(n))
        });
        let runs = by("reason", runs);
        family(
            &mut enc,
            "detingest_runs",
            "Runs ended, by reason",
            None,
            runs,
        )?;
        self.encode_gauges(&mut enc)?;
        self.encode_sinks(&mut enc)?;
        let histograms = [
            (
                "detingest_compress",
                "Time to compress one chunk",
                &COMPRESS_SECONDS,
            ),
            (
                "detingest_write",
                "Time of one direct chunk write",
                &WRITE_SECONDS,
            ),
            (
                "detingest_notify_latency",
                "From a frame's write to its notification reaching the sinks",
                &NOTIFY_LATENCY_SECONDS,
            ),
        ];
        for (name, help, h) in histograms {
            family(&mut enc, name, help, Some(&Unit::Seconds), one(h))?;
        }
        for (name, help, h) in frame_values::families() {
            family(&mut enc, name, help, None, one(h))?;
        }
        Ok(())
    }
}

impl Reading {
    /// Each source kind's own counters, one family per counter (`detingest_udp_<name>_total`,
    /// `detingest_stream2_messages_<name>_total`, `detingest_neutron_<name>_total`), labelled
    /// by source.
    fn encode_packets(&self, enc: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let kinds = (self.totals.sources.iter())
            .filter_map(|(src, t)| t.kind.as_ref().map(|(m, c)| (src, *m, c)));
        let mut families: Vec<(&str, &str, &Counter)> = Vec::new();
        for (_, (prefix, what), counters) in kinds.clone() {
            for c in counters.values() {
                if !families
                    .iter()
                    .any(|(p, _, f)| *p == prefix && f.name == c.name)
                {
                    families.push((prefix, what, c));
                }
            }
        }
        for (prefix, what, c) in families {
            let samples = (kinds.clone())
                .filter(|(_, (p, _), _)| *p == prefix)
                .filter_map(|(src, _, counters)| {
                    Some((vec![("source", src.clone())], counters.get(c.name)?))
                });
            let help = format!("{what}: {}", c.help);
            counter_family(enc, &format!("{prefix}{}", c.metric), c, &help, samples)?;
        }
        Ok(())
    }

    fn encode_gauges(&self, enc: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let states = RunState::ALL.map(|s| (s.name(), ConstGauge::new(i64::from(self.state == s))));
        let states = by("state", states);
        family(
            enc,
            "detingest_run_state",
            "The run's state: 1 for the current one",
            None,
            states,
        )?;
        if let Some(stream) = &self.stream {
            let labels = vec![
                ("stream", stream.clone()),
                ("state", self.state.name().to_owned()),
            ];
            family(
                enc,
                "detingest_run_info",
                "The current or last run's stream",
                None,
                [(labels, ConstGauge::new(1i64))],
            )?;
        }
        let files = ConstGauge::new(self.files_open as i64);
        family(
            enc,
            "detingest_files_open",
            "Streams whose files are open",
            None,
            one(files),
        )?;
        let started = ConstGauge::new(self.started_s);
        family(
            enc,
            "detingest_start_time",
            "When the daemon started, since the Unix epoch",
            Some(&Unit::Seconds),
            one(started),
        )?;
        if let Some(n) = self.detector_merged {
            family(
                enc,
                "detingest_detector_merged_indices",
                "Indices in the whole detector's master of the run this daemon coordinates",
                None,
                one(ConstGauge::new(n as i64)),
            )?;
        }
        if !self.detector_parts.is_empty() {
            const STATES: [&str; 5] = ["running", "finished", "unreachable", "died", "unknown"];
            let samples = (self.detector_parts.iter()).flat_map(|(daemon, state)| {
                STATES.map(|s| {
                    let labels = vec![("daemon", daemon.clone()), ("state", s.to_owned())];
                    (labels, ConstGauge::new(i64::from(state == s)))
                })
            });
            family(
                enc,
                "detingest_detector_part_state",
                "Each daemon's part of the run this daemon coordinates: 1 for its state",
                None,
                samples,
            )?;
        }
        let g = self.gauges.unwrap_or_default();
        let queues = [
            ("source", g.source_queue),
            ("compress", g.compress_queue),
            ("write", g.write_queue),
            ("notify", g.notify_queue),
        ];
        let fill = by("queue", queues.map(|(q, n)| (q, ConstGauge::new(n as i64))));
        family(
            enc,
            "detingest_queue_items",
            "Items waiting in a pipeline queue",
            None,
            fill,
        )?;
        let cap = ConstGauge::new(g.queue_capacity as i64);
        family(
            enc,
            "detingest_queue_capacity_items",
            "Capacity of the source, compress and write queues",
            None,
            one(cap),
        )?;
        let pools = [
            ("input", g.free_input_buffers),
            ("output", g.free_output_buffers),
        ];
        let free = by("pool", pools.map(|(p, n)| (p, ConstGauge::new(n as i64))));
        family(
            enc,
            "detingest_free_buffers",
            "Free frame buffers (input: raw, summed over sources; output: compressed)",
            None,
            free,
        )
    }

    /// Each sink's counters as `detingest_sink_<name>{sink}` (a total as `_total`), one
    /// family per counter name, labelled by sink.
    fn encode_sinks(&self, enc: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut families: Vec<&Counter> = Vec::new();
        for (_, counters) in &self.sinks.0 {
            for c in counters.values() {
                if !families.iter().any(|f| f.name == c.name) {
                    families.push(c);
                }
            }
        }
        families.sort_by_key(|c| c.name);
        for c in families {
            let samples = (self.sinks.0.iter()).filter_map(|(sink, counters)| {
                Some((vec![("sink", (*sink).to_owned())], counters.get(c.name)?))
            });
            let help = format!("{} (GET /run sinks)", c.help);
            counter_family(
                enc,
                &format!("detingest_sink_{}", c.metric),
                c,
                &help,
                samples,
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::status::fixture::Packets;

    #[test]
    fn udp_packet_counts_become_one_counter_per_kind_and_source() {
        let mut totals = Totals::default();
        let source = |name: &str, sent, p: Packets| crate::contract::SourceSummary {
            name: name.into(),
            sent,
            dropped: 0,
            torn: 0,
            malformed: 0,
            kind: Some(std::sync::Arc::new(p)),
            bound: None,
        };
        let sources = [
            source("m0", 3, Packets(5, 0, 1)),
            source("m1", 4, Packets(7, 0, 0)),
        ];
        let stats = crate::contract::StatsSnapshot {
            recorded: 2,
            ..Default::default()
        };
        totals.add(&stats, &sources);
        let sinks = ByName(vec![(
            "redis",
            crate::contract::Counters::new()
                .flag("connected", "reachable", true)
                .total("published", "published", 9),
        )]);
        let text = render(Reading {
            totals,
            state: RunState::Running,
            sinks,
            detector_merged: Some(12),
            detector_parts: vec![("d2".into(), "unreachable".into())],
            ..Default::default()
        });
        for line in [
            "detingest_detector_merged_indices 12",
            "detingest_detector_part_state{daemon=\"d2\",state=\"unreachable\"} 1",
            "detingest_detector_part_state{daemon=\"d2\",state=\"running\"} 0",
            "# TYPE detingest_udp_received_bytes_total counter",
            "detingest_udp_received_bytes_total{source=\"m0\"} 5",
            "detingest_udp_late_total{source=\"m1\"} 0",
            "detingest_source_frames_total{source=\"m1\"} 4",
            "detingest_indices_recorded_total 2",
            "detingest_run_state{state=\"running\"} 1",
            "detingest_runs_total{reason=\"error\"} 0",
            "detingest_sink_connected{sink=\"redis\"} 1",
            "detingest_sink_published_total{sink=\"redis\"} 9",
            "detingest_raw_bytes_total 0",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line} missing from\n{text}"
            );
        }
    }
}
