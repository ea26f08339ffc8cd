//! The AVX2 + FMA + F16C kernels (256-bit registers).

use std::arch::x86_64::*;

use super::float::Weight;
use super::input::BlockQ8A;
use super::interleaved::{Q4x16, Q8x16, LANES};
use super::kernels::DotsQ;
use super::q8_0::BlockQ8;
use super::quant::{scale_min_k4, BlockQ4K, BlockQ4_0, BlockQ4_1, BlockQ5K, BlockQ6K, QuantBlock, SubScales};
use crate::ops::x86::hsum;

/// A weight element type the kernels widen to f32 lanes.
trait Lanes: Weight {
    /// Eight weights from `p` as f32 lanes (implementations enable the kernels' target
    /// features, or the intrinsics would not inline).
    unsafe fn load(p: *const Self) -> __m256;
}

impl Lanes for f32 {
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn load(p: *const f32) -> __m256 {
        _mm256_loadu_ps(p)
    }
}

impl Lanes for u16 {
    /// bf16: the 16 bits are the high half of an f32.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn load(p: *const u16) -> __m256 {
        _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128(p as *const __m128i)), 16))
    }
}

impl Lanes for half::f16 {
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn load(p: *const half::f16) -> __m256 {
        _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i))
    }
}

streaming_kernels!("avx2,fma,f16c", 8, _mm256_setzero_ps, _mm256_loadu_ps, _mm256_fmadd_ps, _mm256_add_ps, hsum, Lanes);

/// Quantized input rows against one q8 weight row: per group of 32, |w| · (x · sign w)
/// with `maddubs` (u8 x i8 pairs to i16), then to i32 and f32, scaled by both groups'
/// scales.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dots_q8(x: &[BlockQ8A], m: usize, w: &[BlockQ8], g: usize, out: &mut [f32]) {
    let rows = w.len() / g;
    assert!(x.len() >= m * g && out.len() >= m * rows);
    for (wr, out) in w.chunks_exact(g).zip(out.chunks_exact_mut(m)) {
        by_fours!(m, dots_q8_r, x, wr, out);
    }
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dots_q8_r<const R: usize>(i: usize, x: &[BlockQ8A], w: &[BlockQ8], out: &mut [f32]) {
    let g = w.len();
    let ones = _mm256_set1_epi16(1);
    let px: [*const BlockQ8A; R] = std::array::from_fn(|l| x.as_ptr().add((i + l) * g));
    let mut acc = [_mm256_setzero_ps(); R];
    for (b, wb) in w.iter().enumerate() {
        let wq = _mm256_loadu_si256(wb.q.as_ptr() as *const __m256i);
        let aw = _mm256_sign_epi8(wq, wq);
        let dw = _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(wb.d as i32)));
        for l in 0..R {
            let xb = &*px[l].add(b);
            let xq = _mm256_loadu_si256(xb.q.as_ptr() as *const __m256i);
            let p16 = _mm256_maddubs_epi16(aw, _mm256_sign_epi8(xq, wq));
            let p = _mm256_cvtepi32_ps(_mm256_madd_epi16(p16, ones));
            acc[l] = _mm256_fmadd_ps(_mm256_set1_ps(dw * xb.d), p, acc[l]);
        }
    }
    for l in 0..R {
        out[i + l] = hsum(acc[l]);
    }
}

/// A ggml block format's sub-blocks as 32 unsigned bytes in a register (what
/// [`QuantBlock::quants`] gives, without the round trip through memory).
pub(super) trait Avx2Quants: QuantBlock {
    unsafe fn quants_v(&self, j: usize) -> __m256i;
    /// [`QuantBlock::scales`] of sub-block `j` alone, the f16 fields converted in registers
    /// (`half`'s conversion is a call that checks the CPU each time, too slow once a block).
    unsafe fn scales_v(&self, j: usize) -> SubScales;
}

/// The f16 bits `h` as f32 (F16C).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn f16c(h: u16) -> f32 {
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(h))))
}

