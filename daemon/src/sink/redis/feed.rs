//! The Redis sink's side of the notification thread: gathers each stream's per-index values
//! into columns, holds a picked frame's chunk until the files' readable watermark covers it,
//! and hands one [`Msg::Batch`] per stream and notification batch to the Redis thread over a
//! bounded channel without waiting. A full channel drops the batch and counts its indices.
//! Column buffers come back from the Redis thread for reuse: no allocation per frame.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam::channel::{Receiver, Sender, TrySendError};
use detingest_writer::{DetectorInfo, FileOptions};

use super::RedisStats;
use crate::sink::{Backlog, Notification, NotificationSink, Preview, Thinning};
use crate::stream::{FrameRecord, StreamInfo};

/// A stream's file set was opened: create its scan.
pub struct Open {
    /// The stream.
    pub stream: Arc<StreamInfo>,
    /// The detector description of its files.
    pub detector: Arc<DetectorInfo>,
    /// The run's user metadata (JSON text).
    pub user_json: String,
    /// Its files' options (frames expected, master layout, SWMR).
    pub files: FileOptions,
}

/// A stream's files were closed: seal its scan.
pub struct Close {
    /// The stream.
    pub stream: Arc<StreamInfo>,
    /// Indices in its files (the Blissdata streams' length).
    pub frames: u64,
    /// Of which lost.
    pub lost: u64,
    /// Indices the feed dropped (channel full): the Redis thread never saw them.
    pub dropped_here: u64,
}

/// Consecutive indices of one stream, as columns, and at most one readable frame's chunk.
pub struct Batch {
    /// The stream.
    pub stream: Arc<StreamInfo>,
    /// The (1-based) index of the first value.
    pub first: u64,
    /// Per index: the detector's frame number.
    pub frame_number: Vec<u64>,
    /// Per index: 1 when lost.
    pub lost: Vec<u8>,
    /// Per index: packets lost.
    pub packets_lost: Vec<u32>,
    /// Per index: arrival time, seconds since the Unix epoch.
    pub timestamp: Vec<f64>,
    /// A frame whose pixels go to Redis: its index and encoded chunk, readable in the files.
    pub image: Option<(u64, Arc<Preview>)>,
}

impl Batch {
    /// Indices in the columns.
    pub fn len(&self) -> usize {
        self.frame_number.len()
    }

    /// True when it holds no index.
    pub fn is_empty(&self) -> bool {
        self.frame_number.is_empty()
    }

    fn clear(&mut self) {
        self.frame_number.clear();
        self.lost.clear();
        self.packets_lost.clear();
        self.timestamp.clear();
        self.image = None;
    }

    fn push(&mut self, r: &FrameRecord) {
        self.frame_number.push(r.frame_number);
        self.lost.push(u8::from(r.lost()));
        self.packets_lost.push(r.packets_lost);
        self.timestamp.push(r.timestamp_ns as f64 * 1e-9);
    }
}

/// What the notification thread hands the Redis thread.
pub enum Msg {
    /// Create a stream's scan.
    Open(Box<Open>),
    /// Publish indices (and perhaps an image).
    Batch(Batch),
    /// Seal a stream's scan.
    Close(Box<Close>),
}

/// One stream as the feed sees it.
struct StreamFeed {
    stream: Arc<StreamInfo>,
    batch: Option<Batch>,
    /// A picked frame waiting for the readable watermark.
    pending: Option<(u64, Arc<Preview>)>,
    readable: u64,
    /// The pace of images taken from previews.
    thinning: Thinning,
    /// Indices whose batch the full channel dropped.
    dropped: u64,
}

/// The Redis sink's notification sink for one run.
pub struct Feed {
    tx: Sender<Msg>,
    /// The Redis thread, unparked after each send.
    wake: Option<std::thread::Thread>,
    /// Images go to Redis at most once per this (`None`: never).
    image_gap: Option<Duration>,
    returned: Receiver<Batch>,
    stats: Arc<RedisStats>,
    streams: Vec<StreamFeed>,
    /// Opens and closes that found the channel full, sent before anything else.
    backlog: Backlog<Msg>,
}

