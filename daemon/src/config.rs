//! The daemon's configuration file (TOML): parsed into plain data, then validated, with every
//! error naming the offending key (`source[0].stream.beamtime: ...`).
//!
//! Resolving the plain data into live objects (pools, files, threads) is the pipeline's job;
//! nothing here touches the system beyond counting the machine's cores.

use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};

use detingest_shm::{Name, PixelType, StreamId};
use detingest_writer::{Chunking, Codec, DetectorInfo, FileOptions, MAX_MODULES};
use serde::Deserialize;

/// A configuration error: the key it concerns and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("config key `{key}`: {message}")]
pub struct ConfigError {
    /// Dotted path of the offending key, e.g. `source[0].rate_hz`; `.` for the whole file.
    pub key: String,
    /// What is wrong with it.
    pub message: String,
}

impl ConfigError {
    pub(crate) fn new(key: impl Into<String>, message: impl fmt::Display) -> Self {
        Self {
            key: key.into(),
            message: message.to_string(),
        }
    }
}

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
    /// The notification socket for live viewers and its query endpoint.
    #[serde(default)]
    pub live: LiveConfig,
    /// Defaults of every run (a run started over the control API may change them).
    #[serde(default)]
    pub run: RunSettings,
    /// The HTTP control API (`detingestd serve`).
    #[serde(default)]
    pub control: ControlConfig,
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
}

impl Default for WriterConfig {
    fn default() -> Self {
        Self {
            codec: Codec::default(),
            flush_every_frames: 1000,
            flush_interval_ms: 1000,
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
    /// Write `/entry/data/data` in the master as a virtual dataset when the run ends.
    pub vds: bool,
    /// Detector frame number of index 1 (default: the first frame the source delivers). Set
    /// it to make several daemons, each receiving some modules, agree on indices.
    pub first_frame_number: Option<u64>,
    /// Close a dataset missing modules after this many milliseconds.
    pub dataset_timeout_ms: u64,
    /// Close a dataset missing modules once a frame this many frame numbers later arrives.
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
            vds: files.vds,
            first_frame_number: None,
            dataset_timeout_ms: 1000,
            dataset_ahead: 8,
            user: serde_json::Value::Object(Default::default()),
            next_stream: None,
        }
    }
}

impl RunSettings {
    /// The file options of the run.
    pub fn file_options(&self) -> FileOptions {
        FileOptions {
            frames_per_file: self.frames_per_file,
            vds: self.vds,
        }
    }

