//! A run's streams planned from its configuration before any thread starts: each stream's
//! description, file setup and coding, the indexer's plan for it, which slot each source
//! feeds, and the sizes of the buffers the stages need.

use std::sync::Arc;
use std::time::Duration;

use detingest_shm::BufferPool;
use detingest_writer::{Chunking, FileOptions, RunLayout, DATA_PATH};

use super::{compress, indexer, writer::StreamSetup, StartError, DROP_LOG};
use super::{dataset_window, detector_of, existing_file, run_layout, stream_file_path};
use crate::config::{Config, SourceConfig};
use crate::stream::{DropLog, StreamInfo, StreamSlot};

/// The streams of a run, and what the stages are sized by.
#[derive(Default)]
pub(super) struct Plan {
    /// Each stream, by slot.
    pub streams: Vec<Arc<StreamInfo>>,
    /// Each stream's codec and statistics, by slot.
    pub codings: Vec<compress::StreamCoding>,
    /// Each stream's file setup, for the writer.
    pub setups: Vec<(Arc<StreamInfo>, StreamSetup)>,
    /// Each stream's plan, for the indexer.
    pub plans: Vec<indexer::StreamPlan>,
    /// The slot each source feeds, in the sources' order.
    pub slot_of: Vec<StreamSlot>,
    /// The largest encoded chunk.
    pub max_chunk: usize,
    /// The largest preview (every encoded chunk of one index).
    pub max_preview: usize,
    /// The widest dataset window of any stream.
    pub widest: u64,
    /// The most modules a stream assembles into one image (frame chunking).
    pub assembled: usize,
}

/// Plans every stream of `config`; refuses one whose files exist.
pub(super) fn plan_streams(config: &Config) -> Result<Plan, StartError> {
    let mut plan = Plan::default();
    // Sources feeding one stream (the modules of one detector) share its slot.
    for src in &config.sources {
        if let Some(slot) = (plan.streams.iter()).position(|s| s.id == src.stream) {
            plan.slot_of.push(slot as StreamSlot);
            plan.plans[slot].sources += 1;
            continue;
        }
        let slot = plan.streams.len();
        plan.slot_of.push(slot as StreamSlot);
        plan.add_stream(config, src, slot)?;
    }
    Ok(plan)
}

impl Plan {
    /// Plans the stream `src` feeds, in `slot`.
    fn add_stream(
        &mut self,
        config: &Config,
        src: &SourceConfig,
        slot: usize,
    ) -> Result<(), StartError> {
        if let Some(existing) = existing_file(config, src) {
            return Err(StartError::Exists(existing));
        }
        let run = &config.run;
        let layout = run_layout(config, src);
        let info = Arc::new(stream_info(config, src, slot, &layout));
        let chunk_bytes = layout.chunk_bytes();
        let encoded = (layout.codec).max_compressed_len(chunk_bytes, layout.pixel.size());
        let assemble = layout.effective_chunking() == Chunking::Frame;
        // A preview holds every chunk of one index: one image, or one tile per module.
        let chunks_per_index = if assemble {
            1
        } else {
            layout.modules() as usize
        };
        self.max_chunk = self.max_chunk.max(encoded);
        self.max_preview = self.max_preview.max(chunks_per_index * encoded);
        let ahead = dataset_window(run.dataset_ahead, assemble.then_some(chunk_bytes));
        self.widest = self.widest.max(ahead);
        if assemble {
            self.assembled = self.assembled.max(layout.modules() as usize);
        }
        self.plans
            .push(indexer_plan(config, &layout, info.expected, ahead));
        self.streams.push(Arc::clone(&info));
        let detector = detector_of(config, src, &src.stream);
        let q = &config.sink.quality;
        let statistics = q.statistics.then(|| {
            crate::quality::stats::limits(layout.pixel, detector.saturation_value, q.threshold)
        });
        self.codings.push(compress::StreamCoding {
            codec: layout.codec,
            statistics,
        });
        let files = FileOptions {
            statistics,
            ..run.file_options(config.writer.swmr)
        };
        let setup = StreamSetup {
            layout,
            files,
            detector,
            user_json: run.user.to_string(),
            next_stream: run.next_stream.clone(),
            open_datasets: ahead as usize,
        };
        self.setups.push((info, setup));
        Ok(())
    }
}

/// The description of the stream `src` feeds, in `slot`, laid out as `layout`.
fn stream_info(config: &Config, src: &SourceConfig, slot: usize, layout: &RunLayout) -> StreamInfo {
    // A daemon that takes part of a detector expects only its sources' modules.
    let expected = if config.cluster.member() {
        (config.sources.iter())
            .filter(|s| s.stream == src.stream)
            .fold(0, |mask, s| mask | s.module_mask())
    } else {
        layout.all_modules()
    };
    StreamInfo {
        slot: slot as StreamSlot,
        id: src.stream.clone(),
        key: src.stream.to_string(),
        file: stream_file_path(config, src),
        dataset: DATA_PATH,
        codec: layout.codec,
        pixel: layout.pixel,
        shape: layout.image_shape(),
        modules: layout.modules(),
        expected,
        parts: Vec::new(),
        frames_per_file: config.run.frames_per_file,
        kind: crate::stream::StreamKind::Frames,
    }
}

/// The indexer's plan of a stream laid out as `layout`, expecting the modules `expected`,
/// with a dataset window of `ahead`.
fn indexer_plan(
    config: &Config,
    layout: &RunLayout,
    expected: u64,
    ahead: u64,
) -> indexer::StreamPlan {
    let (run, p) = (&config.run, &config.pipeline);
    let assemble = layout.effective_chunking() == Chunking::Frame;
    indexer::StreamPlan {
        drops: Arc::new(DropLog::new(DROP_LOG)),
        layout: *layout,
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
                layout.chunk_bytes(),
            )
        }),
    }
}
