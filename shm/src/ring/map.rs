//! [`RingMap`]: a ring file mapped shared, with typed access to its header, descriptors
//! and slots. Validates the identity of a file it did not create.

use std::fs::File;

use memmap2::{MmapOptions, MmapRaw};

use super::layout::{self, Descriptor, Header, Identity};
use super::RingError;

/// A mapped ring file. The mapping stays valid while this lives, whatever other
/// processes do to the file's name.
pub struct RingMap {
    /// The open ring file: its open file description carries this process's lock.
    pub file: File,
    map: MmapRaw,
    /// A copy of the header's identity (immutable after creation).
    pub identity: Identity,
}

// SAFETY: the mapping is shared memory accessed only through atomics (header) or through
// raw pointers whose use the ring protocol serialises (descriptors, slots).
unsafe impl Send for RingMap {}
// SAFETY: as above; `&RingMap` hands out `&Header` (atomics) and raw pointers only.
unsafe impl Sync for RingMap {}

impl RingMap {
    /// Maps `len` bytes of `file`, faulting them in now if `populate`.
    fn map(file: File, len: u64, populate: bool) -> Result<Self, RingError> {
        let mut opts = MmapOptions::new();
        opts.len(len as usize);
        if populate {
            opts.populate();
        }
        let map = opts.map_raw(&file).map_err(RingError::io("mmap ring"))?;
        // SAFETY: the mapping is at least HEADER_BYTES long (callers check the file size)
        // and page aligned; Identity is plain integers, valid for any bytes.
        let identity = unsafe { std::ptr::read(map.as_ptr().cast::<Identity>()) };
        Ok(Self {
            file,
            map,
            identity,
        })
    }

    /// Maps a new, zero-filled ring file of `identity.total_bytes` bytes (faulting every
    /// page in now, so the first frames do not) and writes its identity.
    pub fn create(file: File, identity: &Identity) -> Result<Self, RingError> {
        let mut m = Self::map(file, identity.total_bytes, true)?;
        // SAFETY: offset 0 of our own mapping, aligned, not yet visible to any other
        // process (the file has no public name yet).
        unsafe { std::ptr::write(m.map.as_mut_ptr().cast::<Identity>(), *identity) };
        m.identity = *identity;
        Ok(m)
    }

    /// Maps an existing ring file and checks that it is one this library can use.
    pub fn open(file: File) -> Result<Self, RingError> {
        let len = file.metadata().map_err(RingError::io("stat ring"))?.len();
        if len < layout::HEADER_BYTES as u64 {
            return Err(RingError::Corrupt("file shorter than the header"));
        }
        // Populated: the producer's page tables are built now, not on its first frames.
        let m = Self::map(file, len, true)?;
        let id = &m.identity;
        if id.magic != layout::MAGIC {
            return Err(RingError::BadMagic(id.magic));
        }
        if id.version != layout::VERSION {
            return Err(RingError::BadVersion {
                found: id.version,
                expected: layout::VERSION,
            });
        }
        let (slots_offset, total) = layout::geometry(id.slot_count, id.slot_bytes);
        if !id.slot_count.is_power_of_two()
            || id.header_bytes as usize != layout::HEADER_BYTES
            || id.descriptor_bytes as usize != layout::DESCRIPTOR_BYTES
            || id.slot_bytes == 0
            || id.slot_bytes % layout::PAGE as u64 != 0
            || id.slots_offset != slots_offset
            || id.total_bytes != total
            || len < total
        {
            return Err(RingError::Corrupt(
                "sizes disagree with each other or the file",
            ));
        }
        Ok(m)
    }

    /// The shared header.
    pub fn header(&self) -> &Header {
        // SAFETY: offset 0 of a page-aligned mapping of at least HEADER_BYTES; Header is
        // repr(C) integers and atomics, valid for any bytes, and all shared mutation goes
        // through its atomics.
        unsafe { &*self.map.as_ptr().cast::<Header>() }
    }

    /// Descriptor of slot `i` (`i < slot_count`).
    pub fn descriptor(&self, i: usize) -> *mut Descriptor {
        debug_assert!(i < self.identity.slot_count as usize);
        let off = layout::HEADER_BYTES + i * layout::DESCRIPTOR_BYTES;
        // SAFETY: within the mapping (validated geometry); 64-byte aligned.
        unsafe { self.map.as_mut_ptr().add(off).cast() }
    }

    /// First byte of slot `i` (`i < slot_count`); `slot_bytes` bytes follow.
    pub fn slot(&self, i: usize) -> *mut u8 {
        debug_assert!(i < self.identity.slot_count as usize);
        let off = self.identity.slots_offset as usize + i * self.identity.slot_bytes as usize;
        // SAFETY: within the mapping (validated geometry); page aligned.
        unsafe { self.map.as_mut_ptr().add(off) }
    }
}
