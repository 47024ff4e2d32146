//! Frame assembly: packets into pooled frame buffers, every odd packet counted by kind.
//!
//! Up to `window` frames are open at once, frame `f` in slot `f % window`, each with a bitmap
//! of the packets caught. The payload of packet `k` is copied to offset `k * payload_bytes`
//! of the frame's buffer: the one copy after the kernel's. Frames leave in frame-number order
//! (the indexer refuses numbers behind its own): a complete frame as soon as all before it
//! have left; an incomplete one when a packet arrives for a frame `window` or more ahead of
//! it, or when it has been open longer than `timeout`. A frame that left incomplete has its
//! missing packets' bytes set to the fill value and carries how many were missing.
//!
//! A frame number far from the current ones (`restart_gap` ahead or behind) is counted and
//! dropped; when `restart_confirm` such packets in a row agree on a new frame range, the
//! detector restarted: open frames leave, and the new numbering is shifted to continue the
//! stream's (the stream's indices stay 1..N without gaps).

use std::time::{Duration, Instant};

use detingest_shm::{FrameBuf, FrameMeta, PacketMask, PixelType, PoolBuf};
use serde::Serialize;

use super::header::{PacketError, PacketFormat};
use super::stream_copy;

/// What the assembler needs to know about the port's stream.
#[derive(Debug, Clone)]
pub struct AssemblerConfig {
    /// Module id packets must carry.
    pub module: u16,
    /// Packets per frame (at most [`MAX_PACKETS`]).
    pub packets_per_frame: u32,
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
    /// Frame-number distance that counts as a detector restart rather than loss.
    pub restart_gap: u64,
    /// Consecutive packets that must agree before a restart is accepted.
    pub restart_confirm: u32,
}

/// Most packets per frame (the sls receivers' 512-bit mask).
pub const MAX_PACKETS: u32 = PacketMask::MAX;

/// Counters of one port, by kind. Every datagram lands in exactly one of `accepted`,
/// `too_short`, `bad_version`, `wrong_module`, `out_of_range`, `bad_length`, `duplicate`,
/// `late`, `far_ahead`, `backwards` and `dropped_with_frame`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct PacketCounts {
    /// Datagrams received.
    pub datagrams: u64,
    /// Bytes received.
    pub bytes: u64,
    /// Packets whose payload went into a frame.
    pub accepted: u64,
    /// Shorter than the header.
    pub too_short: u64,
    /// Header version not understood.
    pub bad_version: u64,
    /// Module id other than the port's.
    pub wrong_module: u64,
    /// Packet number not below packets-per-frame.
    pub out_of_range: u64,
    /// Payload not of the configured size.
    pub bad_length: u64,
    /// A packet already caught for its frame.
    pub duplicate: u64,
    /// For a frame that already left.
    pub late: u64,
    /// Frame number `restart_gap` or more ahead.
    pub far_ahead: u64,
    /// Frame number `restart_gap` or more behind.
    pub backwards: u64,
    /// Packets of frames dropped for want of a buffer.
    pub dropped_with_frame: u64,
    /// Frames that left complete.
    pub frames_complete: u64,
    /// Frames that left with packets missing.
    pub frames_incomplete: u64,
    /// Frames dropped because no buffer was free (their indices are recorded lost).
    pub frames_dropped: u64,
    /// Packets missing from frames that left incomplete.
    pub packets_lost: u64,
    /// Detector restarts accepted.
    pub restarts: u64,
    /// Times the io_uring multishot receive ended and was re-armed.
    pub rearms: u64,
    /// Of those, because the provided buffer ring ran dry (ENOBUFS).
    pub enobufs: u64,
}

/// Where assembled frames go (the source's pipeline connection; a collector in tests).
pub trait FrameOut {
    /// A free frame buffer, or `None` (the frame is dropped and counted).
    fn buffer(&mut self) -> Option<PoolBuf>;
    /// The stream begins at `first_frame_number`.
    fn start(&mut self, first_frame_number: u64);
    /// One frame leaves.
    fn send(&mut self, meta: FrameMeta, data: FrameBuf);
}

enum SlotState {
    Free,
    Open {
        frame: u64,
        buf: PoolBuf,
        caught: u32,
        opened: Instant,
        first_ns: u64,
    },
    /// No buffer was free for `frame`: its packets are counted and ignored.
    Dropped {
        frame: u64,
    },
}

