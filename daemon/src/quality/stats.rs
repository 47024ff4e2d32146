//! Per-frame statistics, taken by the compression worker on the pixels it is about to encode
//! (they were just written by the source, so mostly in cache): the sum, the largest pixel,
//! and the pixels saturated, masked and above a threshold. Pixels at the masked value count
//! only as masked. No allocation; 16-bit pixels (the common case) are taken with AVX2 when the
//! CPU has it, a 4096-pixel piece at a time: a quick pass for pieces of small values (most of
//! a frame), a full one for the rest.

use detingest_shm::PixelType;
use detingest_writer::{FrameStats, StatsLimits};

/// Pixels summed in 32-bit lanes before they are added to the 64-bit total: 65535 x 65536
/// still fits.
const BLOCK: usize = 65_536;

/// The limits for pixels of `pixel`: masked at the type's largest value (unsigned; how
/// DECTRIS and Jungfraujoch mark masked pixels), `i32::MIN` (signed) or NaN (float);
/// saturated at or above `saturation` (default: the type's largest); `threshold` as given.
pub fn limits(pixel: PixelType, saturation: Option<f64>, threshold: f64) -> StatsLimits {
    let masked = match pixel {
        PixelType::I32 => f64::from(i32::MIN),
        PixelType::F32 => f64::NAN,
        p => p.max_value(),
    };
    StatsLimits {
        masked,
        saturation: saturation.unwrap_or(pixel.max_value()),
        threshold,
    }
}

/// The statistics of `bytes`, little-endian pixels of `pixel`.
pub fn frame_stats(bytes: &[u8], pixel: PixelType, limits: &StatsLimits) -> FrameStats {
    let mut pass = StatsPass::new(pixel, limits);
    pass.add(bytes);
    pass.finish()
}

/// The statistics of a frame taken piece by piece as the codec reads it
/// (`Codec::compress_seeing`): [`StatsPass::add`] each piece (whole pixels, in any order),
/// then [`StatsPass::finish`].
pub struct StatsPass {
    pixel: PixelType,
    limits: StatsLimits,
    /// The limits as 16-bit pixels meet them.
    limits16: U16Limits,
    /// 16-bit pixels taken the fast way.
    u16: U16Part,
    u16_pixels: u64,
    /// Every other pixel, one at a time.
    plain: FrameStats,
}

impl StatsPass {
    /// A pass over pixels of `pixel` against `limits`.
    pub fn new(pixel: PixelType, limits: &StatsLimits) -> Self {
        Self {
            pixel,
            limits: *limits,
            limits16: U16Limits::of(limits),
            u16: U16Part::default(),
            u16_pixels: 0,
            plain: FrameStats {
                max: f64::NEG_INFINITY,
                ..FrameStats::default()
            },
        }
    }

    /// Adds `bytes`, little-endian pixels.
    pub fn add(&mut self, bytes: &[u8]) {
        let l = &self.limits;
        let p = &mut self.plain;
        match self.pixel {
            PixelType::U16 => {
                if u16_stats(bytes, self.limits16, &mut self.u16) {
                    self.u16_pixels += (bytes.len() / 2) as u64;
                } else {
                    let v = bytes
                        .chunks_exact(2)
                        .map(|c| u16::from_le_bytes([c[0], c[1]]));
                    plain(v.map(f64::from), l, p);
                }
            }
            PixelType::U8 => plain(bytes.iter().map(|&b| f64::from(b)), l, p),
            PixelType::U32 => plain(
                bytes
                    .chunks_exact(4)
                    .map(|c| f64::from(u32::from_le_bytes([c[0], c[1], c[2], c[3]]))),
                l,
                p,
            ),
            PixelType::I32 => plain(
                bytes
                    .chunks_exact(4)
                    .map(|c| f64::from(i32::from_le_bytes([c[0], c[1], c[2], c[3]]))),
                l,
                p,
            ),
            PixelType::F32 => plain(
                bytes
                    .chunks_exact(4)
                    .map(|c| f64::from(f32::from_le_bytes([c[0], c[1], c[2], c[3]]))),
                l,
                p,
            ),
        }
    }

