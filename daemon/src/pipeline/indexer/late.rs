//! Module frames that arrive after their dataset closed. The indexer remembers the module
//! masks of the last [`CLOSED_RING`] frame numbers it closed (or recorded lost); a module frame
//! behind the open datasets whose module is missing there is *late*, not stale: it is counted,
//! warned (rate-limited), and the writer marks it in the index's `late_mask`, so the file tells
//! a module that ran behind apart from one that never sent.

use std::time::Instant;

use detingest_shm::FrameMeta;

use super::numbering::StreamNumbering;
use super::Emitter;
use crate::pipeline::job::Step;
use crate::stream::StreamSlot;

/// Closed frame numbers remembered, by frame number modulo this.
pub(super) const CLOSED_RING: usize = 4096;

/// Remembers that `frame_number` closed with the modules `seen`.
pub(super) fn remember_closed(st: &mut StreamNumbering, frame_number: u64, seen: u64) {
    st.closed[(frame_number % CLOSED_RING as u64) as usize] = (frame_number, seen);
}

/// Takes module `m`'s frame `meta.frame_number` as late if its dataset closed without it in
/// the current numbering; false (stale) otherwise: a duplicate, another numbering's, or closed
/// too long ago to be remembered.
pub(super) fn take_late(
    st: &mut StreamNumbering,
    em: &mut Emitter,
    stream: StreamSlot,
    meta: &FrameMeta,
    now: Instant,
) -> bool {
    let n = meta.frame_number;
    let Some(m) = st.grid_position(meta.module) else {
        return false;
    };
    if !st.live || n < st.first || st.module_sequence[m as usize] != st.sequence {
        return false;
    }
    let bit = 1u64 << m;
    let entry = &mut st.closed[(n % CLOSED_RING as u64) as usize];
    if entry.0 != n || entry.1 & bit != 0 {
        return false;
    }
    entry.1 |= bit;
    let index = st.index(n);
    late_warning(st, em, index, meta, m, now);
    em.emit(stream, Step::Late { index, module: m });
    true
}

fn late_warning(
    st: &mut StreamNumbering,
    em: &Emitter,
    index: u64,
    meta: &FrameMeta,
    module: u32,
    now: Instant,
) {
    let late = em.late();
    if let Some(held) = st.late_warnings.allow(now) {
        tracing::warn!(
            index,
            frame_number = meta.frame_number,
            module,
            late_total = late,
            not_logged = held,
            window = st.plan.ahead,
            timeout_ms = st.plan.timeout.as_millis() as u64,
            "module frame arrived after its dataset closed; discarded and recorded late \
             (raise run.dataset_timeout_ms, or run.dataset_ahead)"
        );
    }
}
