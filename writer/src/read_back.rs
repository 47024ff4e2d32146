//! Reading one index of a closed data file back as pixels: the chunks stored at its position
//! are read as they are (`H5Dread_chunk`) and decoded with the codec that wrote them, so no
//! filter plugin is needed. For a sink that must publish a frame it no longer holds.

use std::path::Path;

use hdf5::File;
use hdf5_sys::h5::hsize_t;
use hdf5_sys::h5p::H5P_DEFAULT;

use crate::data_file::DATA_PATH;
use crate::Codec;

/// Decodes position `position` (0-based, first axis) of `/entry/data/data` in the data file
/// at `path` into `out` (resized to one image of `es`-byte pixels, row-major).
pub fn read_frame(
    path: &Path,
    position: u64,
    codec: Codec,
    es: usize,
    out: &mut Vec<u8>,
) -> Result<(), String> {
    let _hdf5 = hdf5_sys::LOCK.lock();
    let fail = |what: &str, e: &dyn std::fmt::Display| format!("{}: {what}: {e}", path.display());
    let file = File::open(path).map_err(|e| fail("open", &e))?;
    let data = file.dataset(DATA_PATH).map_err(|e| fail(DATA_PATH, &e))?;
    let shape = data.shape();
    let chunk = data.chunk().unwrap_or_default();
    let (&[n, rows, cols], &[1, crows, ccols]) = (shape.as_slice(), chunk.as_slice()) else {
        return Err(fail(DATA_PATH, &"not a stack of images chunked by image"));
    };
    if position >= n as u64 {
        return Err(fail("position", &format!("{position} beyond {n} images")));
    }
    out.clear();
    out.resize(rows * cols * es, 0);
    let mut stored = Vec::new();
    let mut decoded = vec![0u8; crows * ccols * es];
    for info in chunks_at(&data, position, rows.div_ceil(crows) * cols.div_ceil(ccols)) {
        let (r0, c0) = (info.offset[1] as usize, info.offset[2] as usize);
        if r0 >= rows || c0 >= cols {
            continue;
        }
        let Some(mask) = read_stored(&data, &info, &mut stored) else {
            return Err(fail("H5Dread_chunk", &format!("{:?}", info.offset)));
        };
        let codec = if mask == 0 { codec } else { Codec::None };
        let got = codec
            .decompress_into(&stored, es, &mut decoded)
            .map_err(|e| fail("decode", &e))?;
        if got != decoded.len() {
            return Err(fail(
                "decode",
                &format!("{got} bytes, not {}", decoded.len()),
            ));
        }
        let width = ccols.min(cols - c0) * es;
        for (r, row) in decoded.chunks_exact(ccols * es).take(rows - r0).enumerate() {
            let at = ((r0 + r) * cols + c0) * es;
            out[at..at + width].copy_from_slice(&row[..width]);
        }
    }
    Ok(())
}

/// The bytes of the chunk `info` describes (from HDF5 for `ds`) as stored, into `stored`;
/// its filter mask (0: every filter applied), `None` when HDF5 cannot read it.
pub(crate) fn read_stored(
    ds: &hdf5::Dataset,
    info: &hdf5::dataset::ChunkInfo,
    stored: &mut Vec<u8>,
) -> Option<u32> {
    stored.resize(info.size as usize, 0);
    let mut mask = 0u32;
    // SAFETY: `ds` is an open dataset and `info.offset` (from HDF5 for it) has one entry per
    // dimension; `stored` holds the chunk's stored size, which H5Dread_chunk writes at most.
    let rc = unsafe {
        hdf5_sys::h5d::H5Dread_chunk(
            ds.id(),
            H5P_DEFAULT,
            info.offset.as_ptr(),
            &mut mask,
            stored.as_mut_ptr().cast(),
        )
    };
    (rc >= 0).then_some(mask)
}

/// The stored chunks at first-axis position `position` (at most `want` of them), found from
/// the last chunk backwards: the index a sink asks for is usually the file's last.
fn chunks_at(data: &hdf5::Dataset, position: u64, want: usize) -> Vec<hdf5::dataset::ChunkInfo> {
    let mut found = Vec::new();
    for i in (0..data.num_chunks().unwrap_or(0)).rev() {
        if let Some(info) = data.chunk_info(i) {
            if info.offset.first() == Some(&(position as hsize_t)) {
                found.push(info);
                if found.len() == want {
                    break;
                }
            }
        }
    }
    found
}
