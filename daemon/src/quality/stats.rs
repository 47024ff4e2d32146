//! Per-frame statistics, taken by the compression worker on the pixels as it encodes them
//! (each block just after the codec's transpose read it, so from L1): the sum, the largest pixel,
//! and the pixels saturated, masked and above a threshold. Pixels at the masked value count
//! only as masked. No allocation. A worker takes them block by block as the codec reads
//! ([`StatsPass::add_noted`]): a block of 16-bit pixels all below 256 from what the AVX2
//! transpose noted of it, others with AVX2 when the CPU has it, a 4096-pixel piece at a time:
//! a quick pass for pieces of small values, a full one for the rest.

use detingest_shm::PixelType;
use detingest_writer::{FrameStats, LowBytes, StatsLimits};

use super::stats16::{u16_stats, U16Limits, U16Part};

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
/// (`Codec::compress_seeing`): [`StatsPass::add_noted`] (or [`StatsPass::add`]) each piece
/// (whole pixels, in any order), then [`StatsPass::finish`].
pub struct StatsPass {
    pixel: PixelType,
    limits: StatsLimits,
    /// The limits as 16-bit pixels meet them.
    limits16: U16Limits,
    /// Whether what the transpose notes of a block of pixels below 256 is all the limits
    /// need of it (no saturation value below 256, threshold 0, 1 or beyond 255).
    notes_serve: bool,
    /// 16-bit pixels taken the fast way.
    u16: U16Part,
    u16_pixels: u64,
    /// Every other pixel, one at a time.
    plain: FrameStats,
}

impl StatsPass {
    /// A pass over pixels of `pixel` against `limits`.
    pub fn new(pixel: PixelType, limits: &StatsLimits) -> Self {
        let limits16 = U16Limits::of(limits);
        Self {
            pixel,
            limits: *limits,
            limits16,
            notes_serve: pixel == PixelType::U16
                && limits16.saturation > 255
                && matches!(limits16.threshold, 0 | 1 | 256..),
            u16: U16Part::default(),
            u16_pixels: 0,
            plain: FrameStats {
                max: f64::NEG_INFINITY,
                ..FrameStats::default()
            },
        }
    }

    /// Adds a piece the codec read, with what its transpose noted of it (16-bit pixels all
    /// below 256: their sum, max and zeros), which spares a pass over the pixels when the
    /// limits leave nothing else to count in them.
    pub fn add_noted(&mut self, bytes: &[u8], noted: Option<LowBytes>) {
        match noted {
            Some(low) if self.notes_serve => {
                let n = (bytes.len() / 2) as u64;
                self.u16.sum += low.sum;
                self.u16.max = self.u16.max.max(u32::from(low.max));
                self.u16.above += match self.limits16.threshold {
                    0 => n,
                    1 => n - low.zeros,
                    _ => 0,
                };
                self.u16_pixels += n;
            }
            _ => self.add(bytes),
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
        // Through the codec, with what its transpose notes of small blocks, for each limit
        // the notes can serve and some they cannot.
        let px: Vec<u16> = (0..20_003u32)
            .map(|i| match i % 4999 {
                0 => 300,
                _ if i < 12_288 => (i * 7919 % 5) as u16, // three small blocks
                _ => (i % 1000) as u16,
            })
            .collect();
        let b = bytes(&px);
        for (sat, thr) in [
            (None, 0.0),
            (None, -1.0),
            (None, 300.0),
            (Some(200.0), 0.0),
            (None, 2.0),
        ] {
            let l = limits(PixelType::U16, sat, thr);
            let mut pass = StatsPass::new(PixelType::U16, &l);
            let codec = detingest_writer::Codec::BitshuffleLz4;
            let mut out = vec![0u8; codec.max_compressed_len(b.len(), 2)];
            codec
                .compress_seeing(&b, 2, &mut out, &mut |piece, noted| {
                    pass.add_noted(piece, noted)
                })
                .unwrap();
            assert_eq!(
                pass.finish(),
                frame_stats(&b, PixelType::U16, &l),
                "{sat:?} {thr}"
            );
        }
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
