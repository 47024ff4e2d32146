//! Reading one daemon's part of a detector back from its master while it is written: the
//! per-index records its writer has flushed (SWMR read), and whether its run has finished.
//! The whole detector's master merges these ([`crate::DetectorMaster`]).

use std::path::Path;

use hdf5::file::OpenMode;
use hdf5::{File, H5Type};

use crate::WriteError;

/// Where a master keeps its per-index records.
const SPECIFIC: &str = "/entry/instrument/detector/detectorSpecific";

/// One part's records `from..from + len()` (0-based positions: index = position + 1).
#[derive(Debug, Default, Clone)]
pub struct PartRecords {
    /// Position of the first record here.
    pub from: usize,
    /// The detector's frame numbers.
    pub frame_number: Vec<u64>,
    /// Detector numbering (restarts).
    pub sequence: Vec<u32>,
    /// Host timestamps, ns (0 when lost).
    pub timestamp: Vec<u64>,
    /// The detector's timestamps.
    pub detector_timestamp: Vec<u64>,
    /// Bunch ids.
    pub bunch_id: Vec<u64>,
    /// Modules written, per index.
    pub modules: Vec<u64>,
    /// Modules dropped on the daemon, per index.
    pub dropped: Vec<u64>,
    /// Missing packets, `modules_in_grid` masks per index, row after row.
    pub missing: Vec<[u8; 64]>,
}

impl PartRecords {
    /// Records read.
    pub fn len(&self) -> usize {
        self.frame_number.len()
    }

    /// True when none were read.
    pub fn is_empty(&self) -> bool {
        self.frame_number.is_empty()
    }
}

/// What a part's master holds now.
#[derive(Debug, Default, Clone)]
pub struct PartState {
    /// Records at positions `from..`, as far as flushed.
    pub records: PartRecords,
    /// Records in the file (flushed).
    pub recorded: usize,
    /// The part's run has finished (its master's `finished` is set).
    pub finished: bool,
}

/// Reads the records of the master at `path` from position `from` on, opening it with SWMR
/// read access (the writer may be writing it). Whatever a flush made consistent is read;
/// records of a file whose writer died are read up to its last flush.
pub fn read_part(path: &Path, from: usize) -> Result<PartState, WriteError> {
    let file = File::open_as(path, OpenMode::ReadSWMR)?;
    let specific = file.group(SPECIFIC)?;
    let finished = file
        .dataset("/entry/detingest/finished")?
        .read_scalar::<u8>()?
        != 0;
    let nimages = specific.dataset("nimages")?.read_scalar::<u64>()? as usize;
    let missing_ds = specific.dataset("missing_packets")?;
    let width = missing_ds.shape().get(1).copied().unwrap_or(0);
    // Each dataset is flushed before `nimages`; the shortest bounds what is whole.
    let mut recorded = nimages;
    for name in ["frame_number", "module_mask", "timestamp"] {
        recorded = recorded.min(specific.dataset(name)?.shape()[0]);
    }
    recorded = recorded.min(missing_ds.shape()[0]);
    let from = from.min(recorded);
    let range = from..recorded;
    let read = |name: &str| -> Result<Vec<u64>, WriteError> { slice(&specific, name, &range) };
    let records = PartRecords {
        from,
        frame_number: read("frame_number")?,
        sequence: slice::<u32>(&specific, "sequence", &range)?,
        timestamp: read("timestamp")?,
        detector_timestamp: read("detector_timestamp")?,
        bunch_id: read("bunch_id")?,
        modules: read("module_mask")?,
        dropped: read("dropped_mask")?,
        missing: if range.is_empty() || width == 0 {
            Vec::new()
        } else {
            let a = missing_ds.read_slice::<u8, _, ndarray::Ix3>((range.clone(), .., ..))?;
            let bytes: Vec<u8> = a.iter().copied().collect();
            (bytes.chunks_exact(64))
                .map(|c| c.try_into().unwrap_or([0; 64]))
                .collect()
        },
    };
    Ok(PartState {
        records,
        recorded,
        finished,
    })
}

fn slice<T: H5Type + Clone>(
    group: &hdf5::Group,
    name: &str,
    range: &std::ops::Range<usize>,
) -> Result<Vec<T>, WriteError> {
    if range.is_empty() {
        return Ok(Vec::new());
    }
    Ok(group
        .dataset(name)?
        .read_slice_1d::<T, _>(range.clone())?
        .to_vec())
}

/// Clears the "open for writing" marks a writer that died left in `path`'s superblock (what
/// `h5clear -s` does), so readers without SWMR access, and a master's VDS, can open it.
pub fn clear_write_marks(path: &Path) -> Result<(), WriteError> {
    use hdf5_sys::h5f::{H5Fclose, H5Fopen, H5F_ACC_RDWR};
    use hdf5_sys::h5p::{H5Pclose, H5Pcreate, H5Pset, H5P_CLS_FILE_ACCESS};
    let name = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|e| WriteError::Metadata(e.to_string()))?;
    let _hdf5 = hdf5_sys::LOCK.lock();
    // SAFETY: plain HDF5 C calls under the library's lock. `clear_status_flags` is the
    // file-access property h5clear sets (an hbool_t, one byte); the pointers outlive the calls,
    // and every id made here is closed here.
    unsafe {
        // The property list classes exist once the library is initialised; this may be the
        // process's first HDF5 call (`detingestd merge`).
        if hdf5_sys::h5::H5open() < 0 {
            return Err(WriteError::Metadata("cannot initialise HDF5".into()));
        }
        let fapl = H5Pcreate(*H5P_CLS_FILE_ACCESS);
        if fapl < 0 {
            return Err(WriteError::Metadata(
                "cannot make a file access list".into(),
            ));
        }
        let mut clear: u8 = 1;
        let set = H5Pset(
            fapl,
            c"clear_status_flags".as_ptr(),
            (&mut clear as *mut u8).cast(),
        );
        let file = if set >= 0 {
            H5Fopen(name.as_ptr(), H5F_ACC_RDWR, fapl)
        } else {
            -1
        };
        H5Pclose(fapl);
        if file < 0 {
            return Err(WriteError::Metadata(format!(
                "cannot clear the write marks of {}",
                path.display()
            )));
        }
        H5Fclose(file);
    }
    Ok(())
}
