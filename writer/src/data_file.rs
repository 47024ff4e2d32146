//! One data file of a run, `<stream>_data_NNNNNN.h5`: `/entry/data/data` holding indices
//! `first ..= first + capacity - 1`, filled by direct chunk writes, with `image_nr_low` and
//! `image_nr_high` (1-based, inclusive) for Albula and XDS.

use std::path::Path;

use detingest_shm::PixelType;
use hdf5::file::LibraryVersion;
use hdf5::{Attribute, Dataset, File, Group, H5Type};
use hdf5_sys::h5::hsize_t;
use hdf5_sys::h5p::H5P_DEFAULT;

use crate::filter::Hdf5Filter;
use crate::layout::RunLayout;
use crate::nxmx;
use crate::WriteError;

/// Path of the image dataset inside every data file (and of the VDS in the master).
pub const DATA_PATH: &str = "/entry/data/data";

/// An open data file.
pub(crate) struct DataFile {
    file: File,
    data: Dataset,
    /// `None` under SWMR (written at creation).
    image_nr_high: Option<Attribute>,
    layout: RunLayout,
    /// Index held at position 0.
    first: u64,
    /// The planned last index (`image_nr_high` under SWMR).
    last: u64,
    /// Positions in the dataset's extent.
    extent: u64,
}

/// Creates an HDF5 file readable by HDF5 1.10, refusing to replace one.
///
/// Bounds (earliest, v110): no superblock status flags, so a file whose writer died still opens
/// without h5clear. With `swmr`, (v110, v110): the format SWMR needs; see [`start_swmr`].
pub(crate) fn create_file(path: &Path, swmr: bool) -> Result<File, WriteError> {
    if path.exists() {
        return Err(WriteError::Exists(path.to_owned()));
    }
    let low = if swmr {
        LibraryVersion::V110
    } else {
        LibraryVersion::Earliest
    };
    Ok(File::with_options()
        .with_fapl(|p| {
            p.libver_bounds(low, LibraryVersion::V110)
                .chunk_cache(CACHE_SLOTS, CACHE_BYTES, 1.0)
        })
        .create_excl(path)?)
}

/// Chunk cache of every dataset the writer opens: the chunk being appended and the one
/// before it. Images are written by direct chunk writes, which bypass the cache; the
/// per-index records are appended and never read back, so HDF5's default (1 MB per dataset)
/// only kept finished chunks: 11 MB per run's master, filled at 55-65 bytes per index
/// (docs/BENCHMARKS.md, "Memory over a long run"). w0 = 1: finished chunks leave first.
const CACHE_BYTES: usize = 128 << 10;
const CACHE_SLOTS: usize = 13;

