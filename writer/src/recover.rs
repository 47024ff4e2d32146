//! Finishing a run its writer left unfinished (the process was killed, or the disk filled
//! before the run's end was written), from its files alone.
//!
//! A run's files are written with SWMR: whatever a flush made consistent survives the writer.
//! The master's records up to its last flush (`nimages`) are kept, record datasets grown
//! beyond it are cut back, the VDS (and links, as the run was configured) cover indices
//! `1..=nimages` of the data files that exist, each data file's `image_nr_high` says what it
//! holds of them, and the master records `finished`, the reason in `error` and `end_reason`.
//! The write marks the dead writer left are cleared, so every file opens plainly;
//! [`holders`] must have found no process holding any of the files (the caller checks, and
//! [`finish_unfinished`] checks again): clearing the marks of a file a live writer holds
//! would corrupt it. The master is finished in a copy (`.<stream>_master.h5.finishing`)
//! that replaces it by a rename once complete and on disk, so finishing that is itself killed
//! leaves the crashed master as it was, to be finished again.

use std::path::{Path, PathBuf};
use std::time::Duration;

use detingest_shm::PixelType;
use hdf5::file::OpenMode;
use hdf5::types::{FloatSize, IntSize, TypeDescriptor, VarLenUnicode};
use hdf5::File;

use crate::data_file::DATA_PATH;
use crate::layout::{Chunking, RunLayout};
use crate::master::{MasterFile, RunEnd};
use crate::master_end::vds_files;
use crate::part_records::clear_write_marks;
use crate::run_files::{data_file_name, MasterData};
use crate::{Codec, WriteError};

/// What finishing an unfinished run did.
#[derive(Debug, Clone)]
pub struct Recovered {
    /// The master.
    pub master: PathBuf,
    /// The stream's name (the master's file name without `_master.h5`).
    pub stream: String,
    /// Indices the master now holds: those its last flush recorded.
    pub frames: u64,
    /// Indices recorded lost among them.
    pub lost: u64,
    /// Data files of the run, in order.
    pub data_files: Vec<PathBuf>,
    /// Indices per data file.
    pub frames_per_file: u64,
    /// The master's `/entry/detingest/user_metadata` (JSON text).
    pub user_json: String,
    /// Image `[ny, nx]` and pixel type (from the first data file; `None` without one).
    pub image: Option<([u32; 2], PixelType)>,
    /// The chunks' codec (the first data file's filter).
    pub codec: Codec,
}

/// True when the run of the master at `path` has finished (its end is written). An error
/// when it cannot be read: a master whose writer was killed before the first flush keeps
/// write marks that neither a plain nor an SWMR reader passes.
pub fn is_finished(path: &Path) -> Result<bool, WriteError> {
    let file = open_quickly(path)?;
    Ok(file
        .dataset("/entry/detingest/finished")?
        .read_scalar::<u8>()?
        != 0)
}

/// True when `path` is the whole detector's master of several daemons (`detingestd merge`
/// finishes those, from their parts).
pub fn is_detector_master(path: &Path) -> bool {
    open_quickly(path).is_ok_and(|f| f.group("/entry/detingest/daemons").is_ok())
}

/// Opens `path` to read, plainly or as an SWMR reader, trying each read of its metadata
/// twice: HDF5's default for an SWMR reader (100 tries, sleeping between them, for a writer
/// caught mid-flush) spends minutes on a file a killed writer left truncated.
fn open_quickly(path: &Path) -> Result<File, WriteError> {
    File::open(path)
        .or_else(|_| {
            File::with_options()
                .with_fapl(|p| p.metadata_read_attempts(2))
                .open_as(path, OpenMode::ReadSWMR)
        })
        .map_err(|e| WriteError::Metadata(format!("{}: {e}", path.display())))
}

/// The data files of `stream` in `dir`: `_data_000001.h5` on, as long as they exist.
pub fn data_files(dir: &Path, stream: &str) -> Vec<PathBuf> {
    (1..)
        .map(|n| dir.join(data_file_name(stream, n)))
        .take_while(|p| p.exists())
        .collect()
}

/// A run's unfinished master that changed less than this long ago may still be written by
/// a daemon no process check reaches (another host sharing the storage): it flushes every
/// `flush_interval_ms`, 1 s by default. Finishing a crashed run, and `detingestd merge`
/// taking a part for dead, wait until its master is this quiet.
pub const QUIET: Duration = Duration::from_secs(3);

