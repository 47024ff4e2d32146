//! What a run's image dataset looks like: module geometry, chunking and codec, and where each
//! module's tile lies in the full image.

use detingest_shm::PixelType;
use serde::{Deserialize, Serialize};

use crate::Codec;

/// Most modules one detector may have: a dataset's modules are a 64-bit mask.
pub const MAX_MODULES: u32 = 64;

/// The mask with the bits of `n` modules set (`n` <= [`MAX_MODULES`]).
pub fn all_modules(n: u32) -> u64 {
    match n {
        64.. => u64::MAX,
        n => (1u64 << n) - 1,
    }
}

/// How the image dataset is chunked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Chunking {
    /// One chunk per module tile, written straight from each module's buffer (no copy).
    #[default]
    Module,
    /// One chunk per full image, as XDS's neggia plugin requires (one copy to assemble).
    Frame,
}

impl Chunking {
    /// `"module"` or `"frame"`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Module => "module",
            Self::Frame => "frame",
        }
    }
}

/// The image dataset of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunLayout {
    /// Pixel type of every module frame.
    pub pixel: PixelType,
    /// `[ny, nx]` of one module.
    pub module_shape: [u32; 2],
    /// `[rows, columns]` of modules; module `m` sits at row `m / columns`, column `m % columns`.
    pub grid: [u32; 2],
    /// Chunking of `/entry/data/data`.
    pub chunking: Chunking,
    /// Codec the chunks arrive compressed with.
    pub codec: Codec,
}

impl RunLayout {
    /// Number of modules.
    pub fn modules(&self) -> u32 {
        self.grid[0] * self.grid[1]
    }

    /// `[ny, nx]` of the full image.
    pub fn image_shape(&self) -> [u32; 2] {
        [
            self.grid[0] * self.module_shape[0],
            self.grid[1] * self.module_shape[1],
        ]
    }

    /// Chunking in effect: a single module's tile is the whole image, so it is always `Module`.
    pub fn effective_chunking(&self) -> Chunking {
        if self.modules() == 1 {
            Chunking::Module
        } else {
            self.chunking
        }
    }

    /// `[ny, nx]` of one chunk.
    pub fn chunk_shape(&self) -> [u32; 2] {
        match self.effective_chunking() {
            Chunking::Module => self.module_shape,
            Chunking::Frame => self.image_shape(),
        }
    }

    /// Raw bytes of one chunk.
    pub fn chunk_bytes(&self) -> usize {
        self.pixel.frame_bytes(self.chunk_shape())
    }

    /// Raw bytes of one module frame.
    pub fn module_bytes(&self) -> usize {
        self.pixel.frame_bytes(self.module_shape)
    }

    /// `[y, x]` of module `m`'s first pixel in the full image.
    pub fn tile_origin(&self, m: u32) -> [u32; 2] {
        let cols = self.grid[1].max(1);
        [
            (m / cols) * self.module_shape[0],
            (m % cols) * self.module_shape[1],
        ]
    }

    /// The mask with every module's bit set.
    pub fn all_modules(&self) -> u64 {
        all_modules(self.modules())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiles_cover_the_image_row_by_row() {
        let l = RunLayout {
            pixel: PixelType::U16,
            module_shape: [4, 8],
            grid: [2, 3],
            chunking: Chunking::Frame,
            codec: Codec::None,
        };
        assert_eq!(l.modules(), 6);
        assert_eq!(l.image_shape(), [8, 24]);
        assert_eq!(l.tile_origin(0), [0, 0]);
        assert_eq!(l.tile_origin(2), [0, 16]);
        assert_eq!(l.tile_origin(4), [4, 8]);
        assert_eq!(l.chunk_shape(), [8, 24]);
        assert_eq!(l.all_modules(), 0b11_1111);
        let single = RunLayout { grid: [1, 1], ..l };
        assert_eq!(single.effective_chunking(), Chunking::Module);
    }
}
