//! The AVX-512 kernels (F / BW / VL, with VNNI and BF16 where the CPU has them): the f32
//! and bf16 streaming kernels with twice the lanes, the native bf16 and the int8 GEMMs.

use std::arch::x86_64::*;

use super::avx2::Avx2Quants;
use super::float::Weight;
use super::input::{BfPairs, BlockQ8A, Q8Rows};
use super::interleaved::{Q4x16, Q8x16, LANES};
use super::q8_0::BlockQ8;
use super::quant::{BlockQ4K, BlockQ4_0, BlockQ4_1, BlockQ5K, SubScales};

/// A weight element type widened to sixteen f32 lanes.
trait Lanes16: Weight {
    unsafe fn load(p: *const Self) -> __m512;
}

impl Lanes16 for f32 {
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
    unsafe fn load(p: *const f32) -> __m512 {
        _mm512_loadu_ps(p)
    }
}

impl Lanes16 for u16 {
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
    unsafe fn load(p: *const u16) -> __m512 {
        _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256(p as *const __m256i)), 16))
    }
}

impl Lanes16 for half::f16 {
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
    unsafe fn load(p: *const half::f16) -> __m512 {
        _mm512_cvtph_ps(_mm256_loadu_si256(p as *const __m256i))
    }
}

streaming_kernels!(
    "avx512f,avx512bw,avx512vl,avx2,fma,f16c",
    16,
    _mm512_setzero_ps,
    _mm512_loadu_ps,
    _mm512_fmadd_ps,
    _mm512_add_ps,
    _mm512_reduce_add_ps,
    Lanes16
);

