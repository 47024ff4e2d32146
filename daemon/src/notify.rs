//! Notifications of written frames: the writer pushes one per index onto a bounded lock-free
//! queue ([`crossbeam::queue::ArrayQueue`]) and never waits; a consumer thread drains it and
//! hands each notification to every [`NotificationSink`].
//!
//! A publisher for live viewers is one more sink: it plugs in at pipeline start without the
//! writer knowing. A full queue drops the notification and counts it; ingest never slows down
//! for a consumer. A notification holds its stream's description by `Arc`, so building one
//! allocates nothing.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::Thread;
use std::time::{Duration, Instant};

use crossbeam::queue::ArrayQueue;
use detingest_shm::{BufferPool, PixelType, PoolBuf, StreamId};
use detingest_writer::Codec;

use crate::pipeline::{PipelineStats, StreamSlot};

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
    /// Indices per data file: index `i` is in data file `(i - 1) / frames_per_file + 1`.
    pub frames_per_file: u64,
}

impl StreamInfo {
    /// The mask with every module's bit set.
    pub fn all_modules(&self) -> u64 {
        detingest_writer::all_modules(self.modules)
    }

    /// The data file holding `index` (1-based) and the index's position in it.
    pub fn data_file(&self, index: u64) -> (DataFilePath<'_>, u64) {
        let k = self.frames_per_file.max(1);
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

impl std::fmt::Display for DataFilePath<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameRecord {
    /// 1-based index in the stream (its position in the dataset is `index - 1`).
    pub index: u64,
    /// The detector's frame number.
    pub frame_number: u64,
    /// Bytes before compression (0 when lost).
    pub raw_bytes: u64,
    /// Bytes written (0 when lost).
    pub compressed_bytes: u64,
    /// Acquisition time, ns since the Unix epoch (0 when lost).
    pub timestamp_ns: u64,
    /// When the writer finished writing it, ns since the Unix epoch.
    pub written_ns: u64,
    /// Bit `m` set: module `m` was written (0 when lost).
    pub modules: u64,
    /// Packets that never arrived, summed over modules (UDP; their bytes hold the fill value).
    pub packets_lost: u32,
    /// Packet numbers that never arrived on some module (the union of the modules' masks).
    pub missing: detingest_shm::PacketMask,
}

impl FrameRecord {
    /// True when no module of the frame arrived: no chunk was written, the fill value shows.
    pub fn lost(&self) -> bool {
        self.modules == 0
    }
}

/// One index of a stream was written (or recorded lost).
#[derive(Debug, Clone)]
pub struct FrameNotice {
    /// The stream.
    pub stream: Arc<StreamInfo>,
    /// What was written.
    pub record: FrameRecord,
    /// The encoded chunk, for a frame the [`PreviewPolicy`] picked: it stays out of its pool
    /// until every holder drops it.
    pub preview: Option<Arc<PoolBuf>>,
}

/// A stream's file was opened.
#[derive(Debug, Clone)]
pub struct StreamStartNotice {
    /// The stream.
    pub stream: Arc<StreamInfo>,
    /// When, ns since the Unix epoch.
    pub started_ns: u64,
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
    /// When, ns since the Unix epoch.
    pub ended_ns: u64,
}

/// What the writer announces.
#[derive(Debug, Clone)]
pub enum Notification {
    /// A stream began.
    StreamStart(StreamStartNotice),
    /// A frame was written.
    Frame(FrameNotice),
    /// A stream ended.
    StreamEnd(StreamEndNotice),
}

/// Nanoseconds since the Unix epoch, now.
pub fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// Which written frames carry a preview: one in `every`, and no more than `max_hz` a second;
/// and the buffers previews are copied into, so a notification never holds one of the
/// writer's output buffers. One per stream (clones share the buffers), asked by the writer.
#[derive(Clone)]
pub struct PreviewPolicy {
    every: u64,
    min_interval: Option<Duration>,
    seen: u64,
    last: Option<Instant>,
    buffers: Option<BufferPool>,
}

impl PreviewPolicy {
    /// One in `every` frames (0: never), at most `max_hz` per second (0: unlimited), copied
    /// into `buffers` (`None`: no previews at all).
    pub fn new(every: u64, max_hz: f64, buffers: Option<BufferPool>) -> Self {
        Self {
            every: if buffers.is_some() { every } else { 0 },
            min_interval: (max_hz > 0.0).then(|| Duration::from_secs_f64(1.0 / max_hz)),
            seen: 0,
            last: None,
            buffers,
        }
    }

    /// A copy of `chunk` in a preview buffer, or `None` when every buffer is still held by
    /// the sinks (the frame then goes without a preview: ingest never waits for one).
    pub fn copy(&self, chunk: &[u8]) -> Option<Arc<PoolBuf>> {
        let mut buf = self.buffers.as_ref()?.try_acquire()?;
        buf.fill_from(chunk).then(|| Arc::new(buf))
    }

    /// Whether the next written frame gets a preview.
    pub fn wants(&mut self, now: Instant) -> bool {
        if self.every == 0 {
            return false;
        }
        self.seen += 1;
        if (self.seen - 1) % self.every != 0 {
            return false;
        }
        if let (Some(min), Some(last)) = (self.min_interval, self.last) {
            if now.duration_since(last) < min {
                return false;
            }
        }
        self.last = Some(now);
        true
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
}

/// A sink shared across pipelines (the live publisher of `detingestd serve`, which outlives
/// every run so viewers stay connected): each run's notification thread locks it in turn.
impl<S: NotificationSink> NotificationSink for Arc<std::sync::Mutex<S>> {
    fn notify(&mut self, n: &Notification) {
        if let Ok(mut s) = self.lock() {
            s.notify(n);
        }
    }

    fn finish(&mut self) {
        if let Ok(mut s) = self.lock() {
            s.finish();
        }
    }
    fn batch_done(&mut self) {
        if let Ok(mut s) = self.lock() {
            s.batch_done();
        }
    }
}

/// The queue between the writer and the notification thread.
pub struct NotifyQueue {
    queue: ArrayQueue<Notification>,
    consumer: OnceLock<Thread>,
    closed: AtomicBool,
    stats: Arc<PipelineStats>,
}

impl NotifyQueue {
    pub(crate) fn new(capacity: usize, stats: Arc<PipelineStats>) -> Self {
        Self {
            queue: ArrayQueue::new(capacity),
            consumer: OnceLock::new(),
            closed: AtomicBool::new(false),
            stats,
        }
    }

    /// Enqueues without waiting; a full queue drops `n` and counts it.
    pub(crate) fn push(&self, n: Notification) {
        if self.queue.push(n).is_err() {
            self.stats.notify_dropped.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(t) = self.consumer.get() {
            t.unpark();
        }
    }

    /// No more notifications will come.
    pub(crate) fn close(&self) {
        // Release: the consumer that sees `closed` also sees every notification pushed before.
        self.closed.store(true, Ordering::Release);
        if let Some(t) = self.consumer.get() {
            t.unpark();
        }
    }

    /// Notifications waiting.
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// True when nothing waits.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Capacity of the queue.
    pub fn capacity(&self) -> usize {
        self.queue.capacity()
    }

    /// Runs the consumer on the current thread until the queue is closed and drained, handing
    /// notifications to the sinks in batches that start at least `batch_interval` apart.
    pub(crate) fn consume(
        &self,
        mut sinks: Vec<Box<dyn NotificationSink>>,
        batch_interval: Duration,
    ) {
        let _ = self.consumer.set(std::thread::current());
        let mut last_batch: Option<Instant> = None;
        loop {
            // Acquire pairs with `close`: read the flag before draining, so a close that
            // happened before this point has its last notifications drained below.
            let closed = self.closed.load(Ordering::Acquire);
            if !closed && !self.queue.is_empty() {
                // Too soon after the last batch: let more gather. A sleep, not a park, so the
                // writer's unparks don't wake us once per frame meanwhile.
                let due = last_batch.map(|t| t + batch_interval);
                if let Some(wait) = due.and_then(|d| d.checked_duration_since(Instant::now())) {
                    std::thread::sleep(wait);
                }
            }
            let mut drained = false;
            let started = Instant::now();
            while let Some(n) = self.queue.pop() {
                for s in &mut sinks {
                    s.notify(&n);
                }
                self.stats.notified.fetch_add(1, Ordering::Relaxed);
                drained = true;
            }
            if drained {
                last_batch = Some(started);
                for s in &mut sinks {
                    s.batch_done();
                }
            }
            if closed {
                break;
            }
            if !drained {
                std::thread::park_timeout(Duration::from_millis(100));
            }
        }
        for s in &mut sinks {
            s.finish();
        }
    }
}

/// The daemon's sinks for one pipeline: a rate line in the log every 5 s, and the live
/// publisher when there is one.
pub fn daemon_sinks(
    publisher: Option<Box<dyn NotificationSink>>,
) -> Vec<Box<dyn NotificationSink>> {
    let rate: Box<dyn NotificationSink> = Box::new(RateLogger::new(Duration::from_secs(5)));
    std::iter::once(rate).chain(publisher).collect()
}

/// Counts notifications and logs a rate line every `every`.
pub struct RateLogger {
    every: Duration,
    window_start: Instant,
    window_frames: u64,
    total_frames: u64,
}

impl RateLogger {
    /// A logger that reports every `every`.
    pub fn new(every: Duration) -> Self {
        Self {
            every,
            window_start: Instant::now(),
            window_frames: 0,
            total_frames: 0,
        }
    }
}

impl NotificationSink for RateLogger {
    fn notify(&mut self, n: &Notification) {
        match n {
            Notification::Frame(_) => {
                self.window_frames += 1;
                self.total_frames += 1;
            }
            Notification::StreamStart(_) => {}
            Notification::StreamEnd(e) => tracing::info!(
                stream = %e.stream.id,
                frames = e.frames,
                lost = e.lost,
                file = %e.stream.file.display(),
                "stream closed"
            ),
        }
        let dt = self.window_start.elapsed();
        if dt >= self.every {
            tracing::info!(
                frames = self.total_frames,
                rate_hz = format_args!("{:.1}", self.window_frames as f64 / dt.as_secs_f64()),
                "notifications"
            );
            self.window_start = Instant::now();
            self.window_frames = 0;
        }
    }

    fn finish(&mut self) {
        tracing::info!(frames = self.total_frames, "notifications: total");
    }
}

/// A stream of `modules` u16 modules of 1024 x 1024 and its frame notices, for tests.
#[cfg(test)]
pub(crate) mod fixture {
    use std::sync::Arc;

    use detingest_shm::{Name, PacketMask, PixelType, StreamId};
    use detingest_writer::Codec;

    use super::{FrameNotice, FrameRecord, Notification, StreamInfo};

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
            frames_per_file: 5,
        })
    }

    /// Index `index` of `stream`, every module written, nothing missing.
    pub fn record(stream: &StreamInfo, index: u64) -> FrameRecord {
        FrameRecord {
            index,
            frame_number: 100 + index,
            raw_bytes: 1 << 20,
            compressed_bytes: 1 << 20,
            timestamp_ns: 1,
            written_ns: 2,
            modules: stream.all_modules(),
            packets_lost: 0,
            missing: PacketMask::NONE,
        }
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
mod tests {
    use super::*;

    /// Records what the notification thread hands it: each notice's index (0 for other
    /// notifications) and when, and where the batches end.
    #[derive(Default)]
    struct Calls(Vec<(Option<u64>, Instant)>);

    impl NotificationSink for Calls {
        fn notify(&mut self, n: &Notification) {
            let index = match n {
                Notification::Frame(f) => f.record.index,
                _ => 0,
            };
            self.0.push((Some(index), Instant::now()));
        }
        fn batch_done(&mut self) {
            self.0.push((None, Instant::now()));
        }
    }

    #[test]
    fn what_queued_meanwhile_is_one_batch_and_batches_keep_the_interval() {
        let stream = fixture::stream(1);
        let queue = Arc::new(NotifyQueue::new(16, Arc::default()));
        let calls = Arc::new(std::sync::Mutex::new(Calls::default()));
        let interval = Duration::from_millis(50);
        let consumer = {
            let (queue, calls) = (Arc::clone(&queue), Arc::clone(&calls));
            std::thread::spawn(move || queue.consume(vec![Box::new(calls)], interval))
        };
        queue.push(fixture::frame(&stream, 1));
        while calls.lock().unwrap().0.len() < 2 {
            std::thread::sleep(Duration::from_millis(1));
        }
        for i in 2..=4 {
            queue.push(fixture::frame(&stream, i));
        }
        // (Not closed yet: a close delivers at once what is left.)
        while calls.lock().unwrap().0.len() < 6 {
            std::thread::sleep(Duration::from_millis(1));
        }
        queue.close();
        consumer.join().unwrap();
        let calls = &calls.lock().unwrap().0;
        let order: Vec<Option<u64>> = calls.iter().map(|c| c.0).collect();
        assert_eq!(
            order,
            [Some(1), None, Some(2), Some(3), Some(4), None],
            "frames 2-4, queued while the first batch's interval ran, form the second batch"
        );
        let gap = calls[2].1 - calls[0].1;
        assert!(gap >= interval - Duration::from_millis(2), "{gap:?}");
    }

    #[test]
    fn preview_policy_takes_one_in_n() {
        let pool = || Some(BufferPool::new(1, 8));
        let mut p = PreviewPolicy::new(3, 0.0, pool());
        let t = Instant::now();
        let picked: Vec<bool> = (0..7).map(|_| p.wants(t)).collect();
        assert_eq!(picked, [true, false, false, true, false, false, true]);
        assert!(!(0..5).any(|_| PreviewPolicy::new(0, 0.0, pool()).wants(t)));
        assert!(
            !PreviewPolicy::new(1, 0.0, None).wants(t),
            "no buffers, no previews"
        );
    }

    #[test]
    fn preview_policy_limits_the_rate() {
        let mut p = PreviewPolicy::new(1, 10.0, Some(BufferPool::new(1, 8)));
        let t = Instant::now();
        assert!(p.wants(t));
        assert!(!p.wants(t + Duration::from_millis(50)));
        assert!(p.wants(t + Duration::from_millis(120)));
    }

    #[test]
    fn a_preview_is_skipped_while_its_buffers_are_held() {
        let p = PreviewPolicy::new(1, 0.0, Some(BufferPool::new(1, 8)));
        let held = p.copy(&[1, 2, 3]).expect("one buffer is free");
        assert_eq!(held.as_slice(), &[1, 2, 3]);
        assert!(p.copy(&[4]).is_none());
        drop(held);
        assert!(p.copy(&[4]).is_some());
        assert!(p.copy(&[0; 9]).is_none(), "too large for a preview buffer");
    }
}