    /// The frame's statistics.
    pub fn finish(self) -> FrameStats {
        let (p, u) = (self.plain, self.u16);
        let mut max = p.max;
        if self.u16_pixels > u.masked {
            max = max.max(f64::from(u.max));
        }
        FrameStats {
            sum: p.sum + u.sum as f64,
            max: if max == f64::NEG_INFINITY { 0.0 } else { max }, // no pixel counted
            saturated: p.saturated + u.saturated,
            masked: p.masked + u.masked,
            above_threshold: p.above_threshold + u.above,
        }
    }
}

/// 16-bit pixels into `part`: in place with AVX2 when the CPU has it, else the plain way in
/// lanes; `false` (nothing added) when they are not aligned (a pool buffer's always are).
fn u16_stats(bytes: &[u8], l: U16Limits, part: &mut U16Part) -> bool {
    // SAFETY: every bit pattern is a valid u16; `align_to` puts in `pixels` only what is
    // aligned for it; unaligned input is left to the caller.
    let (head, pixels, tail) = unsafe { bytes.align_to::<u16>() };
    if !(head.is_empty() && tail.is_empty() && cfg!(target_endian = "little")) {
        return false;
    }
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2 (checked just above), all `u16_avx2` needs.
        unsafe { u16_avx2(pixels, l, part) };
    } else {
        u16_blocks(pixels, l, part);
    }
    #[cfg(not(target_arch = "x86_64"))]
    u16_blocks(pixels, l, part);
    true
}

/// Any pixel type, one pixel at a time in f64 (exact for every integer type), into `s`
/// (whose max starts at minus infinity).
fn plain(values: impl Iterator<Item = f64>, limits: &StatsLimits, s: &mut FrameStats) {
    for v in values {
        // NaN is the float type's masked value (NaN == NaN is false).
        if v == limits.masked || (limits.masked.is_nan() && v.is_nan()) {
            s.masked += 1;
            continue;
        }
        s.sum += v;
        s.max = s.max.max(v);
        s.saturated += u64::from(v >= limits.saturation);
        s.above_threshold += u64::from(v > limits.threshold);
    }
}

/// [`plain`] over a whole frame (the tests' reference).
#[cfg(test)]
fn generic(values: impl Iterator<Item = f64>, limits: &StatsLimits) -> FrameStats {
    let mut s = FrameStats {
        max: f64::NEG_INFINITY,
        ..FrameStats::default()
    };
    plain(values, limits, &mut s);
    if s.max == f64::NEG_INFINITY {
        s.max = 0.0;
    }
    s
}

/// The limits as 16-bit values; a limit beyond the type's range catches nothing.
#[derive(Clone, Copy)]
struct U16Limits {
    masked: u32,
    saturation: u32,
    /// `above_threshold` counts `v >= threshold` (the limit's `v > t` for integers).
    threshold: u32,
}

impl U16Limits {
    fn of(limits: &StatsLimits) -> Self {
        // Out-of-range limits become values no pixel reaches (65536) or every pixel passes.
        let clamp = |v: f64| -> u32 {
            if v.is_nan() || v > 65_535.0 {
                65_536
            } else {
                v.max(0.0).ceil() as u32
            }
        };
        Self {
            masked: if limits.masked.fract() == 0.0 {
                clamp(limits.masked)
            } else {
                65_536
            },
            saturation: clamp(limits.saturation),
            // v > t, i.e. v >= floor(t) + 1; a negative threshold counts every pixel.
            threshold: if limits.threshold < 0.0 {
                0
            } else {
                clamp(limits.threshold.floor() + 1.0)
            },
        }
    }
}

/// What 16-bit pixels added up to so far.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
struct U16Part {
    sum: u64,
    max: u32,
    saturated: u64,
    masked: u64,
    above: u64,
}

/// Pixels of a piece: 8 KiB, in L1 between a piece's two passes.
#[cfg(target_arch = "x86_64")]
const PIECE: usize = 4096;

