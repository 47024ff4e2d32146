//! `detingestd merge`: finishes the whole detector's master that a coordinator which died
//! left behind, from the files alone: the master (its parts, geometry and the records merged
//! so far) and each daemon's part. A part whose master is not finished is taken for dead at
//! its last flushed record, as the live merger would have.

use std::path::Path;

use detingest_writer::{master_path, read_part, DetectorMaster, RunEnd, WriteError};

use super::follow::clear_marks;
use super::merge::{merge_ready, MergeReport};
use super::merge_records::{self, Feed, Merged, Progress};

/// Merges what the parts of `stream` in `dir` recorded beyond what its master has, and
/// finishes the master (VDS, each daemon's end, `finished`). The report's `lost` counts the
/// indices merged now that no daemon wrote.
pub fn finish_merge(dir: &Path, stream: &str) -> Result<MergeReport, WriteError> {
    let mut master = DetectorMaster::resume(dir, stream)?;
    let done = master.frames() as usize;
    let mut feeds = Vec::new();
    for part in master.parts() {
        let mut feed = Feed::new(part.clone());
        feed.buf.from = done;
        let path = master_path(dir, &part.stream);
        feed.progress = if !path.exists() {
            Progress::Finished // it received nothing: no file
        } else {
            let state = read_part(&path, done)?;
            feed.recorded = state.recorded as u64;
            feed.append(state.records);
            if state.finished {
                Progress::Finished
            } else {
                refuse_if_written(&path, &part.daemon)?;
                clear_marks(dir, &part.stream);
                Progress::Died
            }
        };
        feeds.push(feed);
    }
    let geometry = (master.modules(), master.module_bytes(), false);
    let mut records = Vec::new();
    let lost_now = merge_ready(
        &mut feeds,
        &mut master,
        geometry,
        &mut Merged::default(),
        &mut records,
    );
    let ends = merge_records::ends(&feeds);
    let frames = master.finish(&ends, &RunEnd::default())?;
    Ok(MergeReport::new(&feeds, ends, (frames, lost_now), None))
}

/// Refuses to take a part for dead while a process of this host holds its files, or its
/// master still changes (less than [`detingest_writer::QUIET`] ago): clearing the write marks
/// of a file a live writer holds would corrupt it.
fn refuse_if_written(path: &Path, daemon: &str) -> Result<(), WriteError> {
    if let Some((pid, file)) = detingest_writer::run_holder(path) {
        return Err(WriteError::Metadata(format!(
            "{daemon}'s part {} is unfinished and process {pid} of this host holds {}: its \
             daemon still runs (perhaps stopped); merge once every daemon's run has ended",
            path.display(),
            file.display()
        )));
    }
    let Some(age) = detingest_writer::changed_ago(path).filter(|a| *a < detingest_writer::QUIET)
    else {
        return Ok(());
    };
    Err(WriteError::Metadata(format!(
        "{daemon}'s part {} is unfinished and was written {} ms ago: its daemon may still \
         run; merge once every daemon's run has ended",
        path.display(),
        age.as_millis()
    )))
}
