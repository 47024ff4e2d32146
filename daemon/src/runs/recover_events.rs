//! Neutron event runs a crash left unfinished (`<stream>.nxs` without its end): found under
//! the data directory when `serve` starts, or given to `detingestd finish`, and finished from
//! what the file holds (`detingest_writer::finish_unfinished_events`). The sinks hear of each
//! as a run that ended with the reason (Kafka hands its file off with the error flag).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use detingest_shm::{Name, StreamId};
use detingest_writer::{changed_ago, finish_unfinished_events, EventsRecovered, QUIET};

use crate::sink::RunSinks;
use crate::stream::StreamInfo;

/// What became of one event file.
#[derive(Debug)]
pub enum EventsOutcome {
    /// Finished now.
    Finished(EventsRecovered),
    /// Not a detingest event run's file, or finished already: untouched.
    NotOurs,
    /// Left alone, and why (its writer may be alive, or it could not be finished).
    Left(String),
}

/// The `.nxs` files under `root` (or `root` itself) that may be event runs left unfinished.
pub fn unfinished_event_files(root: &Path) -> Vec<PathBuf> {
    super::recover::files_under(root, &|path| {
        let hidden = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with('.'));
        !hidden && detingest_writer::may_be_unfinished_events(path)
    })
}

/// Finishes the event file at `path` with `reason`, unless it changed less than [`QUIET`]
/// ago or a process holds it (its writer may be alive).
pub fn finish_events(path: &Path, reason: &str) -> EventsOutcome {
    let age = changed_ago(path).unwrap_or_default();
    if age < QUIET {
        return EventsOutcome::Left(format!(
            "changed {} ms ago: its writer may be alive",
            age.as_millis()
        ));
    }
    match finish_unfinished_events(path, reason) {
        Ok(Some(r)) => EventsOutcome::Finished(r),
        Ok(None) => EventsOutcome::NotOurs,
        Err(e) => EventsOutcome::Left(e.to_string()),
    }
}

/// Finishes every event run under `data_dir` a crash left unfinished (waiting once for one
/// that changed less than [`QUIET`] ago), logs each and tells `sinks`; how many were finished.
pub fn finish_events_left_behind(data_dir: &Path, sinks: &mut RunSinks, reason: &str) -> usize {
    let mut finished = 0;
    for path in unfinished_event_files(data_dir) {
        let mut outcome = finish_events(&path, reason);
        if matches!(&outcome, EventsOutcome::Left(why) if why.starts_with("changed")) {
            std::thread::sleep(QUIET + std::time::Duration::from_millis(100));
            outcome = finish_events(&path, reason);
        }
        match outcome {
            EventsOutcome::Finished(r) => {
                tracing::warn!(file = %path.display(), pulses = r.pulses, events = r.events,
                    "finished an event run a crash left unfinished (what its last flush held)");
                announce(sinks, data_dir, &r, reason);
                finished += 1;
            }
            EventsOutcome::NotOurs => {}
            EventsOutcome::Left(why) => {
                tracing::warn!(file = %path.display(), why = %why, "unfinished event run left as it is")
            }
        }
    }
    finished
}

/// Tells the sinks of a finished event run: a start and an end with the reason.
fn announce(sinks: &mut RunSinks, data_dir: &Path, r: &EventsRecovered, reason: &str) {
    let Some(info) = stream_info(data_dir, &r.path) else {
        tracing::warn!(file = %r.path.display(), "not under beamtime/source/ of the data directory: not announced");
        return;
    };
    let run = ("{}", Default::default(), r.pulses, 0);
    super::recover::tell_ended(sinks, Arc::new(info), run, reason);
}

/// The stream of `data_dir/beamtime/source/<stream>.nxs`.
fn stream_info(data_dir: &Path, path: &Path) -> Option<StreamInfo> {
    let rel = path.strip_prefix(data_dir).ok()?;
    let parts: Vec<&str> = rel.iter().filter_map(|c| c.to_str()).collect();
    let [beamtime, source, file] = parts.as_slice() else {
        return None;
    };
    let id = StreamId {
        beamtime: Name::new(beamtime).ok()?,
        source: Name::new(source).ok()?,
        stream: Name::new(file.strip_suffix(".nxs")?).ok()?,
    };
    Some(StreamInfo::events(
        id,
        path.to_owned(),
        detingest_writer::Codec::BitshuffleLz4,
    ))
}
