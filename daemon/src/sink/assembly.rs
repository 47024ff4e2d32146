//! A preview of one written index, for any module grid: the encoded chunks of the index
//! (one per module with module chunking, one image with frame chunking) copied into one
//! pooled buffer, and where each module's pixels go in the detector image (the module gaps
//! of the geometry put in). Only the picked indices' compressed chunks are copied; a sink
//! decodes and places them ([`assemble`]) on its own thread.

use detingest_shm::{PixelType, PoolBuf};
use detingest_writer::{Chunking, Codec, RunLayout};

/// Parts (encoded chunks) and tiles (module rectangles) a preview holds at most: one per
/// module of the largest grid (the module masks are 64 bits).
pub const MAX_TILES: usize = 64;

/// One encoded chunk inside the preview's buffer.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Part {
    start: u32,
    len: u32,
    /// `[ny, nx]` it decodes to.
    shape: [u32; 2],
}

/// A rectangle of a decoded part placed in the detector image.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Tile {
    /// The part it is cut from.
    part: u8,
    /// `[y, x]` of its first pixel in the decoded part.
    src: [u32; 2],
    /// `[y, x]` of its first pixel in the image as the file holds it (no gaps).
    data: [u32; 2],
    /// `[y, x]` of its first pixel in the detector image (gaps included).
    gapped: [u32; 2],
    /// `[ny, nx]`.
    shape: [u32; 2],
}

/// How a preview is laid out when assembled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// As the file holds the image (what h5py reads): for consumers that mix previews with
    /// the files (Redis, Kafka `ad00`, ZeroMQ).
    Data,
    /// As the modules sit on the detector, the geometry's `module_gap` rows and columns put
    /// in as zeros: for the eye (the live page).
    Gaps,
}

/// Where a stream's modules go in its detector image, fixed for the run: what the writer
/// needs to start a preview of any index.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PreviewGeometry {
    /// `[ny, nx]` of the detector image, gaps included.
    pub shape: [u32; 2],
    /// `[ny, nx]` of the image as the file holds it.
    pub data_shape: [u32; 2],
    chunking: Chunking,
    module_shape: [u32; 2],
    grid: [u32; 2],
    gap: [u32; 2],
}

impl PreviewGeometry {
    /// The image of `layout`'s modules with `gap` pixels (`[rows, columns]`) between
    /// neighbouring modules (the geometry's `module_gap`).
    pub fn new(layout: &RunLayout, gap: [u32; 2]) -> Self {
        let [ny, nx] = layout.image_shape();
        let [rows, cols] = layout.grid;
        Self {
            shape: [
                ny + rows.saturating_sub(1) * gap[0],
                nx + cols.saturating_sub(1) * gap[1],
            ],
            data_shape: [ny, nx],
            chunking: layout.effective_chunking(),
            module_shape: layout.module_shape,
            grid: layout.grid,
            gap,
        }
    }

    fn modules(&self) -> u32 {
        self.grid[0] * self.grid[1]
    }

    /// `[y, x]` of module `m`'s first pixel in the data (no gaps) and in the image.
    fn origins(&self, m: u32) -> ([u32; 2], [u32; 2]) {
        let cols = self.grid[1].max(1);
        let (r, c) = (m / cols, m % cols);
        let [my, mx] = self.module_shape;
        let data = [r * my, c * mx];
        (data, [data[0] + r * self.gap[0], data[1] + c * self.gap[1]])
    }
}

/// A preview being gathered while its index is open (the writer's side).
pub struct PreviewBuilder {
    buf: PoolBuf,
    layout: PreviewLayout,
}

/// What a preview's buffer holds and where it goes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PreviewLayout {
    /// `[ny, nx]` of the assembled image, gaps included.
    pub shape: [u32; 2],
    /// `[ny, nx]` of the image as the file holds it.
    pub data_shape: [u32; 2],
    parts: [Part; MAX_TILES],
    nparts: usize,
    tiles: [Tile; MAX_TILES],
    ntiles: usize,
}

impl PreviewBuilder {
    /// An empty preview in `buf` of an image of `geometry`.
    pub fn new(buf: PoolBuf, geometry: &PreviewGeometry) -> Self {
        let mut buf = buf;
        buf.set_len(0);
        Self {
            buf,
            layout: PreviewLayout {
                shape: geometry.shape,
                data_shape: geometry.data_shape,
                parts: [Part::default(); MAX_TILES],
                nparts: 0,
                tiles: [Tile::default(); MAX_TILES],
                ntiles: 0,
            },
        }
    }

