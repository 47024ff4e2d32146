//! With frame chunking, module frames are copied into their tile of the dataset's image, and
//! the tiles of missing modules are set to the fill value.

use detingest_writer::RunLayout;

/// Row byte ranges of module `m`'s tile in the image: (offset in image, row length), per row.
pub(super) fn tile_rows(layout: &RunLayout, m: u32) -> impl Iterator<Item = (usize, usize)> {
    let ps = layout.pixel.size();
    let [ny, nx] = layout.module_shape.map(|d| d as usize);
    let image_nx = layout.image_shape()[1] as usize;
    let [oy, ox] = layout.tile_origin(m).map(|d| d as usize);
    (0..ny).map(move |y| (((oy + y) * image_nx + ox) * ps, nx * ps))
}

/// Copies a module frame into its tile of the image.
pub(super) fn copy_tile(layout: &RunLayout, m: u32, module: &[u8], image: &mut [u8]) {
    for (y, (at, len)) in tile_rows(layout, m).enumerate() {
        if let (Some(dst), Some(src)) = (
            image.get_mut(at..at + len),
            module.get(y * len..(y + 1) * len),
        ) {
            dst.copy_from_slice(src);
        }
    }
}

/// Sets module `m`'s tile of the image to the fill value (0).
pub(super) fn zero_tile(layout: &RunLayout, m: u32, image: &mut [u8]) {
    for (at, len) in tile_rows(layout, m) {
        if let Some(dst) = image.get_mut(at..at + len) {
            dst.fill(0);
        }
    }
}
