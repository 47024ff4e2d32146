//! The bounded lock-free queue between the writer and the notification thread
//! ([`crossbeam::queue::ArrayQueue`]), and the thread's loop: the writer pushes one
//! notification per index and never waits; a full queue drops it and counts it here; the
//! consumer hands each one to every sink, in batches.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::thread::Thread;
use std::time::{Duration, Instant};

use crossbeam::queue::ArrayQueue;

use super::{Notification, NotificationSink};
use crate::metrics;
use crate::stream::now_ns;

/// The queue's own counters.
#[derive(Debug, Default)]
pub struct QueueStats {
    /// Notifications handed to the sinks.
    pub delivered: AtomicU64,
    /// Notifications dropped because the queue was full.
    pub dropped: AtomicU64,
}

/// The queue between the writer and the notification thread.
pub struct NotifyQueue {
    queue: ArrayQueue<Notification>,
    consumer: OnceLock<Thread>,
    closed: AtomicBool,
    stats: QueueStats,
}

impl NotifyQueue {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            queue: ArrayQueue::new(capacity),
            consumer: OnceLock::new(),
            closed: AtomicBool::new(false),
            stats: QueueStats::default(),
        }
    }

    /// Enqueues without waiting; a full queue drops `n` and counts it.
    pub(crate) fn push(&self, n: Notification) {
        if self.queue.push(n).is_err() {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
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

    /// Notifications delivered and dropped so far.
    pub fn stats(&self) -> &QueueStats {
        &self.stats
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
        let mut made = Vec::new();
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
                if let Notification::Frame(f) = &n {
                    observe_latency(f.record.written_ns);
                }
                for s in &mut sinks {
                    s.notify(&n);
                }
                self.stats.delivered.fetch_add(1, Ordering::Relaxed);
                drained = true;
            }
            // What sinks made (the quality sink's analyses) goes to every sink too.
            for s in &mut sinks {
                while let Some(n) = s.produced() {
                    made.push(n);
                }
            }
            for n in made.drain(..) {
                for s in &mut sinks {
                    s.notify(&n);
                }
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

/// Records how long after its write a frame reached the sinks (nothing for a lost index,
/// which has no write time).
fn observe_latency(written_ns: u64) {
    if written_ns > 0 {
        metrics::NOTIFY_LATENCY_SECONDS.observe_ns(now_ns().saturating_sub(written_ns));
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::sink::fixture;

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
        let queue = Arc::new(NotifyQueue::new(16));
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
}