    /// Adds the encoded chunk of module `module` (module chunking) or of the whole image
    /// (frame chunking, a single module); false when it does not fit (the preview is then
    /// dropped).
    pub fn add(&mut self, geometry: &PreviewGeometry, module: u32, chunk: &[u8]) -> bool {
        let l = &mut self.layout;
        let start = self.buf.len();
        if l.nparts == MAX_TILES || start + chunk.len() > self.buf.capacity() {
            return false;
        }
        self.buf.spare_mut()[start..start + chunk.len()].copy_from_slice(chunk);
        self.buf.set_len(start + chunk.len());
        let part = l.nparts as u8;
        let whole_image = geometry.chunking == Chunking::Frame || geometry.modules() == 1;
        l.parts[l.nparts] = Part {
            start: start as u32,
            len: chunk.len() as u32,
            shape: if whole_image {
                geometry.data_shape
            } else {
                geometry.module_shape
            },
        };
        l.nparts += 1;
        let mut place = |src: [u32; 2], (data, gapped): ([u32; 2], [u32; 2]), shape| {
            if l.ntiles < MAX_TILES {
                l.tiles[l.ntiles] = Tile {
                    part,
                    src,
                    data,
                    gapped,
                    shape,
                };
                l.ntiles += 1;
            }
        };
        if !whole_image {
            place([0, 0], geometry.origins(module), geometry.module_shape);
        } else if geometry.gap == [0, 0] || geometry.modules() == 1 {
            place([0, 0], ([0, 0], [0, 0]), geometry.data_shape);
        } else {
            for m in 0..geometry.modules().min(MAX_TILES as u32) {
                let (data, gapped) = geometry.origins(m);
                place(data, (data, gapped), geometry.module_shape);
            }
        }
        true
    }

    /// The preview, once every chunk of its index was added.
    pub fn finish(self) -> Preview {
        Preview {
            layout: self.layout,
            buf: self.buf,
        }
    }
}

/// A preview of one index: encoded chunks and where they go. It holds a pooled buffer,
/// which goes back to its pool when every holder drops it.
pub struct Preview {
    /// Where the chunks go.
    pub layout: PreviewLayout,
    buf: PoolBuf,
}

impl std::fmt::Debug for Preview {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Preview")
            .field("shape", &self.layout.shape)
            .field("parts", &self.layout.nparts)
            .field("bytes", &self.buf.len())
            .finish()
    }
}

impl Preview {
    /// The encoded bytes of every part.
    pub fn bytes(&self) -> &[u8] {
        self.buf.as_slice()
    }

    /// The one encoded chunk that is the whole image as `placement` lays it out, when the
    /// preview is that (a single module, or frame chunking and, with gaps, none): what can be
    /// passed on encoded.
    pub fn whole_chunk(&self, placement: Placement) -> Option<&[u8]> {
        self.layout.whole_chunk(self.bytes(), placement)
    }

    /// A preview holding `chunk` as the whole image of `shape` (tests).
    #[cfg(test)]
    pub fn whole(mut buf: PoolBuf, shape: [u32; 2], chunk: &[u8]) -> Self {
        assert!(buf.fill_from(chunk));
        let mut layout = PreviewLayout {
            shape,
            data_shape: shape,
            parts: [Part::default(); MAX_TILES],
            nparts: 1,
            tiles: [Tile::default(); MAX_TILES],
            ntiles: 1,
        };
        layout.parts[0] = Part {
            start: 0,
            len: chunk.len() as u32,
            shape,
        };
        layout.tiles[0].shape = shape;
        Self { layout, buf }
    }
}

