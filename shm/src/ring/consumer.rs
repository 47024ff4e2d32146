//! [`RingConsumer`]: the daemon side of a ring. Creates the file, hands each committed
//! slot down the pipeline as a [`RingSlot`] (the frame's buffer, released when dropped),
//! and notices producers attaching, closing and dying.

use std::fs::{self, File, OpenOptions, Permissions};
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::layout::{self, Descriptor, Identity};
use super::map::RingMap;
use super::protocol::{ConsumerCursor, Releaser};
use super::sync::Ordering;
use super::{sys, RingError};
use crate::PixelType;

/// How long an empty poll spins before it sleeps on the futex, unless set otherwise.
pub const DEFAULT_SPIN: Duration = Duration::from_micros(100);
/// Longest single futex sleep: producer liveness is checked at least this often while idle.
const WAIT_SLICE: Duration = Duration::from_millis(20);

/// What the daemon asks of a new ring.
#[derive(Debug, Clone)]
pub struct RingSpec {
    /// Number of slots (a power of two, at least 2).
    pub slots: u32,
    /// Bytes per slot (rounded up to a page).
    pub slot_bytes: u64,
    /// File mode, e.g. 0o600, or 0o660 with a group.
    pub mode: u32,
    /// Group to give the file, if any.
    pub gid: Option<u32>,
    /// The frame producers must send (`None`: any self-consistent frame).
    pub frame: Option<(PixelType, [u32; 2])>,
    /// The module this ring carries.
    pub module: u32,
}

/// What [`RingConsumer::poll`] found.
#[derive(Debug)]
pub enum RingEvent {
    /// A committed frame: its slot, and the producer's description (byte length clamped
    /// to the slot).
    Frame(RingSlot, Descriptor),
    /// A producer attached (pid as it wrote it).
    ProducerAttached {
        /// Its process id.
        pid: u32,
    },
    /// The producer left and every frame it committed was delivered before this event.
    ProducerLeft {
        /// It closed cleanly (false: it died or was killed).
        clean: bool,
        /// Frames it had acquired and not committed (0 or 1).
        torn: u64,
    },
    /// Nothing happened within the timeout.
    Idle,
}

struct Shared {
    map: RingMap,
    releaser: Releaser,
}

/// The daemon's end of one ring.
pub struct RingConsumer {
    shared: Arc<Shared>,
    cursor: ConsumerCursor,
    path: PathBuf,
    inode: u64,
    generation: u32,
    attached: bool,
    replaced_stale: bool,
    spin: Duration,
}

impl RingConsumer {
    /// Creates the ring file at `path` (its directory too), replacing a stale ring that no
    /// running daemon holds. The file appears under its name only once fully initialised,
    /// and with the daemon's lock already held, so a producer never sees half a ring.
    pub fn create(path: &Path, spec: &RingSpec) -> Result<Self, RingError> {
        if spec.slots < 2 || !spec.slots.is_power_of_two() {
            return Err(RingError::Corrupt("slot count must be a power of two >= 2"));
        }
        let slot_bytes = spec.slot_bytes.max(1).div_ceil(layout::PAGE as u64) * layout::PAGE as u64;
        let dir = path.parent().unwrap_or(Path::new("."));
        fs::create_dir_all(dir).map_err(RingError::io("create ring directory"))?;
        let replaced_stale = remove_stale(path)?;

        let name = path
            .file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default();
        let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
        let _ = fs::remove_file(&tmp);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(spec.mode)
            .open(&tmp)
            .map_err(RingError::io("create ring file"))?;
        let made = init_file(file, &tmp, path, spec, slot_bytes);
        if made.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        let map = made?;
        let inode = map
            .file
            .metadata()
            .map_err(RingError::io("stat ring"))?
            .ino();
        let releaser = Releaser::new(spec.slots as usize);
        let generation = map.header().producer.generation.load(Ordering::Acquire);
        Ok(Self {
            shared: Arc::new(Shared { map, releaser }),
            cursor: ConsumerCursor::new(),
            path: path.to_owned(),
            inode,
            generation,
            attached: false,
            replaced_stale,
            spin: DEFAULT_SPIN,
        })
    }

    /// Sets how long an empty poll spins before sleeping: longer spins cost a core's time
    /// while idle and save the producer's wake-up call and the consumer's wake-up latency
    /// (tens of microseconds here: docs/BENCHMARKS.md, shared-memory ring) on every frame
    /// that arrives within the spin.
    pub fn set_spin(&mut self, spin: Duration) {
        self.spin = spin;
    }