/// How long ago `path` last changed (`None` if that cannot be read).
pub fn changed_ago(path: &Path) -> Option<Duration> {
    std::fs::metadata(path)
        .and_then(|m| m.modified())
        .map(|t| t.elapsed().unwrap_or_default())
        .ok()
}

/// The stream of a master's path (`<stream>_master.h5`), if it names one.
pub fn stream_of_master(master: &Path) -> Option<&str> {
    master
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_suffix("_master.h5"))
}

/// A process of this host that holds the master `master` or one of its run's data files open,
/// and which file: its writer is alive ([`holders`]).
pub fn run_holder(master: &Path) -> Option<(u32, PathBuf)> {
    let mut files = stream_of_master(master)
        .map(|stream| data_files(master.parent().unwrap_or(Path::new(".")), stream))
        .unwrap_or_default();
    files.push(master.to_owned());
    holders(&files).into_iter().next()
}

/// Processes of this host that hold one of `paths` open: `(pid, path)`. Read from
/// `/proc/<pid>/fd` (every process, as root; the daemon's own user's otherwise, which is the
/// user that writes the files). This process counts too: a `serve` that looks for crashed
/// runs while its own run writes must find that run's files held.
pub fn holders(paths: &[PathBuf]) -> Vec<(u32, PathBuf)> {
    let ids: Vec<(u64, u64, &PathBuf)> = paths
        .iter()
        .filter_map(|p| {
            use std::os::unix::fs::MetadataExt;
            let m = std::fs::metadata(p).ok()?;
            Some((m.dev(), m.ino(), p))
        })
        .collect();
    let mut found = Vec::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return found;
    };
    for entry in procs.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            use std::os::unix::fs::MetadataExt;
            let Ok(m) = std::fs::metadata(fd.path()) else {
                continue;
            };
            if let Some((_, _, p)) = ids.iter().find(|(d, i, _)| *d == m.dev() && *i == m.ino()) {
                found.push((pid, (*p).clone()));
            }
        }
    }
    found
}

/// Finishes the unfinished run whose master is `master`, recording `reason` (e.g. "crashed:
/// ..."). Refuses a finished run and a run whose files a process of this host holds.
pub fn finish_unfinished(master: &Path, reason: &str) -> Result<Recovered, WriteError> {
    let bad = |what: String| WriteError::Metadata(format!("{}: {what}", master.display()));
    let (dir, stream) = unfinished_run(master)?;
    let files = data_files(dir, &stream);
    // The space the run held for its end is the end's now.
    let _ = std::fs::remove_file(crate::run_files::reserve_path(dir, &stream));
    let copy = dir.join(format!(".{stream}_master.h5.finishing"));
    // A writer killed before its first flush left marks no reader passes; one killed while
    // it made the master left it incomplete. Cleared, the copy tells.
    let unusable = |e: WriteError| {
        let _ = std::fs::remove_file(&copy);
        if files.is_empty() {
            set_aside(master, dir, &stream, &e)
        } else {
            e
        }
    };
    let _ = std::fs::remove_file(&copy); // a finishing that was itself killed
    std::fs::copy(master, &copy).map_err(|e| bad(format!("cannot copy it: {e}")))?;
    match clear_write_marks(&copy).and_then(|()| is_finished(&copy)) {
        Ok(false) => {}
        Ok(true) => {
            let _ = std::fs::remove_file(&copy);
            return Err(bad("the run has finished already".into()));
        }
        Err(e) => return Err(unusable(e)),
    }
    // What the run was, and every record dataset there.
    let ((_, master_data, planned_k, user_json), mut m) = run_settings(&copy)
        .and_then(|s| MasterFile::open(&copy, s.0 as usize).map(|m| (s, m)))
        .map_err(unusable)?;
    let frames = m.flushed() as u64;
    let (files, image) = usable_data_files(&files, planned_k, frames).inspect_err(|_| {
        let _ = std::fs::remove_file(&copy);
    })?;
    let (image, codec) = match image {
        Some((shape, pixel, codec)) => (Some((shape, pixel)), codec),
        None => (None, Codec::None),
    };
    let k = match (planned_k, files.first()) {
        (Some(k), _) => k,
        (None, Some(f)) => frames_per_file_of(f)?,
        (None, None) => 1,
    };
    let lost = m.cut_to_flushed()?;
    let ended = m.last_timestamp();
    let end = m.into_end(false)?;
    let view = DataView {
        stream: &stream,
        frames,
        frames_per_file: k,
        files: &files,
    };
    view.write(&end, master_data, image)?;
    end.finish(
        frames,
        &RunEnd {
            next_stream: None,
            error: Some(reason.to_owned()),
            ended,
        },
    )?;
    crate::nxmx::ds_str(
        &end.file.group("/entry/detingest")?,
        "end_reason",
        reason.split(':').next().unwrap_or(reason),
    )?;
    end.file.flush()?;
    drop(end);
    // On disk, then in place of the crashed master.
    std::fs::File::open(&copy)
        .and_then(|f| f.sync_all())
        .and_then(|()| std::fs::rename(&copy, master))
        .and_then(|()| std::fs::File::open(dir).and_then(|d| d.sync_all()))
        .map_err(|e| bad(format!("cannot put the finished copy in place: {e}")))?;
    Ok(Recovered {
        master: master.to_owned(),
        stream,
        frames,
        lost,
        data_files: files,
        frames_per_file: k,
        user_json,
        image,
        codec,
    })
}

