//! Pipeline counters, updated with relaxed atomics by the stage that owns each one and read by
//! the progress line, the summary and tests.

use std::sync::atomic::{AtomicU64, Ordering};

pub use crate::contract::StatsSnapshot;
use crate::sink::QueueStats;

/// Counters of the stages after the sources.
#[derive(Debug, Default)]
pub struct PipelineStats {
    /// Module frames given an index.
    pub indexed: AtomicU64,
    /// Indices recorded lost: nothing of them reached the daemon.
    pub lost: AtomicU64,
    /// Indices with a module the daemon received but dropped (a full queue, no free buffer).
    pub dropped: AtomicU64,
    /// Datasets closed with some (not all) modules missing.
    pub incomplete: AtomicU64,
    /// Frames refused by the indexer: behind the stream's numbering, or of a stream not open.
    pub stale: AtomicU64,
    /// Module frames that arrived after their dataset had closed (recorded `late_mask`).
    pub late: AtomicU64,
    /// Chunks compressed.
    pub compressed: AtomicU64,
    /// Chunks the codec refused (their modules recorded missing).
    pub codec_errors: AtomicU64,
    /// Raw bytes of compressed frames.
    pub bytes_raw: AtomicU64,
    /// Encoded bytes of compressed frames.
    pub bytes_compressed: AtomicU64,
    /// Indices recorded in the files (written or lost): the frames of the run so far.
    pub recorded: AtomicU64,
    /// Chunks written to files (module tiles with module chunking).
    pub written: AtomicU64,
    /// Frames or lost records that could not be written (file errors).
    pub write_errors: AtomicU64,
    /// File flushes.
    pub flushes: AtomicU64,
    /// Previews not made because every preview buffer was still held.
    pub previews_skipped: AtomicU64,
    /// Streams whose files are open now (a gauge).
    pub files_open: AtomicU64,
}

impl PipelineStats {
    /// Reads every counter, and the notification queue's.
    pub fn snapshot(&self, queue: &QueueStats) -> StatsSnapshot {
        let r = |a: &AtomicU64| a.load(Ordering::Relaxed);
        StatsSnapshot {
            indexed: r(&self.indexed),
            lost: r(&self.lost),
            dropped: r(&self.dropped),
            incomplete: r(&self.incomplete),
            stale: r(&self.stale),
            late: r(&self.late),
            compressed: r(&self.compressed),
            codec_errors: r(&self.codec_errors),
            bytes_raw: r(&self.bytes_raw),
            bytes_compressed: r(&self.bytes_compressed),
            recorded: r(&self.recorded),
            written: r(&self.written),
            write_errors: r(&self.write_errors),
            flushes: r(&self.flushes),
            notified: r(&queue.delivered),
            notify_dropped: r(&queue.dropped),
            previews_skipped: r(&self.previews_skipped),
            files_open: r(&self.files_open),
        }
    }
}
