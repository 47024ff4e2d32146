//! Chunk codecs: each turns one frame's bytes into the exact chunk layout an HDF5 filter
//! expects, so chunks can be written with `H5Dwrite_chunk` and read by any HDF5 reader that has
//! the filter plugin.
//!
//! Codecs encode into a caller-provided buffer of at least [`Codec::max_compressed_len`] bytes
//! and never allocate.

pub(crate) mod block_parse;
pub(crate) mod bslz4;
pub(crate) mod lz4;
pub(crate) mod runs;
pub mod transpose;

use serde::{Deserialize, Serialize};

pub use transpose::{Kernel, LowBytes};

/// What [`Codec::compress_seeing`] hands each piece of its input to.
pub type See<'a> = dyn FnMut(&[u8], Option<LowBytes>) + 'a;

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
    /// The element size is not one the codec handles (bitshuffle: 1, 2, 4, 8).
    #[error("element size {0} is not supported (1, 2, 4 or 8)")]
    ElementSize(usize),
    /// A compressed chunk is truncated or inconsistent, or the input is ragged.
    #[error("corrupt chunk: {0}")]
    Corrupt(&'static str),
}

/// The compression applied to each chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum Codec {
    /// No compression: chunks are the raw pixels and the dataset has no filter.
    #[serde(rename = "none")]
    None,
    /// LZ4 in the framing of HDF5 filter 32004.
    #[serde(rename = "lz4")]
    Lz4,
    /// Bitshuffle + LZ4 in the framing of HDF5 filter 32008 (the default).
    #[default]
    #[serde(rename = "bslz4")]
    BitshuffleLz4,
}

impl Codec {
    /// Every codec, for tests and benchmarks.
    pub const ALL: [Codec; 3] = [Codec::None, Codec::Lz4, Codec::BitshuffleLz4];

    /// Largest encoded size of an `n`-byte chunk of `es`-byte elements.
    pub fn max_compressed_len(self, n: usize, es: usize) -> usize {
        match self {
            Self::None => n,
            Self::Lz4 => lz4::max_compressed_len(n),
            Self::BitshuffleLz4 => bslz4::max_compressed_len(n, es),
        }
    }

    /// The HDF5 filter this codec produces for `es`-byte elements, with the cd_values to
    /// record, or `None` for an unfiltered dataset.
    pub fn hdf5_filter(self, es: usize) -> Option<(u32, Vec<u32>)> {
        match self {
            Self::None => None,
            Self::Lz4 => Some((lz4::FILTER_ID, vec![0])),
            Self::BitshuffleLz4 => Some((bslz4::FILTER_ID, bslz4::cd_values(es).to_vec())),
        }
    }

    /// Encodes `input` (elements of `es` bytes) into `out`, returning the chunk's length.
    pub fn compress_into(
        self,
        input: &[u8],
        es: usize,
        out: &mut [u8],
    ) -> Result<usize, CodecError> {
        match self {
            Self::None => copy(input, out),
            Self::Lz4 => lz4::compress_into(input, out, None),
            Self::BitshuffleLz4 => bslz4::compress_into(input, es, out, Kernel::detect(), None),
        }
    }

    /// [`Codec::compress_into`], handing each piece of `input` to `see` as the codec reads it
    /// (bitshuffle-LZ4: each 8 KiB block just after its transpose read it, then the raw
    /// tail; LZ4: each block before it is encoded; none: the whole input), so a pass over
    /// the pixels (the frame statistics) finds them in L1 and the frame is fetched from
    /// memory once. The pieces are whole elements, in order, and cover `input` once. With
    /// each piece comes what the AVX2 transpose noted of it ([`LowBytes`]: 16-bit elements
    /// all below 256), or `None`.
    pub fn compress_seeing(
        self,
        input: &[u8],
        es: usize,
        out: &mut [u8],
        see: &mut See<'_>,
    ) -> Result<usize, CodecError> {
        match self {
            Self::None => {
                see(input, None);
                copy(input, out)
            }
            Self::Lz4 => lz4::compress_into(input, out, Some(see)),
            Self::BitshuffleLz4 => {
                bslz4::compress_into(input, es, out, Kernel::detect(), Some(see))
            }
        }
    }

    /// Decodes a chunk of `es`-byte elements into `out`, returning the decoded length. Never
    /// panics on bad input.
    pub fn decompress_into(
        self,
        chunk: &[u8],
        es: usize,
        out: &mut [u8],
    ) -> Result<usize, CodecError> {
        match self {
            Self::None => copy(chunk, out),
            Self::Lz4 => lz4::decompress_into(chunk, out),
            Self::BitshuffleLz4 => bslz4::decompress_into(chunk, es, out),
        }
    }

