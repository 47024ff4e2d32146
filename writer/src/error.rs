//! The writer's error type.

use std::path::PathBuf;

/// Why a data file could not be created or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WriteError {
    /// The file exists already; detingest never overwrites data.
    #[error("{0} exists already; refusing to overwrite it")]
    Exists(PathBuf),
    /// An index arrived other than the next one.
    #[error("index {index} written out of order (expected {expected})")]
    OutOfOrder {
        /// The index given.
        index: u64,
        /// The index the file expected.
        expected: u64,
    },
    /// A frame's shape or pixel type differs from the dataset's.
    #[error("frame {index} does not match the dataset's shape or pixel type")]
    Shape {
        /// The index of the frame.
        index: u64,
    },
    /// HDF5 refused a direct chunk write or extent change.
    #[error("HDF5 could not write the chunk of index {index}{}", os.as_ref().map(|e| format!(": {e}")).unwrap_or_default())]
    Chunk {
        /// The index of the frame.
        index: u64,
        /// The system's reason, when the failure came from the file system (e.g. ENOSPC).
        os: Option<std::io::Error>,
    },
    /// A dataset recorded other filter values than its chunks need (a filter plugin's
    /// `set_local` changed them); the run must not write such a file.
    #[error("{dataset} records filter values {found}, not {expected}; readers would misdecode its chunks")]
    FilterValues {
        /// `file:dataset`.
        dataset: String,
        /// The values read back.
        found: String,
        /// The values the chunks need.
        expected: String,
    },
    /// A metadata value could not be stored.
    #[error("metadata: {0}")]
    Metadata(String),
    /// Any other HDF5 error.
    #[error("HDF5: {0}")]
    Hdf5(#[from] hdf5::Error),
}
