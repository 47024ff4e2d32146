//! The notification thread's side of the Kafka sink: what it hears becomes messages for the
//! `kafka` thread on a bounded channel, handed over without waiting. A full channel drops a
//! record or preview (counted); a stream's start or end is never dropped: it waits in a
//! backlog, retried at every notification, and records behind it are dropped (counted) so
//! none arrives before its stream's start. A frame costs a reference count and a copy of its
//! record, no allocation.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam::channel::Sender;

use super::client::KafkaStats;
use crate::sink::{
    Backlog, Notification, NotificationSink, Preview, StreamEndNotice, StreamStartNotice, Thinning,
};
use crate::stream::{FrameRecord, StreamInfo};

/// What the feed hands the `kafka` thread.
pub enum Msg {
    /// A stream began.
    Start(StreamStartNotice),
    /// An index was written (for the per-frame record).
    Frame(Arc<StreamInfo>, FrameRecord),
    /// A frame to preview: its record and encoded chunk.
    Preview(Arc<StreamInfo>, FrameRecord, Arc<Preview>),
    /// A stream ended.
    End(StreamEndNotice),
}

/// The feed of one run.
pub struct Feed {
    tx: Sender<Msg>,
    stats: Arc<KafkaStats>,
    frames: bool,
    /// The pace of previews, when they are sent.
    previews: Option<Thinning>,
    /// Per stream slot, that pace's state.
    thinning: Vec<Thinning>,
    /// Starts and ends the channel had no room for, oldest first.
    backlog: Backlog<Msg>,
}

impl Feed {
    /// A feed sending on `tx`: per-frame records if `frames`; previews at the pace
    /// `previews` sets, if set.
    pub fn new(
        tx: Sender<Msg>,
        stats: Arc<KafkaStats>,
        frames: bool,
        previews: Option<Thinning>,
    ) -> Self {
        Self {
            tx,
            stats,
            frames,
            previews,
            thinning: Vec::new(),
            backlog: Backlog::default(),
        }
    }

    /// Sends a record or preview, or drops it (counted) when the channel is full or a start
    /// or end is still waiting.
    fn send(&mut self, m: Msg) {
        self.backlog.retry(&self.tx);
        if !self.backlog.is_empty() || self.tx.try_send(m).is_err() {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Sends a start or end, or keeps it for later.
    fn send_control(&mut self, m: Msg) {
        self.backlog.hold(m);
        self.backlog.retry(&self.tx);
    }

    /// Whether this preview of stream `slot`'s `index` is one we send.
    fn wants_preview(&mut self, slot: usize, index: u64) -> bool {
        let Some(pace) = self.previews else {
            return false;
        };
        if self.thinning.len() <= slot {
            self.thinning.resize(slot + 1, pace);
        }
        self.thinning[slot].take(index, Instant::now())
    }
}

impl NotificationSink for Feed {
    fn notify(&mut self, n: &Notification) {
        match n {
            Notification::StreamStart(s) => {
                let slot = usize::from(s.stream.slot);
                if let Some(t) = self.thinning.get_mut(slot) {
                    t.reset();
                }
                self.send_control(Msg::Start(s.clone()));
            }
            Notification::Frame(f) => {
                if self.frames {
                    self.send(Msg::Frame(Arc::clone(&f.stream), f.record));
                }
                if let Some(p) = &f.preview {
                    if !f.record.lost()
                        && self.wants_preview(usize::from(f.stream.slot), f.record.index)
                    {
                        self.send(Msg::Preview(Arc::clone(&f.stream), f.record, Arc::clone(p)));
                    }
                }
            }
            Notification::Readable(_) => {}
            Notification::StreamEnd(e) => self.send_control(Msg::End(e.clone())),
            Notification::Quality(_) => {}
        }
    }

    fn batch_done(&mut self) {
        self.backlog.retry(&self.tx);
    }

    fn finish(&mut self) {
        // The run is over: a last end still waiting gets a bounded wait for room.
        if self.backlog.drain(&self.tx, Duration::from_secs(2), || {}) > 0 {
            tracing::warn!("kafka: the kafka thread took no message for 2 s; a stream's start or end is lost (no hand-off for it)");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::fixture;
    use crate::sink::FrameNotice;

    #[test]
    fn frames_go_without_waiting_and_a_full_channel_is_counted() {
        let (tx, rx) = crossbeam::channel::bounded(2);
        let stats = Arc::new(KafkaStats::default());
        let mut f = Feed::new(tx, Arc::clone(&stats), true, None);
        let s = fixture::stream(1);
        f.notify(&fixture::start(&s));
        for i in 1..=3 {
            f.notify(&fixture::frame(&s, i));
        }
        assert_eq!(rx.len(), 2);
        assert_eq!(
            stats.dropped.load(Ordering::Relaxed),
            2,
            "the 2nd and 3rd frame"
        );
    }

    #[test]
    fn a_start_and_an_end_wait_for_room_and_records_behind_them_are_dropped() {
        let (tx, rx) = crossbeam::channel::bounded(1);
        let stats = Arc::new(KafkaStats::default());
        let mut f = Feed::new(tx, Arc::clone(&stats), true, None);
        let s = fixture::stream(1);
        f.notify(&fixture::frame(&s, 1)); // fills the channel
        f.notify(&fixture::start(&s)); // waits
        f.notify(&fixture::frame(&s, 2)); // dropped: it would overtake its start
        assert_eq!(stats.dropped.load(Ordering::Relaxed), 1);
        assert!(matches!(rx.try_recv(), Ok(Msg::Frame(_, r)) if r.index == 1));
        f.batch_done();
        assert!(matches!(rx.try_recv(), Ok(Msg::Start(_))));
        f.notify(&fixture::frame(&s, 3));
        assert!(matches!(rx.try_recv(), Ok(Msg::Frame(_, r)) if r.index == 3));
        f.notify(&fixture::frame(&s, 4)); // fills the channel again
        f.notify(&Notification::StreamEnd(crate::sink::StreamEndNotice {
            stream: Arc::clone(&s),
            frames: 4,
            lost: 0,
            late: 0,
            ended_ns: 5,
            error: None,
        }));
        let reader = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            rx.iter().count()
        });
        f.finish();
        drop(f);
        assert_eq!(reader.join().unwrap(), 2, "frame 4 and the end");
    }

    #[test]
    fn previews_are_spaced_by_index() {
        let (tx, rx) = crossbeam::channel::bounded(100);
        let stats = Arc::new(KafkaStats::default());
        let mut f = Feed::new(tx, stats, false, Some(Thinning::new(3, None)));
        let s = fixture::stream(1);
        let pool = detingest_shm::BufferPool::new(1, 8);
        let chunk = Arc::new(Preview::whole(pool.acquire(), s.shape, &[]));
        for i in 1..=7 {
            f.notify(&Notification::Frame(FrameNotice {
                stream: Arc::clone(&s),
                record: fixture::record(&s, i),
                preview: Some(Arc::clone(&chunk)),
            }));
        }
        let sent: Vec<u64> = rx
            .try_iter()
            .map(|m| match m {
                Msg::Preview(_, r, _) => r.index,
                _ => 0,
            })
            .collect();
        assert_eq!(sent, [1, 4, 7]);
    }
}
