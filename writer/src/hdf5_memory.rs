//! HDF5's own memory: the library keeps freed blocks on free lists, one list per block size,
//! and gives them back to the C allocator only past generous limits (16 MB for blocks, 16 MB
//! for factories, 4 MB for arrays, 1 MB for regular objects by default).
//!
//! A run's master appends its per-index records at every flush; the number of records a flush
//! carries varies with the frame rate, so the blocks HDF5 takes for each `H5Dwrite` come in
//! ever new sizes and each new size stayed on its own list: 55-65 bytes per large frame
//! written, measured with heaptrack and `detingest-bench soak` (docs/BENCHMARKS.md, "Memory
//! over a long run"). With small limits a freed block goes back to malloc, which reuses it.

use std::sync::OnceLock;

use crate::WriteError;

/// Per free list (one block size, one object type), bytes kept.
const LIST_LIMIT: i32 = 64 << 10;
/// Over all lists of a kind, bytes kept.
const GLOBAL_LIMIT: i32 = 256 << 10;

/// Caps HDF5's free lists, once per process. Called before a run's first file is made.
pub(crate) fn limit_free_lists() -> Result<(), WriteError> {
    static SET: OnceLock<bool> = OnceLock::new();
    let set = *SET.get_or_init(|| {
        let _hdf5 = hdf5_sys::LOCK.lock();
        // SAFETY: plain HDF5 C calls under the library's lock; H5open initialises the library
        // if this is the process's first call, and the limits are integers.
        unsafe {
            hdf5_sys::h5::H5open() >= 0
                && hdf5_sys::h5::H5set_free_list_limits(
                    GLOBAL_LIMIT,
                    LIST_LIMIT,
                    GLOBAL_LIMIT,
                    LIST_LIMIT,
                    GLOBAL_LIMIT,
                    LIST_LIMIT,
                ) >= 0
        }
    });
    if !set {
        return Err(WriteError::Metadata(
            "cannot set HDF5's free list limits".into(),
        ));
    }
    Ok(())
}
