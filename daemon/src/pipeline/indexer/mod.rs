//! Index assignment and dataset grouping, per stream.
//!
//! index = detector frame number - first frame number + 1 (+ the indices of earlier
//! sequences: when the detector restarts, a source says so and a new sequence begins, its
//! first frame the index after the old sequence's last; frame numbers stay the detector's
//! own). The module frames with the same
//! frame number form one dataset. Each module delivers its frames in order, so a dataset is
//! settled once every module has either arrived or delivered a later frame. Datasets are
//! closed strictly in index order: when settled, when the oldest open one is
//! `dataset_timeout` old, or when a frame `ahead` frame numbers later arrives (the window of
//! open datasets is full: `dataset_ahead`, by default as many as the buffers allow). A
//! module frame arriving after its dataset closed is late (`late.rs`). A dataset closed with
//! no module is a lost index ([`Step::Lost`]); otherwise [`Step::Closed`] follows its
//! chunks. So every index 1..N reaches the writer exactly once, and the same frame number
//! gets the same index on every module (and on every daemon given the same
//! `first_frame_number`).
//!
//! Frames a source dropped here (its [`DropLog`]) are recorded dropped, not lost.
//!
//! With frame chunking the indexer assembles each dataset's image: module frames are copied
//! into a pool buffer as they arrive (their own buffers go back at once), missing tiles are
//! zeroed when the dataset closes, and the image goes to the workers as one `Raw`.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam::channel::{Receiver, RecvTimeoutError, Sender};
use detingest_shm::{BufferPool, FrameBuf, FrameMeta, PacketMask};
use detingest_writer::{Chunking, RunLayout};

use super::job::{Item, Step};
use super::stats::PipelineStats;
use crate::stream::{DropLog, SourceMsg, StreamSlot};

/// Largest jump in frame numbers recorded as lost indices. A bigger jump is not a loss but a
/// detector restart or a corrupt number: the frame is refused (counted stale) rather than
/// filling the file with millions of lost records.
pub const MAX_GAP: u64 = 1 << 20;

/// How one stream's frames become datasets.
pub(crate) struct StreamPlan {
    /// Geometry and chunking.
    pub layout: RunLayout,
    /// The modules a complete dataset has (all, or this daemon's part of the detector).
    pub expected: u64,
    /// Open datasets at most: an incomplete one closes once a frame this many frame numbers
    /// later arrives.
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
    /// What the stream's sources dropped here.
    pub drops: Arc<DropLog>,
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

    /// Counts a late module frame; returns the count so far.
    fn late(&self) -> u64 {
        self.stats.late.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Counts `count` indices recorded with nothing written: dropped here or never arrived.
    fn count_unwritten(&self, count: u64, dropped: u64) {
        let counter = if dropped != 0 {
            &self.stats.dropped
        } else {
            &self.stats.lost
        };
        counter.fetch_add(count, Ordering::Relaxed);
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
                base: 0,
                sequence: 0,
                module_sequence: [0; 64],
                warned_old: false,
                jump_warnings: Default::default(),
                late_warnings: Default::default(),
                closed: vec![(u64::MAX, 0); CLOSED_RING],
                drop_ring: vec![(u64::MAX, 0); DROP_RING],
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
        let slot = match &msg {
            SourceMsg::Start { stream, .. }
            | SourceMsg::Frame { stream, .. }
            | SourceMsg::Restart { stream, .. }
            | SourceMsg::End { stream, .. } => usize::from(*stream),
        };
        if let Some(st) = self.streams.get_mut(slot) {
            st.absorb_drops();
        }
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
            SourceMsg::Restart {
                stream,
                module,
                first_frame_number,
                last_frame_number,
            } => restart(
                &mut self.streams[usize::from(stream)],
                &mut self.em,
                stream,
                module,
                first_frame_number,
                last_frame_number,
            ),
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
                end_sequence(st, &mut self.em, stream, last_frame_number);
                if !st.live {
                    return;
                }
                st.live = false;
                self.em.emit(stream, Step::Close);
            }
        }
    }

    /// Closes datasets that have waited their timeout.
    fn expire(&mut self, now: Instant) {
        for (slot, st) in self.streams.iter_mut().enumerate() {
            st.absorb_drops();
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
    let n = meta.frame_number;
    let oldest = st.open.front().map_or(st.next, |d| d.frame_number);
    // Behind the open datasets (a duplicate, late, or before index 1), a module outside the
    // grid, or beyond the run's count: it cannot take an index.
    let beyond = st.plan.limit > 0 && n >= st.first && st.index(n) > st.plan.limit;
    let Some(m) = st
        .grid_position(meta.module)
        .filter(|_| st.live && n >= oldest && !beyond)
    else {
        if beyond || n >= oldest || !take_late(st, em, stream, &meta, now) {
            em.stale();
        }
        return;
    };
    if st.module_sequence[m as usize] < st.sequence {
        // Its source has not seen the restart yet: a frame of the old numbering, too late.
        if !st.warned_old {
            st.warned_old = true;
            tracing::warn!(
                module = m,
                frame_number = n,
                sequence = st.sequence,
                "frame of the numbering before the detector restart arrived after it; refused (counted stale)"
            );
        }
        em.stale();
        return;
    }
    if n >= st.next {
        if n - st.next > MAX_GAP {
            if let Some(held) = st.jump_warnings.allow(now) {
                tracing::warn!(
                    frame_number = n,
                    expected = st.next,
                    not_logged = held,
                    "frame number jumped too far; frame refused (counted stale)"
                );
            }
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
            dropped: st.dropped_before_open(st.next),
            opened: now,
            timestamp_ns: 0,
            image: None,
        });
        st.next += 1;
    }
}

