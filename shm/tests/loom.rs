//! Model check of the ring protocol with loom: every interleaving (within a preemption
//! bound) of the producer's and the daemon's atomics, with the futex emulated, so a lost
//! wake-up shows up as a deadlock and a slot written while it is read as a data race.
//! Run with `make loom` (`RUSTFLAGS="--cfg loom" cargo test -p detingest-shm --test loom`).

#![cfg(loom)]

use std::time::Duration;

use detingest_shm::ring::protocol::{ConsumerCursor, Counters, ProducerCursor, Releaser};
use loom::cell::UnsafeCell;
use loom::sync::Arc;
use loom::thread;

const SLOTS: u64 = 2;
const LONG: Duration = Duration::from_secs(3600);

/// The shared ring in miniature: counters and bells as in the file, one u64 per slot as
/// its pixels, and the daemon's releaser.
struct Ring {
    counters: Counters,
    slots: [UnsafeCell<u64>; SLOTS as usize],
    releaser: Releaser,
}

impl Ring {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            counters: Counters::default(),
            slots: [UnsafeCell::new(0), UnsafeCell::new(0)],
            releaser: Releaser::new(SLOTS as usize),
        })
    }

    fn slot(&self, n: u64) -> &UnsafeCell<u64> {
        &self.slots[(n % SLOTS) as usize]
    }
}

/// Pushes frames 1..=frames, writing each value into its slot, blocking when full.
fn produce(ring: Arc<Ring>, frames: u64) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        let mut cur = ProducerCursor::attach(&ring.counters, SLOTS);
        for v in 1..=frames {
            while !cur.wait_for_space(&ring.counters, LONG) {}
            // SAFETY: loom checks it: the slot is ours once the release of its last frame
            // is visible, and no reader may touch it concurrently.
            ring.slot(cur.next()).with_mut(|p| unsafe { *p = v });
            cur.commit(&ring.counters);
        }
    })
}

/// Waits for the next committed frame; its number in the ring.
fn await_frame(ring: &Ring, cur: &mut ConsumerCursor) -> u64 {
    while !cur.wait_available(&ring.counters, LONG) {}
    cur.next()
}

/// The value in frame `n`'s slot.
fn read(ring: &Ring, n: u64) -> u64 {
    // SAFETY: loom checks this read against the producer's writes of the slot (a data race
    // fails the model).
    ring.slot(n).with(|p| unsafe { *p })
}

/// Every interleaving with at most `LOOM_MAX_PREEMPTIONS` preemptions, 2 unless set: bound 2
/// takes 9 s here for the three tests, bound 3 (`make loom-deep`) took 159 s for the first
/// two. Each mutation of `protocol.rs` tried fails at bound 2: a Relaxed head store or tail
/// publish and a missing space bell (bound 1 already), the tail stored instead of
/// `fetch_max`, the releaser's fence left out.
fn bounded(f: impl Fn() + Sync + Send + 'static) {
    let mut b = loom::model::Builder::new();
    b.preemption_bound = b.preemption_bound.or(Some(2));
    b.check(f);
}

#[test]
fn frames_arrive_in_order_and_no_wakeup_is_lost() {
    bounded(|| {
        let ring = Ring::new();
        let producer = produce(Arc::clone(&ring), 3);
        let mut cur = ConsumerCursor::new();
        for v in 1..=3 {
            let n = await_frame(&ring, &mut cur);
            assert_eq!(read(&ring, n), v);
            cur.advance();
            ring.releaser.release(n, &ring.counters);
        }
        producer.join().unwrap();
    });
}

#[test]
fn out_of_order_releases_never_free_a_slot_still_read() {
    bounded(|| {
        let ring = Ring::new();
        let producer = produce(Arc::clone(&ring), 3);
        let mut cur = ConsumerCursor::new();
        let mut readers = Vec::new();
        // Frames 1 and 2 go to two workers that read and release them in either order;
        // the producer's frame 3 must wait for frame 1's release, not frame 2's.
        for v in 1..=2 {
            let n = await_frame(&ring, &mut cur);
            cur.advance();
            let ring = Arc::clone(&ring);
            readers.push(thread::spawn(move || {
                assert_eq!(read(&ring, n), v);
                ring.releaser.release(n, &ring.counters);
            }));
        }
        let n = await_frame(&ring, &mut cur);
        assert_eq!(read(&ring, n), 3);
        for r in readers {
            r.join().unwrap();
        }
        producer.join().unwrap();
        ring.releaser.release(n, &ring.counters);
        use loom::sync::atomic::Ordering;
        assert_eq!(ring.counters.tail.load(Ordering::SeqCst), 3);
    });
}

#[test]
fn a_release_that_finishes_last_never_moves_the_tail_back() {
    bounded(|| {
        let ring = Ring::new();
        // Frames 2 and 3 need both first frames' slots back: if the releaser that advanced
        // the tail less published last and moved it back, frame 3 would never be written.
        let producer = produce(Arc::clone(&ring), 4);
        let mut cur = ConsumerCursor::new();
        let mut readers = Vec::new();
        for _ in 0..2 {
            while !cur.wait_available(&ring.counters, LONG) {}
            let n = cur.next();
            cur.advance();
            let ring = Arc::clone(&ring);
            readers.push(thread::spawn(move || {
                ring.releaser.release(n, &ring.counters)
            }));
        }
        for v in 3..=4 {
            let n = await_frame(&ring, &mut cur);
            assert_eq!(read(&ring, n), v);
            cur.advance();
        }
        for r in readers {
            r.join().unwrap();
        }
        producer.join().unwrap();
    });
}
