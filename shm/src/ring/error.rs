//! [`RingError`]: why a ring call failed, one kind per code of the C API.

use std::io;
use std::path::PathBuf;

/// Why a ring operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RingError {
    /// No slot became free in time (the daemon is alive but behind).
    #[error("ring full: no slot became free within the timeout")]
    Timeout,
    /// The daemon that created the ring is gone (died or shut down).
    #[error("the daemon that created the ring is gone")]
    DaemonGone,
    /// No ring file at this path (no daemon serves it).
    #[error("no ring at {0} (is detingestd running with this source?)")]
    NoRing(PathBuf),
    /// A running daemon already serves a ring at this path.
    #[error("ring {0} is in use by a running daemon")]
    InUse(PathBuf),
    /// Another producer is attached to the ring.
    #[error("another producer (pid {0}) is attached to the ring")]
    Busy(u32),
    /// The file is not a detingest ring.
    #[error("not a detingest ring (magic {0:#018x})")]
    BadMagic(u64),
    /// The ring was made by a detingest with another layout version.
    #[error("ring layout version {found}, this library speaks {expected}")]
    BadVersion {
        /// Version in the file.
        found: u32,
        /// Version this library implements.
        expected: u32,
    },
    /// The header contradicts itself or the file's size.
    #[error("corrupt ring header: {0}")]
    Corrupt(&'static str),
    /// A frame of this many bytes does not fit a slot.
    #[error("frame of {len} bytes does not fit a slot of {slot} bytes")]
    TooLarge {
        /// Bytes asked for.
        len: u64,
        /// Bytes per slot.
        slot: u64,
    },
    /// A descriptor the daemon will not accept (wrong shape, unknown pixel type ...).
    #[error("bad frame description: {0}")]
    BadDescriptor(String),
    /// Commit or abort without an acquired slot, or acquire while one is held.
    #[error("{0}")]
    State(&'static str),
    /// A system call failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: &'static str,
        /// The error.
        source: io::Error,
    },
}

impl RingError {
    pub(crate) fn io(context: &'static str) -> impl FnOnce(io::Error) -> Self {
        move |source| Self::Io { context, source }
    }
}
