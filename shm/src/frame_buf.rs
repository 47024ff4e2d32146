//! [`FrameBuf`]: where a frame's pixels live while it moves down the pipeline. Whatever the
//! source, stages see one read-only byte slice; dropping the handle releases the memory to
//! its owner (a pool buffer back to its pool, a shared-memory ring slot back to its ring).

use std::sync::Arc;

use crate::ring::RingSlot;
use crate::PoolBuf;

/// The pixels of one frame, held by handle.
#[derive(Debug)]
pub enum FrameBuf {
    /// A buffer of a [`crate::BufferPool`] that the source filled.
    Pooled(PoolBuf),
    /// Immutable bytes shared by reference, e.g. a synthetic detector's pre-generated frame:
    /// handed down without any copy.
    Shared(Arc<[u8]>),
    /// A slot of a shared-memory ring that a producer process wrote the frame into: read
    /// in place, released to the producer when dropped.
    Slot(RingSlot),
    /// A chunk that arrived already encoded in the stream's codec (a DECTRIS Stream V2
    /// image): the compression workers pass it to the writer as it is.
    Encoded(PoolBuf),
}

impl FrameBuf {
    /// The pixel bytes.
    pub fn as_slice(&self) -> &[u8] {
        match self {
            Self::Pooled(b) => b.as_slice(),
            Self::Shared(b) => b,
            Self::Slot(s) => s.bytes(),
            Self::Encoded(b) => b.as_slice(),
        }
    }

    /// Number of bytes.
    pub fn len(&self) -> usize {
        self.as_slice().len()
    }

    /// True when the frame holds no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl From<RingSlot> for FrameBuf {
    fn from(s: RingSlot) -> Self {
        Self::Slot(s)
    }
}

impl From<PoolBuf> for FrameBuf {
    fn from(b: PoolBuf) -> Self {
        Self::Pooled(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::BufferPool;

    #[test]
    fn both_kinds_read_the_same() {
        let pool = BufferPool::new(1, 8);
        let mut b = pool.acquire();
        b.fill_from(&[1, 2, 3]);
        let pooled = FrameBuf::from(b);
        let shared = FrameBuf::Shared(Arc::from(&[1u8, 2, 3][..]));
        assert_eq!(pooled.as_slice(), shared.as_slice());
        assert_eq!(pool.free(), 0);
        drop(pooled);
        assert_eq!(pool.free(), 1, "dropping the frame returns its pool buffer");
    }
}
