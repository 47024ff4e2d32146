//! The coordinator's merger (thread `merge`): follows every daemon's part of a run through
//! its master file (SWMR read, every `merge_interval_ms`) and each peer's `GET /run`, writes
//! the whole detector's master as the parts' records come in (an SWMR file: readable during
//! the run), and announces the whole detector's stream to this daemon's sinks (thread
//! `merge-notify`): a frame record says complete only when every daemon has written its
//! modules of that index. A peer that cannot be reached for `dead_after_ms` is unreachable:
//! the whole detector goes on without it (its modules missing), and if it answers again its
//! records are merged on, those of indices merged meanwhile added to them. Only a peer proven
//! gone (its process ended, `liveness.rs`) is dead: the write marks its files were left with
//! are cleared so every reader opens them. One still unreachable when every other part has
//! ended (and `dead_after_ms` more) is unknown, its files left alone.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use detingest_writer::{
    clear_write_marks, master_path, read_part, DetectorInfo, DetectorMaster, FileOptions, Part,
    PartEnd, RunEnd, RunLayout,
};

use super::liveness::Liveness;
use super::merge_records::{self, Feed, Merged, Progress};
use super::peers::Peer;
use crate::contract::RunState;
use crate::sink::NotifyQueue;
use crate::sink::{
    FrameNotice, Notification, NotificationSink, ReadableNotice, StreamEndNotice, StreamStartNotice,
};
use crate::stream::{now_ns, FrameRecord, StreamInfo};

/// What the merger needs to know of the run.
pub struct MergePlan {
    /// The directory every daemon writes into (shared).
    pub dir: PathBuf,
    /// The whole detector's stream (its master is `<stream>_master.h5`) for the sinks.
    pub stream: Arc<StreamInfo>,
    /// The full detector's image layout.
    pub layout: RunLayout,
    /// The NXmx description.
    pub detector: DetectorInfo,
    /// The run's user metadata (JSON).
    pub user_json: String,
    /// File options (frames per file, planned count, SWMR).
    pub files: FileOptions,
    /// The parts: this daemon's (no peer) and each peer's.
    pub parts: Vec<(Part, Option<Peer>)>,
    /// How often to merge.
    pub interval: Duration,
    /// A peer silent this long is dead.
    pub dead_after: Duration,
    /// Core of the merger's two threads (`[threads] notify`): they move records, no pixels.
    pub core: Option<usize>,
}

/// What the merge did.
#[derive(Debug, Clone, Default)]
pub struct MergeReport {
    /// Indices in the whole master.
    pub frames: u64,
    /// Of which lost on every daemon.
    pub lost: u64,
    /// Each daemon's name and how its part ended.
    pub parts: Vec<(String, PartEnd)>,
    /// Why the merge failed, if it did.
    pub error: Option<String>,
}

impl MergeReport {
    /// The report of a merge of `feeds` that ended as `ends` with `frames` indices, `lost` of
    /// them lost everywhere.
    pub(super) fn new(
        feeds: &[Feed],
        ends: Vec<PartEnd>,
        (frames, lost): (u64, u64),
        error: Option<String>,
    ) -> Self {
        let names = feeds.iter().map(|f| f.part.daemon.clone());
        Self {
            frames,
            lost,
            parts: names.zip(ends).collect(),
            error,
        }
    }
}

/// The running merger.
pub struct Merger {
    thread: JoinHandle<MergeReport>,
    local_done: Arc<AtomicBool>,
    merged: Arc<AtomicU64>,
    stopping: Arc<AtomicBool>,
    states: Arc<PartStates>,
}

/// Each part's [`Progress`], as the merger last saw it (for `GET /run` and `/metrics`).
pub struct PartStates(Vec<AtomicU8>);

const PROGRESS: [Progress; 5] = [
    Progress::Running,
    Progress::Finished,
    Progress::Died,
    Progress::Unreachable,
    Progress::Unknown,
];

impl PartStates {
    fn new(n: usize) -> Self {
        Self((0..n).map(|_| AtomicU8::new(0)).collect())
    }

