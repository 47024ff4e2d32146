//! What `GET /run` reports of the current or last run, typed: its state and end, the
//! pipeline's counters and gauges, and each source's counters (a source kind's own counters
//! through [`KindCounts`], which the kind defines and this module only carries).

use std::path::PathBuf;
use std::sync::Arc;

use serde::ser::{SerializeMap, Serializer};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::counters::{ByName, Counters};

/// Where a run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunState {
    /// No run yet.
    Idle,
    /// Writing.
    Running,
    /// Ended, its files closed.
    Finished,
    /// Ended on an error (its files closed with what was flushed).
    Failed,
}

impl RunState {
    /// Its name in JSON and `/metrics`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Idle => "idle",
            Self::Running => "running",
            Self::Finished => "finished",
            Self::Failed => "failed",
        }
    }

    /// Every state, in the order `/metrics` lists them.
    pub const ALL: [RunState; 4] = [Self::Idle, Self::Running, Self::Finished, Self::Failed];
}

/// Why a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EndReason {
    /// Stopped by the operator (API or signal).
    Stop,
    /// Reached its frame count.
    Count,
    /// No frame arrived for `idle_timeout_ms`.
    Idle,
    /// Its source ended the stream (a synthetic source's count, a producer's clean close).
    Source,
    /// Writing failed (disk full, I/O error); the error says what.
    Error,
}

impl EndReason {
    /// Its name in JSON and `/metrics`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Stop => "stop",
            Self::Count => "count",
            Self::Idle => "idle",
            Self::Source => "source",
            Self::Error => "error",
        }
    }

    /// Every reason, in the order `/metrics` lists them.
    pub const ALL: [EndReason; 5] = [
        Self::Stop,
        Self::Count,
        Self::Idle,
        Self::Source,
        Self::Error,
    ];
}

/// The pipeline's counters at one moment, with the notification queue's.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[allow(missing_docs)]
pub struct StatsSnapshot {
    pub indexed: u64,
    pub lost: u64,
    pub dropped: u64,
    pub incomplete: u64,
    pub stale: u64,
    pub late: u64,
    pub compressed: u64,
    pub codec_errors: u64,
    pub bytes_raw: u64,
    pub bytes_compressed: u64,
    pub recorded: u64,
    pub written: u64,
    pub write_errors: u64,
    pub flushes: u64,
    pub notified: u64,
    pub notify_dropped: u64,
    pub previews_skipped: u64,
    pub files_open: u64,
}

impl StatsSnapshot {
    /// The counters as `/metrics` names them (after `detingest_`; a name ending in `_bytes`
    /// counts bytes). Every field but `files_open` (a level, reported apart).
    pub fn counters(&self) -> Counters {
        Counters::new()
            .total("frames_indexed", "Module frames given an index", self.indexed)
            .total(
                "indices_recorded",
                "Indices recorded in the files, written or lost",
                self.recorded,
            )
            .total(
                "indices_lost",
                "Indices recorded lost: nothing of them reached the daemon",
                self.lost,
            )
            .total(
                "indices_dropped",
                "Indices with a module received but dropped here (no buffer, full queue)",
                self.dropped,
            )
            .total(
                "datasets_incomplete",
                "Frames written with some modules missing",
                self.incomplete,
            )
            .total(
                "frames_stale",
                "Module frames refused as behind the stream's numbering",
                self.stale,
            )
            .total(
                "module_frames_late",
                "Module frames that arrived after their dataset had closed (discarded, recorded late)",
                self.late,
            )
            .total("chunks_compressed", "Chunks compressed", self.compressed)
            .total(
                "codec_errors",
                "Chunks the codec refused (modules recorded missing)",
                self.codec_errors,
            )
            .total("raw_bytes", "Bytes of frames before compression", self.bytes_raw)
            .total(
                "compressed_bytes",
                "Bytes of chunks after compression",
                self.bytes_compressed,
            )
            .total("chunks_written", "Chunks written to the data files", self.written)
            .total(
                "write_errors",
                "Frames or records that could not be written",
                self.write_errors,
            )
            .total("flushes", "File flushes", self.flushes)
            .total("notifications", "Notifications handed to the sinks", self.notified)
            .total(
                "notifications_dropped",
                "Notifications dropped at a full notification queue",
                self.notify_dropped,
            )
            .total(
                "previews_skipped",
                "Previews not made: every preview buffer was held",
                self.previews_skipped,
            )
    }
}

