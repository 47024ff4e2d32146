//! Shared-memory rings: the zero-copy path from vendor DAQ software into the daemon.
//!
//! One ring per source, in a file under `/dev/shm/detingest/` that the daemon creates:
//! a single producer process ([`Producer`], or the C API over it) acquires a slot, writes a
//! frame straight into it and commits it with a [`Descriptor`]; the daemon
//! ([`RingConsumer`]) hands the slot itself down the pipeline as a [`RingSlot`] and
//! releases it when the codec is done, in any order. Both sides sleep on shared futexes
//! when there is nothing to do, and each learns of the other's death from an OFD lock
//! the kernel drops with the process. `shm/LAYOUT.md` documents the bytes.

#[cfg(not(loom))]
mod consumer;
#[cfg(not(loom))]
mod error;
#[cfg(not(loom))]
pub mod layout;
#[cfg(not(loom))]
mod map;
#[cfg(not(loom))]
mod producer;
pub mod protocol;
pub mod sync;
#[cfg(not(loom))]
mod sys;

#[cfg(not(loom))]
pub use consumer::{RingConsumer, RingEvent, RingSlot, RingSpec, DEFAULT_SPIN};
#[cfg(not(loom))]
pub use error::RingError;
#[cfg(not(loom))]
pub use layout::{pixel_code, pixel_from_code, Descriptor};
#[cfg(not(loom))]
pub use producer::Producer;
#[cfg(not(loom))]
pub use sys::monotonic_ns;

/// Counts the frame a dead producer held acquired, if any. Only whoever holds the
/// producer lock calls this (a newly attaching producer, or the daemon reclaiming), so
/// the claim cannot change underneath. A claim of `n + 1` is torn only if frame `n` was
/// never committed (`n >= head`): the producer clears it just after committing.
#[cfg(not(loom))]
fn reclaim_torn(h: &layout::Header) -> u64 {
    use sync::Ordering;
    let claim = h.producer.claim.swap(0, Ordering::AcqRel);
    let head = h.counters.head.load(Ordering::Acquire);
    if claim != 0 && claim > head {
        h.producer.torn.fetch_add(1, Ordering::AcqRel);
        1
    } else {
        0
    }
}