/// Opens a file this process wrote with SWMR again for writing, to add what SWMR forbids at
/// the end of a run (the last data file's `image_nr_high`, an open-ended run's VDS and links).
/// HDF5's file lock is not taken: SWMR readers may still hold the file, and what they read is
/// not touched (they see the additions once they open it again).
pub(crate) fn reopen_after_swmr(path: &Path) -> Result<File, WriteError> {
    // Another thread of this process may hold the file open for a moment with other access
    // (the cluster's merger reads this daemon's own part with SWMR read access), and HDF5
    // refuses a second open with other flags meanwhile ("file locking flag values don't
    // match"): tried again for up to a second.
    let mut tries = 0;
    loop {
        let opened = File::with_options()
            .with_fapl(|p| p.file_locking(false))
            .open_rw(path);
        match opened {
            Ok(f) => return Ok(f),
            Err(_) if tries < 50 && path.exists() => {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Switches `file` to SWMR writing: from now on readers may open it with SWMR read access
/// (`h5py.File(path, "r", swmr=True)`) and see what each flush made consistent. No object or
/// attribute may be created after this; datasets may grow and be written.
pub(crate) fn start_swmr(file: &File) -> Result<(), WriteError> {
    file.flush()?;
    let _hdf5 = hdf5_sys::LOCK.lock();
    // SAFETY: `file` is an open file id, created read-write with v110 format bounds.
    let rc = unsafe { hdf5_sys::h5f::H5Fstart_swmr_write(file.id()) };
    if rc < 0 {
        return Err(WriteError::Metadata(format!(
            "cannot start SWMR writing on {}",
            file.filename()
        )));
    }
    Ok(())
}

impl DataFile {
    /// Creates `path` for the indices `first ..= last` (the planned last); with `swmr`, every
    /// object is made, `image_nr_high` set to `last`, and the file switched to SWMR writing.
    pub(crate) fn create(
        path: &Path,
        layout: RunLayout,
        first: u64,
        last: u64,
        swmr: bool,
    ) -> Result<Self, WriteError> {
        let file = create_file(path, swmr)?;
        let entry = nxmx::nx_group(&file, "entry", "NXentry")?;
        nxmx::ds_str(&entry, "definition", "NXmx")?;
        let group = nxmx::nx_group(&entry, "data", "NXdata")?;
        nxmx::attr_str(&group, "signal", "data")?;
        let data =
            create_image_dataset(&group, layout, &format!("{}:{DATA_PATH}", path.display()))?;
        data.new_attr::<i64>()
            .create("image_nr_low")?
            .write_scalar(&(first as i64))?;
        let image_nr_high = data.new_attr::<i64>().create("image_nr_high")?;
        // Under SWMR no attribute may change after the switch: the planned last index.
        let high = if swmr { last } else { first - 1 };
        image_nr_high.write_scalar(&(high as i64))?;
        let image_nr_high = if swmr {
            drop(image_nr_high); // SWMR cannot start while an attribute is open
            start_swmr(&file)?;
            None
        } else {
            Some(image_nr_high)
        };
        Ok(Self {
            file,
            data,
            image_nr_high,
            layout,
            first,
            last,
            extent: 0,
        })
    }

    /// Writes an encoded chunk of `index` whose first pixel is at `[y, x]` of the image.
    pub(crate) fn write_chunk(
        &mut self,
        index: u64,
        origin: [u32; 2],
        chunk: &[u8],
    ) -> Result<(), WriteError> {
        self.grow_to(index)?;
        let offset: [hsize_t; 3] = [
            index - self.first,
            hsize_t::from(origin[0]),
            hsize_t::from(origin[1]),
        ];
        // `offset` is chunk-aligned (a tile origin or 0) and inside the extent just set.
        if !write_stored_chunk(&self.data, &offset, 0, chunk) {
            return Err(chunk_error(index));
        }
        Ok(())
    }

    /// Makes the extent cover `index` (a lost index gets its place and the fill value).
    pub(crate) fn grow_to(&mut self, index: u64) -> Result<(), WriteError> {
        let need = index - self.first + 1;
        if need <= self.extent {
            return Ok(());
        }
        let [ny, nx] = self.layout.image_shape().map(hsize_t::from);
        let dims: [hsize_t; 3] = [need, ny, nx];
        let _hdf5 = hdf5_sys::LOCK.lock();
        clear_errno();
        // SAFETY: `data` is an open chunked dataset of rank 3 and `dims` holds three entries.
        let rc = unsafe { hdf5_sys::h5d::H5Dset_extent(self.data.id(), dims.as_ptr()) };
        if rc < 0 {
            return Err(chunk_error(index));
        }
        self.extent = need;
        Ok(())
    }

    /// Records `image_nr_high` (without SWMR) and flushes the file to disk: what was written
    /// so far is then consistent for SWMR readers.
    pub(crate) fn flush(&mut self) -> Result<(), WriteError> {
        if let Some(high) = &self.image_nr_high {
            high.write_scalar(&((self.first + self.extent) as i64 - 1))?;
        }
        self.file.flush()?;
        Ok(())
    }

    /// Flushes and closes the file. Under SWMR a file that ends before its planned last index
    /// (the last of a run) is opened again without SWMR to set `image_nr_high` to what it holds.
    pub(crate) fn close(mut self) -> Result<(), WriteError> {
        self.flush()?;
        let high = self.first + self.extent - 1;
        if self.image_nr_high.is_some() || high == self.last {
            return Ok(());
        }
        let path = std::path::PathBuf::from(self.file.filename());
        drop(self); // every handle, so the file closes
        let file = reopen_after_swmr(&path)?;
        file.dataset(DATA_PATH)?
            .attr("image_nr_high")?
            .write_scalar(&(high as i64))?;
        file.flush()?;
        Ok(())
    }

    /// Index at position 0.
    pub(crate) fn first(&self) -> u64 {
        self.first
    }
}

/// Writes `chunk` as stored bytes (`H5Dwrite_chunk`, filters skipped per `filter_mask`) at
/// `offset`, which must have one chunk-aligned entry per dimension of `data` and lie inside
/// its extent. False when HDF5 refused; errno is cleared first, so a value left in it came
/// from the file system.
pub(crate) fn write_stored_chunk(
    data: &Dataset,
    offset: &[hsize_t],
    filter_mask: u32,
    chunk: &[u8],
) -> bool {
    if offset.len() != data.ndim() {
        return false;
    }
    let _hdf5 = hdf5_sys::LOCK.lock();
    clear_errno();
    // SAFETY: `data` is an open dataset whose rank is `offset.len()` (checked above), so HDF5
    // reads exactly that many offsets; `chunk` is valid for `chunk.len()` bytes for the call.
    let rc = unsafe {
        hdf5_sys::h5d::H5Dwrite_chunk(
            data.id(),
            H5P_DEFAULT,
            filter_mask,
            offset.as_ptr(),
            chunk.len(),
            chunk.as_ptr().cast(),
        )
    };
    rc >= 0
}

fn clear_errno() {
    // SAFETY: `__errno_location` returns this thread's errno, valid for the thread's life.
    unsafe { *libc::__errno_location() = 0 };
}

/// The error of a failed chunk write, with the file system's reason if it left one in errno
/// (cleared before the call, so a value here came from it).
fn chunk_error(index: u64) -> WriteError {
    let os = std::io::Error::last_os_error();
    WriteError::Chunk {
        index,
        os: (os.raw_os_error() != Some(0)).then_some(os),
    }
}

/// Creates the image dataset of `layout` in a file in memory and checks the filter values
/// it records, so that a run that would write wrong ones is refused before it starts.
pub(crate) fn probe_filter_values(layout: RunLayout) -> Result<(), WriteError> {
    if Hdf5Filter::of(layout.codec, layout.pixel.size()).is_none() {
        return Ok(());
    }
    // A name of its own per probe: runs of one process (tests, several streams) probe at once,
    // and HDF5 refuses to create a file of a name it has open.
    static PROBES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = PROBES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let name = format!("detingest-filter-probe-{}-{n}", std::process::id());
    let file = File::with_options()
        .with_fapl(|p| p.core_filebacked(false))
        .create(&name)?;
    let name = format!("the data files' {DATA_PATH} (checked at run start)");
    create_image_dataset(&file, layout, &name).map(drop)
}

/// Creates `data`: `[0.., ny, nx]` of the image, chunked as the layout says, with the codec's
/// filter recorded (not run: chunks arrive encoded) and the recorded values read back and
/// checked; `name` names the dataset in the error.
fn create_image_dataset(
    group: &Group,
    layout: RunLayout,
    name: &str,
) -> Result<Dataset, WriteError> {
    let filter = Hdf5Filter::of(layout.codec, layout.pixel.size());
    let data = match layout.pixel {
        PixelType::U8 => create_of::<u8>(group, layout, filter.as_ref()),
        PixelType::U16 => create_of::<u16>(group, layout, filter.as_ref()),
        PixelType::U32 => create_of::<u32>(group, layout, filter.as_ref()),
        PixelType::I32 => create_of::<i32>(group, layout, filter.as_ref()),
        PixelType::F32 => create_of::<f32>(group, layout, filter.as_ref()),
    }?;
    if let Some(filter) = filter {
        filter.verify(&data, name)?;
    }
    Ok(data)
}

fn create_of<T: H5Type>(
    group: &Group,
    layout: RunLayout,
    filter: Option<&Hdf5Filter>,
) -> Result<Dataset, WriteError> {
    let [ny, nx] = layout.image_shape().map(|d| d as usize);
    let [cy, cx] = layout.chunk_shape().map(|d| d as usize);
    let chunk = (1, cy, cx);
    let mut dcpl = hdf5::plist::DatasetCreate::build();
    dcpl.chunk(chunk);
    // hdf5-metno adds user filters as optional, so no plugin is needed at write time; the
    // values passed depend on whether one is loadable (filter.rs, FORMATS.md section 3).
    if let Some(filter) = filter {
        dcpl.add_filter(filter.id as _, &filter.values_to_pass());
    }
    let dcpl = dcpl.finish()?;
    Ok(group
        .new_dataset::<T>()
        .set_dcpl(&dcpl)
        .chunk(chunk)
        .shape((0.., ny, nx))
        .create("data")?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Chunking, Codec};

    /// Regression: the probe's in-memory file was named by the process id alone, so two runs
    /// starting at once in one process (parallel tests) failed to create it.
    #[test]
    fn probes_at_the_same_time_in_one_process_all_succeed() {
        let layout = RunLayout {
            pixel: PixelType::U16,
            module_shape: [8, 8],
            grid: [1, 1],
            chunking: Chunking::Module,
            codec: Codec::BitshuffleLz4,
        };
        let threads: Vec<_> = (0..4)
            .map(|_| {
                std::thread::spawn(move || {
                    (0..50).try_for_each(|_| probe_filter_values(layout).map_err(|e| e.to_string()))
                })
            })
            .collect();
        for t in threads {
            assert_eq!(t.join().unwrap(), Ok(()));
        }
    }
}
