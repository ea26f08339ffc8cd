//! The kernel table: one function per kernel kind and weight format, chosen once for the
//! instruction set [`crate::cpu::features`] reports, and the macros the SIMD families share.

use std::sync::OnceLock;

use half::f16;

use super::input::{BfPairs, BlockQ8A, Q8Rows};
use super::interleaved::{self, Q4x16, Q8x16};
use super::portable;
use super::q8_0::BlockQ8;
use super::quant::{BlockQ4K, BlockQ4_0, BlockQ4_1, BlockQ5K, BlockQ6K};
#[cfg(target_arch = "x86_64")]
use super::{avx2, avx512};
use crate::cpu::{Features, Level};

/// `out[i] = x_i · w` for the `m` rows `x_i` of `x` (each `w.len()` long).
pub(super) type DotsF32 = fn(&[f32], usize, &[f32], &mut [f32]);
pub(super) type DotsBf16 = fn(&[f32], usize, &[u16], &mut [f32]);
/// The same against two weight rows at once (`out0` for `w0`, `out1` for `w1`).
pub(super) type Dots2F32 = fn(&[f32], usize, &[f32], &[f32], &mut [f32], &mut [f32]);
pub(super) type Dots2Bf16 = fn(&[f32], usize, &[u16], &[u16], &mut [f32], &mut [f32]);
pub(super) type DotsF16 = fn(&[f32], usize, &[f16], &mut [f32]);
pub(super) type Dots2F16 = fn(&[f32], usize, &[f16], &[f16], &mut [f32], &mut [f32]);
/// `out[r * m + i] = xq_i · w_r` for `m` quantized rows and each weight row `w_r` of `w`, all
/// of `g` groups.
pub(super) type DotsQ8 = fn(&[BlockQ8A], usize, &[BlockQ8], usize, &mut [f32]);
/// Like [`Dots2Bf16`] with the input rows in bf16 too.
pub(super) type Dots2Bf16Native = fn(&[u16], usize, &[u16], &[u16], &mut [f32], &mut [f32]);
/// `dst[i * ldc + j] = x_i · w_j` for every packed input row `i` and each of the `rows` weight
/// rows `w_j` in `w` (bf16, `2 * x.pairs` columns each).
///
/// # Safety
/// `dst` must be valid for writes at `i * ldc + j` for every `i < x.m`, `j < rows`, with no
/// other thread touching those elements meanwhile.
pub(super) type GemmBf16Native = unsafe fn(&BfPairs, &[u16], usize, *mut f32, usize);
/// [`GemmBf16Native`] for q8: quantized input rows against `rows` q8 weight rows of
/// `x.groups` groups each.
pub(super) type GemmQ8 = GemmQ<BlockQ8>;
/// The same for a ggml block format.
pub(super) type GemmQ<B> = unsafe fn(&Q8Rows, &[B], usize, *mut f32, usize);

/// `out[r * m + i] = xq_i · w_r` for `m` quantized rows (`g` groups of 32 each) and each weight
/// row `w_r` of `w` in a block format of [`super::quant`].
pub(super) type DotsQ<B> = fn(&[BlockQ8A], usize, &[B], usize, &mut [f32]);
/// Quantized input rows against interleaved 4-bit weight rows: see
/// [`interleaved::gemm_q4x16`] (`x, m, w, per_row, cols, dst, ldc`).
pub(super) type GemmQ4x16 = GemmX16<Q4x16>;
pub(super) type GemmX16<W> = unsafe fn(&[BlockQ8A], usize, &[W], usize, usize, *mut f32, usize);
/// The weights of whole blocks as f32, as ggml dequantizes them (`out` holds all of them).
pub(super) type Dequantize<B> = fn(&[B], &mut [f32]);

