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
struct StreamNumbering {
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

impl StreamNumbering {
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
    streams: Vec<StreamNumbering>,
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
            .map(|plan| StreamNumbering {
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
    st: &mut StreamNumbering,
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
fn advance(st: &mut StreamNumbering, em: &mut Emitter, stream: StreamSlot, n: u64, now: Instant) {
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
fn lose(st: &mut StreamNumbering, em: &mut Emitter, stream: StreamSlot, until: u64) {
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
fn close_front(st: &mut StreamNumbering, em: &mut Emitter, stream: StreamSlot) {
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
fn end_if_counted(st: &mut StreamNumbering, em: &mut Emitter, stream: StreamSlot, index: u64) {
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
mod tests;