    /// Checks ranges; `prefix` names the table (`run`, or `""` for a request's fields).
    pub fn validate(&self, prefix: &str) -> Result<(), ConfigError> {
        let key = |k: &str| key_in(prefix, k);
        check_range(key("frames_per_file"), self.frames_per_file, 1..=1_000_000)?;
        check_range(key("dataset_ahead"), self.dataset_ahead, 1..=1024)?;
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

/// `[control]`: the HTTP JSON control API of `detingestd serve`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ControlConfig {
    /// Address to listen on; loopback by default, as the API has no authentication.
    pub listen: std::net::SocketAddr,
}

impl Default for ControlConfig {
    fn default() -> Self {
        Self {
            listen: std::net::SocketAddr::from(([127, 0, 0, 1], 8450)),
        }
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

/// `[live]`: the ZeroMQ notification socket live viewers subscribe to, and the query endpoint
/// late joiners ask.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LiveConfig {
    /// PUB endpoint (`""`: no publishing).
    pub publish: String,
    /// REP endpoint answering `last` and `range` (`""`: none).
    pub query: String,
    /// Messages queued per subscriber before ZeroMQ drops for that subscriber.
    pub high_water_mark: i32,
    /// Recent frame notifications kept per stream for `range`.
    pub history: usize,
    /// Publish a preview of one frame in this many (0: no previews).
    pub preview_every: u64,
    /// And at most this many previews per second per stream (0: no limit).
    pub preview_max_hz: f64,
    /// Buffers previews are copied into; when viewers hold them all, previews are skipped.
    pub preview_buffers: usize,
    /// Also publish Bluesky event-model documents on the `bluesky` topic.
    pub bluesky: bool,
    /// Before the sources start, wait for this many subscribers (0: don't wait).
    pub wait_for_subscribers: usize,
    /// Give up waiting for subscribers after this many milliseconds, and start anyway.
    pub wait_timeout_ms: u64,
    /// Run the notification thread and the publisher's ZeroMQ I/O thread under SCHED_FIFO at
    /// this priority (1..=99), so a notification leaves as soon as its frame is written even
    /// when the compression workers keep every core busy (0: normal scheduling). Needs root
    /// or CAP_SYS_NICE; refused, it is logged and the threads run normally.
    pub realtime_priority: i32,
    /// The notification thread hands what has queued to the sinks at most once per this many
    /// microseconds: a frame written sooner than that after the previous batch waits (at most
    /// this long) and leaves with the frames behind it, so ZeroMQ's threads and every viewer
    /// wake once per batch instead of once per frame. Frames further apart than this leave at
    /// once (0, the default: every frame at once).
    pub batch_interval_us: u64,
}

impl Default for LiveConfig {
    fn default() -> Self {
        Self {
            publish: "tcp://127.0.0.1:5556".into(),
            query: "tcp://127.0.0.1:5557".into(),
            high_water_mark: 1000,
            history: 10_000,
            preview_every: 10,
            preview_max_hz: 5.0,
            preview_buffers: 4,
            bluesky: false,
            wait_for_subscribers: 0,
            wait_timeout_ms: 5000,
            realtime_priority: 0,
            batch_interval_us: 0,
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

/// What a source does when the next stage is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Policy {
    /// Wait: for sources that can (shared-memory producers, files, the synthetic detector).
    #[default]
    Block,
    /// Drop the frame and count it: for sources that cannot wait (UDP).
    Drop,
}

/// One `[[source]]`: what every source has, plus exactly one kind table
/// (`[source.synthetic]` or `[source.shm]`; UDP comes later).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// Source name, used for its thread (`src-<name>`).
    pub name: Name,
    /// The stream it feeds.
    pub stream: StreamId,
    /// Behaviour when the pipeline is full.
    #[serde(default)]
    pub policy: Policy,
    /// Core to pin the source thread to.
    #[serde(default)]
    pub core: Option<usize>,
    /// `[rows, columns]` of detector modules; a frame's modules form one dataset, module `m`
    /// at row `m / columns`, column `m % columns`. The source's `shape` is one module's.
    #[serde(default = "default_grid")]
    pub grid: [u32; 2],
    /// This stream's codec, overriding `writer.codec`.
    #[serde(default)]
    pub codec: Option<Codec>,
    /// The built-in synthetic detector.
    pub synthetic: Option<SyntheticConfig>,
    /// A shared-memory ring that a producer process writes frames into.
    pub shm: Option<ShmConfig>,
    /// A UDP port a detector module streams packets to.
    pub udp: Option<UdpConfig>,
}

fn default_grid() -> [u32; 2] {
    [1, 1]
}

/// The kind of a validated source.
#[derive(Debug, Clone, Copy)]
pub enum SourceKind<'a> {
    /// `[source.synthetic]`.
    Synthetic(&'a SyntheticConfig),
    /// `[source.shm]`.
    Shm(&'a ShmConfig),
    /// `[source.udp]`.
    Udp(&'a UdpConfig),
}

impl SourceConfig {
    /// The source's kind. Validation guarantees exactly one kind table is present.
    pub fn kind(&self) -> Option<SourceKind<'_>> {
        match (&self.synthetic, &self.shm, &self.udp) {
            (Some(s), None, None) => Some(SourceKind::Synthetic(s)),
            (None, Some(s), None) => Some(SourceKind::Shm(s)),
            (None, None, Some(s)) => Some(SourceKind::Udp(s)),
            _ => None,
        }
    }

    /// Pixel type and `[ny, nx]` of the source's frames.
    pub fn frame_format(&self) -> (PixelType, [u32; 2]) {
        match self.kind() {
            Some(SourceKind::Synthetic(s)) => (s.pixel, s.shape),
            Some(SourceKind::Shm(s)) => (s.pixel, s.shape),
            Some(SourceKind::Udp(s)) => (s.pixel, s.shape),
            None => (PixelType::U8, [0, 0]),
        }
    }

    /// The codec of this source's stream: its own, or the writer's.
    pub fn codec(&self, writer: &WriterConfig) -> Codec {
        self.codec.unwrap_or(writer.codec)
    }

    /// Number of detector modules.
    pub fn modules(&self) -> u32 {
        self.grid[0] * self.grid[1]
    }

    /// Frames the source will produce, if it knows (0: open-ended).
    pub fn expected_frames(&self) -> u64 {
        match self.kind() {
            Some(SourceKind::Synthetic(s)) => s.frames,
            Some(SourceKind::Shm(_) | SourceKind::Udp(_)) | None => 0,
        }
    }
}

/// `[source.synthetic]`: deterministic Poisson background plus Bragg-like peaks.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyntheticConfig {
    /// Frames to produce (0: until stopped).
    #[serde(default = "default_frames")]
    pub frames: u64,
    /// Frames per second (0: as fast as the pipeline takes them).
    #[serde(default)]
    pub rate_hz: f64,
    /// `[ny, nx]` of one module frame.
    #[serde(default = "default_shape")]
    pub shape: [u32; 2],
    /// Pixel type.
    #[serde(default = "default_pixel")]
    pub pixel: PixelType,
    /// Seed: frame `n`'s pixels are a pure function of (seed, n).
    #[serde(default)]
    pub seed: u64,
    /// Mean background photons per pixel (Poisson).
    #[serde(default = "default_background")]
    pub background: f64,
    /// Bragg-like peaks per frame.
    #[serde(default = "default_peaks")]
    pub peaks: u32,
    /// Distinct frames generated at start and cycled through.
    #[serde(default = "default_bank")]
    pub bank_frames: usize,
    /// Detector frame number of the first frame.
    #[serde(default = "default_first")]
    pub first_frame_number: u64,
    /// Copy each frame into a pool buffer, as a receiving socket would (default: hand the
    /// bank's frame down by reference, as a shared-memory slot is).
    #[serde(default)]
    pub copy: bool,
    /// Probability that a module frame is withheld (never sent), drawn per (frame, module).
    #[serde(default)]
    pub module_loss: f64,
    /// Module frames always withheld, as `[frame_number, module]` pairs.
    #[serde(default)]
    pub withhold: Vec<[u64; 2]>,
}

impl Default for SyntheticConfig {
    /// The settings a `[source.synthetic]` table with no keys gets.
    fn default() -> Self {
        Self {
            frames: default_frames(),
            rate_hz: 0.0,
            shape: default_shape(),
            pixel: default_pixel(),
            seed: 0,
            background: default_background(),
            peaks: default_peaks(),
            bank_frames: default_bank(),
            first_frame_number: default_first(),
            copy: false,
            module_loss: 0.0,
            withhold: Vec::new(),
        }
    }
}

fn default_frames() -> u64 {
    100
}
fn default_shape() -> [u32; 2] {
    [512, 1024]
}
fn default_pixel() -> PixelType {
    PixelType::U16
}
fn default_background() -> f64 {
    0.5
}
fn default_peaks() -> u32 {
    20
}
fn default_bank() -> usize {
    16
}
fn default_first() -> u64 {
    1
}

/// `[source.shm]`: a shared-memory ring, created by the daemon at start, that one producer
/// process at a time (vendor software linking libdetingest) writes frames into.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShmConfig {
    /// Ring name: the file `<dir>/<ring>` (default: the source's name).
    #[serde(default)]
    pub ring: Option<Name>,
    /// Directory of the ring files.
    #[serde(default = "default_shm_dir")]
    pub dir: PathBuf,
    /// Slots in the ring (a power of two): frames the producer can be ahead by.
    #[serde(default = "default_slots")]
    pub slots: u32,
    /// `[ny, nx]` of the frames producers must send.
    pub shape: [u32; 2],
    /// Their pixel type.
    pub pixel: PixelType,
    /// The module this ring carries (producers must say the same).
    #[serde(default)]
    pub module: u16,
    /// File mode of the ring, e.g. `0o600` (default), `0o660` (default with a group).
    #[serde(default)]
    pub mode: Option<u32>,
    /// Group that may open the ring (a name from /etc/group).
    #[serde(default)]
    pub group: Option<String>,
    /// End the stream, and so the run, when a producer closes cleanly (default: serve
    /// producer after producer until the daemon is stopped).
    #[serde(default)]
    pub end_on_close: bool,
    /// Microseconds the source spins on an empty ring before sleeping on its futex: longer
    /// keeps a core busy while idle, and saves the producer a wake-up call and the frame a
    /// wake-up latency (tens of us here, docs/BENCHMARKS.md) whenever frames come closer
    /// together than this.
    #[serde(default = "default_spin_us")]
    pub spin_us: u64,
}

fn default_spin_us() -> u64 {
    detingest_shm::ring::DEFAULT_SPIN.as_micros() as u64
}

fn default_shm_dir() -> PathBuf {
    PathBuf::from("/dev/shm/detingest")
}
fn default_slots() -> u32 {
    64
}

impl ShmConfig {
    /// The ring file of source `source`.
    pub fn ring_path(&self, source: &Name) -> PathBuf {
        self.dir.join(self.ring.as_ref().unwrap_or(source).as_str())
    }