/// The directory and stream of `master`, a run's master that has not finished and that no
/// process of this host holds open.
fn unfinished_run(master: &Path) -> Result<(&Path, String), WriteError> {
    let bad = |what: String| WriteError::Metadata(format!("{}: {what}", master.display()));
    let dir = master.parent().unwrap_or(Path::new("."));
    let stream = stream_of_master(master)
        .ok_or_else(|| bad("not a run's master (<stream>_master.h5)".into()))?
        .to_owned();
    if is_finished(master).unwrap_or(false) {
        return Err(bad("the run has finished already".into()));
    }
    if let Some((pid, path)) = run_holder(master) {
        return Err(bad(format!(
            "process {pid} holds {} open: its writer may be alive; nothing was changed",
            path.display()
        )));
    }
    Ok((dir, stream))
}

/// The geometry of a data file: its image shape, pixel type and codec.
type Geometry = ([u32; 2], detingest_shm::PixelType, Codec);

/// The data files whose marks could be cleared, and the image they hold. One its writer
/// died while making (at a rollover: it holds nothing the `frames` records cover, with
/// `planned_k` indices per file) is set aside as `.h5.unreadable`.
fn usable_data_files(
    files: &[PathBuf],
    planned_k: Option<u64>,
    frames: u64,
) -> Result<(Vec<PathBuf>, Option<Geometry>), WriteError> {
    let (mut usable, mut image) = (Vec::new(), None);
    for (n, f) in files.iter().enumerate() {
        let checked = clear_write_marks(f).and_then(|()| image_of(f));
        match (checked, planned_k) {
            (Ok(geometry), _) => {
                image.get_or_insert(geometry);
                usable.push(f.clone());
            }
            (Err(e), Some(k)) if n as u64 * k >= frames => {
                let aside = f.with_extension("h5.unreadable");
                std::fs::rename(f, &aside).map_err(|r| {
                    WriteError::Metadata(format!(
                        "{} is unreadable ({e}) and cannot be set aside: {r}",
                        f.display()
                    ))
                })?;
            }
            (Err(e), _) => return Err(e),
        }
    }
    Ok((usable, image))
}

/// What the finished master's `/entry/data` shows of the data files.
struct DataView<'a> {
    stream: &'a str,
    frames: u64,
    frames_per_file: u64,
    files: &'a [PathBuf],
}

impl DataView<'_> {
    /// The VDS over every data file and the `data_NNNNNN` links (as the run's master data
    /// asks), and each data file's `image_nr_high`.
    fn write(
        &self,
        end: &crate::master_end::MasterEnd,
        master_data: MasterData,
        image: Option<([u32; 2], detingest_shm::PixelType)>,
    ) -> Result<(), WriteError> {
        let (k, frames) = (self.frames_per_file, self.frames);
        if let (true, Some((shape, pixel))) = (master_data.vds(), image) {
            let layout = RunLayout {
                pixel,
                module_shape: shape,
                grid: [1, 1],
                chunking: Chunking::Frame,
                codec: Codec::None,
            };
            let replace = end.data_group.dataset("data").is_ok();
            end.write_vds(&layout, &vds_files(self.stream, k, frames), frames, replace)?;
        }
        if master_data.links() {
            for n in 1..=self.files.len() as u64 {
                if end.data_group.link_exists(&format!("data_{n:06}")) {
                    continue;
                }
                end.link_data_file(n, &data_file_name(self.stream, n))?;
            }
        }
        for (n, f) in self.files.iter().enumerate() {
            let first = n as u64 * k + 1;
            let high = (first + k - 1).min(frames.max(first - 1));
            File::open_rw(f)?
                .dataset(DATA_PATH)?
                .attr("image_nr_high")?
                .write_scalar(&(high as i64))?;
        }
        Ok(())
    }
}

