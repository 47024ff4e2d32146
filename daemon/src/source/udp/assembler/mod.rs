//! Frame assembly: packets into pooled frame buffers, every odd packet counted by kind.
//!
//! A packet is the port's when it carries the configured module id (`modId`) and the `row` and
//! `column` of the port's place: the configured `place` (a packet naming another is a wiring
//! mistake, such as swapped interface cables: refused, counted `wrong_place`), or, when the
//! place comes from the packets, those of the first one. The last refused module id and
//! row/column are kept for the warnings.
//! Up to `window` frames are open at once (`frames.rs`). The payload of packet `k` is copied to
//! offset `k * payload_bytes` of the frame's buffer: the one copy after the kernel's. Frames
//! leave in frame-number order (the indexer refuses numbers behind its own): a complete frame
//! (every packet of the readout range) as soon as all before it have left; an incomplete one
//! when a packet arrives for a frame `window` or more ahead of it, or when it has been open
//! longer than `timeout`. Missing packets and the rows not read out hold the fill value.
//!
//! Detector restarts: a packet behind the current numbering (at any distance), or
//! `restart_gap` or more ahead of it, may start a new numbering. Such packets are kept, in
//! frames of their own, while `restart_confirm` distinct ones in a row within one window
//! confirm it (or, when the detector sends fewer, a complete frame and no packet of the
//! current numbering for `timeout`). A packet of the current numbering refutes it: its
//! packets are counted `late` (or `far_ahead`). On confirmation the current frames leave,
//! the source tells the pipeline (a new sequence begins at the detector's own frame number),
//! and the kept frames continue as the current numbering: no packet of the new numbering is
//! lost to the detection.

mod counts;
mod frames;

use std::time::{Duration, Instant};

use detingest_shm::{FrameBuf, FrameMeta, PacketMask, PixelType, PoolBuf};

pub use self::counts::PacketCounts;
use self::frames::{Frames, PacketLayout, Put};
use super::header::{Packet, PacketError, PacketFormat};

/// Where a port's frames go in the source's grid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    /// Always this tile, whatever the packets' `row` and `column` (a grid of one tile).
    Tile(u16),
    /// The configured tile at `[row, column]`: packets must name it.
    Fixed {
        /// The tile.
        tile: u16,
        /// `[row, column]` its packets carry.
        at: [u16; 2],
    },
    /// The tile at the packets' `row` and `column` in a grid of `[rows, columns]`.
    Header {
        /// `[rows, columns]` of the grid.
        grid: [u32; 2],
    },
}

impl Place {
    /// A port's place: the configured `[row, column]` of `grid`, tile 0 of a single-tile
    /// grid, or else the packets' `row` and `column`.
    pub fn new(place: Option<[u32; 2]>, grid: [u32; 2]) -> Self {
        match place {
            Some([row, column]) => Self::Fixed {
                tile: tile_at(grid, row, column).unwrap_or(0),
                at: [row as u16, column as u16],
            },
            None if grid == [1, 1] => Self::Tile(0),
            None => Self::Header { grid },
        }
    }
}

/// The tile at `row`, `column` of `grid` (row-major), if inside it.
fn tile_at(grid: [u32; 2], row: u32, column: u32) -> Option<u16> {
    if row >= grid[0] || column >= grid[1] {
        return None;
    }
    u16::try_from(row * grid[1] + column).ok()
}

/// What the assembler needs to know about the port's stream.
#[derive(Debug, Clone)]
pub struct AssemblerConfig {
    /// Module id packets must carry (`None`: any).
    pub mod_id: Option<u16>,
    /// Where the frames go in the grid.
    pub place: Place,
    /// Packets per frame of the full tile (at most [`MAX_PACKETS`]).
    pub packets_per_frame: u32,
    /// `[first, end)`: the packet numbers the detector sends.
    pub readout: [u32; 2],
    /// Payload bytes per packet; `packets_per_frame * payload_bytes` is the frame size.
    pub payload_bytes: usize,
    /// Pixel type of the frame.
    pub pixel: PixelType,
    /// `[ny, nx]` of the frame.
    pub shape: [u32; 2],
    /// Frames open at once.
    pub window: u64,
    /// Longest a frame stays open.
    pub timeout: Duration,
    /// Pixel value written where packets are missing.
    pub fill: u64,
    /// Store the rows bottom to top (EIGER's bottom half modules).
    pub flip_rows: bool,
    /// Frame-number distance ahead from which a new numbering may be a restart.
    pub restart_gap: u64,
    /// Distinct packets in a row that confirm a restart.
    pub restart_confirm: u32,
}

