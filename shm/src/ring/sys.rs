//! The few system calls the ring needs beyond mapping, each returning `io::Result`:
//! open-file-description (OFD) byte locks, which the kernel drops when the holder dies,
//! and a monotonic clock read.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

/// Who holds a lock on one byte of the ring file.
fn lock_request(kind: libc::c_short, byte: i64) -> libc::flock {
    // SAFETY: `flock` is plain integers; all-zero is a valid value that we then fill in.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = kind;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = byte;
    fl.l_len = 1;
    fl
}

fn fcntl_lock(file: &File, cmd: libc::c_int, fl: &mut libc::flock) -> io::Result<()> {
    // SAFETY: a valid descriptor, an OFD lock command and a pointer to a live `flock`.
    let r = unsafe { libc::fcntl(file.as_raw_fd(), cmd, fl as *mut libc::flock) };
    if r == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Takes an exclusive lock on `byte` without waiting: `Ok(false)` if another open file
/// description holds it. The lock lives as long as this file description (this process,
/// unless the descriptor is inherited) and the kernel releases it when the process dies.
pub fn try_lock(file: &File, byte: i64) -> io::Result<bool> {
    let mut fl = lock_request(libc::F_WRLCK as libc::c_short, byte);
    match fcntl_lock(file, libc::F_OFD_SETLK, &mut fl) {
        Ok(()) => Ok(true),
        Err(e) if matches!(e.raw_os_error(), Some(libc::EAGAIN | libc::EACCES)) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Releases a lock taken with [`try_lock`].
pub fn unlock(file: &File, byte: i64) -> io::Result<()> {
    let mut fl = lock_request(libc::F_UNLCK as libc::c_short, byte);
    fcntl_lock(file, libc::F_OFD_SETLK, &mut fl)
}

/// True if some other open file description holds a lock on `byte`: the liveness probe
/// (one system call, changes nothing).
pub fn is_locked_by_other(file: &File, byte: i64) -> io::Result<bool> {
    let mut fl = lock_request(libc::F_WRLCK as libc::c_short, byte);
    fcntl_lock(file, libc::F_OFD_GETLK, &mut fl)?;
    Ok(fl.l_type != libc::F_UNLCK as libc::c_short)
}

/// Gives `file` `len` bytes of real storage now: on tmpfs a ring that does not fit fails
/// here with ENOSPC instead of killing a writer with SIGBUS later.
pub fn reserve(file: &File, len: u64) -> io::Result<()> {
    let len =
        libc::off_t::try_from(len).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: a valid descriptor and a byte range; posix_fallocate returns an errno value.
    match unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, len) } {
        0 => Ok(()),
        e => Err(io::Error::from_raw_os_error(e)),
    }
}

/// CLOCK_MONOTONIC in nanoseconds: the same clock in every process of the machine.
pub fn monotonic_ns() -> u64 {
    // SAFETY: all-zero is a valid timespec, which clock_gettime overwrites.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: a valid clock id and a pointer to a live timespec; cannot fail for this clock.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}
