//! The daemon's configuration file (TOML): parsed into plain data, then validated, with every
//! error naming the offending key (`source[0].stream.beamtime: ...`).
//!
//! This module holds the top level (data directory, writer, run, pipeline, threads, control)
//! and assembles the components' tables: each source kind's and each sink's table, with its
//! defaults and checks, lives in the component's folder (`source/<kind>/config.rs`,
//! `sink/<name>/config.rs`); the sinks' tables are all under `[sink]` (`sink::SinkConfig`,
//! which also reads the older names `[live]`, `[kafka]`, `[quality]`). Resolving the plain data into live objects (pools, files,
//! threads) is the pipeline's and the components' job; nothing here touches the system
//! beyond counting the machine's cores.

use std::path::{Path, PathBuf};

use detingest_writer::{Chunking, Codec, DetectorInfo, FileOptions, MasterData};
use serde::Deserialize;

pub use crate::check::ConfigError;
use crate::check::{
    check_at_least_one, check_core, check_range, core_count, deserialize_keyed, key_in,
};
use crate::control::ControlConfig;
pub use crate::sink::SinkConfig;
use crate::source::validate_sources;
pub use crate::source::{Policy, SourceConfig};
use detingest_shm::Name;

#[cfg(test)]
mod tests;

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Root of the data tree: files go to `<data_dir>/<beamtime>/<source>/<stream>.h5`.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// Codec and flush cadence.
    #[serde(default)]
    pub writer: WriterConfig,
    /// Queue depths, pool sizes and worker count.
    #[serde(default)]
    pub pipeline: PipelineConfig,
    /// Which core each data-moving thread is pinned to.
    #[serde(default)]
    pub threads: ThreadMap,
    /// Detector description written into every file.
    #[serde(default)]
    pub detector: DetectorInfo,
    /// Every sink's table, `[sink.<name>]`.
    #[serde(default)]
    pub sink: SinkConfig,
    /// Defaults of every run (a run started over the control API may change them).
    #[serde(default)]
    pub run: RunSettings,
    /// The HTTP control API (`detingestd serve`).
    #[serde(default)]
    pub control: ControlConfig,
    /// `[cluster]`: this daemon's part of a detector several daemons take together.
    #[serde(default)]
    pub cluster: crate::cluster::ClusterConfig,
    /// The frame sources, one stream each.
    #[serde(rename = "source", default)]
    pub sources: Vec<SourceConfig>,
}

fn default_data_dir() -> PathBuf {
    PathBuf::from("./data")
}

/// `[writer]`: how chunks are encoded and how often files are flushed.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WriterConfig {
    /// `"bslz4"` (bitshuffle-LZ4, HDF5 filter 32008, default), `"lz4"` (32004) or `"none"`;
    /// a source may choose its own.
    pub codec: Codec,
    /// Flush a file after this many indices (0: only by time and on close).
    pub flush_every_frames: u64,
    /// Flush a file at least this often while frames arrive, in milliseconds (0: only by
    /// count and on close).
    pub flush_interval_ms: u64,
    /// Write the files with SWMR, so readers may open them (`swmr=True`) during the run and
    /// read every index up to the readable watermark.
    pub swmr: bool,
}

impl Default for WriterConfig {
    fn default() -> Self {
        Self {
            codec: Codec::default(),
            flush_every_frames: 1000,
            flush_interval_ms: 1000,
            swmr: true,
        }
    }
}