/// Most packets per frame (the sls receivers' 512-bit mask).
pub const MAX_PACKETS: u32 = PacketMask::MAX;

/// Where assembled frames go (the source's pipeline connection; a collector in tests).
pub trait FrameOut {
    /// A free buffer for `frame_number` of tile `module`, or `None`: the frame is dropped,
    /// and `out` records it.
    fn buffer(&mut self, frame_number: u64, module: u16) -> Option<PoolBuf>;
    /// The stream begins at `first_frame_number`.
    fn start(&mut self, first_frame_number: u64);
    /// One frame leaves; false when it was dropped (the pipeline's queue was full), which
    /// `out` records.
    fn send(&mut self, meta: FrameMeta, data: FrameBuf) -> bool;
    /// The detector restarted: tile `module`'s frames now number from `first_frame_number`;
    /// the old numbering's last frame was `last_frame_number`.
    fn restart(&mut self, module: u16, first_frame_number: u64, last_frame_number: Option<u64>);
}

/// Packets of a possible restart, kept until confirmed or refuted.
struct Candidate {
    frames: Frames,
    active: bool,
    /// Lowest and highest frame number among its packets.
    low: u64,
    high: u64,
    /// Distinct packets caught.
    packets: u32,
    /// Behind the current numbering (else far ahead).
    behind: bool,
    since: Instant,
}

/// Assembles one port's packets into frames.
pub struct Assembler<F> {
    cfg: AssemblerConfig,
    lay: PacketLayout,
    format: F,
    cur: Frames,
    /// Lowest frame number of the current numbering that has not left (None before the first
    /// packet).
    next: Option<u64>,
    /// Newest frame opened in the current numbering.
    newest: Option<u64>,
    cand: Candidate,
    /// The port's tile, and the `row`/`column` its packets carry.
    tile: Option<(u16, u16, u16)>,
    counts: PacketCounts,
    refused: Refused,
}

/// What the last refused packets named, for the warnings.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Refused {
    /// The module id of the last packet of another module.
    pub mod_id: Option<u16>,
    /// `[row, column]` of the last packet of this module naming another place.
    pub row_column: Option<[u16; 2]>,
}

impl<F: PacketFormat> Assembler<F> {
    /// An assembler for `cfg`'s stream in `format`.
    pub fn new(cfg: AssemblerConfig, format: F) -> Self {
        let window = cfg.window.max(1);
        let lay = PacketLayout {
            packets_per_frame: cfg.packets_per_frame,
            readout: cfg.readout,
            payload_bytes: cfg.payload_bytes,
            pixel: cfg.pixel,
            shape: cfg.shape,
            fill: cfg.fill.to_le_bytes(),
            flip_rows: cfg.flip_rows,
        };
        let tile = match cfg.place {
            Place::Tile(t) => Some((0, 0, t)),
            Place::Fixed { tile, at } => Some((at[0], at[1], tile)),
            Place::Header { .. } => None,
        };
        Self {
            cfg: AssemblerConfig { window, ..cfg },
            lay,
            format,
            cur: Frames::new(window),
            next: None,
            newest: None,
            cand: Candidate {
                frames: Frames::new(window),
                active: false,
                low: 0,
                high: 0,
                packets: 0,
                behind: false,
                since: Instant::now(),
            },
            tile,
            counts: PacketCounts::default(),
            refused: Refused::default(),
        }
    }

    /// What the last refused packets named.
    pub fn refused(&self) -> Refused {
        self.refused
    }

