//! SSE2 and AVX2 kernels of the forward bit transpose.
//!
//! Per step, 16 (SSE2) or 32 (AVX2) elements are loaded as `ES` vectors and split into `ES`
//! byte planes by `log2(ES)` rounds of even/odd byte deinterleaving (`packus` of masked and
//! shifted 16-bit lanes); keeping the evens of every pair before the odds makes the planes come
//! out in byte order. Each plane then yields its eight bit rows with eight `movemask`s,
//! shifting left by one bit in between. Groups of 8 elements left over go through the scalar
//! code. The element size is a const parameter so every loop unrolls and the vectors stay in
//! registers.

use std::arch::x86_64::*;

use super::{scalar, LowBytes};

/// SSE2 transpose; SSE2 is part of the x86-64 baseline, so it is always available.
///
/// # Safety
/// Both slices hold `n * es` bytes with `n` a multiple of 8 and `es` in {1, 2, 4, 8}: the
/// kernel reads and writes through raw pointers sized by `input.len()`.
pub unsafe fn transpose_sse2(input: &[u8], out: &mut [u8], es: usize) {
    // SAFETY: SSE2 is always present on x86-64; the caller guarantees the lengths.
    unsafe {
        match es {
            1 => sse2::<1>(input, out),
            2 => sse2::<2>(input, out),
            4 => sse2::<4>(input, out),
            _ => sse2::<8>(input, out),
        }
    }
}

/// AVX2 transpose.
///
/// # Safety
/// The CPU must support AVX2; both slices hold `n * es` bytes with `n` a multiple of 8 and
/// `es` in {1, 2, 4, 8}.
pub unsafe fn transpose_avx2(input: &[u8], out: &mut [u8], es: usize) {
    // SAFETY: the caller guarantees AVX2 and the lengths.
    unsafe {
        match es {
            1 => avx2::<1, false>(input, out),
            2 => avx2::<2, false>(input, out),
            4 => avx2::<4, false>(input, out),
            _ => avx2::<8, false>(input, out),
        };
    }
}

/// AVX2 transpose of 16-bit elements that also notes their low bytes when every high byte
/// is zero (see [`LowBytes`]).
///
/// # Safety
/// The CPU must support AVX2; both slices hold `2n` bytes with `n` a multiple of 8.
pub unsafe fn transpose_avx2_u16_noting(input: &[u8], out: &mut [u8]) -> Option<LowBytes> {
    // SAFETY: the caller guarantees AVX2 and the lengths.
    unsafe { avx2::<2, true>(input, out) }
}

/// The SSE2 kernel for `ES`-byte elements.
///
/// # Safety
/// `input` and `out` hold the same `n * ES` bytes with `n` a multiple of 8.
#[target_feature(enable = "sse2")]
unsafe fn sse2<const ES: usize>(input: &[u8], out: &mut [u8]) {
    let n = input.len() / ES;
    let rows = n / 8;
    let steps = n / 16;
    let src = input.as_ptr();
    let dst = out.as_mut_ptr();
    for m in 0..steps {
        let mut v = [_mm_setzero_si128(); ES];
        for (q, lane) in v.iter_mut().enumerate() {
            // SAFETY: step `m` reads bytes `16*ES*m .. 16*ES*(m+1)` of `input`, in bounds as
            // `m < n / 16`; loadu has no alignment requirement.
            *lane = unsafe { _mm_loadu_si128(src.add(16 * (ES * m + q)).cast()) };
        }
        let mut width = ES;
        while width > 1 {
            let mut next = v;
            for k in 0..ES / 2 {
                let low = _mm_set1_epi16(0x00FF);
                let (a, b) = (v[2 * k], v[2 * k + 1]);
                next[k] = _mm_packus_epi16(_mm_and_si128(a, low), _mm_and_si128(b, low));
                next[ES / 2 + k] = _mm_packus_epi16(_mm_srli_epi16(a, 8), _mm_srli_epi16(b, 8));
            }
            v = next;
            width /= 2;
        }
        for (b, &plane) in v.iter().enumerate() {
            let mut x = plane;
            for i in (0..8).rev() {
                let mask = _mm_movemask_epi8(x) as u16;
                // SAFETY: row `8b+i` starts at `(8b+i)*rows`; bytes `2m, 2m+1` of it are below
                // `rows` because `2m + 2 <= n / 8`; so the write is inside `out`.
                unsafe {
                    dst.add((b * 8 + i) * rows + 2 * m)
                        .cast::<u16>()
                        .write_unaligned(mask.to_le())
                };
                x = _mm_slli_epi16(x, 1);
            }
        }
    }
    scalar::transpose_groups(input, out, ES, steps * 2, rows);
}

