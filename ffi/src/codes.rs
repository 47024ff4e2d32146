//! Return codes: 0 is success, positive codes mean "try again" (the ring is full), negative
//! codes mean the call failed for a reason retrying will not fix. Codes are never reused.

use std::ffi::{c_char, c_int};

use detingest_shm::ring::RingError;

/// Success.
pub const DETINGEST_OK: c_int = 0;
/// `detingest_acquire` with a zero timeout found no free slot: the daemon is behind.
pub const DETINGEST_FULL: c_int = 1;
/// No slot became free within the timeout.
pub const DETINGEST_TIMEOUT: c_int = 2;
/// The daemon that created the ring died or shut down; close and reopen when it is back.
pub const DETINGEST_E_DAEMON_GONE: c_int = -1;
/// A NULL pointer, a non-UTF-8 name, or a frame description the ring does not accept.
pub const DETINGEST_E_BAD_ARGUMENT: c_int = -2;
/// The frame is larger than a slot of this ring.
pub const DETINGEST_E_TOO_LARGE: c_int = -3;
/// No ring of that name: the daemon is not running or serves another name.
pub const DETINGEST_E_NO_RING: c_int = -4;
/// The file is not a detingest ring.
pub const DETINGEST_E_BAD_MAGIC: c_int = -5;
/// The ring was made by a daemon with another layout version.
pub const DETINGEST_E_BAD_VERSION: c_int = -6;
/// Another producer is attached to this ring.
pub const DETINGEST_E_BUSY: c_int = -7;
/// Call out of order: commit or abort without an acquired slot, or acquire while one is held.
pub const DETINGEST_E_STATE: c_int = -8;
/// A system call failed (see `detingest_last_error`).
pub const DETINGEST_E_SYSTEM: c_int = -9;
/// A bug in libdetingest (a caught panic); the handle should be closed.
pub const DETINGEST_E_INTERNAL: c_int = -10;

/// The code of a ring error. `Timeout` becomes `FULL` when the caller would not wait.
pub(crate) fn code_of(e: &RingError, waited: bool) -> c_int {
    match e {
        RingError::Timeout if waited => DETINGEST_TIMEOUT,
        RingError::Timeout => DETINGEST_FULL,
        RingError::DaemonGone => DETINGEST_E_DAEMON_GONE,
        RingError::NoRing(_) => DETINGEST_E_NO_RING,
        RingError::Busy(_) | RingError::InUse(_) => DETINGEST_E_BUSY,
        RingError::BadMagic(_) => DETINGEST_E_BAD_MAGIC,
        RingError::BadVersion { .. } | RingError::Corrupt(_) => DETINGEST_E_BAD_VERSION,
        RingError::TooLarge { .. } => DETINGEST_E_TOO_LARGE,
        RingError::BadDescriptor(_) => DETINGEST_E_BAD_ARGUMENT,
        RingError::State(_) => DETINGEST_E_STATE,
        RingError::Io { .. } => DETINGEST_E_SYSTEM,
        _ => DETINGEST_E_INTERNAL,
    }
}

/// A static, NUL-terminated description of `code`.
pub(crate) fn describe(code: c_int) -> &'static [u8] {
    match code {
        DETINGEST_OK => b"success\0",
        DETINGEST_FULL => b"ring full\0",
        DETINGEST_TIMEOUT => b"timed out waiting for a free slot\0",
        DETINGEST_E_DAEMON_GONE => b"the daemon is gone\0",
        DETINGEST_E_BAD_ARGUMENT => b"bad argument\0",
        DETINGEST_E_TOO_LARGE => b"frame larger than a ring slot\0",
        DETINGEST_E_NO_RING => b"no such ring\0",
        DETINGEST_E_BAD_MAGIC => b"not a detingest ring\0",
        DETINGEST_E_BAD_VERSION => b"unsupported ring layout version\0",
        DETINGEST_E_BUSY => b"another producer is attached\0",
        DETINGEST_E_STATE => b"call out of order\0",
        DETINGEST_E_SYSTEM => b"system call failed\0",
        DETINGEST_E_INTERNAL => b"internal error in libdetingest\0",
        _ => b"unknown detingest code\0",
    }
}

/// `describe` as a C string pointer.
pub(crate) fn describe_ptr(code: c_int) -> *const c_char {
    describe(code).as_ptr().cast()
}
