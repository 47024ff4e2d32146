//! Index assignment and dataset grouping, per stream.
//!
//! index = detector frame number - first frame number + 1. The module frames with the same
//! frame number form one dataset. Each module delivers its frames in order, so a dataset is
//! settled once every module has either arrived or delivered a later frame. Datasets are
//! closed strictly in index order: when settled, when the oldest open one is
//! `dataset_timeout` old, or when a frame `dataset_ahead` frame numbers later arrives (a
//! silent module). A dataset closed with no module is a lost
//! index ([`Step::Lost`]); otherwise [`Step::Closed`] follows its chunks. So every index 1..N
//! reaches the writer exactly once, and the same frame number gets the same index on every
//! module (and on every daemon given the same `first_frame_number`).
//!
//! With frame chunking the indexer assembles each dataset's image: module frames are copied
//! into a pool buffer as they arrive (their own buffers go back at once), missing tiles are
//! zeroed when the dataset closes, and the image goes to the workers as one `Raw`.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam::channel::{Receiver, RecvTimeoutError, Sender};
use detingest_shm::{BufferPool, FrameBuf, FrameMeta, PacketMask, PoolBuf};
use detingest_writer::{Chunking, RunLayout};

use super::job::{Item, Step};
use super::stats::PipelineStats;
use crate::stream::{SourceMsg, StreamSlot};

/// Largest jump in frame numbers recorded as lost indices. A bigger jump is not a loss but a
/// detector restart or a corrupt number: the frame is refused (counted stale) rather than
/// filling the file with millions of lost records.
pub const MAX_GAP: u64 = 1 << 20;

/// How one stream's frames become datasets.
pub(crate) struct StreamPlan {
    /// Geometry and chunking.
    pub layout: RunLayout,
    /// Close an incomplete dataset once a frame this many frame numbers later arrives.
    pub ahead: u64,
    /// Close an incomplete dataset after this long.
    pub timeout: Duration,
    /// Indices after which the stream ends (0: open-ended).
    pub limit: u64,
    /// Frame number of index 1, if fixed by the run (else the first source's first).
    pub first_frame_number: Option<u64>,
    /// Sources feeding the stream (one per module, or one for all): it closes when all ended.
    pub sources: u32,
    /// Image buffers for frame chunking of several modules (`None`: no assembly).
    pub images: Option<BufferPool>,
}

/// A dataset whose modules are still arriving.
struct Open {
    frame_number: u64,
    seen: u64,
    opened: Instant,
    timestamp_ns: u64,
    image: Option<PoolBuf>,
}

/// Where one stream's numbering stands.
struct StreamState {
    plan: StreamPlan,
    /// Frame number that index 1 belongs to.
    first: u64,
    /// Next frame number to open a dataset for.
    next: u64,
    open: VecDeque<Open>,
    /// Newest frame number each module delivered (valid where `reported` has its bit).
    newest: [u64; 64],
    reported: u64,
    /// Between `Start` and the stream's `Close`.
    live: bool,
    /// Set by the first `Start`: later ones (other modules' sources) change nothing.
    opened: bool,
    /// Sources that have ended, and the last frame number any of them named.
    ended: u32,
    last_frame_number: Option<u64>,
}

impl StreamState {
    fn index(&self, frame_number: u64) -> u64 {
        frame_number - self.first + 1
    }

    /// True when the oldest open dataset can gain no more modules.
    fn front_settled(&self) -> bool {
        let Some(d) = self.open.front() else {
            return false;
        };
        let modules = self.plan.layout.modules() as usize;
        let passed = (0..modules)
            .filter(|&m| self.reported & (1 << m) != 0 && self.newest[m] > d.frame_number)
            .fold(0u64, |acc, m| acc | (1 << m));
        (d.seen | passed) == self.plan.layout.all_modules()
    }
}

/// Numbers and sends items in order.
struct Emitter {
    seq: u64,
    out: Sender<Item>,
    stats: Arc<PipelineStats>,
    stop: Arc<AtomicBool>,
}