/// The AVX2 kernel for `ES`-byte elements.
///
/// # Safety
/// The CPU supports AVX2; `input` and `out` hold the same `n * ES` bytes with `n` a
/// multiple of 8.
///
/// With `NOTE` (16-bit elements only) the low-byte planes are also summed, maxed and their
/// zeros counted while every high-byte plane seen is zero; the figures come back when that
/// held for the whole input and it was whole 64-element pairs, else `None`.
#[target_feature(enable = "avx2")]
unsafe fn avx2<const ES: usize, const NOTE: bool>(
    input: &[u8],
    out: &mut [u8],
) -> Option<LowBytes> {
    let n = input.len() / ES;
    let rows = n / 8;
    let src = input.as_ptr();
    let dst = out.as_mut_ptr();
    let z = _mm256_setzero_si256();
    let mut small = NOTE && ES == 2 && n % 64 == 0;
    let (mut sums, mut top, mut zero_bytes, mut zeros) = (z, z, z, 0u64);
    // Two 32-element steps at a time, so each bit row gets one 8-byte store.
    let pairs = n / 64;
    for m in 0..pairs {
        // SAFETY: elements `64m .. 64m+64` are inside `input` because `m < n / 64`.
        let (lo, hi) = unsafe {
            (
                planes_avx2::<ES>(src, 2 * m),
                planes_avx2::<ES>(src, 2 * m + 1),
            )
        };
        if small {
            let high = _mm256_or_si256(lo[ES - 1], hi[ES - 1]);
            small = _mm256_testz_si256(high, high) == 1;
            let (a, b) = (lo[0], hi[0]);
            sums = _mm256_add_epi64(sums, _mm256_sad_epu8(a, z));
            sums = _mm256_add_epi64(sums, _mm256_sad_epu8(b, z));
            top = _mm256_max_epu8(top, _mm256_max_epu8(a, b));
            zero_bytes = _mm256_sub_epi8(zero_bytes, _mm256_cmpeq_epi8(a, z));
            zero_bytes = _mm256_sub_epi8(zero_bytes, _mm256_cmpeq_epi8(b, z));
            if m % 64 == 63 {
                // Each byte lane counts at most 2 a pair: widened before it reaches 256.
                zeros += lanes_u64(_mm256_sad_epu8(zero_bytes, z));
                zero_bytes = z;
            }
        }
        for b in 0..ES {
            let (mut x, mut y) = (lo[b], hi[b]);
            let row0 = dst.wrapping_add(b * 8 * rows + 8 * m);
            if _mm256_testz_si256(_mm256_or_si256(x, y), _mm256_or_si256(x, y)) == 1 {
                // A plane of zero bytes (the high bytes of small counts): eight zero rows.
                for i in 0..8 {
                    // SAFETY: bytes `8m .. 8m+8` of row `8b+i` lie inside `out` because
                    // `8m + 8 <= n / 8`.
                    unsafe { row0.add(i * rows).cast::<u64>().write_unaligned(0) };
                }
                continue;
            }
            for i in (0..8).rev() {
                let mask = (_mm256_movemask_epi8(x) as u32 as u64)
                    | ((_mm256_movemask_epi8(y) as u32 as u64) << 32);
                // SAFETY: as above.
                unsafe {
                    row0.add(i * rows)
                        .cast::<u64>()
                        .write_unaligned(mask.to_le())
                };
                x = _mm256_slli_epi16(x, 1);
                y = _mm256_slli_epi16(y, 1);
            }
        }
    }
    // One 32-element step may remain.
    let mut done = pairs * 64;
    if n - done >= 32 {
        let m = done / 32;
        // SAFETY: elements `32m .. 32m+32` are inside `input`, checked just above.
        let planes = unsafe { planes_avx2::<ES>(src, m) };
        for (b, &plane) in planes.iter().enumerate() {
            let mut x = plane;
            for i in (0..8).rev() {
                let mask = _mm256_movemask_epi8(x) as u32;
                // SAFETY: bytes `4m .. 4m+4` of row `8b+i` are inside `out` because
                // `4m + 4 <= n / 8`.
                unsafe {
                    dst.add((b * 8 + i) * rows + 4 * m)
                        .cast::<u32>()
                        .write_unaligned(mask.to_le())
                };
                x = _mm256_slli_epi16(x, 1);
            }
        }
        done += 32;
    }
    // Fewer than 32 elements remain: the scalar code does them group by group.
    scalar::transpose_groups(input, out, ES, done / 8, rows);
    small.then(|| {
        let mut bytes = [0u8; 32];
        // SAFETY: `bytes` is 32 bytes, the 32 bytes written.
        unsafe { _mm256_storeu_si256(bytes.as_mut_ptr().cast(), top) };
        LowBytes {
            sum: lanes_u64(sums),
            max: bytes.iter().copied().max().unwrap_or(0),
            zeros: zeros + lanes_u64(_mm256_sad_epu8(zero_bytes, z)),
        }
    })
}