    /// The file mode: as configured, else 0o660 with a group and 0o600 without.
    pub fn file_mode(&self) -> u32 {
        self.mode
            .unwrap_or(if self.group.is_some() { 0o660 } else { 0o600 })
    }

    /// The group's id, looked up by name.
    pub fn gid(&self, i: usize) -> Result<Option<u32>, ConfigError> {
        let Some(name) = &self.group else {
            return Ok(None);
        };
        let key = format!("source[{i}].shm.group");
        match nix::unistd::Group::from_name(name) {
            Ok(Some(g)) => Ok(Some(g.gid.as_raw())),
            Ok(None) => Err(ConfigError::new(key, format!("no group named {name:?}"))),
            Err(e) => Err(ConfigError::new(
                key,
                format!("cannot look up {name:?}: {e}"),
            )),
        }
    }

    fn validate(&self, i: usize) -> Result<(), ConfigError> {
        let key = |k: &str| format!("source[{i}].shm.{k}");
        if self.slots < 2 || self.slots > 65_536 || !self.slots.is_power_of_two() {
            return Err(ConfigError::new(
                key("slots"),
                format!("{} is not a power of two in 2..=65536", self.slots),
            ));
        }
        check_frame(&key("shape"), self.pixel, self.shape)?;
        if let Some(m) = self.mode {
            if m > 0o777 || m & 0o600 != 0o600 {
                return Err(ConfigError::new(
                    key("mode"),
                    format!("{m:#o} must be permission bits (<= 0o777) including 0o600"),
                ));
            }
        }
        if self.spin_us > 1_000_000 {
            return Err(ConfigError::new(
                key("spin_us"),
                "must be at most 1000000 (1 s)",
            ));
        }
        if !self.dir.is_absolute() {
            return Err(ConfigError::new(key("dir"), "must be an absolute path"));
        }
        self.gid(i)?;
        Ok(())
    }
}

/// `[source.udp]`: one UDP port of a detector module, received by a pinned thread
/// (`core` of the `[[source]]`) and assembled into frames.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UdpConfig {
    /// Address to bind.
    #[serde(default = "default_bind")]
    pub bind: std::net::IpAddr,
    /// Port to bind (0: any free port, for tests).
    pub port: u16,
    /// Module id the packets carry.
    #[serde(default)]
    pub module: u16,
    /// Packets per frame on this port (at most 512).
    #[serde(default = "default_packets")]
    pub packets_per_frame: u32,
    /// Payload bytes per packet.
    #[serde(default = "default_payload")]
    pub payload_bytes: usize,
    /// Packet header format.
    #[serde(default)]
    pub header: HeaderFormat,
    /// `[ny, nx]` of the frame (its bytes: packets_per_frame x payload_bytes).
    #[serde(default = "default_shape")]
    pub shape: [u32; 2],
    /// Pixel type.
    #[serde(default = "default_pixel")]
    pub pixel: PixelType,
    /// Socket receive buffer (SO_RCVBUF) in bytes.
    #[serde(default = "default_rcvbuf")]
    pub rcvbuf_bytes: usize,
    /// Receive path: `auto` (io_uring if the kernel allows, else recvmmsg), `io_uring`, `recvmmsg`.
    #[serde(default)]
    pub receive: ReceivePath,
    /// Frames open at once: a frame still missing packets leaves when one `window` frames
    /// newer arrives.
    #[serde(default = "default_window")]
    pub window: u64,
    /// Longest a frame stays open, in milliseconds.
    #[serde(default = "default_udp_timeout")]
    pub timeout_ms: u64,
    /// Pixel value written where packets are missing.
    #[serde(default)]
    pub fill: u64,
    /// Frame-number jump (ahead or back) treated as a detector restart rather than loss.
    #[serde(default = "default_restart_gap")]
    pub restart_gap: u64,
    /// Consecutive packets of a new numbering needed to accept a restart.
    #[serde(default = "default_restart_confirm")]
    pub restart_confirm: u32,
}

/// Packet header formats.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HeaderFormat {
    /// slsDetectorPackage v2 (48 bytes).
    #[default]
    Sls2,
}

