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

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use detingest_writer::{
    master_path, DetectorInfo, DetectorMaster, FileOptions, Part, PartEnd, RunEnd, RunLayout,
};

use super::follow::{follow, Follow};
use super::merge_records::{self, Feed, Merged, Progress};
use super::peers::Peer;
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

fn run(
    plan: MergePlan,
    queue: &NotifyQueue,
    (local_done, stopping): (&AtomicBool, &AtomicBool),
    (count, states): (&AtomicU64, &PartStates),
) -> MergeReport {
    let mut m = match Merging::open(plan, queue) {
        Ok(m) => m,
        Err(report) => return report,
    };
    loop {
        std::thread::sleep(m.plan.interval);
        let t0 = Instant::now();
        m.polls += 1;
        m.follow_parts(local_done);
        states.set(&m.feeds);
        let ready = m.merge(stopping.load(Ordering::Acquire));
        count.store(m.master.frames(), Ordering::Relaxed);
        m.busy += t0.elapsed();
        if merge_records::all_ended(&m.feeds) && m.master.frames() >= ready {
            return m.finish();
        }
    }
}

/// A merge under way: the whole master, every part as it is followed, what was merged.
struct Merging<'q> {
    plan: MergePlan,
    queue: &'q NotifyQueue,
    master: DetectorMaster,
    follows: Vec<Follow>,
    feeds: Vec<Feed>,
    merged: Merged,
    records: Vec<FrameRecord>,
    /// Indices no daemon wrote.
    lost: u64,
    error: Option<String>,
    /// Time spent reading and merging (the HDF5 library's lock is shared with this daemon's
    /// writer), and rounds: in the end line of the log.
    busy: Duration,
    polls: u64,
    /// Since when only unreachable parts keep the whole detector from ending.
    only_silent: Option<Instant>,
}

impl<'q> Merging<'q> {
    /// Creates the whole master and announces its stream; the report of a master that
    /// could not be made.
    fn open(mut plan: MergePlan, queue: &'q NotifyQueue) -> Result<Self, MergeReport> {
        let parts: Vec<Part> = plan.parts.iter().map(|(p, _)| p.clone()).collect();
        let key = plan.stream.id.stream.as_str().to_owned();
        let master = DetectorMaster::create(
            &plan.dir,
            &key,
            plan.layout,
            &plan.detector,
            &plan.user_json,
            plan.files,
            parts.clone(),
        )
        .map_err(|e| {
            tracing::error!(error = %e, stream = %plan.stream.key, "cannot create the detector's master");
            MergeReport {
                error: Some(e.to_string()),
                ..MergeReport::default()
            }
        })?;
        queue.push(Notification::StreamStart(StreamStartNotice {
            stream: Arc::clone(&plan.stream),
            started_ns: now_ns(),
            detector: Arc::new(plan.detector.clone()),
            user_json: plan.user_json.clone(),
            files: plan.files,
        }));
        let now = Instant::now();
        let follows = (std::mem::take(&mut plan.parts).into_iter())
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
        Ok(Self {
            plan,
            queue,
            master,
            follows,
            feeds: parts.into_iter().map(Feed::new).collect(),
            merged: Merged::default(),
            records: Vec::new(),
            lost: 0,
            error: None,
            busy: Duration::ZERO,
            polls: 0,
            only_silent: None,
        })
    }

    /// Reads what is new of every part still going; parts unreachable for `dead_after` once
    /// every other part has ended become unknown.
    fn follow_parts(&mut self, local_done: &AtomicBool) {
        let (dir, frames) = (&self.plan.dir, self.master.frames());
        for (f, feed) in self.follows.iter_mut().zip(self.feeds.iter_mut()) {
            if matches!(feed.progress, Progress::Running | Progress::Unreachable) {
                follow(f, feed, (dir, frames), local_done, self.plan.dead_after);
            }
        }
        let running = self.feeds.iter().any(|f| f.progress == Progress::Running);
        let silent = (self.feeds.iter()).any(|f| f.progress == Progress::Unreachable);
        if running || !silent {
            self.only_silent = None;
            return;
        }
        let since = self.only_silent.get_or_insert_with(Instant::now);
        if since.elapsed() < self.plan.dead_after {
            return;
        }
        let unreachable = self.feeds.iter_mut();
        for f in unreachable.filter(|f| f.progress == Progress::Unreachable) {
            tracing::error!(daemon = %f.part.daemon, recorded = f.recorded, "daemon still unreachable as the run ends and not proven gone: its part is unknown in the whole master from its last record on, and its files are left alone (finish them with `detingestd finish` once it is gone)");
            f.progress = Progress::Unknown;
        }
    }

    /// Merges what every part is ready for (`stopping`: the run is being stopped), flushes
    /// the master and announces the new indices; the readable watermark.
    fn merge(&mut self, stopping: bool) -> u64 {
        let ready = merge_records::ready(&self.feeds, stopping);
        let width = self.plan.layout.modules() as usize;
        let module_bytes = self.plan.layout.module_bytes() as u64;
        self.lost += merge_ready(
            &mut self.feeds,
            &mut self.master,
            (width, module_bytes, stopping),
            &mut self.merged,
            &mut self.records,
        );
        if self.records.is_empty() {
            return ready;
        }
        if let Err(e) = self.master.flush() {
            tracing::error!(error = %e, "cannot flush the detector's master");
            self.error.get_or_insert(e.to_string());
        }
        for r in &self.records {
            self.queue.push(Notification::Frame(FrameNotice {
                stream: Arc::clone(&self.plan.stream),
                record: FrameRecord {
                    readable_up_to: ready,
                    written_ns: now_ns(),
                    ..*r
                },
                preview: None,
            }));
        }
        ready
    }

    /// Finishes the whole master with how every part ended, and announces its end.
    fn finish(mut self) -> MergeReport {
        let ends = merge_records::ends(&self.feeds);
        let frames = self.master.frames();
        let end = RunEnd {
            next_stream: None,
            error: self.error.clone(),
            ended: None,
        };
        if let Err(e) = self.master.finish(&ends, &end) {
            tracing::error!(error = %e, "cannot finish the detector's master");
            self.error.get_or_insert(e.to_string());
        }
        let stream = &self.plan.stream;
        self.queue.push(Notification::Readable(ReadableNotice {
            stream: Arc::clone(stream),
            up_to: frames,
        }));
        self.queue.push(Notification::StreamEnd(StreamEndNotice {
            stream: Arc::clone(stream),
            frames,
            lost: self.lost,
            late: 0,
            ended_ns: now_ns(),
            error: self.error.clone(),
        }));
        let per_poll_us = self.busy.as_micros() as u64 / self.polls.max(1);
        let parts: Vec<String> = (self.feeds.iter().zip(&ends))
            .map(|(f, e)| format!("{} {}", f.part.daemon, e.outcome.name()))
            .collect();
        let (parts, lost, polls) = (parts.join(", "), self.lost, self.polls);
        tracing::info!(stream = %stream.key, frames, lost, polls, per_poll_us, parts = %parts, "detector master complete");
        MergeReport::new(&self.feeds, ends, (frames, lost), self.error)
    }
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
