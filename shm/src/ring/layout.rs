//! The ring file's bytes, as `#[repr(C)]` structs whose offsets `shm/LAYOUT.md` documents
//! and the tests below pin: a header, one [`Descriptor`] per slot, then the page-aligned slots.

use super::protocol::{Counters, Padded};
use super::sync::{AtomicU32, AtomicU64};
use crate::PixelType;

/// `b"DETRING\0"` read as a little-endian u64.
pub const MAGIC: u64 = u64::from_le_bytes(*b"DETRING\0");
/// Layout version: changes whenever a field moves or changes meaning.
pub const VERSION: u32 = 1;
/// Bytes before the first descriptor.
pub const HEADER_BYTES: usize = 1024;
/// Bytes of one descriptor.
pub const DESCRIPTOR_BYTES: usize = 64;
/// Slots start on, and are multiples of, this many bytes (a page, so DMA could write them).
pub const PAGE: usize = 4096;

/// `producer.state`: no producer has attached since the ring was created or reclaimed.
pub const PRODUCER_NONE: u32 = 0;
/// `producer.state`: a producer attached and has not closed (it may have died).
pub const PRODUCER_ATTACHED: u32 = 1;
/// `producer.state`: the producer closed cleanly.
pub const PRODUCER_CLOSED: u32 = 2;

/// `daemon_state`: the daemon consumes the ring.
pub const DAEMON_RUNNING: u32 = 1;
/// `daemon_state`: the daemon shut down cleanly; the ring takes no more frames.
pub const DAEMON_CLOSED: u32 = 2;

/// Byte of the file the daemon holds an exclusive OFD lock on while it runs.
pub const DAEMON_LOCK_BYTE: i64 = 0;
/// Byte of the file the attached producer holds an exclusive OFD lock on.
pub const PRODUCER_LOCK_BYTE: i64 = 1;

/// What the daemon writes before the file gets its name, and never changes after.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Identity {
    /// [`MAGIC`].
    pub magic: u64,
    /// [`VERSION`].
    pub version: u32,
    /// [`HEADER_BYTES`]: where the descriptors start.
    pub header_bytes: u32,
    /// Number of slots, a power of two.
    pub slot_count: u32,
    /// [`DESCRIPTOR_BYTES`].
    pub descriptor_bytes: u32,
    /// Bytes per slot, a multiple of [`PAGE`].
    pub slot_bytes: u64,
    /// Offset of slot 0, a multiple of [`PAGE`].
    pub slots_offset: u64,
    /// Size of the whole file.
    pub total_bytes: u64,
    /// The frame the daemon expects: pixel type code ([`pixel_code`]), 0 for any.
    pub pixel_type: u32,
    /// Frame width in pixels, 0 for any.
    pub width: u32,
    /// Frame height in pixels, 0 for any.
    pub height: u32,
    /// The module this ring carries.
    pub module: u32,
    /// Process id of the daemon that created the ring (diagnostics only: liveness is the
    /// daemon's lock).
    pub daemon_pid: u32,
    /// Reserved, zero.
    pub reserved: u32,
}

/// The producer's liveness line.
#[repr(C)]
#[derive(Default)]
pub struct ProducerLine {
    /// [`PRODUCER_NONE`], [`PRODUCER_ATTACHED`] or [`PRODUCER_CLOSED`].
    pub state: AtomicU32,
    /// Process id of the last producer to attach (diagnostics).
    pub pid: AtomicU32,
    /// Attaches since creation.
    pub generation: AtomicU32,
    /// Reserved, zero.
    pub reserved: AtomicU32,
    /// Non-zero while the producer holds an acquired, uncommitted slot: its frame-in-ring
    /// number plus one. Set by the producer at acquire, cleared at commit or abort; whoever
    /// holds the producer lock after a producer died swaps it to zero and counts a torn frame.
    pub claim: AtomicU64,
    /// Frames torn by producers that died between acquire and commit.
    pub torn: AtomicU64,
}

