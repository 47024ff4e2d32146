//! The ring's single-producer single-consumer protocol over two monotonic counters, as
//! both sides run it: the producer's [`ProducerCursor`], the daemon's [`ConsumerCursor`]
//! and its [`Releaser`], which lets frames be released out of order.
//!
//! Counters count frames since the ring was created and never wrap in practice (u64 at
//! 10^7 frames/s lasts 58,000 years); slot `i` of frame `n` is `n % slots`.
//! - `head`: frames committed. Written only by the producer (Release, publishing the slot
//!   and its descriptor), read by the consumer (Acquire).
//! - `tail`: frames released. Written only by the daemon (Release, after the codec's last
//!   read of the slot), read by the producer (Acquire) before it writes the slot again.
//!
//! Each side caches the other's counter and reloads it only when the cache says the ring
//! is full (producer) or empty (consumer), as in rtrb and the Lamport ring it follows.

use std::time::Duration;

use super::sync::{fence, AtomicU64, Bell, Ordering};

/// The counters and bells both sides share, each on its own 128-byte line (two cache lines:
/// adjacent-line prefetch pairs them on x86, see crossbeam's `CachePadded`).
#[cfg_attr(not(loom), repr(C))]
#[derive(Default)]
pub struct Counters {
    /// Frames committed by the producer.
    pub head: Padded<AtomicU64>,
    /// Frames released by the daemon.
    pub tail: Padded<AtomicU64>,
    /// Rung by the producer after a commit: the daemon sleeps on it when the ring is empty.
    pub data_bell: Padded<Bell>,
    /// Rung by the daemon after a release: the producer sleeps on it when the ring is full.
    pub space_bell: Padded<Bell>,
}

/// A value alone on its 128-byte line.
#[cfg_attr(not(loom), repr(C, align(128)))]
#[derive(Default)]
pub struct Padded<T>(pub T);

impl<T> std::ops::Deref for Padded<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

/// The producer's view: the next frame it will commit and its cached copy of `tail`.
#[derive(Debug)]
pub struct ProducerCursor {
    head: u64,
    tail_cache: u64,
    slots: u64,
}

impl ProducerCursor {
    /// Resumes at the ring's current counters (a producer attaching after another).
    pub fn attach(c: &Counters, slots: u64) -> Self {
        Self {
            head: c.head.load(Ordering::Acquire),
            tail_cache: c.tail.load(Ordering::Acquire),
            slots,
        }
    }

    /// The frame number-in-ring of the next commit, which selects its slot.
    pub fn next(&self) -> u64 {
        self.head
    }

    /// True when the next slot is free: every frame that used it before was released.
    pub fn has_space(&mut self, c: &Counters) -> bool {
        if self.head - self.tail_cache < self.slots {
            return true;
        }
        // Acquire: the daemon's reads of the slot happen before our writes to it.
        self.tail_cache = c.tail.load(Ordering::Acquire);
        debug_assert!(self.tail_cache <= self.head);
        self.head - self.tail_cache < self.slots
    }

    /// Waits up to `timeout` for space, sleeping on the space bell.
    pub fn wait_for_space(&mut self, c: &Counters, timeout: Duration) -> bool {
        if self.has_space(c) {
            return true;
        }
        let (head, slots) = (self.head, self.slots);
        let ready = c
            .space_bell
            .wait(timeout, || head - c.tail.load(Ordering::Acquire) < slots);
        ready && self.has_space(c)
    }

    /// Publishes the next frame (its slot and descriptor written) and wakes the daemon.
    pub fn commit(&mut self, c: &Counters) {
        debug_assert!(
            self.head - self.tail_cache < self.slots,
            "commit without space"
        );
        self.head += 1;
        // Release: the slot's pixels and descriptor are visible before the new head.
        c.head.store(self.head, Ordering::Release);
        c.data_bell.ring();
    }
}

/// The daemon's view: the next frame to hand down the pipeline and its cached `head`.
#[derive(Debug, Default)]
pub struct ConsumerCursor {
    next: u64,
    head_cache: u64,
}

impl ConsumerCursor {
    /// Starts at frame 0 of a new ring.
    pub fn new() -> Self {
        Self::default()
    }

    /// True when frame [`Self::next`] is committed.
    pub fn available(&mut self, c: &Counters) -> bool {
        if self.next < self.head_cache {
            return true;
        }
        // Acquire: pairs with the producer's Release in `commit`.
        self.head_cache = c.head.load(Ordering::Acquire);
        self.next < self.head_cache
    }

    /// Waits up to `timeout` for a commit, sleeping on the data bell.
    pub fn wait_available(&mut self, c: &Counters, timeout: Duration) -> bool {
        if self.available(c) {
            return true;
        }
        let next = self.next;
        let ready = c
            .data_bell
            .wait(timeout, || next < c.head.load(Ordering::Acquire));
        ready && self.available(c)
    }

    /// The next committed frame's number-in-ring.
    pub fn next(&self) -> u64 {
        self.next
    }

    /// Moves past the frame [`Self::next`] (handed on; released later by its holder).
    pub fn advance(&mut self) {
        debug_assert!(self.next < self.head_cache);
        self.next += 1;
    }
}

/// Releases of frames the daemon handed down the pipeline, in any order; `tail` advances
/// over the longest released prefix.
///
/// Each slot's mark holds `n + 1` once frame `n` in it was released, so marks never need
/// resetting (the frame number tags the lap). Every releaser marks its frame, then
/// advances the local tail over marked frames by compare-and-swap; a SeqCst fence between
/// the mark's store and the loads makes of two concurrent releasers at least one see the
/// other's mark (otherwise both could stop short and strand the tail). The shared tail is
/// published with `fetch_max`, since two advancers may finish in either order.
pub struct Releaser {
    marks: Box<[AtomicU64]>,
    tail: AtomicU64,
}

impl Releaser {
    /// For a ring of `slots` slots whose tail is 0.
    pub fn new(slots: usize) -> Self {
        Self {
            marks: (0..slots).map(|_| AtomicU64::new(0)).collect(),
            tail: AtomicU64::new(0),
        }
    }

    /// Frame `n` is done with; publishes the new tail and wakes the producer if it moved.
    pub fn release(&self, n: u64, c: &Counters) {
        let slots = self.marks.len() as u64;
        self.marks[(n % slots) as usize].store(n + 1, Ordering::SeqCst);
        // The store above before the loads below, for every releaser (store-load order needs
        // a full fence; with it loom checks the argument too, as it treats a SeqCst access
        // alone like AcqRel).
        fence(Ordering::SeqCst);
        let mut advanced = None;
        loop {
            let t = self.tail.load(Ordering::SeqCst);
            if self.marks[(t % slots) as usize].load(Ordering::SeqCst) != t + 1 {
                break;
            }
            if self
                .tail
                .compare_exchange(t, t + 1, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
            {
                advanced = Some(t + 1);
            }
        }
        if let Some(t) = advanced {
            // Release: our (and, through the SeqCst chain, earlier releasers') reads of the
            // slots happen before the producer, which loads tail with Acquire, rewrites them.
            c.tail.fetch_max(t, Ordering::Release);
            c.space_bell.ring();
        }
    }
}