/// 16 pixels at a time in AVX2 registers, a 4096-pixel piece at a time. Most pieces of a
/// frame hold only small values (background, weak spots): the quick pass (`quick_piece`,
/// 4 or 5 operations a vector) adds them in 16-bit lanes and keeps their max and the count
/// above the threshold. A piece with a pixel of 4096 or more (the masked value 65535 among
/// them) is given up at the 256 pixels that hold it, one at or above the saturation value at
/// its end, and taken again, from L1, by the full pass (`full_piece`, 10 operations a vector).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn u16_avx2(pixels: &[u16], l: U16Limits, part: &mut U16Part) {
    if l.masked != 65_535 {
        return u16_blocks(pixels, l, part); // no such limits come from `limits`
    }
    let whole = pixels.len() / 16 * 16;
    let (vectors, rest) = pixels.split_at(whole);
    for piece in vectors.chunks(PIECE) {
        let p = quick_piece(piece, l).unwrap_or_else(|| full_piece(piece, l));
        part.sum += p.sum;
        part.max = part.max.max(p.max);
        part.saturated += p.saturated;
        part.masked += p.masked;
        part.above += p.above;
    }
    u16_blocks(rest, l, part);
}

/// The 16 pixels at `c` (a `chunks_exact(16)` piece, so the slicing check is compiled away).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
fn load16(c: &[u16]) -> std::arch::x86_64::__m256i {
    let c = &c[..16];
    // SAFETY: `c` is 16 u16 (sliced just above), the 32 bytes read; unaligned loads are
    // allowed.
    unsafe { std::arch::x86_64::_mm256_loadu_si256(c.as_ptr().cast()) }
}

/// The sum of the eight 32-bit lanes of `x`, signed.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
fn lanes_total(x: std::arch::x86_64::__m256i) -> i64 {
    let mut lanes = [0i32; 8];
    // SAFETY: `lanes` is 32 bytes, the 32 bytes written.
    unsafe { std::arch::x86_64::_mm256_storeu_si256(lanes.as_mut_ptr().cast(), x) };
    lanes.iter().map(|&v| i64::from(v)).sum()
}

/// The largest of the sixteen 16-bit lanes of `x`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
fn lanes_max(x: std::arch::x86_64::__m256i) -> u32 {
    let mut top = [0u16; 16];
    // SAFETY: `top` is 32 bytes, the 32 bytes written.
    unsafe { std::arch::x86_64::_mm256_storeu_si256(top.as_mut_ptr().cast(), x) };
    u32::from(top.iter().copied().max().unwrap_or(0))
}

/// The sum of the sixteen 16-bit counts in `x` (each at most a piece's 256 vectors).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
fn count_total(x: std::arch::x86_64::__m256i) -> u64 {
    use std::arch::x86_64::*;
    lanes_total(_mm256_madd_epi16(x, _mm256_set1_epi16(1))) as u64
}

/// A piece whose pixels are all below 4096 and the saturation value (so none is masked or
/// saturated), or `None` as soon as a group of 32 vectors shows one that is not: pixels
/// added in 16-bit lanes (each lane takes 16 pixels of a group: 16 x 4095 fits), then
/// widened into 32-bit lanes; the max; pixels at or above the threshold counted (with the
/// default threshold, the zeros, and the rest are above it).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn quick_piece(piece: &[u16], l: U16Limits) -> Option<U16Part> {
    let tv = std::arch::x86_64::_mm256_set1_epi16(l.threshold.min(65_535) as u16 as i16);
    let mut q = Quick::new();
    let whole = match l.threshold {
        1 => quick_groups::<ZEROS>(piece, tv, &mut q),
        0 => quick_groups::<NONE>(piece, tv, &mut q),
        t if t > 65_535 => quick_groups::<NONE>(piece, tv, &mut q),
        _ => quick_groups::<AT_LEAST>(piece, tv, &mut q),
    };
    let top = std::arch::x86_64::_mm256_max_epu16(q.top[0], q.top[1]);
    let max = lanes_max(top);
    if !whole || max >= l.saturation {
        return None;
    }
    let n = piece.len() as u64;
    let counted = count_total(q.counted[0]) + count_total(q.counted[1]);
    let above = match l.threshold {
        0 => n,
        1 => n - counted,
        t if t > 65_535 => 0,
        _ => counted,
    };
    Some(U16Part {
        sum: lanes_total(q.sums) as u64,
        max,
        saturated: 0,
        masked: 0,
        above,
    })
}

/// What the quick pass counts besides the sum and the max: nothing, the zeros, the pixels
/// at or above the threshold.
#[cfg(target_arch = "x86_64")]
const NONE: u8 = 0;
#[cfg(target_arch = "x86_64")]
const ZEROS: u8 = 1;
#[cfg(target_arch = "x86_64")]
const AT_LEAST: u8 = 2;