    fn set(&self, feeds: &[Feed]) {
        for (s, f) in self.0.iter().zip(feeds) {
            let k = PROGRESS.iter().position(|p| *p == f.progress).unwrap_or(0);
            s.store(k as u8, Ordering::Relaxed);
        }
    }

    fn get(&self) -> Vec<Progress> {
        (self.0.iter())
            .map(|s| PROGRESS[(s.load(Ordering::Relaxed) as usize).min(4)])
            .collect()
    }
}

impl Merger {
    /// Starts merging `plan`, announcing to `sinks`.
    pub fn spawn(
        plan: MergePlan,
        sinks: Vec<Box<dyn NotificationSink>>,
        notify_capacity: usize,
    ) -> std::io::Result<Self> {
        let local_done = Arc::new(AtomicBool::new(false));
        let merged = Arc::new(AtomicU64::new(0));
        let count = Arc::clone(&merged);
        let stopping = Arc::new(AtomicBool::new(false));
        let stop = Arc::clone(&stopping);
        let states = Arc::new(PartStates::new(plan.parts.len()));
        let seen = Arc::clone(&states);
        let queue = Arc::new(NotifyQueue::new(notify_capacity));
        let consumer = Arc::clone(&queue);
        let core = plan.core;
        let notify = crate::threads::spawn("merge-notify".into(), core, move || {
            consumer.consume(sinks, Duration::ZERO)
        })?;
        let done = Arc::clone(&local_done);
        let producer = Arc::clone(&queue);
        let thread = crate::threads::spawn("merge".into(), core, move || {
            let report = run(plan, &producer, (&done, &stop), (&count, &seen));
            producer.close();
            let _ = notify.join();
            report
        });
        match thread {
            Ok(thread) => Ok(Self {
                thread,
                local_done,
                merged,
                stopping,
                states,
            }),
            Err(e) => {
                queue.close(); // the notification thread ends
                Err(e)
            }
        }
    }

    /// A flag that says the run is being stopped: set it before stopping the daemons, and
    /// the whole detector ends with the last index every daemon recorded (they stop one
    /// after the other, each at its own index).
    pub fn stopping(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.stopping)
    }

    /// Indices in the whole master so far.
    pub fn merged(&self) -> u64 {
        self.merged.load(Ordering::Relaxed)
    }

    /// Each part's state (in the order of the plan's parts).
    pub fn part_states(&self) -> Vec<Progress> {
        self.states.get()
    }

    /// This daemon's own part has ended (its files are closed): the merger finishes once the
    /// others have. Call [`Self::join`] once this is true.
    pub fn own_part_ended(&self) -> bool {
        self.local_done.store(true, Ordering::Release);
        self.thread.is_finished()
    }

    /// This daemon's own part has ended (its files are closed); waits for the others and the
    /// whole master.
    pub fn join(self) -> MergeReport {
        self.local_done.store(true, Ordering::Release);
        self.thread.join().unwrap_or_else(|_| MergeReport {
            error: Some("the merger panicked".into()),
            ..MergeReport::default()
        })
    }
}

/// One part as the merger follows it.
struct Follow {
    peer: Option<Peer>,
    master: PathBuf,
    /// When its API last answered (peers).
    heard: Instant,
    /// Its run was seen ended (or, for this daemon, the supervisor said so).
    ended: bool,
    /// When the status was asked last.
    asked: Instant,
    /// When its run was first seen ended without its master finished.
    ended_at: Option<Instant>,
    /// Indices the whole master had when it fell silent (for the log when it comes back).
    silent_at: u64,
}

