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
use serde_json::{Map, Value};

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
#[derive(Debug, Clone, Default)]
pub struct Reading {
    /// Counters over the daemon's life.
    pub totals: Totals,
    /// `idle`, `running`, `finished` or `failed`.
    pub state: &'static str,
    /// The current or last run's stream.
    pub stream: Option<String>,
    /// Queue fills and free buffers of the running pipeline (`pipeline::Gauges`'s fields;
    /// empty between runs).
    pub gauges: Map<String, Value>,
    /// Streams with open files.
    pub files_open: u64,
    /// Each sink's counters, by sink name.
    pub sinks: Map<String, Value>,
    /// When the daemon started, s since the Unix epoch.
    pub started_s: f64,
    /// Indices in the whole detector's master of a run this daemon coordinates (several
    /// daemons, one detector); `None` otherwise.
    pub detector_merged: Option<u64>,
    /// Each daemon of that run and its part's state (running, finished, unreachable, died,
    /// unknown).
    pub detector_parts: Vec<(String, String)>,
}

/// The pipeline's counters: the `StatsSnapshot` field (pipeline), the metric's name
/// (after `detingest_`, before `_total`), its help.
const PIPELINE: [(&str, &str, &str); 17] = [
    ("indexed", "frames_indexed", "Module frames given an index"),
    (
        "recorded",
        "indices_recorded",
        "Indices recorded in the files, written or lost",
    ),
    (
        "lost",
        "indices_lost",
        "Indices recorded lost: nothing of them reached the daemon",
    ),
    (
        "dropped",
        "indices_dropped",
        "Indices with a module received but dropped here (no buffer, full queue)",
    ),
    (
        "incomplete",
        "datasets_incomplete",
        "Frames written with some modules missing",
    ),
    (
        "stale",
        "frames_stale",
        "Module frames refused as behind the stream's numbering",
    ),
    (
        "late",
        "module_frames_late",
        "Module frames that arrived after their dataset had closed (discarded, recorded late)",
    ),
    ("compressed", "chunks_compressed", "Chunks compressed"),
    (
        "codec_errors",
        "codec_errors",
        "Chunks the codec refused (modules recorded missing)",
    ),
    (
        "bytes_raw",
        "raw_bytes",
        "Bytes of frames before compression",
    ),
    (
        "bytes_compressed",
        "compressed_bytes",
        "Bytes of chunks after compression",
    ),
    (
        "written",
        "chunks_written",
        "Chunks written to the data files",
    ),
    (
        "write_errors",
        "write_errors",
        "Frames or records that could not be written",
    ),
    ("flushes", "flushes", "File flushes"),
    (
        "notified",
        "notifications",
        "Notifications handed to the sinks",
    ),
    (
        "notify_dropped",
        "notifications_dropped",
        "Notifications dropped at a full notification queue",
    ),
    (
        "previews_skipped",
        "previews_skipped",
        "Previews not made: every preview buffer was held",
    ),
];

/// A source's counters: the `SourceSummary` field, the metric name, its help.
const SOURCE: [(&str, &str, &str); 4] = [
    (
        "sent",
        "source_frames",
        "Frames a source handed to the pipeline",
    ),
    (
        "dropped",
        "source_frames_dropped",
        "Frames a source dropped: no free buffer or a full queue",
    ),
    (
        "torn",
        "source_frames_torn",
        "Frames torn by a producer that died while writing them",
    ),
    (
        "malformed",
        "source_frames_malformed",
        "Frames refused as malformed",
    ),
];

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

