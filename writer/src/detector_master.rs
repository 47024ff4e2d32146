//! The whole detector's master, `<stream>_master.h5`, when several daemons each write some
//! modules of it (`<stream>_<daemon>_data_NNNNNN.h5`): the NXmx metadata, the merged
//! per-index records (a module bit set when any daemon wrote it, `frame_lost` only when none
//! did), `/entry/data/data` a virtual dataset whose module tiles come from each daemon's data
//! files, and under `/entry/detingest/daemons/<name>` which daemon wrote which modules and
//! how its part ended (`missing_from`: the first index its modules are missing from).

use std::path::Path;

use hdf5::{Group, H5Type};

use crate::data_file::DATA_PATH;
use crate::layout::RunLayout;
use crate::master::{IndexRecord, MasterFile, RunEnd};
use crate::master_end::MasterEnd;
use crate::nxmx::{self, DetectorInfo};
use crate::run_files::{data_file_name, master_path, FileOptions};
use crate::WriteError;

/// One daemon's part of the detector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    /// The daemon's name.
    pub daemon: String,
    /// The stream its files are named after (`<stream>_<daemon>`).
    pub stream: String,
    /// The modules it receives (bit `m`: module `m`).
    pub modules: u64,
}

/// How a part ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartEnd {
    /// Indices its master recorded (flushed).
    pub recorded: u64,
    /// False when the daemon died (or could not be reached) before its run ended.
    pub finished: bool,
}

/// The image geometry and file options, kept in the master (`daemons` attribute `layout`, JSON)
/// so a merge can be finished from the files alone.
#[derive(serde::Serialize, serde::Deserialize)]
struct Geometry {
    pixel: detingest_shm::PixelType,
    module_shape: [u32; 2],
    grid: [u32; 2],
    codec: crate::Codec,
    frames_per_file: u64,
    master_data: crate::MasterData,
}

/// The open whole-detector master.
pub struct DetectorMaster {
    layout: RunLayout,
    options: FileOptions,
    parts: Vec<Part>,
    master: MasterFile,
    /// Indices recorded.
    frames: u64,
    /// Indices the VDS written at the start covers (0: none).
    vds_frames: u64,
}

impl DetectorMaster {
    /// Creates `<dir>/<stream>_master.h5` for a detector of `layout` taken by `parts`; with a
    /// planned count (`options.frames`) the VDS over every part's planned files is written
    /// now, so it is readable (SWMR) during the run.
    pub fn create(
        dir: &Path,
        stream: &str,
        layout: RunLayout,
        info: &DetectorInfo,
        user_json: &str,
        options: FileOptions,
        parts: Vec<Part>,
    ) -> Result<Self, WriteError> {
        let master = MasterFile::create(
            &master_path(dir, stream),
            &layout,
            info,
            user_json,
            options.master_data,
            options.swmr,
        )?;
        let daemons = nxmx::nx_group(
            &master.end().file.group("/entry/detingest")?,
            "daemons",
            "NXcollection",
        )?;
        // What `resume` needs to go on without the run's configuration.
        let geometry = Geometry {
            pixel: layout.pixel,
            module_shape: layout.module_shape,
            grid: layout.grid,
            codec: layout.codec,
            frames_per_file: options.frames_per_file.max(1),
            master_data: options.master_data,
        };
        let text =
            serde_json::to_string(&geometry).map_err(|e| WriteError::Metadata(e.to_string()))?;
        nxmx::attr_str(&daemons, "layout", &text)?;
        for p in &parts {
            let g = daemons.create_group(&p.daemon)?;
            nxmx::ds_str(&g, "stream", &p.stream)?;
            let modules: Vec<u32> = (0..64).filter(|m| p.modules & (1 << m) != 0).collect();
            g.new_dataset_builder()
                .with_data(&modules)
                .create("modules")?;
        }
        let mut run = Self {
            layout,
            options: FileOptions {
                frames_per_file: options.frames_per_file.max(1),
                ..options
            },
            parts,
            master,
            frames: 0,
            vds_frames: 0,
        };
        if options.frames > 0 && options.master_data.vds() {
            let counts = vec![options.frames; run.parts.len()];
            run.write_vds(run.master.end(), &counts, options.frames, false)?;
            run.vds_frames = options.frames;
        }
        if options.swmr {
            run.master.start_swmr()?;
        }
        Ok(run)
    }