/// One function per kernel kind and weight format, for one instruction set.
pub(super) struct Kernels {
    /// The instruction set this table's kernels use.
    pub features: Features,
    pub dots_f32: DotsF32,
    pub dots_bf16: DotsBf16,
    pub dots_f16: DotsF16,
    pub dots2_f32: Dots2F32,
    pub dots2_bf16: Dots2Bf16,
    pub dots2_f16: Dots2F16,
    pub dots_q8: DotsQ8,
    pub dots_q4_0: DotsQ<BlockQ4_0>,
    pub dots_q4_1: DotsQ<BlockQ4_1>,
    pub dots_q4_k: DotsQ<BlockQ4K>,
    pub dots_q5_k: DotsQ<BlockQ5K>,
    pub dots_q6_k: DotsQ<BlockQ6K>,
    pub dequantize_q4_0: Dequantize<BlockQ4_0>,
    pub dequantize_q4_1: Dequantize<BlockQ4_1>,
    pub dequantize_q4_k: Dequantize<BlockQ4K>,
    pub dequantize_q5_k: Dequantize<BlockQ5K>,
    pub dequantize_q6_k: Dequantize<BlockQ6K>,
    /// Where the CPU multiplies bf16 pairs natively (AVX-512 BF16).
    pub dots2_bf16_native: Option<Dots2Bf16Native>,
    pub gemm_bf16_native: Option<GemmBf16Native>,
    /// Where the CPU has AVX-512 VNNI: many-row q8 products, and those of the ggml block
    /// formats with one scale per 32 weights.
    pub gemm_q8_vnni: Option<GemmQ8>,
    pub gemm_q4_0_vnni: Option<GemmQ<BlockQ4_0>>,
    pub gemm_q4_1_vnni: Option<GemmQ<BlockQ4_1>>,
    pub gemm_q4_k_vnni: Option<GemmQ<BlockQ4K>>,
    pub gemm_q5_k_vnni: Option<GemmQ<BlockQ5K>>,
    /// Every product of interleaved Q4_0 / Q4_1 rows (the layout is made only where the CPU
    /// has AVX-512 VNNI; elsewhere the portable kernel, for the tests).
    pub gemm_q4x16: GemmQ4x16,
    pub gemm_q8x16: GemmX16<Q8x16>,
}

/// The engine's kernels: those of [`crate::cpu::features`], chosen once.
pub(super) fn kernels() -> &'static Kernels {
    static K: OnceLock<Kernels> = OnceLock::new();
    K.get_or_init(|| Kernels::for_features(crate::cpu::features()))
}

