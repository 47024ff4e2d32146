//! The file set of one run: `<dir>/<stream>_master.h5` and `<stream>_data_000001.h5`, ...
//! each holding `frames_per_file` indices. Chunks go to the data file their index falls in;
//! records go to the master in index order; a data file is closed once the record of its last
//! index is in. A data file stays open while an earlier index is still open, so datasets that
//! straddle a rollover lose nothing.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};

use crate::data_file::{probe_filter_values, DataFile};
use crate::detector_info::DetectorInfo;
use crate::layout::{Chunking, RunLayout};
use crate::master::{IndexRecord, MasterFile, RunEnd};
use crate::master_end::vds_files;
use crate::WriteError;

/// Per-run file options.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FileOptions {
    /// Indices per data file.
    pub frames_per_file: u64,
    /// What the master's `/entry/data` holds.
    pub master_data: MasterData,
    /// Indices the run will have, when known (0: open-ended): the VDS (and the links) are
    /// then written when the run starts, so they are there while it goes on and after a crash.
    pub frames: u64,
    /// Write with SWMR: readers may open the files with SWMR read access while the run goes
    /// on and see every flushed index (data files at once; the master once it has every
    /// object it needs during the run).
    pub swmr: bool,
    /// Record per-frame statistics in the master, counted against these limits (`None`:
    /// no `frame_statistics` group).
    pub statistics: Option<crate::StatsLimits>,
}

impl Default for FileOptions {
    fn default() -> Self {
        Self {
            frames_per_file: 1000,
            master_data: MasterData::Vds,
            frames: 0,
            swmr: true,
            statistics: None,
        }
    }
}

/// What the master's `/entry/data` (NXdata) holds, so each reader sees the run's frames once:
/// fabio and Albula count every `data*` entry of the group, XDS's neggia follows
/// `data_000001`, ... links, silx and nexusformat follow `default` to a signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MasterData {
    /// `data`: a virtual dataset over every data file, the NXdata's signal and the file's
    /// default (h5py, silx, nexusformat, fabio, DIALS).
    #[default]
    Vds,
    /// `data_000001`, ...: external links to the data files, DECTRIS-style (XDS with neggia,
    /// Albula, fabio); no signal, so silx finds no default plot.
    Links,
    /// Both (fabio then counts every frame twice).
    Both,
}

impl MasterData {
    /// `"vds"`, `"links"` or `"both"`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Vds => "vds",
            Self::Links => "links",
            Self::Both => "both",
        }
    }

    /// True when the master has the VDS.
    pub fn vds(self) -> bool {
        self != Self::Links
    }

    /// True when the master links every data file.
    pub fn links(self) -> bool {
        self != Self::Vds
    }
}

/// Path of a run's master file.
pub fn master_path(dir: &Path, stream: &str) -> PathBuf {
    dir.join(format!("{stream}_master.h5"))
}

/// File name (relative to the master) of a run's data file `number` (1-based).
pub fn data_file_name(stream: &str, number: u64) -> String {
    DataFileName { stream, number }.to_string()
}

/// The name of data file `number` of `stream`, formatted without allocating.
#[derive(Debug, Clone, Copy)]
pub struct DataFileName<'a> {
    /// The stream's name.
    pub stream: &'a str,
    /// 1-based file number.
    pub number: u64,
}

impl std::fmt::Display for DataFileName<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}_data_{:06}.h5", self.stream, self.number)
    }
}

/// The open files of one run.
pub struct RunFiles {
    /// Space held for the run's end (see [`RESERVE_BYTES`]); given back first thing at the end.
    reserve: Option<PathBuf>,
    /// A data file closed since the last flush (its records are not on disk yet).
    closed_unflushed: bool,
    dir: PathBuf,
    stream: String,
    layout: RunLayout,
    options: FileOptions,
    master: MasterFile,
    /// Open data files, oldest first.
    open: VecDeque<DataFile>,
    /// Data files created so far.
    created: u64,
    /// Indices recorded (written or lost).
    frames: u64,
    /// Indices recorded lost.
    lost: u64,
    /// Indices the master's VDS covers (0: none yet).
    vds_frames: u64,
    /// Data files the master links so far.
    linked: u64,
}

/// Bytes held on the run's file system from its start to its end, so a run that fills the
/// disk can still write its end: the records buffered since the last flush, the VDS and the
/// finish marker. The VDS takes about 100 bytes per data file (2000 one-index data files made
/// a master 202 KB larger than one data file did: `detingestd run`, 16 x 32 frames), so
/// 8 MiB covers some 80,000 data files. Writing it costs the writer thread about 5 ms when the
/// stream opens (`dd bs=256k count=32` on this machine's disk: 4.9-5.3 ms), before the first
/// chunk: the queues hold the first frames meanwhile.
pub const RESERVE_BYTES: usize = 8 << 20;