/// UDP receive paths.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReceivePath {
    /// io_uring when available, else recvmmsg.
    #[default]
    Auto,
    /// io_uring multishot receive with provided buffers; refuse to start without it.
    IoUring,
    /// recvmmsg batches.
    Recvmmsg,
}

fn default_bind() -> std::net::IpAddr {
    std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)
}
fn default_packets() -> u32 {
    128
}
fn default_payload() -> usize {
    8192
}
fn default_rcvbuf() -> usize {
    64 << 20
}
fn default_window() -> u64 {
    4
}
fn default_udp_timeout() -> u64 {
    100
}
fn default_restart_gap() -> u64 {
    65_536
}
fn default_restart_confirm() -> u32 {
    8
}

impl UdpConfig {
    /// The socket address to bind.
    pub fn address(&self) -> std::net::SocketAddr {
        std::net::SocketAddr::new(self.bind, self.port)
    }

    fn validate(&self, i: usize) -> Result<(), ConfigError> {
        let key = |k: &str| format!("source[{i}].udp.{k}");
        let max = crate::source::udp::assembler::MAX_PACKETS;
        check_range(key("packets_per_frame"), self.packets_per_frame, 1..=max)?;
        if self.payload_bytes == 0
            || self.payload_bytes > 65_000
            || self.payload_bytes % self.pixel.size() != 0
        {
            return Err(ConfigError::new(
                key("payload_bytes"),
                format!(
                    "must be in 1..=65000 and a multiple of the pixel size ({})",
                    self.pixel.size()
                ),
            ));
        }
        let frame = check_frame(&key("shape"), self.pixel, self.shape)?;
        let packets = self.packets_per_frame as usize * self.payload_bytes;
        if frame != packets {
            return Err(ConfigError::new(
                key("shape"),
                format!(
                    "{:?} {} pixels make {frame} bytes, but {} packets of {} bytes carry {packets}",
                    self.shape,
                    self.pixel.name(),
                    self.packets_per_frame,
                    self.payload_bytes
                ),
            ));
        }
        check_range(key("window"), self.window, 1..=1024)?;
        check_at_least_one(key("timeout_ms"), self.timeout_ms)?;
        if self.fill > self.pixel.max_value() as u64 {
            return Err(ConfigError::new(
                key("fill"),
                format!("does not fit a {} pixel", self.pixel.name()),
            ));
        }
        if self.restart_gap <= self.window {
            return Err(ConfigError::new(
                key("restart_gap"),
                "must be larger than window",
            ));
        }
        check_at_least_one(key("restart_confirm"), self.restart_confirm)?;
        Ok(())
    }
}

