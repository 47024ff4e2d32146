//! The ingest pipeline: sources -> indexer -> compression workers -> writer -> notifications,
//! each stage on its own named (and optionally pinned) thread, joined by bounded crossbeam
//! queues.
//!
//! Frames move as [`detingest_shm::FrameBuf`] handles. The only copy of the pixels is the
//! source's own, if it makes one (a socket receive into a pool buffer; none for a
//! shared-memory slot or the synthetic bank); the codec reads the frame in place and writes
//! into a pooled output buffer, which the writer hands to `H5Dwrite_chunk`. When a queue is full the
//! source's [`Policy`](crate::source::Policy) blocks or drops; every drop is counted by the
//! source and recorded lost by the indexer, so a stream's indices stay 1..N without gaps.

mod compress;
mod events;
mod indexer;
mod job;
mod plan;
mod reorder;
mod running;
mod stats;
mod writer;

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam::channel;
use detingest_shm::{BufferPool, Name};
use detingest_writer::RunLayout;

pub use running::{Gauges, RunSummary, Running};
pub use stats::{PipelineStats, StatsSnapshot};
pub use writer::{StreamReport, StreamSetup};

use crate::config::{Config, ConfigError, SourceConfig};
use crate::sink::{NotificationSink, NotifyQueue, PreviewPolicy, RunSinks, SinkError, SinkNeeds};
use crate::source::{PreparedSource, SourceError, SourceOutput, SourceStats};
use crate::stream::{DropLog, SourceMsg, StreamSlot};
use crate::threads;

