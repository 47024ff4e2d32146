//! What every part of the daemon shares about a stream, and nothing else: its slot in the
//! pipeline's stream table, the message a source sends, the log of frames a source dropped,
//! the stream's description, the record of one index, and the clock. Every daemon module may use this one; it uses none of them.

use std::path::PathBuf;

use detingest_shm::{FrameBuf, FrameMeta, PixelType, StreamId};
use detingest_writer::Codec;

/// Index of a stream in the pipeline's stream table.
pub type StreamSlot = u16;

/// Source -> indexer.
pub enum SourceMsg {
    /// The stream begins; index 1 belongs to `first_frame_number`.
    Start {
        /// The stream.
        stream: StreamSlot,
        /// Detector frame number of index 1.
        first_frame_number: u64,
    },
    /// One frame, pixels in a pool buffer.
    Frame {
        /// The stream.
        stream: StreamSlot,
        /// What the detector said about it.
        meta: FrameMeta,
        /// The pixels.
        data: FrameBuf,
    },
    /// The detector restarted: module `module`'s frames number from `first_frame_number` on,
    /// a new sequence of the stream; the old numbering ended at `last_frame_number`.
    Restart {
        /// The stream.
        stream: StreamSlot,
        /// The tile whose source saw it.
        module: u16,
        /// The detector's frame number of the new sequence's first frame.
        first_frame_number: u64,
        /// The old numbering's last frame, delivered or dropped (`None`: none).
        last_frame_number: Option<u64>,
    },
    /// The stream ends after `last_frame_number` (`None`: it produced nothing).
    End {
        /// The stream.
        stream: StreamSlot,
        /// Detector frame number of the last frame, delivered or dropped.
        last_frame_number: Option<u64>,
    },
}

/// Frames the sources of one stream dropped here (no free buffer, the pipeline's queue full),
/// as `(frame number, tile)`: the indexer reads it before it records an index, so a dropped
/// frame is recorded dropped, not lost. Fixed capacity, never blocks a source: when it is
/// full the drop is still counted by the source, and `unattributed` says how many indices
/// were recorded lost for want of room here.
#[derive(Debug)]
pub struct DropLog {
    queue: crossbeam::queue::ArrayQueue<(u64, u16)>,
    /// Drops that found the log full.
    pub unattributed: std::sync::atomic::AtomicU64,
}

