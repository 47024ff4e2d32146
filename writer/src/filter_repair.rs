//! Rewrites a file whose bitshuffle datasets record a plugin's three extra values
//! ([`FilterVerdict::Prepended`]) into one that records the right ones, without decoding or
//! re-encoding a chunk (`detingestd repair`).
//!
//! HDF5 cannot change a dataset's filter pipeline after creation, so the file is copied into
//! `.<name>.repair` beside it: objects that need no change with `H5Ocopy`, the groups above
//! an affected dataset with their attributes, and each affected dataset created again with
//! the right values and filled with its stored chunks as they are (`H5Dread_chunk` ->
//! `H5Dwrite_chunk`). The copy is checked (every filter right, every chunk byte-identical to
//! the original's) and flushed, then renamed over the original, so a crash at any point
//! leaves either the original or the repaired file under the name, never a mixture.

use std::ffi::CString;
use std::path::{Path, PathBuf};

use hdf5::{Dataset, File, Group, LinkType, Location};
use hdf5_sys::h5::hsize_t;
use hdf5_sys::h5p::H5P_DEFAULT;

use crate::data_file::{create_file, write_stored_chunk};
use crate::filter::{FilterVerdict, Hdf5Filter};
use crate::filter_check::{check_filters, links};
use crate::WriteError;

/// What [`repair_filters`] did to one file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Repaired {
    /// The datasets whose filter values were rewritten (none: the file was left as it was).
    pub datasets: Vec<String>,
    /// Chunks copied into the rewritten datasets.
    pub chunks: u64,
}

/// Repairs the file at `path` in place if [`check_filters`] finds datasets with prepended
/// bitshuffle values; refuses (and leaves the file untouched) if any filter is wrong in
/// another way or the file holds soft or external links.
pub fn repair_filters(path: &Path) -> Result<Repaired, WriteError> {
    let checks = check_filters(path)?;
    if let Some(bad) = checks.iter().find(|c| c.verdict == FilterVerdict::Wrong) {
        return Err(WriteError::Metadata(format!(
            "{}:{} records filter {} values {:?}, which no known cause explains; not repaired",
            path.display(),
            bad.dataset,
            bad.filter,
            bad.values
        )));
    }
    let fixes: Vec<(String, Vec<u32>)> = checks
        .into_iter()
        .filter_map(|c| match c.verdict {
            FilterVerdict::Prepended { fixed } => Some((c.dataset, fixed)),
            _ => None,
        })
        .collect();
    let datasets: Vec<String> = fixes.iter().map(|(d, _)| d.clone()).collect();
    if fixes.is_empty() {
        return Ok(Repaired {
            datasets,
            chunks: 0,
        });
    }
    let tmp = repair_path(path);
    let chunks = match write_copy(path, &tmp, &fixes) {
        Ok(n) => n,
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
    };
    std::fs::rename(&tmp, path).map_err(|e| io_error(path, e))?;
    if let Some(dir) = path.parent() {
        let _ = std::fs::File::open(dir).and_then(|d| d.sync_all());
    }
    Ok(Repaired { datasets, chunks })
}

/// `.<name>.repair` beside `path`.
fn repair_path(path: &Path) -> PathBuf {
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    path.with_file_name(format!(".{name}.repair"))
}

fn io_error(path: &Path, e: std::io::Error) -> WriteError {
    WriteError::Metadata(format!("{}: {e}", path.display()))
}

/// Writes the repaired copy to `tmp`, checks it against `path` and syncs it; returns the
/// number of chunks copied into rewritten datasets.
fn write_copy(path: &Path, tmp: &Path, fixes: &[(String, Vec<u32>)]) -> Result<u64, WriteError> {
    let chunks = {
        let src = File::open(path)?;
        let dst = create_file(tmp, false)?;
        let chunks = copy_group(&src, &dst, "", fixes)?;
        dst.flush()?;
        chunks
    };
    let left = check_filters(tmp)?;
    if let Some(bad) = left.iter().find(|c| c.verdict != FilterVerdict::Right) {
        return Err(WriteError::Metadata(format!(
            "the repaired copy still records {:?} for {}",
            bad.values, bad.dataset
        )));
    }
    let (src, dst) = (File::open(path)?, File::open(tmp)?);
    for (name, _) in fixes {
        same_chunks(&src.dataset(name)?, &dst.dataset(name)?, name)?;
    }
    drop((src, dst));
    std::fs::File::open(tmp)
        .and_then(|f| f.sync_all())
        .map_err(|e| io_error(tmp, e))?;
    Ok(chunks)
}

