//! Rows of ggml's Q4_0, Q4_1 and Q8_0 interleaved sixteen at a time: the layout the products
//! of these formats run on where the CPU has AVX2 or AVX-512 VNNI (AVX2 takes a group as two
//! halves of eight rows, one row per 32-bit lane of a 256-bit register).
//!
//! Stored as ggml stores them, a row's blocks are 18 or 20 bytes each, and a product streams
//! one row at a time: per block of 32 weights one 256-bit integer dot product, its conversion
//! to f32 and its scaling, then a horizontal sum per row. Interleaved, block `b` of sixteen
//! neighbouring rows is one [`Q4x16`]: four 512-bit words of nibbles (word `t` holds bytes
//! `4t..4t + 4` of each row's 16, one row per 32-bit lane), then the sixteen scales and offsets
//! in f16. One `vpdpbusd` multiplies four weights of all sixteen rows with the same four
//! (broadcast) inputs, so a block of sixteen rows is eight of them, the scales are one load
//! and one conversion for the sixteen rows, and the sums land one row per lane (no horizontal
//! sum). The bytes are the same as stored (320 per sixteen blocks; a last group of fewer rows is
//! padded with zero rows), so the matrix is converted at load, not copied. Q8_0 ([`Q8x16`])
//! is laid out the same way, eight words of quants a block, and keeps each row's sum of quants
//! beside its scale (576 bytes per sixteen blocks, 6 % more than stored).

use half::f16;

use super::input::BlockQ8A;
use super::q8_0::BlockQ8;
use super::quant::{f16_to_f32, BlockQ4_0, BlockQ4_1, QuantBlock};

/// Rows per interleaved group: one 512-bit register holds four weights of each.
pub const LANES: usize = 16;

/// Block `b` of sixteen rows. Word `16 t + r` holds bytes `4t..4t + 4` of row `r`'s sixteen
/// bytes of nibbles (low nibbles: weights `4t..4t + 4`, high nibbles: weights `16 + 4t..`), and
/// `w = d[r] · q + m[r]` (Q4_0's `d · (q - 8)` as `m = -8 d`, exact in f16).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C, align(64))]
pub struct Q4x16 {
    pub q: [u32; 4 * LANES],
    pub d: [u16; LANES],
    pub m: [u16; LANES],
}

const _: () = assert!(std::mem::size_of::<Q4x16>() == 320);

const ZERO_GROUP: Q4x16 = Q4x16 { q: [0; 4 * LANES], d: [0; LANES], m: [0; LANES] };

/// A 4-bit format as the interleaved layout holds it: its 16 bytes of nibbles, `d` and `m`.
pub(super) trait Nibbles: QuantBlock {
    /// The block's nibbles, scale and offset (f16 bits); `None` where the offset does not fit
    /// in f16 (a Q4_0 scale above 8,188).
    fn parts(&self) -> Option<([u8; 16], u16, u16)>;
    fn from_parts(qs: [u8; 16], d: u16, m: u16) -> Self;
}

impl Nibbles for BlockQ4_0 {
    fn parts(&self) -> Option<([u8; 16], u16, u16)> {
        let m = -8.0 * f16_to_f32(self.d);
        let h = f16::from_f32(m);
        (h.to_f32() == m || m.is_nan()).then_some((self.qs, self.d, h.to_bits()))
    }

    fn from_parts(qs: [u8; 16], d: u16, _m: u16) -> Self {
        BlockQ4_0 { d, qs }
    }
}

impl Nibbles for BlockQ4_1 {
    fn parts(&self) -> Option<([u8; 16], u16, u16)> {
        Some((self.qs, self.d, self.m))
    }

    fn from_parts(qs: [u8; 16], d: u16, m: u16) -> Self {
        BlockQ4_1 { d, m, qs }
    }
}

