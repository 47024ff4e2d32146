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
mod reorder;
mod running;
mod stats;
mod writer;

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam::channel;
use detingest_shm::{BufferPool, Name};
use detingest_writer::{Chunking, FileOptions, RunLayout, DATA_PATH};

pub use running::{Gauges, RunSummary, Running};
pub use stats::{PipelineStats, StatsSnapshot};
pub use writer::{StreamReport, StreamSetup};

use crate::config::{Config, ConfigError, SourceConfig};
use crate::sink::{NotificationSink, NotifyQueue, PreviewPolicy, RunSinks, SinkError, SinkNeeds};
use crate::source::{SourceError, SourceOutput, SourceStats};
use crate::stream::{DropLog, SourceMsg, StreamInfo, StreamSlot};
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
const DROP_LOG: usize = 4096;

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
    let t = &config.threads;
    let stats = Arc::new(PipelineStats::default());
    let stop = Arc::new(AtomicBool::new(false));

    let mut streams = Vec::new();
    let mut codings = Vec::new();
    let mut setups = Vec::new();
    let mut plans = Vec::new();
    let mut max_chunk = 0;
    let mut max_preview = 0;
    // The widest dataset window of any stream, and the modules a stream assembles per image.
    let (mut widest, mut assembled) = (0, 0);
    let run = &config.run;
    // Sources feeding one stream (the modules of one detector) share its slot.
    let mut slot_of = Vec::with_capacity(config.sources.len());
    for src in &config.sources {
        if let Some(slot) = streams
            .iter()
            .position(|s: &Arc<StreamInfo>| s.id == src.stream)
        {
            slot_of.push(slot as StreamSlot);
            let plan: &mut indexer::StreamPlan = &mut plans[slot];
            plan.sources += 1;
            continue;
        }
        let slot = streams.len();
        slot_of.push(slot as StreamSlot);
        let file = stream_file_path(config, src);
        if let Some(existing) = existing_file(config, src) {
            return Err(StartError::Exists(existing));
        }
        let layout = run_layout(config, src);
        // A daemon that takes part of a detector expects only its sources' modules.
        let expected = if config.cluster.member() {
            (config.sources.iter())
                .filter(|s| s.stream == src.stream)
                .fold(0, |mask, s| mask | s.module_mask())
        } else {
            layout.all_modules()
        };
        let info = Arc::new(StreamInfo {
            slot: slot as StreamSlot,
            id: src.stream.clone(),
            key: src.stream.to_string(),
            file,
            dataset: DATA_PATH,
            codec: layout.codec,
            pixel: layout.pixel,
            shape: layout.image_shape(),
            modules: layout.modules(),
            expected,
            parts: Vec::new(),
            frames_per_file: run.frames_per_file,
            kind: crate::stream::StreamKind::Frames,
        });
        let chunk_bytes = layout.chunk_bytes();
        max_chunk = max_chunk.max(
            layout
                .codec
                .max_compressed_len(chunk_bytes, layout.pixel.size()),
        );
        let assemble = layout.effective_chunking() == Chunking::Frame;
        let chunks_per_index = if assemble {
            1
        } else {
            layout.modules() as usize
        };
        let preview_bytes = chunks_per_index
            * layout
                .codec
                .max_compressed_len(chunk_bytes, layout.pixel.size());
        max_preview = max_preview.max(preview_bytes);
        let ahead = dataset_window(run.dataset_ahead, assemble.then_some(chunk_bytes));
        widest = widest.max(ahead);
        if assemble {
            assembled = assembled.max(layout.modules() as usize);
        }
        plans.push(indexer::StreamPlan {
            drops: Arc::new(DropLog::new(DROP_LOG)),
            layout,
            expected,
            ahead,
            timeout: Duration::from_millis(run.dataset_timeout_ms),
            limit: run.frames,
            first_frame_number: run.first_frame_number,
            sources: 1,
            // Open datasets, plus images queued for and held by the workers.
            // Lazy: pages are touched only as far as the window is used.
            images: assemble.then(|| {
                BufferPool::lazy(
                    ahead as usize + 2 + p.queue_depth + p.compress_workers,
                    chunk_bytes,
                )
            }),
        });
        streams.push(Arc::clone(&info));
        let detector = detector_of(config, src, &src.stream);
        let q = &config.sink.quality;
        let statistics = q.statistics.then(|| {
            crate::quality::stats::limits(layout.pixel, detector.saturation_value, q.threshold)
        });
        codings.push(compress::StreamCoding {
            codec: layout.codec,
            statistics,
        });
        setups.push((
            info,
            StreamSetup {
                layout,
                files: FileOptions {
                    statistics,
                    ..run.file_options(config.writer.swmr)
                },
                detector,
                user_json: run.user.to_string(),
                next_stream: run.next_stream.clone(),
                open_datasets: ahead as usize,
            },
        ));
    }

    // Rings, sockets and banks before any thread: one that cannot be made stops the start
    // cleanly.
    let prepared = config
        .sources
        .iter()
        .enumerate()
        .map(|(i, src)| {
            let kind = src.kind().ok_or_else(|| {
                ConfigError::new(format!("source[{i}]"), "needs exactly one source kind")
            })?;
            kind.prepare(src, i, src.modules())
                .map_err(|error| StartError::Source {
                    name: src.name.clone(),
                    error,
                })
        })
        .collect::<Result<Vec<_>, StartError>>()?;

    let (source_tx, source_rx) = channel::bounded::<SourceMsg>(p.queue_depth);
    let (compress_tx, compress_rx) = channel::bounded::<job::Item>(p.queue_depth);
    let (write_tx, write_rx) = channel::bounded::<job::Item>(p.queue_depth);
    // Sources whose frames arrive encoded pass them through the workers: the workers'
    // buffers are then mostly unused, and not touched in advance either.
    let output_pool = if prepared.iter().all(|s| s.prefault()) {
        BufferPool::new(p.output_buffers, max_chunk)
    } else {
        BufferPool::lazy(p.output_buffers, max_chunk)
    };
    let codings: Arc<[compress::StreamCoding]> = codings.into();
    let notify = Arc::new(NotifyQueue::new(p.notify_queue));
    // A preview holds every module chunk of its index; the buffers are touched only as
    // far as previews fill them.
    let previews = (!needs.previews.is_empty()).then(|| {
        let pool = BufferPool::lazy(needs.preview_buffers(), max_preview);
        PreviewPolicy::new(&needs.previews, Some(pool))
    });
    let modules = config
        .sources
        .iter()
        .map(|s| s.modules() as usize)
        .max()
        .unwrap_or(1);
    let window = reorder_window(p, widest, modules, assembled, streams.len());

    let mut threads = vec![spawn_notify(&notify, sinks, &needs, t.notify)?];
    let writer_stage = writer::Writer::new(
        setups,
        writer::FlushCadence {
            frames: config.writer.flush_every_frames,
            interval: (config.writer.flush_interval_ms > 0)
                .then(|| Duration::from_millis(config.writer.flush_interval_ms)),
        },
        previews.unwrap_or_else(PreviewPolicy::none),
        window,
        Arc::clone(&notify),
        Arc::clone(&stats),
        Arc::clone(&stop),
    );
    let writer_rx = write_rx.clone();
    let writer = threads::spawn("writer".into(), t.writer, move || {
        writer_stage.run(writer_rx)
    })?;
    for i in 0..p.compress_workers {
        let core = (!t.compress.is_empty()).then(|| t.compress[i % t.compress.len()]);
        let (codings, rx, tx, pool, st) = (
            Arc::clone(&codings),
            compress_rx.clone(),
            write_tx.clone(),
            output_pool.clone(),
            Arc::clone(&stats),
        );
        threads.push(threads::spawn(format!("compress-{i}"), core, move || {
            compress::run(&codings, rx, tx, pool, st)
        })?);
    }
    drop(write_tx);
    let drop_logs: Vec<Arc<DropLog>> = plans.iter().map(|p| Arc::clone(&p.drops)).collect();
    let indexer = indexer::Indexer::new(plans, compress_tx, Arc::clone(&stats), Arc::clone(&stop));
    let indexer_rx = source_rx.clone();
    threads.push(threads::spawn("indexer".into(), t.indexer, move || {
        indexer.run(indexer_rx)
    })?);

    let mut sources = Vec::new();
    let mut input_pools = Vec::new();
    for ((src, &slot), prepared) in config.sources.iter().zip(&slot_of).zip(prepared) {
        let st = Arc::new(SourceStats::new(src.name.clone()));
        sources.push(Arc::clone(&st));
        let (buffers, bytes) = prepared.buffers(p.input_buffers);
        let pool = if prepared.prefault() {
            BufferPool::new(buffers, bytes)
        } else {
            BufferPool::lazy(buffers, bytes)
        };
        if buffers > 0 {
            input_pools.push(pool.clone());
        }
        let mut out = SourceOutput::new(
            (slot, src.codec(config.writer.codec)),
            Arc::clone(&drop_logs[usize::from(slot)]),
            src.policy,
            pool,
            source_tx.clone(),
            Arc::clone(&stop),
            st,
        );
        threads.push(threads::spawn(
            format!("src-{}", src.name),
            src.core,
            move || prepared.run(&mut out),
        )?);
    }
    drop(source_tx);

    Ok(Running {
        stop,
        stats,
        sources,
        streams,
        queues: (source_rx, compress_rx, write_rx),
        queue_capacity: p.queue_depth,
        input_pools,
        output_pool,
        notify,
        threads,
        writer,
        started: Instant::now(),
    })
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
