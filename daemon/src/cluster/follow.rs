//! How the merger follows one daemon's part of a run: what is new in its master (an SWMR
//! read, safe whatever its writer does), whether its run goes on (its `GET /run`), and what
//! it is when it falls silent: unreachable, or dead once its process is proven gone (then the
//! write marks it left are cleared).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use detingest_writer::{clear_write_marks, master_path, read_part};

use super::liveness::Liveness;
use super::merge_records::{Feed, Progress};
use super::peers::Peer;
use crate::contract::RunState;

/// One part as the merger follows it.
pub(super) struct Follow {
    pub peer: Option<Peer>,
    pub master: PathBuf,
    /// When its API last answered (peers).
    pub heard: Instant,
    /// Its run was seen ended (or, for this daemon, the supervisor said so).
    pub ended: bool,
    /// When the status was asked last.
    pub asked: Instant,
    /// When its run was first seen ended without its master finished.
    pub ended_at: Option<Instant>,
    /// Indices the whole master had when it fell silent (for the log when it comes back).
    pub silent_at: u64,
}

/// Reads what is new in `f`'s master and learns whether its run goes on; a peer silent for
/// `dead_after` is dead if proven gone, else unreachable (`merged`: indices in the whole
/// master, for the log).
pub(super) fn follow(
    f: &mut Follow,
    feed: &mut Feed,
    (dir, merged): (&Path, u64),
    local_done: &AtomicBool,
    dead_after: Duration,
) {
    // An SWMR read: safe whatever the part's writer does (frozen, writing, gone).
    let from = feed.buf.from + feed.buf.len();
    let finished = match read_part(&f.master, from) {
        Ok(state) => {
            feed.append(state.records);
            feed.recorded = feed.recorded.max(state.recorded as u64);
            state.finished
        }
        Err(_) => false, // not there yet, or being closed: next time
    };
    if finished {
        feed.progress = Progress::Finished;
        return;
    }
    match &f.peer {
        None => f.ended = local_done.load(Ordering::Acquire),
        Some(peer) if f.asked.elapsed() >= dead_after / 6 => {
            f.asked = Instant::now();
            // Within a third of `dead_after`: a silent peer is noticed in about `dead_after`.
            match peer.status((dead_after / 3).max(Duration::from_millis(100))) {
                Ok(v) => {
                    f.heard = Instant::now();
                    let stream = v.stream.as_deref().unwrap_or("");
                    let running = v.state == RunState::Running;
                    let ours = stream.ends_with(&format!("/{}", feed.part.stream));
                    f.ended = !(running && ours);
                    if feed.progress == Progress::Unreachable {
                        tracing::warn!(daemon = %feed.part.daemon, silent_from = f.silent_at + 1, recorded = feed.recorded, "daemon answers again: its records are merged on");
                        feed.progress = Progress::Running;
                    }
                }
                Err(e) if f.heard.elapsed() >= dead_after => {
                    silent(
                        f,
                        feed,
                        peer.process().map(|p| p.liveness()),
                        merged,
                        &e.message,
                    );
                    if feed.progress == Progress::Died {
                        clear_marks(dir, &feed.part.stream);
                    }
                    return;
                }
                Err(_) => {}
            }
        }
        Some(_) => {}
    }
    if f.ended && !f.master.exists() {
        feed.progress = Progress::Finished;
    } else if f.ended && f.ended_at.get_or_insert_with(Instant::now).elapsed() >= dead_after {
        // Its run ended (its daemon says so), but its master was never finished (its writer
        // failed): what it flushed is all, and nothing writes its files any more.
        tracing::warn!(daemon = %feed.part.daemon, recorded = feed.recorded, "daemon's run ended without finishing its master");
        feed.progress = Progress::Died;
        clear_marks(dir, &feed.part.stream);
    }
}

/// A peer silent for `dead_after`: dead when its process is proven gone (and nothing of this
/// host holds its files), else unreachable (logged once).
fn silent(f: &mut Follow, feed: &mut Feed, liveness: Option<Liveness>, merged: u64, e: &str) {
    let held = detingest_writer::run_holder(&f.master);
    let (daemon, recorded) = (&feed.part.daemon, feed.recorded);
    match (liveness, held) {
        (Some(Liveness::Gone), None) => {
            tracing::warn!(%daemon, error = %e, recorded, "daemon's process has ended: its modules are missing from here on, its files' write marks are cleared");
            feed.progress = Progress::Died;
        }
        _ if feed.progress == Progress::Unreachable => {}
        (l, held) => {
            let why = match (l, held) {
                (Some(Liveness::Alive), _) => "its process lives (stopped or hung?)".to_owned(),
                (_, Some((pid, _))) => format!("process {pid} of this host still holds its files"),
                _ => "it runs on another host: it cannot be proven gone from here".to_owned(),
            };
            tracing::error!(%daemon, error = %e, recorded, reason = %why, "daemon unreachable: the whole detector goes on without its modules, it is merged on if it answers again; its files are left alone");
            f.silent_at = merged;
            feed.progress = Progress::Unreachable;
        }
    }
}

/// Clears the write marks a dead daemon left in its master and data files.
pub(super) fn clear_marks(dir: &Path, stream: &str) {
    let master = master_path(dir, stream);
    let files = master
        .exists()
        .then_some(master)
        .into_iter()
        .chain(detingest_writer::data_files(dir, stream));
    for path in files {
        if let Err(e) = clear_write_marks(&path) {
            tracing::warn!(file = %path.display(), error = %e, "cannot clear a dead daemon's write marks");
        }
    }
}
