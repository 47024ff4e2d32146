//! A fixed set of equal-sized byte buffers, allocated and pre-faulted once, handed out as
//! [`PoolBuf`] handles and returned to the pool when the handle drops.
//!
//! The free list is a bounded crossbeam channel holding the buffers themselves: acquiring
//! moves a `Box<[u8]>` pointer out of it, dropping moves it back. Nothing is allocated after
//! [`BufferPool::new`], and a full pipeline shows up as an empty free list, which is what
//! back-pressures (or makes drop) the source.

use std::sync::Arc;
use std::time::Duration;

use crossbeam::channel::{self, Receiver, Sender};

/// Page size assumed when pre-faulting buffers.
const PAGE: usize = 4096;

struct Shared {
    free_tx: Sender<Box<[u8]>>,
    free_rx: Receiver<Box<[u8]>>,
    buf_size: usize,
    count: usize,
}

/// A pool of `count` buffers of `buf_size` bytes each. Cloning the pool clones a handle to
/// the same buffers.
#[derive(Clone)]
pub struct BufferPool {
    shared: Arc<Shared>,
}

impl BufferPool {
    /// Allocates `count` buffers of `buf_size` bytes and touches every page so the first frames
    /// do not pay for page faults.
    pub fn new(count: usize, buf_size: usize) -> Self {
        Self::make(count, buf_size, true)
    }

    /// Allocates `count` buffers of `buf_size` bytes without touching them: a page is mapped
    /// when first written. For buffers sized for a worst case that is rarely filled (an
    /// encoded image can be as large as a raw one, and is usually a tenth of it).
    pub fn lazy(count: usize, buf_size: usize) -> Self {
        Self::make(count, buf_size, false)
    }

    fn make(count: usize, buf_size: usize, touch: bool) -> Self {
        let (free_tx, free_rx) = channel::bounded(count);
        for _ in 0..count {
            let mut buf = vec![0u8; buf_size].into_boxed_slice();
            if touch {
                prefault(&mut buf);
            }
            // Cannot fail: the channel holds exactly `count` buffers and we own the receiver.
            let _ = free_tx.send(buf);
        }
        Self {
            shared: Arc::new(Shared {
                free_tx,
                free_rx,
                buf_size,
                count,
            }),
        }
    }

    /// Waits until a buffer is free and returns it, empty (length 0).
    pub fn acquire(&self) -> PoolBuf {
        // The pool holds its own sender, so the channel never disconnects while `self` lives.
        let buf = match self.shared.free_rx.recv() {
            Ok(buf) => buf,
            Err(_) => unreachable_disconnected(),
        };
        self.wrap(buf)
    }

    /// Returns a free buffer, or `None` at once if all are in use.
    pub fn try_acquire(&self) -> Option<PoolBuf> {
        self.shared.free_rx.try_recv().ok().map(|b| self.wrap(b))
    }

    /// Waits at most `timeout` for a free buffer.
    pub fn acquire_timeout(&self, timeout: Duration) -> Option<PoolBuf> {
        self.shared
            .free_rx
            .recv_timeout(timeout)
            .ok()
            .map(|b| self.wrap(b))
    }

    /// Size of every buffer, in bytes.
    pub fn buf_size(&self) -> usize {
        self.shared.buf_size
    }

    /// Number of buffers in the pool.
    pub fn count(&self) -> usize {
        self.shared.count
    }

    /// Number of buffers currently free.
    pub fn free(&self) -> usize {
        self.shared.free_rx.len()
    }

    fn wrap(&self, buf: Box<[u8]>) -> PoolBuf {
        PoolBuf {
            buf: Some(buf),
            len: 0,
            home: Arc::clone(&self.shared),
        }
    }
}

#[cold]
fn unreachable_disconnected() -> ! {
    // The pool owns a sender for the lifetime of `Shared`; recv cannot see a disconnect.
    unreachable!("buffer pool channel disconnected while the pool is alive")
}