impl DropLog {
    /// A log of `capacity` drops.
    pub fn new(capacity: usize) -> Self {
        Self {
            queue: crossbeam::queue::ArrayQueue::new(capacity.max(1)),
            unattributed: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Notes that `frame_number` of tile `module` was dropped.
    pub fn push(&self, frame_number: u64, module: u16) {
        if self.queue.push((frame_number, module)).is_err() {
            self.unattributed
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// The oldest drop not read yet.
    pub fn pop(&self) -> Option<(u64, u16)> {
        self.queue.pop()
    }
}

/// What every notification of a stream shares.
#[derive(Debug)]
pub struct StreamInfo {
    /// Position in the pipeline's stream table.
    pub slot: StreamSlot,
    /// beamtime / source / stream.
    pub id: StreamId,
    /// `id` as one string, `beamtime/source/stream`: how viewers and queries name the stream.
    pub key: String,
    /// The data file.
    pub file: PathBuf,
    /// Dataset of the frames inside the file.
    pub dataset: &'static str,
    /// Codec of the chunks.
    pub codec: Codec,
    /// Pixel type.
    pub pixel: PixelType,
    /// `[ny, nx]` of the full image.
    pub shape: [u32; 2],
    /// Detector modules forming each image.
    pub modules: u32,
    /// The modules this daemon receives (bit `m`: module `m`): every one, unless it takes
    /// part of a detector with other daemons (`[cluster]`).
    pub expected: u64,
    /// The streams whose files this stream's master maps, when it is a detector several
    /// daemons wrote (`<stream>_<daemon>` each); empty otherwise.
    pub parts: Vec<String>,
    /// Indices per data file: index `i` is in data file `(i - 1) / frames_per_file + 1`
    /// (0: no data files of its own, see [`StreamInfo::data_file`]).
    pub frames_per_file: u64,
    /// Images, or neutron events (whose indices are pulses, with no image to show).
    pub kind: StreamKind,
}

/// What a stream's indices are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StreamKind {
    /// Detector images (frames).
    #[default]
    Frames,
    /// Pulses of neutron events: the file is an event file, there is no image.
    Events,
}

impl StreamInfo {
    /// A neutron event run's stream: its one file (`<stream>.nxs`), columns in `codec`.
    pub fn events(id: StreamId, file: PathBuf, codec: Codec) -> Self {
        Self {
            slot: 0,
            key: id.to_string(),
            id,
            file,
            dataset: "/entry",
            codec,
            pixel: PixelType::I32,
            shape: [1, 1],
            modules: 1,
            expected: 1,
            parts: Vec::new(),
            frames_per_file: 0,
            kind: StreamKind::Events,
        }
    }

    /// The modules a complete index of this stream has: every module's bit, or this daemon's
    /// part of the detector.
    pub fn all_modules(&self) -> u64 {
        self.expected
    }

    /// The data file holding `index` (1-based) and the index's position in it. A stream
    /// with no data files of its own (`frames_per_file` 0: a detector several daemons wrote,
    /// whose master maps their files) names its master and the index's position there.
    pub fn data_file(&self, index: u64) -> (DataFilePath<'_>, u64) {
        if self.frames_per_file == 0 {
            return (
                DataFilePath {
                    info: self,
                    number: 0,
                },
                index.max(1) - 1,
            );
        }
        let k = self.frames_per_file;
        let number = (index.max(1) - 1) / k + 1;
        (
            DataFilePath { info: self, number },
            index.max(1) - 1 - (number - 1) * k,
        )
    }
}

/// The path of one data file of a stream, formatted on demand (no allocation).
#[derive(Debug, Clone, Copy)]
pub struct DataFilePath<'a> {
    info: &'a StreamInfo,
    number: u64,
}

impl DataFilePath<'_> {
    /// The data file's number, 1-based.
    pub fn number(&self) -> u64 {
        self.number
    }
}

impl std::fmt::Display for DataFilePath<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.number == 0 {
            return write!(f, "{}", self.info.file.display());
        }
        if let Some(dir) = self.info.file.parent() {
            write!(f, "{}/", dir.display())?;
        }
        let name = detingest_writer::DataFileName {
            stream: self.info.id.stream.as_str(),
            number: self.number,
        };
        write!(f, "{name}")
    }
}

impl serde::Serialize for DataFilePath<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// What is known of one written (or lost) index: plain data, `Copy`, kept by the live history.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FrameRecord {
    /// 1-based index in the stream (its position in the dataset is `index - 1`).
    pub index: u64,
    /// The detector's frame number, as it sent it.
    pub frame_number: u64,
    /// The detector numbering it belongs to: 0 from the start, one more at each restart.
    pub sequence: u32,
    /// Bytes before compression (0 when lost).
    pub raw_bytes: u64,
    /// Bytes written (0 when lost).
    pub compressed_bytes: u64,
    /// When it was taken as its source knows it (UDP: arrival of its first packet on the
    /// host), ns since the Unix epoch (0 when lost).
    pub timestamp_ns: u64,
    /// The detector's own timestamp, as sent (0: none, or lost).
    pub detector_timestamp: u64,
    /// The bunch id the detector sent (0: none, or lost).
    pub bunch_id: u64,
    /// When the writer finished writing it, ns since the Unix epoch.
    pub written_ns: u64,
    /// When it was announced, the stream's readable watermark: every index up to this one
    /// is flushed, in the data files and the master's records, and an SWMR reader (or any
    /// reader, once the run ended) sees it whole. 0: none yet.
    pub readable_up_to: u64,
    /// Bit `m` set: module `m` was written (0 when lost).
    pub modules: u64,
    /// Bit `m` set: module `m` reached the daemon but was dropped here (a full queue, no
    /// free buffer); a module in neither mask never arrived.
    pub dropped: u64,
    /// Packets that never arrived, summed over modules (UDP; their bytes hold the fill value).
    pub packets_lost: u32,
    /// Packet numbers that never arrived on some module (the union of the modules' masks).
    pub missing: detingest_shm::PacketMask,
    /// Its pixels' statistics over the modules written (`None`: not taken).
    pub stats: Option<detingest_writer::FrameStats>,
}

impl FrameRecord {
    /// True when no module of the frame arrived: no chunk was written, the fill value shows.
    pub fn lost(&self) -> bool {
        self.modules == 0
    }
}

/// Nanoseconds since the Unix epoch, now.
pub fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}