impl Emitter {
    fn emit(&mut self, stream: StreamSlot, step: Step) {
        let item = Item {
            seq: self.seq,
            stream,
            step,
        };
        self.seq += 1;
        // A closed channel means the workers are gone; the pipeline is shutting down.
        let _ = self.out.send(item);
    }

    fn stale(&self) {
        self.stats.stale.fetch_add(1, Ordering::Relaxed);
    }
}

/// The indexer stage: owns the numbering and open datasets of every stream.
pub struct Indexer {
    streams: Vec<StreamState>,
    em: Emitter,
}

impl Indexer {
    pub(crate) fn new(
        plans: Vec<StreamPlan>,
        out: Sender<Item>,
        stats: Arc<PipelineStats>,
        stop: Arc<AtomicBool>,
    ) -> Self {
        let streams = plans
            .into_iter()
            .map(|plan| StreamState {
                open: VecDeque::with_capacity(plan.ahead as usize + 1),
                plan,
                first: 0,
                next: 0,
                newest: [0; 64],
                reported: 0,
                live: false,
                opened: false,
                ended: 0,
                last_frame_number: None,
            })
            .collect();
        Self {
            streams,
            em: Emitter {
                seq: 0,
                out,
                stats,
                stop,
            },
        }
    }

    /// Runs until every source has disconnected.
    pub(crate) fn run(mut self, input: Receiver<SourceMsg>) {
        let tick = self
            .streams
            .iter()
            .map(|s| s.plan.timeout / 4)
            .min()
            .unwrap_or(Duration::from_millis(100))
            .clamp(Duration::from_millis(1), Duration::from_millis(100));
        loop {
            match input.recv_timeout(tick) {
                Ok(msg) => self.handle(msg, Instant::now()),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            self.expire(Instant::now());
        }
    }

    fn handle(&mut self, msg: SourceMsg, now: Instant) {
        match msg {
            SourceMsg::Start {
                stream,
                first_frame_number,
            } => {
                let st = &mut self.streams[usize::from(stream)];
                if st.opened {
                    return; // another module's source opened it already
                }
                st.opened = true;
                st.first = st.plan.first_frame_number.unwrap_or(first_frame_number);
                st.next = st.first;
                st.open.clear();
                st.reported = 0;
                st.live = true;
                self.em.emit(stream, Step::Open);
            }
            SourceMsg::Frame { stream, meta, data } => {
                frame(
                    &mut self.streams[usize::from(stream)],
                    &mut self.em,
                    stream,
                    meta,
                    data,
                    now,
                );
            }
            SourceMsg::End {
                stream,
                last_frame_number,
            } => {
                let st = &mut self.streams[usize::from(stream)];
                st.ended += 1;
                st.last_frame_number = st.last_frame_number.max(last_frame_number);
                if st.ended < st.plan.sources {
                    return; // other modules' sources still deliver
                }
                let last_frame_number = st.last_frame_number;
                while st.live && !st.open.is_empty() {
                    close_front(st, &mut self.em, stream);
                }
                if !st.live {
                    return;
                }
                if let Some(mut last) = last_frame_number {
                    if st.plan.limit > 0 {
                        last = last.min(st.first + st.plan.limit - 1);
                    }
                    if last >= st.next && last - st.next > MAX_GAP {
                        tracing::warn!(last, "stream end jumped too far; tail not recorded lost");
                    } else if last >= st.next {
                        lose(st, &mut self.em, stream, last + 1);
                    }
                }
                st.live = false;
                self.em.emit(stream, Step::Close);
            }
        }
    }

    /// Closes datasets that have waited their timeout.
    fn expire(&mut self, now: Instant) {
        for (slot, st) in self.streams.iter_mut().enumerate() {
            while st.live
                && st
                    .open
                    .front()
                    .is_some_and(|d| now.duration_since(d.opened) >= st.plan.timeout)
            {
                close_front(st, &mut self.em, slot as StreamSlot);
            }
        }
    }
}

/// One module frame: finds (or opens) its dataset, hands its pixels on, closes what is ready.
fn frame(
    st: &mut StreamState,
    em: &mut Emitter,
    stream: StreamSlot,
    mut meta: FrameMeta,
    data: FrameBuf,
    now: Instant,
) {
    let modules = st.plan.layout.modules();
    let m = if modules == 1 {
        0
    } else {
        u32::from(meta.module)
    };
    let n = meta.frame_number;
    let oldest = st.open.front().map_or(st.next, |d| d.frame_number);
    // Behind the open datasets (a duplicate, late, or before index 1), a module outside the
    // grid, or beyond the run's count: it cannot take an index.
    let beyond = st.plan.limit > 0 && n >= st.first && st.index(n) > st.plan.limit;
    if !st.live || m >= modules || n < oldest || beyond {
        em.stale();
        return;
    }
    if n >= st.next {
        if n - st.next > MAX_GAP {
            tracing::warn!(
                frame_number = n,
                expected = st.next,
                "frame number jumped too far; frame refused"
            );
            em.stale();
            return;
        }
        advance(st, em, stream, n, now);
        if !st.live {
            return;
        }
    }
    let Some(front) = st.open.front().map(|d| d.frame_number) else {
        em.stale();
        return;
    };
    let index = st.index(n);
    let chunking = st.plan.layout.effective_chunking();
    let layout = st.plan.layout;
    let Some(d) = st.open.get_mut((n - front) as usize) else {
        em.stale();
        return;
    };
    let bit = 1u64 << m;
    if d.seen & bit != 0 {
        em.stale();
        return;
    }
    if d.seen == 0 {
        d.timestamp_ns = meta.timestamp_ns;
    }
    d.seen |= bit;
    st.newest[m as usize] = st.newest[m as usize].max(n);
    st.reported |= bit;
    meta.module = m as u16;
    em.stats.indexed.fetch_add(1, Ordering::Relaxed);
    match (chunking, st.plan.images.as_ref()) {
        (Chunking::Frame, Some(pool)) => {
            let image = d.image.get_or_insert_with(|| {
                let mut b = pool.acquire();
                b.set_len(b.capacity());
                b
            });
            copy_tile(&layout, m, data.as_slice(), image.spare_mut());
            drop(data); // the module's buffer (or ring slot) goes back now
            em.emit(stream, Step::Seen { index, meta });
        }
        _ => em.emit(
            stream,
            Step::Raw {
                index,
                meta,
                pixels: data,
            },
        ),
    }
    while st.live && st.front_settled() {
        close_front(st, em, stream);
    }
}

/// Makes frame number `n` open: closes datasets it leaves `ahead` behind, records frame
/// numbers that would close at once as lost, and opens the rest up to `n`.
fn advance(st: &mut StreamState, em: &mut Emitter, stream: StreamSlot, n: u64, now: Instant) {
    let ahead = st.plan.ahead;
    while st.live && st.open.front().is_some_and(|d| n - d.frame_number >= ahead) {
        close_front(st, em, stream);
    }
    let keep_from = n.saturating_sub(ahead - 1);
    if st.live && st.next < keep_from {
        lose(st, em, stream, keep_from);
    }
    while st.live && st.next <= n {
        st.open.push_back(Open {
            frame_number: st.next,
            seen: 0,
            opened: now,
            timestamp_ns: 0,
            image: None,
        });
        st.next += 1;
    }
}

/// Records frame numbers `st.next .. until` (never opened) as lost.
fn lose(st: &mut StreamState, em: &mut Emitter, stream: StreamSlot, until: u64) {
    let count = until - st.next;
    em.stats.lost.fetch_add(count, Ordering::Relaxed);
    em.emit(
        stream,
        Step::Lost {
            first_index: st.index(st.next),
            first_frame_number: st.next,
            count,
        },
    );
    st.next = until;
    end_if_counted(st, em, stream, st.index(until - 1));
}

/// Closes the oldest open dataset.
fn close_front(st: &mut StreamState, em: &mut Emitter, stream: StreamSlot) {
    let Some(mut d) = st.open.pop_front() else {
        return;
    };
    let index = st.index(d.frame_number);
    let layout = st.plan.layout;
    if d.seen == 0 {
        em.stats.lost.fetch_add(1, Ordering::Relaxed);
        em.emit(
            stream,
            Step::Lost {
                first_index: index,
                first_frame_number: d.frame_number,
                count: 1,
            },
        );
    } else {
        if d.seen != layout.all_modules() {
            em.stats.incomplete.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(mut image) = d.image.take() {
            for m in (0..layout.modules()).filter(|m| d.seen & (1 << m) == 0) {
                zero_tile(&layout, m, image.spare_mut());
            }
            image.set_len(layout.chunk_bytes());
            let meta = FrameMeta {
                frame_number: d.frame_number,
                module: 0,
                pixel: layout.pixel,
                shape: layout.image_shape(),
                timestamp_ns: d.timestamp_ns,
                missing: PacketMask::NONE,
            };
            em.emit(
                stream,
                Step::Raw {
                    index,
                    meta,
                    pixels: FrameBuf::Pooled(image),
                },
            );
        }
        em.emit(
            stream,
            Step::Closed {
                index,
                frame_number: d.frame_number,
            },
        );
    }
    end_if_counted(st, em, stream, index);
}

/// Ends the stream once `index` is the run's last, and asks the sources to stop.
fn end_if_counted(st: &mut StreamState, em: &mut Emitter, stream: StreamSlot, index: u64) {
    if st.plan.limit > 0 && index >= st.plan.limit && st.live {
        st.live = false;
        st.open.clear();
        em.emit(stream, Step::Close);
        em.stop.store(true, Ordering::Relaxed);
    }
}

/// Row byte ranges of module `m`'s tile in the image: (offset in image, row length), per row.
fn tile_rows(layout: &RunLayout, m: u32) -> impl Iterator<Item = (usize, usize)> {
    let ps = layout.pixel.size();
    let [ny, nx] = layout.module_shape.map(|d| d as usize);
    let image_nx = layout.image_shape()[1] as usize;
    let [oy, ox] = layout.tile_origin(m).map(|d| d as usize);
    (0..ny).map(move |y| (((oy + y) * image_nx + ox) * ps, nx * ps))
}

/// Copies a module frame into its tile of the image.
fn copy_tile(layout: &RunLayout, m: u32, module: &[u8], image: &mut [u8]) {
    for (y, (at, len)) in tile_rows(layout, m).enumerate() {
        if let (Some(dst), Some(src)) = (
            image.get_mut(at..at + len),
            module.get(y * len..(y + 1) * len),
        ) {
            dst.copy_from_slice(src);
        }
    }
}

/// Sets module `m`'s tile of the image to the fill value (0).
fn zero_tile(layout: &RunLayout, m: u32, image: &mut [u8]) {
    for (at, len) in tile_rows(layout, m) {
        if let Some(dst) = image.get_mut(at..at + len) {
            dst.fill(0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crossbeam::channel;
    use detingest_shm::PixelType;
    use detingest_writer::Codec;

    fn layout(grid: [u32; 2], chunking: Chunking) -> RunLayout {
        RunLayout {
            pixel: PixelType::U8,
            module_shape: [1, 2],
            grid,
            chunking,
            codec: Codec::None,
        }
    }

    fn plan(grid: [u32; 2], chunking: Chunking, limit: u64) -> StreamPlan {
        let layout = layout(grid, chunking);
        StreamPlan {
            layout,
            ahead: 3,
            timeout: Duration::from_secs(60),
            limit,
            first_frame_number: None,
            sources: 1,
            images: (chunking == Chunking::Frame)
                .then(|| BufferPool::new(8, layout.pixel.frame_bytes(layout.image_shape()))),
        }
    }

    fn start(first: u64) -> SourceMsg {
        SourceMsg::Start {
            stream: 0,
            first_frame_number: first,
        }
    }

    fn end(last: u64) -> SourceMsg {
        SourceMsg::End {
            stream: 0,
            last_frame_number: Some(last),
        }
    }

    /// Module `m` of frame `n`, pixels `[n, m]`.
    fn module(n: u64, m: u16) -> SourceMsg {
        SourceMsg::Frame {
            stream: 0,
            meta: FrameMeta {
                frame_number: n,
                module: m,
                pixel: PixelType::U8,
                shape: [1, 2],
                timestamp_ns: 0,
                missing: PacketMask::NONE,
            },
            data: FrameBuf::Shared(Arc::from(vec![n as u8, m as u8])),
        }
    }

    /// What the indexer emits for `msgs`, one string per item, and whether it asked to stop.
    fn run(plan: StreamPlan, msgs: Vec<SourceMsg>, expire_at_end: bool) -> (Vec<String>, bool) {
        let (tx, rx) = channel::unbounded();
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(PipelineStats::default());
        let mut ix = Indexer::new(vec![plan], tx, stats, Arc::clone(&stop));
        let t0 = Instant::now();
        for m in msgs {
            ix.handle(m, t0);
        }
        if expire_at_end {
            ix.expire(t0 + Duration::from_secs(61));
        }
        drop(ix);
        let mut seq = 0;
        let out = rx
            .iter()
            .map(|it| {
                assert_eq!(it.seq, seq, "seq numbers every item in order");
                seq += 1;
                match it.step {
                    Step::Open => "open".to_string(),
                    Step::Raw {
                        index,
                        meta,
                        pixels,
                    } => format!(
                        "raw {index}:{}/{} {:?}",
                        meta.frame_number,
                        meta.module,
                        pixels.as_slice()
                    ),
                    Step::Seen { index, meta } => format!("seen {index}/{}", meta.module),
                    Step::Lost {
                        first_index,
                        first_frame_number,
                        count,
                    } => format!("lost {first_index}:{first_frame_number}+{count}"),
                    Step::Closed {
                        index,
                        frame_number,
                    } => format!("closed {index}:{frame_number}"),
                    Step::Chunk { .. } | Step::Failed { .. } => "chunk".into(),
                    Step::Close => "close".into(),
                }
            })
            .collect();
        (out, stop.load(Ordering::Relaxed))
    }

    #[test]
    fn single_module_gaps_become_lost_ranges_and_indices_stay_dense() {
        let (out, _) = run(
            plan([1, 1], Chunking::Module, 0),
            vec![
                start(100),
                module(101, 0),
                module(102, 0),
                module(109, 0),
                module(104, 0),
                end(110),
            ],
            false,
        );
        assert_eq!(
            out,
            [
                "open",
                "raw 2:101/0 [101, 0]",
                "lost 1:100+1",
                "closed 2:101",
                "raw 3:102/0 [102, 0]",
                "closed 3:102",
                "lost 4:103+4",
                "raw 10:109/0 [109, 0]",
                "lost 8:107+1",
                "lost 9:108+1",
                "closed 10:109",
                "lost 11:110+1",
                "close"
            ]
        );
    }

    #[test]
    fn modules_form_datasets_closed_in_order_once_settled() {
        let (out, _) = run(
            plan([1, 2], Chunking::Module, 0),
            vec![
                start(1),
                module(1, 1),
                module(2, 1), // 1 and 2 wait for module 0
                module(1, 0), // 1 complete
                module(2, 0), // 2 complete
                module(3, 0), // module 1 of 3 never comes
                module(4, 0),
                module(4, 1), // module 1 has passed 3: 3 closes incomplete
                module(6, 1),
                module(3, 1), // too late: stale
                module(2, 2), // outside the grid: stale
                end(6),
            ],
            false,
        );
        assert_eq!(
            out,
            [
                "open",
                "raw 1:1/1 [1, 1]",
                "raw 2:2/1 [2, 1]",
                "raw 1:1/0 [1, 0]",
                "closed 1:1",
                "raw 2:2/0 [2, 0]",
                "closed 2:2",
                "raw 3:3/0 [3, 0]",
                "raw 4:4/0 [4, 0]",
                "raw 4:4/1 [4, 1]",
                "closed 3:3",
                "closed 4:4",
                "raw 6:6/1 [6, 1]",
                "lost 5:5+1",
                "closed 6:6",
                "close"
            ]
        );
    }

    #[test]
    fn a_silent_module_costs_datasets_ahead_frames_not_forever() {
        let mut msgs = vec![start(1)];
        msgs.extend((1..=4).map(|n| module(n, 0)));
        let (out, _) = run(plan([1, 2], Chunking::Module, 0), msgs, false);
        assert_eq!(
            out,
            [
                "open",
                "raw 1:1/0 [1, 0]",
                "raw 2:2/0 [2, 0]",
                "raw 3:3/0 [3, 0]",
                "closed 1:1",
                "raw 4:4/0 [4, 0]",
            ]
        );
    }

    #[test]
    fn frame_chunking_assembles_the_image_with_missing_tiles_zeroed() {
        let (out, _) = run(
            plan([2, 1], Chunking::Frame, 0),
            vec![start(1), module(1, 1), module(1, 0), module(2, 1)],
            true, // the timeout closes 2 without module 0
        );
        assert_eq!(
            out,
            [
                "open",
                "seen 1/1",
                "seen 1/0",
                "raw 1:1/0 [1, 0, 1, 1]",
                "closed 1:1",
                "seen 2/1",
                "raw 2:2/0 [0, 0, 2, 1]",
                "closed 2:2",
            ]
        );
    }

    #[test]
    fn a_run_with_a_count_closes_at_it_and_asks_the_sources_to_stop() {
        let (out, stop) = run(
            plan([1, 1], Chunking::Module, 2),
            vec![start(5), module(5, 0), module(6, 0), module(7, 0), end(9)],
            false,
        );
        assert!(stop);
        assert_eq!(
            out,
            [
                "open",
                "raw 1:5/0 [5, 0]",
                "closed 1:5",
                "raw 2:6/0 [6, 0]",
                "closed 2:6",
                "close"
            ]
        );
    }

    #[test]
    fn a_fixed_first_frame_number_gives_every_daemon_the_same_indices() {
        let fixed = StreamPlan {
            first_frame_number: Some(10),
            ..plan([1, 1], Chunking::Module, 0)
        };
        // This daemon's source starts at 12 (it missed 10 and 11) and also sees 9.
        let (out, _) = run(fixed, vec![start(12), module(9, 0), module(12, 0)], false);
        let want = [
            "open",
            "raw 3:12/0 [12, 0]",
            "lost 1:10+1",
            "lost 2:11+1",
            "closed 3:12",
        ];
        assert_eq!(out, want);
    }

    #[test]
    fn a_stream_fed_by_one_source_per_module_closes_when_the_last_ends() {
        let two = StreamPlan {
            sources: 2,
            ..plan([1, 2], Chunking::Module, 0)
        };
        let end = |last| SourceMsg::End {
            stream: 0,
            last_frame_number: last,
        };
        let (out, _) = run(
            two,
            vec![
                start(1),
                module(1, 0),
                start(2), // module 1's source starts later: the stream is open already
                end(Some(3)),
                module(1, 1),
                module(2, 1),
                end(Some(2)),
            ],
            false,
        );
        assert_eq!(
            out,
            [
                "open",
                "raw 1:1/0 [1, 0]",
                "raw 1:1/1 [1, 1]",
                "closed 1:1",
                "raw 2:2/1 [2, 1]",
                "closed 2:2",
                "lost 3:3+1",
                "close"
            ]
        );
    }

    #[test]
    fn a_jump_beyond_max_gap_is_refused_not_recorded_lost() {
        let (out, _) = run(
            plan([1, 1], Chunking::Module, 0),
            vec![
                start(1),
                module(1, 0),
                module(2 + MAX_GAP + 1, 0),
                module(2, 0),
            ],
            false,
        );
        assert_eq!(
            out,
            [
                "open",
                "raw 1:1/0 [1, 0]",
                "closed 1:1",
                "raw 2:2/0 [2, 0]",
                "closed 2:2"
            ]
        );
    }

    #[test]
    fn frames_of_an_unopened_or_closed_stream_are_refused() {
        let (out, _) = run(
            plan([1, 1], Chunking::Module, 0),
            vec![
                module(1, 0),
                start(1),
                SourceMsg::End {
                    stream: 0,
                    last_frame_number: None,
                },
                module(1, 0),
            ],
            false,
        );
        assert_eq!(out, ["open", "close"]);
    }
}
