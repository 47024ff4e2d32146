//! The statistics of 16-bit pixels, the common case: AVX2 passes over 4096-pixel pieces (a
//! quick one for small values, a full one for the rest) and the plain way in lanes for a CPU
//! without AVX2.

use detingest_writer::StatsLimits;

/// Pixels summed in 32-bit lanes before they are added to the 64-bit total: 65535 x 65536
/// still fits.
const BLOCK: usize = 65_536;

/// 16-bit pixels into `part`: in place with AVX2 when the CPU has it, else the plain way in
/// lanes; `false` (nothing added) when they are not aligned (a pool buffer's always are).
pub(crate) fn u16_stats(bytes: &[u8], l: U16Limits, part: &mut U16Part) -> bool {
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

/// The limits as 16-bit values; a limit beyond the type's range catches nothing.
#[derive(Clone, Copy)]
pub(crate) struct U16Limits {
    pub(crate) masked: u32,
    pub(crate) saturation: u32,
    /// `above_threshold` counts `v >= threshold` (the limit's `v > t` for integers).
    pub(crate) threshold: u32,
}

impl U16Limits {
    pub(crate) fn of(limits: &StatsLimits) -> Self {
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
pub(crate) struct U16Part {
    pub(crate) sum: u64,
    pub(crate) max: u32,
    pub(crate) saturated: u64,
    pub(crate) masked: u64,
    pub(crate) above: u64,
}

/// Pixels of a piece: 8 KiB, in L1 between a piece's two passes.
#[cfg(target_arch = "x86_64")]
const PIECE: usize = 4096;

/// 16 pixels at a time in AVX2 registers, a 4096-pixel piece at a time. Most pieces of a
/// frame hold only small values (background, weak spots): the quick pass (`quick_piece`,
/// 4 or 5 operations a vector) adds them in 16-bit lanes and keeps their max and the count
/// above the threshold. A piece with a pixel of 4096 or more (the masked value 65535 among
/// them) is given up at the 512 pixels that hold it, one at or above the saturation value at
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

/// The 32 bytes of `x`, in lane order.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
fn lane_bytes(x: std::arch::x86_64::__m256i) -> [u8; 32] {
    let mut out = [0u8; 32];
    // SAFETY: `out` is 32 bytes, the 32 bytes written.
    unsafe { std::arch::x86_64::_mm256_storeu_si256(out.as_mut_ptr().cast(), x) };
    out
}

/// The sum of the eight 32-bit lanes of `x`, signed.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
fn lanes_total(x: std::arch::x86_64::__m256i) -> i64 {
    let bytes = lane_bytes(x);
    let lanes = bytes.chunks_exact(4);
    lanes
        .map(|c| i64::from(i32::from_le_bytes([c[0], c[1], c[2], c[3]])))
        .sum()
}

/// The largest of the sixteen 16-bit lanes of `x`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
fn lanes_max(x: std::arch::x86_64::__m256i) -> u32 {
    let bytes = lane_bytes(x);
    let lanes = bytes
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]));
    u32::from(lanes.max().unwrap_or(0))
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
