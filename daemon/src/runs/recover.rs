//! Runs a crash left unfinished: a daemon killed (or a host that lost power, or a disk that
//! filled before the end was written) leaves a master whose `finished` is 0, without its VDS,
//! and files that refuse a plain open. `detingestd serve` looks for them under its data
//! directory when it starts and `detingestd finish PATH` takes them by hand: each is finished
//! from its files (`detingest_writer::finish_unfinished`: the records of its last flush, the
//! VDS over its data files, the reason), and, under `serve`, announced to the sinks as a
//! stream that started and ended with that error, so live viewers and the catalogue hand-off
//! (Kafka `wrdn`) hear of it.
//!
//! A master is left alone while a process of this host holds one of its files, while it
//! changed less than [`QUIET`] ago (a daemon of another host sharing the storage may still
//! write it), and when it is a whole detector's master of several daemons (`detingestd
//! merge` finishes those). A daemon of several (`[cluster]`) finishes at its start only its
//! own parts (`<stream>_<name>_master.h5`): another host's daemon may be frozen, not dead,
//! and no process check reaches it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use detingest_shm::{Name, StreamId};
use detingest_writer::{
    changed_ago, finish_unfinished, is_detector_master, is_finished, run_holder, FileOptions,
    Recovered,
};

use crate::sink::{Notification, RunSinks, StreamEndNotice, StreamStartNotice};
use crate::stream::{now_ns, StreamInfo};

pub use detingest_writer::QUIET;

/// How deep under the data directory masters are looked for (`beamtime/source/` is 2).
const DEPTH: usize = 4;

/// What became of one unfinished master.
#[derive(Debug)]
pub enum Outcome {
    /// Finished now.
    Finished(Recovered),
    /// Left alone, and why.
    Left(Why),
}

/// Why an unfinished master was left alone.
#[derive(Debug)]
pub enum Why {
    /// It changed this long ago, less than [`QUIET`]: its writer may be alive.
    Recent(Duration),
    /// A process of this host holds this file of the run open.
    Held(u32, PathBuf),
    /// A whole detector's master: `detingestd merge` finishes it.
    Detector,
    /// The writer library refused (a process holds a file, a file is unreadable...).
    Refused(String),
}

impl std::fmt::Display for Why {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Recent(age) => write!(
                f,
                "changed {} ms ago: its writer may be alive",
                age.as_millis()
            ),
            Self::Held(pid, file) => write!(
                f,
                "process {pid} holds {} open: its writer is alive",
                file.display()
            ),
            Self::Detector => write!(
                f,
                "a whole detector's master: `detingestd merge` finishes it"
            ),
            Self::Refused(e) => write!(f, "{e}"),
        }
    }
}

/// The masters under `root` (or `root` itself, a master) whose run has not finished, or
/// that cannot be read as they are.
pub fn unfinished_masters(root: &Path) -> Vec<PathBuf> {
    files_under(root, &|path| {
        let is_master = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.ends_with("_master.h5"));
        // Unreadable: its writer was killed before the first flush (marks no reader passes).
        is_master && !is_finished(path).unwrap_or(false)
    })
}

/// The files under `root` (or `root` itself), [`DEPTH`] levels deep, that `keep` takes,
/// sorted.
pub(super) fn files_under(root: &Path, keep: &dyn Fn(&Path) -> bool) -> Vec<PathBuf> {
    fn walk(path: &Path, depth: usize, keep: &dyn Fn(&Path) -> bool, found: &mut Vec<PathBuf>) {
        if path.is_file() {
            if keep(path) {
                found.push(path.to_owned());
            }
            return;
        }
        if depth == 0 {
            return;
        }
        if let Ok(entries) = std::fs::read_dir(path) {
            for e in entries.flatten() {
                walk(&e.path(), depth - 1, keep, found);
            }
        }
    }
    let mut found = Vec::new();
    walk(root, DEPTH, keep, &mut found);
    found.sort();
    found
}

/// Finishes the unfinished run of `master` with `reason`, unless it may still be written.
pub fn finish(master: &Path, reason: &str) -> Outcome {
    if let Some((pid, file)) = run_holder(master) {
        return Outcome::Left(Why::Held(pid, file));
    }
    if is_detector_master(master) {
        return Outcome::Left(Why::Detector);
    }
    // Unreadable: taken as just changed.
    let age = changed_ago(master).unwrap_or_default();
    if age < QUIET {
        return Outcome::Left(Why::Recent(age));
    }
    match finish_unfinished(master, reason) {
        Ok(r) => Outcome::Finished(r),
        Err(e) => Outcome::Left(Why::Refused(e.to_string())),
    }
}