    /// Opens the master of `stream` in `dir` that a merger which died left unfinished (its
    /// write marks cleared first), to merge the rest of the parts' records into it.
    pub fn resume(dir: &Path, stream: &str) -> Result<Self, WriteError> {
        let path = master_path(dir, stream);
        crate::part_records::clear_write_marks(&path)?;
        let bad = |what: &str| WriteError::Metadata(format!("{}: {what}", path.display()));
        let (layout, options, parts) = {
            let file = hdf5::File::open(&path)?;
            if file
                .dataset("/entry/detingest/finished")?
                .read_scalar::<u8>()?
                != 0
            {
                return Err(bad("finished already"));
            }
            let daemons = file
                .group("/entry/detingest/daemons")
                .map_err(|_| bad("not the master of several daemons' parts"))?;
            let text: hdf5::types::VarLenUnicode = daemons.attr("layout")?.read_scalar()?;
            let g: Geometry =
                serde_json::from_str(text.as_str()).map_err(|e| bad(&e.to_string()))?;
            let layout = RunLayout {
                pixel: g.pixel,
                module_shape: g.module_shape,
                grid: g.grid,
                chunking: crate::Chunking::Module,
                codec: g.codec,
            };
            let options = FileOptions {
                frames_per_file: g.frames_per_file,
                master_data: g.master_data,
                frames: 0,
                swmr: false,
            };
            let mut parts = Vec::new();
            for name in daemons.member_names()? {
                let g = daemons.group(&name)?;
                let stream: hdf5::types::VarLenUnicode = g.dataset("stream")?.read_scalar()?;
                let modules = g.dataset("modules")?.read_raw::<u32>()?;
                parts.push(Part {
                    daemon: name,
                    stream: stream.as_str().to_owned(),
                    modules: modules.iter().fold(0, |m, &b| m | 1 << b),
                });
            }
            (layout, options, parts)
        };
        let master = MasterFile::open(&path, layout.modules() as usize)?;
        let vds_frames = match master.end().data_group.dataset("data") {
            Ok(d) => d.shape().first().copied().unwrap_or(0) as u64,
            Err(_) => 0,
        };
        Ok(Self {
            layout,
            options,
            parts,
            frames: master.flushed() as u64,
            master,
            vds_frames,
        })
    }

    /// The daemons' parts, in the order given.
    pub fn parts(&self) -> &[Part] {
        &self.parts
    }

    /// Records the next index (merged over the parts).
    pub fn record(&mut self, record: &IndexRecord<'_>) {
        self.master.push(record);
        self.frames += 1;
    }

    /// Modules in the detector's grid.
    pub fn modules(&self) -> usize {
        self.layout.modules() as usize
    }

    /// Raw bytes of one module frame.
    pub fn module_bytes(&self) -> u64 {
        self.layout.module_bytes() as u64
    }

    /// Indices recorded.
    pub fn frames(&self) -> u64 {
        self.frames
    }

    /// Flushes the records: an SWMR reader sees them.
    pub fn flush(&mut self) -> Result<(), WriteError> {
        self.master.flush()
    }

