//! One stream's NXmx data file: frames go in by direct chunk write, one chunk `(1, ny, nx)`
//! per index, already compressed by a [`crate::Codec`].
//!
//! Per-index bookkeeping (`frame_number`, `frame_lost`, `timestamp`, `packets_lost`,
//! `missing_packets`: a 512-bit mask per index, bit k = packet k never arrived) is buffered and appended
//! on [`StreamFile::flush`], together with `nimages` and `image_nr_high`, then the file is
//! flushed so a crash loses at most what came after the last flush. Lost frames keep their
//! index: no chunk is written, the dataset's fill value (0) shows, and `frame_lost` says so.

use std::path::{Path, PathBuf};

use detingest_shm::{FrameMeta, PacketMask, PixelType};
use hdf5::file::LibraryVersion;
use hdf5::{Attribute, Dataset, File, Group, H5Type};
use hdf5_sys::h5::hsize_t;
use hdf5_sys::h5p::H5P_DEFAULT;

use crate::nxmx::{self, DetectorInfo};
use crate::{Codec, WriteError};

/// Path of the main dataset inside every data file.
pub const DATA_PATH: &str = "/entry/data/data";
/// Chunk length of the 1-D per-index datasets.
const RECORD_CHUNK: usize = 4096;

/// What the data file's main dataset holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DatasetLayout {
    /// Pixel type of every frame.
    pub pixel: PixelType,
    /// `[ny, nx]` of every frame (one chunk).
    pub shape: [u32; 2],
    /// Codec the chunks arrive compressed with.
    pub codec: Codec,
}

impl DatasetLayout {
    /// Bytes of one uncompressed frame.
    pub fn frame_bytes(&self) -> usize {
        self.pixel.frame_bytes(self.shape)
    }
}

/// Per-index records waiting for the next flush. Capacity is kept between flushes.
#[derive(Default)]
struct Pending {
    frame_number: Vec<u64>,
    lost: Vec<u8>,
    timestamp: Vec<u64>,
    packets_lost: Vec<u32>,
    missing: Vec<[u8; 64]>,
}

/// An open data file of one stream.
pub struct StreamFile {
    path: PathBuf,
    file: File,
    data: Dataset,
    frame_number: Dataset,
    frame_lost: Dataset,
    timestamp: Dataset,
    packets_lost: Dataset,
    missing_packets: Dataset,
    nimages: Dataset,
    image_nr_high: Attribute,
    layout: DatasetLayout,
    /// Indices recorded so far, written or lost: the dataset's extent.
    frames: u64,
    /// Indices recorded as lost.
    lost: u64,
    /// Indices already appended to the per-index datasets.
    flushed: u64,
    pending: Pending,
}

impl StreamFile {
    /// Creates `path` (refusing to replace an existing file) with the NXmx layout and an empty,
    /// extendable `/entry/data/data`.
    pub fn create(
        path: &Path,
        layout: DatasetLayout,
        info: &DetectorInfo,
    ) -> Result<Self, WriteError> {
        if path.exists() {
            return Err(WriteError::Exists(path.to_owned()));
        }
        // Bounds (earliest, v110): readable by HDF5 1.10 and no superblock status flags, so a
        // file whose writer died still opens without h5clear.
        let file = File::with_options()
            .with_fapl(|p| p.libver_bounds(LibraryVersion::Earliest, LibraryVersion::V110))
            .create_excl(path)?;
        let entry = nxmx::nx_group(&file, "entry", "NXentry")?;
        nxmx::ds_str(&entry, "definition", "NXmx")?;
        let data_group = nxmx::nx_group(&entry, "data", "NXdata")?;
        nxmx::attr_str(&data_group, "signal", "data")?;
        let data = create_data(&data_group, layout)?;
        data.new_attr::<i64>()
            .create("image_nr_low")?
            .write_scalar(&1i64)?;
        let image_nr_high = data.new_attr::<i64>().create("image_nr_high")?;
        image_nr_high.write_scalar(&0i64)?;
        let bit_depth = 8 * layout.pixel.size() as u32;
        let specific = nxmx::write_detector(
            &entry,
            info,
            bit_depth,
            layout.pixel.max_value(),
            layout.shape,
        )?;
        let nimages = nxmx::ds_num(&specific, "nimages", 0u64, None)?;
        let frame_number = records::<u64>(&specific, "frame_number")?;
        let frame_lost = records::<u8>(&specific, "frame_lost")?;
        let timestamp = records::<u64>(&specific, "timestamp")?;
        nxmx::attr_str(&timestamp, "units", "ns")?;
        let packets_lost = records::<u32>(&specific, "packets_lost")?;
        let missing_packets = records::<[u8; 64]>(&specific, "missing_packets")?;
        file.flush()?;
        Ok(Self {
            path: path.to_owned(),
            file,
            data,
            frame_number,
            frame_lost,
            timestamp,
            packets_lost,
            missing_packets,
            nimages,
            image_nr_high,
            layout,
            frames: 0,
            lost: 0,
            flushed: 0,
            pending: Pending::default(),
        })
    }

    /// Writes the compressed chunk of `index` (1-based), which must be the next index.
    pub fn write_frame(
        &mut self,
        index: u64,
        chunk: &[u8],
        meta: &FrameMeta,
    ) -> Result<(), WriteError> {
        self.expect_next(index)?;
        if meta.shape != self.layout.shape || meta.pixel != self.layout.pixel {
            return Err(WriteError::Shape { index });
        }
        self.grow_to(index)?;
        let offset: [hsize_t; 3] = [index - 1, 0, 0];
        let _hdf5 = hdf5_sys::LOCK.lock();
        // SAFETY: `data` is an open dataset; `offset` has one entry per dimension and lies
        // inside the extent just set; `chunk` is valid for `chunk.len()` bytes for the call.
        let rc = unsafe {
            hdf5_sys::h5d::H5Dwrite_chunk(
                self.data.id(),
                H5P_DEFAULT,
                0,
                offset.as_ptr(),
                chunk.len(),
                chunk.as_ptr().cast(),
            )
        };
        if rc < 0 {
            return Err(WriteError::Chunk { index });
        }
        self.push_record(meta.frame_number, 0, meta.timestamp_ns, meta.missing);
        Ok(())
    }

