//! The atomics the ring is built from, and [`Bell`]: an event count that lets one process
//! sleep on a shared futex until another makes progress.
//!
//! Under `--cfg loom` the atomics are loom's and the futex is emulated with a loom mutex
//! and condition variable, so `tests/loom.rs` model-checks the same protocol code the
//! daemon and the producers run (the crossbeam way of swapping atomics by cfg).

#[cfg(not(loom))]
pub(crate) use std::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};

#[cfg(loom)]
pub(crate) use loom::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};

use std::time::Duration;

/// An event count in shared memory: the notifier bumps `seq` and wakes sleepers only when
/// `waiters` says someone may sleep, so the fast path costs one fence and one load.
///
/// Protocol (Dekker-style, hence SeqCst on both sides):
/// - waiter: load `seq`; increment `waiters`; fence; re-check its condition; if still
///   false, `FUTEX_WAIT(seq, loaded value)`; decrement `waiters`.
/// - notifier: make progress visible (Release store of the counter); fence; if `waiters`
///   is non-zero, increment `seq` and `FUTEX_WAKE`.
///
/// Either the notifier sees the waiter registered, or the waiter's re-check sees the
/// progress; and a notifier that bumps `seq` after the waiter loaded it makes the futex
/// wait return at once (the kernel compares the value under its own lock).
#[cfg_attr(not(loom), repr(C))]
#[derive(Default)]
pub struct Bell {
    /// Wake-up sequence: the futex word. Any value; wraps.
    seq: AtomicU32,
    /// Threads (of any process) between registering and leaving a wait. 0 or 1 in a
    /// single-producer single-consumer ring, bounded by the number of waiters in general.
    waiters: AtomicU32,
    #[cfg(loom)]
    emulated: (loom::sync::Mutex<()>, loom::sync::Condvar),
}

impl Bell {
    /// Wakes whoever waits, after the caller made its progress visible.
    pub fn ring(&self) {
        fence(Ordering::SeqCst);
        if self.waiters.load(Ordering::SeqCst) != 0 {
            self.seq.fetch_add(1, Ordering::SeqCst);
            self.wake_all();
        }
    }

    /// Sleeps until `ready()` holds, the bell rings, or `timeout` passes; returns
    /// `ready()`. May return early (a ring meant for an earlier state, a signal): callers
    /// loop with their own deadline.
    pub fn wait(&self, timeout: Duration, ready: impl Fn() -> bool) -> bool {
        let seq = self.seq.load(Ordering::SeqCst);
        self.waiters.fetch_add(1, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        if !ready() {
            self.sleep(seq, timeout);
        }
        self.waiters.fetch_sub(1, Ordering::SeqCst);
        ready()
    }

    #[cfg(not(loom))]
    fn sleep(&self, seq: u32, timeout: Duration) {
        let ts = libc::timespec {
            tv_sec: timeout.as_secs().min(i64::MAX as u64) as libc::time_t,
            tv_nsec: libc::c_long::from(timeout.subsec_nanos() as i32),
        };
        // SAFETY: `seq` is a live, 4-byte aligned u32 (in the shared mapping, which outlives
        // `self`); FUTEX_WAIT without FUTEX_PRIVATE_FLAG keys on the physical page, so other
        // processes mapping the file wake us. The kernel only reads the word and the timespec.
        // EAGAIN (value changed), EINTR and ETIMEDOUT all mean "re-check", so the result is
        // deliberately ignored.
        unsafe {
            libc::syscall(
                libc::SYS_futex,
                self.seq.as_ptr(),
                libc::FUTEX_WAIT,
                seq,
                &ts as *const libc::timespec,
            );
        }
    }

    #[cfg(not(loom))]
    fn wake_all(&self) {
        // SAFETY: as in `sleep`; FUTEX_WAKE only uses the address as a key.
        unsafe {
            libc::syscall(
                libc::SYS_futex,
                self.seq.as_ptr(),
                libc::FUTEX_WAKE,
                i32::MAX,
            );
        }
    }

    // The emulation keeps the futex's one guarantee: the value check and going to sleep
    // are atomic with respect to a wake. Loom has no time, so a lost wake-up shows up as
    // a deadlock that loom reports, where the real code would stall until its timeout.
    #[cfg(loom)]
    fn sleep(&self, seq: u32, _timeout: Duration) {
        let (lock, cv) = &self.emulated;
        let guard = lock.lock().unwrap();
        if self.seq.load(Ordering::SeqCst) == seq {
            drop(cv.wait(guard).unwrap());
        }
    }

    #[cfg(loom)]
    fn wake_all(&self) {
        let (lock, cv) = &self.emulated;
        let _guard = lock.lock().unwrap();
        cv.notify_all();
    }
}