/// Copies `src`'s attributes and members into `dst`, rebuilding the datasets in `fixes`.
fn copy_group(
    src: &Group,
    dst: &Group,
    at: &str,
    fixes: &[(String, Vec<u32>)],
) -> Result<u64, WriteError> {
    copy_attributes(src, dst)?;
    let links = links(src)?;
    if links.iter().any(|(_, kind)| *kind != LinkType::Hard) {
        return Err(WriteError::Metadata(format!(
            "{at}/ holds soft or external links, which repair does not copy; not repaired"
        )));
    }
    let mut chunks = 0;
    for (name, _) in links {
        let path = format!("{at}/{name}");
        if let Some((_, fixed)) = fixes.iter().find(|(d, _)| *d == path) {
            chunks += rebuild_dataset(&src.dataset(&name)?, dst, &name, fixed)?;
        } else if fixes
            .iter()
            .any(|(d, _)| d.starts_with(&format!("{path}/")))
        {
            let child = dst.create_group(&name)?;
            chunks += copy_group(&src.group(&name)?, &child, &path, fixes)?;
        } else {
            copy_object(src, dst, &name)?;
        }
    }
    Ok(chunks)
}

/// `H5Ocopy` of member `name` of `src` to the same name in `dst`, with everything below it.
fn copy_object(src: &Group, dst: &Group, name: &str) -> Result<(), WriteError> {
    let c = CString::new(name).map_err(|_| WriteError::Metadata(format!("bad name {name:?}")))?;
    let _hdf5 = hdf5_sys::LOCK.lock();
    // SAFETY: both ids are open groups; `c` is a NUL-terminated name valid for the call.
    let rc = unsafe {
        hdf5_sys::h5o::H5Ocopy(
            src.id(),
            c.as_ptr(),
            dst.id(),
            c.as_ptr(),
            H5P_DEFAULT,
            H5P_DEFAULT,
        )
    };
    if rc < 0 {
        return Err(WriteError::Metadata(format!("could not copy {name}")));
    }
    Ok(())
}

/// Creates `name` in `dst` like `src` but recording `fixed` for bitshuffle, and copies the
/// stored chunks into it unchanged; returns how many.
fn rebuild_dataset(
    src: &Dataset,
    dst: &Group,
    name: &str,
    fixed: &[u32],
) -> Result<u64, WriteError> {
    let filter = Hdf5Filter {
        id: crate::codec::bslz4::FILTER_ID,
        stored: fixed.to_vec(),
    };
    let mut dcpl = hdf5::plist::DatasetCreateBuilder::from_plist(&src.dcpl()?)?;
    dcpl.clear_filters();
    dcpl.add_filter(filter.id as _, &filter.values_to_pass());
    let chunk = src
        .chunk()
        .ok_or_else(|| WriteError::Metadata(format!("{name} is not chunked")))?;
    let data = dst
        .new_dataset_builder()
        .set_dcpl(&dcpl.finish()?)
        .chunk(chunk)
        .empty_as(&src.dtype()?)
        .shape(src.space()?.extents()?)
        .create(name)?;
    filter.verify(&data, name)?;
    let mut buf = Vec::new();
    let mut copied = 0;
    for offset in chunk_offsets(src)? {
        let Some(mask) = read_chunk(src, &offset, &mut buf)? else {
            continue;
        };
        // `data` has the shape and chunks of `src`, so `offset` is aligned and inside it.
        if !write_stored_chunk(&data, &offset, mask, &buf) {
            return Err(WriteError::Metadata(format!(
                "could not write the chunk at {offset:?} of {name}"
            )));
        }
        copied += 1;
    }
    copy_attributes(src, &data)?;
    Ok(copied)
}