fn run(
    plan: MergePlan,
    queue: &NotifyQueue,
    (local_done, stopping): (&AtomicBool, &AtomicBool),
    (count, states): (&AtomicU64, &PartStates),
) -> MergeReport {
    let parts: Vec<Part> = plan.parts.iter().map(|(p, _)| p.clone()).collect();
    let key = plan.stream.id.stream.as_str().to_owned();
    let mut master = match DetectorMaster::create(
        &plan.dir,
        &key,
        plan.layout,
        &plan.detector,
        &plan.user_json,
        plan.files,
        parts.clone(),
    ) {
        Ok(m) => m,
        Err(e) => {
            tracing::error!(error = %e, stream = %plan.stream.key, "cannot create the detector's master");
            return MergeReport {
                error: Some(e.to_string()),
                ..MergeReport::default()
            };
        }
    };
    queue.push(Notification::StreamStart(StreamStartNotice {
        stream: Arc::clone(&plan.stream),
        started_ns: now_ns(),
        detector: std::sync::Arc::new(plan.detector.clone()),
        user_json: plan.user_json.clone(),
        files: plan.files,
    }));
    let now = Instant::now();
    let mut follows: Vec<Follow> = (plan.parts.into_iter())
        .map(|(p, peer)| Follow {
            master: master_path(&plan.dir, &p.stream),
            peer,
            heard: now,
            ended: false,
            asked: now,
            ended_at: None,
            silent_at: 0,
        })
        .collect();
    let mut feeds: Vec<Feed> = parts.into_iter().map(Feed::new).collect();
    let width = plan.layout.modules() as usize;
    let mut merged = Merged::default();
    let mut lost = 0;
    let mut error = None;
    let mut records: Vec<FrameRecord> = Vec::new();
    let module_bytes = plan.layout.module_bytes() as u64;
    // Time spent reading and merging (the HDF5 library's lock is shared with this daemon's
    // writer): in the end line of the log.
    let (mut busy, mut polls) = (Duration::ZERO, 0u64);
    // Since when only unreachable parts keep the whole detector from ending.
    let mut only_silent: Option<Instant> = None;
    loop {
        std::thread::sleep(plan.interval);
        let t0 = Instant::now();
        polls += 1;
        for (f, feed) in follows.iter_mut().zip(feeds.iter_mut()) {
            if matches!(feed.progress, Progress::Running | Progress::Unreachable) {
                follow(
                    f,
                    feed,
                    (&plan.dir, master.frames()),
                    local_done,
                    plan.dead_after,
                );
            }
        }
        let running = feeds.iter().any(|f| f.progress == Progress::Running);
        let silent = (feeds.iter()).any(|f| f.progress == Progress::Unreachable);
        if running || !silent {
            only_silent = None;
        } else if only_silent.get_or_insert_with(Instant::now).elapsed() >= plan.dead_after {
            for f in feeds
                .iter_mut()
                .filter(|f| f.progress == Progress::Unreachable)
            {
                tracing::error!(daemon = %f.part.daemon, recorded = f.recorded, "daemon still unreachable as the run ends and not proven gone: its part is unknown in the whole master from its last record on, and its files are left alone (finish them with `detingestd finish` once it is gone)");
                f.progress = Progress::Unknown;
            }
        }
        states.set(&feeds);
        let stop = stopping.load(Ordering::Acquire);
        let ready = merge_records::ready(&feeds, stop);
        lost += merge_ready(
            &mut feeds,
            &mut master,
            (width, module_bytes, stop),
            &mut merged,
            &mut records,
        );
        if !records.is_empty() {
            count.store(master.frames(), Ordering::Relaxed);
            if let Err(e) = master.flush() {
                tracing::error!(error = %e, "cannot flush the detector's master");
                error.get_or_insert(e.to_string());
            }
            for r in &records {
                queue.push(Notification::Frame(FrameNotice {
                    stream: Arc::clone(&plan.stream),
                    record: FrameRecord {
                        readable_up_to: ready,
                        written_ns: now_ns(),
                        ..*r
                    },
                    preview: None,
                }));
            }
        }
        busy += t0.elapsed();
        if merge_records::all_ended(&feeds) && master.frames() >= ready {
            break;
        }
    }
    let ends = merge_records::ends(&feeds);
    let frames = master.frames();
    let end = RunEnd {
        next_stream: None,
        error: error.clone(),
        ended: None,
    };
    if let Err(e) = master.finish(&ends, &end) {
        tracing::error!(error = %e, "cannot finish the detector's master");
        error.get_or_insert(e.to_string());
    }
    queue.push(Notification::Readable(ReadableNotice {
        stream: Arc::clone(&plan.stream),
        up_to: frames,
    }));
    queue.push(Notification::StreamEnd(StreamEndNotice {
        stream: Arc::clone(&plan.stream),
        frames,
        lost,
        late: 0,
        ended_ns: now_ns(),
        error: error.clone(),
    }));
    let per_poll_us = busy.as_micros() as u64 / polls.max(1);
    let parts: Vec<String> = (feeds.iter().zip(&ends))
        .map(|(f, e)| format!("{} {}", f.part.daemon, e.outcome.name()))
        .collect();
    let parts = parts.join(", ");
    tracing::info!(stream = %plan.stream.key, frames, lost, polls, per_poll_us, %parts, "detector master complete");
    MergeReport::new(&feeds, ends, (frames, lost), error)
}