impl PreviewLayout {
    /// See [`Preview::whole_chunk`]; `bytes` are the preview's.
    pub fn whole_chunk<'a>(&self, bytes: &'a [u8], placement: Placement) -> Option<&'a [u8]> {
        let p = &self.parts[0];
        let whole = self.nparts == 1
            && p.shape == self.data_shape
            && (placement == Placement::Data || self.shape == self.data_shape);
        whole
            .then(|| bytes.get(p.start as usize..(p.start + p.len) as usize))
            .flatten()
    }

    /// `out[i]` true where pixel `i` of the image `placement` lays out belongs to a module
    /// the preview holds (false in gaps and in modules the index lacks).
    pub fn coverage(&self, placement: Placement, out: &mut Vec<bool>) {
        let [ny, nx] = self.shape_of(placement).map(|v| v as usize);
        out.clear();
        out.resize(ny * nx, false);
        for t in &self.tiles[..self.ntiles] {
            let [dy, dx] = match placement {
                Placement::Data => t.data,
                Placement::Gaps => t.gapped,
            }
            .map(|v| v as usize);
            let [ty, tx] = t.shape.map(|v| v as usize);
            for r in dy..(dy + ty).min(ny) {
                let row = r * nx;
                out[row + dx.min(nx)..row + (dx + tx).min(nx)].fill(true);
            }
        }
    }

    /// `[ny, nx]` of the image `placement` lays out.
    pub fn shape_of(&self, placement: Placement) -> [u32; 2] {
        match placement {
            Placement::Data => self.data_shape,
            Placement::Gaps => self.shape,
        }
    }
}

/// Buffers a preview is decoded into, kept from one preview to the next.
#[derive(Debug, Default)]
pub struct AssemblyScratch {
    part: Vec<u8>,
}

/// What a preview is decoded with: its stream's codec and pixel type, and the placement.
#[derive(Debug, Clone, Copy)]
pub struct Decode {
    /// The stream's codec.
    pub codec: Codec,
    /// The stream's pixel type.
    pub pixel: PixelType,
    /// Where the modules go.
    pub placement: Placement,
}

