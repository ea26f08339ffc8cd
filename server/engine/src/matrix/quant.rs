//! The block formats of ggml's quantized tensors that the engine computes on as stored (no
//! widening at load): [`BlockQ4_0`], [`BlockQ4_1`] (32 weights a block) and the k-quants
//! [`BlockQ4K`], [`BlockQ5K`], [`BlockQ6K`] (256 a block). Q8_0 is [`super::q8_0`], which has
//! kernels of its own.
//!
//! Each format describes itself to the kernels in one way ([`QuantBlock`]): per sub-block of
//! 32 weights, unsigned quants `q` (0..=63) and per half of 16 a scale and an offset, so that
//! `w = a · q + b`. The inputs are quantized to int8 groups of 32 (`BlockQ8A`, which carries
//! `d · Σq` per half), so a sub-block's product is `dx · (a0 · Σ q·xq + a1 · Σ q·xq) + b0 · s0
//! + b1 · s1`: integer dot products of unsigned weights and signed inputs (`maddubs` on AVX2,
//! `vpdpbusd` on AVX-512 VNNI), as llama.cpp computes its formats against q8 inputs.

pub use super::q4_0::BlockQ4_0;
pub use super::q4_1::BlockQ4_1;
pub use super::q4_k::BlockQ4K;
pub use super::q5_k::BlockQ5K;
pub use super::q6_k::BlockQ6K;

use super::input::BlockQ8A;

/// The scales of one sub-block of 32 weights: `w[16h + t] = a[h] · q[16h + t] + b[h]`.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct SubScales {
    pub a: [f32; 2],
    pub b: [f32; 2],
}

impl SubScales {
    /// One scale and offset for all 32 weights.
    pub fn uniform(a: f32, b: f32) -> SubScales {
        SubScales { a: [a; 2], b: [b; 2] }
    }
}

/// A ggml block format the kernels compute on.
pub trait QuantBlock: Copy + Send + Sync + PartialEq + std::fmt::Debug + 'static {
    /// ggml's type id.
    const GGML_TYPE: u32;
    /// ggml's name of the type.
    const NAME: &'static str;
    /// Sub-blocks of 32 weights in a block (1 or 8).
    const SUBS: usize;
    /// Bytes of a block as stored in a GGUF file (the size of `Self`).
    const BYTES: usize;

    /// A block from its `BYTES` bytes as ggml stores them (little-endian).
    fn from_bytes(b: &[u8]) -> Self;

    /// The scales of sub-blocks `0..SUBS` (the rest unused).
    fn scales(&self) -> [SubScales; 8];

    /// The unsigned quants of sub-block `j`.
    fn quants(&self, j: usize) -> [u8; 32];

    /// The quant that stands for zero in formats without a separate offset (Q4_0's 8, Q6_K's
    /// 32: `w = a · (q - ZERO)`, as ggml computes them, so that a zero keeps the scale's sign);
    /// 0 for the formats with one (`w = a · q + b`).
    const ZERO: u8 = 0;

    /// The block's `32 · SUBS` weights as f32, as ggml dequantizes them.
    fn dequantize(&self, out: &mut [f32]) {
        let sc = self.scales();
        for (j, o) in out.chunks_exact_mut(32).take(Self::SUBS).enumerate() {
            let q = self.quants(j);
            for (t, o) in o.iter_mut().enumerate() {
                let h = t / 16;
                *o = if Self::ZERO > 0 {
                    sc[j].a[h] * (f32::from(q[t]) - f32::from(Self::ZERO))
                } else {
                    sc[j].a[h] * f32::from(q[t]) + sc[j].b[h]
                };
            }
        }
    }
}

/// Reads a block struct from its bytes.
///
/// # Safety
/// `T` must be `repr(C)` of integer fields only (every bit pattern valid), `size_of::<T>()`
/// long, and `b` at least that long.
pub(super) unsafe fn read_block<T: Copy>(b: &[u8]) -> T {
    assert!(b.len() >= std::mem::size_of::<T>());
    std::ptr::read_unaligned(b.as_ptr() as *const T)
}

/// ggml's 6-bit scale and min of sub-block `j` of a Q4_K / Q5_K block (`get_scale_min_k4`).
pub(super) fn scale_min_k4(j: usize, q: &[u8; 12]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        ((q[j + 4] & 0xf) | ((q[j - 4] >> 6) << 4), (q[j + 4] >> 4) | ((q[j] >> 6) << 4))
    }
}

/// The f16 bits `h` as f32.
#[inline]
pub(super) fn f16_to_f32(h: u16) -> f32 {
    half::f16::from_bits(h).to_f32()
}

/// One input group against sub-block `j` of a weight block (the portable kernels' step).
#[inline]
pub(super) fn dot_sub(x: &BlockQ8A, q: &[u8; 32], sc: &SubScales) -> f32 {
    let mut sums = [0i32; 2];
    for (t, (&w, &v)) in q.iter().zip(&x.q).enumerate() {
        sums[t / 16] += i32::from(w) * i32::from(v);
    }
    x.d * (sc.a[0] * sums[0] as f32 + sc.a[1] * sums[1] as f32) + sc.b[0] * x.s[0] + sc.b[1] * x.s[1]
}