/// bf16 input rows against two bf16 weight rows: `vdpbf16ps` multiplies 32 bf16 pairs per
/// instruction into 16 f32 sums; the tail of a row is read with a mask (zeros past the end).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16,avx2,fma,f16c")]
pub unsafe fn dots2_bf16_native(x: &[u16], m: usize, w0: &[u16], w1: &[u16], o0: &mut [f32], o1: &mut [f32]) {
    assert!(w0.len() == w1.len() && x.len() >= m * w0.len() && o0.len() >= m && o1.len() >= m);
    by_fours!(m, dots2_native_r, x, w0, w1, o0, o1);
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16,avx2,fma,f16c")]
unsafe fn load32(p: *const u16, mask: __mmask32) -> __m512bh {
    std::mem::transmute::<__m512i, __m512bh>(_mm512_maskz_loadu_epi16(mask, p as *const i16))
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16,avx2,fma,f16c")]
unsafe fn dots2_native_r<const R: usize>(i: usize, x: &[u16], w0: &[u16], w1: &[u16], o0: &mut [f32], o1: &mut [f32]) {
    let k = w0.len();
    let (p0, p1) = (w0.as_ptr(), w1.as_ptr());
    let px: [*const u16; R] = std::array::from_fn(|l| x.as_ptr().add((i + l) * k));
    let mut a0 = [_mm512_setzero_ps(); R];
    let mut a1 = [_mm512_setzero_ps(); R];
    let mut t = 0;
    while t < k {
        let mask: __mmask32 = if k - t >= 32 { !0 } else { (1u32 << (k - t)) - 1 };
        let v0 = load32(p0.add(t), mask);
        let v1 = load32(p1.add(t), mask);
        for l in 0..R {
            let xv = load32(px[l].add(t), mask);
            a0[l] = _mm512_dpbf16_ps(a0[l], v0, xv);
            a1[l] = _mm512_dpbf16_ps(a1[l], v1, xv);
        }
        t += 32;
    }
    for l in 0..R {
        o0[i + l] = _mm512_reduce_add_ps(a0[l]);
        o1[i + l] = _mm512_reduce_add_ps(a1[l]);
    }
}

/// The blocking both packed GEMMs share. For every `NC` weight rows and every run of up to
/// `max_rb` blocks of `lanes` input rows, `tile(b, rb, j, cj, out)` computes blocks
/// `b..b + rb` against weight rows `j..j + cj` (at most `max_cj`) into rows `0..rb * lanes`
/// of `out` (`NC` apart), an L1-sized buffer copied out row by row: an accumulator is a
/// column of the output, and written straight to it each of its elements would touch a
/// different cache line.
///
/// # Safety
/// As the GEMMs': `dst` takes `m` rows of `rows` columns, `ldc` apart; `rb * lanes <= 64`.
#[inline]
unsafe fn blocked(
    m: usize,
    rows: usize,
    (lanes, max_rb, max_cj): (usize, usize, usize),
    dst: *mut f32,
    ldc: usize,
    mut tile: impl FnMut(usize, usize, usize, usize, *mut f32),
) {
    const NC: usize = super::NATIVE_GEMM_COLS;
    assert!(max_rb * lanes <= 64);
    let blocks = m.div_ceil(lanes);
    // Not zeroed: every element copied out below was written by a tile first.
    let mut buf = std::mem::MaybeUninit::<[f32; 64 * NC]>::uninit();
    let buf = buf.as_mut_ptr() as *mut f32;
    for j0 in (0..rows).step_by(NC) {
        let nc = (rows - j0).min(NC);
        let mut b = 0;
        while b < blocks {
            let rb = (blocks - b).min(max_rb);
            let mut j = 0;
            while j < nc {
                let cj = (nc - j).min(max_cj);
                tile(b, rb, j0 + j, cj, buf.add(j));
                j += cj;
            }
            let i0 = b * lanes;
            for r in 0..(rb * lanes).min(m - i0) {
                std::ptr::copy_nonoverlapping(buf.add(r * NC), dst.add((i0 + r) * ldc + j0), nc);
            }
            b += rb;
        }
    }
}

/// See [`super::GemmBf16Native`]. Register tile: up to 4 blocks of 16 input rows by up to 6
/// weight rows, 24 accumulators; per pair of columns 4 loads of inputs, 6 broadcasts of
/// weight pairs and 24 `vdpbf16ps`; tiles through [`blocked`]'s buffer.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16,avx2,fma,f16c")]
pub unsafe fn gemm_bf16_native(x: &BfPairs, w: &[u16], rows: usize, dst: *mut f32, ldc: usize) {
    const NC: usize = super::NATIVE_GEMM_COLS;
    let k = 2 * x.pairs;
    assert!(w.len() >= rows * k && x.words.len() >= x.m.div_ceil(16) * 16 * x.pairs);
    blocked(x.m, rows, (16, 4, 6), dst, ldc, |b, rb, j, cj, out| {
        let wj = w.as_ptr().add(j * k);
        macro_rules! tile {
            ($($r:literal),*) => {
                match (rb, cj) {
                    $( (r, 6) if r == $r => bf16_tile::<$r, 6>(x, b, wj, k, out, NC),
                       (r, 5) if r == $r => bf16_tile::<$r, 5>(x, b, wj, k, out, NC),
                       (r, 4) if r == $r => bf16_tile::<$r, 4>(x, b, wj, k, out, NC),
                       (r, 3) if r == $r => bf16_tile::<$r, 3>(x, b, wj, k, out, NC),
                       (r, 2) if r == $r => bf16_tile::<$r, 2>(x, b, wj, k, out, NC),
                       (r, 1) if r == $r => bf16_tile::<$r, 1>(x, b, wj, k, out, NC), )*
                    _ => unreachable!("tile {rb} x {cj}"),
                }
            };
        }
        tile!(1, 2, 3, 4);
    });
}

/// Blocks `b0..b0 + R` of the packed inputs against `C` weight rows from `w` (`k` apart),
/// into rows `0..16 R` of `dst` (`ldc` apart).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16,avx2,fma,f16c")]
unsafe fn bf16_tile<const R: usize, const C: usize>(
    x: &BfPairs,
    b0: usize,
    w: *const u16,
    k: usize,
    dst: *mut f32,
    ldc: usize,
) {
    let pairs = x.pairs;
    let xs: [*const u32; R] = std::array::from_fn(|r| x.words.as_ptr().add((b0 + r) * pairs * 16));
    let mut acc = [[_mm512_setzero_ps(); R]; C];
    for p in 0..pairs {
        let xv: [__m512bh; R] = std::array::from_fn(|r| {
            std::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512(xs[r].add(p * 16) as *const _))
        });
        for (c, a) in acc.iter_mut().enumerate() {
            let pair = (w.add(c * k + 2 * p) as *const i32).read_unaligned();
            let wv = std::mem::transmute::<__m512i, __m512bh>(_mm512_set1_epi32(pair));
            for r in 0..R {
                a[r] = _mm512_dpbf16_ps(a[r], xv[r], wv);
            }
        }
    }
    // Each accumulator holds one weight row's sums for 16 input rows: a column of the
    // tile (rows past m are padding, written all the same).
    let mut col = [0f32; 16];
    for (c, a) in acc.iter().enumerate() {
        for (r, v) in a.iter().enumerate() {
            _mm512_storeu_ps(col.as_mut_ptr(), *v);
            for (l, &s) in col.iter().enumerate() {
                *dst.add((r * 16 + l) * ldc + c) = s;
            }
        }
    }
}

/// How many q8 groups (34 bytes each) ahead of the one in use the GEMM prefetches.
const PREFETCH_GROUPS: usize = 4;

/// See [`super::GemmQ8`]. Register tile, 16-row blocks: up to 4 blocks by up to 3 weight
/// rows, 12 integer and 12 f32 accumulators; per four columns 4 loads of inputs, 3
/// broadcasts of weights (biased to u8 by flipping their sign bits) and 12 `vpdpbusd`; per
/// group of 32 columns the integer sums, less 128 · Σq, go into f32 with both scales.
/// 8-row blocks (products of at most 8 rows) run the same on 256-bit registers, one block
/// by up to 8 weight rows. Tiles through [`blocked`]'s buffer.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub unsafe fn gemm_q8_vnni(x: &Q8Rows, w: &[BlockQ8], rows: usize, dst: *mut f32, ldc: usize) {
    const NC: usize = super::NATIVE_GEMM_COLS;
    let (g, lanes) = (x.groups, x.lanes);
    assert!(lanes == 8 || lanes == 16);
    assert!(w.len() >= rows * g && x.words.len() >= x.m.div_ceil(lanes) * lanes * (g * 8 + 2 * g));
    let shape = if lanes == 16 { (16, 4, 3) } else { (8, 1, 8) };
    blocked(x.m, rows, shape, dst, ldc, |b, rb, j, cj, out| {
        let wj = w.as_ptr().add(j * g);
        macro_rules! tile {
            ($($r:literal),*) => {
                match (rb, cj) {
                    $( (r, 3) if r == $r => q8_tile::<$r, 3>(x, b, wj, out, NC),
                       (r, 2) if r == $r => q8_tile::<$r, 2>(x, b, wj, out, NC),
                       (r, 1) if r == $r => q8_tile::<$r, 1>(x, b, wj, out, NC), )*
                    _ => unreachable!("tile {rb} x {cj}"),
                }
            };
        }
        if lanes == 16 {
            tile!(1, 2, 3, 4);
        } else {
            match cj {
                8 => q8_tile8::<8>(x, b, wj, out, NC),
                7 => q8_tile8::<7>(x, b, wj, out, NC),
                6 => q8_tile8::<6>(x, b, wj, out, NC),
                5 => q8_tile8::<5>(x, b, wj, out, NC),
                4 => q8_tile8::<4>(x, b, wj, out, NC),
                3 => q8_tile8::<3>(x, b, wj, out, NC),
                2 => q8_tile8::<2>(x, b, wj, out, NC),
                _ => q8_tile8::<1>(x, b, wj, out, NC),
            }
        }
    });
}

