//! Per-frame statistics, taken by the compression worker on the pixels it is about to encode
//! (they were just written by the source, so mostly in cache): the sum, the largest pixel,
//! and the pixels saturated, masked and above a threshold. Pixels at the masked value count
//! only as masked. One pass, no allocation; 16-bit pixels (the common case) are summed in
//! 32-bit lanes a block at a time so the loop vectorises (AVX2 when the CPU has it).

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
    match pixel {
        PixelType::U16 => u16_stats(bytes, limits),
        PixelType::U8 => generic(bytes.iter().map(|&b| f64::from(b)), limits),
        PixelType::U32 => generic(
            bytes
                .chunks_exact(4)
                .map(|c| f64::from(u32::from_le_bytes([c[0], c[1], c[2], c[3]]))),
            limits,
        ),
        PixelType::I32 => generic(
            bytes
                .chunks_exact(4)
                .map(|c| f64::from(i32::from_le_bytes([c[0], c[1], c[2], c[3]]))),
            limits,
        ),
        PixelType::F32 => generic(
            bytes
                .chunks_exact(4)
                .map(|c| f64::from(f32::from_le_bytes([c[0], c[1], c[2], c[3]]))),
            limits,
        ),
    }
}

/// 16-bit pixels: in place with AVX2 when the CPU has it and the pixels are aligned (a pool
/// buffer's always are), else one at a time.
fn u16_stats(bytes: &[u8], limits: &StatsLimits) -> FrameStats {
    let l = U16Limits::of(limits);
    // SAFETY: every bit pattern is a valid u16; `align_to` puts in `pixels` only what is
    // aligned for it; unaligned input is taken the plain way below.
    let (head, pixels, tail) = unsafe { bytes.align_to::<u16>() };
    if !(head.is_empty() && tail.is_empty() && cfg!(target_endian = "little")) {
        let v = bytes
            .chunks_exact(2)
            .map(|c| f64::from(u16::from_le_bytes([c[0], c[1]])));
        return generic(v, limits);
    }
    let mut part = U16Part::default();
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2 (checked just above), all `u16_avx2` needs.
        unsafe { u16_avx2(pixels, l, &mut part) };
    } else {
        u16_blocks(pixels, l, &mut part);
    }
    #[cfg(not(target_arch = "x86_64"))]
    u16_blocks(pixels, l, &mut part);
    FrameStats {
        sum: part.sum as f64,
        max: f64::from(part.max),
        saturated: part.saturated,
        masked: part.masked,
        above_threshold: part.above,
    }
}

