//! An LZ4 block encoder that looks for nothing but runs of one byte value: the encoder for
//! bit-transposed blocks of sparse frames.
//!
//! A block of a sparse frame after bitshuffle is a few noisy low bit planes followed by planes
//! of zeros. General LZ4 hashes every position of the noisy planes looking for repeats that
//! are, in such data, almost only runs (of zeros); this encoder finds the runs with a bitmap of
//! "byte equals the next one" (16 bytes per compare) and emits each as a match: a run of zeros
//! from the longest stretch of zeros already seen (offset to it), any other run as its first
//! byte and a match at offset 1. Everything else is literals. The output is an ordinary LZ4
//! block (any LZ4 decoder reads it, the C bitshuffle filter among them).
//!
//! Bytes that are neither runs nor random (a pattern that repeats with a longer period, an
//! image's structure in its middle bit planes, the few byte values of a very sparse plane) are
//! literals here where LZ4 finds some of them: `block_parse.rs` decides which blocks get which.

/// LZ4's shortest match.
const MIN_MATCH: usize = 4;
/// LZ4: the last 5 bytes of a block are literals.
const LAST_LITERALS: usize = 5;
/// LZ4: the last match starts at least 12 bytes before the end of the block.
const MF_LIMIT: usize = 12;
/// Largest block handled (bitshuffle's blocks are at most 8 KiB): the bitmap's words.
const MAX_BLOCK: usize = 8192;
const WORDS: usize = MAX_BLOCK / 64 + 1;

/// Encodes `src` (at most 8 KiB) as one LZ4 block into `dst`; `None` if it does not fit in
/// `dst` (what was written there is then meaningless) or `src` is larger.
pub fn encode(src: &[u8], dst: &mut [u8]) -> Option<usize> {
    let n = src.len();
    if n > MAX_BLOCK {
        return None;
    }
    let mut out = Out { dst, pos: 0 };
    if n < MF_LIMIT + 1 {
        out.last(src)?;
        return Some(out.pos);
    }
    let mut eq = [0u64; WORDS];
    equal_to_next(src, &mut eq);
    let bits = Bits { eq: &eq, n: n - 1 };
    // The first byte not yet emitted, and where to look for the next run.
    let (mut lit_start, mut from) = (0, 0);
    // The longest stretch of zeros seen (any earlier range of the input is a match source).
    let (mut zero_at, mut zero_len) = (0, 0);
    let match_start_limit = n - MF_LIMIT;
    let match_end_limit = n - LAST_LITERALS;
    while let Some(j) = bits.next_run(from) {
        if j > match_start_limit {
            break;
        }
        let end = bits.next_unequal(j) + 1; // the run is j..end
        let run = end - j;
        from = end;
        let value = src[j];
        // A zero run as a whole from an earlier stretch, else its first byte as a literal
        // and the rest at offset 1.
        let (start, offset) = if value == 0 && zero_len >= run.min(match_end_limit - j) {
            (j, j - zero_at)
        } else {
            (j + 1, 1)
        };
        let len = end.min(match_end_limit) - start;
        if value == 0 && run > zero_len {
            (zero_at, zero_len) = (j, run);
        }
        if len < MIN_MATCH || start > match_start_limit || offset > u16::MAX as usize {
            continue; // stays literals
        }
        out.sequence(&src[lit_start..start], len, offset as u16)?;
        lit_start = start + len;
        from = from.max(lit_start);
    }
    out.last(&src[lit_start..])?;
    Some(out.pos)
}

/// Sets bit `i` of `eq` when `src[i] == src[i + 1]`, for `i < src.len() - 1`.
fn equal_to_next(src: &[u8], eq: &mut [u64; WORDS]) {
    let n = src.len();
    let mut i = 0;
    #[cfg(target_arch = "x86_64")]
    {
        // A whole word from registers: one store, no read-modify-write chain through memory.
        while i + 65 <= n {
            // SAFETY: `i + 48 + 17 <= n`: every call's bytes lie inside `src`.
            eq[i / 64] = unsafe {
                x86::equal_to_next_16(src, i)
                    | x86::equal_to_next_16(src, i + 16) << 16
                    | x86::equal_to_next_16(src, i + 32) << 32
                    | x86::equal_to_next_16(src, i + 48) << 48
            };
            i += 64;
        }
        while i + 17 <= n {
            // i is a multiple of 16, so the 16 bits sit inside one word.
            // SAFETY: `i + 17 <= n`.
            eq[i / 64] |= unsafe { x86::equal_to_next_16(src, i) } << (i % 64);
            i += 16;
        }
    }
    while i + 1 < n {
        eq[i / 64] |= u64::from(src[i] == src[i + 1]) << (i % 64);
        i += 1;
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::{_mm_cmpeq_epi8, _mm_loadu_si128, _mm_movemask_epi8};

    /// 16 bits: bit `k` set when `src[at + k] == src[at + k + 1]`.
    ///
    /// # Safety
    /// `at + 17 <= src.len()`.
    #[inline(always)]
    pub(super) unsafe fn equal_to_next_16(src: &[u8], at: usize) -> u64 {
        debug_assert!(at + 17 <= src.len());
        // SAFETY: SSE2 is part of x86-64; the caller keeps `at + 17 <= src.len()`, so both
        // 16-byte loads lie inside `src`, and loadu needs no alignment.
        unsafe {
            let a = _mm_loadu_si128(src.as_ptr().add(at).cast());
            let b = _mm_loadu_si128(src.as_ptr().add(at + 1).cast());
            _mm_movemask_epi8(_mm_cmpeq_epi8(a, b)) as u16 as u64
        }
    }
}

/// The bitmap of [`equal_to_next`] over `n` positions.
struct Bits<'a> {
    eq: &'a [u64; WORDS],
    n: usize,
}

