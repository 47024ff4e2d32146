//! What the writer gathers of each open index from its chunks (which modules were written,
//! lost packets, sizes, the preview) until its dataset closes: a small ring of accumulators,
//! one per open dataset, allocated at start.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use detingest_shm::{FrameMeta, PacketMask};
use detingest_writer::FrameStats;

use crate::pipeline::stats::PipelineStats;
use crate::sink::assembly::PreviewBuilder;
use crate::sink::{Preview, PreviewGeometry, PreviewPolicy};

/// What the writer has gathered of one open index.
pub(super) struct Accum {
    /// The index (0: free).
    pub(super) index: u64,
    pub(super) modules: u64,
    pub(super) timestamp_ns: u64,
    pub(super) detector_timestamp: u64,
    pub(super) bunch_id: u64,
    pub(super) raw_bytes: u64,
    pub(super) compressed_bytes: u64,
    /// Frame chunking: the image chunk was written.
    pub(super) image: bool,
    /// Its chunks' statistics, merged (`None`: none taken).
    pub(super) stats: Option<FrameStats>,
    /// Whether the preview policy was asked for this index yet.
    pub(super) preview_asked: bool,
    /// Per module.
    pub(super) missing: Vec<[u8; 64]>,
    /// The preview being gathered, if the index was picked.
    pub(super) preview: Option<PreviewBuilder>,
}

impl Accum {
    pub(super) fn new(modules: usize) -> Self {
        Self {
            index: 0,
            modules: 0,
            timestamp_ns: 0,
            detector_timestamp: 0,
            bunch_id: 0,
            raw_bytes: 0,
            compressed_bytes: 0,
            image: false,
            stats: None,
            preview_asked: false,
            missing: vec![[0; 64]; modules],
            preview: None,
        }
    }

    pub(super) fn reset(&mut self, index: u64) {
        self.index = index;
        self.modules = 0;
        self.timestamp_ns = 0;
        self.detector_timestamp = 0;
        self.bunch_id = 0;
        self.raw_bytes = 0;
        self.compressed_bytes = 0;
        self.image = false;
        self.stats = None;
        self.preview_asked = false;
        self.missing.fill([0; 64]);
        self.preview = None;
    }

    /// Notes module `meta.module` as present.
    pub(super) fn module(&mut self, meta: &FrameMeta) {
        let m = usize::from(meta.module);
        if self.modules == 0 {
            // The detector's stamps of the index: its first module's.
            (self.detector_timestamp, self.bunch_id) = (meta.detector_timestamp, meta.bunch_id);
        }
        self.modules |= 1 << m;
        if let Some(slot) = self.missing.get_mut(m) {
            *slot = meta.missing.0;
        }
        if self.timestamp_ns == 0 {
            self.timestamp_ns = meta.timestamp_ns;
        }
        self.raw_bytes += meta.byte_len() as u64;
    }
}

impl Accum {
    /// Adds a chunk's statistics to the index's.
    pub(super) fn add_stats(&mut self, stats: Option<FrameStats>) {
        if let Some(s) = stats {
            self.stats = Some(self.stats.map_or(s, |t| t.merge(s)));
        }
    }
}

/// The accumulator of `index`, reset if it held an older one.
pub(super) fn accum<'a>(
    accums: &'a mut [Accum],
    index: u64,
    stats: &PipelineStats,
) -> &'a mut Accum {
    let n = accums.len() as u64;
    let a = &mut accums[(index % n) as usize];
    if a.index != index {
        if a.index != 0 {
            // More datasets open than the indexer allows: a wiring bug, never silent.
            tracing::error!(index, held = a.index, "dataset accumulator overrun");
            stats.write_errors.fetch_add(1, Ordering::Relaxed);
        }
        a.reset(index);
    }
    a
}

/// The packets missing on some module (the union of the modules' masks), and how many
/// packets are missing summed over the modules.
pub(super) fn merge_missing(missing: &[[u8; 64]]) -> (PacketMask, u32) {
    let mut union = PacketMask::NONE;
    let mut lost = 0;
    for mask in missing {
        lost += PacketMask(*mask).count();
        for (u, b) in union.0.iter_mut().zip(mask) {
            *u |= b;
        }
    }
    (union, lost)
}

/// Adds a written chunk of the index to its preview: at its first chunk the policy is asked
/// whether the index gets one (a pick that finds every preview buffer held, or chunks that
/// do not fit, is counted skipped).
pub(super) fn add_to_preview(
    a: &mut Accum,
    policy: &mut PreviewPolicy,
    geometry: &PreviewGeometry,
    (module, chunk): (u32, &[u8]),
    stats: &PipelineStats,
) {
    if !a.preview_asked {
        a.preview_asked = true;
        if policy.wants(Instant::now()) {
            a.preview = policy.start(geometry);
            if a.preview.is_none() {
                stats.previews_skipped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    if let Some(p) = a.preview.as_mut() {
        if !p.add(geometry, module, chunk) {
            a.preview = None;
            stats.previews_skipped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The gathered preview of a recorded index.
pub(super) fn take_preview(a: &mut Accum) -> Option<Arc<Preview>> {
    a.preview.take().map(|p| Arc::new(p.finish()))
}