/// Why the pipeline could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// A stream's master or first data file exists already; detingest never overwrites.
    #[error("{0} exists already; choose another stream name or move the file")]
    Exists(PathBuf),
    /// A source could not be made ready (its ring, its port, its configuration).
    #[error("source {name}: {error}")]
    Source {
        /// The source's name.
        name: Name,
        /// Why.
        error: SourceError,
    },
    /// A sink could not start.
    #[error(transparent)]
    Sink(#[from] SinkError),
    /// The configuration could not be resolved.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A thread could not be started.
    #[error("cannot start thread: {0}")]
    Spawn(#[from] std::io::Error),
}

/// The directory of a stream's files: `<data_dir>/<beamtime>/<source>`.
pub fn stream_dir(config: &Config, src: &SourceConfig) -> PathBuf {
    let id = &src.stream;
    config
        .data_dir
        .join(id.beamtime.as_str())
        .join(id.source.as_str())
}

/// A stream's master file: `<data_dir>/<beamtime>/<source>/<stream>_master.h5`.
pub fn stream_file_path(config: &Config, src: &SourceConfig) -> PathBuf {
    if src.kafka_events.is_some() {
        return events::file_path(config, src);
    }
    detingest_writer::master_path(&stream_dir(config, src), src.stream.stream.as_str())
}

/// A file of the source's stream that exists already (its master or first data file): the
/// run would overwrite it, which detingest never does.
pub fn existing_file(config: &Config, src: &SourceConfig) -> Option<PathBuf> {
    let first_data = stream_dir(config, src).join(detingest_writer::data_file_name(
        src.stream.stream.as_str(),
        1,
    ));
    [stream_file_path(config, src), first_data]
        .into_iter()
        .find(|f| f.exists())
}

/// The experiment description of `src`'s stream `id`: `[detector]` (with the run's
/// overrides), what the source received (mask, tables), and the identity a catalogue files
/// it under (title: the stream's name, experiment: its beamtime, unless given).
pub fn detector_of(
    config: &Config,
    src: &SourceConfig,
    id: &detingest_shm::StreamId,
) -> detingest_writer::DetectorInfo {
    let base = &config.detector;
    detingest_writer::DetectorInfo {
        pixel_mask: src.kind().and_then(|k| k.pixel_mask()),
        tables: src.kind().map(|k| k.tables()).unwrap_or_default(),
        title: (base.title.clone()).or_else(|| Some(id.stream.as_str().to_owned())),
        experiment_identifier: (base.experiment_identifier.clone())
            .or_else(|| Some(id.beamtime.as_str().to_owned())),
        ..base.clone()
    }
}

/// The image layout of a source's stream under the run settings of `config`.
pub fn run_layout(config: &Config, src: &SourceConfig) -> RunLayout {
    let (pixel, module_shape) = src.frame_format();
    RunLayout {
        pixel,
        module_shape,
        grid: src.grid,
        chunking: config.run.chunking,
        codec: src.codec(config.writer.codec),
    }
}

/// Drops a stream's sources may log before the indexer reads them (it reads them every time it
/// takes a message, and every tick).
pub(super) const DROP_LOG: usize = 4096;

/// Starts the pipeline for `config`, with `sinks` receiving every notification.
///
/// Refuses to start if a stream's file exists. Every source is prepared (rings created,
/// ports bound, synthetic banks generated) before any thread starts.
pub fn start(config: &Config, sinks: RunSinks) -> Result<Running, StartError> {
    if let Some((src, table)) =
        (config.sources.iter()).find_map(|s| Some((s, s.kafka_events.as_ref()?)))
    {
        if config.sources.len() > 1 {
            return Err(StartError::Config(ConfigError::new(
                "source",
                format!(
                    "the event source {} runs alone: start it by its name",
                    src.name
                ),
            )));
        }
        return events::start(config, src, table, sinks);
    }
    let RunSinks { sinks, needs } = sinks;
    let p = &config.pipeline;
    let mut plan = plan::plan_streams(config)?;
    let prepared = prepare_sources(config)?;
    let stats = Arc::new(PipelineStats::default());
    let stop = Arc::new(AtomicBool::new(false));
    let (source_tx, source_rx) = channel::bounded::<SourceMsg>(p.queue_depth);
    let (compress_tx, compress_rx) = channel::bounded::<job::Item>(p.queue_depth);
    let (write_tx, write_rx) = channel::bounded::<job::Item>(p.queue_depth);
    // Sources whose frames arrive encoded pass them through the workers: the workers'
    // buffers are then mostly unused, and not touched in advance either.
    let output_pool = if prepared.iter().all(|s| s.prefault()) {
        BufferPool::new(p.output_buffers, plan.max_chunk)
    } else {
        BufferPool::lazy(p.output_buffers, plan.max_chunk)
    };
    let notify = Arc::new(NotifyQueue::new(p.notify_queue));
    let mut threads = vec![spawn_notify(&notify, sinks, &needs, config.threads.notify)?];
    let stages = Stages {
        stats: &stats,
        stop: &stop,
        notify: &notify,
    };
    let drop_logs: Vec<Arc<DropLog>> = (plan.plans.iter()).map(|p| Arc::clone(&p.drops)).collect();
    let streams = plan.streams.clone();
    let setups = std::mem::take(&mut plan.setups);
    let writer = stages.spawn_writer(config, &plan, setups, &needs, write_rx.clone())?;
    let workers = (compress_rx.clone(), write_tx, output_pool.clone());
    threads.extend(stages.spawn_workers(config, plan.codings.into(), workers)?);
    threads.push(stages.spawn_indexer(config, plan.plans, compress_tx, source_rx.clone())?);
    let fed = stages.spawn_sources(config, &plan.slot_of, prepared, &drop_logs, source_tx)?;
    threads.extend(fed.threads);
    Ok(Running {
        stop,
        stats,
        sources: fed.stats,
        streams,
        queues: (source_rx, compress_rx, write_rx),
        queue_capacity: p.queue_depth,
        input_pools: fed.pools,
        output_pool,
        notify,
        threads,
        writer,
        started: Instant::now(),
    })
}

/// Makes every source ready (rings, sockets and banks) before any thread starts: one that
/// cannot be made stops the start cleanly.
fn prepare_sources(config: &Config) -> Result<Vec<Box<dyn PreparedSource>>, StartError> {
    (config.sources.iter().enumerate())
        .map(|(i, src)| {
            let kind = src.kind().ok_or_else(|| {
                ConfigError::new(format!("source[{i}]"), "needs exactly one source kind")
            })?;
            (kind.prepare(src, i, src.modules())).map_err(|error| StartError::Source {
                name: src.name.clone(),
                error,
            })
        })
        .collect()
}

/// What every stage's thread shares: the counters, the stop flag, the notification queue.
struct Stages<'a> {
    stats: &'a Arc<PipelineStats>,
    stop: &'a Arc<AtomicBool>,
    notify: &'a Arc<NotifyQueue>,
}

/// The source threads started, their counters and the pools they fill.
struct Fed {
    threads: Vec<JoinHandle<()>>,
    stats: Vec<Arc<SourceStats>>,
    pools: Vec<BufferPool>,
}