/// Sub-block `j`'s scales of a Q4_K / Q5_K block.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn k4_scales_v(d: u16, dmin: u16, scales: &[u8; 12], j: usize) -> SubScales {
    let (sc, m) = scale_min_k4(j, scales);
    SubScales::uniform(f16c(d) * f32::from(sc), -(f16c(dmin) * f32::from(m)))
}

/// The 32 nibbles of 16 bytes, low nibbles first (Q4_0 and Q4_1).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn nibbles16(p: *const u8) -> __m256i {
    let v = _mm_loadu_si128(p as *const __m128i);
    let m = _mm_set1_epi8(0x0f);
    _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(v, 4), m), _mm_and_si128(v, m))
}

/// The low (`high == false`) or high nibbles of 32 bytes (Q4_K and Q5_K).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn nibbles32(p: *const u8, high: bool) -> __m256i {
    let v = _mm256_loadu_si256(p as *const __m256i);
    let v = if high { _mm256_srli_epi16(v, 4) } else { v };
    _mm256_and_si256(v, _mm256_set1_epi8(0x0f))
}

impl Avx2Quants for BlockQ4_0 {
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn quants_v(&self, _j: usize) -> __m256i {
        nibbles16(self.qs.as_ptr())
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn scales_v(&self, _j: usize) -> SubScales {
        let d = f16c(self.d);
        SubScales::uniform(d, -8.0 * d)
    }
}

impl Avx2Quants for BlockQ4_1 {
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn quants_v(&self, _j: usize) -> __m256i {
        nibbles16(self.qs.as_ptr())
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn scales_v(&self, _j: usize) -> SubScales {
        SubScales::uniform(f16c(self.d), f16c(self.m))
    }
}

impl Avx2Quants for BlockQ4K {
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn quants_v(&self, j: usize) -> __m256i {
        nibbles32(self.qs.as_ptr().add(32 * (j / 2)), j % 2 == 1)
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn scales_v(&self, j: usize) -> SubScales {
        k4_scales_v(self.d, self.dmin, &self.scales, j)
    }
}

impl Avx2Quants for BlockQ5K {
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn quants_v(&self, j: usize) -> __m256i {
        let low = nibbles32(self.qs.as_ptr().add(32 * (j / 2)), j % 2 == 1);
        let bit = _mm256_set1_epi8((1u8 << j) as i8);
        let qh = _mm256_loadu_si256(self.qh.as_ptr() as *const __m256i);
        let high = _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(qh, bit), bit), _mm256_set1_epi8(16));
        _mm256_or_si256(low, high)
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn scales_v(&self, j: usize) -> SubScales {
        k4_scales_v(self.d, self.dmin, &self.scales, j)
    }
}

impl Avx2Quants for BlockQ6K {
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn quants_v(&self, j: usize) -> __m256i {
        let (n, g) = (j / 4, j % 4);
        let low = nibbles32(self.ql.as_ptr().add(64 * n + 32 * (g % 2)), g >= 2);
        let qh = _mm256_loadu_si256(self.qh.as_ptr().add(32 * n) as *const __m256i);
        // Shifted in 16-bit lanes: what the neighbouring byte brings in lands above bit 1.
        let high = _mm256_and_si256(_mm256_srl_epi16(qh, _mm_cvtsi32_si128(2 * g as i32)), _mm256_set1_epi8(3));
        _mm256_or_si256(low, _mm256_slli_epi16(high, 4))
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn scales_v(&self, j: usize) -> SubScales {
        let d = f16c(self.d);
        let a = [0, 1].map(|h| d * f32::from(self.scales[2 * j + h]));
        SubScales { a, b: a.map(|a| -32.0 * a) }
    }
}

/// `Σ q · x` of unsigned weight bytes and signed input bytes, in eight 32-bit lanes (lane `i`
/// sums bytes `4i..4i + 4`): `maddubs` + `madd` (the quants are at most 63, so no pair sum
/// saturates its 16 bits).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_maddubs(q: __m256i, x: __m256i) -> __m256i {
    _mm256_madd_epi16(_mm256_maddubs_epi16(q, x), _mm256_set1_epi16(1))
}

/// The same in one `vpdpbusd` (AVX-512 VNNI on 256-bit registers).
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl,avx512vnni")]
unsafe fn dot_vnni(q: __m256i, x: __m256i) -> __m256i {
    _mm256_dpbusd_epi32(_mm256_setzero_si256(), q, x)
}

/// The streaming kernel of the ggml block formats, written once for each integer dot product.
/// Each weight block's scales are decoded once and each sub-block unpacked once for all the
/// input rows (up to four at a time).
macro_rules! quant_kernel {
    ($name:ident, $rows:ident, $feat:literal, $dot:ident) => {
        #[target_feature(enable = $feat)]
        unsafe fn $name<B: Avx2Quants>(x: &[BlockQ8A], m: usize, w: &[B], g: usize, out: &mut [f32]) {
            let per_row = g / B::SUBS;
            assert!(g % B::SUBS == 0 && per_row > 0 && x.len() >= m * g && out.len() >= m * (w.len() / per_row));
            for (wr, out) in w.chunks_exact(per_row).zip(out.chunks_exact_mut(m)) {
                by_fours!(m, $rows<B>, x, g, wr, out);
            }
        }

        #[inline]
        #[target_feature(enable = $feat)]
        unsafe fn $rows<const R: usize, B: Avx2Quants>(i: usize, x: &[BlockQ8A], g: usize, w: &[B], out: &mut [f32]) {
            let px: [*const BlockQ8A; R] = std::array::from_fn(|l| x.as_ptr().add((i + l) * g));
            let mut acc = [_mm256_setzero_ps(); R];
            let mut offset = [0f32; R];
            for (bi, wb) in w.iter().enumerate() {
                for j in 0..B::SUBS {
                    let sc = wb.scales_v(j);
                    let q = wb.quants_v(j);
                    let a = _mm256_setr_m128(_mm_set1_ps(sc.a[0]), _mm_set1_ps(sc.a[1]));
                    for l in 0..R {
                        let xb = &*px[l].add(bi * B::SUBS + j);
                        let xq = _mm256_loadu_si256(xb.q.as_ptr() as *const __m256i);
                        let p = _mm256_cvtepi32_ps($dot(q, xq));
                        acc[l] = _mm256_fmadd_ps(p, _mm256_mul_ps(a, _mm256_set1_ps(xb.d)), acc[l]);
                        offset[l] += sc.b[0] * xb.s[0] + sc.b[1] * xb.s[1];
                    }
                }
            }
            for l in 0..R {
                out[i + l] = hsum(acc[l]) + offset[l];
            }
        }
    };
}

quant_kernel!(dots_quant_maddubs, quant_rows_maddubs, "avx2,fma,f16c", dot_maddubs);
quant_kernel!(dots_quant_vnni, quant_rows_vnni, "avx2,fma,f16c,avx512f,avx512vl,avx512vnni", dot_vnni);

/// The streaming kernel of format `B`, on VNNI where `vnni` (the caller has checked the CPU).
pub(super) fn dots_quant_fn<B: Avx2Quants>(vnni: bool) -> DotsQ<B> {
    if vnni {
        |x, m, w, g, o| unsafe { dots_quant_vnni::<B>(x, m, w, g, o) }
    } else {
        |x, m, w, g, o| unsafe { dots_quant_maddubs::<B>(x, m, w, g, o) }
    }
}

/// The weights of whole blocks as f32 (the widened panels of prefill without VNNI, embeddings),
/// to the bit as ggml computes them: `a · (q - ZERO)`, or `a · q + b` in one `fmadd` (which
/// rounds once, as ggml's exact `a · q` plus `b` does).
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn dequantize<B: Avx2Quants>(w: &[B], out: &mut [f32]) {
    assert!(out.len() >= w.len() * 32 * B::SUBS);
    let mut o = out.as_mut_ptr();
    for b in w {
        for j in 0..B::SUBS {
            let (q, sc) = (b.quants_v(j), b.scales_v(j));
            for (h, half) in [_mm256_castsi256_si128(q), _mm256_extracti128_si256::<1>(q)].into_iter().enumerate() {
                let (a, off) = (_mm256_set1_ps(sc.a[h]), _mm256_set1_ps(sc.b[h]));
                let lo = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(half));
                let hi = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128::<8>(half)));
                let w = |q: __m256| {
                    if B::ZERO > 0 {
                        _mm256_mul_ps(_mm256_sub_ps(q, _mm256_set1_ps(f32::from(B::ZERO))), a)
                    } else {
                        _mm256_fmadd_ps(q, a, off)
                    }
                };
                _mm256_storeu_ps(o, w(lo));
                _mm256_storeu_ps(o.add(8), w(hi));
                o = o.add(16);
            }
        }
    }
}