    /// The counters so far.
    pub fn counts(&self) -> &PacketCounts {
        &self.counts
    }

    /// The counters, for the receive path's own (re-arms, ENOBUFS).
    pub fn counts_mut(&mut self) -> &mut PacketCounts {
        &mut self.counts
    }

    /// Takes one datagram.
    pub fn on_datagram(&mut self, datagram: &[u8], out: &mut impl FrameOut) {
        let c = &mut self.counts;
        c.datagrams += 1;
        c.bytes += datagram.len() as u64;
        let p = match self.format.parse(datagram) {
            Ok(p) => p,
            Err(PacketError::TooShort) => return c.too_short += 1,
            Err(PacketError::BadVersion(_)) => return c.bad_version += 1,
        };
        if self.cfg.mod_id.is_some_and(|id| id != p.mod_id) {
            self.refused.mod_id = Some(p.mod_id);
            return c.wrong_module += 1;
        }
        let Some(tile) = self.tile_of(&p) else {
            self.refused.row_column = Some([p.row, p.column]);
            return self.counts.wrong_place += 1;
        };
        let c = &mut self.counts;
        let [first, end] = self.lay.readout;
        if p.packet_number < first || p.packet_number >= end {
            return c.out_of_range += 1;
        }
        if p.payload.len() != self.lay.payload_bytes {
            return c.bad_length += 1;
        }
        let f = p.frame_number;
        let next = match self.next {
            Some(n) => n,
            None => {
                self.next = Some(f);
                out.start(f);
                f
            }
        };
        if f < next || f - next >= self.cfg.restart_gap {
            return self.on_candidate(&p, tile, next, out);
        }
        if self.cand.active {
            self.refute();
        }
        let window = self.cfg.window;
        if f - next >= window {
            self.advance_to(f - window + 1, tile, out);
        }
        if self.cur.open_if_free(f, tile, out) {
            self.newest = Some(self.newest.map_or(f, |n| n.max(f)));
        }
        match self.cur.put(&p, &self.lay) {
            Put::Caught { complete } => {
                self.counts.accepted += 1;
                if complete && Some(f) == self.next {
                    self.leave_ready(tile, out);
                }
            }
            Put::Duplicate => self.counts.duplicate += 1,
            Put::Dropped => self.counts.dropped_with_frame += 1,
        }
    }

    /// Closes frames open longer than the timeout (and everything before them), and accepts
    /// a restart that has a complete frame and has seen nothing of the old numbering for as
    /// long.
    pub fn tick(&mut self, now: Instant, out: &mut impl FrameOut) {
        let Some((_, _, tile)) = self.tile else {
            return;
        };
        if let Some(f) = self.cur.newest_expired(now, self.cfg.timeout) {
            self.advance_to(f + 1, tile, out);
        }
        if self.cand.active
            && now.duration_since(self.cand.since) >= self.cfg.timeout
            && self.cand.frames.any_complete(self.lay.expected())
        {
            self.restart(tile, out);
        }
    }

    /// Lets every open frame leave (the stream ends); returns the newest frame number of the
    /// current numbering (frames up to it that never left are recorded lost).
    pub fn finish(&mut self, out: &mut impl FrameOut) -> Option<u64> {
        let (_, _, tile) = self.tile?;
        if self.cand.active {
            if self.cand.frames.any_complete(self.lay.expected()) {
                self.restart(tile, out);
            } else {
                self.refute();
            }
        }
        let next = self.next?;
        self.advance_to(next + self.cfg.window, tile, out);
        self.newest
    }