/// Block `b0` of 8-row packed inputs against `C` q8 weight rows, as [`q8_tile`] on 256-bit
/// registers, into rows `0..8` of `dst` (`ldc` apart).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn q8_tile8<const C: usize>(x: &Q8Rows, b0: usize, w: *const BlockQ8, dst: *mut f32, ldc: usize) {
    let g = x.groups;
    let (quads, stride) = (g * 8, 8 * (g * 8 + 2 * g));
    let base = x.words.as_ptr().add(b0 * stride);
    let flip = _mm256_set1_epi32(0x8080_8080u32 as i32);
    let mut acc = [_mm256_setzero_ps(); C];
    for gi in 0..g {
        let neg = _mm256_sub_epi32(
            _mm256_setzero_si256(),
            _mm256_loadu_si256(base.add((quads + g + gi) * 8) as *const __m256i),
        );
        let mut sums = [neg; C];
        for c in 0..C {
            // The weights are read four bytes at a time from C rows at once, a pattern the
            // hardware prefetchers follow too late: ask for a few groups ahead.
            _mm_prefetch::<_MM_HINT_T0>(w.wrapping_add(c * g + gi + PREFETCH_GROUPS) as *const i8);
        }
        for t in 0..8 {
            let xv = _mm256_loadu_si256(base.add((gi * 8 + t) * 8) as *const __m256i);
            for (c, s) in sums.iter_mut().enumerate() {
                let quad = ((*w.add(c * g + gi)).q.as_ptr().add(4 * t) as *const i32).read_unaligned();
                *s = _mm256_dpbusd_epi32(*s, _mm256_xor_si256(_mm256_set1_epi32(quad), flip), xv);
            }
        }
        let sx = _mm256_loadu_ps(base.add((quads + gi) * 8) as *const f32);
        for (c, (a, s)) in acc.iter_mut().zip(&sums).enumerate() {
            let dw = _mm256_set1_ps(_mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(i32::from((*w.add(c * g + gi)).d)))));
            *a = _mm256_fmadd_ps(_mm256_cvtepi32_ps(*s), _mm256_mul_ps(sx, dw), *a);
        }
    }
    let mut col = [0f32; 8];
    for (c, a) in acc.iter().enumerate() {
        _mm256_storeu_ps(col.as_mut_ptr(), *a);
        for (l, &s) in col.iter().enumerate() {
            *dst.add(l * ldc + c) = s;
        }
    }
}

