//! LZ4 in the chunk framing of HDF5 filter 32004 (HDFGroup hdf5_plugins `H5Zlz4.c`).
//!
//! ```text
//! i64 BE  original size | i32 BE  block size | per block: u32 BE csize, csize bytes
//! ```
//! A block whose LZ4 output would not be smaller than the block is stored raw, with csize equal
//! to the block's length; readers tell the two apart by that equality alone.

use super::{leading_size, read_block, CodecError, See};

/// HDF5 registered filter id of LZ4.
pub const FILTER_ID: u32 = 32004;
/// The filter's default block size (1 GiB): a detector frame is one block.
const DEFAULT_BLOCK: usize = 1 << 30;
const HEADER: usize = 12;

/// Block size the filter uses for an `n`-byte chunk.
fn block_size(n: usize) -> usize {
    n.min(DEFAULT_BLOCK)
}

/// Largest encoded size of an `n`-byte chunk.
pub fn max_compressed_len(n: usize) -> usize {
    let bs = block_size(n).max(1);
    let blocks = n.div_ceil(bs);
    // A block is stored raw when LZ4 does not shrink it, so each block costs at most its
    // length; the last block also needs LZ4's worst case as scratch room while it is tried.
    HEADER + blocks * 4 + n + lz4_flex::block::get_maximum_output_size(bs).saturating_sub(bs)
}

/// Encodes `input` as a 32004 chunk into `out`.
/// Each block goes to `see` (if any) just before it is encoded (a block is 1 GiB or the whole input, so
/// no element straddles two).
pub fn compress_into(
    input: &[u8],
    out: &mut [u8],
    mut see: Option<&mut See<'_>>,
) -> Result<usize, CodecError> {
    let n = input.len();
    if n > i32::MAX as usize {
        return Err(CodecError::TooLarge(n));
    }
    let need = max_compressed_len(n);
    if out.len() < need {
        return Err(CodecError::OutputTooSmall {
            have: out.len(),
            need,
        });
    }
    let bs = block_size(n);
    out[..8].copy_from_slice(&(n as i64).to_be_bytes());
    out[8..12].copy_from_slice(&(bs as i32).to_be_bytes());
    let mut pos = HEADER;
    for block in input.chunks(bs.max(1)) {
        let body = pos + 4;
        if let Some(see) = see.as_mut() {
            see(block, None);
        }
        let csize = match lz4_flex::block::compress_into(block, &mut out[body..]) {
            Ok(c) if c < block.len() => c,
            // Not smaller (or no room to try): store the block raw.
            _ => {
                out[body..body + block.len()].copy_from_slice(block);
                block.len()
            }
        };
        out[pos..body].copy_from_slice(&(csize as u32).to_be_bytes());
        pos = body + csize;
    }
    Ok(pos)
}

/// Reads the decoded size from a 32004 chunk header.
pub fn decoded_len(chunk: &[u8]) -> Result<usize, CodecError> {
    // The filter stores the size as a signed i64.
    let size = i64::from_be_bytes(leading_size(chunk)?.to_be_bytes());
    usize::try_from(size).map_err(|_| CodecError::Corrupt("negative size"))
}

/// The decoded size and block size a 32004 chunk's header states.
fn framing(chunk: &[u8]) -> Result<(usize, usize), CodecError> {
    let n = decoded_len(chunk)?;
    if chunk.len() < HEADER {
        return Err(CodecError::Corrupt("shorter than the 12-byte header"));
    }
    let bs = i32::from_be_bytes([chunk[8], chunk[9], chunk[10], chunk[11]]);
    let bs = usize::try_from(bs).map_err(|_| CodecError::Corrupt("negative block size"))?;
    if n > 0 && bs == 0 {
        return Err(CodecError::Corrupt("zero block size"));
    }
    Ok((n, bs))
}