/// Queue fill levels and free buffers at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Gauges {
    /// Frames waiting for the indexer.
    pub source_queue: usize,
    /// Items waiting for a compression worker.
    pub compress_queue: usize,
    /// Items waiting for the writer.
    pub write_queue: usize,
    /// Capacity of each of those queues.
    pub queue_capacity: usize,
    /// Free raw buffers, summed over sources.
    pub free_input_buffers: usize,
    /// Free compressed-chunk buffers.
    pub free_output_buffers: usize,
    /// Notifications waiting.
    pub notify_queue: usize,
}

/// A source kind's own counters (a UDP source's packets, a Stream V2 source's messages, an
/// event source's events), defined by the kind.
pub trait KindCounts: std::fmt::Debug + Send + Sync {
    /// Their key in a source's entry of `GET /run` (`packets`, `messages`, `events`).
    fn key(&self) -> &'static str;
    /// The start of their metrics' names (`detingest_udp_`) and of their help (`UDP source`).
    fn metric(&self) -> (&'static str, &'static str);
    /// The counters.
    fn counters(&self) -> Counters;
    /// The summary's line.
    fn summary_line(&self) -> String;
    /// Of what was received, what was refused (a source that took no frame reports it).
    fn refused(&self) -> u64 {
        0
    }
    /// The kind's own type, for a reader that knows it (a test of that kind).
    fn as_any(&self) -> &dyn std::any::Any;
    /// Beside the counters, what the live page shows (`event_histograms`), as JSON.
    fn view(&self) -> Option<(&'static str, Value)> {
        None
    }
}

/// What a source did.
#[derive(Debug, Clone)]
pub struct SourceSummary {
    /// The source's name.
    pub name: String,
    /// Frames handed to the pipeline.
    pub sent: u64,
    /// Frames dropped for lack of a buffer or queue space.
    pub dropped: u64,
    /// Frames torn by a dying producer.
    pub torn: u64,
    /// Frames refused as malformed.
    pub malformed: u64,
    /// Its kind's own counters, if the kind keeps any.
    pub kind: Option<Arc<dyn KindCounts>>,
    /// The address it receives on, when it bound one (a UDP port).
    pub bound: Option<String>,
}

impl SourceSummary {
    /// The counters every source has, as `/metrics` names them (after `detingest_`).
    pub fn counters(&self) -> Counters {
        Counters::new()
            .total(
                "source_frames",
                "Frames a source handed to the pipeline",
                self.sent,
            )
            .total(
                "source_frames_dropped",
                "Frames a source dropped: no free buffer or a full queue",
                self.dropped,
            )
            .total(
                "source_frames_torn",
                "Frames torn by a producer that died while writing them",
                self.torn,
            )
            .total(
                "source_frames_malformed",
                "Frames refused as malformed",
                self.malformed,
            )
    }
}

impl PartialEq for SourceSummary {
    fn eq(&self, other: &Self) -> bool {
        let kind = |s: &Self| s.kind.as_ref().map(|k| (k.key(), k.counters()));
        (self.name == other.name)
            && (self.sent, self.dropped, self.torn, self.malformed)
                == (other.sent, other.dropped, other.torn, other.malformed)
            && kind(self) == kind(other)
    }
}