/// The quick pass's accumulators, two of the max and the count so that the two vectors of a
/// step do not wait on each other.
#[cfg(target_arch = "x86_64")]
struct Quick {
    top: [std::arch::x86_64::__m256i; 2],
    counted: [std::arch::x86_64::__m256i; 2],
    sums: std::arch::x86_64::__m256i,
}

#[cfg(target_arch = "x86_64")]
impl Quick {
    #[target_feature(enable = "avx2")]
    fn new() -> Self {
        let z = std::arch::x86_64::_mm256_setzero_si256();
        Self {
            top: [z; 2],
            counted: [z; 2],
            sums: z,
        }
    }
}

/// The quick pass over `piece`, 32 vectors a group, two a step; `false` at the first group
/// with a pixel of 4096 or more (its 16-bit sums may have wrapped).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn quick_groups<const COUNT: u8>(
    piece: &[u16],
    tv: std::arch::x86_64::__m256i,
    q: &mut Quick,
) -> bool {
    use std::arch::x86_64::*;
    let z = _mm256_setzero_si256();
    let (low, high) = (
        _mm256_set1_epi32(0xFFFF),
        _mm256_set1_epi16(0xF000u16 as i16),
    );
    let count = |counted: &mut __m256i, v: __m256i| match COUNT {
        ZEROS => *counted = _mm256_sub_epi16(*counted, _mm256_cmpeq_epi16(v, z)),
        AT_LEAST => {
            let at_or_above = _mm256_cmpeq_epi16(_mm256_max_epu16(v, tv), v);
            *counted = _mm256_sub_epi16(*counted, at_or_above);
        }
        _ => {}
    };
    for group in piece.chunks(32 * 16) {
        let (mut s0, mut s1) = (z, z);
        let pairs = group.chunks_exact(32);
        let odd = pairs.remainder(); // a piece is whole vectors, not always pairs
        for c in pairs {
            let (a, b) = (load16(&c[..16]), load16(&c[16..]));
            q.top[0] = _mm256_max_epu16(q.top[0], a);
            q.top[1] = _mm256_max_epu16(q.top[1], b);
            s0 = _mm256_add_epi16(s0, a);
            s1 = _mm256_add_epi16(s1, b);
            count(&mut q.counted[0], a);
            count(&mut q.counted[1], b);
        }
        if !odd.is_empty() {
            let a = load16(odd);
            q.top[0] = _mm256_max_epu16(q.top[0], a);
            s0 = _mm256_add_epi16(s0, a);
            count(&mut q.counted[0], a);
        }
        if _mm256_testz_si256(_mm256_or_si256(q.top[0], q.top[1]), high) == 0 {
            return false;
        }
        for s in [s0, s1] {
            q.sums = _mm256_add_epi32(q.sums, _mm256_and_si256(s, low));
            q.sums = _mm256_add_epi32(q.sums, _mm256_srli_epi32::<16>(s));
        }
    }
    true
}

