//! The messages that move between pipeline stages. Pixels travel as [`FrameBuf`] and
//! [`PoolBuf`] handles inside them; nothing here copies or allocates.

use detingest_shm::{FrameBuf, FrameMeta, PoolBuf};
use detingest_writer::FrameStats;

use crate::stream::StreamSlot;

/// Indexer -> compression workers -> writer. `seq` numbers every item the indexer emits,
/// across all streams, so the writer restores the indexer's order exactly.
pub struct Item {
    /// Position in the indexer's output, 0, 1, 2 ...
    pub seq: u64,
    /// The stream.
    pub stream: StreamSlot,
    /// What to do.
    pub step: Step,
}

/// What an [`Item`] asks of the writer.
pub enum Step {
    /// Open the stream's file.
    Open,
    /// A chunk still to be compressed (only between indexer and workers): one module frame
    /// with module chunking (`meta.module` is its position in the grid), the assembled image
    /// with frame chunking.
    Raw {
        /// 1-based index in the stream.
        index: u64,
        /// Frame description.
        meta: FrameMeta,
        /// Raw pixels.
        pixels: FrameBuf,
    },
    /// A compressed chunk ready to write.
    Chunk {
        /// 1-based index in the stream.
        index: u64,
        /// Frame description.
        meta: FrameMeta,
        /// Encoded chunk.
        chunk: PoolBuf,
        /// Its pixels' statistics, when taken.
        stats: Option<FrameStats>,
    },
    /// With frame chunking: module `meta.module` of `index` was copied into its image (what
    /// the writer records of it; the pixels travel in the image's `Raw`).
    Seen {
        /// 1-based index in the stream.
        index: u64,
        /// The module frame's description.
        meta: FrameMeta,
    },
    /// A chunk of `index` the codec refused: its module is recorded missing.
    Failed {
        /// 1-based index in the stream.
        index: u64,
    },
    /// Every chunk of `index` has been emitted: its dataset is complete, or closed incomplete
    /// by timeout or because the stream moved ahead. The writer records it.
    Closed {
        /// 1-based index in the stream.
        index: u64,
        /// Its detector frame number.
        frame_number: u64,
        /// The detector numbering it belongs to (0, one more at each restart).
        sequence: u32,
        /// Modules dropped here (the rest of the missing ones never arrived).
        dropped: u64,
    },
    /// `count` consecutive indices of which nothing was written: their frames never arrived,
    /// were dropped here (`dropped`), or could not be encoded.
    Lost {
        /// First lost index.
        first_index: u64,
        /// Detector frame number of `first_index`.
        first_frame_number: u64,
        /// Number of lost indices.
        count: u64,
        /// The detector numbering they belong to.
        sequence: u32,
        /// Modules of theirs dropped here (0: they never arrived).
        dropped: u64,
    },
    /// Module `module` of `index` arrived after its dataset had closed (its record is
    /// written): its frame was discarded, and the record says so (`late_mask`).
    Late {
        /// 1-based index in the stream.
        index: u64,
        /// The module's position in the grid.
        module: u32,
    },
    /// Close the stream's file: nothing follows.
    Close,
}