/// Blocks `b0..b0 + R` of the packed inputs against `C` q8 weight rows from `w` (`x.groups`
/// groups apart), into rows `0..16 R` of `dst` (`ldc` apart).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn q8_tile<const R: usize, const C: usize>(x: &Q8Rows, b0: usize, w: *const BlockQ8, dst: *mut f32, ldc: usize) {
    let g = x.groups;
    let (quads, stride) = (g * 8, 16 * (g * 8 + 2 * g));
    let base: [*const u32; R] = std::array::from_fn(|r| x.words.as_ptr().add((b0 + r) * stride));
    let flip = _mm512_set1_epi32(0x8080_8080u32 as i32);
    let mut acc = [[_mm512_setzero_ps(); R]; C];
    for gi in 0..g {
        // The sums start at -128 · Σq, taking the weights' bias back out up front.
        let neg: [__m512i; R] = std::array::from_fn(|r| {
            _mm512_sub_epi32(_mm512_setzero_si512(), _mm512_loadu_si512(base[r].add((quads + g + gi) * 16) as *const _))
        });
        let mut sums = [neg; C];
        for c in 0..C {
            _mm_prefetch::<_MM_HINT_T0>(w.wrapping_add(c * g + gi + PREFETCH_GROUPS) as *const i8);
        }
        for t in 0..8 {
            let xv: [__m512i; R] =
                std::array::from_fn(|r| _mm512_loadu_si512(base[r].add((gi * 8 + t) * 16) as *const _));
            for (c, s) in sums.iter_mut().enumerate() {
                let quad = ((*w.add(c * g + gi)).q.as_ptr().add(4 * t) as *const i32).read_unaligned();
                let wv = _mm512_xor_si512(_mm512_set1_epi32(quad), flip);
                for r in 0..R {
                    s[r] = _mm512_dpbusd_epi32(s[r], wv, xv[r]);
                }
            }
        }
        let sx: [__m512; R] = std::array::from_fn(|r| _mm512_loadu_ps(base[r].add((quads + gi) * 16) as *const f32));
        for (c, (a, s)) in acc.iter_mut().zip(&sums).enumerate() {
            let dw = _mm512_set1_ps(_mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(i32::from((*w.add(c * g + gi)).d)))));
            for r in 0..R {
                a[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s[r]), _mm512_mul_ps(sx[r], dw), a[r]);
            }
        }
    }
    let mut col = [0f32; 16];
    for (c, a) in acc.iter().enumerate() {
        for (r, v) in a.iter().enumerate() {
            _mm512_storeu_ps(col.as_mut_ptr(), *v);
            for (l, &s) in col.iter().enumerate() {
                *dst.add((r * 16 + l) * ldc + c) = s;
            }
        }
    }
}

