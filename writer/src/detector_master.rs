//! The whole detector's master, `<stream>_master.h5`, when several daemons each write some
//! modules of it (`<stream>_<daemon>_data_NNNNNN.h5`): the NXmx metadata, the merged
//! per-index records (a module bit set when any daemon wrote it, `frame_lost` only when none
//! did), `/entry/data/data` a virtual dataset whose module tiles come from each daemon's data
//! files, and under `/entry/detingest/daemons/<name>` which daemon wrote which modules and
//! how its part ended (`missing_from`: the first index its modules are missing from).

use std::path::Path;

use crate::detector_info::DetectorInfo;
use crate::layout::RunLayout;
use crate::master::{IndexRecord, MasterFile, RunEnd};
use crate::master_end::{vds_files, VdsSource};
use crate::nxmx;
use crate::run_files::{master_path, FileOptions};
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
    /// Whether its daemon finished it, died, or could not be reached.
    pub outcome: PartOutcome,
}

/// How a daemon's part of a run ended, as the whole detector's master records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartOutcome {
    /// Its daemon finished its master.
    Finished,
    /// Its daemon is proven gone (its process ended, or the operator's `detingestd merge`):
    /// its files' write marks were cleared.
    Died,
    /// Its daemon could not be reached when the whole detector ended and could not be proven
    /// gone (frozen, or on another host): its files were left alone, as their writer may
    /// still hold them.
    Unknown,
}

impl PartOutcome {
    /// `finished`, `died` or `unknown`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Finished => "finished",
            Self::Died => "died",
            Self::Unknown => "unknown",
        }
    }
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
        let master =
            MasterFile::create(&master_path(dir, stream), &layout, info, user_json, options)?;
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
            let k = run.options.frames_per_file;
            let sources = tiles(&run.parts, &counts, &layout, k);
            (run.master.end()).write_vds(&layout, &sources, options.frames, false)?;
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
                statistics: None,
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

    /// Adds one part's modules of `index`, recorded already without them (the part could not
    /// be reached when it was merged and came back): see `MasterFile::amend`.
    pub fn amend(&mut self, index: u64, record: &IndexRecord<'_>) -> Result<(), WriteError> {
        self.master.amend(index, record)
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
        if options.master_data.vds() {
            let sources = tiles(&parts, &counts, &layout, options.frames_per_file);
            master.write_vds(&layout, &sources, frames, vds_frames > 0)?;
        }
        let daemons = master.file.group("/entry/detingest/daemons")?;
        for (p, e) in parts.iter().zip(ends) {
            let g = daemons.group(&p.daemon)?;
            nxmx::ds_str(&g, "state", e.outcome.name())?;
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
}

/// The VDS's sources of a detector taken by `parts`: part `p`'s module tiles for its indices
/// `1..=counts[p]`, from its data files (`k` indices each).
fn tiles(parts: &[Part], counts: &[u64], layout: &RunLayout, k: u64) -> Vec<VdsSource> {
    let mut sources = Vec::new();
    for (part, &count) in parts.iter().zip(counts) {
        for file in vds_files(&part.stream, k, count) {
            let mine = (0..layout.modules()).filter(|m| part.modules & (1 << m) != 0);
            sources.extend(mine.map(|m| VdsSource {
                module: Some(m),
                ..file.clone()
            }));
        }
    }
    sources
}
