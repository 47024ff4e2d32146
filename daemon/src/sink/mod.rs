//! Sinks: everything that hears of written frames. The writer pushes one [`Notification`]
//! per index onto a bounded lock-free queue ([`NotifyQueue`]) and never waits; the
//! notification thread hands each one to every [`NotificationSink`] in queue order. A full
//! queue drops the notification and counts it; ingest never slows down for a sink.
//!
//! One folder per sink: [`log`] (a rate line), [`zmq`] (live viewers over ZeroMQ), [`web`]
//! (the live page), [`redis`] (Blissdata scans on a Redis server), [`kafka`] (ESS streaming:
//! records, previews, file hand-offs, and run control through [`RunControl`]), [`stream2`]
//! (DECTRIS Stream V2 for EIGER clients) and [`quality`] (spots and radial profiles), each
//! owning its configuration table, which builds it ([`SinkTable`]); [`SinkConfig`] lists the
//! tables, one line each, and [`SinkSet`] builds the ones configured. [`messages`] is the JSON schema docs/NOTIFICATIONS.md documents, for every
//! transport. A notification holds its stream's description by `Arc`, so building one
//! allocates nothing.

pub mod assembly;
mod backlog;
pub mod binning;
pub mod kafka;
pub mod log;
pub mod messages;
mod preview;
pub mod quality;
mod queue;
pub mod redis;
mod set;
pub mod stream2;
mod table;
mod tables;
pub mod web;
pub mod zmq;

use std::sync::Arc;

use detingest_writer::{DetectorInfo, FileOptions};

pub use assembly::{Preview, PreviewGeometry};
pub use backlog::Backlog;
pub use kafka::KafkaSink;
pub use preview::{PreviewPolicy, Thinning};
pub use queue::{NotifyQueue, QueueStats};
pub use redis::RedisSink;
pub use set::{
    PreviewRequest, RunControl, RunSinks, Sink, SinkCores, SinkError, SinkNeeds, SinkSet,
};
pub use stream2::Stream2Sink;
pub use table::{LateSlot, PreviewSetting, RunsSlot, SinkContext, SinkTable, TableAt};
pub use tables::SinkConfig;
pub use zmq::ZmqSink;

use crate::stream::{FrameRecord, StreamInfo};

/// One index of a stream was written (or recorded lost).
#[derive(Debug, Clone)]
pub struct FrameNotice {
    /// The stream.
    pub stream: Arc<StreamInfo>,
    /// What was written.
    pub record: FrameRecord,
    /// The encoded chunks of an index the [`PreviewPolicy`] picked, and where they go in
    /// the detector image: its buffer stays out of its pool until every holder drops it.
    pub preview: Option<Arc<Preview>>,
}

/// A stream's file was opened.
#[derive(Debug, Clone)]
pub struct StreamStartNotice {
    /// The stream.
    pub stream: Arc<StreamInfo>,
    /// When, ns since the Unix epoch.
    pub started_ns: u64,
    /// The detector description in its files.
    pub detector: Arc<DetectorInfo>,
    /// The run's user metadata (JSON text).
    pub user_json: String,
    /// Its files' options (frames expected, master layout, SWMR).
    pub files: FileOptions,
}

/// A stream's file was closed.
#[derive(Debug, Clone)]
pub struct StreamEndNotice {
    /// The stream.
    pub stream: Arc<StreamInfo>,
    /// Indices in the file.
    pub frames: u64,
    /// Of which lost.
    pub lost: u64,
    /// Module frames that arrived after their index was recorded (discarded; each marked in
    /// the index's `late_mask`).
    pub late: u64,
    /// When, ns since the Unix epoch.
    pub ended_ns: u64,
    /// Why writing stopped, when the stream ended on an error (its files were closed with
    /// what was flushed).
    pub error: Option<String>,
}

/// A stream's files were flushed without a frame to announce it (a timed flush, the close):
/// every index up to `up_to` is readable.
#[derive(Debug, Clone)]
pub struct ReadableNotice {
    /// The stream.
    pub stream: Arc<StreamInfo>,
    /// The readable watermark (see `FrameRecord::readable_up_to`).
    pub up_to: u64,
}

/// The sampled analyses of one written frame (`sink::quality`): spots and radial profile.
#[derive(Debug, Clone)]
pub struct QualityNotice {
    /// The stream.
    pub stream: Arc<StreamInfo>,
    /// The index analysed.
    pub index: u64,
    /// Its detector frame number.
    pub frame_number: u64,
    /// What was found.
    pub report: Arc<crate::quality::QualityReport>,
}

/// What the writer announces (and, for [`Notification::Quality`], a sink).
#[derive(Debug, Clone)]
pub enum Notification {
    /// A stream began.
    StreamStart(StreamStartNotice),
    /// A frame was written.
    Frame(FrameNotice),
    /// The readable watermark moved without a frame (a timed flush, the close).
    Readable(ReadableNotice),
    /// A stream ended.
    StreamEnd(StreamEndNotice),
    /// A frame's sampled analyses are done (made by the quality sink, handed to every sink).
    Quality(QualityNotice),
}

impl Notification {
    /// The stream it is about.
    pub fn stream(&self) -> &Arc<StreamInfo> {
        match self {
            Self::StreamStart(s) => &s.stream,
            Self::Frame(f) => &f.stream,
            Self::Readable(r) => &r.stream,
            Self::StreamEnd(e) => &e.stream,
            Self::Quality(q) => &q.stream,
        }
    }

    /// True for a stream of neutron events (no image: Blissdata, Bluesky and Stream V2 do
    /// not publish it).
    pub fn of_events(&self) -> bool {
        self.stream().kind == crate::stream::StreamKind::Events
    }
}