/// Checks a 32004 chunk without decoding it: the header and every block's length. Returns
/// the decoded size.
pub fn check_framing(chunk: &[u8]) -> Result<usize, CodecError> {
    let (n, bs) = framing(chunk)?;
    let mut pos = HEADER;
    let mut left = n;
    while left > 0 {
        let len = bs.min(left);
        let (body, next) = read_block(chunk, pos)?;
        if body.len() > lz4_flex::block::get_maximum_output_size(len) {
            return Err(CodecError::Corrupt("an LZ4 block longer than it can be"));
        }
        pos = next;
        left -= len;
    }
    if pos != chunk.len() {
        return Err(CodecError::Corrupt("trailing bytes after the last block"));
    }
    Ok(n)
}

/// Decodes a 32004 chunk into `out`.
pub fn decompress_into(chunk: &[u8], out: &mut [u8]) -> Result<usize, CodecError> {
    let (n, bs) = framing(chunk)?;
    let have = out.len();
    let out = out
        .get_mut(..n)
        .ok_or(CodecError::OutputTooSmall { have, need: n })?;
    let mut pos = HEADER;
    for dst in out.chunks_mut(bs.max(1)) {
        let (body, next) = read_block(chunk, pos)?;
        if body.len() == dst.len() {
            dst.copy_from_slice(body);
        } else {
            let got = lz4_flex::block::decompress_into(body, dst)
                .map_err(|_| CodecError::Corrupt("invalid LZ4 block"))?;
            if got != dst.len() {
                return Err(CodecError::Corrupt("LZ4 block decoded to the wrong length"));
            }
        }
        pos = next;
    }
    if pos != chunk.len() {
        return Err(CodecError::Corrupt("trailing bytes after the last block"));
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn round_trip(input: &[u8]) -> Vec<u8> {
        let mut enc = vec![0; max_compressed_len(input.len())];
        let len = compress_into(input, &mut enc, None).unwrap();
        let mut dec = vec![0; decoded_len(&enc[..len]).unwrap()];
        decompress_into(&enc[..len], &mut dec).unwrap();
        dec
    }

    #[test]
    fn header_is_big_endian_size_and_one_block() {
        let input = vec![0u8; 1000];
        let mut enc = vec![0; max_compressed_len(1000)];
        let len = compress_into(&input, &mut enc, None).unwrap();
        assert_eq!(&enc[..8], &1000i64.to_be_bytes());
        assert_eq!(&enc[8..12], &1000i32.to_be_bytes());
        let csize = u32::from_be_bytes(enc[12..16].try_into().unwrap()) as usize;
        assert_eq!(len, 16 + csize);
        assert!(csize < 100, "zeros compress");
    }

    #[test]
    fn incompressible_block_is_stored_raw() {
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let input: Vec<u8> = (0..4096)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 32) as u8
            })
            .collect();
        let mut enc = vec![0; max_compressed_len(input.len())];
        let len = compress_into(&input, &mut enc, None).unwrap();
        assert_eq!(len, 16 + 4096);
        assert_eq!(&enc[16..len], &input[..]);
        assert_eq!(round_trip(&input), input);
    }

    #[test]
    fn empty_chunk_round_trips() {
        assert_eq!(round_trip(&[]), Vec::<u8>::new());
    }

    #[test]
    fn corrupt_input_is_an_error() {
        let input = vec![7u8; 5000];
        let mut enc = vec![0; max_compressed_len(input.len())];
        let len = compress_into(&input, &mut enc, None).unwrap();
        let mut out = vec![0; 5000];
        for cut in 0..len {
            assert!(decompress_into(&enc[..cut], &mut out).is_err(), "cut {cut}");
        }
        let mut small = vec![0; 4999];
        assert!(decompress_into(&enc[..len], &mut small).is_err());
    }

    proptest! {
        #[test]
        fn round_trips_any_bytes(input in proptest::collection::vec(0u8..4, 0..20_000)) {
            prop_assert_eq!(round_trip(&input), input);
        }

        #[test]
        fn decoding_garbage_never_panics(garbage in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut out = vec![0; 1 << 16];
            let _ = decompress_into(&garbage, &mut out);
        }
    }
}