    /// Checks that `chunk` is framed as this codec's chunks are (header, block lengths,
    /// nothing left over) without decoding it, and returns its decoded size: what a chunk
    /// that arrived encoded must pass before it is written as it is. `None` checks nothing.
    pub fn check_framing(self, chunk: &[u8], es: usize) -> Result<usize, CodecError> {
        match self {
            Self::None => Ok(chunk.len()),
            Self::Lz4 => lz4::check_framing(chunk),
            Self::BitshuffleLz4 => bslz4::check_framing(chunk, es),
        }
    }

    /// Decoded size recorded in a chunk's header (for sizing the output of
    /// [`Codec::decompress_into`]).
    pub fn decoded_len(self, chunk: &[u8]) -> Result<usize, CodecError> {
        match self {
            Self::None => Ok(chunk.len()),
            Self::Lz4 => lz4::decoded_len(chunk),
            Self::BitshuffleLz4 => bslz4::decoded_len(chunk),
        }
    }

    /// Name used in configuration and notifications: `none`, `lz4`, `bslz4`.
    pub fn name(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Lz4 => "lz4",
            Self::BitshuffleLz4 => "bslz4",
        }
    }

    /// The codec of a [`Codec::name`].
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.name() == name)
    }
}

/// Bitshuffle-LZ4 encoding with a chosen transpose kernel (for tests and benchmarks that
/// compare kernels; [`Codec::compress_into`] picks the fastest).
pub fn bitshuffle_lz4_with(
    kernel: Kernel,
    input: &[u8],
    es: usize,
    out: &mut [u8],
) -> Result<usize, CodecError> {
    bslz4::compress_into(input, es, out, kernel, None)
}

/// The big-endian u64 both filters' chunks start with (the decoded size).
fn leading_size(chunk: &[u8]) -> Result<u64, CodecError> {
    let head: [u8; 8] = chunk
        .get(..8)
        .and_then(|h| h.try_into().ok())
        .ok_or(CodecError::Corrupt("shorter than the 12-byte header"))?;
    Ok(u64::from_be_bytes(head))
}

/// The block at `pos` of a chunk in the filters' framing (u32 BE size, then that many bytes):
/// its bytes and the position after it.
fn read_block(chunk: &[u8], pos: usize) -> Result<(&[u8], usize), CodecError> {
    let size = chunk
        .get(pos..pos + 4)
        .ok_or(CodecError::Corrupt("truncated block size"))?;
    let size = u32::from_be_bytes([size[0], size[1], size[2], size[3]]) as usize;
    let end = pos + 4 + size;
    let body = chunk
        .get(pos + 4..end)
        .ok_or(CodecError::Corrupt("truncated block"))?;
    Ok((body, end))
}

fn copy(input: &[u8], out: &mut [u8]) -> Result<usize, CodecError> {
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

#[cfg(test)]
mod framing_tests {
    use super::*;

    #[test]
    fn framing_is_checked_without_decoding_and_any_damage_to_it_refused() {
        let input: Vec<u8> = (0..5003u32)
            .flat_map(|i| ((i * 7) % 300).to_le_bytes())
            .collect();
        for codec in [Codec::Lz4, Codec::BitshuffleLz4] {
            let mut out = vec![0; codec.max_compressed_len(input.len(), 4)];
            let n = codec.compress_into(&input, 4, &mut out).unwrap();
            let chunk = &out[..n];
            assert_eq!(codec.check_framing(chunk, 4), Ok(input.len()), "{codec:?}");
            for cut in [1, 5, n - 12] {
                assert!(
                    codec.check_framing(&chunk[..n - cut], 4).is_err(),
                    "{codec:?} -{cut}"
                );
            }
            let mut longer = chunk.to_vec();
            longer.push(0);
            assert!(codec.check_framing(&longer, 4).is_err(), "{codec:?} +1");
            let mut bad_len = chunk.to_vec();
            bad_len[13] ^= 0x40; // the first block's length
            assert!(
                codec.check_framing(&bad_len, 4).is_err(),
                "{codec:?} length"
            );
        }
    }
}

#[cfg(test)]
mod seeing_tests {
    use super::*;

    #[test]
    fn every_codec_shows_the_whole_input_once_in_whole_elements_and_encodes_the_same() {
        for es in [1usize, 2, 4, 8] {
            for n in [0usize, 7, 4096, 8192 / es + 5, 30_001] {
                let input: Vec<u8> = (0..n * es).map(|i| (i % 7) as u8).collect();
                for codec in Codec::ALL {
                    let mut out = vec![0; codec.max_compressed_len(input.len(), es)];
                    let mut plain = out.clone();
                    let mut seen = Vec::new();
                    let len = codec
                        .compress_seeing(&input, es, &mut out, &mut |b, _| {
                            assert_eq!(b.len() % es, 0, "{codec:?} es {es}");
                            seen.extend_from_slice(b);
                        })
                        .unwrap();
                    assert_eq!(seen, input, "{codec:?} es {es} n {n}");
                    let plain_len = codec.compress_into(&input, es, &mut plain).unwrap();
                    assert_eq!(out[..len], plain[..plain_len], "{codec:?} es {es} n {n}");
                }
            }
        }
    }
}
