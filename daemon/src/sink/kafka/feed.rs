//! The notification thread's side of the Kafka sink: what it hears becomes messages for the
//! `kafka` thread on a bounded channel, handed over without waiting (full: dropped and
//! counted). A frame costs a reference count and a copy of its record, no allocation.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam::channel::{Sender, TrySendError};
use detingest_shm::PoolBuf;

use super::client::KafkaStats;
use crate::sink::{Notification, NotificationSink, StreamEndNotice, StreamStartNotice};
use crate::stream::{FrameRecord, StreamInfo};

/// What the feed hands the `kafka` thread.
pub enum Msg {
    /// A stream began.
    Start(StreamStartNotice),
    /// An index was written (for the per-frame record).
    Frame(Arc<StreamInfo>, FrameRecord),
    /// A frame to preview: its record and encoded chunk.
    Preview(Arc<StreamInfo>, FrameRecord, Arc<PoolBuf>),
    /// A stream ended.
    End(StreamEndNotice),
}

/// The feed of one run.
pub struct Feed {
    tx: Sender<Msg>,
    stats: Arc<KafkaStats>,
    frames: bool,
    previews: Option<(u64, Option<Duration>)>,
    /// Per stream slot: the last previewed index and when.
    last_preview: Vec<Option<(u64, Instant)>>,
}

impl Feed {
    /// A feed sending on `tx`: per-frame records if `frames`; previews at least `every`
    /// indices and `gap` apart if `previews` is set.
    pub fn new(
        tx: Sender<Msg>,
        stats: Arc<KafkaStats>,
        frames: bool,
        previews: Option<(u64, Option<Duration>)>,
    ) -> Self {
        Self {
            tx,
            stats,
            frames,
            previews,
            last_preview: Vec::new(),
        }
    }

    fn send(&self, m: Msg) {
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) = self.tx.try_send(m) {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Whether this preview of stream `slot`'s `index` is one we send.
    fn wants_preview(&mut self, slot: usize, index: u64) -> bool {
        let Some((every, gap)) = self.previews else {
            return false;
        };
        if self.last_preview.len() <= slot {
            self.last_preview.resize(slot + 1, None);
        }
        let now = Instant::now();
        let due = match self.last_preview[slot] {
            None => true,
            Some((last, at)) => {
                index >= last + every && gap.is_none_or(|g| now.duration_since(at) >= g)
            }
        };
        if due {
            self.last_preview[slot] = Some((index, now));
        }
        due
    }
}

impl NotificationSink for Feed {
    fn notify(&mut self, n: &Notification) {
        match n {
            Notification::StreamStart(s) => {
                let slot = usize::from(s.stream.slot);
                if let Some(l) = self.last_preview.get_mut(slot) {
                    *l = None;
                }
                self.send(Msg::Start(s.clone()));
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
            Notification::StreamEnd(e) => self.send(Msg::End(e.clone())),
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
    fn previews_are_spaced_by_index() {
        let (tx, rx) = crossbeam::channel::bounded(100);
        let stats = Arc::new(KafkaStats::default());
        let mut f = Feed::new(tx, stats, false, Some((3, None)));
        let s = fixture::stream(1);
        let pool = detingest_shm::BufferPool::new(1, 8);
        let chunk = Arc::new(pool.try_acquire().unwrap());
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
