//! A started run as its supervisor sees it: stop it, read its counters and gauges, wait for
//! its files to close. The frame pipeline makes one ([`super::start`]); so does an event run
//! ([`Running::without_frames`]), which has its own threads and no frame queues.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam::channel::{self, Receiver};
use detingest_shm::BufferPool;

use super::job;
use super::stats::{PipelineStats, StatsSnapshot};
use super::writer::StreamReport;
pub use crate::contract::Gauges;
use crate::contract::SourceSummary;
use crate::sink::NotifyQueue;
use crate::source::SourceStats;
use crate::stream::{SourceMsg, StreamInfo};

/// A started pipeline.
pub struct Running {
    pub(super) stop: Arc<AtomicBool>,
    pub(super) stats: Arc<PipelineStats>,
    pub(super) sources: Vec<Arc<SourceStats>>,
    pub(super) streams: Vec<Arc<StreamInfo>>,
    pub(super) queues: (
        Receiver<SourceMsg>,
        Receiver<job::Item>,
        Receiver<job::Item>,
    ),
    pub(super) queue_capacity: usize,
    pub(super) input_pools: Vec<BufferPool>,
    pub(super) output_pool: BufferPool,
    pub(super) notify: Arc<NotifyQueue>,
    pub(super) threads: Vec<JoinHandle<()>>,
    pub(super) writer: JoinHandle<Vec<StreamReport>>,
    pub(super) started: Instant,
}

/// What a finished run did.
#[derive(Debug, Clone)]
pub struct RunSummary {
    /// Wall time from start to the last file closed.
    pub elapsed: Duration,
    /// Pipeline counters at the end.
    pub stats: StatsSnapshot,
    /// Per source: what it sent, dropped, and saw torn or malformed.
    pub sources: Vec<SourceSummary>,
    /// Per stream: what was written.
    pub streams: Vec<StreamReport>,
}

impl RunSummary {
    /// True when every frame produced was written or recorded lost and no file failed.
    pub fn ok(&self) -> bool {
        self.stats.write_errors == 0 && self.streams.iter().all(|s| s.error.is_none())
    }
}

impl Running {
    /// A run with threads of its own and no frame queues (an event run): `writer` returns its
    /// streams' reports, `threads` are joined after it, `sources` say when they finished.
    pub fn without_frames(
        stop: Arc<AtomicBool>,
        stats: Arc<PipelineStats>,
        sources: Vec<Arc<SourceStats>>,
        streams: Vec<Arc<StreamInfo>>,
        notify: Arc<NotifyQueue>,
        threads: Vec<JoinHandle<()>>,
        writer: JoinHandle<Vec<StreamReport>>,
    ) -> Self {
        Self {
            stop,
            stats,
            sources,
            streams,
            queues: (
                channel::bounded::<SourceMsg>(0).1,
                channel::bounded::<job::Item>(0).1,
                channel::bounded::<job::Item>(0).1,
            ),
            queue_capacity: 0,
            input_pools: Vec::new(),
            output_pool: BufferPool::new(0, 0),
            notify,
            threads,
            writer,
            started: Instant::now(),
        }
    }

    /// Asks every source to end its stream; the pipeline then drains and closes its files.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    /// A handle that stops the pipeline from elsewhere (a signal handler, a test).
    pub fn stop_handle(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.stop)
    }

    /// Pipeline counters.
    pub fn stats(&self) -> StatsSnapshot {
        self.stats.snapshot(self.notify.stats())
    }

    /// Per-source counters.
    pub fn sources(&self) -> &[Arc<SourceStats>] {
        &self.sources
    }

    /// The streams and their files.
    pub fn streams(&self) -> &[Arc<StreamInfo>] {
        &self.streams
    }

    /// Time since start.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// True once every source has ended its stream.
    pub fn sources_finished(&self) -> bool {
        self.sources
            .iter()
            .all(|s| s.finished.load(Ordering::Relaxed))
    }

    /// Queue fill levels and free buffers now.
    pub fn gauges(&self) -> Gauges {
        Gauges {
            source_queue: self.queues.0.len(),
            compress_queue: self.queues.1.len(),
            write_queue: self.queues.2.len(),
            queue_capacity: self.queue_capacity,
            free_input_buffers: self.input_pools.iter().map(BufferPool::free).sum(),
            free_output_buffers: self.output_pool.free(),
            notify_queue: self.notify.len(),
        }
    }

    /// Waits for every source to finish and every file to close.
    pub fn wait(self) -> RunSummary {
        let Self {
            stats,
            sources,
            threads,
            writer,
            started,
            queues,
            notify,
            ..
        } = self;
        drop(queues);
        let streams = writer.join().unwrap_or_else(|_| {
            tracing::error!("writer thread panicked");
            Vec::new()
        });
        for t in threads {
            if t.join().is_err() {
                tracing::error!("a pipeline thread panicked");
            }
        }
        RunSummary {
            elapsed: started.elapsed(),
            stats: stats.snapshot(notify.stats()),
            sources: sources.iter().map(|s| s.summary()).collect(),
            streams,
        }
    }
}