/// `[run]`: what a run writes and when it ends. The defaults of every run; a run started over
/// the control API overrides them field by field.
#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RunSettings {
    /// Indices the run records before it stops by itself (0: open-ended).
    pub frames: u64,
    /// End the run when no frame has arrived for this long, in milliseconds (0: never).
    pub idle_timeout_ms: u64,
    /// `"module"` (one chunk per module tile, zero copy) or `"frame"` (one chunk per image).
    pub chunking: Chunking,
    /// Indices per data file.
    pub frames_per_file: u64,
    /// What the master's `/entry/data` holds: `"vds"` (the VDS `data`), `"links"` (the
    /// data files' `data_000001`, ... links, DECTRIS-style, for XDS) or `"both"`.
    pub master_data: MasterData,
    /// The older switch: `false` is `master_data = "links"`.
    pub vds: bool,
    /// Detector frame number of index 1 (default: the first frame the source delivers). Set
    /// it to make several daemons, each receiving some modules, agree on indices.
    pub first_frame_number: Option<u64>,
    /// Close a dataset missing modules after this many milliseconds: how long a module that
    /// started late or runs behind is waited for.
    pub dataset_timeout_ms: u64,
    /// Datasets open at most: a dataset missing modules closes when it is `dataset_timeout_ms`
    /// old or when the window is full. 0 (the default): as many as the buffers allow (1024;
    /// with frame chunking of several modules, 256 MiB of images, at least 8).
    pub dataset_ahead: u64,
    /// Free user metadata, stored as JSON in the master (`/entry/detingest/user_metadata`).
    pub user: serde_json::Value,
    /// Stream that follows this one, for the finish marker (`asapo_no_next` when unset).
    pub next_stream: Option<String>,
}

impl Default for RunSettings {
    fn default() -> Self {
        let files = FileOptions::default();
        Self {
            frames: 0,
            idle_timeout_ms: 0,
            chunking: Chunking::Module,
            frames_per_file: files.frames_per_file,
            master_data: files.master_data,
            vds: true,
            first_frame_number: None,
            dataset_timeout_ms: 1000,
            dataset_ahead: 0,
            user: serde_json::Value::Object(Default::default()),
            next_stream: None,
        }
    }
}

impl RunSettings {
    /// The file options of the run, written with SWMR when `swmr` (`[writer] swmr`).
    pub fn file_options(&self, swmr: bool) -> FileOptions {
        FileOptions {
            frames_per_file: self.frames_per_file,
            master_data: if self.vds {
                self.master_data
            } else {
                MasterData::Links
            },
            frames: self.frames,
            swmr,
            statistics: None,
        }
    }

    /// Checks ranges; `prefix` names the table (`run`, or `""` for a request's fields).
    pub fn validate(&self, prefix: &str) -> Result<(), ConfigError> {
        let key = |k: &str| key_in(prefix, k);
        check_range(key("frames_per_file"), self.frames_per_file, 1..=1_000_000)?;
        check_range(key("dataset_ahead"), self.dataset_ahead, 0..=4096)?;
        check_at_least_one(key("dataset_timeout_ms"), self.dataset_timeout_ms)?;
        if !self.user.is_object() {
            return Err(ConfigError::new(
                key("user"),
                "must be a table (JSON object)",
            ));
        }
        if let Some(next) = &self.next_stream {
            Name::new(next).map_err(|e| ConfigError::new(key("next_stream"), e))?;
        }
        Ok(())
    }
}

/// `[pipeline]`: sizes of the queues and pools between stages.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PipelineConfig {
    /// Compression worker threads.
    pub compress_workers: usize,
    /// Capacity of each queue between stages, in frames.
    pub queue_depth: usize,
    /// Raw frame buffers per source.
    pub input_buffers: usize,
    /// Compressed chunk buffers shared by the workers.
    pub output_buffers: usize,
    /// Capacity of the notification queue; a full queue drops (and counts) notifications.
    pub notify_queue: usize,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        Self {
            compress_workers: 2,
            queue_depth: 16,
            input_buffers: 32,
            output_buffers: 32,
            notify_queue: 4096,
        }
    }
}

/// `[threads]`: the core each thread is pinned to. Absent means not pinned.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ThreadMap {
    /// The index-assignment thread.
    pub indexer: Option<usize>,
    /// The HDF5 writer thread.
    pub writer: Option<usize>,
    /// The notification consumer (and publisher) thread, and the publisher's ZeroMQ threads.
    pub notify: Option<usize>,
    /// The live query thread.
    pub query: Option<usize>,
    /// Compression workers, in order; worker `i` uses entry `i % len`.
    pub compress: Vec<usize>,
}

