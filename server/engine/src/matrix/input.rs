//! The inputs of the integer and native bf16 products: activation rows quantized to int8
//! groups ([`BlockQ8A`], for the streaming kernels; [`Q8Rows`], packed for the VNNI GEMM), or
//! rounded to bf16 and packed in column pairs ([`BfPairs`]), and the per-thread buffers they
//! are made in.

use std::cell::Cell;

use super::float::bf16_bits;
use super::Q8_GROUP;
use crate::cpu::pool;

/// One group of 32 activations, quantized for the integer dot products: `x ≈ d · q`, and
/// `s[h] = d · Σ q` over each half of 16 (what a weight format's offset multiplies).
#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub struct BlockQ8A {
    pub d: f32,
    pub s: [f32; 2],
    pub q: [i8; Q8_GROUP],
}

const BLOCK_A_ZERO: BlockQ8A = BlockQ8A { d: 0.0, s: [0.0; 2], q: [0; Q8_GROUP] };

/// Input rows rounded to bf16 and packed for the native bf16 GEMM: in blocks of 16 rows (the
/// last padded with zero rows), pair by pair: word `(b * pairs + p) * 16 + l` holds columns
/// 2p and 2p + 1 of row 16b + l (low and high half).
pub(super) struct BfPairs {
    pub words: Vec<u32>,
    pub m: usize,
    pub pairs: usize,
}

impl BfPairs {
    /// `x` is `m` rows of `k` (even) columns, packed into `words`' allocation. One block of 16
    /// rows per task.
    pub(super) fn new(x: &[f32], m: usize, k: usize, mut words: Vec<u32>) -> BfPairs {
        let pairs = k / 2;
        words.clear();
        words.resize(m.div_ceil(16) * pairs * 16, 0);
        pool().for_chunks(&mut words, pairs * 16, |b, dst| {
            for (l, row) in x.chunks_exact(k).skip(b * 16).take(16.min(m - b * 16)).enumerate() {
                for (p, two) in row.chunks_exact(2).enumerate() {
                    dst[p * 16 + l] = u32::from(bf16_bits(two[0])) | u32::from(bf16_bits(two[1])) << 16;
                }
            }
        });
        BfPairs { words, m, pairs }
    }
}

/// Input rows quantized as [`quantize_rows`] does, packed for the q8 GEMM in blocks of `lanes`
/// rows (16, or 8 for a product of at most 8 rows; the last block padded with zero rows). A
/// block is `lanes * (quads + 2 * groups)` words: word `t * lanes + l` holds columns 4t..4t+3
/// of its row l as four i8; then per group the rows' scales (f32 bits); then per group
/// 128 · Σq of each row (what biasing the weights to u8 adds to each integer sum).
pub(super) struct Q8Rows {
    pub words: Vec<u32>,
    pub m: usize,
    pub groups: usize,
    pub lanes: usize,
}

impl Q8Rows {
    /// `x` is `m` rows of `k` columns, packed into `words`' allocation.
    pub(super) fn new(x: &[f32], m: usize, k: usize, lanes: usize, mut words: Vec<u32>) -> Q8Rows {
        let groups = k / Q8_GROUP;
        let quads = k / 4;
        let stride = lanes * (quads + 2 * groups);
        words.clear();
        words.resize(m.div_ceil(lanes) * stride, 0);
        pool().for_chunks(&mut words, stride, |b, blk| {
            let (q, rest) = blk.split_at_mut(quads * lanes);
            let (d, corr) = rest.split_at_mut(groups * lanes);
            for (l, row) in x.chunks_exact(k).skip(b * lanes).take(lanes.min(m - b * lanes)).enumerate() {
                for (gi, grp) in row.chunks_exact(Q8_GROUP).enumerate() {
                    let mut bytes = [0u8; Q8_GROUP];
                    let mut sum = 0i32;
                    let scale = quantize_input_group(grp, |t, v| {
                        bytes[t] = v as u8;
                        sum += i32::from(v);
                    });
                    for (t, four) in bytes.chunks_exact(4).enumerate() {
                        q[(gi * 8 + t) * lanes + l] = u32::from_le_bytes([four[0], four[1], four[2], four[3]]);
                    }
                    d[gi * lanes + l] = scale.to_bits();
                    corr[gi * lanes + l] = (128 * sum) as u32;
                }
            }
        });
        Q8Rows { words, m, groups, lanes }
    }
}

/// Quantizes input rows (a multiple of 32 floats) into groups with f32 scales, in `out`'s
/// allocation.
pub(super) fn quantize_rows(x: &[f32], mut out: Vec<BlockQ8A>) -> Vec<BlockQ8A> {
    out.clear();
    out.resize(x.len() / Q8_GROUP, BLOCK_A_ZERO);
    quantize_rows_into(x, &mut out);
    out
}

/// [`quantize_rows`] into `out` (`x.len() / 32` groups).
pub(super) fn quantize_rows_into(x: &[f32], out: &mut [BlockQ8A]) {
    for (b, g) in out.iter_mut().zip(x.chunks_exact(Q8_GROUP)) {
        let mut sums = [0i32; 2];
        b.d = quantize_input_group(g, |t, q| {
            b.q[t] = q;
            sums[t / 16] += i32::from(q);
        });
        b.s = sums.map(|v| v as f32 * b.d);
    }
}

// The calling thread's input buffers of its last product of each kind, taken for the next one
// and put back after it, so that a decode step allocates nothing once they have grown.
thread_local! {
    pub(super) static QUANT_ROWS: Cell<Vec<BlockQ8A>> = const { Cell::new(Vec::new()) };
    pub(super) static INPUT_WORDS: Cell<Vec<u32>> = const { Cell::new(Vec::new()) };
    pub(super) static INPUT_BF16: Cell<Vec<u16>> = const { Cell::new(Vec::new()) };
}

/// Quantizes one group of 32 inputs symmetrically to i8, handing each value to `put`; returns
/// the group's scale. Both input layouts ([`BlockQ8A`], [`Q8Rows`]) quantize through here.
#[inline]
pub(super) fn quantize_input_group(g: &[f32], mut put: impl FnMut(usize, i8)) -> f32 {
    let amax = g.iter().fold(0f32, |m, x| m.max(x.abs()));
    let inv = if amax > 0.0 { 127.0 / amax } else { 0.0 };
    for (t, &v) in g.iter().enumerate() {
        put(t, round_i8(v * inv));
    }
    amax / 127.0
}

/// Rounds half away from zero, as `f32::round`, for |v| <= 127.5 (without a libm call, which
/// is what `round` is without SSE4.1, so the loops around it vectorise).
#[inline]
pub(super) fn round_i8(v: f32) -> i8 {
    (v + if v >= 0.0 { 0.5 } else { -0.5 }) as i8
}
