//! Which LZ4 parse each bit-transposed block of a chunk gets: LZ4's own search (lz4_flex) or
//! runs alone (`runs.rs`), chosen by trying both on a sample of the chunk's blocks.
//!
//! Runs alone is about twice as fast where a block's noisy bit planes are random bytes (a
//! photon-counting frame of a few counts per pixel and more), and there it makes chunks as
//! small as the search or smaller; on very sparse planes (a few single-bit bytes among zeros)
//! and on smooth images the search finds repeats runs miss (2 % and 19 % smaller chunks on
//! the frames measured, docs/BENCHMARKS.md). So every [`SAMPLE_EVERY`]th block is encoded
//! both ways and the blocks after it take the parse that gave the smaller output (the search
//! on a tie), until the next sample. Frames differ little from one block to the next, so the
//! chunk is about as small as the search alone would make it, at the cost of the second
//! encode on one block in 32.

use super::runs;

/// Blocks from one sample to the next (4 samples in a 1 MiB frame of 8 KiB blocks).
pub const SAMPLE_EVERY: usize = 32;
/// Room for LZ4's worst case of an 8 KiB block (lz4_flex's bound: 16 + 4 + 1.1 n).
const TRIAL_BYTES: usize = 9040;

/// The parse choice over one chunk's blocks.
pub struct BlockParse {
    block: usize,
    runs: bool,
    trial: [u8; TRIAL_BYTES],
}

impl BlockParse {
    /// For a new chunk: its first block is a sample.
    pub fn new() -> Self {
        Self {
            block: 0,
            runs: false,
            trial: [0; TRIAL_BYTES],
        }
    }

    /// Encodes the next block `src` (at most 8 KiB) into `dst` as one LZ4 block; `None` when
    /// `dst` is smaller than LZ4's bound for `src`.
    pub fn encode(&mut self, src: &[u8], dst: &mut [u8]) -> Option<usize> {
        let sample = self.block % SAMPLE_EVERY == 0;
        self.block += 1;
        if !sample {
            if self.runs {
                if let Some(c) = runs::encode(src, dst) {
                    return Some(c);
                }
            }
            return lz4_flex::block::compress_into(src, dst).ok();
        }
        let searched = lz4_flex::block::compress_into(src, dst).ok()?;
        // Runs only if strictly smaller: its room is one byte less than the search's output.
        let room = searched.saturating_sub(1).min(TRIAL_BYTES);
        self.runs = false;
        if let Some(c) = runs::encode(src, &mut self.trial[..room]) {
            dst[..c].copy_from_slice(&self.trial[..c]);
            self.runs = true;
            return Some(c);
        }
        Some(searched)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(block: &[u8], n: usize) -> Vec<u8> {
        let mut back = vec![0u8; n];
        assert_eq!(
            lz4_flex::block::decompress_into(block, &mut back).ok(),
            Some(n)
        );
        back
    }

    /// A block of one noisy plane of random bytes, then zeros (runs wins), or of a repeating
    /// 12-byte pattern (the search wins).
    fn block(kind: u8, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        let mut b = vec![0u8; 8192];
        for (i, v) in b[..2048].iter_mut().enumerate() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *v = if kind == 0 {
                x as u8
            } else {
                (i % 12 * 37) as u8
            };
        }
        b
    }

    #[test]
    fn the_sample_decides_the_blocks_after_it() {
        for kind in [0, 1] {
            let mut p = BlockParse::new();
            let mut dst = vec![0u8; TRIAL_BYTES];
            for i in 0..SAMPLE_EVERY as u64 + 2 {
                let src = block(kind, i + 1);
                let c = p.encode(&src, &mut dst).unwrap();
                assert_eq!(decode(&dst[..c], src.len()), src);
                let mut l = vec![0u8; TRIAL_BYTES];
                let lz4 = lz4_flex::block::compress_into(&src, &mut l).unwrap();
                assert_eq!(p.runs, kind == 0, "kind {kind}");
                if i == 0 || i == SAMPLE_EVERY as u64 {
                    assert!(c <= lz4, "a sample takes the smaller");
                }
            }
        }
    }

    #[test]
    fn a_destination_below_the_bound_is_refused() {
        let mut p = BlockParse::new();
        assert_eq!(p.encode(&block(0, 3), &mut [0u8; 100]), None);
    }
}