impl Kernels {
    /// The kernels of an instruction set (the portable ones where it has no SIMD level).
    pub(super) fn for_features(f: Features) -> Kernels {
        #[cfg(target_arch = "x86_64")]
        match f.level {
            Level::Avx512 => {
                return Kernels {
                    features: f,
                    dots_f32: |x, m, w, o| unsafe { avx512::dots_f32(x, m, w, o) },
                    dots_bf16: |x, m, w, o| unsafe { avx512::dots_bf16(x, m, w, o) },
                    dots_f16: |x, m, w, o| unsafe { avx512::dots_f16(x, m, w, o) },
                    dots2_f32: |x, m, w0, w1, o0, o1| unsafe { avx512::dots2_f32(x, m, w0, w1, o0, o1) },
                    dots2_bf16: |x, m, w0, w1, o0, o1| unsafe { avx512::dots2_bf16(x, m, w0, w1, o0, o1) },
                    dots2_f16: |x, m, w0, w1, o0, o1| unsafe { avx512::dots2_f16(x, m, w0, w1, o0, o1) },
                    // The AVX2 q8 kernel: the same loop on 256-bit VNNI (`vpdpbusd` in place of
                    // `maddubs` + `madd`) measured 8-13 % slower here (BENCHMARKS.md).
                    dots_q8: |x, m, w, g, o| unsafe { avx2::dots_q8(x, m, w, g, o) },
                    dots_q4_0: avx2::dots_quant_fn::<BlockQ4_0>(f.vnni),
                    dots_q4_1: avx2::dots_quant_fn::<BlockQ4_1>(f.vnni),
                    dots_q4_k: avx2::dots_quant_fn::<BlockQ4K>(f.vnni),
                    dots_q5_k: avx2::dots_quant_fn::<BlockQ5K>(f.vnni),
                    dots_q6_k: avx2::dots_quant_fn::<BlockQ6K>(f.vnni),
                    dequantize_q4_0: |w, o| unsafe { avx2::dequantize::<BlockQ4_0>(w, o) },
                    dequantize_q4_1: |w, o| unsafe { avx2::dequantize::<BlockQ4_1>(w, o) },
                    dequantize_q4_k: |w, o| unsafe { avx2::dequantize::<BlockQ4K>(w, o) },
                    dequantize_q5_k: |w, o| unsafe { avx2::dequantize::<BlockQ5K>(w, o) },
                    dequantize_q6_k: |w, o| unsafe { avx2::dequantize::<BlockQ6K>(w, o) },
                    dots2_bf16_native: if f.bf16 {
                        Some(|x, m, w0, w1, o0, o1| unsafe { avx512::dots2_bf16_native(x, m, w0, w1, o0, o1) })
                    } else {
                        None
                    },
                    gemm_bf16_native: if f.bf16 { Some(avx512::gemm_bf16_native) } else { None },
                    gemm_q8_vnni: if f.vnni { Some(avx512::gemm_q8_vnni) } else { None },
                    gemm_q4_0_vnni: if f.vnni { Some(avx512::gemm_quant_vnni::<BlockQ4_0>) } else { None },
                    gemm_q4_1_vnni: if f.vnni { Some(avx512::gemm_quant_vnni::<BlockQ4_1>) } else { None },
                    gemm_q4_k_vnni: if f.vnni { Some(avx512::gemm_quant_vnni::<BlockQ4K>) } else { None },
                    gemm_q5_k_vnni: if f.vnni { Some(avx512::gemm_quant_vnni::<BlockQ5K>) } else { None },
                    gemm_q4x16: if f.vnni { avx512::gemm_q4x16_vnni as GemmQ4x16 } else { avx2::gemm_q4x16 },
                    gemm_q8x16: if f.vnni { avx512::gemm_q8x16_vnni as GemmX16<Q8x16> } else { avx2::gemm_q8x16 },
                };
            }
            Level::Avx2 => {
                return Kernels {
                    features: f,
                    dots_f32: |x, m, w, o| unsafe { avx2::dots_f32(x, m, w, o) },
                    dots_bf16: |x, m, w, o| unsafe { avx2::dots_bf16(x, m, w, o) },
                    dots_f16: |x, m, w, o| unsafe { avx2::dots_f16(x, m, w, o) },
                    dots2_f32: |x, m, w0, w1, o0, o1| unsafe { avx2::dots2_f32(x, m, w0, w1, o0, o1) },
                    dots2_bf16: |x, m, w0, w1, o0, o1| unsafe { avx2::dots2_bf16(x, m, w0, w1, o0, o1) },
                    dots2_f16: |x, m, w0, w1, o0, o1| unsafe { avx2::dots2_f16(x, m, w0, w1, o0, o1) },
                    dots_q8: |x, m, w, g, o| unsafe { avx2::dots_q8(x, m, w, g, o) },
                    dots_q4_0: avx2::dots_quant_fn::<BlockQ4_0>(false),
                    dots_q4_1: avx2::dots_quant_fn::<BlockQ4_1>(false),
                    dots_q4_k: avx2::dots_quant_fn::<BlockQ4K>(false),
                    dots_q5_k: avx2::dots_quant_fn::<BlockQ5K>(false),
                    dots_q6_k: avx2::dots_quant_fn::<BlockQ6K>(false),
                    dequantize_q4_0: |w, o| unsafe { avx2::dequantize::<BlockQ4_0>(w, o) },
                    dequantize_q4_1: |w, o| unsafe { avx2::dequantize::<BlockQ4_1>(w, o) },
                    dequantize_q4_k: |w, o| unsafe { avx2::dequantize::<BlockQ4K>(w, o) },
                    dequantize_q5_k: |w, o| unsafe { avx2::dequantize::<BlockQ5K>(w, o) },
                    dequantize_q6_k: |w, o| unsafe { avx2::dequantize::<BlockQ6K>(w, o) },
                    dots2_bf16_native: None,
                    gemm_bf16_native: None,
                    gemm_q8_vnni: None,
                    gemm_q4_0_vnni: None,
                    gemm_q4_1_vnni: None,
                    gemm_q4_k_vnni: None,
                    gemm_q5_k_vnni: None,
                    gemm_q4x16: avx2::gemm_q4x16,
                    gemm_q8x16: avx2::gemm_q8x16,
                };
            }
            Level::Portable => {}
        }
        Kernels {
            features: Features { level: Level::Portable, ..f },
            dots_f32: portable::dots_f32,
            dots_bf16: portable::dots_bf16,
            dots_f16: portable::dots_f16,
            dots2_f32: |x, m, w0, w1, o0, o1| {
                portable::dots_f32(x, m, w0, o0);
                portable::dots_f32(x, m, w1, o1);
            },
            dots2_bf16: |x, m, w0, w1, o0, o1| {
                portable::dots_bf16(x, m, w0, o0);
                portable::dots_bf16(x, m, w1, o1);
            },
            dots2_f16: |x, m, w0, w1, o0, o1| {
                portable::dots_f16(x, m, w0, o0);
                portable::dots_f16(x, m, w1, o1);
            },
            dots_q8: portable::dots_q8,
            dots_q4_0: portable::dots_quant::<BlockQ4_0>,
            dots_q4_1: portable::dots_quant::<BlockQ4_1>,
            dots_q4_k: portable::dots_quant::<BlockQ4K>,
            dots_q5_k: portable::dots_quant::<BlockQ5K>,
            dots_q6_k: portable::dots_quant::<BlockQ6K>,
            dequantize_q4_0: portable::dequantize::<BlockQ4_0>,
            dequantize_q4_1: portable::dequantize::<BlockQ4_1>,
            dequantize_q4_k: portable::dequantize::<BlockQ4K>,
            dequantize_q5_k: portable::dequantize::<BlockQ5K>,
            dequantize_q6_k: portable::dequantize::<BlockQ6K>,
            dots2_bf16_native: None,
            gemm_bf16_native: None,
            gemm_q8_vnni: None,
            gemm_q4_0_vnni: None,
            gemm_q4_1_vnni: None,
            gemm_q4_k_vnni: None,
            gemm_q5_k_vnni: None,
            gemm_q4x16: interleaved::gemm_q4x16,
            gemm_q8x16: interleaved::gemm_q8x16,
        }
    }
}

