//! The bit transpose of bitshuffle (`bshuf_trans_bit_elem` and its inverse).
//!
//! A block of `n` elements (`n` a multiple of 8) of `es` bytes becomes `8 * es` rows of `n / 8`
//! bytes. Row `b * 8 + i` holds bit `i` of byte `b` of every element; element `e` sits at byte
//! `e / 8`, bit `e % 8` (least significant first) of each row.
//!
//! Three encoders give identical bytes: portable [`scalar`], and on x86-64 SSE2 and AVX2
//! kernels chosen at run time by CPU feature detection ([`Kernel::detect`]). The scalar path is
//! the reference the others are tested against. Decoding is scalar.

pub mod scalar;
#[cfg(target_arch = "x86_64")]
mod x86;

/// What the AVX2 transpose of a block of 16-bit elements noted when every high byte was zero
/// (the elements all below 256): the sum, the largest and the zeros among them. It has each
/// low-byte plane in a register anyway, so the figures cost a few operations per 32
/// elements and no load.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LowBytes {
    /// Sum of the elements.
    pub sum: u64,
    /// The largest element.
    pub max: u8,
    /// Elements equal to 0.
    pub zeros: u64,
}

/// Which implementation of the forward transpose runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernel {
    /// Portable, 64-bit word at a time.
    Scalar,
    /// x86-64 SSE2 (always present on x86-64).
    Sse2,
    /// x86-64 AVX2.
    Avx2,
}

impl Kernel {
    /// The fastest kernel this CPU supports.
    pub fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx2") {
                return Self::Avx2;
            }
            Self::Sse2
        }
        #[cfg(not(target_arch = "x86_64"))]
        Self::Scalar
    }

    /// Every kernel this CPU can run, scalar first.
    pub fn available() -> Vec<Self> {
        let mut v = vec![Self::Scalar];
        #[cfg(target_arch = "x86_64")]
        {
            v.push(Self::Sse2);
            if std::arch::is_x86_feature_detected!("avx2") {
                v.push(Self::Avx2);
            }
        }
        v
    }

    /// Transposes `input` (`n * es` bytes, `n` a multiple of 8, `es` one of 1, 2, 4, 8) into
    /// `out` (the same length).
    ///
    /// # Panics
    /// If the lengths disagree, `n` is not a multiple of 8, `es` is not 1, 2, 4 or 8, or the
    /// kernel is not supported by this CPU (callers obtain kernels from [`Kernel::detect`] or
    /// [`Kernel::available`] and check lengths first).
    pub fn transpose(self, input: &[u8], out: &mut [u8], es: usize) {
        assert!(matches!(es, 1 | 2 | 4 | 8), "element size {es}");
        assert_eq!(input.len(), out.len());
        assert_eq!(input.len() % (8 * es), 0);
        match self {
            Self::Scalar => scalar::transpose(input, out, es),
            #[cfg(target_arch = "x86_64")]
            // SAFETY: the lengths and element size were asserted above.
            Self::Sse2 => unsafe { x86::transpose_sse2(input, out, es) },
            #[cfg(target_arch = "x86_64")]
            Self::Avx2 => {
                assert!(std::arch::is_x86_feature_detected!("avx2"));
                // SAFETY: AVX2 support was just checked; the lengths were asserted above.
                unsafe { x86::transpose_avx2(input, out, es) }
            }
            #[cfg(not(target_arch = "x86_64"))]
            _ => scalar::transpose(input, out, es),
        }
    }

    /// [`Kernel::transpose`], and for 16-bit elements with the AVX2 kernel the figures of
    /// [`LowBytes`] when every element of `input` is below 256 and `input` is whole
    /// 64-element pairs (a full block is); `None` otherwise.
    ///
    /// # Panics
    /// As [`Kernel::transpose`].
    pub fn transpose_noting(self, input: &[u8], out: &mut [u8], es: usize) -> Option<LowBytes> {
        #[cfg(target_arch = "x86_64")]
        if self == Self::Avx2 && es == 2 {
            assert_eq!(input.len(), out.len());
            assert_eq!(input.len() % 16, 0);
            assert!(std::arch::is_x86_feature_detected!("avx2"));
            // SAFETY: AVX2 support was just checked; the lengths were asserted above.
            return unsafe { x86::transpose_avx2_u16_noting(input, out) };
        }
        self.transpose(input, out, es);
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The definition, bit by bit.
    fn naive(input: &[u8], es: usize) -> Vec<u8> {
        let n = input.len() / es;
        let mut out = vec![0u8; input.len()];
        for e in 0..n {
            for b in 0..es {
                for i in 0..8 {
                    if input[e * es + b] >> i & 1 == 1 {
                        out[(b * 8 + i) * (n / 8) + e / 8] |= 1 << (e % 8);
                    }
                }
            }
        }
        out
    }

    fn check(input: &[u8], es: usize) {
        let want = naive(input, es);
        for k in Kernel::available() {
            let mut out = vec![0u8; input.len()];
            k.transpose(input, &mut out, es);
            assert_eq!(out, want, "{k:?}, es {es}, {} bytes", input.len());
        }
        let mut back = vec![0u8; input.len()];
        scalar::untranspose(&want, &mut back, es);
        assert_eq!(back, input, "inverse, es {es}");
    }

    #[test]
    fn every_kernel_matches_the_definition_at_every_length_boundary() {
        for es in [1, 2, 4, 8] {
            for n in [
                0usize, 8, 16, 24, 32, 40, 56, 64, 72, 96, 128, 136, 1024, 4096,
            ] {
                let input: Vec<u8> = (0..n * es).map(|i| (i * 151 + 7) as u8).collect();
                check(&input, es);
            }
        }
    }

    proptest! {
        #[test]
        fn the_noting_transpose_writes_the_same_and_notes_small_blocks_exactly(
            counts in proptest::collection::vec(prop_oneof![8 => 0u16..3, 1 => 0u16..256], 0..9000),
            bright in proptest::option::of((any::<prop::sample::Index>(), 256u16..)),
            groups in 0usize..8,
        ) {
            // Whole 64-element pairs, or a few 8-element groups more.
            let mut px = counts;
            let extra = groups * 8 * usize::from(px.len() % 3 == 0);
            px.truncate((px.len() / 64 * 64 + extra).min(px.len() / 8 * 8));
            if let (Some((at, v)), false) = (bright, px.is_empty()) {
                let i = at.index(px.len());
                px[i] = v;
            }
            let input: Vec<u8> = px.iter().flat_map(|v| v.to_le_bytes()).collect();
            for k in Kernel::available() {
                let mut out = vec![0u8; input.len()];
                let noted = k.transpose_noting(&input, &mut out, 2);
                prop_assert_eq!(&out, &naive(&input, 2), "{:?}", k);
                let small = px.iter().all(|&v| v < 256) && px.len() % 64 == 0;
                if k == Kernel::Avx2 && small {
                    prop_assert_eq!(noted, Some(LowBytes {
                        sum: px.iter().map(|&v| u64::from(v)).sum(),
                        max: px.iter().copied().max().unwrap_or(0) as u8,
                        zeros: px.iter().filter(|&&v| v == 0).count() as u64,
                    }));
                } else {
                    prop_assert_eq!(noted, None, "{:?}", k);
                }
            }
        }

        #[test]
        fn kernels_agree_on_random_blocks(
            es in prop::sample::select(vec![1usize, 2, 4, 8]),
            groups in 0usize..80,
            seed in any::<u64>(),
        ) {
            let mut x = seed | 1;
            let input: Vec<u8> = (0..groups * 8 * es)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            check(&input, es);
        }
    }
}