/// The driver of the interleaved kernels: per group of sixteen weight rows, each half of eight
/// for up to four input rows at a time (`$rows::<R>`), the columns past `cols` left alone.
macro_rules! interleaved_halves {
    ($rows:ident, $x:ident, $m:ident, $w:ident, $per_row:ident, $cols:ident, $dst:ident, $ldc:ident) => {{
        let groups = $w.len() / $per_row;
        assert!($x.len() >= $m * $per_row && $cols <= groups * LANES);
        for g in 0..groups {
            let wg = $w.as_ptr().add(g * $per_row);
            for half in 0..2 {
                let valid = $cols.saturating_sub(g * LANES + 8 * half).min(8);
                if valid == 0 {
                    break;
                }
                let out = Out8 { dst: $dst.add(g * LANES + 8 * half), ldc: $ldc, valid };
                by_fours!($m, $rows, $x.as_ptr(), wg, $per_row, half, out);
            }
        }
    }};
}

/// Where the interleaved kernels write: input row `i`'s eight sums go to `dst + i * ldc`, the
/// first `valid` (at most 8) of them.
#[derive(Clone, Copy)]
struct Out8 {
    dst: *mut f32,
    ldc: usize,
    valid: usize,
}

impl Out8 {
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn store(self, i: usize, a: __m256) {
        let o = self.dst.add(i * self.ldc);
        if self.valid == 8 {
            _mm256_storeu_ps(o, a);
        } else {
            let mut tmp = [0f32; 8];
            _mm256_storeu_ps(tmp.as_mut_ptr(), a);
            std::ptr::copy_nonoverlapping(tmp.as_ptr(), o, self.valid);
        }
    }
}