    /// The port's tile for `p`: the configured one, or the one its `row`/`column` name (the
    /// first packet's fixes it; a packet naming another is not the port's).
    fn tile_of(&mut self, p: &Packet<'_>) -> Option<u16> {
        match (self.tile, self.cfg.place) {
            (Some((_, _, t)), Place::Tile(_)) => Some(t),
            (Some((row, column, t)), Place::Header { .. } | Place::Fixed { .. }) => {
                (p.row == row && p.column == column).then_some(t)
            }
            (None, Place::Header { grid }) => {
                let (row, column) = (u32::from(p.row), u32::from(p.column));
                let t = tile_at(grid, row, column)?;
                tracing::info!(
                    mod_id = p.mod_id,
                    row,
                    column,
                    tile = t,
                    "port placed by its packets' row and column"
                );
                self.tile = Some((p.row, p.column, t));
                Some(t)
            }
            (None, Place::Tile(t) | Place::Fixed { tile: t, .. }) => Some(t),
        }
    }

    /// A packet outside the current numbering: kept as part of a possible restart.
    fn on_candidate(&mut self, p: &Packet<'_>, tile: u16, next: u64, out: &mut impl FrameOut) {
        let f = p.frame_number;
        let window = self.cfg.window;
        if self.cand.active && self.cand.high.max(f) - self.cand.low.min(f) >= window {
            self.refute(); // it does not agree with the candidate: a new one starts
        }
        let cand = &mut self.cand;
        if !cand.active {
            cand.active = true;
            (cand.low, cand.high, cand.packets) = (f, f, 0);
            cand.behind = f < next;
            cand.since = Instant::now();
        }
        cand.low = cand.low.min(f);
        cand.high = cand.high.max(f);
        cand.frames.open_if_free(f, tile, out);
        match cand.frames.put(p, &self.lay) {
            Put::Caught { .. } => cand.packets += 1,
            Put::Duplicate => self.counts.duplicate += 1,
            Put::Dropped => self.counts.dropped_with_frame += 1,
        }
        if self.cand.packets >= self.cfg.restart_confirm {
            self.restart(tile, out);
        }
    }

    /// The candidate was not a restart: its packets are counted late (or far ahead).
    fn refute(&mut self) {
        let n = u64::from(self.cand.packets);
        if self.cand.behind {
            self.counts.late += n;
        } else {
            self.counts.far_ahead += n;
        }
        self.cand.frames.clear();
        self.cand.active = false;
        self.cand.packets = 0;
    }

    /// The candidate is a restart: the current frames leave, the pipeline is told, and the
    /// candidate's frames become the current numbering.
    fn restart(&mut self, tile: u16, out: &mut impl FrameOut) {
        if let Some(next) = self.next {
            self.advance_to(next + self.cfg.window, tile, out);
        }
        let (first, last) = (self.cand.low, self.newest);
        tracing::warn!(
            tile,
            old_last_frame = last,
            new_first_frame = first,
            "detector restart: its frame numbers start again; a new sequence begins"
        );
        out.restart(tile, first, last);
        std::mem::swap(&mut self.cur, &mut self.cand.frames);
        self.next = Some(first);
        self.newest = Some(self.cand.high);
        self.counts.accepted += u64::from(self.cand.packets);
        self.counts.restarts += 1;
        self.cand.active = false;
        self.cand.packets = 0;
        self.leave_ready(tile, out);
    }

    /// Frames from `next` on that are complete (or dropped) leave, in order.
    fn leave_ready(&mut self, tile: u16, out: &mut impl FrameOut) {
        while let Some(next) = self.next {
            let i = self.cur.slot_of(next);
            if self.cur.frame_at(i) != Some(next) || !self.cur.ready(i, self.lay.expected()) {
                return;
            }
            self.cur.leave(i, tile, &self.lay, &mut self.counts, out);
            self.next = Some(next + 1);
        }
    }

    /// Every frame before `new_next` leaves, complete or not; then the complete ones after.
    fn advance_to(&mut self, new_next: u64, tile: u16, out: &mut impl FrameOut) {
        let Some(next) = self.next else { return };
        let end = new_next.min(next + self.cfg.window);
        for f in next..end {
            let i = self.cur.slot_of(f);
            if self.cur.frame_at(i) == Some(f) {
                self.cur.leave(i, tile, &self.lay, &mut self.counts, out);
            }
        }
        self.next = Some(new_next.max(next));
        self.leave_ready(tile, out);
    }
}

#[cfg(test)]
mod tests;