    /// Records `index` (1-based, the next index) as lost: no chunk, the fill value shows.
    pub fn record_lost(&mut self, index: u64, frame_number: u64) -> Result<(), WriteError> {
        self.expect_next(index)?;
        self.grow_to(index)?;
        self.lost += 1;
        self.push_record(frame_number, 1, 0, PacketMask::NONE);
        Ok(())
    }

    /// Appends buffered per-index records, updates `nimages` and `image_nr_high`, and flushes
    /// the file to disk.
    pub fn flush(&mut self) -> Result<(), WriteError> {
        let new = self.pending.frame_number.len();
        if new > 0 {
            let end = (self.flushed as usize) + new;
            append(&self.frame_number, &self.pending.frame_number, end)?;
            append(&self.frame_lost, &self.pending.lost, end)?;
            append(&self.timestamp, &self.pending.timestamp, end)?;
            append(&self.packets_lost, &self.pending.packets_lost, end)?;
            append(&self.missing_packets, &self.pending.missing, end)?;
            self.pending.frame_number.clear();
            self.pending.lost.clear();
            self.pending.timestamp.clear();
            self.pending.packets_lost.clear();
            self.pending.missing.clear();
            self.flushed = end as u64;
        }
        self.nimages.write_scalar(&self.frames)?;
        self.image_nr_high.write_scalar(&(self.frames as i64))?;
        self.file.flush()?;
        Ok(())
    }

    /// Flushes and closes the file, returning how many indices it holds.
    pub fn finish(mut self) -> Result<u64, WriteError> {
        self.flush()?;
        Ok(self.frames)
    }

    /// Indices recorded so far (written and lost).
    pub fn frames(&self) -> u64 {
        self.frames
    }

    /// Indices recorded as lost.
    pub fn lost(&self) -> u64 {
        self.lost
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn expect_next(&self, index: u64) -> Result<(), WriteError> {
        if index == self.frames + 1 {
            Ok(())
        } else {
            Err(WriteError::OutOfOrder {
                index,
                expected: self.frames + 1,
            })
        }
    }

    fn grow_to(&mut self, index: u64) -> Result<(), WriteError> {
        let dims: [hsize_t; 3] = [
            index,
            hsize_t::from(self.layout.shape[0]),
            hsize_t::from(self.layout.shape[1]),
        ];
        let _hdf5 = hdf5_sys::LOCK.lock();
        // SAFETY: `data` is an open chunked dataset of rank 3 and `dims` holds three entries.
        let rc = unsafe { hdf5_sys::h5d::H5Dset_extent(self.data.id(), dims.as_ptr()) };
        if rc < 0 {
            return Err(WriteError::Chunk { index });
        }
        self.frames = index;
        Ok(())
    }

    fn push_record(&mut self, frame_number: u64, lost: u8, timestamp: u64, missing: PacketMask) {
        self.pending.frame_number.push(frame_number);
        self.pending.lost.push(lost);
        self.pending.timestamp.push(timestamp);
        self.pending.packets_lost.push(missing.count());
        self.pending.missing.push(missing.0);
    }
}

/// Creates `/entry/data/data`: `[0.., ny, nx]`, chunk `(1, ny, nx)`, the codec's filter.
fn create_data(group: &Group, layout: DatasetLayout) -> Result<Dataset, WriteError> {
    match layout.pixel {
        PixelType::U8 => create_data_of::<u8>(group, layout),
        PixelType::U16 => create_data_of::<u16>(group, layout),
        PixelType::U32 => create_data_of::<u32>(group, layout),
        PixelType::I32 => create_data_of::<i32>(group, layout),
        PixelType::F32 => create_data_of::<f32>(group, layout),
    }
}

fn create_data_of<T: H5Type>(group: &Group, layout: DatasetLayout) -> Result<Dataset, WriteError> {
    let [ny, nx] = layout.shape.map(|d| d as usize);
    let chunk = (1, ny, nx);
    let mut dcpl = hdf5::plist::DatasetCreate::build();
    dcpl.chunk(chunk);
    // The filter is recorded, not run: chunks arrive encoded. hdf5-metno adds user filters as
    // optional, so no plugin is needed at write time, and we write the cd_values ourselves.
    if let Some((id, cd_values)) = layout.codec.hdf5_filter(layout.pixel.size()) {
        dcpl.add_filter(id as _, &cd_values);
    }
    let dcpl = dcpl.finish()?;
    let ds = group
        .new_dataset::<T>()
        .set_dcpl(&dcpl)
        .chunk(chunk)
        .shape((0.., ny, nx))
        .create("data")?;
    Ok(ds)
}

/// Creates an extendable 1-D per-index dataset.
fn records<T: H5Type>(group: &Group, name: &str) -> Result<Dataset, WriteError> {
    Ok(group
        .new_dataset::<T>()
        .chunk(RECORD_CHUNK)
        .shape(0..)
        .create(name)?)
}

/// Grows a 1-D dataset to `end` and writes `values` into its last `values.len()` entries.
fn append<T: H5Type>(ds: &Dataset, values: &[T], end: usize) -> Result<(), WriteError> {
    ds.resize(end)?;
    ds.write_slice(values, end - values.len()..end)?;
    Ok(())
}