/// See [`super::interleaved::gemm_q4x16`], on 256-bit registers: each group of sixteen weight
/// rows is taken as two halves of eight (one row per 32-bit lane). Per half and block, the four
/// words of nibbles are loaded and split once for up to four input rows; per input row, eight
/// `maddubs` (four inputs broadcast against four weights of each row) summed in 16 bits (a
/// product pair is at most 2 · 15 · 127 = 3,810, so eight of them fit), one `madd` to 32 bits,
/// and the eight rows' sums, one per lane, are scaled and offset in two `fmadd`s. No
/// horizontal sums.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn gemm_q4x16(
    x: &[BlockQ8A],
    m: usize,
    w: &[Q4x16],
    per_row: usize,
    cols: usize,
    dst: *mut f32,
    ldc: usize,
) {
    interleaved_halves!(q4x8_rows, x, m, w, per_row, cols, dst, ldc);
}

/// Input rows `i..i + R` (from `x`, `per_row` groups apart) against half `half` (rows
/// `8 half..`) of one interleaved group of weight rows, into `out`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q4x8_rows<const R: usize>(
    i: usize,
    x: *const BlockQ8A,
    w: *const Q4x16,
    per_row: usize,
    half: usize,
    out: Out8,
) {
    let x = x.add(i * per_row);
    let nib = _mm256_set1_epi8(0x0f);
    let ones = _mm256_set1_epi16(1);
    let mut acc = [_mm256_setzero_ps(); R];
    for b in 0..per_row {
        let blk = &*w.add(b);
        // Word t of this half: rows 8 half..8 half + 8, bytes 4t..4t + 4 of each.
        let qp = blk.q.as_ptr().add(8 * half);
        let mut lo = [_mm256_setzero_si256(); 4];
        let mut hi = [_mm256_setzero_si256(); 4];
        for t in 0..4 {
            let z = _mm256_loadu_si256(qp.add(LANES * t) as *const __m256i);
            lo[t] = _mm256_and_si256(z, nib);
            hi[t] = _mm256_and_si256(_mm256_srli_epi16::<4>(z), nib);
        }
        let d = _mm256_cvtph_ps(_mm_loadu_si128(blk.d.as_ptr().add(8 * half) as *const __m128i));
        let mo = _mm256_cvtph_ps(_mm_loadu_si128(blk.m.as_ptr().add(8 * half) as *const __m128i));
        for (l, a) in acc.iter_mut().enumerate() {
            let xb = &*x.add(l * per_row + b);
            let xq = xb.q.as_ptr() as *const i32;
            // Word t of the low nibbles meets inputs 4t.., that of the high nibbles 16 + 4t...
            let mut s = _mm256_setzero_si256();
            for (t, (&l, &h)) in lo.iter().zip(&hi).enumerate() {
                let xl = _mm256_set1_epi32(xq.add(t).read_unaligned());
                let xh = _mm256_set1_epi32(xq.add(4 + t).read_unaligned());
                s = _mm256_add_epi16(s, _mm256_add_epi16(_mm256_maddubs_epi16(l, xl), _mm256_maddubs_epi16(h, xh)));
            }
            let s = _mm256_cvtepi32_ps(_mm256_madd_epi16(s, ones));
            *a = _mm256_fmadd_ps(s, _mm256_mul_ps(d, _mm256_set1_ps(xb.d)), *a);
            *a = _mm256_fmadd_ps(mo, _mm256_set1_ps(xb.s[0] + xb.s[1]), *a);
        }
    }
    for (l, a) in acc.iter().enumerate() {
        out.store(i + l, *a);
    }
}