/// Refuses `value` (under `key`) outside `range` (a NaN is outside every range).
fn check_range<T: PartialOrd + fmt::Display>(
    key: impl Into<String>,
    value: T,
    range: std::ops::RangeInclusive<T>,
) -> Result<(), ConfigError> {
    if range.contains(&value) {
        return Ok(());
    }
    let (lo, hi) = range.into_inner();
    Err(ConfigError::new(
        key,
        format!("{value} is not in {lo}..={hi}"),
    ))
}

/// Refuses a zero (under `key`).
fn check_at_least_one(key: impl Into<String>, value: impl Into<u64>) -> Result<(), ConfigError> {
    match value.into() {
        0 => Err(ConfigError::new(key, "must be at least 1")),
        _ => Ok(()),
    }
}

/// Deserialises from `de`, naming the offending key (its path in table `prefix`) on error.
pub(crate) fn deserialize_keyed<'de, D, T>(de: D, prefix: &str) -> Result<T, ConfigError>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    serde_path_to_error::deserialize(de).map_err(|e| {
        let key = match e.path().to_string().as_str() {
            "." if prefix.is_empty() => ".".to_string(),
            "." => prefix.to_string(),
            path => key_in(prefix, path),
        };
        ConfigError::new(key, e.into_inner().to_string().trim_end())
    })
}

/// The dotted name of key `k` in table `prefix` (`k` alone at the top level).
pub(crate) fn key_in(prefix: &str, k: &str) -> String {
    if prefix.is_empty() {
        k.to_string()
    } else {
        format!("{prefix}.{k}")
    }
}

/// Largest frame accepted, in bytes: a chunk must stay below 2 GiB for HDF5 and LZ4.
pub const MAX_FRAME_BYTES: usize = 1 << 30;

impl Config {
    /// Reads and validates a configuration file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::new(".", format!("cannot read {}: {e}", path.display())))?;
        Self::parse(&text)
    }

    /// Parses and validates configuration text.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let de = toml::de::Deserializer::parse(text)
            .map_err(|e| ConfigError::new(".", e.to_string().trim_end()))?;
        let config: Config = deserialize_keyed(de, "")?;
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
        self.live.validate()?;
        self.run.validate("run")?;
        if self.sources.is_empty() {
            return Err(ConfigError::new("source", "no [[source]] configured"));
        }
        let mut streams: std::collections::HashMap<&StreamId, usize> = Default::default();
        let mut names = HashSet::new();
        for (i, src) in self.sources.iter().enumerate() {
            if !names.insert(src.name.clone()) {
                return Err(ConfigError::new(
                    format!("source[{i}].name"),
                    format!("source name {:?} is used twice", src.name.as_str()),
                ));
            }
            if let Some(&j) = streams.get(&src.stream) {
                self.check_shared_stream(i, j)?;
            } else {
                streams.insert(&src.stream, i);
            }
            check_core(&format!("source[{i}].core"), src.core, cores)?;
            let modules = src.grid[0].saturating_mul(src.grid[1]);
            if modules == 0 || modules > MAX_MODULES {
                return Err(ConfigError::new(
                    format!("source[{i}].grid"),
                    format!(
                        "{:?} makes {modules} modules; need 1..={MAX_MODULES}",
                        src.grid
                    ),
                ));
            }
            if let Some(udp) = src.udp.as_ref().filter(|_| modules > 1) {
                if u32::from(udp.module) >= modules {
                    return Err(ConfigError::new(
                        format!("source[{i}].udp.module"),
                        format!(
                            "module {} is outside the grid of {modules} modules: with a grid, \
                             a UDP source's module is its place in the grid",
                            udp.module
                        ),
                    ));
                }
            }
            match src.kind() {
                Some(SourceKind::Synthetic(s)) => s.validate(i)?,
                Some(SourceKind::Shm(s)) => s.validate(i)?,
                Some(SourceKind::Udp(s)) => s.validate(i)?,
                None => return Err(ConfigError::new(
                    format!("source[{i}]"),
                    "needs exactly one source kind: a [source.synthetic], [source.shm] or [source.udp] table",
                )),
            }
            let (pixel, shape) = src.frame_format();
            let image = [
                shape[0].saturating_mul(src.grid[0]),
                shape[1].saturating_mul(src.grid[1]),
            ];
            check_frame(&format!("source[{i}].grid"), pixel, image)?;
        }
        Ok(())
    }
}