impl Feed {
    pub(super) fn new(
        tx: Sender<Msg>,
        wake: Option<std::thread::Thread>,
        image_max_hz: f64,
        returned: Receiver<Batch>,
        stats: Arc<RedisStats>,
    ) -> Self {
        Self {
            tx,
            wake,
            image_gap: (image_max_hz > 0.0).then(|| Duration::from_secs_f64(1.0 / image_max_hz)),
            returned,
            stats,
            streams: Vec::new(),
            backlog: Backlog::default(),
        }
    }

    /// The position of `info` in `streams`, added if new.
    fn index(&mut self, info: &Arc<StreamInfo>) -> usize {
        if let Some(i) = self.streams.iter().position(|s| s.stream.slot == info.slot) {
            return i;
        }
        self.streams.push(StreamFeed {
            stream: Arc::clone(info),
            batch: None,
            pending: None,
            readable: 0,
            thinning: Thinning::new(1, self.image_gap),
            dropped: 0,
        });
        self.streams.len() - 1
    }

    /// Sends without waiting; a full channel drops a batch (counted) and keeps opens and
    /// closes for the next try.
    fn send(&mut self, msg: Msg) {
        self.retry_backlog();
        if !self.backlog.is_empty() {
            self.queue_or_drop(msg);
            return;
        }
        match self.tx.try_send(msg) {
            Ok(()) => self.wake(),
            Err(TrySendError::Full(msg)) => self.queue_or_drop(msg),
            Err(TrySendError::Disconnected(msg)) => self.drop_msg(msg),
        }
    }

    fn wake(&self) {
        if let Some(t) = &self.wake {
            t.unpark();
        }
    }

    fn queue_or_drop(&mut self, msg: Msg) {
        match msg {
            Msg::Batch(_) => self.drop_msg(msg),
            lifecycle => self.backlog.hold(lifecycle),
        }
    }

    fn drop_msg(&mut self, msg: Msg) {
        if let Msg::Batch(b) = msg {
            self.stats.batches_dropped.fetch_add(1, Ordering::Relaxed);
            self.stats
                .indices_dropped
                .fetch_add(b.len() as u64, Ordering::Relaxed);
            let stream = self
                .streams
                .iter_mut()
                .find(|s| s.stream.slot == b.stream.slot);
            if let Some(s) = stream {
                s.dropped += b.len() as u64;
            }
        }
    }

    fn retry_backlog(&mut self) {
        if self.backlog.retry(&self.tx) > 0 {
            self.wake();
        }
    }

    /// A fresh or recycled batch for `stream`, starting at `first`.
    fn new_batch(&self, stream: &Arc<StreamInfo>, first: u64) -> Batch {
        let mut b = self.returned.try_recv().unwrap_or_else(|_| Batch {
            stream: Arc::clone(stream),
            first,
            frame_number: Vec::with_capacity(1024),
            lost: Vec::with_capacity(1024),
            packets_lost: Vec::with_capacity(1024),
            timestamp: Vec::with_capacity(1024),
            image: None,
        });
        b.clear();
        b.stream = Arc::clone(stream);
        b.first = first;
        b
    }