fn number(map: &Map<String, Value>, key: &str) -> u64 {
    map.get(key).and_then(Value::as_u64).unwrap_or(0)
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
        for (field, name, help) in PIPELINE {
            let unit = field.starts_with("bytes").then_some(&Unit::Bytes);
            let name = format!("detingest_{}", name.trim_end_matches("_bytes"));
            let value = ConstCounter::new(number(&t.pipeline, field));
            family(&mut enc, &name, help, unit, one(value))?;
        }
        for (field, name, help) in SOURCE {
            let samples =
                (t.sources.iter()).map(|(src, c)| (src, ConstCounter::new(number(c, field))));
            family(
                &mut enc,
                &format!("detingest_{name}"),
                help,
                None,
                by("source", samples),
            )?;
        }
        self.encode_packets(&mut enc)?;
        let runs = ["stop", "count", "idle", "source", "error"].map(|reason| {
            let n = t.runs.get(reason).copied().unwrap_or(0);
            (reason, ConstCounter::new(n))
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
    /// A UDP source's packet counts and a Stream V2 source's message counts, one counter
    /// per kind (`detingest_udp_<kind>_total`, `detingest_stream2_messages_<kind>_total`).
    fn encode_packets(&self, enc: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for (field, prefix, what) in [
            ("packets", "detingest_udp_", "UDP source"),
            (
                "messages",
                "detingest_stream2_messages_",
                "Stream V2 source, messages",
            ),
            ("events", "detingest_neutron_", "Kafka event source"),
        ] {
            let Some(Value::Object(kinds)) =
                self.totals.sources.values().find_map(|c| c.get(field))
            else {
                continue;
            };
            for kind in kinds.keys() {
                let samples = self.totals.sources.iter().filter_map(|(src, c)| {
                    let Some(Value::Object(p)) = c.get(field) else {
                        return None;
                    };
                    Some((src, ConstCounter::new(number(p, kind))))
                });
                let samples = by("source", samples);
                let help = format!("{what}: {} (see the summary)", kind.replace('_', " "));
                // `bytes` is the one count with a unit: `detingest_udp_received_bytes_total`.
                let (name, unit) = match kind.as_str() {
                    "bytes" => (format!("{prefix}received"), Some(&Unit::Bytes)),
                    k => (format!("{prefix}{k}"), None),
                };
                family(enc, &name, &help, unit, samples)?;
            }
        }
        Ok(())
    }

    fn encode_gauges(&self, enc: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let states = ["idle", "running", "finished", "failed"]
            .map(|s| (s, ConstGauge::new(i64::from(self.state == s))));
        let states = by("state", states);
        family(
            enc,
            "detingest_run_state",
            "The run's state: 1 for the current one",
            None,
            states,
        )?;
        if let Some(stream) = &self.stream {
            let labels = vec![("stream", stream.clone()), ("state", self.state.to_owned())];
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
        let g = |field: &str| number(&self.gauges, field);
        let queues = [
            ("source", g("source_queue")),
            ("compress", g("compress_queue")),
            ("write", g("write_queue")),
            ("notify", g("notify_queue")),
        ];
        let fill = by("queue", queues.map(|(q, n)| (q, ConstGauge::new(n as i64))));
        family(
            enc,
            "detingest_queue_items",
            "Items waiting in a pipeline queue",
            None,
            fill,
        )?;
        let cap = ConstGauge::new(g("queue_capacity") as i64);
        family(
            enc,
            "detingest_queue_capacity_items",
            "Capacity of the source, compress and write queues",
            None,
            one(cap),
        )?;
        let pools = [
            ("input", g("free_input_buffers")),
            ("output", g("free_output_buffers")),
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

    /// Each sink's numeric counters as `detingest_sink_<name>_total{sink}`; `connected` and
    /// `in_flight` as gauges.
    fn encode_sinks(&self, enc: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut names: Vec<&str> = self
            .sinks
            .values()
            .filter_map(Value::as_object)
            .flat_map(|m| {
                m.iter()
                    .filter(|(_, v)| v.is_u64() || v.is_boolean())
                    .map(|(k, _)| k.as_str())
            })
            .collect();
        names.sort_unstable();
        names.dedup();
        for field in names {
            let values = self.sinks.iter().filter_map(|(sink, c)| {
                let v = c.get(field)?;
                let v = v.as_u64().or_else(|| v.as_bool().map(u64::from))?;
                Some((sink, v))
            });
            let help = format!("Sink counter {field:?} (GET /run sinks)");
            let gauge = matches!(field, "connected" | "in_flight" | "commands_ready");
            if gauge {
                let g = by("sink", values.map(|(l, v)| (l, ConstGauge::new(v as i64))));
                family(enc, &format!("detingest_sink_{field}"), &help, None, g)?;
            } else {
                let c = by("sink", values.map(|(l, v)| (l, ConstCounter::new(v))));
                family(enc, &format!("detingest_sink_{field}"), &help, None, c)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn udp_packet_counts_become_one_counter_per_kind_and_source() {
        let mut totals = Totals::default();
        let sources = [
            serde_json::json!({"name": "m0", "sent": 3, "packets": {"bytes": 5, "late": 1}}),
            serde_json::json!({"name": "m1", "sent": 4, "packets": {"bytes": 7, "late": 0}}),
        ];
        totals.add(&serde_json::json!({"recorded": 2}), &sources);
        let text = render(Reading {
            totals,
            state: "running",
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
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line} missing from\n{text}"
            );
        }
    }
}