/// The rows of `w` (`per_row` blocks each) interleaved, group by group; `None` if a block does
/// not fit the layout (see [`Nibbles::parts`]).
pub(super) fn interleave<B: Nibbles>(w: &[B], per_row: usize) -> Option<Vec<Q4x16>> {
    assert!(per_row > 0 && w.len().is_multiple_of(per_row));
    let rows = w.len() / per_row;
    let groups = rows.div_ceil(LANES);
    let mut out = Vec::with_capacity(groups * per_row);
    for g in 0..groups {
        for b in 0..per_row {
            let mut blk = ZERO_GROUP;
            for r in 0..LANES.min(rows - g * LANES) {
                let (qs, d, m) = w[(g * LANES + r) * per_row + b].parts()?;
                for t in 0..4 {
                    blk.q[LANES * t + r] = u32::from_le_bytes([qs[4 * t], qs[4 * t + 1], qs[4 * t + 2], qs[4 * t + 3]]);
                }
                blk.d[r] = d;
                blk.m[r] = m;
            }
            out.push(blk);
        }
    }
    Some(out)
}

/// Block `b` of row `r` in its own format again.
pub(super) fn block_of<B: Nibbles>(w: &[Q4x16], per_row: usize, r: usize, b: usize) -> B {
    let (blk, l) = (&w[(r / LANES) * per_row + b], r % LANES);
    let mut qs = [0u8; 16];
    for t in 0..4 {
        qs[4 * t..4 * t + 4].copy_from_slice(&blk.q[LANES * t + l].to_le_bytes());
    }
    B::from_parts(qs, blk.d[l], blk.m[l])
}

/// Rows `r0..r0 + out.len() / (32 per_row)` as f32, as ggml dequantizes them.
pub(super) fn dequantize_rows<B: Nibbles>(w: &[Q4x16], per_row: usize, r0: usize, out: &mut [f32]) {
    for (i, row) in out.chunks_exact_mut(32 * per_row).enumerate() {
        for (b, o) in row.chunks_exact_mut(32).enumerate() {
            block_of::<B>(w, per_row, r0 + i, b).dequantize(o);
        }
    }
}

/// The portable interleaved product, the reference of the SIMD one: for each of the `m`
/// quantized input rows `x_i` (`per_row` groups each) and each of the first `cols` rows `j` of
/// the groups in `w`, `dst[i * ldc + j] = x_i · w_j`.
///
/// # Safety
/// `dst` must be valid for writes at `i * ldc + j` for every `i < m`, `j < cols`, with no
/// other thread touching those elements meanwhile.
pub(super) unsafe fn gemm_q4x16(
    x: &[BlockQ8A],
    m: usize,
    w: &[Q4x16],
    per_row: usize,
    cols: usize,
    dst: *mut f32,
    ldc: usize,
) {
    let groups = w.len() / per_row;
    assert!(x.len() >= m * per_row && cols <= groups * LANES);
    for (g, wg) in w.chunks_exact(per_row).enumerate() {
        for i in 0..m {
            let xr = &x[i * per_row..(i + 1) * per_row];
            let mut acc = [0f32; LANES];
            for (blk, xb) in wg.iter().zip(xr) {
                let xs = xb.s[0] + xb.s[1];
                for (r, a) in acc.iter_mut().enumerate() {
                    let mut sum = 0i32;
                    for t in 0..4 {
                        let bytes = blk.q[LANES * t + r].to_le_bytes();
                        for (j, &v) in bytes.iter().enumerate() {
                            sum += i32::from(v & 0xf) * i32::from(xb.q[4 * t + j]);
                            sum += i32::from(v >> 4) * i32::from(xb.q[16 + 4 * t + j]);
                        }
                    }
                    *a += sum as f32 * (f16_to_f32(blk.d[r]) * xb.d);
                    *a += f16_to_f32(blk.m[r]) * xs;
                }
            }
            for (r, &a) in acc.iter().enumerate().take(cols.saturating_sub(g * LANES)) {
                *dst.add(i * ldc + g * LANES + r) = a;
            }
        }
    }
}

/// Block `b` of sixteen rows of ggml's Q8_0: word `16 t + r` holds quants `4t..4t + 4` of row
/// `r` (signed bytes, as stored), then the rows' f16 scales and the sums of their quants (what
/// the products take back out after biasing the inputs to unsigned bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C, align(64))]
pub struct Q8x16 {
    pub q: [u32; 8 * LANES],
    pub d: [u16; LANES],
    pub sum: [i16; LANES],
}