    /// The ring file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// True when `create` replaced a ring left by a daemon that died.
    pub fn replaced_stale(&self) -> bool {
        self.replaced_stale
    }

    /// The ring's identity as written in its header.
    pub fn identity(&self) -> &Identity {
        &self.shared.map.identity
    }

    /// Frames producers tore (died between acquire and commit) so far.
    pub fn torn(&self) -> u64 {
        self.shared
            .map
            .header()
            .producer
            .torn
            .load(Ordering::Acquire)
    }

    /// Slots handed out and not yet released.
    pub fn in_flight(&self) -> u64 {
        self.cursor.next()
            - self
                .shared
                .map
                .header()
                .counters
                .tail
                .load(Ordering::Acquire)
    }

    /// The next event, waiting up to `timeout`: a frame, a producer attaching or leaving,
    /// or `Idle`. Spins for the spin time (see [`Self::set_spin`]), then sleeps on the futex in slices between which it
    /// checks whether the producer is still alive.
    pub fn poll(&mut self, timeout: Duration) -> Result<RingEvent, RingError> {
        let start = Instant::now();
        loop {
            if let Some(event) = self.next_event()? {
                return Ok(event);
            }
            let waited = start.elapsed();
            if waited >= timeout {
                return Ok(RingEvent::Idle);
            }
            if waited < self.spin {
                std::hint::spin_loop();
                continue;
            }
            let slice = (timeout - waited).min(WAIT_SLICE);
            let counters = &self.shared.map.header().counters;
            if !self.cursor.wait_available(counters, slice) {
                if let Some(event) = self.check_producer()? {
                    return Ok(event);
                }
            }
        }
    }

    /// A frame if one is committed, else an attach if the generation moved.
    fn next_event(&mut self) -> Result<Option<RingEvent>, RingError> {
        let sh = &self.shared;
        let h = sh.map.header();
        if self.cursor.available(&h.counters) {
            let n = self.cursor.next();
            let i = (n % u64::from(sh.map.identity.slot_count)) as usize;
            // SAFETY: frame n is committed (head > n, loaded with Acquire after the
            // producer's Release), so its descriptor is written and the producer does not
            // touch it again until we release n.
            let mut desc = unsafe { sh.map.descriptor(i).read() };
            // Never trust a length from shared memory with a slice: clamp to the slot.
            desc.byte_length = desc.byte_length.min(sh.map.identity.slot_bytes);
            self.cursor.advance();
            let slot = RingSlot {
                shared: Arc::clone(sh),
                n,
                len: desc.byte_length as usize,
            };
            return Ok(Some(RingEvent::Frame(slot, desc)));
        }
        let g = h.producer.generation.load(Ordering::Acquire);
        if g != self.generation {
            self.generation = g;
            self.attached = true;
            let pid = h.producer.pid.load(Ordering::Relaxed);
            return Ok(Some(RingEvent::ProducerAttached { pid }));
        }
        Ok(None)
    }

    /// With the ring empty: if the attached producer's lock is free, it left. Takes the
    /// producer lock itself (so no new producer attaches meanwhile), delivers any frame
    /// committed in between first, then reclaims a torn frame and reports the departure.
    fn check_producer(&mut self) -> Result<Option<RingEvent>, RingError> {
        if !self.attached {
            return Ok(None);
        }
        let map = &self.shared.map;
        let lock = layout::PRODUCER_LOCK_BYTE;
        if sys::is_locked_by_other(&map.file, lock).map_err(RingError::io("probe producer"))? {
            return Ok(None);
        }
        if !sys::try_lock(&map.file, lock).map_err(RingError::io("lock ring"))? {
            return Ok(None); // a new producer attached in between
        }
        let h = map.header();
        let result = if self.cursor.available(&h.counters) {
            None // deliver what it committed before reporting it gone
        } else {
            let clean = h.producer.state.load(Ordering::Acquire) == layout::PRODUCER_CLOSED;
            let torn = super::reclaim_torn(h);
            h.producer
                .state
                .store(layout::PRODUCER_NONE, Ordering::Release);
            self.attached = false;
            Some(RingEvent::ProducerLeft { clean, torn })
        };
        sys::unlock(&map.file, lock).map_err(RingError::io("unlock ring"))?;
        Ok(result)
    }
}