/// Decodes `layout`'s parts (`bytes`) into `out`, the assembled image
/// (`layout.shape_of(placement)`, little-endian, row after row; gaps and modules the index
/// lacks are 0). False when a part does not decode to its shape (`out` then holds no image).
pub fn assemble(
    layout: &PreviewLayout,
    bytes: &[u8],
    how: Decode,
    scratch: &mut AssemblyScratch,
    out: &mut Vec<u8>,
) -> bool {
    let (codec, es) = (how.codec, how.pixel.size());
    let [ny, nx] = layout.shape_of(how.placement).map(|v| v as usize);
    out.clear();
    out.resize(ny * nx * es, 0);
    if let Some(chunk) = layout.whole_chunk(bytes, how.placement) {
        return matches!(codec.decompress_into(chunk, es, out), Ok(n) if n == out.len());
    }
    for (k, p) in layout.parts[..layout.nparts].iter().enumerate() {
        let Some(chunk) = bytes.get(p.start as usize..(p.start + p.len) as usize) else {
            return false;
        };
        let [py, px] = p.shape.map(|v| v as usize);
        scratch.part.resize(py * px * es, 0);
        match codec.decompress_into(chunk, es, &mut scratch.part) {
            Ok(n) if n == scratch.part.len() => {}
            _ => return false,
        }
        for t in layout.tiles[..layout.ntiles]
            .iter()
            .filter(|t| usize::from(t.part) == k)
        {
            let [sy, sx] = t.src.map(|v| v as usize);
            let dst = match how.placement {
                Placement::Data => t.data,
                Placement::Gaps => t.gapped,
            };
            let [dy, dx] = dst.map(|v| v as usize);
            let [ty, tx] = t.shape.map(|v| v as usize);
            if sy + ty > py || sx + tx > px || dy + ty > ny || dx + tx > nx {
                return false;
            }
            let row = tx * es;
            for r in 0..ty {
                let from = ((sy + r) * px + sx) * es;
                let to = ((dy + r) * nx + dx) * es;
                out[to..to + row].copy_from_slice(&scratch.part[from..from + row]);
            }
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use detingest_shm::BufferPool;

    fn layout(grid: [u32; 2], chunking: Chunking) -> RunLayout {
        RunLayout {
            pixel: PixelType::U16,
            module_shape: [2, 3],
            grid,
            chunking,
            codec: Codec::Lz4,
        }
    }

    fn encode(px: &[u16]) -> Vec<u8> {
        let raw: Vec<u8> = px.iter().flat_map(|v| v.to_le_bytes()).collect();
        let mut out = vec![0; Codec::Lz4.max_compressed_len(raw.len(), 2)];
        let n = Codec::Lz4.compress_into(&raw, 2, &mut out).unwrap();
        out.truncate(n);
        out
    }

    fn how(placement: Placement) -> Decode {
        Decode {
            codec: Codec::Lz4,
            pixel: PixelType::U16,
            placement,
        }
    }

    /// The preview assembled as `placement` lays it out, as pixels.
    fn decoded(p: &Preview, placement: Placement) -> Option<Vec<u16>> {
        let (mut scratch, mut out) = (AssemblyScratch::default(), Vec::new());
        assemble(&p.layout, p.bytes(), how(placement), &mut scratch, &mut out).then(|| pixels(&out))
    }

    fn pixels(bytes: &[u8]) -> Vec<u16> {
        bytes
            .chunks(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .collect()
    }

    #[test]
    fn modules_are_placed_in_their_grid_with_gaps() {
        let pool = BufferPool::new(1, 4096);
        let g = PreviewGeometry::new(&layout([2, 2], Chunking::Module), [1, 2]);
        assert_eq!(g.shape, [5, 8]);
        let mut b = PreviewBuilder::new(pool.acquire(), &g);
        for m in 0..4u16 {
            assert!(b.add(&g, u32::from(m), &encode(&[m + 1; 6])));
        }
        let p = b.finish();
        assert!(p.whole_chunk(Placement::Data).is_none());
        let out = decoded(&p, Placement::Gaps).expect("decodes");
        #[rustfmt::skip]
        let want: [u16; 40] = [
            1, 1, 1, 0, 0, 2, 2, 2,
            1, 1, 1, 0, 0, 2, 2, 2,
            0, 0, 0, 0, 0, 0, 0, 0,
            3, 3, 3, 0, 0, 4, 4, 4,
            3, 3, 3, 0, 0, 4, 4, 4,
        ];
        assert_eq!(out, want);
        let out = decoded(&p, Placement::Data).expect("decodes");
        let data: Vec<u16> = want.iter().copied().filter(|&v| v != 0).collect();
        assert_eq!(out, data, "as the file holds it");
    }

    #[test]
    fn a_frame_chunk_is_cut_into_modules_when_there_are_gaps() {
        let pool = BufferPool::new(1, 4096);
        let image: Vec<u16> = (0..24).collect(); // [4, 6]: modules 2 x 3 in a 2 x 2 grid
        let chunk = encode(&image);
        let flat = PreviewGeometry::new(&layout([2, 2], Chunking::Frame), [0, 0]);
        let mut b = PreviewBuilder::new(pool.acquire(), &flat);
        assert!(b.add(&flat, 0, &chunk));
        let p = b.finish();
        assert_eq!(
            p.whole_chunk(Placement::Gaps),
            Some(&chunk[..]),
            "passed on"
        );
        drop(p);
        let gapped = PreviewGeometry::new(&layout([2, 2], Chunking::Frame), [1, 1]);
        let mut b = PreviewBuilder::new(pool.acquire(), &gapped);
        assert!(b.add(&gapped, 0, &chunk));
        let p = b.finish();
        assert_eq!(p.whole_chunk(Placement::Data), Some(&chunk[..]));
        assert_eq!(p.whole_chunk(Placement::Gaps), None);
        let out = decoded(&p, Placement::Gaps).expect("decodes");
        let got = out;
        assert_eq!(got.len(), 5 * 7);
        assert_eq!(&got[0..7], &[0, 1, 2, 0, 3, 4, 5]);
        assert_eq!(&got[7 * 2..7 * 3], &[0; 7], "the gap row");
        assert_eq!(&got[7 * 4..7 * 5], &[18, 19, 20, 0, 21, 22, 23]);
    }

    #[test]
    fn a_preview_that_does_not_fit_is_refused() {
        let pool = BufferPool::new(1, 8);
        let g = PreviewGeometry::new(&layout([1, 2], Chunking::Module), [0, 0]);
        let mut b = PreviewBuilder::new(pool.acquire(), &g);
        assert!(!b.add(&g, 0, &[0; 9]));
        let p = b.finish();
        let out = decoded(&p, Placement::Data).expect("an empty preview is a black image");
        assert_eq!(out.len(), 2 * 6);
    }
}
