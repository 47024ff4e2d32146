//! Chunk codecs: each turns one frame's bytes into the exact chunk layout an HDF5 filter
//! expects, so chunks can be written with `H5Dwrite_chunk` and read by any HDF5 reader that has
//! the filter plugin.
//!
//! Codecs encode into a caller-provided buffer of at least [`Codec::max_compressed_len`] bytes
//! and never allocate.

mod lz4;

use serde::{Deserialize, Serialize};

/// Why a chunk could not be encoded or decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    /// The output buffer is smaller than the codec may need.
    #[error("output buffer too small: {have} bytes, need {need}")]
    OutputTooSmall {
        /// Bytes available.
        have: usize,
        /// Bytes required.
        need: usize,
    },
    /// The input is larger than the chunk format can describe.
    #[error("chunk of {0} bytes is larger than the format allows")]
    TooLarge(usize),
    /// A compressed chunk is truncated or inconsistent.
    #[error("corrupt chunk: {0}")]
    Corrupt(&'static str),
}

/// The compression applied to each chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Codec {
    /// No compression: chunks are the raw pixels and the dataset has no filter.
    None,
    /// LZ4 in the framing of HDF5 filter 32004.
    #[default]
    Lz4,
}

impl Codec {
    /// Largest encoded size of an `n`-byte chunk.
    pub fn max_compressed_len(self, n: usize) -> usize {
        match self {
            Self::None => n,
            Self::Lz4 => lz4::max_compressed_len(n),
        }
    }

    /// The HDF5 filter this codec produces and the cd_values to record with it, or `None` for
    /// an unfiltered dataset.
    pub fn hdf5_filter(self) -> Option<(u32, &'static [u32])> {
        match self {
            Self::None => None,
            Self::Lz4 => Some((lz4::FILTER_ID, &[0])),
        }
    }

    /// Encodes `input` into `out`, returning the chunk's length.
    pub fn compress_into(self, input: &[u8], out: &mut [u8]) -> Result<usize, CodecError> {
        match self {
            Self::None => {
                let have = out.len();
                let dst = out
                    .get_mut(..input.len())
                    .ok_or(CodecError::OutputTooSmall {
                        have,
                        need: input.len(),
                    })?;
                dst.copy_from_slice(input);
                Ok(input.len())
            }
            Self::Lz4 => lz4::compress_into(input, out),
        }
    }

    /// Decodes a chunk into `out`, returning the decoded length. Never panics on bad input.
    pub fn decompress_into(self, chunk: &[u8], out: &mut [u8]) -> Result<usize, CodecError> {
        match self {
            Self::None => Self::None.compress_into(chunk, out),
            Self::Lz4 => lz4::decompress_into(chunk, out),
        }
    }

    /// Decoded size recorded in a chunk's header (for sizing the output of
    /// [`Codec::decompress_into`]).
    pub fn decoded_len(self, chunk: &[u8]) -> Result<usize, CodecError> {
        match self {
            Self::None => Ok(chunk.len()),
            Self::Lz4 => lz4::decoded_len(chunk),
        }
    }

    /// Lower-case name used in configuration and notifications.
    pub fn name(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Lz4 => "lz4",
        }
    }
}