/// The first element of every chunk of `data`'s extent, stored or not. (HDF5 1.10.8's
/// `H5Dget_chunk_info` reports offsets in chunk units, so chunks are found by coordinate.)
fn chunk_offsets(data: &Dataset) -> Result<Vec<Vec<hsize_t>>, WriteError> {
    let chunk = data
        .chunk()
        .ok_or_else(|| WriteError::Metadata(format!("{} is not chunked", data.name())))?;
    let mut offsets = vec![Vec::new()];
    for (&dim, &c) in data.shape().iter().zip(&chunk) {
        offsets = offsets
            .into_iter()
            .flat_map(|o| {
                (0..dim.div_ceil(c)).map(move |k| {
                    let mut o = o.clone();
                    o.push((k * c) as hsize_t);
                    o
                })
            })
            .collect();
    }
    Ok(offsets)
}

/// Reads the chunk at `offset` of `data` into `buf` as it is stored; its filter mask, or
/// `None` if no chunk is stored there.
fn read_chunk(
    data: &Dataset,
    offset: &[hsize_t],
    buf: &mut Vec<u8>,
) -> Result<Option<u32>, WriteError> {
    let (mut mask, mut addr, mut size) = (0u32, 0, 0);
    let _hdf5 = hdf5_sys::LOCK.lock();
    // SAFETY: `offset` has one entry per dimension of `data`; the outputs are locals.
    let rc = unsafe {
        hdf5_sys::h5d::H5Dget_chunk_info_by_coord(
            data.id(),
            offset.as_ptr(),
            &mut mask,
            &mut addr,
            &mut size,
        )
    };
    if rc < 0 {
        return Err(WriteError::Metadata(format!(
            "no chunk information at {offset:?}"
        )));
    }
    if addr == hdf5_sys::h5::HADDR_UNDEF {
        return Ok(None);
    }
    buf.resize(size as usize, 0);
    // SAFETY: `offset` is the stored chunk's offset with one entry per dimension, and `buf`
    // holds exactly that chunk's stored size.
    let rc = unsafe {
        hdf5_sys::h5d::H5Dread_chunk(
            data.id(),
            H5P_DEFAULT,
            offset.as_ptr(),
            &mut mask,
            buf.as_mut_ptr().cast(),
        )
    };
    if rc < 0 {
        return Err(WriteError::Metadata(format!(
            "could not read the chunk at {offset:?} of {}",
            data.name()
        )));
    }
    Ok(Some(mask))
}

/// Fails unless both datasets hold the same stored chunks at the same offsets.
fn same_chunks(a: &Dataset, b: &Dataset, name: &str) -> Result<(), WriteError> {
    let (mut x, mut y) = (Vec::new(), Vec::new());
    for offset in chunk_offsets(a)? {
        if read_chunk(a, &offset, &mut x)? != read_chunk(b, &offset, &mut y)? || x != y {
            return Err(WriteError::Metadata(format!(
                "{name}: the chunk at {offset:?} differs after repair"
            )));
        }
    }
    Ok(())
}

/// Copies every attribute of `src` to `dst` with its own type and shape, as stored bytes.
fn copy_attributes(src: &Location, dst: &Location) -> Result<(), WriteError> {
    for name in src.attr_names()? {
        let from = src.attr(&name)?;
        let (dtype, space) = (from.dtype()?, from.space()?);
        let to = dst
            .new_attr_builder()
            .empty_as(&dtype)
            .shape(space.extents()?)
            .create(name.as_str())?;
        let mut buf = vec![0u8; dtype.size() * space.size()];
        let _hdf5 = hdf5_sys::LOCK.lock();
        // SAFETY: `buf` holds `space.size()` elements of `dtype`, the type both attributes
        // have; variable-length parts read into it are HDF5's allocations, freed by
        // H5Dvlen_reclaim (a no-op for fixed-size types) after the write.
        let rc = unsafe {
            let ok = hdf5_sys::h5a::H5Aread(from.id(), dtype.id(), buf.as_mut_ptr().cast()) >= 0
                && hdf5_sys::h5a::H5Awrite(to.id(), dtype.id(), buf.as_ptr().cast()) >= 0;
            hdf5_sys::h5d::H5Dvlen_reclaim(
                dtype.id(),
                space.id(),
                H5P_DEFAULT,
                buf.as_mut_ptr().cast(),
            );
            ok
        };
        if !rc {
            return Err(WriteError::Metadata(format!(
                "could not copy attribute {name}"
            )));
        }
    }
    Ok(())
}