/// At `serve`'s start, on a thread of its own (`recover`): finishes every run under
/// `data_dir` a crash left unfinished and announces each to `sinks`. A master that changed
/// less than [`QUIET`] ago (the daemon restarted at once after the crash) is tried again once
/// it is that old.
pub fn spawn_finish_left_behind(
    data_dir: PathBuf,
    sinks: RunSinks,
    cluster_name: &str,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    let own = (!cluster_name.is_empty()).then(|| format!("_{cluster_name}_master.h5"));
    std::thread::Builder::new()
        .name("recover".into())
        .spawn(move || {
            let mut sinks = sinks;
            let finished = finish_left_behind(&data_dir, &mut sinks, own.as_deref());
            if finished > 0 {
                for s in &mut sinks.sinks {
                    s.finish();
                }
            }
        })
}

/// Finishes what [`spawn_finish_left_behind`] finds (only masters whose name ends in `own`,
/// when given; event runs when not), logging each; returns how many runs were finished.
pub fn finish_left_behind(data_dir: &Path, sinks: &mut RunSinks, own: Option<&str>) -> usize {
    let reason = "crashed: the run's daemon stopped before its end was written; \
                  finished from its files by detingestd serve at its start";
    let mut done = Vec::new();
    for master in unfinished_masters(data_dir) {
        let name = master.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if own.is_some_and(|own| !name.ends_with(own)) {
            continue; // another daemon's part: its own daemon finishes it
        }
        let mut outcome = finish(&master, reason);
        if let Outcome::Left(Why::Recent(age)) = &outcome {
            std::thread::sleep(QUIET.saturating_sub(*age) + Duration::from_millis(100));
            outcome = finish(&master, reason);
        }
        match &outcome {
            Outcome::Finished(r) => {
                tracing::warn!(
                    master = %master.display(),
                    frames = r.frames,
                    lost = r.lost,
                    data_files = r.data_files.len(),
                    "finished a run a crash left unfinished (indices up to its last flush)"
                );
                announce(sinks, data_dir, r, reason);
            }
            Outcome::Left(why) => {
                tracing::warn!(master = %master.display(), why = %why, "unfinished run left as it is")
            }
        }
        done.push((master, outcome));
    }
    let finished = done
        .iter()
        .filter(|(_, o)| matches!(o, Outcome::Finished(_)))
        .count();
    // Neutron event runs (`<stream>.nxs`) too; a cluster's daemons write none.
    let events = if own.is_none() {
        super::recover_events::finish_events_left_behind(data_dir, sinks, reason)
    } else {
        0
    };
    tracing::info!(
        finished,
        events,
        left = done.len() - finished,
        "crashed runs looked for under the data directory"
    );
    finished + events
}

/// Tells the sinks of a finished run: a start and an end with the reason.
fn announce(sinks: &mut RunSinks, data_dir: &Path, r: &Recovered, reason: &str) {
    let Some(info) = stream_info(data_dir, r) else {
        tracing::warn!(master = %r.master.display(), "not under beamtime/source/ of the data directory: not announced");
        return;
    };
    let files = FileOptions {
        frames_per_file: r.frames_per_file,
        ..FileOptions::default()
    };
    let run = (r.user_json.as_str(), files, r.frames, r.lost);
    tell_ended(sinks, Arc::new(info), run, reason);
}

/// Tells `sinks` of a run of `info` that started and ended with `reason`: its user metadata,
/// file options, indices and lost ones.
pub(super) fn tell_ended(
    sinks: &mut RunSinks,
    info: Arc<StreamInfo>,
    (user_json, files, frames, lost): (&str, FileOptions, u64, u64),
    reason: &str,
) {
    let start = Notification::StreamStart(StreamStartNotice {
        stream: Arc::clone(&info),
        started_ns: now_ns(),
        detector: Default::default(),
        user_json: user_json.to_owned(),
        files,
    });
    let end = Notification::StreamEnd(StreamEndNotice {
        stream: info,
        frames,
        lost,
        late: 0,
        ended_ns: now_ns(),
        error: Some(reason.to_owned()),
    });
    for s in &mut sinks.sinks {
        s.notify(&start);
        s.notify(&end);
        s.batch_done();
    }
}

/// The stream of a recovered run: `data_dir/beamtime/source/<stream>_master.h5`.
fn stream_info(data_dir: &Path, r: &Recovered) -> Option<StreamInfo> {
    let rel = r.master.strip_prefix(data_dir).ok()?;
    let parts: Vec<&str> = rel.iter().filter_map(|c| c.to_str()).collect();
    let [beamtime, source, _] = parts.as_slice() else {
        return None;
    };
    let id = StreamId {
        beamtime: Name::new(beamtime).ok()?,
        source: Name::new(source).ok()?,
        stream: Name::new(&r.stream).ok()?,
    };
    let (shape, pixel) = r.image.unwrap_or(([0, 0], detingest_shm::PixelType::U16));
    Some(StreamInfo {
        slot: 0,
        key: id.to_string(),
        id,
        file: r.master.clone(),
        dataset: detingest_writer::DATA_PATH,
        codec: r.codec,
        pixel,
        shape,
        modules: 1,
        expected: 1,
        parts: Vec::new(),
        frames_per_file: r.frames_per_file,
        kind: crate::stream::StreamKind::Frames,
    })
}