/// `{name, sent, dropped, torn, malformed}` and the kind's counters under its key.
impl Serialize for SourceSummary {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(None)?;
        map.serialize_entry("name", &self.name)?;
        map.serialize_entry("sent", &self.sent)?;
        map.serialize_entry("dropped", &self.dropped)?;
        map.serialize_entry("torn", &self.torn)?;
        map.serialize_entry("malformed", &self.malformed)?;
        if let Some(bound) = &self.bound {
            map.serialize_entry("bound", bound)?;
        }
        if let Some(k) = &self.kind {
            map.serialize_entry(k.key(), &k.counters())?;
            if let Some((key, view)) = k.view() {
                map.serialize_entry(key, &view)?;
            }
        }
        map.end()
    }
}

/// A run several daemons take, as the daemon that started it reports it: the whole detector's
/// master, each daemon's part, and at the end how each part ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DetectorStatus {
    /// The whole detector's master file.
    pub master: PathBuf,
    /// Each daemon's part, this daemon's first.
    pub parts: Vec<PartStatus>,
    /// Indices in the whole master so far.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub merged: Option<u64>,
    /// How the run ended, once it has.
    #[serde(flatten)]
    pub end: Option<DetectorEnd>,
}

/// One daemon's part of a run several daemons take.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PartStatus {
    /// The daemon (`[cluster] name`).
    pub daemon: String,
    /// The stream its part writes.
    pub stream: String,
    /// Its modules, one bit each.
    pub modules: u64,
    /// `running`, `finished`, `unreachable`, `died` or `unknown`.
    pub state: &'static str,
}

/// How a run several daemons took ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DetectorEnd {
    /// Indices in the whole master.
    pub frames: u64,
    /// Of which lost everywhere.
    pub lost: u64,
    /// Each part's end.
    pub ends: Vec<PartEnd>,
    /// Why the whole master could not be finished, if it could not.
    pub error: Option<String>,
}

/// How one part ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PartEnd {
    /// The daemon.
    pub daemon: String,
    /// Indices its part recorded.
    pub recorded: u64,
    /// How it ended.
    pub state: &'static str,
    /// Whether its daemon finished its files.
    pub finished: bool,
}

/// What a peer reads of another daemon's `GET /run`: where its run is, and which stream.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct RunHeadline {
    /// Where the run is.
    pub state: RunState,
    /// `beamtime/source/stream` of the current or last run.
    pub stream: Option<String>,
}

/// What `GET /run` reports.
#[derive(Debug, Clone, Serialize)]
pub struct RunStatus {
    /// Where the run is.
    pub state: RunState,
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
    pub detector: Option<DetectorStatus>,
    /// Per sink, its own counters (filled in when asked).
    pub sinks: ByName,
    /// Whether its final counters are in the daemon's totals already.
    #[serde(skip)]
    pub counted: bool,
}

impl RunStatus {
    /// Before the first run.
    pub fn idle() -> Self {
        Self {
            state: RunState::Idle,
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
            sinks: ByName::default(),
            sources: Vec::new(),
            gauges: None,
            detector: None,
            counted: false,
        }
    }

    /// The counters of the first source's kind (an event run's events), if it keeps any.
    pub fn kind_counters(&self) -> Option<Counters> {
        let kind = self.sources.first()?.kind.as_ref()?;
        Some(kind.counters())
    }
}

/// A source kind's counters for tests (UDP-like): bytes received (as the metric
/// `received_bytes`), packets accepted, packets late.
#[cfg(test)]
pub(crate) mod fixture {
    use super::{Counters, KindCounts};

    /// `bytes`, `accepted`, `late`.
    #[derive(Debug)]
    pub struct Packets(pub u64, pub u64, pub u64);

    impl KindCounts for Packets {
        fn key(&self) -> &'static str {
            "packets"
        }

        fn as_any(&self) -> &dyn std::any::Any {
            self
        }

        fn metric(&self) -> (&'static str, &'static str) {
            ("detingest_udp_", "UDP source")
        }

        fn counters(&self) -> Counters {
            Counters::new()
                .total("bytes", "Bytes received", self.0)
                .metric("received_bytes")
                .total("accepted", "Packets taken", self.1)
                .total("late", "Packets late", self.2)
        }

        fn summary_line(&self) -> String {
            String::new()
        }
    }
}
