//! [`Producer`]: the vendor side of a ring. Attach by path, then acquire a slot, fill it in
//! place, and commit it with its description; the C API (`ffi/`) is a thin shell over this.

use std::fs::OpenOptions;
use std::io;
use std::path::Path;
use std::time::{Duration, Instant};

use super::layout::{self, Descriptor, PRODUCER_ATTACHED, PRODUCER_CLOSED};
use super::map::RingMap;
use super::protocol::ProducerCursor;
use super::sync::Ordering;
use super::{sys, RingError};

/// How long a blocked acquire spins before it sleeps on the futex.
const SPIN: Duration = Duration::from_micros(20);
/// Attempts, 1 ms apart, to take the producer lock before an attach reports `Busy`.
const ATTACH_TRIES: u32 = 20;
/// Longest single futex sleep: the daemon's liveness is re-checked at least this often.
const WAIT_SLICE: Duration = Duration::from_millis(10);

/// The producer end of a ring. One per ring at a time (the ring refuses a second); `!Sync`,
/// one thread uses it at a time.
pub struct Producer {
    map: RingMap,
    cursor: ProducerCursor,
    held: Option<u64>,
}

impl Producer {
    /// Attaches to the ring file at `path`, which a running daemon created.
    ///
    /// A frame that a previous producer acquired but never committed (it died) is counted
    /// as torn here, and the next commit takes its slot.
    pub fn attach(path: &Path) -> Result<Self, RingError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| match e.kind() {
                io::ErrorKind::NotFound => RingError::NoRing(path.to_owned()),
                _ => RingError::Io {
                    context: "open ring",
                    source: e,
                },
            })?;
        let map = RingMap::open(file)?;
        daemon_alive(&map)?;
        let h = map.header();
        // The daemon holds the producer lock briefly (a swap and two stores) when it reclaims after
        // a dead producer: try for a while before calling the ring busy.
        let mut tries = 0;
        while !sys::try_lock(&map.file, layout::PRODUCER_LOCK_BYTE)
            .map_err(RingError::io("lock ring"))?
        {
            tries += 1;
            if tries == ATTACH_TRIES {
                return Err(RingError::Busy(h.producer.pid.load(Ordering::Relaxed)));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        // We hold the producer lock: no other producer, and the daemon reclaims only
        // under the same lock, so the swap below is ours alone.
        super::reclaim_torn(h);
        h.producer.pid.store(std::process::id(), Ordering::Relaxed);
        h.producer.generation.fetch_add(1, Ordering::AcqRel);
        h.producer.state.store(PRODUCER_ATTACHED, Ordering::Release);
        Ok(Self {
            cursor: ProducerCursor::attach(&h.counters, u64::from(map.identity.slot_count)),
            map,
            held: None,
        })
    }

    /// Bytes per slot: the largest frame this ring takes.
    pub fn slot_bytes(&self) -> u64 {
        self.map.identity.slot_bytes
    }

    /// What the daemon declared about the ring (slot size, expected frame shape ...).
    pub fn identity(&self) -> &layout::Identity {
        &self.map.identity
    }

    /// Acquires the next slot for a frame of `len` bytes, waiting up to `timeout` for the
    /// daemon to free one (a zero timeout does not wait). The slot is written in place.
    pub fn acquire(&mut self, len: u64, timeout: Duration) -> Result<&mut [u8], RingError> {
        if self.held.is_some() {
            return Err(RingError::State(
                "a slot is already acquired: commit or abort it",
            ));
        }
        let slot = self.map.identity.slot_bytes;
        if len > slot {
            return Err(RingError::TooLarge { len, slot });
        }
        // Every acquire probes the daemon's lock (one fcntl; its cost is inside the ring's
        // measured transport rate, docs/BENCHMARKS.md), so the first call after the daemon
        // died says so.
        daemon_alive(&self.map)?;
        if !self.cursor.has_space(&self.map.header().counters) {
            self.wait_for_space(timeout)?;
        }
        let n = self.cursor.next();
        self.map
            .header()
            .producer
            .claim
            .store(n + 1, Ordering::Release);
        self.held = Some(n);
        let i = (n % u64::from(self.map.identity.slot_count)) as usize;
        // SAFETY: slot `i` lies in the mapping; `has_space` established that the daemon
        // released the frame that used it before (tail > n - slots, loaded with Acquire),
        // so it reads it no more, and only this producer (holding the producer lock) writes
        // it until it commits. The borrow of `self` keeps the slice from outliving the map.
        Ok(unsafe { std::slice::from_raw_parts_mut(self.map.slot(i), len as usize) })
    }

    /// Spins briefly, then sleeps in slices, re-checking the daemon's lock between them.
    fn wait_for_space(&mut self, timeout: Duration) -> Result<(), RingError> {
        let start = Instant::now();
        while !self.cursor.has_space(&self.map.header().counters) {
            let waited = start.elapsed();
            if waited >= timeout {
                return Err(RingError::Timeout);
            }
            if waited < SPIN {
                std::hint::spin_loop();
                continue;
            }
            daemon_alive(&self.map)?;
            let slice = (timeout - waited).min(WAIT_SLICE);
            self.cursor
                .wait_for_space(&self.map.header().counters, slice);
        }
        Ok(())
    }

    /// Commits the acquired slot with its description (`sequence` is filled in here).
    /// The description must be self-consistent (byte length = width x height x pixel size)
    /// and match the frame the daemon declared, if it declared one.
    pub fn commit(&mut self, desc: &Descriptor) -> Result<(), RingError> {
        let Some(n) = self.held else {
            return Err(RingError::State("commit without an acquired slot"));
        };
        self.check_descriptor(desc)?;
        if self.map.header().daemon_state.load(Ordering::Acquire) != layout::DAEMON_RUNNING {
            self.abort();
            return Err(RingError::DaemonGone);
        }
        let i = (n % u64::from(self.map.identity.slot_count)) as usize;
        let d = Descriptor {
            sequence: n,
            ..*desc
        };
        // SAFETY: descriptor `i` belongs to the slot we hold (see `acquire`); the daemon
        // reads it only after the Release store of head in `commit` below.
        unsafe { self.map.descriptor(i).write(d) };
        let h = self.map.header();
        self.cursor.commit(&h.counters);
        // After head: if we die between the two stores, the claim (n + 1 <= head) is
        // recognisably a committed frame, not a torn one.
        h.producer.claim.store(0, Ordering::Release);
        self.held = None;
        Ok(())
    }

    /// Gives the acquired slot back uncommitted (nothing is sent); false if none was held.
    pub fn abort(&mut self) -> bool {
        let held = self.held.take().is_some();
        if held {
            self.map.header().producer.claim.store(0, Ordering::Release);
        }
        held
    }

    /// Detaches cleanly (also what dropping does): an acquired slot is aborted, the daemon
    /// is told the producer closed, and another producer may attach.
    pub fn close(self) {}

    fn check_descriptor(&self, d: &Descriptor) -> Result<(), RingError> {
        let bad = |s: String| Err(RingError::BadDescriptor(s));
        let id = &self.map.identity;
        let Some(pixel) = layout::pixel_from_code(d.pixel_type) else {
            return bad(format!("unknown pixel type code {}", d.pixel_type));
        };
        if d.flags != 0 || d.reserved != [0; 3] {
            return bad("flags and reserved fields must be 0 in layout version 1".into());
        }
        if d.byte_length > id.slot_bytes {
            return Err(RingError::TooLarge {
                len: d.byte_length,
                slot: id.slot_bytes,
            });
        }
        let expected = u64::from(d.width) * u64::from(d.height) * pixel.size() as u64;
        if d.byte_length != expected || expected == 0 {
            return bad(format!(
                "byte_length {} but {}x{} {} pixels make {expected}",
                d.byte_length,
                d.width,
                d.height,
                pixel.name()
            ));
        }
        if d.module != id.module {
            return bad(format!(
                "this ring carries module {}, not {}",
                id.module, d.module
            ));
        }
        let fixed = |want: u32, got: u32| want == 0 || want == got;
        if !fixed(id.pixel_type, d.pixel_type)
            || !fixed(id.width, d.width)
            || !fixed(id.height, d.height)
        {
            return bad(format!(
                "the daemon expects {}x{} pixels of type code {}, got {}x{} of {}",
                id.width, id.height, id.pixel_type, d.width, d.height, d.pixel_type
            ));
        }
        Ok(())
    }
}

/// `DaemonGone` unless the daemon runs and holds its lock (one system call).
fn daemon_alive(map: &RingMap) -> Result<(), RingError> {
    if map.header().daemon_state.load(Ordering::Acquire) != layout::DAEMON_RUNNING {
        return Err(RingError::DaemonGone);
    }
    let locked = sys::is_locked_by_other(&map.file, layout::DAEMON_LOCK_BYTE)
        .map_err(RingError::io("probe daemon lock"))?;
    if locked {
        Ok(())
    } else {
        Err(RingError::DaemonGone)
    }
}

impl Drop for Producer {
    fn drop(&mut self) {
        // Only an attached producer exists: attach builds one after taking the lock.
        self.abort();
        let h = self.map.header();
        if h.producer.state.load(Ordering::Relaxed) == PRODUCER_ATTACHED {
            h.producer.state.store(PRODUCER_CLOSED, Ordering::Release);
        }
        h.counters.data_bell.ring();
        // Closing the file drops the lock too; unlocking first lets the daemon see the
        // close before our mapping is gone.
        let _ = sys::unlock(&self.map.file, layout::PRODUCER_LOCK_BYTE);
    }
}