/// Records frame numbers `st.next .. until` (never opened) as lost, or dropped where a source
/// said so: one step per run of equal drop masks.
fn lose(st: &mut StreamNumbering, em: &mut Emitter, stream: StreamSlot, until: u64) {
    while st.next < until {
        let first = st.next;
        let dropped = st.dropped_before_open(first);
        let mut end = first + 1;
        while end < until && st.dropped_before_open(end) == dropped {
            end += 1;
        }
        let count = end - first;
        for f in first.max(end.saturating_sub(CLOSED_RING as u64))..end {
            remember_closed(st, f, 0);
        }
        em.count_unwritten(count, dropped);
        em.emit(
            stream,
            Step::Lost {
                first_index: st.index(first),
                first_frame_number: first,
                count,
                sequence: st.sequence,
                dropped,
            },
        );
        st.next = end;
    }
    end_if_counted(st, em, stream, st.index(until - 1));
}

/// Closes every open dataset of the current sequence and records the frames up to
/// `last_frame_number` that never opened.
fn end_sequence(
    st: &mut StreamNumbering,
    em: &mut Emitter,
    stream: StreamSlot,
    last_frame_number: Option<u64>,
) {
    while st.live && !st.open.is_empty() {
        close_front(st, em, stream);
    }
    let Some(mut last) = last_frame_number.filter(|_| st.live) else {
        return;
    };
    if st.plan.limit > 0 {
        last = last.min(st.first + (st.plan.limit - st.base) - 1);
    }
    if last >= st.next && last - st.next > MAX_GAP {
        tracing::warn!(last, "stream end jumped too far; tail not recorded lost");
    } else if last >= st.next {
        lose(st, em, stream, last + 1);
    }
}

/// Module `module`'s source saw the detector restart. The first to say so for a sequence ends
/// the current one (like a stream's end) and begins the next at `first_frame_number`; the
/// others' word only moves them into it.
fn restart(
    st: &mut StreamNumbering,
    em: &mut Emitter,
    stream: StreamSlot,
    module: u16,
    first_frame_number: u64,
    last_frame_number: Option<u64>,
) {
    let Some(m) = st.grid_position(module).map(|m| m as usize) else {
        return;
    };
    st.module_sequence[m] += 1;
    if st.module_sequence[m] <= st.sequence || !st.live {
        return;
    }
    end_sequence(st, em, stream, last_frame_number);
    if !st.live {
        return;
    }
    st.base += st.next - st.first;
    st.sequence = st.module_sequence[m];
    st.first = first_frame_number;
    st.next = first_frame_number;
    st.reported = 0;
    st.newest = [0; 64];
    st.warned_old = false;
    st.drop_ring.fill((u64::MAX, 0));
    st.closed.fill((u64::MAX, 0));
    tracing::warn!(
        stream = stream,
        sequence = st.sequence,
        first_index = st.base + 1,
        first_frame_number,
        "detector restart: a new sequence begins"
    );
}

/// Closes the oldest open dataset.
fn close_front(st: &mut StreamNumbering, em: &mut Emitter, stream: StreamSlot) {
    let Some(mut d) = st.open.pop_front() else {
        return;
    };
    let index = st.index(d.frame_number);
    let layout = st.plan.layout;
    remember_closed(st, d.frame_number, d.seen);
    if d.seen == 0 {
        em.count_unwritten(1, d.dropped);
        em.emit(
            stream,
            Step::Lost {
                first_index: index,
                first_frame_number: d.frame_number,
                count: 1,
                sequence: st.sequence,
                dropped: d.dropped,
            },
        );
    } else {
        if d.seen != st.plan.expected {
            em.stats.incomplete.fetch_add(1, Ordering::Relaxed);
        }
        if d.dropped != 0 {
            em.stats.dropped.fetch_add(1, Ordering::Relaxed);
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
                detector_timestamp: 0,
                bunch_id: 0,
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
                sequence: st.sequence,
                dropped: d.dropped & !d.seen,
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

mod late;
mod numbering;
mod tiles;

use self::late::{remember_closed, take_late, CLOSED_RING};
use self::numbering::{Open, StreamNumbering, DROP_RING};
use self::tiles::{copy_tile, zero_tile};

#[cfg(test)]
mod tests;