/// The header: identity, then each shared counter on its own 128-byte line.
#[repr(C)]
pub struct Header {
    /// Offset 0.
    pub identity: Padded<Identity>,
    /// Offsets 128 (head), 256 (tail), 384 (data bell), 512 (space bell).
    pub counters: Counters,
    /// Offset 640.
    pub producer: Padded<ProducerLine>,
    /// Offset 768: [`DAEMON_RUNNING`] or [`DAEMON_CLOSED`].
    pub daemon_state: Padded<AtomicU32>,
}

/// One committed frame's description, written by the producer before it commits.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Descriptor {
    /// The detector's frame number.
    pub frame_number: u64,
    /// Acquisition time, ns since the Unix epoch (0: unknown).
    pub timestamp_ns: u64,
    /// Bytes of pixel data at the start of the slot.
    pub byte_length: u64,
    /// The frame-in-ring number of this commit: lets a reader check that the descriptor
    /// belongs to this lap of the ring.
    pub sequence: u64,
    /// Pixel type code ([`pixel_code`]).
    pub pixel_type: u32,
    /// Width in pixels (fastest-varying dimension).
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Detector module number.
    pub module: u32,
    /// Must be 0 in layout version 1.
    pub flags: u32,
    /// Zero.
    pub reserved: [u32; 3],
}

/// The code of a pixel type in descriptors and the C API: 1-based so 0 means "unset".
pub const fn pixel_code(p: PixelType) -> u32 {
    match p {
        PixelType::U8 => 1,
        PixelType::U16 => 2,
        PixelType::U32 => 3,
        PixelType::I32 => 4,
        PixelType::F32 => 5,
    }
}

/// The pixel type of a code, if it names one.
pub fn pixel_from_code(code: u32) -> Option<PixelType> {
    PixelType::ALL.into_iter().find(|&p| pixel_code(p) == code)
}

/// Where the parts of a ring of `slot_count` slots of `slot_bytes` go.
pub fn geometry(slot_count: u32, slot_bytes: u64) -> (u64, u64) {
    let descriptors_end = HEADER_BYTES as u64 + DESCRIPTOR_BYTES as u64 * u64::from(slot_count);
    let slots_offset = descriptors_end.div_ceil(PAGE as u64) * PAGE as u64;
    (
        slots_offset,
        slots_offset + slot_bytes * u64::from(slot_count),
    )
}

#[cfg(test)]
mod tests {
    use std::mem::{offset_of, size_of};

    use super::*;

    #[test]
    fn offsets_are_the_documented_ones() {
        assert_eq!(size_of::<Identity>(), 72);
        assert_eq!(offset_of!(Header, identity), 0);
        let counters = offset_of!(Header, counters);
        for (field, offset) in [
            (offset_of!(Counters, head), 128),
            (offset_of!(Counters, tail), 256),
            (offset_of!(Counters, data_bell), 384),
            (offset_of!(Counters, space_bell), 512),
        ] {
            assert_eq!(counters + field, offset);
        }
        assert_eq!(offset_of!(Header, producer), 640);
        assert_eq!(offset_of!(ProducerLine, claim), 16);
        assert_eq!(offset_of!(ProducerLine, torn), 24);
        assert_eq!(offset_of!(Header, daemon_state), 768);
        assert_eq!(size_of::<Header>(), 896);
        assert!(size_of::<Header>() <= HEADER_BYTES);
        assert_eq!(size_of::<Descriptor>(), DESCRIPTOR_BYTES);
        assert_eq!(offset_of!(Descriptor, sequence), 24);
        assert_eq!(offset_of!(Descriptor, pixel_type), 32);
        assert_eq!(offset_of!(Descriptor, flags), 48);
    }

    #[test]
    fn slots_start_on_a_page_after_the_descriptors() {
        assert_eq!(geometry(4, 8192), (4096, 4096 + 4 * 8192));
        assert_eq!(geometry(64, 4096), (8192, 8192 + 64 * 4096));
        assert_eq!(MAGIC.to_le_bytes(), *b"DETRING\0");
    }

    #[test]
    fn pixel_codes_round_trip_and_zero_is_unset() {
        for p in PixelType::ALL {
            assert_eq!(pixel_from_code(pixel_code(p)), Some(p));
        }
        assert_eq!(pixel_from_code(0), None);
        assert_eq!(pixel_from_code(6), None);
    }
}