/// Writes one byte per page so the kernel maps the buffer now rather than on first use.
fn prefault(buf: &mut [u8]) {
    for i in (0..buf.len()).step_by(PAGE) {
        // SAFETY: `i < buf.len()`, so the pointer is in bounds and properly aligned for u8.
        // A volatile write keeps the compiler from eliding the store into zeroed memory.
        unsafe { std::ptr::write_volatile(buf.as_mut_ptr().add(i), 0) };
    }
}

/// One buffer of a [`BufferPool`], with a length of valid bytes. Dropping it returns the
/// buffer to its pool.
pub struct PoolBuf {
    /// Always `Some` until drop takes it.
    buf: Option<Box<[u8]>>,
    len: usize,
    home: Arc<Shared>,
}

impl PoolBuf {
    /// The valid bytes.
    pub fn as_slice(&self) -> &[u8] {
        match &self.buf {
            Some(b) => &b[..self.len],
            None => &[],
        }
    }

    /// The whole buffer, for a producer to fill before [`PoolBuf::set_len`].
    pub fn spare_mut(&mut self) -> &mut [u8] {
        match &mut self.buf {
            Some(b) => b,
            None => &mut [],
        }
    }

    /// Marks the first `len` bytes valid. `len` is clamped to the buffer's capacity.
    pub fn set_len(&mut self, len: usize) {
        self.len = len.min(self.capacity());
    }

    /// Copies `src` into the buffer and sets the length; returns false (and copies nothing)
    /// if `src` does not fit.
    pub fn fill_from(&mut self, src: &[u8]) -> bool {
        let Some(dst) = self.spare_mut().get_mut(..src.len()) else {
            return false;
        };
        dst.copy_from_slice(src);
        self.len = src.len();
        true
    }

    /// Number of valid bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when no bytes are valid.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Capacity of the underlying buffer.
    pub fn capacity(&self) -> usize {
        self.buf.as_ref().map_or(0, |b| b.len())
    }
}

impl Drop for PoolBuf {
    fn drop(&mut self) {
        if let Some(buf) = self.buf.take() {
            // Cannot be full (the channel's capacity is the number of buffers) and cannot be
            // disconnected (`home` holds the receiver).
            let _ = self.home.free_tx.try_send(buf);
        }
    }
}

impl std::fmt::Debug for PoolBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PoolBuf")
            .field("len", &self.len)
            .field("capacity", &self.capacity())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_return_to_the_pool_on_drop() {
        let pool = BufferPool::new(2, 64);
        let a = pool.acquire();
        let b = pool.acquire();
        assert!(pool.try_acquire().is_none());
        assert_eq!(pool.free(), 0);
        drop(a);
        assert_eq!(pool.free(), 1);
        let c = pool.try_acquire().expect("one buffer is free again");
        drop((b, c));
        assert_eq!(pool.free(), 2);
    }

    #[test]
    fn the_same_memory_is_reused() {
        let pool = BufferPool::new(1, 64);
        let mut a = pool.acquire();
        let ptr = a.spare_mut().as_ptr();
        drop(a);
        let mut b = pool.acquire();
        assert_eq!(b.spare_mut().as_ptr(), ptr);
        assert!(b.is_empty(), "a reacquired buffer starts empty");
    }

    #[test]
    fn fill_refuses_what_does_not_fit() {
        let pool = BufferPool::new(1, 4);
        let mut a = pool.acquire();
        assert!(!a.fill_from(&[0; 5]));
        assert!(a.is_empty());
        assert!(a.fill_from(&[9; 4]));
        assert_eq!(a.as_slice(), &[9; 4]);
    }

    #[test]
    fn acquire_timeout_gives_up() {
        let pool = BufferPool::new(1, 4);
        let _held = pool.acquire();
        assert!(pool.acquire_timeout(Duration::from_millis(10)).is_none());
    }

    #[test]
    fn a_buffer_released_on_another_thread_wakes_a_waiter() {
        let pool = BufferPool::new(1, 4);
        let held = pool.acquire();
        let t = std::thread::spawn(move || drop(held));
        let again = pool.acquire_timeout(Duration::from_secs(5));
        assert!(again.is_some());
        t.join().unwrap();
    }
}