/// Any piece, 10 operations a vector. Every pixel is counted and the masked ones (65535,
/// the only masked value a 16-bit stream has) taken out at the end: they add 65535 each to
/// the sum and are at or above every threshold. The max skips them by wrapping (`v + 1`
/// makes 65535 the smallest). The sum adds pairs with `vpmaddwd` on `v - 32768`, put right
/// at the end. Saturated pixels are counted in a second pass over the piece (still in L1)
/// only when its max reaches the saturation value.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn full_piece(piece: &[u16], l: U16Limits) -> U16Part {
    use std::arch::x86_64::*;
    let splat = |limit: u32| _mm256_set1_epi16(limit.min(65_535) as u16 as i16);
    let (sv, tv) = (splat(l.saturation), splat(l.threshold));
    let z = _mm256_setzero_si256();
    let (all, ones, bias) = (
        _mm256_set1_epi16(-1),
        _mm256_set1_epi16(1),
        _mm256_set1_epi16(i16::MIN),
    );
    let (mut top, mut pairs, mut cmask, mut cabove) = (z, z, z, z);
    for c in piece.chunks_exact(16) {
        let v = load16(c);
        top = _mm256_max_epu16(top, _mm256_add_epi16(v, ones));
        cmask = _mm256_sub_epi16(cmask, _mm256_cmpeq_epi16(v, all));
        let signed = _mm256_xor_si256(v, bias);
        pairs = _mm256_add_epi32(pairs, _mm256_madd_epi16(signed, ones));
        // v >= t exactly when max(v, t) == v; with t = 1, when v != 0.
        let above = if l.threshold == 1 {
            _mm256_xor_si256(_mm256_cmpeq_epi16(v, z), all)
        } else {
            _mm256_cmpeq_epi16(_mm256_max_epu16(v, tv), v)
        };
        cabove = _mm256_sub_epi16(cabove, above);
    }
    let n = piece.len() as u64;
    let masked = count_total(cmask);
    let piece_top = lanes_max(top); // max + 1 of the pixels that are not masked
    let mut saturated = 0;
    if l.saturation <= 65_535 && piece_top > l.saturation {
        let (mut csat, mut cm) = (z, z);
        for c in piece.chunks_exact(16) {
            let v = load16(c);
            csat = _mm256_sub_epi16(csat, _mm256_cmpeq_epi16(_mm256_max_epu16(v, sv), v));
            cm = _mm256_sub_epi16(cm, _mm256_cmpeq_epi16(v, all));
        }
        saturated = count_total(csat) - count_total(cm);
    }
    // Every pixel, biased by -32768 in the sum; masked ones out of every figure.
    let sum = (lanes_total(pairs) + 32_768 * n as i64) as u64 - masked * 65_535;
    let above = if l.threshold <= 65_535 {
        count_total(cabove) - masked
    } else {
        0
    };
    U16Part {
        sum,
        max: piece_top.saturating_sub(1),
        saturated,
        masked,
        above,
    }
}