/// Any pixel type, one pixel at a time in f64 (exact for every integer type).
fn generic(values: impl Iterator<Item = f64>, limits: &StatsLimits) -> FrameStats {
    let mut s = FrameStats {
        max: f64::NEG_INFINITY,
        ..FrameStats::default()
    };
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
    if s.max == f64::NEG_INFINITY {
        s.max = 0.0; // no pixel counted
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

/// 16 pixels at a time in AVX2 registers, 10 operations a vector. Every pixel is counted
/// and the masked ones (65535, the only masked value a 16-bit stream has) taken out at the
/// end: they add 65535 each to the sum and are at or above every threshold. The max skips
/// them by wrapping (`v + 1` makes 65535 the smallest). The sum adds pairs with `vpmaddwd` on
/// `v - 32768`, put right at the end. Saturated pixels are counted in a second pass over a
/// 4096-pixel piece (still in L1) only when the piece's max reaches the saturation value.
/// With the default threshold (0) the pixels above it are those that are not 0.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn u16_avx2(pixels: &[u16], l: U16Limits, part: &mut U16Part) {
    use std::arch::x86_64::*;
    if l.masked != 65_535 {
        return u16_blocks(pixels, l, part); // no such limits come from `limits`
    }
    const PIECE: usize = 4096; // pixels: 8 KiB, 256 vectors
    let whole = pixels.len() / 16 * 16;
    let (vectors, rest) = pixels.split_at(whole);
    let splat = |limit: u32| _mm256_set1_epi16(limit.min(65_535) as u16 as i16);
    let (sv, tv) = (splat(l.saturation), splat(l.threshold));
    let nonzero = l.threshold == 1;
    let z = _mm256_setzero_si256();
    let (all, ones, bias) = (
        _mm256_set1_epi16(-1),
        _mm256_set1_epi16(1),
        _mm256_set1_epi16(i16::MIN),
    );
    // Every caller passes a `chunks_exact(16)` piece, for which the slicing check is known
    // to pass and compiled away.
    let load = |c: &[u16]| {
        let c = &c[..16];
        // SAFETY: `c` is 16 u16 (sliced just above), the 32 bytes read; unaligned loads are
        // allowed.
        unsafe { _mm256_loadu_si256(c.as_ptr().cast::<__m256i>()) }
    };
    let mut lanes = [0i32; 8];
    let mut total = |x: __m256i| -> i64 {
        // SAFETY: `lanes` is 32 bytes, the 32 bytes written.
        unsafe { _mm256_storeu_si256(lanes.as_mut_ptr().cast(), x) };
        lanes.iter().map(|&v| i64::from(v)).sum()
    };
    let hmax = |x: __m256i| -> u32 {
        let mut top = [0u16; 16];
        // SAFETY: `top` is 32 bytes, the 32 bytes written.
        unsafe { _mm256_storeu_si256(top.as_mut_ptr().cast(), x) };
        u32::from(top.iter().copied().max().unwrap_or(0))
    };
    let count = |x: __m256i| _mm256_madd_epi16(x, ones); // 16-bit counts, in pairs
    let (mut sum, mut top) = (0i64, 0u32);
    let (mut n, mut nmask, mut nabove, mut nsat) = (0u64, 0u64, 0u64, 0i64);
    // 4096 vectors a block: 16-bit counts and 32-bit pair sums cannot overflow in one.
    for block in vectors.chunks(16 * 4096) {
        let (mut pairs, mut cmask, mut cabove) = (z, z, z);
        for piece in block.chunks(PIECE) {
            let mut pmax = z;
            for c in piece
                .chunks_exact(16)
                .filter_map(|c| <&[u16; 16]>::try_from(c).ok())
            {
                let v = load(c);
                pmax = _mm256_max_epu16(pmax, _mm256_add_epi16(v, ones));
                cmask = _mm256_sub_epi16(cmask, _mm256_cmpeq_epi16(v, all));
                let signed = _mm256_xor_si256(v, bias);
                pairs = _mm256_add_epi32(pairs, _mm256_madd_epi16(signed, ones));
                // v >= t exactly when max(v, t) == v; with t = 1, when v != 0.
                let above = if nonzero {
                    _mm256_xor_si256(_mm256_cmpeq_epi16(v, z), all)
                } else {
                    _mm256_cmpeq_epi16(_mm256_max_epu16(v, tv), v)
                };
                cabove = _mm256_sub_epi16(cabove, above);
            }
            let piece_top = hmax(pmax); // max + 1 of the pixels that are not masked
            top = top.max(piece_top);
            if l.saturation <= 65_535 && piece_top > l.saturation {
                let (mut csat, mut cm) = (z, z);
                for c in piece
                    .chunks_exact(16)
                    .filter_map(|c| <&[u16; 16]>::try_from(c).ok())
                {
                    let v = load(c);
                    csat = _mm256_sub_epi16(csat, _mm256_cmpeq_epi16(_mm256_max_epu16(v, sv), v));
                    cm = _mm256_sub_epi16(cm, _mm256_cmpeq_epi16(v, all));
                }
                nsat += total(count(csat)) - total(count(cm));
            }
        }
        sum += total(pairs);
        nmask += total(count(cmask)) as u64;
        nabove += total(count(cabove)) as u64;
        n += block.len() as u64;
    }
    // Every pixel, biased by -32768 in the sum; masked ones out of every figure.
    part.sum += (sum + 32_768 * n as i64) as u64 - nmask * 65_535;
    part.masked += nmask;
    part.saturated += nsat as u64;
    if l.threshold <= 65_535 {
        part.above += nabove - nmask;
    }
    part.max = part.max.max(top.saturating_sub(1));
    u16_blocks(rest, l, part);
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
    }
}
