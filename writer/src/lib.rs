//! Compression codecs and NXmx HDF5 data files for detingest.
//!
//! A [`Codec`] encodes a frame into the exact chunk bytes of an HDF5 filter (bitshuffle-LZ4 =
//! 32008, LZ4 = 32004) into a caller's buffer; a [`RunFiles`] writes such chunks (one per
//! module tile or per full image, see [`Chunking`]) into a run's NXmx file set, a master file
//! and data files that roll over every `frames_per_file` indices, with `H5Dwrite_chunk`, so
//! no filter runs at write time and HDF5 never sees the pixels. Readers
//! (h5py + hdf5plugin, h5dump with `HDF5_PLUGIN_PATH`, DIALS, XDS) decode with the registered
//! filter plugin.
//!
//! All HDF5 calls are serialised by the library's global lock; call them from one writer
//! thread and compress elsewhere.
//!
//! ```
//! use detingest_writer::Codec;
//! let frame = vec![0u8; 4096];
//! let codec = Codec::BitshuffleLz4;
//! let mut chunk = vec![0u8; codec.max_compressed_len(frame.len(), 2)];
//! let n = codec.compress_into(&frame, 2, &mut chunk).unwrap();
//! let mut back = vec![0u8; frame.len()];
//! codec.decompress_into(&chunk[..n], 2, &mut back).unwrap();
//! assert_eq!(back, frame);
//! ```

mod codec;
mod data_file;
mod detector_info;
mod detector_master;
mod error;
mod event_column;
mod event_file;
mod event_recover;
mod filter;
mod filter_check;
mod filter_repair;
mod frame_statistics;
mod geometry;
mod hdf5_memory;
mod layout;
mod master;
mod master_end;
mod nxmx;
mod part_records;
mod read_back;
mod recover;
mod run_files;

pub use codec::{bitshuffle_lz4_with, Codec, CodecError, Kernel, LowBytes, See};
pub use data_file::DATA_PATH;
pub use detector_info::{
    Axis, AxisKind, DetectorInfo, Goniometer, Table, TableValues, HC_EV_ANGSTROM,
};
pub use detector_master::{DetectorMaster, Part, PartEnd, PartOutcome};
pub use error::WriteError;
pub use event_file::{EventFile, EventFileSpec, EventRunEnd, EventSourceSpec, LogSpec};
pub use event_recover::{finish_unfinished_events, may_be_unfinished_events, EventsRecovered};
pub use filter::{judge_filter_values, FilterVerdict};
pub use filter_check::{check_filters, DatasetFilterCheck};
pub use filter_repair::{repair_filters, Repaired};
pub use frame_statistics::{FrameStats, StatsLimits, STATISTICS_PATH};
pub use layout::{all_modules, Chunking, RunLayout, MAX_MODULES};
pub use master::{IndexRecord, RunEnd};
pub use part_records::{clear_write_marks, read_part, PartRecords, PartState};
pub use read_back::read_frame;
pub use recover::{
    changed_ago, data_files, finish_unfinished, holders, is_detector_master, is_finished,
    run_holder, stream_of_master, Recovered, QUIET,
};
pub use run_files::{data_file_name, master_path, DataFileName, FileOptions, MasterData, RunFiles};
