//! Bitshuffle + LZ4 in the chunk framing of HDF5 filter 32008 (kiyo-masui/bitshuffle
//! `bshuf_h5filter.c`, `bitshuffle_core.c`).
//!
//! ```text
//! u64 BE  total bytes | u32 BE  block size in bytes
//! per full block of B elements, then one block of floor((n mod B) / 8) * 8 elements if any:
//!     u32 BE csize, csize bytes of LZ4 block of the bit-transposed block
//! (n mod 8) * es bytes copied raw
//! ```
//! B is the library's default, `max(floor(8192 / es / 8) * 8, 128)` elements. Blocks are always
//! LZ4 output, even when larger than their input; which parse each block gets (LZ4's search or
//! runs alone) is `block_parse.rs`'s choice. Encoding uses stack buffers of 8 KiB for the
//! transposed block and 9 KiB for the sampled parse, and allocates nothing.

use super::block_parse::BlockParse;
use super::transpose::{scalar, Kernel};
use super::See;
use super::{leading_size, read_block, CodecError};

/// HDF5 registered filter id of bitshuffle.
pub const FILTER_ID: u32 = 32008;
/// cd_values[4]: LZ4 compression.
const COMPRESS_LZ4: u32 = 2;
const HEADER: usize = 12;
/// Bytes of the largest default block (8192 one-byte elements).
const MAX_BLOCK_BYTES: usize = 8192;

/// The library's default block size in elements for `es`-byte elements.
pub fn default_block(es: usize) -> usize {
    (MAX_BLOCK_BYTES / es / 8 * 8).max(128)
}

/// The cd_values recorded with the filter: bitshuffle 0.5, element size, automatic block, LZ4.
pub fn cd_values(es: usize) -> [u32; 5] {
    [0, 5, es as u32, 0, COMPRESS_LZ4]
}

fn check_es(es: usize) -> Result<(), CodecError> {
    if matches!(es, 1 | 2 | 4 | 8) {
        Ok(())
    } else {
        Err(CodecError::ElementSize(es))
    }
}

/// Largest encoded size of `n` bytes of `es`-byte elements.
pub fn max_compressed_len(n: usize, es: usize) -> usize {
    let es = es.max(1);
    let block = default_block(es) * es;
    let blocks = (n / es).div_ceil(default_block(es));
    HEADER + blocks * (4 + lz4_flex::block::get_maximum_output_size(block)) + 8 * es
}

/// Encodes `input` (a whole number of `es`-byte elements) into `out`, with the given transpose
/// kernel, handing each block (with what the transpose noted of it) to `see`, if any, just
/// after the transpose read it (so from L1).
pub fn compress_into(
    input: &[u8],
    es: usize,
    out: &mut [u8],
    kernel: Kernel,
    mut see: Option<&mut See<'_>>,
) -> Result<usize, CodecError> {
    check_es(es)?;
    if input.len() % es != 0 {
        return Err(CodecError::Corrupt(
            "input is not a whole number of elements",
        ));
    }
    let need = max_compressed_len(input.len(), es);
    if out.len() < need {
        return Err(CodecError::OutputTooSmall {
            have: out.len(),
            need,
        });
    }
    let n = input.len() / es;
    let block = default_block(es);
    out[..8].copy_from_slice(&(input.len() as u64).to_be_bytes());
    out[8..12].copy_from_slice(&((block * es) as u32).to_be_bytes());
    let mut pos = HEADER;
    let mut scratch = [0u8; MAX_BLOCK_BYTES];
    let mut parse = BlockParse::new();
    let blocked = n - n % 8;
    let mut start = 0;
    while start < blocked {
        let len = block.min(blocked - start);
        let src = &input[start * es..(start + len) * es];
        let shuffled = &mut scratch[..src.len()];
        if let Some(see) = see.as_mut() {
            let noted = kernel.transpose_noting(src, shuffled, es);
            see(src, noted); // just read by the transpose: in L1
        } else {
            kernel.transpose(src, shuffled, es);
        }
        let have = out.len();
        let csize = parse
            .encode(shuffled, &mut out[pos + 4..])
            .ok_or(CodecError::OutputTooSmall { have, need })?;
        out[pos..pos + 4].copy_from_slice(&(csize as u32).to_be_bytes());
        pos += 4 + csize;
        start += len;
    }
    let tail = &input[blocked * es..];
    if let (Some(see), false) = (see, tail.is_empty()) {
        see(tail, None);
    }
    out[pos..pos + tail.len()].copy_from_slice(tail);
    Ok(pos + tail.len())
}