/// A consumer of notifications, called on the notification thread in queue order.
pub trait NotificationSink: Send {
    /// Called once per notification.
    fn notify(&mut self, n: &Notification);
    /// Called when the pipeline has ended and the queue is drained.
    fn finish(&mut self) {}
    /// Called after each batch: the notifications that were queued when the notification
    /// thread looked. A sink that holds messages back sends them now.
    fn batch_done(&mut self) {}
    /// A notification this sink made (the quality sink's analyses), asked after each batch
    /// and handed to every sink.
    fn produced(&mut self) -> Option<Notification> {
        None
    }
}

/// Where the query endpoint looks for a stream its in-memory history does not hold (the
/// Redis sink's scans, which outlive the daemon).
pub trait LateHistory: Send + Sync {
    /// The `range` reply for `stream`'s indices `from..=to`, or `None` if it is unknown there.
    fn range(&self, stream: &str, from: u64, to: u64) -> Option<serde_json::Value>;
}

/// A sink shared across pipelines (the live publisher of `detingestd serve`, which outlives
/// every run so viewers stay connected): each run's notification thread locks it in turn.
impl<S: NotificationSink> NotificationSink for Arc<std::sync::Mutex<S>> {
    fn notify(&mut self, n: &Notification) {
        lock_shared(self).notify(n);
    }

    fn finish(&mut self) {
        lock_shared(self).finish();
    }

    fn batch_done(&mut self) {
        lock_shared(self).batch_done();
    }
}

/// The shared sink, locked. A run whose notification thread panicked while holding it left
/// it poisoned: the next runs carry on with it as it is (said once in the log) rather than
/// lose every notification after.
fn lock_shared<S>(sink: &std::sync::Mutex<S>) -> std::sync::MutexGuard<'_, S> {
    static SAID: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    sink.lock().unwrap_or_else(|poisoned| {
        if !SAID.swap(true, std::sync::atomic::Ordering::Relaxed) {
            tracing::error!("a notification thread panicked while handing a shared sink a notification; the sink is used on as it was left");
        }
        poisoned.into_inner()
    })
}

/// A stream of `modules` u16 modules of 1024 x 1024 and its frame notices, for tests.
#[cfg(test)]
pub(crate) mod fixture {
    use std::sync::Arc;

    use detingest_shm::{Name, PacketMask, PixelType, StreamId};
    use detingest_writer::Codec;

    use super::{FrameNotice, Notification};
    use crate::stream::{FrameRecord, StreamInfo};

    /// The stream `bt/det/s1`, 5 indices per data file.
    pub fn stream(modules: u32) -> Arc<StreamInfo> {
        let name = |s| Name::new(s).expect("a valid name");
        Arc::new(StreamInfo {
            slot: 0,
            id: StreamId {
                beamtime: name("bt"),
                source: name("det"),
                stream: name("s1"),
            },
            key: "bt/det/s1".into(),
            file: "/data/bt/det/s1_master.h5".into(),
            dataset: "/entry/data/data",
            codec: Codec::None,
            pixel: PixelType::U16,
            shape: [1024, 1024],
            modules,
            expected: detingest_writer::all_modules(modules),
            parts: Vec::new(),
            frames_per_file: 5,
            kind: crate::stream::StreamKind::Frames,
        })
    }

    /// Index `index` of `stream`, every module written, nothing missing.
    pub fn record(stream: &StreamInfo, index: u64) -> FrameRecord {
        FrameRecord {
            index,
            frame_number: 100 + index,
            sequence: 0,
            raw_bytes: 1 << 20,
            compressed_bytes: 1 << 20,
            timestamp_ns: 1,
            detector_timestamp: 0,
            bunch_id: 0,
            written_ns: 2,
            readable_up_to: index,
            modules: stream.all_modules(),
            dropped: 0,
            packets_lost: 0,
            missing: PacketMask::NONE,
            stats: None,
        }
    }

    /// The start of `stream`, with default detector and file options.
    pub fn start(stream: &Arc<StreamInfo>) -> Notification {
        Notification::StreamStart(super::StreamStartNotice {
            stream: Arc::clone(stream),
            started_ns: 1,
            detector: Default::default(),
            user_json: "{}".into(),
            files: Default::default(),
        })
    }

    /// The notice of `record(stream, index)`, without a preview.
    pub fn frame(stream: &Arc<StreamInfo>, index: u64) -> Notification {
        Notification::Frame(FrameNotice {
            stream: Arc::clone(stream),
            record: record(stream, index),
            preview: None,
        })
    }
}

#[cfg(test)]
mod shared_tests {
    use std::sync::{Arc, Mutex};

    use super::{fixture, Notification, NotificationSink};

    /// Counts notifications; panics on the first if asked to.
    struct Counting(u32, bool);

    impl NotificationSink for Counting {
        fn notify(&mut self, _: &Notification) {
            self.0 += 1;
            assert!(!self.1, "a sink that panics");
        }
    }

    #[test]
    fn a_shared_sink_poisoned_by_a_panic_still_hears_the_next_notifications() {
        let shared = Arc::new(Mutex::new(Counting(0, true)));
        let stream = fixture::stream(1);
        let mut first = Arc::clone(&shared);
        let panicked = std::thread::spawn(move || first.notify(&fixture::frame(&stream, 1)));
        assert!(panicked.join().is_err() && shared.is_poisoned());
        let stream = fixture::stream(1);
        let mut next = Arc::clone(&shared);
        next.lock().unwrap_or_else(|p| p.into_inner()).1 = false;
        next.notify(&fixture::frame(&stream, 2));
        assert_eq!(shared.lock().unwrap_or_else(|p| p.into_inner()).0, 2);
    }
}
