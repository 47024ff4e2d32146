//! A run's master file, `<stream>_master.h5`: the NXmx metadata, one external link per data
//! file (`/entry/data/data_NNNNNN`), the per-index records under `detectorSpecific`, and at the
//! end the virtual dataset over every data file and the finish marker.
//!
//! Per-index records (`frame_number`, `frame_lost`, `timestamp`, `module_mask`, `packets_lost`,
//! `missing_packets`) are buffered and appended on [`MasterFile::flush`] together with
//! `nimages`, so a crash loses at most what came after the last flush.

use std::path::Path;

use hdf5::{Dataset, File, Group, H5Type};
use ndarray::ArrayView2;

use crate::data_file::{create_file, DATA_PATH};
use crate::layout::RunLayout;
use crate::nxmx::{self, DetectorInfo};
use crate::WriteError;

/// Chunk length of the per-index datasets.
const RECORD_CHUNK: usize = 1024;

/// What is known of one index when its dataset closes.
#[derive(Debug, Clone, Copy)]
pub struct IndexRecord<'a> {
    /// The detector's frame number.
    pub frame_number: u64,
    /// Acquisition time of its first module frame, ns since the Unix epoch (0 when lost).
    pub timestamp_ns: u64,
    /// Bit `m` set: module `m`'s tile was written. 0: the frame is lost.
    pub modules: u64,
    /// Per module, bit `k` of the 512-bit mask set: packet `k` never arrived. One entry per
    /// module, or empty when nothing is known (a lost frame).
    pub missing_packets: &'a [[u8; 64]],
}

/// Buffered per-index records; capacity is kept between flushes.
#[derive(Default)]
struct Pending {
    frame_number: Vec<u64>,
    lost: Vec<u8>,
    timestamp: Vec<u64>,
    modules: Vec<u64>,
    packets_lost: Vec<u32>,
    missing: Vec<[u8; 64]>,
}

impl Pending {
    fn len(&self) -> usize {
        self.frame_number.len()
    }

    fn clear(&mut self) {
        self.frame_number.clear();
        self.lost.clear();
        self.timestamp.clear();
        self.modules.clear();
        self.packets_lost.clear();
        self.missing.clear();
    }
}

/// How a run ended, recorded in the master's `/entry/detingest`.
#[derive(Debug, Clone, Default)]
pub struct RunEnd {
    /// The stream that follows this one, if the operator named it (ASAPO's `next_stream`).
    pub next_stream: Option<String>,
    /// Why the run ended early, if it did.
    pub error: Option<String>,
}

/// The open master file.
pub(crate) struct MasterFile {
    file: File,
    data_group: Group,
    records: [Dataset; 6],
    nimages: Dataset,
    finished: Dataset,
    modules: usize,
    flushed: usize,
    pending: Pending,
}

impl MasterFile {
    /// Creates the master with its metadata; `user_json` goes to `/entry/detingest/user_metadata`.
    pub(crate) fn create(
        path: &Path,
        layout: &RunLayout,
        info: &DetectorInfo,
        user_json: &str,
    ) -> Result<Self, WriteError> {
        let file = create_file(path)?;
        let entry = nxmx::nx_group(&file, "entry", "NXentry")?;
        nxmx::ds_str(&entry, "definition", "NXmx")?;
        let data_group = nxmx::nx_group(&entry, "data", "NXdata")?;
        let bit_depth = 8 * layout.pixel.size() as u32;
        let specific = nxmx::write_detector(
            &entry,
            info,
            bit_depth,
            layout.pixel.max_value(),
            layout.image_shape(),
        )?;
        let nimages = nxmx::ds_num(&specific, "nimages", 0u64, None)?;
        let m = layout.modules() as usize;
        let timestamp = records::<u64>(&specific, "timestamp", None)?;
        nxmx::attr_str(&timestamp, "units", "ns")?;
        let records = [
            records::<u64>(&specific, "frame_number", None)?,
            records::<u8>(&specific, "frame_lost", None)?,
            timestamp,
            records::<u64>(&specific, "module_mask", None)?,
            records::<u32>(&specific, "packets_lost", None)?,
            records::<[u8; 64]>(&specific, "missing_packets", Some(m))?,
        ];
        let ours = nxmx::nx_group(&entry, "detingest", "NXcollection")?;
        nxmx::ds_str(&ours, "user_metadata", user_json)?;
        nxmx::ds_num(&ours, "modules", layout.modules(), None)?;
        nxmx::ds_str(&ours, "chunking", layout.effective_chunking().name())?;
        let finished = nxmx::ds_num(&ours, "finished", 0u8, None)?;
        file.flush()?;
        Ok(Self {
            file,
            data_group,
            records,
            nimages,
            finished,
            modules: m,
            flushed: 0,
            pending: Pending::default(),
        })
    }

    /// Links `/entry/data/data_NNNNNN` to the data file `name` (relative to the master).
    pub(crate) fn link_data_file(&self, number: u64, name: &str) -> Result<(), WriteError> {
        self.data_group
            .link_external(name, DATA_PATH, &format!("data_{number:06}"))?;
        Ok(())
    }