/// Reads the decoded size from a 32008 chunk header.
pub fn decoded_len(chunk: &[u8]) -> Result<usize, CodecError> {
    usize::try_from(leading_size(chunk)?).map_err(|_| CodecError::Corrupt("size overflows"))
}

/// What a 32008 chunk's header says: decoded bytes, elements per block, elements in blocks
/// (the rest, fewer than 8, are stored raw at the end).
struct Framing {
    total: usize,
    block: usize,
    blocked: usize,
}

fn framing(chunk: &[u8], es: usize) -> Result<Framing, CodecError> {
    check_es(es)?;
    let total = decoded_len(chunk)?;
    let head = chunk
        .get(8..HEADER)
        .ok_or(CodecError::Corrupt("shorter than the 12-byte header"))?;
    let block_bytes = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as usize;
    if total % es != 0 {
        return Err(CodecError::Corrupt(
            "size is not a whole number of elements",
        ));
    }
    let n = total / es;
    let blocked = n - n % 8;
    let block = if block_bytes == 0 {
        default_block(es)
    } else {
        block_bytes / es
    };
    if blocked > 0 && (block == 0 || block % 8 != 0 || block_bytes % es != 0) {
        return Err(CodecError::Corrupt(
            "block size is not a multiple of 8 elements",
        ));
    }
    Ok(Framing {
        total,
        block,
        blocked,
    })
}

/// Checks a 32008 chunk of `es`-byte elements without decoding it: the header, every block's
/// length, the raw tail, nothing before or after. Returns the decoded size.
pub fn check_framing(chunk: &[u8], es: usize) -> Result<usize, CodecError> {
    let f = framing(chunk, es)?;
    let mut pos = HEADER;
    let mut start = 0;
    while start < f.blocked {
        let len = f.block.min(f.blocked - start);
        let (body, next) = read_block(chunk, pos)?;
        if body.len() > lz4_flex::block::get_maximum_output_size(len * es) {
            return Err(CodecError::Corrupt("an LZ4 block longer than it can be"));
        }
        pos = next;
        start += len;
    }
    if pos + (f.total - f.blocked * es) != chunk.len() {
        return Err(CodecError::Corrupt(
            "block lengths do not add up to the chunk",
        ));
    }
    Ok(f.total)
}