/// Every kernel table this CPU can run, best first, the portable one last (for tests that
/// compare them).
#[cfg(test)]
pub(super) fn kernel_sets() -> Vec<(&'static str, Kernels)> {
    use crate::cpu::KernelCap;
    let mut sets = Vec::new();
    for (name, cap) in [("avx512", KernelCap::Avx512), ("avx2", KernelCap::Avx2), ("portable", KernelCap::Portable)] {
        let f = Features::detect(cap);
        if sets.iter().all(|(_, k): &(&str, Kernels)| k.features != f) {
            sets.push((name, Kernels::for_features(f)));
        }
    }
    sets
}

/// Calls `f::<R>(i)` for consecutive groups of at most four input rows, so that the SIMD
/// kernels are compiled for each group size and never compute a row twice.
#[cfg(target_arch = "x86_64")]
macro_rules! by_fours {
    ($m:expr, $f:ident $(<$t:ty>)?, $($arg:expr),*) => {{
        let mut i = 0;
        while i < $m {
            match $m - i {
                1 => $f::<1 $(, $t)?>(i, $($arg),*),
                2 => $f::<2 $(, $t)?>(i, $($arg),*),
                3 => $f::<3 $(, $t)?>(i, $($arg),*),
                _ => $f::<4 $(, $t)?>(i, $($arg),*),
            }
            i += 4;
        }
    }};
}