/// A ggml block format the VNNI GEMM takes: unsigned quants with one scale and one offset per
/// sub-block of 32 (Q6_K, with a scale per 16, stays on the streaming kernels and the widened
/// panels).
pub(super) trait GemmBlock: Avx2Quants {}
impl GemmBlock for BlockQ4_0 {}
impl GemmBlock for BlockQ4_1 {}
impl GemmBlock for BlockQ4K {}
impl GemmBlock for BlockQ5K {}

/// Sub-block `gi % SUBS` of block `gi / SUBS` of `C` weight rows (`per_row` blocks apart): the
/// quants as eight words of four bytes each, and the scales.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn unpack<B: GemmBlock, const C: usize>(
    w: *const B,
    per_row: usize,
    gi: usize,
) -> ([[u32; 8]; C], [SubScales; C]) {
    let (bi, j) = (gi / B::SUBS, gi % B::SUBS);
    let mut q = [[0u32; 8]; C];
    let mut sc = [SubScales::default(); C];
    for c in 0..C {
        let blk = &*w.add(c * per_row + bi);
        _mm256_storeu_si256(q[c].as_mut_ptr() as *mut __m256i, blk.quants_v(j));
        sc[c] = blk.scales_v(j);
    }
    (q, sc)
}

/// [`gemm_q8_vnni`] for a ggml block format: the same packed inputs and register tiles, each
/// weight row's sub-block unpacked once per group to unsigned bytes (no bias to take back
/// out), and per group `a · dx · Σ q·xq + b · dx · Σ xq`, the input sums from the packed
/// `128 · Σ xq`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub unsafe fn gemm_quant_vnni<B: GemmBlock>(x: &Q8Rows, w: &[B], rows: usize, dst: *mut f32, ldc: usize) {
    const NC: usize = super::NATIVE_GEMM_COLS;
    let (g, lanes) = (x.groups, x.lanes);
    let per_row = g / B::SUBS;
    assert!(lanes == 8 || lanes == 16);
    assert!(g.is_multiple_of(B::SUBS) && w.len() >= rows * per_row);
    assert!(x.words.len() >= x.m.div_ceil(lanes) * lanes * (g * 8 + 2 * g));
    let shape = if lanes == 16 { (16, 4, 3) } else { (8, 1, 8) };
    blocked(x.m, rows, shape, dst, ldc, |b, rb, j, cj, out| {
        let wj = w.as_ptr().add(j * per_row);
        macro_rules! tile {
            ($($r:literal),*) => {
                match (rb, cj) {
                    $( (r, 3) if r == $r => quant_tile::<B, $r, 3>(x, b, wj, per_row, out, NC),
                       (r, 2) if r == $r => quant_tile::<B, $r, 2>(x, b, wj, per_row, out, NC),
                       (r, 1) if r == $r => quant_tile::<B, $r, 1>(x, b, wj, per_row, out, NC), )*
                    _ => unreachable!("tile {rb} x {cj}"),
                }
            };
        }
        if lanes == 16 {
            tile!(1, 2, 3, 4);
        } else {
            match cj {
                8 => quant_tile8::<B, 8>(x, b, wj, per_row, out, NC),
                7 => quant_tile8::<B, 7>(x, b, wj, per_row, out, NC),
                6 => quant_tile8::<B, 6>(x, b, wj, per_row, out, NC),
                5 => quant_tile8::<B, 5>(x, b, wj, per_row, out, NC),
                4 => quant_tile8::<B, 4>(x, b, wj, per_row, out, NC),
                3 => quant_tile8::<B, 3>(x, b, wj, per_row, out, NC),
                2 => quant_tile8::<B, 2>(x, b, wj, per_row, out, NC),
                _ => quant_tile8::<B, 1>(x, b, wj, per_row, out, NC),
            }
        }
    });
}