impl Stages<'_> {
    /// The `writer` thread, with the previews the sinks asked for.
    fn spawn_writer(
        &self,
        config: &Config,
        plan: &plan::Plan,
        setups: Vec<(Arc<crate::stream::StreamInfo>, StreamSetup)>,
        needs: &SinkNeeds,
        rx: channel::Receiver<job::Item>,
    ) -> Result<JoinHandle<Vec<StreamReport>>, StartError> {
        // A preview holds every module chunk of its index; the buffers are touched only as
        // far as previews fill them.
        let previews = (!needs.previews.is_empty()).then(|| {
            let pool = BufferPool::lazy(needs.preview_buffers(), plan.max_preview);
            PreviewPolicy::new(&needs.previews, Some(pool))
        });
        let modules = (config.sources.iter())
            .map(|s| s.modules() as usize)
            .max()
            .unwrap_or(1);
        let p = &config.pipeline;
        let window = reorder_window(p, plan.widest, modules, plan.assembled, plan.streams.len());
        let stage = writer::Writer::new(
            setups,
            writer::FlushCadence {
                frames: config.writer.flush_every_frames,
                interval: (config.writer.flush_interval_ms > 0)
                    .then(|| Duration::from_millis(config.writer.flush_interval_ms)),
            },
            previews.unwrap_or_else(PreviewPolicy::none),
            window,
            Arc::clone(self.notify),
            Arc::clone(self.stats),
            Arc::clone(self.stop),
        );
        Ok(threads::spawn(
            "writer".into(),
            config.threads.writer,
            move || stage.run(rx),
        )?)
    }

    /// The `compress-i` workers.
    fn spawn_workers(
        &self,
        config: &Config,
        codings: Arc<[compress::StreamCoding]>,
        (rx, tx, pool): (
            channel::Receiver<job::Item>,
            channel::Sender<job::Item>,
            BufferPool,
        ),
    ) -> Result<Vec<JoinHandle<()>>, StartError> {
        let t = &config.threads;
        (0..config.pipeline.compress_workers)
            .map(|i| {
                let core = (!t.compress.is_empty()).then(|| t.compress[i % t.compress.len()]);
                let (codings, rx, tx, pool, st) = (
                    Arc::clone(&codings),
                    rx.clone(),
                    tx.clone(),
                    pool.clone(),
                    Arc::clone(self.stats),
                );
                let work = move || compress::run(&codings, rx, tx, pool, st);
                Ok(threads::spawn(format!("compress-{i}"), core, work)?)
            })
            .collect()
    }

    /// The `indexer` thread.
    fn spawn_indexer(
        &self,
        config: &Config,
        plans: Vec<indexer::StreamPlan>,
        tx: channel::Sender<job::Item>,
        rx: channel::Receiver<SourceMsg>,
    ) -> Result<JoinHandle<()>, StartError> {
        let indexer =
            indexer::Indexer::new(plans, tx, Arc::clone(self.stats), Arc::clone(self.stop));
        Ok(threads::spawn(
            "indexer".into(),
            config.threads.indexer,
            move || indexer.run(rx),
        )?)
    }

    /// A `src-<name>` thread per prepared source, each with its pool (touched in advance
    /// unless the source says its buffers are a rarely filled worst case).
    fn spawn_sources(
        &self,
        config: &Config,
        slot_of: &[StreamSlot],
        prepared: Vec<Box<dyn PreparedSource>>,
        drop_logs: &[Arc<DropLog>],
        tx: channel::Sender<SourceMsg>,
    ) -> Result<Fed, StartError> {
        let mut fed = Fed {
            threads: Vec::new(),
            stats: Vec::new(),
            pools: Vec::new(),
        };
        for ((src, &slot), prepared) in config.sources.iter().zip(slot_of).zip(prepared) {
            let st = Arc::new(SourceStats::new(src.name.clone(), prepared.bound()));
            fed.stats.push(Arc::clone(&st));
            let (buffers, bytes) = prepared.buffers(config.pipeline.input_buffers);
            let pool = if prepared.prefault() {
                BufferPool::new(buffers, bytes)
            } else {
                BufferPool::lazy(buffers, bytes)
            };
            if buffers > 0 {
                fed.pools.push(pool.clone());
            }
            let mut out = SourceOutput::new(
                (slot, src.codec(config.writer.codec)),
                Arc::clone(&drop_logs[usize::from(slot)]),
                src.policy,
                pool,
                tx.clone(),
                Arc::clone(self.stop),
                st,
            );
            let name = format!("src-{}", src.name);
            fed.threads.push(threads::spawn(name, src.core, move || {
                prepared.run(&mut out)
            })?);
        }
        Ok(fed)
    }
}