struct Slot {
    bitmap: [u64; (MAX_PACKETS / 64) as usize],
    state: SlotState,
}

/// Assembles one port's packets into frames.
pub struct Assembler<F> {
    cfg: AssemblerConfig,
    format: F,
    slots: Vec<Slot>,
    /// Lowest detector frame number that has not left (None before the first packet).
    next: Option<u64>,
    /// Added (wrapping) to detector frame numbers: non-zero after a restart.
    shift: u64,
    /// Frame-number range and count of consecutive far packets that may be a restart.
    candidate: Option<(u64, u32)>,
    /// Newest frame opened (or dropped), in the stream's numbering.
    newest: Option<u64>,
    fill: [u8; 8],
    counts: PacketCounts,
}

impl<F: PacketFormat> Assembler<F> {
    /// An assembler for `cfg`'s stream in `format`.
    pub fn new(cfg: AssemblerConfig, format: F) -> Self {
        let window = cfg.window.max(1);
        let slots = (0..window)
            .map(|_| Slot {
                bitmap: [0; (MAX_PACKETS / 64) as usize],
                state: SlotState::Free,
            })
            .collect();
        let fill = cfg.fill.to_le_bytes();
        Self {
            cfg: AssemblerConfig { window, ..cfg },
            format,
            slots,
            next: None,
            shift: 0,
            candidate: None,
            newest: None,
            fill,
            counts: PacketCounts::default(),
        }
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
        if p.module != self.cfg.module {
            return c.wrong_module += 1;
        }
        if p.packet_number >= self.cfg.packets_per_frame {
            return c.out_of_range += 1;
        }
        if p.payload.len() != self.cfg.payload_bytes {
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
        if f < next {
            if next - f >= self.cfg.restart_gap {
                self.counts.backwards += 1;
                return self.maybe_restart(f, out);
            }
            return self.counts.late += 1;
        }
        if f - next >= self.cfg.restart_gap {
            self.counts.far_ahead += 1;
            return self.maybe_restart(f, out);
        }
        self.candidate = None;
        let window = self.cfg.window;
        if f - next >= window {
            self.advance_to(f - window + 1, out);
        }
        let i = (f % window) as usize;
        if matches!(self.slots[i].state, SlotState::Free) {
            self.open(i, f, out);
        }
        let slot = &mut self.slots[i];
        let complete = match &mut slot.state {
            SlotState::Open {
                frame, buf, caught, ..
            } => {
                debug_assert_eq!(*frame, f, "open frames stay within the window");
                let k = p.packet_number as usize;
                let (word, bit) = (k / 64, 1u64 << (k % 64));
                if slot.bitmap[word] & bit != 0 {
                    return self.counts.duplicate += 1;
                }
                slot.bitmap[word] |= bit;
                let at = k * self.cfg.payload_bytes;
                stream_copy::copy(&mut buf.spare_mut()[at..at + p.payload.len()], p.payload);
                *caught += 1;
                self.counts.accepted += 1;
                *caught == self.cfg.packets_per_frame
            }
            SlotState::Dropped { .. } => return self.counts.dropped_with_frame += 1,
            SlotState::Free => return,
        };
        if complete && Some(f) == self.next {
            self.leave_ready(out);
        }
    }

    /// Closes frames open longer than the timeout (and everything before them).
    pub fn tick(&mut self, now: Instant, out: &mut impl FrameOut) {
        let timeout = self.cfg.timeout;
        let newest_expired = self
            .slots
            .iter()
            .filter_map(|s| match &s.state {
                SlotState::Open { frame, opened, .. } if now.duration_since(*opened) >= timeout => {
                    Some(*frame)
                }
                _ => None,
            })
            .max();
        if let Some(f) = newest_expired {
            self.advance_to(f + 1, out);
        }
    }

    /// Lets every open frame leave (the stream ends); returns the newest frame number seen,
    /// in the stream's numbering (frames up to it that never left are recorded lost).
    pub fn finish(&mut self, out: &mut impl FrameOut) -> Option<u64> {
        let next = self.next?;
        self.advance_to(next + self.cfg.window, out);
        self.newest
    }

    fn open(&mut self, i: usize, frame: u64, out: &mut impl FrameOut) {
        let stream_frame = frame.wrapping_add(self.shift);
        self.newest = Some(self.newest.map_or(stream_frame, |n| n.max(stream_frame)));
        let slot = &mut self.slots[i];
        slot.bitmap = [0; (MAX_PACKETS / 64) as usize];
        slot.state = match out.buffer() {
            Some(buf) => SlotState::Open {
                frame,
                buf,
                caught: 0,
                opened: Instant::now(),
                first_ns: crate::stream::now_ns(),
            },
            None => {
                self.counts.frames_dropped += 1;
                SlotState::Dropped { frame }
            }
        };
    }

    /// Frames from `next` on that are complete (or dropped) leave, in order.
    fn leave_ready(&mut self, out: &mut impl FrameOut) {
        while let Some(next) = self.next {
            let i = (next % self.cfg.window) as usize;
            match &self.slots[i].state {
                SlotState::Open { caught, .. } if *caught == self.cfg.packets_per_frame => {}
                SlotState::Dropped { .. } => {}
                _ => return,
            }
            self.leave(i, out);
            self.next = Some(next + 1);
        }
    }

    /// Every frame before `new_next` leaves, complete or not; then the complete ones after.
    fn advance_to(&mut self, new_next: u64, out: &mut impl FrameOut) {
        let Some(next) = self.next else { return };
        let end = new_next.min(next + self.cfg.window);
        for f in next..end {
            let i = (f % self.cfg.window) as usize;
            match self.slots[i].state {
                SlotState::Open { frame, .. } | SlotState::Dropped { frame } if frame == f => {
                    self.leave(i, out)
                }
                _ => {}
            }
        }
        self.next = Some(new_next.max(next));
        self.leave_ready(out);
    }

    /// Sends slot `i`'s frame on (filling missing packets) and frees the slot.
    fn leave(&mut self, i: usize, out: &mut impl FrameOut) {
        let slot = &mut self.slots[i];
        let state = std::mem::replace(&mut slot.state, SlotState::Free);
        let SlotState::Open {
            frame,
            mut buf,
            caught,
            first_ns,
            ..
        } = state
        else {
            return; // a dropped frame: the indexer records its index lost
        };
        let cfg = &self.cfg;
        let missing = cfg.packets_per_frame - caught;
        let mut mask = PacketMask::NONE;
        if missing > 0 {
            let size = cfg.pixel.size();
            let bytes = buf.spare_mut();
            for k in 0..cfg.packets_per_frame as usize {
                if slot.bitmap[k / 64] & (1 << (k % 64)) == 0 {
                    mask.set(k as u32);
                    let range = &mut bytes[k * cfg.payload_bytes..(k + 1) * cfg.payload_bytes];
                    for px in range.chunks_exact_mut(size) {
                        px.copy_from_slice(&self.fill[..size]);
                    }
                }
            }
            self.counts.frames_incomplete += 1;
            self.counts.packets_lost += u64::from(missing);
        } else {
            self.counts.frames_complete += 1;
        }
        buf.set_len(cfg.packets_per_frame as usize * cfg.payload_bytes);
        stream_copy::fence(); // the payloads' streaming stores land before the hand-off
        let meta = FrameMeta {
            frame_number: frame.wrapping_add(self.shift),
            module: cfg.module,
            pixel: cfg.pixel,
            shape: cfg.shape,
            timestamp_ns: first_ns,
            missing: mask,
        };
        out.send(meta, FrameBuf::Pooled(buf));
    }

    /// A far packet: remembered; `restart_confirm` in a row within one window of each other
    /// restart the numbering at the first of them.
    fn maybe_restart(&mut self, f: u64, out: &mut impl FrameOut) {
        let seen = match self.candidate {
            Some((c, n)) if f >= c && f - c < self.cfg.window => n + 1,
            _ => {
                self.candidate = Some((f, 1));
                1
            }
        };
        if let Some((c, _)) = self.candidate {
            self.candidate = Some((c, seen));
            if seen >= self.cfg.restart_confirm {
                self.restart(c, out);
            }
        }
    }

    fn restart(&mut self, first: u64, out: &mut impl FrameOut) {
        let Some(next) = self.next else { return };
        self.advance_to(next + self.cfg.window, out);
        let continue_at = self.newest.map_or(first, |n| n.wrapping_add(1));
        tracing::warn!(
            module = self.cfg.module,
            detector_frame = first,
            stream_frame = continue_at,
            "detector restart: open frames closed, numbering continues the stream"
        );
        self.shift = continue_at.wrapping_sub(first);
        self.next = Some(first);
        self.candidate = None;
        self.counts.restarts += 1;
    }
}

#[cfg(test)]
mod tests;