impl Config {
    /// Source `i` feeds the stream source `j` feeds: allowed for the modules of one detector,
    /// each received by its own source (one UDP port or ring per module), when they agree on
    /// the grid, the module format and the codec.
    fn check_shared_stream(&self, i: usize, j: usize) -> Result<(), ConfigError> {
        let (a, b) = (&self.sources[i], &self.sources[j]);
        let key = format!("source[{i}].stream");
        let refuse = |why: String| Err(ConfigError::new(key.clone(), why));
        if a.modules() < 2 {
            return refuse(format!(
                "stream {} is fed by two sources; several sources may feed one stream only as \
                 the modules of a grid (set grid on both)",
                a.stream
            ));
        }
        if a.synthetic.is_some() || b.synthetic.is_some() {
            return refuse(
                "a synthetic source makes every module itself; it feeds its stream alone".into(),
            );
        }
        if a.grid != b.grid || a.frame_format() != b.frame_format() || a.codec != b.codec {
            return refuse(format!(
                "source[{j}] feeds the same stream with another grid, module shape, pixel type or codec"
            ));
        }
        if let (Some(x), Some(y)) = (&a.udp, &b.udp) {
            if x.module == y.module {
                return Err(ConfigError::new(
                    format!("source[{i}].udp.module"),
                    format!(
                        "module {} of this stream is received by source[{j}] already",
                        x.module
                    ),
                ));
            }
        }
        Ok(())
    }
}

impl LiveConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        for (key, endpoint) in [("live.publish", &self.publish), ("live.query", &self.query)] {
            let ok = endpoint.is_empty()
                || ["tcp://", "ipc://", "inproc://"]
                    .iter()
                    .any(|p| endpoint.starts_with(p) && endpoint.len() > p.len());
            if !ok {
                return Err(ConfigError::new(
                    key,
                    format!("{endpoint:?} is not a ZeroMQ endpoint (tcp://host:port, ipc://path) or \"\""),
                ));
            }
        }
        if !self.publish.is_empty() && self.publish == self.query {
            return Err(ConfigError::new(
                "live.query",
                "must differ from live.publish",
            ));
        }
        check_range("live.high_water_mark", self.high_water_mark, 1..=i32::MAX)?;
        check_range("live.preview_buffers", self.preview_buffers, 1..=64)?;
        check_range("live.realtime_priority", self.realtime_priority, 0..=99)?;
        check_range(
            "live.batch_interval_us",
            self.batch_interval_us,
            0..=1_000_000,
        )?;
        check_range("live.history", self.history, 1..=10_000_000)?;
        if !(self.preview_max_hz.is_finite() && self.preview_max_hz >= 0.0) {
            return Err(ConfigError::new(
                "live.preview_max_hz",
                "must be a number >= 0",
            ));
        }
        Ok(())
    }
}

impl SyntheticConfig {
    fn validate(&self, i: usize) -> Result<(), ConfigError> {
        let key = |k: &str| format!("source[{i}].synthetic.{k}");
        if !(self.rate_hz.is_finite() && self.rate_hz >= 0.0) {
            return Err(ConfigError::new(key("rate_hz"), "must be a number >= 0"));
        }
        check_range(key("background"), self.background, 0.0..=1e6)?;
        check_frame(&key("shape"), self.pixel, self.shape)?;
        check_range(key("bank_frames"), self.bank_frames, 1..=4096)?;
        check_range(key("module_loss"), self.module_loss, 0.0..=1.0)?;
        if self.first_frame_number.checked_add(self.frames).is_none() {
            return Err(ConfigError::new(
                key("first_frame_number"),
                "first_frame_number + frames overflows u64",
            ));
        }
        Ok(())
    }
}

/// The bytes of a `shape` frame of `pixel`, refused (under `key`) when empty or too large.
fn check_frame(key: &str, pixel: PixelType, shape: [u32; 2]) -> Result<usize, ConfigError> {
    let bytes = pixel.frame_bytes(shape);
    if shape.contains(&0) || bytes > MAX_FRAME_BYTES {
        return Err(ConfigError::new(
            key,
            format!("{shape:?} gives {bytes} bytes per frame; need 1..={MAX_FRAME_BYTES}"),
        ));
    }
    Ok(bytes)
}

fn core_count() -> usize {
    core_affinity::get_core_ids().map_or(1, |ids| ids.len().max(1))
}