impl Config {
    /// What building the sinks uses beside their tables; `page`: feed the live page.
    pub fn sink_context(&self, page: bool) -> crate::sink::SinkContext<'_> {
        crate::sink::SinkContext {
            cores: self.sink_cores(),
            page,
            default_source: self.sources.first().map_or("", |s| s.name.as_str()),
            runs: Default::default(),
            late: Default::default(),
        }
    }

    /// The cores of the sinks' threads.
    pub fn sink_cores(&self) -> crate::sink::SinkCores {
        crate::sink::SinkCores {
            notify: self.threads.notify,
            query: self.threads.query,
        }
    }

    /// Reads and validates a configuration file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::new(".", format!("cannot read {}: {e}", path.display())))?;
        Self::parse(&text)
    }

    /// Parses and validates configuration text.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let mut file: toml::Table =
            toml::from_str(text).map_err(|e| ConfigError::new(".", e.to_string().trim_end()))?;
        let older = SinkConfig::move_older(&mut file)?;
        let mut config: Config =
            deserialize_keyed(toml::Value::Table(file), "").map_err(|e| ConfigError {
                key: SinkConfig::key_as_written(&older, &e.key),
                ..e
            })?;
        config.sink.older = older;
        config.validate()?;
        Ok(config)
    }

    /// Checks what the types alone cannot: ranges, duplicates, cores that exist.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let p = &self.pipeline;
        for (key, v) in [
            ("pipeline.compress_workers", p.compress_workers),
            ("pipeline.queue_depth", p.queue_depth),
            ("pipeline.input_buffers", p.input_buffers),
            ("pipeline.output_buffers", p.output_buffers),
            ("pipeline.notify_queue", p.notify_queue),
        ] {
            check_range(key, v, 1..=65_536)?;
        }
        if p.output_buffers < p.compress_workers {
            return Err(ConfigError::new(
                "pipeline.output_buffers",
                format!(
                    "{} is fewer than compress_workers ({}): each worker holds one",
                    p.output_buffers, p.compress_workers
                ),
            ));
        }
        let cores = core_count();
        let t = &self.threads;
        for (key, core) in [
            ("threads.indexer", t.indexer),
            ("threads.writer", t.writer),
            ("threads.notify", t.notify),
            ("threads.query", t.query),
        ] {
            check_core(key, core, cores)?;
        }
        for (i, &c) in t.compress.iter().enumerate() {
            check_core(&format!("threads.compress[{i}]"), Some(c), cores)?;
        }
        self.detector
            .validate()
            .map_err(|(key, e)| ConfigError::new(format!("detector.{key}"), e))?;
        self.sink.check()?;
        let kafka = &self.sink.kafka;
        if !kafka.source.is_empty() && !self.sources.iter().any(|s| s.name.as_str() == kafka.source)
        {
            return Err(ConfigError::new(
                self.sink.at("kafka").key("source"),
                format!("no [[source]] named {:?}", kafka.source),
            ));
        }
        self.run.validate("run")?;
        self.control.validate()?;
        self.cluster.validate()?;
        if self.cluster.member() && self.run.chunking == Chunking::Frame {
            return Err(ConfigError::new(
                "run.chunking",
                "a daemon taking part of a detector ([cluster] name) writes its modules' \
                 tiles: \"module\" chunking",
            ));
        }
        // An event source reads the brokers it names, else [kafka]'s.
        let brokerless = (self.sources.iter().enumerate()).find(|(_, s)| {
            s.kafka_events
                .as_ref()
                .is_some_and(|k| k.brokers.is_empty() && kafka.brokers.is_empty())
        });
        if let Some((i, _)) = brokerless {
            return Err(ConfigError::new(
                format!("source[{i}].kafka_events.brokers"),
                format!(
                    "no brokers: set them here or in {}",
                    self.sink.at("kafka").key("brokers")
                ),
            ));
        }
        validate_sources(&self.sources, cores)
    }
}
