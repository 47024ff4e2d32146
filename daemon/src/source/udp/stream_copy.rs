//! Copying a packet's payload into its frame with non-temporal stores: the frame buffer is
//! cold (a frame is a megabyte, written once, read later by a codec on another core), so
//! regular stores would first read every destination line for ownership. Streaming stores
//! write around the cache; [`fence`] orders them before the frame is handed on.

/// Copies `src` into `dst` (equal lengths).
pub fn copy(dst: &mut [u8], src: &[u8]) {
    assert_eq!(dst.len(), src.len(), "stream_copy::copy: lengths differ");
    #[cfg(target_arch = "x86_64")]
    {
        x86::copy(dst, src);
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        dst.copy_from_slice(src);
    }
}

/// Makes the streaming stores so far visible before stores that follow (the hand-off).
pub fn fence() {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: SSE2 is part of the x86_64 baseline; sfence has no operands.
    unsafe {
        std::arch::x86_64::_mm_sfence();
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::{__m128i, _mm_loadu_si128, _mm_stream_si128};

    pub fn copy(dst: &mut [u8], src: &[u8]) {
        let head = dst.as_ptr().align_offset(16).min(dst.len());
        dst[..head].copy_from_slice(&src[..head]);
        let body = (dst.len() - head) / 64 * 64;
        let (d, s) = (&mut dst[head..head + body], &src[head..head + body]);
        for (dc, sc) in d.chunks_exact_mut(64).zip(s.chunks_exact(64)) {
            // SAFETY: SSE2 is baseline on x86_64. `dc` is 16-byte aligned (head skipped to
            // alignment, chunks are 64 bytes) and 64 bytes long, so the four aligned stores
            // stay inside it; the four unaligned loads stay inside `sc`, also 64 bytes.
            unsafe {
                let sp = sc.as_ptr().cast::<__m128i>();
                let dp = dc.as_mut_ptr().cast::<__m128i>();
                let (a, b) = (_mm_loadu_si128(sp), _mm_loadu_si128(sp.add(1)));
                let (c, e) = (_mm_loadu_si128(sp.add(2)), _mm_loadu_si128(sp.add(3)));
                _mm_stream_si128(dp, a);
                _mm_stream_si128(dp.add(1), b);
                _mm_stream_si128(dp.add(2), c);
                _mm_stream_si128(dp.add(3), e);
            }
        }
        let tail = head + body;
        dst[tail..].copy_from_slice(&src[tail..]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_every_byte_at_any_alignment_and_length() {
        let src: Vec<u8> = (0..9000u32).map(|i| (i * 7 + 3) as u8).collect();
        let mut dst = vec![0u8; 9100];
        for off in [0, 1, 7, 15, 16, 33] {
            for len in [0, 1, 15, 63, 64, 65, 200, 8192, 8999 - 33] {
                dst.fill(0);
                copy(&mut dst[off..off + len], &src[..len]);
                fence();
                assert_eq!(&dst[off..off + len], &src[..len], "off {off} len {len}");
                assert!(dst[..off].iter().all(|&b| b == 0));
                assert!(dst[off + len..].iter().all(|&b| b == 0));
            }
        }
    }
}
