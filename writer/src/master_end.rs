//! The parts of a run's master written at its edges: the data files' links and the VDS
//! over them (when the run starts, or ends), and how it ended (`finished`, the ASAPO finish
//! marker, any error).

use hdf5::{Dataset, File, Group, H5Type};

use crate::data_file::DATA_PATH;
use crate::layout::RunLayout;
use crate::master::RunEnd;
use crate::nxmx;
use crate::WriteError;

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

    /// Creates `/entry/data/data` as a virtual dataset over `files` (name, first index, count),
    /// replacing the one there (`replace`).
    pub(crate) fn write_vds(
        &self,
        layout: &RunLayout,
        files: &[(String, u64, u64)],
        total: u64,
        replace: bool,
    ) -> Result<(), WriteError> {
        if replace {
            self.data_group.unlink("data")?;
        }
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