/// Sets aside a master its writer died while making (no data file: nothing was recorded)
/// as `<stream>_master.h5.unreadable`; the error says so (or why it could not).
fn set_aside(master: &Path, dir: &Path, stream: &str, why: &WriteError) -> WriteError {
    let aside = dir.join(format!("{stream}_master.h5.unreadable"));
    match std::fs::rename(master, &aside) {
        Ok(()) => WriteError::Metadata(format!(
            "{}: its writer died while making it ({why}; no data file, nothing recorded): set \
             aside as {}",
            master.display(),
            aside.display()
        )),
        Err(e) => WriteError::Metadata(format!(
            "{}: incomplete ({why}) and cannot be set aside: {e}",
            master.display()
        )),
    }
}

/// What the master says of its run: modules, master layout, indices per data file (if
/// recorded), user metadata.
fn run_settings(master: &Path) -> Result<(u32, MasterData, Option<u64>, String), WriteError> {
    let file = File::open(master)?;
    let ours = file.group("/entry/detingest")?;
    let modules = ours.dataset("modules")?.read_scalar::<u32>()?;
    let text = |name: &str| -> Result<String, WriteError> {
        Ok(ours
            .dataset(name)?
            .read_scalar::<VarLenUnicode>()?
            .as_str()
            .to_owned())
    };
    let master_data = match text("master_data")?.as_str() {
        "links" => MasterData::Links,
        "both" => MasterData::Both,
        _ => MasterData::Vds,
    };
    let k = ours
        .dataset("frames_per_file")
        .and_then(|d| d.read_scalar::<u64>())
        .ok();
    Ok((modules, master_data, k, text("user_metadata")?))
}

/// Image shape, pixel type and codec of a data file's `/entry/data/data`.
fn image_of(path: &Path) -> Result<([u32; 2], PixelType, Codec), WriteError> {
    let file = File::open(path)?;
    let data = file.dataset(DATA_PATH)?;
    let shape = data.shape();
    let bad = |what: &str| WriteError::Metadata(format!("{}: {what}", path.display()));
    let [_, ny, nx] = shape.as_slice() else {
        return Err(bad("the image dataset is not 3-D"));
    };
    let pixel = match data.dtype()?.to_descriptor()? {
        TypeDescriptor::Unsigned(IntSize::U1) => PixelType::U8,
        TypeDescriptor::Unsigned(IntSize::U2) => PixelType::U16,
        TypeDescriptor::Unsigned(IntSize::U4) => PixelType::U32,
        TypeDescriptor::Integer(IntSize::U4) => PixelType::I32,
        TypeDescriptor::Float(FloatSize::U4) => PixelType::F32,
        other => {
            return Err(bad(&format!(
                "pixel type {other:?} is not one detingest writes"
            )))
        }
    };
    let codec = match data.filters().first() {
        Some(hdf5::filters::Filter::User(32008, _)) => Codec::BitshuffleLz4,
        Some(hdf5::filters::Filter::User(32004, _)) => Codec::Lz4,
        _ => Codec::None,
    };
    Ok(([*ny as u32, *nx as u32], pixel, codec))
}

/// Indices per data file of a run whose master does not say: the first data file's planned
/// range (`image_nr_low ..= image_nr_high`, set for the whole file under SWMR).
fn frames_per_file_of(path: &Path) -> Result<u64, WriteError> {
    let file = File::open(path)?;
    let data = file.dataset(DATA_PATH)?;
    let low = data.attr("image_nr_low")?.read_scalar::<i64>()?;
    let high = data.attr("image_nr_high")?.read_scalar::<i64>()?;
    Ok((high - low + 1).max(1) as u64)
}