/// The notification thread of a run: hands what `notify` queues to `sinks`, with the real-time
/// priority they ask for (frame and event runs alike).
pub(crate) fn spawn_notify(
    notify: &Arc<NotifyQueue>,
    sinks: Vec<Box<dyn NotificationSink>>,
    needs: &SinkNeeds,
    core: Option<usize>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    let consumer = Arc::clone(notify);
    let (priority, batch_interval) = (needs.realtime_priority, needs.batch_interval);
    threads::spawn("notify".into(), core, move || {
        if priority > 0 {
            if let Err(e) = threads::set_realtime(0, priority) {
                tracing::warn!(error = %e, "notify thread keeps normal scheduling");
            }
        }
        consumer.consume(sinks, batch_interval)
    })
}

/// Open datasets a stream keeps at most when `run.dataset_ahead` is 0 (the default) and each
/// costs no image buffer (module chunking, or one module): a record slot in the indexer and
/// the writer. Within it an incomplete dataset waits `dataset_timeout_ms` for its modules.
pub const DATASET_WINDOW: u64 = 1024;
/// With frame chunking of several modules each open dataset holds its image: the window by
/// default holds at most this many bytes of images (and at least 8 images).
pub const DATASET_WINDOW_IMAGE_BYTES: usize = 256 << 20;

/// Datasets a stream keeps open at most: `configured`, or by default as many as its buffers
/// allow (`image_bytes`: the image each open dataset assembles, if any).
pub fn dataset_window(configured: u64, image_bytes: Option<usize>) -> u64 {
    match (configured, image_bytes) {
        (0, None) => DATASET_WINDOW,
        (0, Some(b)) => ((DATASET_WINDOW_IMAGE_BYTES / b.max(1)) as u64).clamp(8, DATASET_WINDOW),
        (n, _) => n,
    }
}

/// Slots of the writer's reorder window. It holds items that overtook the one the writer
/// awaits, which a worker holds (`compress.rs`). Chunks hold an output buffer or a queue slot;
/// per chunk at most one item per module (Seen), one Closed or Lost per index, and one Lost
/// range per jump come without one; and each of up to `window` open datasets may have a
/// Closed or Lost (and with frame chunking a Seen per module, `assembled`) ahead of its
/// image. Twice that, plus three per stream (Open, Lost, Close) and one.
fn reorder_window(
    p: &crate::config::PipelineConfig,
    window: u64,
    modules: usize,
    assembled: usize,
    streams: usize,
) -> usize {
    let chunks_in_flight = p.output_buffers + 2 * p.queue_depth + p.compress_workers;
    let per_chunk = modules + 3;
    let per_open = assembled + 2;
    (chunks_in_flight * per_chunk + window as usize * per_open) * 2 + 3 * streams + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reorder_window_grows_with_what_can_be_in_flight() {
        let p = crate::config::PipelineConfig {
            compress_workers: 2,
            queue_depth: 16,
            input_buffers: 32,
            output_buffers: 32,
            notify_queue: 64,
        };
        // (66 chunks * (1 module + 3) + 4 open * (0 assembled + 2)) * 2 + 3 * 1 stream + 1
        assert_eq!(reorder_window(&p, 4, 1, 0, 1), (66 * 4 + 4 * 2) * 2 + 4);
        assert!(reorder_window(&p, 4, 4, 0, 1) > reorder_window(&p, 4, 1, 0, 1));
        assert!(reorder_window(&p, 8, 1, 0, 1) > reorder_window(&p, 4, 1, 0, 1));
        // Frame chunking: each open dataset may hold a Seen per module ahead of its image.
        assert_eq!(
            reorder_window(&p, 4, 4, 4, 1) - reorder_window(&p, 4, 4, 0, 1),
            4 * 4 * 2
        );
        assert_eq!(
            reorder_window(&p, 4, 1, 0, 2),
            reorder_window(&p, 4, 1, 0, 1) + 3
        );
    }

    #[test]
    fn the_dataset_window_is_what_the_buffers_allow_unless_configured() {
        assert_eq!(dataset_window(0, None), DATASET_WINDOW);
        assert_eq!(dataset_window(12, None), 12);
        // Frame chunking: 256 MiB of images, at least 8, at most the window.
        assert_eq!(dataset_window(0, Some(2 << 20)), 128);
        assert_eq!(dataset_window(0, Some(64 << 20)), 8);
        assert_eq!(dataset_window(0, Some(1024)), DATASET_WINDOW);
        assert_eq!(dataset_window(5, Some(64 << 20)), 5);
    }
}