#[inline(always)]
fn u16_blocks(pixels: &[u16], l: U16Limits, part: &mut U16Part) {
    // Lanes of 8 pixels side by side, one vector register per figure; a block's lane sums
    // stay within u32 (8192 x 65535 per lane).
    const LANES: usize = 8;
    for block in pixels.chunks(BLOCK) {
        let mut sum = [0u32; LANES];
        let mut max = [0u32; LANES];
        let mut sat = [0u32; LANES];
        let mut msk = [0u32; LANES];
        let mut above = [0u32; LANES];
        let lanes = block.chunks_exact(LANES);
        let rest = lanes.remainder();
        for c in lanes {
            for k in 0..LANES {
                let v = u32::from(c[k]);
                let masked = u32::from(v == l.masked);
                let keep = masked ^ 1;
                let kept = v & 0u32.wrapping_sub(keep); // v, or 0 when masked
                sum[k] += kept;
                max[k] = max[k].max(kept);
                msk[k] += masked;
                sat[k] += u32::from(v >= l.saturation) & keep;
                above[k] += u32::from(v >= l.threshold) & keep;
            }
        }
        for (k, &p) in rest.iter().enumerate() {
            let v = u32::from(p);
            let masked = u32::from(v == l.masked);
            let keep = masked ^ 1;
            let kept = v & 0u32.wrapping_sub(keep);
            sum[k % LANES] += kept;
            max[k % LANES] = max[k % LANES].max(kept);
            msk[k % LANES] += masked;
            sat[k % LANES] += u32::from(v >= l.saturation) & keep;
            above[k % LANES] += u32::from(v >= l.threshold) & keep;
        }
        part.sum += sum.iter().map(|&v| u64::from(v)).sum::<u64>();
        part.max = part.max.max(max.iter().copied().max().unwrap_or(0));
        part.saturated += sat.iter().map(|&v| u64::from(v)).sum::<u64>();
        part.masked += msk.iter().map(|&v| u64::from(v)).sum::<u64>();
        part.above += above.iter().map(|&v| u64::from(v)).sum::<u64>();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn bytes(px: &[u16]) -> Vec<u8> {
        px.iter().flat_map(|v| v.to_le_bytes()).collect()
    }

    #[test]
    fn masked_pixels_count_only_as_masked() {
        let l = limits(PixelType::U16, Some(1000.0), 10.0);
        let px = [0, 5, 11, 1000, 65535, 2000, 65535];
        let s = frame_stats(&bytes(&px), PixelType::U16, &l);
        assert_eq!(
            s,
            FrameStats {
                sum: 3016.0,
                max: 2000.0,
                saturated: 2,
                masked: 2,
                above_threshold: 3,
            }
        );
        let f: Vec<u8> = [1.5f32, f32::NAN, 3.0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let s = frame_stats(&f, PixelType::F32, &limits(PixelType::F32, None, 2.0));
        assert_eq!(
            (s.sum, s.max, s.masked, s.above_threshold),
            (4.5, 3.0, 1, 1)
        );
    }

    #[test]
    fn unaligned_pixels_give_the_same_figures() {
        let l = limits(PixelType::U16, Some(1000.0), 10.0);
        let px: Vec<u16> = (0..20_000u32)
            .map(|i| (i * 7919 % 70_000).min(65_535) as u16)
            .collect();
        let b = bytes(&px);
        let mut shifted = vec![0u8; 1];
        shifted.extend_from_slice(&b);
        assert_eq!(
            frame_stats(&shifted[1..], PixelType::U16, &l),
            frame_stats(&b, PixelType::U16, &l),
            "an odd start: the plain way"
        );
    }

    #[test]
    fn a_frame_taken_block_by_block_gives_the_same_figures() {
        // As a worker takes it: the codec's blocks (8 KiB for 16-bit pixels), then a tail.
        let px: Vec<u16> = (0..20_003u32)
            .map(|i| match i % 997 {
                0 => 65_535,
                5 => 5000,
                _ => (i * 7919 % 13) as u16,
            })
            .collect();
        let b = bytes(&px);
        let l = limits(PixelType::U16, Some(4000.0), 0.0);
        let whole = frame_stats(&b, PixelType::U16, &l);
        let mut pass = StatsPass::new(PixelType::U16, &l);
        for block in b.chunks(8192) {
            pass.add(block);
        }
        assert_eq!(pass.finish(), whole);
        // Other types, in pieces of whole pixels; a frame of masked pixels only has max 0.
        let i32s: Vec<u8> = [-7i32, -3, i32::MIN, -12]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let l = limits(PixelType::I32, None, -5.0);
        let mut pass = StatsPass::new(PixelType::I32, &l);
        pass.add(&i32s[..8]);
        pass.add(&i32s[8..]);
        let s = pass.finish();
        assert_eq!(
            (s.sum, s.max, s.masked, s.above_threshold),
            (-22.0, -3.0, 1, 1)
        );
        let masked = bytes(&[65_535; 64]);
        let s = frame_stats(&masked, PixelType::U16, &limits(PixelType::U16, None, 0.0));
        assert_eq!((s.max, s.masked, s.sum), (0.0, 64, 0.0));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        #[test]
        fn the_fast_path_equals_the_plain_one(
            // Masked, sparse and any values alike.
            px in proptest::collection::vec(
                prop_oneof![Just(65_535u16), 0u16..5, any::<u16>()],
                0..140_000,
            ),
            sat in prop_oneof![Just(3.0f64), 0.0f64..70_000.0],
            thr in prop_oneof![Just(0.0f64), -2.0f64..70_000.0],
        ) {
            let l = limits(PixelType::U16, Some(sat), thr);
            let b = bytes(&px);
            let fast = frame_stats(&b, PixelType::U16, &l);
            let plain = generic(px.iter().map(|&v| f64::from(v)), &l);
            prop_assert_eq!(fast, plain);
        }

        #[test]
        fn sparse_frames_with_a_few_large_pixels(
            // What detectors mostly send: small counts, a few pieces with a spot, a masked
            // or saturated pixel, a value that would overflow the quick pass's 16-bit lanes.
            mut px in proptest::collection::vec(0u16..8, 0..60_000),
            special in proptest::collection::vec(
                (any::<prop::sample::Index>(), prop_oneof![
                    Just(65_535u16), Just(4095), Just(4096), 8u16..4096, any::<u16>()
                ]),
                0..6,
            ),
            sat in prop_oneof![Just(65_535.0f64), Just(4000.0), 1.0f64..70_000.0],
            thr in prop_oneof![Just(0.0f64), Just(-1.0), Just(70_000.0), 0.0f64..5000.0],
        ) {
            for (at, v) in special {
                if !px.is_empty() {
                    let i = at.index(px.len());
                    px[i] = v;
                }
            }
            let l = limits(PixelType::U16, Some(sat), thr);
            let fast = frame_stats(&bytes(&px), PixelType::U16, &l);
            let plain = generic(px.iter().map(|&v| f64::from(v)), &l);
            prop_assert_eq!(fast, plain);
        }
    }
}