    fn frame(&mut self, info: &Arc<StreamInfo>, r: &FrameRecord, preview: Option<&Arc<Preview>>) {
        let i = self.index(info);
        // A gap (notifications dropped before us) ends the batch: entries hold consecutive
        // indices.
        let gap = self.streams[i]
            .batch
            .as_ref()
            .is_some_and(|b| b.first + b.len() as u64 != r.index);
        if gap {
            self.ship(i);
        }
        if self.streams[i].batch.is_none() {
            let b = self.new_batch(info, r.index);
            self.streams[i].batch = Some(b);
        }
        let image_gap = self.image_gap;
        let s = &mut self.streams[i];
        if let Some(b) = s.batch.as_mut() {
            b.push(r);
        }
        // Previews are picked for every sink (the live ones may come more often): take one
        // at most every `image_gap`.
        if let (None, Some(p), Some(_)) = (&s.pending, preview, image_gap) {
            if s.thinning.take(r.index, Instant::now()) {
                s.pending = Some((r.index, Arc::clone(p)));
            }
        }
        s.readable = s.readable.max(r.readable_up_to);
        s.take_readable_image();
    }

    /// Stream `i`'s files can give every index up to `up_to`: a waiting image joins the
    /// gathering batch (or an empty one, starting at `first`).
    fn readable(&mut self, i: usize, up_to: u64, first: u64) {
        self.streams[i].readable = self.streams[i].readable.max(up_to);
        if self.streams[i].batch.is_none() && self.streams[i].pending.is_some() {
            let b = self.new_batch(&Arc::clone(&self.streams[i].stream), first);
            self.streams[i].batch = Some(b);
        }
        self.streams[i].take_readable_image();
    }

    /// Sends what stream `i` has gathered.
    fn ship(&mut self, i: usize) {
        let Some(b) = self.streams[i].batch.take() else {
            return;
        };
        if b.is_empty() && b.image.is_none() {
            return;
        }
        self.send(Msg::Batch(b));
    }
}

impl StreamFeed {
    /// Moves the pending frame into the batch once the files can give it to a reader.
    fn take_readable_image(&mut self) {
        let due = self
            .pending
            .as_ref()
            .is_some_and(|(i, _)| *i <= self.readable);
        if due {
            if let Some(b) = self.batch.as_mut() {
                b.image = self.pending.take();
            }
        }
    }
}

impl NotificationSink for Feed {
    fn notify(&mut self, n: &Notification) {
        if n.of_events() {
            return; // an event run has no image to publish here
        }
        match n {
            Notification::StreamStart(s) => self.send(Msg::Open(Box::new(Open {
                stream: Arc::clone(&s.stream),
                detector: Arc::clone(&s.detector),
                user_json: s.user_json.clone(),
                files: s.files,
            }))),
            Notification::Frame(f) => self.frame(&f.stream, &f.record, f.preview.as_ref()),
            Notification::Readable(r) => {
                let i = self.index(&r.stream);
                self.readable(i, r.up_to, r.up_to + 1);
            }
            Notification::StreamEnd(e) => {
                // Everything is readable once the files are closed.
                let i = self.index(&e.stream);
                self.readable(i, u64::MAX, e.frames + 1);
                self.ship(i);
                let dropped_here = self.streams.remove(i).dropped;
                self.send(Msg::Close(Box::new(Close {
                    stream: Arc::clone(&e.stream),
                    frames: e.frames,
                    lost: e.lost,
                    dropped_here,
                })));
            }
            Notification::Quality(_) => {}
        }
    }

    fn batch_done(&mut self) {
        for i in 0..self.streams.len() {
            self.ship(i);
        }
        self.retry_backlog();
    }