impl Drop for RingConsumer {
    /// Tells producers the daemon is gone (their next call returns `DaemonGone`) and
    /// removes the file's name if it is still ours. Slots still in the pipeline stay
    /// mapped until released; the lock goes with the last of them.
    fn drop(&mut self) {
        let h = self.shared.map.header();
        h.daemon_state
            .store(layout::DAEMON_CLOSED, Ordering::Release);
        h.counters.space_bell.ring();
        if fs::metadata(&self.path).is_ok_and(|m| m.ino() == self.inode) {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// One committed frame's bytes, read in place in the ring and held by the pipeline.
/// Dropping it releases the slot to the producer.
pub struct RingSlot {
    shared: Arc<Shared>,
    n: u64,
    len: usize,
}

impl RingSlot {
    /// The frame's number in the ring (commits since creation, from 0). A descriptor whose
    /// `sequence` differs is stale or foreign (a producer not using this library).
    pub fn sequence(&self) -> u64 {
        self.n
    }

    /// The frame's bytes, in the ring.
    pub fn bytes(&self) -> &[u8] {
        let map = &self.shared.map;
        let i = (self.n % u64::from(map.identity.slot_count)) as usize;
        // SAFETY: the slot lies in the mapping, which `shared` keeps alive, and `len` was
        // clamped to the slot size. The producer does not write the slot
        // until we release frame n (in Drop), after the last borrow of this slice ends.
        // A producer that breaks the protocol can change bytes under us, which corrupts
        // only its own frame's content: nothing is derived from it but the compressed copy.
        unsafe { std::slice::from_raw_parts(map.slot(i), self.len) }
    }
}

impl Drop for RingSlot {
    fn drop(&mut self) {
        let sh = &self.shared;
        sh.releaser.release(self.n, &sh.map.header().counters);
    }
}

impl std::fmt::Debug for RingSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RingSlot")
            .field("n", &self.n)
            .field("len", &self.len)
            .finish()
    }
}

/// Removes a ring file no running daemon holds; refuses one that a daemon holds.
fn remove_stale(path: &Path) -> Result<bool, RingError> {
    let file = match OpenOptions::new().read(true).write(true).open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(RingError::io("open existing ring")(e)),
    };
    if !sys::try_lock(&file, layout::DAEMON_LOCK_BYTE).map_err(RingError::io("lock ring"))? {
        return Err(RingError::InUse(path.to_owned()));
    }
    fs::remove_file(path).map_err(RingError::io("remove stale ring"))?;
    Ok(true)
}

/// Sizes, maps and initialises a new ring file, takes the daemon lock, then names it.
fn init_file(
    file: File,
    tmp: &Path,
    path: &Path,
    spec: &RingSpec,
    slot_bytes: u64,
) -> Result<RingMap, RingError> {
    // The mode passed to open is filtered by the umask; set it exactly.
    file.set_permissions(Permissions::from_mode(spec.mode))
        .map_err(RingError::io("chmod ring"))?;
    if let Some(gid) = spec.gid {
        std::os::unix::fs::fchown(&file, None, Some(gid)).map_err(RingError::io("chown ring"))?;
    }
    let (slots_offset, total) = layout::geometry(spec.slots, slot_bytes);
    sys::reserve(&file, total).map_err(RingError::io("reserve ring memory"))?;
    let (pixel, [height, width]) = spec
        .frame
        .map(|(p, s)| (layout::pixel_code(p), s))
        .unwrap_or((0, [0, 0]));
    let identity = Identity {
        magic: layout::MAGIC,
        version: layout::VERSION,
        header_bytes: layout::HEADER_BYTES as u32,
        slot_count: spec.slots,
        descriptor_bytes: layout::DESCRIPTOR_BYTES as u32,
        slot_bytes,
        slots_offset,
        total_bytes: total,
        pixel_type: pixel,
        width,
        height,
        module: spec.module,
        daemon_pid: std::process::id(),
        reserved: 0,
    };
    let map = RingMap::create(file, &identity)?;
    map.header()
        .daemon_state
        .store(layout::DAEMON_RUNNING, Ordering::Release);
    if !sys::try_lock(&map.file, layout::DAEMON_LOCK_BYTE).map_err(RingError::io("lock ring"))? {
        return Err(RingError::InUse(path.to_owned()));
    }
    fs::rename(tmp, path).map_err(RingError::io("name ring"))?;
    Ok(map)
}