/// Decodes a 32008 chunk of `es`-byte elements into `out`. Accepts any block size the header
/// states (a multiple of 8 elements), as the C library does.
pub fn decompress_into(chunk: &[u8], es: usize, out: &mut [u8]) -> Result<usize, CodecError> {
    let Framing {
        total,
        block,
        blocked,
    } = framing(chunk, es)?;
    let have = out.len();
    let out = out
        .get_mut(..total)
        .ok_or(CodecError::OutputTooSmall { have, need: total })?;
    // Bounded by `out`, which the caller sized.
    let mut scratch = vec![0u8; block.min(blocked) * es];
    let mut pos = HEADER;
    let mut start = 0;
    while start < blocked {
        let len = block.min(blocked - start);
        let (body, next) = read_block(chunk, pos)?;
        let shuffled = &mut scratch[..len * es];
        let got = lz4_flex::block::decompress_into(body, shuffled)
            .map_err(|_| CodecError::Corrupt("invalid LZ4 block"))?;
        if got != shuffled.len() {
            return Err(CodecError::Corrupt("LZ4 block decoded to the wrong length"));
        }
        scalar::untranspose(shuffled, &mut out[start * es..(start + len) * es], es);
        pos = next;
        start += len;
    }
    let tail = &mut out[blocked * es..];
    let raw = chunk
        .get(pos..pos + tail.len())
        .ok_or(CodecError::Corrupt("truncated tail"))?;
    tail.copy_from_slice(raw);
    if pos + tail.len() != chunk.len() {
        return Err(CodecError::Corrupt("trailing bytes after the tail"));
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn round_trip(input: &[u8], es: usize) -> Vec<u8> {
        let mut enc = vec![0; max_compressed_len(input.len(), es)];
        let len = compress_into(input, es, &mut enc, Kernel::detect(), None).unwrap();
        for k in Kernel::available() {
            let mut other = vec![0; enc.len()];
            let l2 = compress_into(input, es, &mut other, k, None).unwrap();
            assert_eq!(&other[..l2], &enc[..len], "{k:?} encodes differently");
        }
        let mut dec = vec![0; decoded_len(&enc[..len]).unwrap()];
        decompress_into(&enc[..len], es, &mut dec).unwrap();
        dec
    }

    fn data(bytes: usize) -> Vec<u8> {
        // Poisson-ish small counts: mostly 0..3 in the low byte.
        let mut x = 0x2545_F491_4F6C_DD1Du64;
        (0..bytes)
            .map(|i| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                if i % 2 == 0 {
                    (x % 4) as u8
                } else {
                    0
                }
            })
            .collect()
    }

    #[test]
    fn default_blocks_follow_the_library_rule() {
        assert_eq!([1, 2, 4, 8].map(default_block), [8192, 4096, 2048, 1024]);
    }

    #[test]
    fn header_and_layout_of_a_known_chunk() {
        // 20 u16 elements: no full block, one partial block of 16, a raw tail of 4 elements.
        let input: Vec<u8> = (0u16..20).flat_map(|v| v.to_le_bytes()).collect();
        let mut enc = vec![0; max_compressed_len(40, 2)];
        let len = compress_into(&input, 2, &mut enc, Kernel::Scalar, None).unwrap();
        assert_eq!(&enc[..8], &40u64.to_be_bytes());
        assert_eq!(&enc[8..12], &8192u32.to_be_bytes());
        let csize = u32::from_be_bytes(enc[12..16].try_into().unwrap()) as usize;
        assert_eq!(len, 16 + csize + 8);
        assert_eq!(&enc[len - 8..len], &input[32..]);
    }

    #[test]
    fn round_trips_every_size_class() {
        for es in [1, 2, 4, 8] {
            let b = default_block(es);
            for n in [
                0,
                1,
                7,
                8,
                9,
                15,
                16,
                100,
                b - 8,
                b - 1,
                b,
                b + 1,
                b + 8,
                3 * b + 13,
            ] {
                let input = data(n * es);
                assert_eq!(round_trip(&input, es), input, "es {es}, n {n}");
            }
        }
    }

    #[test]
    fn wrong_element_sizes_and_ragged_input_are_refused() {
        let mut out = vec![0; 1024];
        assert!(compress_into(&[0; 12], 3, &mut out, Kernel::Scalar, None).is_err());
        assert!(compress_into(&[0; 13], 2, &mut out, Kernel::Scalar, None).is_err());
        assert!(decompress_into(&[0; 12], 16, &mut out).is_err());
    }

    #[test]
    fn truncated_chunks_are_errors() {
        let input = data(3 * 4096 * 2 + 10);
        let mut enc = vec![0; max_compressed_len(input.len(), 2)];
        let len = compress_into(&input, 2, &mut enc, Kernel::detect(), None).unwrap();
        let mut out = vec![0; input.len()];
        for cut in (0..len).step_by(7).chain([len - 1]) {
            assert!(
                decompress_into(&enc[..cut], 2, &mut out).is_err(),
                "cut {cut}"
            );
        }
    }

    proptest! {
        #[test]
        fn round_trips_random_input(
            es in prop::sample::select(vec![1usize, 2, 4, 8]),
            n in 0usize..20_000,
            seed in any::<u8>(),
        ) {
            let input: Vec<u8> = data(n * es).iter().map(|b| b ^ seed).collect();
            prop_assert_eq!(round_trip(&input, es), input);
        }

        #[test]
        fn decoding_garbage_never_panics(garbage in proptest::collection::vec(any::<u8>(), 0..256)) {
            let mut out = vec![0; 1 << 16];
            for es in [1, 2, 4, 8] {
                let _ = decompress_into(&garbage, es, &mut out);
            }
        }
    }
}
