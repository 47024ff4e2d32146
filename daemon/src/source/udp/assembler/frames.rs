//! One numbering's open frames: `window` slots, frame `f` in slot `f % window`, each with a
//! bitmap of the packets caught, and what leaving a frame does (fill what never arrived,
//! describe it, hand it on). The assembler keeps two: the current numbering's and that of a
//! restart being confirmed.

use std::time::Instant;

use detingest_shm::{FrameBuf, FrameMeta, PacketMask, PixelType, PoolBuf};

use super::super::header::Packet;
use super::super::stream_copy;
use super::{FrameOut, PacketCounts, MAX_PACKETS};

const WORDS: usize = (MAX_PACKETS / 64) as usize;

/// Where a port's packets go in its frame buffer.
#[derive(Debug, Clone, Copy)]
pub(super) struct PacketLayout {
    pub packets_per_frame: u32,
    /// `[first, end)`: packet numbers the detector sends.
    pub readout: [u32; 2],
    pub payload_bytes: usize,
    pub pixel: PixelType,
    pub shape: [u32; 2],
    pub fill: [u8; 8],
    /// Rows are stored bottom to top (EIGER's bottom half modules, `flip_rows`).
    pub flip_rows: bool,
}

impl PacketLayout {
    /// Packets that make a frame complete.
    pub fn expected(&self) -> u32 {
        self.readout[1] - self.readout[0]
    }

    /// Bytes of one row.
    fn row_bytes(&self) -> usize {
        self.shape[1] as usize * self.pixel.size()
    }

    /// Where packet `k`'s bytes lie in the frame: its rows, mirrored with `flip_rows` (still
    /// one contiguous range, its rows in reverse order).
    fn packet_range(&self, k: usize) -> std::ops::Range<usize> {
        let at = k * self.payload_bytes;
        if !self.flip_rows {
            return at..at + self.payload_bytes;
        }
        let frame = self.shape[0] as usize * self.row_bytes();
        frame - at - self.payload_bytes..frame - at
    }

    /// Copies packet `k`'s payload into `frame`, row by row in reverse with `flip_rows`.
    fn copy_packet(&self, k: usize, payload: &[u8], frame: &mut [u8]) {
        let dst = &mut frame[self.packet_range(k)];
        if !self.flip_rows {
            return stream_copy::copy(dst, payload);
        }
        let row = self.row_bytes();
        for (d, s) in dst
            .chunks_exact_mut(row)
            .rev()
            .zip(payload.chunks_exact(row))
        {
            stream_copy::copy(d, s);
        }
    }
}

pub(super) enum SlotState {
    Free,
    Open {
        frame: u64,
        buf: PoolBuf,
        caught: u32,
        opened: Instant,
        first_ns: u64,
        detector_timestamp: u64,
        bunch_id: u64,
    },
    /// No buffer was free for `frame`: its packets are counted and ignored.
    Dropped {
        frame: u64,
    },
}

pub(super) struct Slot {
    bitmap: [u64; WORDS],
    pub state: SlotState,
}

/// What became of a packet put into its frame.
pub(super) enum Put {
    /// Its payload is in the frame; `complete` when it was the frame's last missing one.
    Caught { complete: bool },
    /// The frame had it already.
    Duplicate,
    /// The frame was dropped for want of a buffer.
    Dropped,
}

/// The open frames of one numbering.
pub(super) struct Frames {
    pub slots: Vec<Slot>,
    window: u64,
}

impl Frames {
    pub fn new(window: u64) -> Self {
        let slots = (0..window)
            .map(|_| Slot {
                bitmap: [0; WORDS],
                state: SlotState::Free,
            })
            .collect();
        Self { slots, window }
    }

    pub fn slot_of(&self, frame: u64) -> usize {
        (frame % self.window) as usize
    }

    /// The frame slot `i` holds, open or dropped.
    pub fn frame_at(&self, i: usize) -> Option<u64> {
        match self.slots[i].state {
            SlotState::Open { frame, .. } | SlotState::Dropped { frame } => Some(frame),
            SlotState::Free => None,
        }
    }

    /// True when slot `i` holds a frame that may leave in order now: complete, or dropped.
    pub fn ready(&self, i: usize, expected: u32) -> bool {
        match &self.slots[i].state {
            SlotState::Open { caught, .. } => *caught == expected,
            SlotState::Dropped { .. } => true,
            SlotState::Free => false,
        }
    }

    /// True when some open frame has every packet.
    pub fn any_complete(&self, expected: u32) -> bool {
        (0..self.slots.len()).any(|i| {
            matches!(self.slots[i].state, SlotState::Open { .. }) && self.ready(i, expected)
        })
    }