fn check_core(key: &str, core: Option<usize>, cores: usize) -> Result<(), ConfigError> {
    match core {
        Some(c) if c >= cores => Err(ConfigError::new(
            key,
            format!("core {c} does not exist (this machine has cores 0..{cores})"),
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
        [[source]]
        name = "sim"
        stream = { beamtime = "bt", source = "det", stream = "s1" }
        [source.synthetic]
    "#;

    fn err(text: &str) -> ConfigError {
        Config::parse(text).expect_err("config should be refused")
    }

    const SHM: &str = r#"
        [[source]]
        name = "mod0"
        stream = { beamtime = "bt", source = "det", stream = "s1" }
        [source.shm]
        shape = [512, 1024]
        pixel = "u16"
    "#;

    #[test]
    fn shm_source_gets_its_defaults() {
        let c = Config::parse(SHM).unwrap();
        let Some(SourceKind::Shm(s)) = c.sources[0].kind() else {
            panic!("shm source expected");
        };
        assert_eq!(
            s.ring_path(&c.sources[0].name),
            Path::new("/dev/shm/detingest/mod0")
        );
        assert_eq!((s.slots, s.file_mode(), s.end_on_close), (64, 0o600, false));
        let grouped = Config::parse(&SHM.replace("pixel", "group = \"root\"\npixel")).unwrap();
        let Some(SourceKind::Shm(g)) = grouped.sources[0].kind() else {
            panic!("shm source expected");
        };
        assert_eq!((g.file_mode(), g.gid(0).unwrap()), (0o660, Some(0)));
    }

    #[test]
    fn bad_shm_settings_are_refused_by_key() {
        for (find, replace, key) in [
            ("pixel", "slots = 48\npixel", "source[0].shm.slots"),
            ("pixel", "slots = 1\npixel", "source[0].shm.slots"),
            ("[512, 1024]", "[0, 1024]", "source[0].shm.shape"),
            ("pixel", "mode = 0o400\npixel", "source[0].shm.mode"),
            ("pixel", "mode = 0o1777\npixel", "source[0].shm.mode"),
            (
                "pixel",
                "group = \"no-such-group-here\"\npixel",
                "source[0].shm.group",
            ),
            ("pixel", "dir = \"rings\"\npixel", "source[0].shm.dir"),
            ("pixel", "ring = \"../etc\"\npixel", "source[0].shm.ring"),
            ("pixel", "spin_us = 5000000\npixel", "source[0].shm.spin_us"),
            ("pixel = \"u16\"", "", "source[0].shm"),
        ] {
            let e = err(&SHM.replace(find, replace));
            assert!(e.key.starts_with(key), "{find} -> {replace}: got {e}");
        }
        let both = SHM.replace("[source.shm]", "[source.synthetic]\n[source.shm]");
        let e = err(&both);
        assert_eq!(e.key, "source[0]");
        assert!(e.to_string().contains("exactly one source kind"), "{e}");
    }

    const UDP: &str = r#"
        [[source]]
        name = "mod0"
        stream = { beamtime = "bt", source = "det", stream = "s1" }
        [source.udp]
        port = 50001
    "#;

    #[test]
    fn bad_udp_settings_are_refused_by_key() {
        assert!(Config::parse(UDP).is_ok(), "JUNGFRAU defaults fit together");
        for (extra, key) in [
            ("shape = [256, 1024]", "source[0].udp.shape"),
            ("shape = [0, 1024]", "source[0].udp.shape"),
            ("packets_per_frame = 513", "source[0].udp.packets_per_frame"),
            ("payload_bytes = 8191", "source[0].udp.payload_bytes"),
            ("window = 0", "source[0].udp.window"),
            ("timeout_ms = 0", "source[0].udp.timeout_ms"),
            ("fill = 65536", "source[0].udp.fill"),
            ("restart_gap = 4", "source[0].udp.restart_gap"),
            ("restart_confirm = 0", "source[0].udp.restart_confirm"),
            ("receive = \"dpdk\"", "source[0].udp.receive"),
            ("bind = \"not-an-address\"", "source[0].udp.bind"),
        ] {
            let e = err(&format!("{UDP}{extra}\n"));
            assert_eq!(e.key, key, "{extra}: {e}");
        }
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let c = Config::parse(MINIMAL).unwrap();
        assert_eq!(c.writer.codec, Codec::BitshuffleLz4);
        assert_eq!(c.sources[0].codec(&c.writer), Codec::BitshuffleLz4);
        let own = Config::parse(
            &MINIMAL.replace("[source.synthetic]", "codec = \"lz4\"\n[source.synthetic]"),
        )
        .unwrap();
        assert_eq!(own.sources[0].codec(&own.writer), Codec::Lz4);
        assert_eq!(c.pipeline.compress_workers, 2);
        let Some(SourceKind::Synthetic(s)) = c.sources[0].kind() else {
            panic!("synthetic source expected");
        };
        let d = SyntheticConfig::default();
        assert_eq!(
            (s.frames, s.shape, s.pixel, s.seed),
            (d.frames, d.shape, d.pixel, d.seed)
        );
        assert_eq!(
            (s.background, s.peaks, s.bank_frames),
            (d.background, d.peaks, d.bank_frames)
        );
        assert_eq!(s.shape, [512, 1024]);
        assert_eq!(s.pixel, PixelType::U16);
        assert_eq!(c.sources[0].policy, Policy::Block);
    }

    #[test]
    fn bad_stream_name_names_its_key() {
        let e = err(&MINIMAL.replace("\"bt\"", "\"../etc\""));
        assert_eq!(e.key, "source[0].stream.beamtime");
        assert!(e.message.contains("../etc"), "{e}");
    }

    #[test]
    fn unknown_key_is_named() {
        let e = err(&format!("{MINIMAL}\nspeed = 3\n"));
        assert_eq!(e.key, "source[0].synthetic.speed");
        assert!(e.message.contains("speed"), "{e}");
        let e = err(&format!("[writer]\nflush_evry_frames = 3\n{MINIMAL}"));
        assert_eq!(e.key, "writer.flush_evry_frames");
        assert!(e.message.contains("flush_evry_frames"), "{e}");
    }

    #[test]
    fn wrong_type_and_bad_enum_are_named() {
        let e = err(&format!("[writer]\ncodec = \"zip\"\n{MINIMAL}"));
        assert_eq!(e.key, "writer.codec");
        let e = err(&format!("{MINIMAL}\npixel = \"u12\"\n"));
        assert_eq!(e.key, "source[0].synthetic.pixel");
        let e = err(&format!("{MINIMAL}\nframes = \"many\"\n"));
        assert_eq!(e.key, "source[0].synthetic.frames");
    }

    #[test]
    fn range_errors_are_named() {
        let e = err(&format!("[pipeline]\ncompress_workers = 0\n{MINIMAL}"));
        assert_eq!(e.key, "pipeline.compress_workers");
        let e = err(&format!("{MINIMAL}\nrate_hz = -1.0\n"));
        assert_eq!(e.key, "source[0].synthetic.rate_hz");
        let e = err(&format!("{MINIMAL}\nshape = [0, 10]\n"));
        assert_eq!(e.key, "source[0].synthetic.shape");
        let e = err(&format!("[threads]\ncompress = [0, 4096]\n{MINIMAL}"));
        assert_eq!(e.key, "threads.compress[1]");
    }

    #[test]
    fn duplicate_streams_and_empty_sources_are_refused() {
        let twice = format!("{MINIMAL}{}", MINIMAL.replace("\"sim\"", "\"sim2\""));
        assert_eq!(err(&twice).key, "source[1].stream");
        let gridded = |name: &str, module: u16, grid: &str| {
            format!(
                "[[source]]\nname = \"{name}\"\ngrid = {grid}\n\
                 stream = {{ beamtime = \"bt\", source = \"det\", stream = \"s1\" }}\n\
                 [source.udp]\nport = {}\nmodule = {module}\npackets_per_frame = 2\n\
                 payload_bytes = 1024\nshape = [1, 1024]\npixel = \"u16\"\n",
                9000 + module
            )
        };
        let two = format!(
            "{}{}",
            gridded("m0", 0, "[1, 2]"),
            gridded("m1", 1, "[1, 2]")
        );
        assert_eq!(
            Config::parse(&two).unwrap().sources.len(),
            2,
            "modules of one detector"
        );
        let same = format!(
            "{}{}",
            gridded("m0", 1, "[1, 2]"),
            gridded("m1", 1, "[1, 2]")
        );
        assert_eq!(err(&same).key, "source[1].udp.module");
        let other = format!(
            "{}{}",
            gridded("m0", 0, "[1, 2]"),
            gridded("m1", 1, "[2, 1]")
        );
        assert_eq!(err(&other).key, "source[1].stream");
        assert_eq!(err(&gridded("m2", 2, "[1, 2]")).key, "source[0].udp.module");
        assert_eq!(err("data_dir = \"x\"\n").key, "source");
        let kindless = MINIMAL.replace("[source.synthetic]", "");
        assert_eq!(err(&kindless).key, "source[0]");
    }

    #[test]
    fn live_endpoints_are_checked() {
        for (text, key) in [
            ("publish = \"5556\"\n", "live.publish"),
            (
                "publish = \"tcp://a:1\"\nquery = \"tcp://a:1\"\n",
                "live.query",
            ),
            ("realtime_priority = 100\n", "live.realtime_priority"),
            ("batch_interval_us = 2000000\n", "live.batch_interval_us"),
        ] {
            assert_eq!(err(&format!("[live]\n{text}{MINIMAL}")).key, key, "{text}");
        }
        let c = Config::parse(&format!("[live]\npublish = \"\"\nquery = \"\"\n{MINIMAL}")).unwrap();
        assert!(c.live.publish.is_empty());
    }

    #[test]
    fn run_and_grid_settings_are_checked_by_key() {
        for (text, key) in [
            ("[run]\nframes_per_file = 0\n", "run.frames_per_file"),
            ("[run]\ndataset_ahead = 0\n", "run.dataset_ahead"),
            ("[run]\nchunking = \"tiles\"\n", "run.chunking"),
            ("[run]\nnext_stream = \"../x\"\n", "run.next_stream"),
        ] {
            assert_eq!(err(&format!("{text}{MINIMAL}")).key, key, "{text}");
        }
        let grid = MINIMAL.replace("[source.synthetic]", "grid = [9, 8]\n[source.synthetic]");
        assert_eq!(err(&grid).key, "source[0].grid");
        let loss = format!("{MINIMAL}module_loss = 2.0\n");
        assert_eq!(err(&loss).key, "source[0].synthetic.module_loss");
    }

    #[test]
    fn syntax_error_is_reported() {
        let e = err("[writer\n");
        assert_eq!(e.key, ".");
        assert!(e.message.contains("line 1"), "{e}");
    }
}