    fn finish(&mut self) {
        self.batch_done();
        // The run is over: opens and closes still waiting may wait (briefly) for room.
        let wake = self.wake.clone();
        let lost = self.backlog.drain(&self.tx, Duration::from_secs(2), || {
            if let Some(t) = &wake {
                t.unpark();
            }
        });
        self.wake();
        if lost > 0 {
            tracing::warn!(
                lost,
                "redis: the Redis thread took no message for 2 s; a scan stays open"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use detingest_shm::{BufferPool, PoolBuf};

    use super::*;
    use crate::sink::{fixture, FrameNotice, ReadableNotice, StreamEndNotice};

    fn feed(capacity: usize) -> (Feed, Receiver<Msg>, Arc<RedisStats>) {
        let (tx, rx) = crossbeam::channel::bounded(capacity);
        let (_returns, returned) = crossbeam::channel::bounded(1);
        let stats = Arc::new(RedisStats::default());
        (
            Feed::new(tx, None, 1e6, returned, Arc::clone(&stats)),
            rx,
            stats,
        )
    }

    /// Frame `index`, readable up to `readable`, with a preview chunk if given.
    fn frame(
        s: &Arc<StreamInfo>,
        index: u64,
        readable: u64,
        preview: Option<PoolBuf>,
    ) -> Notification {
        let preview = preview.map(|b| Preview::whole(b, s.shape, &[]));
        let mut record = fixture::record(s, index);
        record.readable_up_to = readable;
        Notification::Frame(FrameNotice {
            stream: Arc::clone(s),
            record,
            preview: preview.map(Arc::new),
        })
    }

    fn batches(rx: &Receiver<Msg>) -> Vec<(u64, Vec<u64>, Option<u64>)> {
        rx.try_iter()
            .filter_map(|m| match m {
                Msg::Batch(b) => Some((b.first, b.frame_number.clone(), b.image.map(|i| i.0))),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_notification_batch_is_one_message_of_consecutive_indices() {
        let s = fixture::stream(1);
        let (mut f, rx, _) = feed(8);
        f.notify(&fixture::start(&s));
        assert!(matches!(rx.try_recv(), Ok(Msg::Open(_))));
        for i in 1..=3 {
            f.notify(&frame(&s, i, i, None));
        }
        f.batch_done();
        f.notify(&frame(&s, 4, 4, None));
        // Index 5 never notified (dropped at the notification queue): a new entry at 6.
        f.notify(&frame(&s, 6, 6, None));
        f.batch_done();
        assert_eq!(
            batches(&rx),
            [
                (1, vec![101, 102, 103], None),
                (4, vec![104], None),
                (6, vec![106], None)
            ]
        );
    }

    #[test]
    fn a_picked_frame_waits_for_the_readable_watermark() {
        let s = fixture::stream(1);
        let pool = BufferPool::new(2, 16);
        let (mut f, rx, _) = feed(8);
        f.notify(&frame(&s, 1, 0, Some(pool.acquire())));
        f.notify(&frame(&s, 2, 0, Some(pool.acquire())));
        f.batch_done();
        assert_eq!(
            batches(&rx),
            [(1, vec![101, 102], None)],
            "not readable yet"
        );
        f.notify(&Notification::Readable(ReadableNotice {
            stream: Arc::clone(&s),
            up_to: 2,
        }));
        f.batch_done();
        assert_eq!(
            batches(&rx),
            [(3, vec![], Some(1))],
            "the first pick, once readable, alone"
        );
        // Both previews went back to the pool (the second was never held).
        assert!(pool.acquire_timeout(std::time::Duration::ZERO).is_some());
    }

    #[test]
    fn a_full_channel_drops_batches_counted_but_keeps_opens_and_closes_in_order() {
        let s = fixture::stream(1);
        let (mut f, rx, stats) = feed(1);
        f.notify(&fixture::start(&s));
        f.notify(&frame(&s, 1, 1, None));
        f.notify(&frame(&s, 2, 2, None));
        f.batch_done();
        assert_eq!(stats.indices_dropped.load(Ordering::Relaxed), 2);
        f.notify(&Notification::StreamEnd(StreamEndNotice {
            stream: Arc::clone(&s),
            frames: 2,
            lost: 0,
            late: 0,
            ended_ns: 3,
            error: None,
        }));
        assert!(matches!(rx.try_recv(), Ok(Msg::Open(_))));
        f.batch_done();
        assert!(
            matches!(rx.try_recv(), Ok(Msg::Close(c)) if c.frames == 2 && c.dropped_here == 2),
            "the close carries the indices dropped here"
        );
    }
}
