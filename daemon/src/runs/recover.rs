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
//! merge` finishes those).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use detingest_shm::{Name, StreamId};
use detingest_writer::{
    finish_unfinished, is_detector_master, is_finished, DetectorInfo, FileOptions, Recovered,
};

use crate::sink::{Notification, SinkSet, StreamEndNotice, StreamStartNotice};
use crate::stream::{now_ns, StreamInfo};

/// An unfinished master that changed less than this long ago may still be written.
pub const QUIET: Duration = Duration::from_secs(3);

/// How deep under the data directory masters are looked for (`beamtime/source/` is 2).
const DEPTH: usize = 4;

/// What became of one unfinished master.
#[derive(Debug)]
pub enum Outcome {
    /// Finished now.
    Finished(Recovered),
    /// Left alone, and why.
    Left(String),
}

/// The masters under `root` (or `root` itself, a master) whose run has not finished.
pub fn unfinished_masters(root: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    walk(root, DEPTH, &mut found);
    found.sort();
    found
}

fn walk(path: &Path, depth: usize, found: &mut Vec<PathBuf>) {
    if path.is_file() {
        let is_master = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.ends_with("_master.h5"));
        if is_master && is_finished(path).is_ok_and(|done| !done) {
            found.push(path.to_owned());
        }
        return;
    }
    if depth == 0 {
        return;
    }
    if let Ok(entries) = std::fs::read_dir(path) {
        for e in entries.flatten() {
            walk(&e.path(), depth - 1, found);
        }
    }
}

/// Finishes the unfinished run of `master` with `reason`, unless it may still be written.
pub fn finish(master: &Path, reason: &str) -> Outcome {
    let left = |why: String| Outcome::Left(why);
    if is_detector_master(master) {
        return left("a whole detector's master: `detingestd merge` finishes it".into());
    }
    let age = std::fs::metadata(master)
        .and_then(|m| m.modified())
        .map(|t| t.elapsed().unwrap_or_default())
        .unwrap_or_default();
    if age < QUIET {
        return left(format!(
            "changed {} ms ago: its writer may be alive",
            age.as_millis()
        ));
    }
    match finish_unfinished(master, reason) {
        Ok(r) => Outcome::Finished(r),
        Err(e) => left(e.to_string()),
    }
}

/// At `serve`'s start: finishes every run under `data_dir` a crash left unfinished and
/// announces each to `sinks`. Returns what was done, also logged.
pub fn finish_left_behind(data_dir: &Path, sinks: &SinkSet) -> Vec<(PathBuf, Outcome)> {
    let mut done = Vec::new();
    for master in unfinished_masters(data_dir) {
        let reason = "crashed: the run's daemon stopped before its end was written; \
                      finished from its files by detingestd serve at its start";
        let outcome = finish(&master, reason);
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
    done
}

/// Tells the sinks of a finished run: a start and an end with the reason.
fn announce(sinks: &SinkSet, data_dir: &Path, r: &Recovered, reason: &str) {
    let Some(info) = stream_info(data_dir, r) else {
        tracing::warn!(master = %r.master.display(), "not under beamtime/source/ of the data directory: not announced");
        return;
    };
    let info = Arc::new(info);
    let start = Notification::StreamStart(StreamStartNotice {
        stream: Arc::clone(&info),
        started_ns: now_ns(),
        detector: DetectorInfo::default(),
        user_json: r.user_json.clone(),
        files: FileOptions {
            frames_per_file: r.frames_per_file,
            ..FileOptions::default()
        },
    });
    let end = Notification::StreamEnd(StreamEndNotice {
        stream: info,
        frames: r.frames,
        lost: r.lost,
        late: 0,
        ended_ns: now_ns(),
        error: Some(reason.to_owned()),
    });
    for mut s in sinks.for_run().sinks {
        s.notify(&start);
        s.notify(&end);
        s.batch_done();
        s.finish();
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
    })
}