/// Merges every index `feeds` are ready for (see [`merge_records::ready`], `stopping`) into
/// `master` (`width` modules of `module_bytes` each), and their frame records into `records`;
/// returns how many of them no daemon wrote. A part's records of indices merged already
/// (merged without it while it could not be reached) are added to them first.
pub(super) fn merge_ready(
    feeds: &mut [Feed],
    master: &mut DetectorMaster,
    (width, module_bytes, stopping): (usize, u64, bool),
    merged: &mut Merged,
    records: &mut Vec<FrameRecord>,
) -> u64 {
    let done = master.frames();
    for f in feeds.iter() {
        let late = f.held_below(done as usize);
        if late.is_empty() {
            continue;
        }
        let (first, last) = (late.start + 1, late.end);
        for pos in late {
            let index = pos as u64 + 1;
            merge_records::merge(std::slice::from_ref(f), index, width, merged);
            if let Err(e) = master.amend(index, &merged.record()) {
                tracing::warn!(daemon = %f.part.daemon, index, error = %e, "cannot add a returning daemon's modules");
            }
        }
        tracing::info!(daemon = %f.part.daemon, first, last, "indices merged without the daemon now hold its modules");
    }
    let ready = merge_records::ready(feeds, stopping);
    let mut lost = 0;
    records.clear();
    for index in master.frames() + 1..=ready {
        merge_records::merge(feeds, index, width, merged);
        master.record(&merged.record());
        lost += u64::from(merged.modules == 0);
        records.push(frame_record(index, merged, module_bytes));
    }
    merge_records::forget(feeds, ready.max(done));
    lost
}

/// The frame record of merged index `index`: complete when every module of the detector was
/// written by some daemon. Compressed bytes are not known here (each daemon wrote its own).
fn frame_record(index: u64, m: &Merged, module_bytes: u64) -> FrameRecord {
    let mut missing = detingest_shm::PacketMask::NONE;
    let mut packets_lost = 0;
    for mask in &m.missing {
        let mask = detingest_shm::PacketMask(*mask);
        packets_lost += mask.count();
        for (a, b) in missing.0.iter_mut().zip(mask.0) {
            *a |= b;
        }
    }
    FrameRecord {
        index,
        frame_number: m.frame_number,
        sequence: m.sequence,
        raw_bytes: u64::from(m.modules.count_ones()) * module_bytes,
        compressed_bytes: 0,
        timestamp_ns: m.timestamp_ns,
        detector_timestamp: m.detector_timestamp,
        bunch_id: m.bunch_id,
        written_ns: 0,
        readable_up_to: 0,
        modules: m.modules,
        dropped: m.dropped,
        packets_lost,
        missing,
        stats: None,
    }
}

/// Reads what is new in `f`'s master and learns whether its run goes on; a peer silent for
/// `dead_after` is dead if proven gone, else unreachable (`merged`: indices in the whole
/// master, for the log).
fn follow(
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