/// Blocks `b0..b0 + R` of the packed inputs against `C` weight rows of format `B`, into rows
/// `0..16 R` of `dst` (`ldc` apart).
// `t` indexes the inputs' packed words and each row's quants alike.
#[allow(clippy::needless_range_loop)]
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn quant_tile<B: GemmBlock, const R: usize, const C: usize>(
    x: &Q8Rows,
    b0: usize,
    w: *const B,
    per_row: usize,
    dst: *mut f32,
    ldc: usize,
) {
    let g = x.groups;
    let (quads, stride) = (g * 8, 16 * (g * 8 + 2 * g));
    let base: [*const u32; R] = std::array::from_fn(|r| x.words.as_ptr().add((b0 + r) * stride));
    let mut acc = [[_mm512_setzero_ps(); R]; C];
    for gi in 0..g {
        let (q, sc) = unpack::<B, C>(w, per_row, gi);
        let mut sums = [[_mm512_setzero_si512(); R]; C];
        for t in 0..8 {
            let xv: [__m512i; R] =
                std::array::from_fn(|r| _mm512_loadu_si512(base[r].add((gi * 8 + t) * 16) as *const _));
            for (c, s) in sums.iter_mut().enumerate() {
                let wv = _mm512_set1_epi32(q[c][t] as i32);
                for r in 0..R {
                    s[r] = _mm512_dpbusd_epi32(s[r], wv, xv[r]);
                }
            }
        }
        let sx: [__m512; R] = std::array::from_fn(|r| _mm512_loadu_ps(base[r].add((quads + gi) * 16) as *const f32));
        let sxs: [__m512; R] = std::array::from_fn(|r| {
            let corr = _mm512_loadu_si512(base[r].add((quads + g + gi) * 16) as *const _);
            _mm512_mul_ps(sx[r], _mm512_cvtepi32_ps(_mm512_srai_epi32::<7>(corr)))
        });
        for (c, (a, s)) in acc.iter_mut().zip(&sums).enumerate() {
            let (sa, sb) = (_mm512_set1_ps(sc[c].a[0]), _mm512_set1_ps(sc[c].b[0]));
            for r in 0..R {
                a[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s[r]), _mm512_mul_ps(sx[r], sa), a[r]);
                a[r] = _mm512_fmadd_ps(sxs[r], sb, a[r]);
            }
        }
    }
    let mut col = [0f32; 16];
    for (c, a) in acc.iter().enumerate() {
        for (r, v) in a.iter().enumerate() {
            _mm512_storeu_ps(col.as_mut_ptr(), *v);
            for (l, &s) in col.iter().enumerate() {
                *dst.add((r * 16 + l) * ldc + c) = s;
            }
        }
    }
}

/// Block `b0` of 8-row packed inputs against `C` weight rows of format `B`, as [`quant_tile`]
/// on 256-bit registers, into rows `0..8` of `dst` (`ldc` apart).
// `t` indexes the inputs' packed words and each row's quants alike.
#[allow(clippy::needless_range_loop)]
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn quant_tile8<B: GemmBlock, const C: usize>(
    x: &Q8Rows,
    b0: usize,
    w: *const B,
    per_row: usize,
    dst: *mut f32,
    ldc: usize,
) {
    let g = x.groups;
    let (quads, stride) = (g * 8, 8 * (g * 8 + 2 * g));
    let base = x.words.as_ptr().add(b0 * stride);
    let mut acc = [_mm256_setzero_ps(); C];
    for gi in 0..g {
        let (q, sc) = unpack::<B, C>(w, per_row, gi);
        let mut sums = [_mm256_setzero_si256(); C];
        for t in 0..8 {
            let xv = _mm256_loadu_si256(base.add((gi * 8 + t) * 8) as *const __m256i);
            for (c, s) in sums.iter_mut().enumerate() {
                *s = _mm256_dpbusd_epi32(*s, _mm256_set1_epi32(q[c][t] as i32), xv);
            }
        }
        let sx = _mm256_loadu_ps(base.add((quads + gi) * 8) as *const f32);
        let corr = _mm256_loadu_si256(base.add((quads + g + gi) * 8) as *const __m256i);
        let sxs = _mm256_mul_ps(sx, _mm256_cvtepi32_ps(_mm256_srai_epi32::<7>(corr)));
        for (c, (a, s)) in acc.iter_mut().zip(&sums).enumerate() {
            *a = _mm256_fmadd_ps(_mm256_cvtepi32_ps(*s), _mm256_mul_ps(sx, _mm256_set1_ps(sc[c].a[0])), *a);
            *a = _mm256_fmadd_ps(sxs, _mm256_set1_ps(sc[c].b[0]), *a);
        }
    }
    let mut col = [0f32; 8];
    for (c, a) in acc.iter().enumerate() {
        _mm256_storeu_ps(col.as_mut_ptr(), *a);
        for (l, &s) in col.iter().enumerate() {
            *dst.add(l * ldc + c) = s;
        }
    }
}