const _: () = assert!(std::mem::size_of::<Q8x16>() == 576);

const ZERO_GROUP8: Q8x16 = Q8x16 { q: [0; 8 * LANES], d: [0; LANES], sum: [0; LANES] };

/// The Q8_0 rows of `w` (`per_row` blocks each) interleaved, group by group.
pub(super) fn interleave_q8(w: &[BlockQ8], per_row: usize) -> Vec<Q8x16> {
    assert!(per_row > 0 && w.len().is_multiple_of(per_row));
    let rows = w.len() / per_row;
    let groups = rows.div_ceil(LANES);
    let mut out = Vec::with_capacity(groups * per_row);
    for g in 0..groups {
        for b in 0..per_row {
            let mut blk = ZERO_GROUP8;
            for r in 0..LANES.min(rows - g * LANES) {
                let src = &w[(g * LANES + r) * per_row + b];
                for t in 0..8 {
                    let q = &src.q[4 * t..4 * t + 4];
                    blk.q[LANES * t + r] = u32::from_le_bytes([q[0] as u8, q[1] as u8, q[2] as u8, q[3] as u8]);
                }
                blk.d[r] = src.d;
                blk.sum[r] = src.q.iter().map(|&q| i16::from(q)).sum();
            }
            out.push(blk);
        }
    }
    out
}

/// Block `b` of row `r` as Q8_0 again.
pub(super) fn block_of_q8(w: &[Q8x16], per_row: usize, r: usize, b: usize) -> BlockQ8 {
    let (blk, l) = (&w[(r / LANES) * per_row + b], r % LANES);
    let mut q = [0i8; 32];
    for t in 0..8 {
        for (j, byte) in blk.q[LANES * t + l].to_le_bytes().into_iter().enumerate() {
            q[4 * t + j] = byte as i8;
        }
    }
    BlockQ8 { d: blk.d[l], q }
}

/// Rows `r0..r0 + out.len() / (32 per_row)` of interleaved Q8_0 as f32.
pub(super) fn dequantize_rows_q8(w: &[Q8x16], per_row: usize, r0: usize, out: &mut [f32]) {
    for (i, row) in out.chunks_exact_mut(32 * per_row).enumerate() {
        for (b, o) in row.chunks_exact_mut(32).enumerate() {
            let blk = block_of_q8(w, per_row, r0 + i, b);
            let d = f16_to_f32(blk.d);
            for (o, &q) in o.iter_mut().zip(&blk.q) {
                *o = d * f32::from(q);
            }
        }
    }
}

/// [`gemm_q4x16`] for interleaved Q8_0 rows.
///
/// # Safety
/// As [`gemm_q4x16`].
pub(super) unsafe fn gemm_q8x16(
    x: &[BlockQ8A],
    m: usize,
    w: &[Q8x16],
    per_row: usize,
    cols: usize,
    dst: *mut f32,
    ldc: usize,
) {
    let groups = w.len() / per_row;
    assert!(x.len() >= m * per_row && cols <= groups * LANES);
    for (g, wg) in w.chunks_exact(per_row).enumerate() {
        for i in 0..m {
            let xr = &x[i * per_row..(i + 1) * per_row];
            let mut acc = [0f32; LANES];
            for (blk, xb) in wg.iter().zip(xr) {
                for (r, a) in acc.iter_mut().enumerate() {
                    let mut sum = 0i32;
                    for t in 0..8 {
                        for (j, v) in blk.q[LANES * t + r].to_le_bytes().into_iter().enumerate() {
                            sum += i32::from(v as i8) * i32::from(xb.q[4 * t + j]);
                        }
                    }
                    *a += sum as f32 * (f16_to_f32(blk.d[r]) * xb.d);
                }
            }
            for (r, &a) in acc.iter().enumerate().take(cols.saturating_sub(g * LANES)) {
                *dst.add(i * ldc + g * LANES + r) = a;
            }
        }
    }
}
