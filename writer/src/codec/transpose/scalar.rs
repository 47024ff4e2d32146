//! The portable bit transpose: eight elements' byte `b` gathered into one `u64`, transposed as
//! an 8 x 8 bit matrix with three mask-and-shift steps (Hacker's Delight, section 7-3), and
//! its eight bytes scattered to eight rows.

/// Transposes the 8 x 8 bit matrix held in `x`, where byte `k` is row `k` and bit `i` column
/// `i`: afterwards byte `i` holds bit `i` of every original byte, byte `k`'s bit at position
/// `k`. The transpose is its own inverse.
#[inline(always)]
pub fn transpose_8x8(mut x: u64) -> u64 {
    let t = (x ^ (x >> 7)) & 0x00AA_00AA_00AA_00AA;
    x ^= t ^ (t << 7);
    let t = (x ^ (x >> 14)) & 0x0000_CCCC_0000_CCCC;
    x ^= t ^ (t << 14);
    let t = (x ^ (x >> 28)) & 0x0000_0000_F0F0_F0F0;
    x ^ t ^ (t << 28)
}

/// Forward transpose of `input` (`n * es` bytes, `n` a multiple of 8) into `out`.
pub fn transpose(input: &[u8], out: &mut [u8], es: usize) {
    let rows = input.len() / es / 8; // bytes per output row
    transpose_groups(input, out, es, 0, rows);
}

/// Forward transpose of element groups `from..rows` only (each group is 8 elements), for the
/// SIMD kernels' tails.
pub fn transpose_groups(input: &[u8], out: &mut [u8], es: usize, from: usize, rows: usize) {
    for j in from..rows {
        let group = &input[j * 8 * es..(j + 1) * 8 * es];
        for b in 0..es {
            let mut x = 0u64;
            for k in 0..8 {
                x |= u64::from(group[k * es + b]) << (8 * k);
            }
            let t = transpose_8x8(x).to_le_bytes();
            for (i, &byte) in t.iter().enumerate() {
                out[(b * 8 + i) * rows + j] = byte;
            }
        }
    }
}

/// Inverse transpose: `input` rows back to `n` elements of `es` bytes in `out`.
pub fn untranspose(input: &[u8], out: &mut [u8], es: usize) {
    let rows = input.len() / es / 8;
    for j in 0..rows {
        for b in 0..es {
            let mut x = 0u64;
            for i in 0..8 {
                x |= u64::from(input[(b * 8 + i) * rows + j]) << (8 * i);
            }
            let t = transpose_8x8(x).to_le_bytes();
            for (k, &byte) in t.iter().enumerate() {
                out[(j * 8 + k) * es + b] = byte;
            }
        }
    }
}