/// The f32 / bf16 streaming kernels, written once for each vector width: the target features,
/// `$n` f32 lanes per vector, the lane intrinsics, the lane sum, and the trait that loads `$n`
/// weights as a vector.
#[cfg(target_arch = "x86_64")]
macro_rules! streaming_kernels {
    ($feat:literal, $n:literal, $zero:ident, $loadu:ident, $fmadd:ident, $add:ident, $hsum:path, $Lanes:ident) => {
        /// Input rows against one f32 weight row; the weight is loaded once per vector.
        #[target_feature(enable = $feat)]
        pub unsafe fn dots_f32(x: &[f32], m: usize, w: &[f32], out: &mut [f32]) {
            assert!(x.len() >= m * w.len() && out.len() >= m);
            by_fours!(m, dots_r<f32>, x, w, out);
        }

        /// Input rows against one bf16 weight row, widened in registers.
        #[target_feature(enable = $feat)]
        pub unsafe fn dots_bf16(x: &[f32], m: usize, w: &[u16], out: &mut [f32]) {
            assert!(x.len() >= m * w.len() && out.len() >= m);
            by_fours!(m, dots_r<u16>, x, w, out);
        }

        #[inline]
        #[target_feature(enable = $feat)]
        unsafe fn dots_r<const R: usize, W: $Lanes>(i: usize, x: &[f32], w: &[W], out: &mut [f32]) {
            let k = w.len();
            let pw = w.as_ptr();
            let px: [*const f32; R] = std::array::from_fn(|l| x.as_ptr().add((i + l) * k));
            let mut acc = [$zero(); R];
            let mut acc2 = [$zero(); R];
            let mut t = 0;
            while t + 2 * $n <= k {
                let w0 = W::load(pw.add(t));
                let w1 = W::load(pw.add(t + $n));
                for l in 0..R {
                    acc[l] = $fmadd(w0, $loadu(px[l].add(t)), acc[l]);
                    acc2[l] = $fmadd(w1, $loadu(px[l].add(t + $n)), acc2[l]);
                }
                t += 2 * $n;
            }
            while t + $n <= k {
                let w0 = W::load(pw.add(t));
                for l in 0..R {
                    acc[l] = $fmadd(w0, $loadu(px[l].add(t)), acc[l]);
                }
                t += $n;
            }
            for l in 0..R {
                let mut s = $hsum($add(acc[l], acc2[l]));
                for t in t..k {
                    s += *px[l].add(t) * (*pw.add(t)).to_f32();
                }
                out[i + l] = s;
            }
        }

        /// Input rows against one f16 weight row, widened in registers.
        #[target_feature(enable = $feat)]
        pub unsafe fn dots_f16(x: &[f32], m: usize, w: &[half::f16], out: &mut [f32]) {
            assert!(x.len() >= m * w.len() && out.len() >= m);
            by_fours!(m, dots_r<half::f16>, x, w, out);
        }

        /// Input rows against two f16 weight rows, widened in registers.
        #[target_feature(enable = $feat)]
        pub unsafe fn dots2_f16(
            x: &[f32],
            m: usize,
            w0: &[half::f16],
            w1: &[half::f16],
            o0: &mut [f32],
            o1: &mut [f32],
        ) {
            assert!(w0.len() == w1.len() && x.len() >= m * w0.len() && o0.len() >= m && o1.len() >= m);
            by_fours!(m, dots2_r<half::f16>, x, w0, w1, o0, o1);
        }

        /// Input rows against two f32 weight rows: each input vector is loaded once for both.
        #[target_feature(enable = $feat)]
        pub unsafe fn dots2_f32(x: &[f32], m: usize, w0: &[f32], w1: &[f32], o0: &mut [f32], o1: &mut [f32]) {
            assert!(w0.len() == w1.len() && x.len() >= m * w0.len() && o0.len() >= m && o1.len() >= m);
            by_fours!(m, dots2_r<f32>, x, w0, w1, o0, o1);
        }

        /// Input rows against two bf16 weight rows, widened in registers.
        #[target_feature(enable = $feat)]
        pub unsafe fn dots2_bf16(x: &[f32], m: usize, w0: &[u16], w1: &[u16], o0: &mut [f32], o1: &mut [f32]) {
            assert!(w0.len() == w1.len() && x.len() >= m * w0.len() && o0.len() >= m && o1.len() >= m);
            by_fours!(m, dots2_r<u16>, x, w0, w1, o0, o1);
        }

        /// A tile of R input rows by two weight rows: 2R accumulators, per vector two weight loads
        /// and R input loads for 2R FMAs.
        #[inline]
        #[target_feature(enable = $feat)]
        unsafe fn dots2_r<const R: usize, W: $Lanes>(
            i: usize,
            x: &[f32],
            w0: &[W],
            w1: &[W],
            o0: &mut [f32],
            o1: &mut [f32],
        ) {
            let k = w0.len();
            let (p0, p1) = (w0.as_ptr(), w1.as_ptr());
            let px: [*const f32; R] = std::array::from_fn(|l| x.as_ptr().add((i + l) * k));
            let mut a0 = [$zero(); R];
            let mut a1 = [$zero(); R];
            let mut t = 0;
            while t + $n <= k {
                let v0 = W::load(p0.add(t));
                let v1 = W::load(p1.add(t));
                for l in 0..R {
                    let xv = $loadu(px[l].add(t));
                    a0[l] = $fmadd(v0, xv, a0[l]);
                    a1[l] = $fmadd(v1, xv, a1[l]);
                }
                t += $n;
            }
            for l in 0..R {
                let (mut s0, mut s1) = ($hsum(a0[l]), $hsum(a1[l]));
                for t in t..k {
                    let xv = *px[l].add(t);
                    s0 += xv * (*p0.add(t)).to_f32();
                    s1 += xv * (*p1.add(t)).to_f32();
                }
                o0[i + l] = s0;
                o1[i + l] = s1;
            }
        }
    };
}