/// The sum of the four 64-bit lanes of `x`.
#[inline]
#[target_feature(enable = "avx2")]
fn lanes_u64(x: __m256i) -> u64 {
    let mut lanes = [0u64; 4];
    // SAFETY: `lanes` is 32 bytes, the 32 bytes written.
    unsafe { _mm256_storeu_si256(lanes.as_mut_ptr().cast(), x) };
    lanes.iter().sum()
}

/// Byte planes of elements `32m .. 32m+32`: plane `b` holds byte `b` of each, in order.
///
/// # Safety
/// The CPU must support AVX2, and `src` must be valid for reads of `32 * ES * (m + 1)` bytes.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn planes_avx2<const ES: usize>(src: *const u8, m: usize) -> [__m256i; ES] {
    let mut v = [_mm256_setzero_si256(); ES];
    for (q, lane) in v.iter_mut().enumerate() {
        // SAFETY: the caller guarantees these 32 bytes are readable; loadu needs no alignment.
        *lane = unsafe { _mm256_loadu_si256(src.add(32 * (ES * m + q)).cast()) };
    }
    let mut width = ES;
    while width > 1 {
        let mut next = v;
        for k in 0..ES / 2 {
            let low = _mm256_set1_epi16(0x00FF);
            let (a, b) = (v[2 * k], v[2 * k + 1]);
            let even = _mm256_packus_epi16(_mm256_and_si256(a, low), _mm256_and_si256(b, low));
            let odd = _mm256_packus_epi16(_mm256_srli_epi16(a, 8), _mm256_srli_epi16(b, 8));
            // packus works per 128-bit lane: quads (a0, b0, a1, b1) -> (a0, a1, b0, b1).
            next[k] = _mm256_permute4x64_epi64(even, 0b11_01_10_00);
            next[ES / 2 + k] = _mm256_permute4x64_epi64(odd, 0b11_01_10_00);
        }
        v = next;
        width /= 2;
    }
    v
}
