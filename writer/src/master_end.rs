//! The parts of a run's master written at its edges: the data files' links and the VDS
//! over them (when the run starts, or ends), and how it ended (`finished`, the ASAPO finish
//! marker, any error).

use hdf5::{Dataset, File, Group, H5Type};

use crate::data_file::DATA_PATH;
use crate::layout::RunLayout;
use crate::master::RunEnd;
use crate::nxmx;
use crate::WriteError;

/// One mapping of a master's VDS: indices `first .. first + count` (1-based) from the data
/// file `file` (named relative to the master), the whole image or one module's tile.
#[derive(Debug, Clone)]
pub(crate) struct VdsSource {
    pub(crate) file: String,
    pub(crate) first: u64,
    pub(crate) count: u64,
    /// `None`: the whole image; `Some(m)`: module `m`'s tile (a daemon's part of a detector).
    pub(crate) module: Option<u32>,
}

/// The VDS's sources for indices `1..=frames` of `stream`, `k` per data file, whole images.
pub(crate) fn vds_files(stream: &str, k: u64, frames: u64) -> Vec<VdsSource> {
    (1..=frames.div_ceil(k))
        .map(|n| {
            let first = (n - 1) * k + 1;
            VdsSource {
                file: crate::run_files::data_file_name(stream, n),
                first,
                count: k.min(frames + 1 - first),
                module: None,
            }
        })
        .collect()
}

/// The master's file, its `/entry/data` and `finished`.
pub(crate) struct MasterEnd {
    pub(crate) file: File,
    pub(crate) data_group: Group,
    pub(crate) finished: Dataset,
}

impl MasterEnd {
    /// Links `/entry/data/data_NNNNNN` to the data file `name` (relative to the master).
    pub(crate) fn link_data_file(&self, number: u64, name: &str) -> Result<(), WriteError> {
        self.data_group
            .link_external(name, DATA_PATH, &format!("data_{number:06}"))?;
        Ok(())
    }

    /// Creates `/entry/data/data` as a virtual dataset `[total, NY, NX]` over `sources`,
    /// replacing the one there (`replace`).
    pub(crate) fn write_vds(
        &self,
        layout: &RunLayout,
        sources: &[VdsSource],
        total: u64,
        replace: bool,
    ) -> Result<(), WriteError> {
        if replace {
            self.data_group.unlink("data")?;
        }
        if total == 0 {
            return Ok(());
        }
        let total = total as usize;
        match layout.pixel {
            detingest_shm::PixelType::U8 => self.vds_of::<u8>(layout, sources, total),
            detingest_shm::PixelType::U16 => self.vds_of::<u16>(layout, sources, total),
            detingest_shm::PixelType::U32 => self.vds_of::<u32>(layout, sources, total),
            detingest_shm::PixelType::I32 => self.vds_of::<i32>(layout, sources, total),
            detingest_shm::PixelType::F32 => self.vds_of::<f32>(layout, sources, total),
        }
    }

    fn vds_of<T: H5Type>(
        &self,
        layout: &RunLayout,
        sources: &[VdsSource],
        total: usize,
    ) -> Result<(), WriteError> {
        let [ny, nx] = layout.image_shape().map(|d| d as usize);
        let mut builder = self.data_group.new_dataset::<T>().shape((total, ny, nx));
        for s in sources {
            let (start, n) = ((s.first - 1) as usize, s.count as usize);
            let (rows, cols) = match s.module {
                None => (0..ny, 0..nx),
                Some(m) => {
                    let [y, x] = layout.tile_origin(m).map(|d| d as usize);
                    let [my, mx] = layout.module_shape.map(|d| d as usize);
                    (y..y + my, x..x + mx)
                }
            };
            builder = builder.virtual_map(
                &s.file,
                DATA_PATH,
                (n, ny, nx),
                (0..n, rows.clone(), cols.clone()),
                (total, ny, nx),
                (start..start + n, rows, cols),
            );
        }
        builder.create("data")?;
        Ok(())
    }

    /// Records how the run ended: `end_time`, `finished`, the ASAPO finish marker, and any
    /// error.
    pub(crate) fn finish(&self, frames: u64, end: &RunEnd) -> Result<(), WriteError> {
        let entry = self.file.group("/entry")?;
        if !entry.link_exists("end_time") {
            let ended = end.ended.unwrap_or_else(std::time::SystemTime::now);
            nxmx::ds_str(&entry, "end_time", &crate::geometry::iso_time(ended))?;
        }
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