/// The tiling both interleaved GEMMs share: each group of sixteen weight rows (its last one masked
/// to the `cols` that exist) against the input rows four at a time, through `$rows::<R>` for the
/// `R` rows left. A macro so that each GEMM keeps its own row kernel inlined.
macro_rules! interleaved_tiles {
    ($rows:ident, $x:ident, $m:ident, $w:ident, $per_row:ident, $cols:ident, $dst:ident, $ldc:ident) => {{
        let groups = $w.len() / $per_row;
        assert!($x.len() >= $m * $per_row && $cols <= groups * LANES);
        for g in 0..groups {
            let valid = $cols.saturating_sub(g * LANES).min(LANES);
            if valid == 0 {
                break;
            }
            let mask: __mmask16 = if valid == LANES { !0 } else { (1u16 << valid) - 1 };
            let wg = $w.as_ptr().add(g * $per_row);
            let out = $dst.add(g * LANES);
            let mut i = 0;
            while i < $m {
                let xi = $x.as_ptr().add(i * $per_row);
                let o = out.add(i * $ldc);
                match $m - i {
                    1 => $rows::<1>(xi, wg, $per_row, o, $ldc, mask),
                    2 => $rows::<2>(xi, wg, $per_row, o, $ldc, mask),
                    3 => $rows::<3>(xi, wg, $per_row, o, $ldc, mask),
                    _ => $rows::<4>(xi, wg, $per_row, o, $ldc, mask),
                }
                i += 4;
            }
        }
    }};
}

/// See [`super::interleaved::gemm_q4x16`]: per interleaved block (sixteen weight rows), the
/// four words of nibbles are loaded and split once for up to four input rows; per input row,
/// eight `vpdpbusd` (four inputs broadcast against four weights of each row) give the sixteen
/// rows' integer sums in the lanes of one register, scaled and offset in two `fmadd`s.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub unsafe fn gemm_q4x16_vnni(
    x: &[BlockQ8A],
    m: usize,
    w: &[Q4x16],
    per_row: usize,
    cols: usize,
    dst: *mut f32,
    ldc: usize,
) {
    interleaved_tiles!(q4x16_rows, x, m, w, per_row, cols, dst, ldc);
}

