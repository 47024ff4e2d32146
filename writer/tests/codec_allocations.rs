//! The codecs allocate nothing per chunk (the hot path's rule): a counting allocator around
//! encoding a frame into a buffer made beforehand. (lz4_flex built with its `alloc` feature
//! takes a fresh 8 KiB hash table from the heap for every 8 KiB block.)

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use detingest_writer::Codec;

struct Counting;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded unchanged to the system allocator; only a counter is added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller's layout is passed on as given.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: as above.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from this allocator, which is the system's, with `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn encoding_a_frame_allocates_nothing() {
    // A sparse 512 x 1024 u16 frame, as a detector sends at high rates.
    let mut x = 88172645463325252u64;
    let frame: Vec<u8> = (0..512 * 1024)
        .flat_map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let photons: u16 = if x % 10 == 0 {
                (x >> 20) as u16 % 4 + 1
            } else {
                0
            };
            photons.to_le_bytes()
        })
        .collect();
    for codec in [Codec::BitshuffleLz4, Codec::Lz4] {
        let mut out = vec![0u8; codec.max_compressed_len(frame.len(), 2)];
        codec.compress_into(&frame, 2, &mut out).unwrap(); // any first-use setup
        let before = ALLOCATIONS.load(Ordering::Relaxed);
        let n = codec.compress_into(&frame, 2, &mut out).unwrap();
        let made = ALLOCATIONS.load(Ordering::Relaxed) - before;
        assert_eq!(
            made,
            0,
            "{}: {made} allocations for one frame",
            codec.name()
        );
        assert!(n < frame.len() / 4, "{}: {n} bytes", codec.name());
    }
}
