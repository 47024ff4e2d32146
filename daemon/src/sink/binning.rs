//! Decodes a preview (assembling its modules) and shrinks it to fit a message (a Kafka
//! `ad00`, the live page's image): the smallest integer factor `f` whose binned image fits, each output pixel the
//! largest of its `f x f` block (a Bragg spot or a hot pixel survives binning; a mean would
//! wash it out). Edges that do not fill a block are dropped.

use detingest_shm::PixelType;

use super::assembly::{assemble, AssemblyScratch, Decode, Placement, PreviewLayout};
use crate::stream::StreamInfo;

/// The buffers previews are decoded and binned into, kept from one preview to the next.
#[derive(Debug, Default)]
pub struct Scratch {
    assembly: AssemblyScratch,
    pixels: Vec<u8>,
    binned: Vec<u8>,
}

/// A preview fitted to a size: its shape, the binning factor and the pixels.
#[derive(Debug)]
pub struct Fitted<'a> {
    /// `[ny, nx]` after binning.
    pub shape: [u32; 2],
    /// The binning factor (1: none).
    pub factor: u32,
    /// Little-endian pixels, row after row.
    pub pixels: &'a [u8],
}

impl Scratch {
    /// The preview (`layout`, `bytes`) of a stream of `info`, assembled as `placement` lays
    /// it out and binned to fit `max_bytes`; `None` when a part does not decode.
    pub fn fit(
        &mut self,
        info: &StreamInfo,
        (layout, bytes): (&PreviewLayout, &[u8]),
        placement: Placement,
        max_bytes: usize,
    ) -> Option<Fitted<'_>> {
        let es = info.pixel.size();
        let how = Decode {
            codec: info.codec,
            pixel: info.pixel,
            placement,
        };
        if !assemble(layout, bytes, how, &mut self.assembly, &mut self.pixels) {
            return None;
        }
        let shape = layout.shape_of(placement);
        let f = factor(shape, es, max_bytes);
        if f == 1 {
            return Some(Fitted {
                shape,
                factor: 1,
                pixels: &self.pixels,
            });
        }
        let shape = bin_max(&self.pixels, shape, info.pixel, f, &mut self.binned);
        Some(Fitted {
            shape,
            factor: f,
            pixels: &self.binned,
        })
    }

    /// The pixels of the last [`Scratch::fit`] that binned by `factor`, kept.
    pub fn into_pixels(self, factor: u32) -> Vec<u8> {
        if factor == 1 {
            self.pixels
        } else {
            self.binned
        }
    }
}

/// Room in a message for everything but the pixels (the `ad00` fields and attributes).
const OVERHEAD: usize = 4096;

/// The smallest factor at which `[ny, nx]` pixels of `es` bytes fit `max_bytes`.
pub fn factor(shape: [u32; 2], es: usize, max_bytes: usize) -> u32 {
    let fits =
        |f: u32| (shape[0] / f) as usize * (shape[1] / f) as usize * es + OVERHEAD <= max_bytes;
    (1..=shape[0].max(shape[1]).max(1))
        .find(|&f| fits(f))
        .unwrap_or(shape[0].max(shape[1]).max(1))
}

/// Bins `src` (`shape`, `pixel`, little-endian) by `f` into `out`; returns the new shape.
pub fn bin_max(
    src: &[u8],
    shape: [u32; 2],
    pixel: PixelType,
    f: u32,
    out: &mut Vec<u8>,
) -> [u32; 2] {
    let es = pixel.size();
    let (ny, nx, f) = (shape[0] as usize, shape[1] as usize, f.max(1) as usize);
    let (oy, ox) = (ny / f, nx / f);
    out.clear();
    out.reserve(oy * ox * es);
    let value = |i: usize| pixel_value(pixel, &src[i * es..(i + 1) * es]);
    for y in 0..oy {
        for x in 0..ox {
            let mut best = (y * f) * nx + x * f;
            for dy in 0..f {
                for dx in 0..f {
                    let i = (y * f + dy) * nx + x * f + dx;
                    if value(i) > value(best) {
                        best = i;
                    }
                }
            }
            out.extend_from_slice(&src[best * es..(best + 1) * es]);
        }
    }
    [oy as u32, ox as u32]
}

/// One little-endian pixel of `pixel` (its `size()` bytes) as f64.
pub fn pixel_value(pixel: PixelType, b: &[u8]) -> f64 {
    match pixel {
        PixelType::U8 => f64::from(b[0]),
        PixelType::U16 => f64::from(u16::from_le_bytes([b[0], b[1]])),
        PixelType::U32 => f64::from(u32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        PixelType::I32 => f64::from(i32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        PixelType::F32 => f64::from(f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_is_binned_just_enough_and_keeps_its_peaks() {
        assert_eq!(factor([512, 1024], 2, 1_000_000), 2, "1 MiB -> 256 KiB");
        assert_eq!(factor([64, 96], 2, 1_000_000), 1);
        assert_eq!(factor([4, 4], 2, 10), 4, "nothing fits: the coarsest");
        let px: Vec<u16> = vec![1, 2, 3, 4, 5, 900, 7, 8, 9, 10, 11, 12];
        let src: Vec<u8> = px.iter().flat_map(|v| v.to_le_bytes()).collect();
        let mut out = Vec::new();
        let shape = bin_max(&src, [3, 4], PixelType::U16, 2, &mut out);
        assert_eq!(shape, [1, 2], "the third row and no column are left over");
        let got: Vec<u16> = out
            .chunks(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .collect();
        assert_eq!(got, [900, 8]);
    }
}