impl Bits<'_> {
    /// Bits `64 k ..` of the bitmap and the next 2 bits: word `k` as a u128.
    fn window(&self, k: usize) -> u128 {
        u128::from(self.eq[k]) | u128::from(self.eq.get(k + 1).copied().unwrap_or(0)) << 64
    }

    /// The first `j >= from` where bytes `j..j + 4` are equal (three equal-to-next bits).
    fn next_run(&self, from: usize) -> Option<usize> {
        let mut k = from / 64;
        let mut skip = from % 64;
        while k * 64 < self.n {
            let w = self.window(k);
            let starts = (w & w >> 1 & w >> 2) as u64 >> skip << skip;
            if starts != 0 {
                let j = k * 64 + starts.trailing_zeros() as usize;
                return (j + 2 < self.n).then_some(j);
            }
            k += 1;
            skip = 0;
        }
        None
    }

    /// The first `i >= from` whose byte differs from the next one (or the last byte).
    fn next_unequal(&self, from: usize) -> usize {
        let mut k = from / 64;
        let mut skip = from % 64;
        while k * 64 < self.n {
            let unequal = !self.eq[k] >> skip << skip;
            if unequal != 0 {
                return (k * 64 + unequal.trailing_zeros() as usize).min(self.n);
            }
            k += 1;
            skip = 0;
        }
        self.n
    }
}

/// The LZ4 block being written.
struct Out<'a> {
    dst: &'a mut [u8],
    pos: usize,
}

impl Out<'_> {
    fn byte(&mut self, b: u8) -> Option<()> {
        *self.dst.get_mut(self.pos)? = b;
        self.pos += 1;
        Some(())
    }

    /// A length's bytes after its token nibble of 15.
    fn length(&mut self, mut rest: usize) -> Option<()> {
        while rest >= 255 {
            self.byte(255)?;
            rest -= 255;
        }
        self.byte(rest as u8)
    }

    fn literals(&mut self, lits: &[u8]) -> Option<()> {
        if lits.len() >= 15 {
            self.length(lits.len() - 15)?;
        }
        let end = self.pos + lits.len();
        self.dst.get_mut(self.pos..end)?.copy_from_slice(lits);
        self.pos = end;
        Some(())
    }

    /// Literals followed by a match of `len` (>= 4) bytes at `offset`.
    fn sequence(&mut self, lits: &[u8], len: usize, offset: u16) -> Option<()> {
        let m = len - MIN_MATCH;
        self.byte((lits.len().min(15) as u8) << 4 | m.min(15) as u8)?;
        self.literals(lits)?;
        self.byte(offset as u8)?;
        self.byte((offset >> 8) as u8)?;
        if m >= 15 {
            self.length(m - 15)?;
        }
        Some(())
    }

    /// The block's closing literals.
    fn last(&mut self, lits: &[u8]) -> Option<()> {
        self.byte((lits.len().min(15) as u8) << 4)?;
        self.literals(lits)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn round_trip(src: &[u8]) -> usize {
        let mut dst = vec![0u8; lz4_flex::block::get_maximum_output_size(src.len())];
        let c = encode(src, &mut dst).expect("fits LZ4's bound");
        let mut back = vec![0u8; src.len()];
        let got = lz4_flex::block::decompress_into(&dst[..c], &mut back).expect("valid LZ4");
        assert_eq!((got, &back[..]), (src.len(), src));
        c
    }

    #[test]
    fn a_sparse_block_is_mostly_matches() {
        // Two noisy bit planes (one byte in three and one in forty set, at random), then zeros.
        let mut b = vec![0u8; 8192];
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for (i, v) in b[..1024].iter_mut().enumerate() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            if x % if i < 512 { 3 } else { 40 } == 0 {
                *v = (x >> 32) as u8 | 1;
            }
        }
        let c = round_trip(&b);
        let mut l = vec![0u8; lz4_flex::block::get_maximum_output_size(b.len())];
        let lz4 = lz4_flex::block::compress_into(&b, &mut l).unwrap();
        assert!(c * 100 <= lz4 * 101, "{c} > LZ4's {lz4} + 1 %");
    }

    #[test]
    fn blocks_at_the_length_limits() {
        for n in [
            0, 1, 5, 12, 13, 14, 16, 17, 18, 31, 64, 65, 127, 128, 8191, 8192,
        ] {
            round_trip(&vec![0u8; n]);
            round_trip(&vec![7u8; n]);
            let ramp: Vec<u8> = (0..n).map(|i| i as u8).collect();
            round_trip(&ramp);
        }
    }

    #[test]
    fn a_block_that_does_not_fit_is_refused() {
        let ramp: Vec<u8> = (0..8192).map(|i| (i * 7 % 256) as u8).collect();
        assert_eq!(encode(&ramp, &mut [0u8; 8192]), None);
        assert_eq!(encode(&[0u8; 8192], &mut [0u8; 16]), None);
        assert!(encode(&[0u8; 8192], &mut [0u8; 64]).is_some());
        assert_eq!(
            encode(&[0u8; 8193], &mut [0u8; 9000]),
            None,
            "larger than 8 KiB"
        );
    }

    proptest! {
        #[test]
        fn round_trips_runs_and_noise(
            parts in proptest::collection::vec((any::<u8>(), 0usize..300, any::<bool>()), 0..60),
            cut in 0usize..8192,
        ) {
            let mut b = Vec::new();
            for (v, len, noise) in parts {
                if noise {
                    b.extend((0..len).map(|i| v.wrapping_mul(i as u8 | 1)));
                } else {
                    b.extend(std::iter::repeat_n(v, len));
                }
            }
            b.truncate(cut.min(8192));
            round_trip(&b);
        }
    }
}
