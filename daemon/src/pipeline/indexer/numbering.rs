//! Where one stream's numbering stands: the current sequence (its first frame number and the
//! indices before it), the open datasets, what each module has delivered, and the frames the
//! sources dropped before their dataset opened.

use std::collections::VecDeque;
use std::time::Instant;

use detingest_shm::PoolBuf;

use super::StreamPlan;

/// Frames remembered as dropped before their dataset opened, by frame number modulo this.
pub(super) const DROP_RING: usize = 1024;

/// A dataset whose modules are still arriving.
pub(super) struct Open {
    pub(super) frame_number: u64,
    pub(super) seen: u64,
    /// Modules dropped here.
    pub(super) dropped: u64,
    pub(super) opened: Instant,
    pub(super) timestamp_ns: u64,
    pub(super) image: Option<PoolBuf>,
}

/// Where one stream's numbering stands.
pub(super) struct StreamNumbering {
    pub(super) plan: StreamPlan,
    /// Frame number of the current sequence's first index.
    pub(super) first: u64,
    /// Indices of the sequences before the current one.
    pub(super) base: u64,
    /// The current sequence: 0, one more at each detector restart.
    pub(super) sequence: u32,
    /// The sequence each module's source is in.
    pub(super) module_sequence: [u32; 64],
    /// Set once a frame of an old sequence was refused in this one (warned once).
    pub(super) warned_old: bool,
    /// Frames refused for a jump too far are logged at most every few seconds.
    pub(super) jump_warnings: crate::rate_limit::RateLimit,
    /// Late module frames are logged at most every few seconds.
    pub(super) late_warnings: crate::rate_limit::RateLimit,
    /// Frame numbers closed lately and their modules (`late.rs`), by frame number modulo
    /// `CLOSED_RING`.
    pub(super) closed: Vec<(u64, u64)>,
    /// Drops read from the log whose dataset is not open yet: (frame number, modules).
    pub(super) drop_ring: Vec<(u64, u64)>,
    /// Next frame number to open a dataset for.
    pub(super) next: u64,
    pub(super) open: VecDeque<Open>,
    /// Newest frame number each module delivered (valid where `reported` has its bit).
    pub(super) newest: [u64; 64],
    pub(super) reported: u64,
    /// Between `Start` and the stream's `Close`.
    pub(super) live: bool,
    /// Set by the first `Start`: later ones (other modules' sources) change nothing.
    pub(super) opened: bool,
    /// Sources that have ended, and the last frame number any of them named.
    pub(super) ended: u32,
    pub(super) last_frame_number: Option<u64>,
}

impl StreamNumbering {
    pub(super) fn index(&self, frame_number: u64) -> u64 {
        self.base + frame_number - self.first + 1
    }

    /// The grid position of a source's `module` (a single-module stream's sources may name
    /// any); `None` outside the grid.
    pub(super) fn grid_position(&self, module: u16) -> Option<u32> {
        let modules = self.plan.layout.modules();
        match u32::from(module) {
            _ if modules == 1 => Some(0),
            m if m < modules => Some(m),
            _ => None,
        }
    }

    /// Reads the sources' drop log: open datasets learn which modules were dropped, the rest
    /// wait in the ring until their dataset opens or is recorded lost.
    pub(super) fn absorb_drops(&mut self) {
        while let Some((n, m)) = self.plan.drops.pop() {
            let Some(m) = self.grid_position(m) else {
                continue;
            };
            let bit = 1u64 << m;
            let front = self.open.front().map_or(self.next, |d| d.frame_number);
            if n >= front && n < self.next {
                if let Some(d) = self.open.get_mut((n - front) as usize) {
                    d.dropped |= bit;
                }
            } else if n >= self.next {
                let e = &mut self.drop_ring[(n % DROP_RING as u64) as usize];
                *e = if e.0 == n { (n, e.1 | bit) } else { (n, bit) };
            }
        }
    }

    /// The modules of `frame_number` dropped here before its dataset opened.
    pub(super) fn dropped_before_open(&self, frame_number: u64) -> u64 {
        match self.drop_ring[(frame_number % DROP_RING as u64) as usize] {
            (n, mask) if n == frame_number => mask,
            _ => 0,
        }
    }

    /// True when the oldest open dataset can gain no more modules.
    pub(super) fn front_settled(&self) -> bool {
        let Some(d) = self.open.front() else {
            return false;
        };
        let modules = self.plan.layout.modules() as usize;
        let passed = (0..modules)
            .filter(|&m| self.reported & (1 << m) != 0 && self.newest[m] > d.frame_number)
            .fold(0u64, |acc, m| acc | (1 << m));
        (d.seen | passed) == self.plan.expected
    }
}