    /// Opens `frame` in its slot if the slot is free, in a buffer from `out` (or dropped when
    /// none is free). True when it opened.
    pub fn open_if_free(&mut self, frame: u64, tile: u16, out: &mut impl FrameOut) -> bool {
        let i = self.slot_of(frame);
        let slot = &mut self.slots[i];
        if !matches!(slot.state, SlotState::Free) {
            return false;
        }
        slot.bitmap = [0; WORDS];
        slot.state = match out.buffer(frame, tile) {
            Some(buf) => SlotState::Open {
                frame,
                buf,
                caught: 0,
                opened: Instant::now(),
                first_ns: crate::stream::now_ns(),
                detector_timestamp: 0,
                bunch_id: 0,
            },
            None => SlotState::Dropped { frame },
        };
        true
    }

    /// Copies `p`'s payload into its (open) frame.
    pub fn put(&mut self, p: &Packet<'_>, lay: &PacketLayout) -> Put {
        let i = self.slot_of(p.frame_number);
        let slot = &mut self.slots[i];
        match &mut slot.state {
            SlotState::Open {
                frame,
                buf,
                caught,
                detector_timestamp,
                bunch_id,
                ..
            } if *frame == p.frame_number => {
                let k = p.packet_number as usize;
                let (word, bit) = (k / 64, 1u64 << (k % 64));
                if slot.bitmap[word] & bit != 0 {
                    return Put::Duplicate;
                }
                slot.bitmap[word] |= bit;
                if *caught == 0 {
                    (*detector_timestamp, *bunch_id) = (p.timestamp, p.bunch_id);
                }
                lay.copy_packet(k, p.payload, buf.spare_mut());
                *caught += 1;
                Put::Caught {
                    complete: *caught == lay.expected(),
                }
            }
            // Dropped, or (never, the window keeps frames apart) another frame's slot.
            _ => Put::Dropped,
        }
    }

    /// Frees every slot (a refuted restart): buffers go back to their pool.
    pub fn clear(&mut self) {
        for s in &mut self.slots {
            s.state = SlotState::Free;
        }
    }

    /// Slot `i`'s frame leaves: missing packets and the rows not read out are set to the fill
    /// value and the frame goes to `out` as tile `tile`. Counted in `counts`.
    pub fn leave(
        &mut self,
        i: usize,
        tile: u16,
        lay: &PacketLayout,
        counts: &mut PacketCounts,
        out: &mut impl FrameOut,
    ) {
        let slot = &mut self.slots[i];
        let state = std::mem::replace(&mut slot.state, SlotState::Free);
        let (frame, mut buf, caught, first_ns, detector_timestamp, bunch_id) = match state {
            SlotState::Open {
                frame,
                buf,
                caught,
                first_ns,
                detector_timestamp,
                bunch_id,
                ..
            } => (frame, buf, caught, first_ns, detector_timestamp, bunch_id),
            SlotState::Dropped { .. } => {
                // `out.buffer` recorded the drop; the indexer records the index dropped.
                counts.frames_dropped += 1;
                return;
            }
            SlotState::Free => return,
        };
        let missing = lay.expected() - caught;
        let mut mask = PacketMask::NONE;
        let [first, end] = lay.readout;
        if missing > 0 || first > 0 || end < lay.packets_per_frame {
            let size = lay.pixel.size();
            let bytes = buf.spare_mut();
            for k in 0..lay.packets_per_frame {
                let read = (first..end).contains(&k);
                let k = k as usize;
                if read && slot.bitmap[k / 64] & (1 << (k % 64)) != 0 {
                    continue;
                }
                if read {
                    mask.set(k as u32);
                }
                let range = &mut bytes[lay.packet_range(k)];
                for px in range.chunks_exact_mut(size) {
                    px.copy_from_slice(&lay.fill[..size]);
                }
            }
        }
        buf.set_len(lay.packets_per_frame as usize * lay.payload_bytes);
        stream_copy::fence(); // the payloads' streaming stores land before the hand-off
        let meta = FrameMeta {
            frame_number: frame,
            module: tile,
            pixel: lay.pixel,
            shape: lay.shape,
            timestamp_ns: first_ns,
            detector_timestamp,
            bunch_id,
            missing: mask,
        };
        if !out.send(meta, FrameBuf::Pooled(buf)) {
            counts.frames_dropped += 1; // the queue was full: recorded by `out`
        } else if missing > 0 {
            counts.frames_incomplete += 1;
            counts.packets_lost += u64::from(missing);
        } else {
            counts.frames_complete += 1;
        }
    }

    /// The newest frame open longer than `timeout`, if any.
    pub fn newest_expired(&self, now: Instant, timeout: std::time::Duration) -> Option<u64> {
        self.slots
            .iter()
            .filter_map(|s| match &s.state {
                SlotState::Open { frame, opened, .. } if now.duration_since(*opened) >= timeout => {
                    Some(*frame)
                }
                _ => None,
            })
            .max()
    }
}