    /// Buffers the next index's record.
    pub(crate) fn push(&mut self, r: &IndexRecord<'_>) {
        let p = &mut self.pending;
        p.frame_number.push(r.frame_number);
        p.lost.push(u8::from(r.modules == 0));
        p.timestamp.push(r.timestamp_ns);
        p.modules.push(r.modules);
        let mut lost = 0;
        for k in 0..self.modules {
            let mask = r.missing_packets.get(k).copied().unwrap_or([0; 64]);
            lost += detingest_shm::PacketMask(mask).count();
            p.missing.push(mask);
        }
        p.packets_lost.push(lost);
    }

    /// Appends the buffered records, writes `nimages` and flushes the file.
    pub(crate) fn flush(&mut self) -> Result<(), WriteError> {
        let new = self.pending.len();
        if new > 0 {
            let end = self.flushed + new;
            let [fnum, lost, ts, modules, plost, missing] = &self.records;
            append(fnum, &self.pending.frame_number, end)?;
            append(lost, &self.pending.lost, end)?;
            append(ts, &self.pending.timestamp, end)?;
            append(modules, &self.pending.modules, end)?;
            append(plost, &self.pending.packets_lost, end)?;
            missing.resize((end, self.modules))?;
            let view = ArrayView2::from_shape((new, self.modules), &self.pending.missing)
                .map_err(|e| WriteError::Metadata(e.to_string()))?;
            missing.write_slice(view, (self.flushed..end, ..))?;
            self.pending.clear();
            self.flushed = end;
        }
        self.nimages.write_scalar(&(self.flushed as u64))?;
        self.file.flush()?;
        Ok(())
    }

    /// Creates `/entry/data/data` as a virtual dataset over `files` (name, first index, count).
    pub(crate) fn write_vds(
        &self,
        layout: &RunLayout,
        files: &[(String, u64, u64)],
        total: u64,
    ) -> Result<(), WriteError> {
        if total == 0 {
            return Ok(());
        }
        let [ny, nx] = layout.image_shape().map(|d| d as usize);
        let total = total as usize;
        match layout.pixel {
            detingest_shm::PixelType::U8 => self.vds_of::<u8>(files, total, ny, nx),
            detingest_shm::PixelType::U16 => self.vds_of::<u16>(files, total, ny, nx),
            detingest_shm::PixelType::U32 => self.vds_of::<u32>(files, total, ny, nx),
            detingest_shm::PixelType::I32 => self.vds_of::<i32>(files, total, ny, nx),
            detingest_shm::PixelType::F32 => self.vds_of::<f32>(files, total, ny, nx),
        }
    }

    fn vds_of<T: H5Type>(
        &self,
        files: &[(String, u64, u64)],
        total: usize,
        ny: usize,
        nx: usize,
    ) -> Result<(), WriteError> {
        let mut builder = self.data_group.new_dataset::<T>().shape((total, ny, nx));
        for (name, first, count) in files {
            let (start, n) = ((*first - 1) as usize, *count as usize);
            builder = builder.virtual_map(
                name,
                DATA_PATH,
                (n, ny, nx),
                (.., .., ..),
                (total, ny, nx),
                (start..start + n, .., ..),
            );
        }
        builder.create("data")?;
        nxmx::attr_str(&self.data_group, "signal", "data")?;
        Ok(())
    }

    /// Records how the run ended: `finished`, the ASAPO finish marker, and any error.
    pub(crate) fn finish(&self, frames: u64, end: &RunEnd) -> Result<(), WriteError> {
        let ours = self.file.group("/entry/detingest")?;
        if let Some(e) = &end.error {
            nxmx::ds_str(&ours, "error", e)?;
        }
        let next = end.next_stream.as_deref().unwrap_or("asapo_no_next");
        nxmx::ds_str(&ours, "next_stream", next)?;
        let marker = serde_json::json!({
            "_id": frames + 1,
            "name": "asapo_finish_stream",
            "meta": {"next_stream": next},
        });
        nxmx::ds_str(&ours, "finish_marker", &marker.to_string())?;
        self.finished.write_scalar(&1u8)?;
        self.file.flush()?;
        Ok(())
    }
}

/// Creates an extendable per-index dataset: 1-D, or `[n, width]` when `width` is given.
fn records<T: H5Type>(
    group: &Group,
    name: &str,
    width: Option<usize>,
) -> Result<Dataset, WriteError> {
    let b = group.new_dataset::<T>();
    let ds = match width {
        None => b.chunk(RECORD_CHUNK).shape(0..).create(name)?,
        Some(w) => b
            .chunk((RECORD_CHUNK.div_ceil(w), w))
            .shape((0.., w))
            .create(name)?,
    };
    Ok(ds)
}

/// Grows a 1-D dataset to `end` and writes `values` into its last `values.len()` entries.
fn append<T: H5Type>(ds: &Dataset, values: &[T], end: usize) -> Result<(), WriteError> {
    ds.resize(end)?;
    ds.write_slice(values, end - values.len()..end)?;
    Ok(())
}
