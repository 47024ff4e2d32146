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
    threshold: u32,
}

fn u16_stats(bytes: &[u8], limits: &StatsLimits) -> FrameStats {
    // Out-of-range limits become values no pixel reaches (65536) or every pixel passes.
    let clamp = |v: f64| -> u32 {
        if v.is_nan() || v > 65_535.0 {
            65_536
        } else {
            v.max(0.0).ceil() as u32
        }
    };
    let l = U16Limits {
        masked: if limits.masked.fract() == 0.0 {
            clamp(limits.masked)
        } else {
            65_536
        },
        saturation: clamp(limits.saturation),
        // above: v > t, i.e. v >= floor(t) + 1; a negative threshold counts every pixel.
        threshold: if limits.threshold < 0.0 {
            0
        } else {
            clamp(limits.threshold.floor() + 1.0)
        },
    };
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2 (checked just above), all `u16_avx2` requires.
            return unsafe { u16_avx2(bytes, l) };
        }
    }
    u16_blocks(bytes, l)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn u16_avx2(bytes: &[u8], l: U16Limits) -> FrameStats {
    u16_blocks(bytes, l)
}

#[inline(always)]
fn u16_blocks(bytes: &[u8], l: U16Limits) -> FrameStats {
    // SAFETY: every bit pattern is a valid u16; `align_to` puts in `pixels` only what is
    // aligned for it, and the unaligned ends are taken byte-wise below.
    let (head, pixels, tail) = unsafe { bytes.align_to::<u16>() };
    if !head.is_empty() || cfg!(target_endian = "big") {
        // An odd start (never a pool buffer's): the plain way.
        let v = bytes
            .chunks_exact(2)
            .map(|c| f64::from(u16::from_le_bytes([c[0], c[1]])));
        let limits = StatsLimits {
            masked: f64::from(l.masked),
            saturation: f64::from(l.saturation),
            threshold: f64::from(l.threshold) - 1.0,
        };
        return generic(v, &limits);
    }
    debug_assert!(tail.len() < 2, "an odd byte is not a pixel");
    let mut s = FrameStats::default();
    let (mut sum, mut max) = (0u64, 0u32);
    for block in pixels.chunks(BLOCK) {
        let (mut bs, mut bm, mut sat, mut msk, mut above) = (0u32, 0u32, 0u32, 0u32, 0u32);
        for &p in block {
            let v = u32::from(p);
            let masked = v == l.masked;
            let kept = if masked { 0 } else { v };
            bs += kept;
            bm = bm.max(kept);
            msk += u32::from(masked);
            sat += u32::from(!masked & (v >= l.saturation));
            above += u32::from(!masked & (v >= l.threshold));
        }
        sum += u64::from(bs);
        max = max.max(bm);
        s.saturated += u64::from(sat);
        s.masked += u64::from(msk);
        s.above_threshold += u64::from(above);
    }
    s.sum = sum as f64;
    s.max = f64::from(max);
    s
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

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        #[test]
        fn the_fast_path_equals_the_plain_one(
            px in proptest::collection::vec(any::<u16>(), 0..140_000),
            sat in 0.0f64..70_000.0,
            thr in -2.0f64..70_000.0,
        ) {
            let l = limits(PixelType::U16, Some(sat), thr);
            let b = bytes(&px);
            let fast = frame_stats(&b, PixelType::U16, &l);
            let plain = generic(px.iter().map(|&v| f64::from(v)), &l);
            prop_assert_eq!(fast, plain);
        }
    }
}