    /// Writes the VDS over what each part recorded, how each part ended, and the finish
    /// marker; closes the file.
    pub fn finish(mut self, ends: &[PartEnd], end: &RunEnd) -> Result<u64, WriteError> {
        self.master.flush()?;
        let frames = self.frames;
        let (layout, options, vds_frames) = (self.layout, self.options, self.vds_frames);
        let parts = std::mem::take(&mut self.parts);
        let master = self.master.into_end(options.swmr)?;
        let counts: Vec<u64> = ends.iter().map(|e| e.recorded.min(frames)).collect();
        let me = Tiles {
            layout,
            k: options.frames_per_file,
            parts: &parts,
        };
        if options.master_data.vds() {
            me.write(&master, &counts, frames, vds_frames > 0)?;
        }
        let daemons = master.file.group("/entry/detingest/daemons")?;
        for (p, e) in parts.iter().zip(ends) {
            let g = daemons.group(&p.daemon)?;
            let state = if e.finished { "finished" } else { "died" };
            nxmx::ds_str(&g, "state", state)?;
            nxmx::ds_num(&g, "indices_recorded", e.recorded, None)?;
            // Its modules are missing from the index after its last record on, when the
            // detector's stream went on without it.
            let missing_from = if e.recorded < frames {
                e.recorded + 1
            } else {
                0
            };
            let ds = nxmx::ds_num(&g, "missing_from", missing_from, None)?;
            nxmx::attr_str(
                &ds,
                "description",
                "first index whose modules from this daemon are missing (0: none missing)",
            )?;
        }
        master.finish(frames, end)?;
        Ok(frames)
    }

    fn write_vds(
        &self,
        master: &MasterEnd,
        counts: &[u64],
        total: u64,
        replace: bool,
    ) -> Result<(), WriteError> {
        let me = Tiles {
            layout: self.layout,
            k: self.options.frames_per_file,
            parts: &self.parts,
        };
        me.write(master, counts, total, replace)
    }
}

/// The VDS of module tiles from each part's data files.
struct Tiles<'a> {
    layout: RunLayout,
    k: u64,
    parts: &'a [Part],
}

impl Tiles<'_> {
    /// `/entry/data/data` `[total, NY, NX]`; part `p`'s tiles map its indices `1..=counts[p]`.
    fn write(
        &self,
        master: &MasterEnd,
        counts: &[u64],
        total: u64,
        replace: bool,
    ) -> Result<(), WriteError> {
        if replace {
            master.data_group.unlink("data")?;
        }
        if total == 0 {
            return Ok(());
        }
        match self.layout.pixel {
            detingest_shm::PixelType::U8 => self.of::<u8>(&master.data_group, counts, total),
            detingest_shm::PixelType::U16 => self.of::<u16>(&master.data_group, counts, total),
            detingest_shm::PixelType::U32 => self.of::<u32>(&master.data_group, counts, total),
            detingest_shm::PixelType::I32 => self.of::<i32>(&master.data_group, counts, total),
            detingest_shm::PixelType::F32 => self.of::<f32>(&master.data_group, counts, total),
        }
    }

    fn of<T: H5Type>(&self, group: &Group, counts: &[u64], total: u64) -> Result<(), WriteError> {
        let [ny, nx] = self.layout.image_shape().map(|d| d as usize);
        let [my, mx] = self.layout.module_shape.map(|d| d as usize);
        let total = total as usize;
        let mut builder = group.new_dataset::<T>().shape((total, ny, nx));
        for (part, &count) in self.parts.iter().zip(counts) {
            for n in 1..=count.div_ceil(self.k) {
                let first = (n - 1) * self.k + 1;
                let in_file = self.k.min(count + 1 - first) as usize;
                let name = data_file_name(&part.stream, n);
                let start = (first - 1) as usize;
                for m in (0..self.layout.modules()).filter(|m| part.modules & (1 << m) != 0) {
                    let [y, x] = self.layout.tile_origin(m).map(|d| d as usize);
                    builder = builder.virtual_map(
                        &name,
                        DATA_PATH,
                        (in_file, ny, nx),
                        (0..in_file, y..y + my, x..x + mx),
                        (total, ny, nx),
                        (start..start + in_file, y..y + my, x..x + mx),
                    );
                }
            }
        }
        builder.create("data")?;
        Ok(())
    }
}