/// `R` input rows (from `x`, `per_row` groups apart) against one interleaved group of weight
/// rows, into `dst` (`ldc` apart), the lanes of `mask` only.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn q4x16_rows<const R: usize>(
    x: *const BlockQ8A,
    w: *const Q4x16,
    per_row: usize,
    dst: *mut f32,
    ldc: usize,
    mask: __mmask16,
) {
    let nib = _mm512_set1_epi8(0x0f);
    let mut acc = [_mm512_setzero_ps(); R];
    for b in 0..per_row {
        let blk = &*w.add(b);
        let qp = blk.q.as_ptr() as *const __m512i;
        let mut lo = [_mm512_setzero_si512(); 4];
        let mut hi = [_mm512_setzero_si512(); 4];
        for t in 0..4 {
            let z = _mm512_load_si512(qp.add(t) as *const _);
            lo[t] = _mm512_and_si512(z, nib);
            hi[t] = _mm512_and_si512(_mm512_srli_epi16::<4>(z), nib);
        }
        let d = _mm512_cvtph_ps(_mm256_load_si256(blk.d.as_ptr() as *const __m256i));
        let mo = _mm512_cvtph_ps(_mm256_load_si256(blk.m.as_ptr() as *const __m256i));
        for (l, a) in acc.iter_mut().enumerate() {
            let xb = &*x.add(l * per_row + b);
            let xq = xb.q.as_ptr() as *const i32;
            let mut s0 = _mm512_setzero_si512();
            let mut s1 = _mm512_setzero_si512();
            for t in 0..4 {
                s0 = _mm512_dpbusd_epi32(s0, lo[t], _mm512_set1_epi32(xq.add(t).read_unaligned()));
                s1 = _mm512_dpbusd_epi32(s1, hi[t], _mm512_set1_epi32(xq.add(4 + t).read_unaligned()));
            }
            let s = _mm512_cvtepi32_ps(_mm512_add_epi32(s0, s1));
            *a = _mm512_fmadd_ps(s, _mm512_mul_ps(d, _mm512_set1_ps(xb.d)), *a);
            *a = _mm512_fmadd_ps(mo, _mm512_set1_ps(xb.s[0] + xb.s[1]), *a);
        }
    }
    for (l, a) in acc.iter().enumerate() {
        _mm512_mask_storeu_ps(dst.add(l * ldc), mask, *a);
    }
}

/// [`gemm_q4x16_vnni`] for interleaved Q8_0 rows: the inputs are biased to unsigned bytes
/// (`x + 128`, one `xor` per four) and broadcast against the signed weights; each row's sum
/// starts at `-128 Σw` (from the block), which takes the bias back out exactly.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub unsafe fn gemm_q8x16_vnni(
    x: &[BlockQ8A],
    m: usize,
    w: &[Q8x16],
    per_row: usize,
    cols: usize,
    dst: *mut f32,
    ldc: usize,
) {
    interleaved_tiles!(q8x16_rows, x, m, w, per_row, cols, dst, ldc);
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn q8x16_rows<const R: usize>(
    x: *const BlockQ8A,
    w: *const Q8x16,
    per_row: usize,
    dst: *mut f32,
    ldc: usize,
    mask: __mmask16,
) {
    let mut acc = [_mm512_setzero_ps(); R];
    for b in 0..per_row {
        let blk = &*w.add(b);
        let qp = blk.q.as_ptr() as *const __m512i;
        let mut q = [_mm512_setzero_si512(); 8];
        for (t, v) in q.iter_mut().enumerate() {
            *v = _mm512_load_si512(qp.add(t) as *const _);
        }
        let d = _mm512_cvtph_ps(_mm256_load_si256(blk.d.as_ptr() as *const __m256i));
        let sums = _mm512_cvtepi16_epi32(_mm256_load_si256(blk.sum.as_ptr() as *const __m256i));
        let neg = _mm512_sub_epi32(_mm512_setzero_si512(), _mm512_slli_epi32::<7>(sums));
        for (l, a) in acc.iter_mut().enumerate() {
            let xb = &*x.add(l * per_row + b);
            let xq = xb.q.as_ptr() as *const u32;
            let mut s0 = neg;
            let mut s1 = _mm512_setzero_si512();
            for t in 0..4 {
                let x0 = _mm512_set1_epi32((xq.add(t).read_unaligned() ^ 0x8080_8080) as i32);
                let x1 = _mm512_set1_epi32((xq.add(4 + t).read_unaligned() ^ 0x8080_8080) as i32);
                s0 = _mm512_dpbusd_epi32(s0, x0, q[t]);
                s1 = _mm512_dpbusd_epi32(s1, x1, q[4 + t]);
            }
            let s = _mm512_cvtepi32_ps(_mm512_add_epi32(s0, s1));
            *a = _mm512_fmadd_ps(s, _mm512_mul_ps(d, _mm512_set1_ps(xb.d)), *a);
        }
    }
    for (l, a) in acc.iter().enumerate() {
        _mm512_mask_storeu_ps(dst.add(l * ldc), mask, *a);
    }
}