/// [`gemm_q4x16`] for interleaved Q8_0 rows. The weights are signed, so each word of four
/// quants per row meets its broadcast inputs as `maddubs(|w|, x · sign w)` (a pair is at most
/// 2 · 128 · 127 = 32,512: no saturation), widened to 32 bits by a `madd` per word.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn gemm_q8x16(
    x: &[BlockQ8A],
    m: usize,
    w: &[Q8x16],
    per_row: usize,
    cols: usize,
    dst: *mut f32,
    ldc: usize,
) {
    interleaved_halves!(q8x8_rows, x, m, w, per_row, cols, dst, ldc);
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q8x8_rows<const R: usize>(
    i: usize,
    x: *const BlockQ8A,
    w: *const Q8x16,
    per_row: usize,
    half: usize,
    out: Out8,
) {
    let x = x.add(i * per_row);
    let ones = _mm256_set1_epi16(1);
    let mut acc = [_mm256_setzero_ps(); R];
    for b in 0..per_row {
        let blk = &*w.add(b);
        let qp = blk.q.as_ptr().add(8 * half);
        let mut aw = [_mm256_setzero_si256(); 8];
        for (t, a) in aw.iter_mut().enumerate() {
            let q = _mm256_loadu_si256(qp.add(LANES * t) as *const __m256i);
            *a = _mm256_sign_epi8(q, q);
        }
        let d = _mm256_cvtph_ps(_mm_loadu_si128(blk.d.as_ptr().add(8 * half) as *const __m128i));
        for (l, a) in acc.iter_mut().enumerate() {
            let xb = &*x.add(l * per_row + b);
            let xq = xb.q.as_ptr() as *const i32;
            let mut s = _mm256_setzero_si256();
            for (t, &awt) in aw.iter().enumerate() {
                let q = _mm256_loadu_si256(qp.add(LANES * t) as *const __m256i);
                let xs = _mm256_sign_epi8(_mm256_set1_epi32(xq.add(t).read_unaligned()), q);
                s = _mm256_add_epi32(s, _mm256_madd_epi16(_mm256_maddubs_epi16(awt, xs), ones));
            }
            *a = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), _mm256_mul_ps(d, _mm256_set1_ps(xb.d)), *a);
        }
    }
    for (l, a) in acc.iter().enumerate() {
        out.store(i + l, *a);
    }
}