/// The reserve file of `stream` in `dir`.
pub fn reserve_path(dir: &Path, stream: &str) -> PathBuf {
    dir.join(format!(".{stream}.reserve"))
}

/// Writes [`RESERVE_BYTES`] of zeros (real blocks, not a sparse file) to the reserve file,
/// or on a small file system as much as a sixteenth of it (1 MiB still holds the VDS of about
/// ten thousand data files; 64 KiB still holds a master's end: its records' last flush, the
/// times and the finish marker); `None` (and nothing left behind) when not even that could be
/// held.
fn reserve_space(dir: &Path, stream: &str) -> Option<PathBuf> {
    use std::io::Write;
    let path = reserve_path(dir, stream);
    for size in [RESERVE_BYTES, 1 << 20, 256 << 10, 64 << 10] {
        let written = std::fs::File::create(&path).and_then(|mut f| {
            let block = vec![0u8; size.min(256 << 10)];
            for _ in 0..size / block.len() {
                f.write_all(&block)?;
            }
            f.flush()
        });
        if written.is_ok() && fits(dir, size) {
            return Some(path);
        }
        let _ = std::fs::remove_file(&path);
    }
    None
}

/// True when `dir`'s file system keeps at least 16 times `size` free besides it.
fn fits(dir: &Path, size: usize) -> bool {
    let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: `c` is a NUL-terminated path; `st` is a plain C struct (all-zero is a valid
    // value) that statvfs fills, living across the call.
    let (rc, st) = unsafe {
        let mut st: libc::statvfs = std::mem::zeroed();
        (libc::statvfs(c.as_ptr(), &mut st), st)
    };
    if rc != 0 {
        return false;
    }
    let free = st.f_bavail as u128 * st.f_frsize as u128;
    free >= 16 * size as u128
}

impl RunFiles {
    /// Creates the master in `dir` (which must exist). Refuses if the master or the first data
    /// file exists: detingest never overwrites.
    pub fn create(
        dir: &Path,
        stream: &str,
        layout: RunLayout,
        info: &DetectorInfo,
        user_json: &str,
        options: FileOptions,
    ) -> Result<Self, WriteError> {
        let first = dir.join(data_file_name(stream, 1));
        if first.exists() {
            return Err(WriteError::Exists(first));
        }
        crate::hdf5_memory::limit_free_lists()?;
        // The filter values an HDF5 plugin visible to this process would store (filter.rs):
        // wrong ones refuse the run here, before any file exists.
        probe_filter_values(layout)?;
        let master =
            MasterFile::create(&master_path(dir, stream), &layout, info, user_json, options)?;
        let mut run = Self {
            reserve: reserve_space(dir, stream),
            closed_unflushed: false,
            dir: dir.to_owned(),
            stream: stream.to_owned(),
            layout,
            options: FileOptions {
                frames_per_file: options.frames_per_file.max(1),
                ..options
            },
            master,
            open: VecDeque::new(),
            created: 0,
            frames: 0,
            lost: 0,
            vds_frames: 0,
            linked: 0,
        };
        let (planned, k) = (options.frames, run.options.frames_per_file);
        if planned > 0 {
            if options.master_data.vds() {
                let files = vds_files(stream, k, planned);
                run.master
                    .end()
                    .write_vds(&layout, &files, planned, false)?;
                run.vds_frames = planned;
            }
            if options.master_data.links() {
                for n in 1..=planned.div_ceil(k) {
                    run.master
                        .end()
                        .link_data_file(n, &data_file_name(stream, n))?;
                }
                run.linked = planned.div_ceil(k);
            }
        }
        if options.swmr {
            run.master.start_swmr()?;
        }
        Ok(run)
    }

    /// Writes the encoded chunk of `module` (ignored with frame chunking) of `index`.
    pub fn write_chunk(&mut self, index: u64, module: u32, chunk: &[u8]) -> Result<(), WriteError> {
        if index <= self.frames {
            return Err(WriteError::OutOfOrder {
                index,
                expected: self.frames + 1,
            });
        }
        if module >= self.layout.modules() {
            return Err(WriteError::Shape { index });
        }
        let origin = match self.layout.effective_chunking() {
            Chunking::Module => self.layout.tile_origin(module),
            Chunking::Frame => [0, 0],
        };
        self.file_for(index)?.write_chunk(index, origin, chunk)
    }

    /// Records the next index: its frame number, which modules were written, lost packets.
    /// `record.modules == 0` records the index as lost.
    pub fn record(&mut self, index: u64, record: &IndexRecord<'_>) -> Result<(), WriteError> {
        if index != self.frames + 1 {
            return Err(WriteError::OutOfOrder {
                index,
                expected: self.frames + 1,
            });
        }
        self.file_for(index)?.grow_to(index)?;
        self.master.push(record);
        self.frames = index;
        if record.modules == 0 {
            self.lost += 1;
        }
        // Close data files whose every index is recorded (the caller flushes the master's
        // records soon after: `data_file_closed`).
        while let Some(f) = self.open.front() {
            if f.first() + self.options.frames_per_file - 1 > self.frames {
                break;
            }
            if let Some(f) = self.open.pop_front() {
                f.close()?;
                self.closed_unflushed = true;
            }
        }
        Ok(())
    }

    /// Records that module bits `late` of `index` (recorded already) arrived after it closed.
    pub fn mark_late(&mut self, index: u64, late: u64) -> Result<(), WriteError> {
        if index == 0 || index > self.frames {
            return Err(WriteError::OutOfOrder {
                index,
                expected: self.frames,
            });
        }
        self.master.mark_late(index, late)
    }

    /// Flushes the master's records and every open data file.
    pub fn flush(&mut self) -> Result<(), WriteError> {
        for f in &mut self.open {
            f.flush()?;
        }
        self.master.flush()?;
        self.closed_unflushed = false;
        Ok(())
    }

    /// True when a data file closed since the last flush: the data are on disk, their
    /// records not yet (a crash would leave them out of the run).
    pub fn data_file_closed(&self) -> bool {
        self.closed_unflushed
    }

    /// Closes every data file, writes the VDS (if configured) and the finish marker, and
    /// closes the master. Returns the number of indices recorded.
    pub fn finish(mut self, end: &RunEnd) -> Result<u64, WriteError> {
        // The end (the records still buffered, the VDS, links, the marker) gets the space
        // held for it, even when the disk filled.
        if let Some(r) = self.reserve.take() {
            let _ = std::fs::remove_file(r);
        }
        let mut first_error = None;
        while let Some(f) = self.open.pop_front() {
            if let Err(e) = f.close() {
                first_error.get_or_insert(e);
            }
        }
        // Chunks may lie beyond the last recorded index (an aborted run); the VDS covers the
        // recorded indices 1..=frames, which fill data file n from (n - 1) * k + 1 on.
        let frames = self.frames;
        self.master.flush()?;
        let options = self.options;
        let master = self.master.into_end(options.swmr)?;
        if options.master_data.vds() && frames != self.vds_frames {
            // The run ended short of (or had no) planned count.
            let files = vds_files(&self.stream, options.frames_per_file, frames);
            master.write_vds(&self.layout, &files, frames, self.vds_frames > 0)?;
        }
        if options.master_data.links() {
            for n in self.linked + 1..=self.created {
                master.link_data_file(n, &data_file_name(&self.stream, n))?;
            }
        }
        let mut end = end.clone();
        if let Some(e) = &first_error {
            end.error.get_or_insert_with(|| e.to_string());
        }
        master.finish(frames, &end)?;
        match first_error {
            Some(e) => Err(e),
            None => Ok(frames),
        }
    }

    /// Indices recorded (written and lost).
    pub fn frames(&self) -> u64 {
        self.frames
    }

    /// Indices recorded lost.
    pub fn lost(&self) -> u64 {
        self.lost
    }

    /// The master file's path.
    pub fn master_path(&self) -> PathBuf {
        master_path(&self.dir, &self.stream)
    }

    /// The open data file `index` belongs in, creating (and linking) files up to it.
    fn file_for(&mut self, index: u64) -> Result<&mut DataFile, WriteError> {
        let k = self.options.frames_per_file;
        let number = (index - 1) / k + 1;
        while self.created < number {
            let n = self.created + 1;
            let name = data_file_name(&self.stream, n);
            let first = (n - 1) * k + 1;
            let mut last = first + k - 1;
            if self.options.frames > 0 {
                last = last.min(self.options.frames);
            }
            let swmr = self.options.swmr;
            let file = DataFile::create(&self.dir.join(&name), self.layout, first, last, swmr)?;
            if self.options.master_data.links() && !swmr && self.linked < n {
                self.master.end().link_data_file(n, &name)?;
                self.linked = n;
            }
            self.open.push_back(file);
            self.created = n;
        }
        let first = (number - 1) * k + 1;
        self.open
            .iter_mut()
            .find(|f| f.first() == first)
            .ok_or(WriteError::OutOfOrder {
                index,
                expected: self.frames + 1,
            })
    }
}
