//! CPU kernels on f32 activations: the blocked GEMM entry points, dot products, RMSNorm,
//! rotary embedding, softmax, SwiGLU. (Products with stored weights in their storage formats
//! are in [`crate::matrix`].) SIMD variants are picked once from [`crate::cpu::features`], so
//! one binary runs on any x86-64 (and elsewhere through the portable fallback).

use std::sync::OnceLock;

use crate::cpu::{pool, Features, Level};

/// Dot product of two equally long slices.
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    (vector().dot)(a, b)
}

fn dot_portable(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let mut acc = [0f32; 8];
    let chunks = n / 8;
    for c in 0..chunks {
        for l in 0..8 {
            acc[l] += a[c * 8 + l] * b[c * 8 + l];
        }
    }
    let mut s = acc.iter().sum::<f32>();
    for i in chunks * 8..n {
        s += a[i] * b[i];
    }
    s
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod x86 {
    use std::arch::x86_64::*;

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dot_avx2(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len().min(b.len());
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut i = 0;
        while i + 32 <= n {
            for (l, acc) in acc.iter_mut().enumerate() {
                *acc = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i + 8 * l)), _mm256_loadu_ps(pb.add(i + 8 * l)), *acc);
            }
            i += 32;
        }
        while i + 8 <= n {
            acc[0] = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i)), _mm256_loadu_ps(pb.add(i)), acc[0]);
            i += 8;
        }
        let mut s = hsum(_mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3])));
        while i < n {
            s += *pa.add(i) * *pb.add(i);
            i += 1;
        }
        s
    }

    /// e^x for eight lanes: x = n ln2 + r with |r| <= ln2 / 2, e^r by Cephes' degree-6
    /// polynomial (about 1 ulp), 2^n built in the exponent bits. Below -87 the result is 0 (so
    /// e^-inf = 0, as a masked score needs); above 88 it saturates at e^88.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn exp8(x: __m256) -> __m256 {
        let lo = _mm256_set1_ps(-87.0);
        let under = _mm256_cmp_ps(x, lo, _CMP_LT_OQ);
        let x = _mm256_min_ps(_mm256_max_ps(x, lo), _mm256_set1_ps(88.0));
        let n = _mm256_round_ps(
            _mm256_mul_ps(x, _mm256_set1_ps(std::f32::consts::LOG2_E)),
            _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC,
        );
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693_359_4), x);
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.121_944_4e-4), r);
        let mut p = _mm256_set1_ps(1.987_569_1e-4);
        for c in [1.398_199_9e-3, 8.333_452e-3, 4.166_579_6e-2, 0.166_666_65, 0.5] {
            p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c));
        }
        let p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0)));
        let two_n =
            _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23));
        _mm256_andnot_ps(under, _mm256_mul_ps(p, two_n))
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn exp_shift_sum(v: &mut [f32], shift: f32) -> f32 {
        let n = v.len();
        let p = v.as_mut_ptr();
        let s = _mm256_set1_ps(shift);
        let mut acc = _mm256_setzero_ps();
        let mut i = 0;
        while i + 8 <= n {
            let e = exp8(_mm256_sub_ps(_mm256_loadu_ps(p.add(i)), s));
            _mm256_storeu_ps(p.add(i), e);
            acc = _mm256_add_ps(acc, e);
            i += 8;
        }
        let mut sum = hsum(acc);
        if i < n {
            // The tail through the same vector code, so every element gets the same e^x.
            let mut t = [f32::NEG_INFINITY; 8];
            t[..n - i].copy_from_slice(&v[i..]);
            let e = exp8(_mm256_sub_ps(_mm256_loadu_ps(t.as_ptr()), s));
            _mm256_storeu_ps(t.as_mut_ptr(), e);
            v[i..].copy_from_slice(&t[..n - i]);
            sum += t[..n - i].iter().sum::<f32>();
        }
        sum
    }

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn silu8(g: __m256, u: __m256) -> __m256 {
        let e = exp8(_mm256_sub_ps(_mm256_setzero_ps(), g));
        _mm256_div_ps(_mm256_mul_ps(g, u), _mm256_add_ps(_mm256_set1_ps(1.0), e))
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn silu_mul(g: &[f32], u: &[f32], o: &mut [f32]) {
        let n = o.len().min(g.len()).min(u.len());
        let mut i = 0;
        while i + 8 <= n {
            let r = silu8(_mm256_loadu_ps(g.as_ptr().add(i)), _mm256_loadu_ps(u.as_ptr().add(i)));
            _mm256_storeu_ps(o.as_mut_ptr().add(i), r);
            i += 8;
        }
        if i < n {
            let (mut tg, mut tu) = ([0f32; 8], [0f32; 8]);
            tg[..n - i].copy_from_slice(&g[i..n]);
            tu[..n - i].copy_from_slice(&u[i..n]);
            let mut t = [0f32; 8];
            _mm256_storeu_ps(t.as_mut_ptr(), silu8(_mm256_loadu_ps(tg.as_ptr()), _mm256_loadu_ps(tu.as_ptr())));
            o[i..n].copy_from_slice(&t[..n - i]);
        }
    }

    /// The sum of the eight lanes.
    #[inline]
    #[target_feature(enable = "avx2")]
    pub(crate) unsafe fn hsum(v: __m256) -> f32 {
        let s4 = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
        _mm_cvtss_f32(_mm_add_ss(s2, _mm_shuffle_ps(s2, s2, 1)))
    }

    /// Keys and values as the KV cache stores them: f32, or f16 widened on load (F16C).
    pub trait KvLanes: super::KvElem {
        /// Eight elements from `p` as f32 lanes.
        unsafe fn load8(p: *const Self) -> __m256;
    }

    impl KvLanes for f32 {
        #[inline]
        #[target_feature(enable = "avx2,fma,f16c")]
        unsafe fn load8(p: *const f32) -> __m256 {
            _mm256_loadu_ps(p)
        }
    }

    impl KvLanes for half::f16 {
        #[inline]
        #[target_feature(enable = "avx2,fma,f16c")]
        unsafe fn load8(p: *const half::f16) -> __m256 {
            _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i))
        }
    }

    /// `dst[i] = src[i]` as f32, 32 elements a pass (F16C).
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn widen_f16(src: &[half::f16], dst: &mut [f32]) {
        let n = src.len().min(dst.len());
        let (s, d) = (src.as_ptr() as *const u16, dst.as_mut_ptr());
        let mut i = 0;
        while i + 32 <= n {
            for l in 0..4 {
                let v = _mm256_cvtph_ps(_mm_loadu_si128(s.add(i + 8 * l) as *const __m128i));
                _mm256_storeu_ps(d.add(i + 8 * l), v);
            }
            i += 32;
        }
        while i + 8 <= n {
            _mm256_storeu_ps(d.add(i), _mm256_cvtph_ps(_mm_loadu_si128(s.add(i) as *const __m128i)));
            i += 8;
        }
        while i < n {
            *d.add(i) = _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(*s.add(i)))));
            i += 1;
        }
    }

    /// `dst[i] = src[i]` rounded to f16 (to nearest, ties to even), 32 elements a pass (F16C).
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn narrow_f16(src: &[f32], dst: &mut [half::f16]) {
        const NEAREST: i32 = _MM_FROUND_TO_NEAREST_INT;
        let n = src.len().min(dst.len());
        let (s, d) = (src.as_ptr(), dst.as_mut_ptr() as *mut u16);
        let mut i = 0;
        while i + 32 <= n {
            for l in 0..4 {
                let h = _mm256_cvtps_ph::<NEAREST>(_mm256_loadu_ps(s.add(i + 8 * l)));
                _mm_storeu_si128(d.add(i + 8 * l) as *mut __m128i, h);
            }
            i += 32;
        }
        while i + 8 <= n {
            _mm_storeu_si128(d.add(i) as *mut __m128i, _mm256_cvtps_ph::<NEAREST>(_mm256_loadu_ps(s.add(i))));
            i += 8;
        }
        while i < n {
            *d.add(i) = _mm_extract_epi16::<0>(_mm_cvtps_ph::<NEAREST>(_mm_set_ss(*s.add(i)))) as u16;
            i += 1;
        }
    }

    /// `out[s] = scale * q · keys[s]` for each key row: four keys per pass (four independent
    /// FMA chains, one shared load of q), reduced together with two rounds of `hadd`.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn attn_scores<T: KvLanes>(q: &[f32], keys: &[T], scale: f32, out: &mut [f32]) {
        let hd = q.len();
        let cnt = out.len().min(keys.len() / hd);
        let (qp, kp, op) = (q.as_ptr(), keys.as_ptr(), out.as_mut_ptr());
        let sc = _mm_set1_ps(scale);
        let mut s = 0;
        while s + 4 <= cnt {
            let k0 = kp.add(s * hd);
            let (k1, k2, k3) = (k0.add(hd), k0.add(2 * hd), k0.add(3 * hd));
            let mut a = [_mm256_setzero_ps(); 4];
            let mut c = 0;
            while c < hd {
                let qv = _mm256_loadu_ps(qp.add(c));
                a[0] = _mm256_fmadd_ps(qv, T::load8(k0.add(c)), a[0]);
                a[1] = _mm256_fmadd_ps(qv, T::load8(k1.add(c)), a[1]);
                a[2] = _mm256_fmadd_ps(qv, T::load8(k2.add(c)), a[2]);
                a[3] = _mm256_fmadd_ps(qv, T::load8(k3.add(c)), a[3]);
                c += 8;
            }
            // [a0 a1 a2 a3] summed over lanes: hadd pairs twice, then the two 128-bit halves.
            let h = _mm256_hadd_ps(_mm256_hadd_ps(a[0], a[1]), _mm256_hadd_ps(a[2], a[3]));
            let r = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
            _mm_storeu_ps(op.add(s), _mm_mul_ps(r, sc));
            s += 4;
        }
        while s < cnt {
            let k0 = kp.add(s * hd);
            let mut a = _mm256_setzero_ps();
            let mut c = 0;
            while c < hd {
                a = _mm256_fmadd_ps(_mm256_loadu_ps(qp.add(c)), T::load8(k0.add(c)), a);
                c += 8;
            }
            *op.add(s) = hsum(a) * scale;
            s += 1;
        }
    }

    /// `out += Σ p[s] · values[s]`, 64 output columns at a time held in registers across all
    /// the value rows.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn attn_weighted_sum<T: KvLanes>(p: &[f32], values: &[T], out: &mut [f32]) {
        let hd = out.len();
        let cnt = p.len().min(values.len() / hd);
        let mut c0 = 0;
        while c0 + 64 <= hd {
            weighted_block::<T, 8>(p, values, hd, cnt, c0, out);
            c0 += 64;
        }
        while c0 < hd {
            weighted_block::<T, 1>(p, values, hd, cnt, c0, out);
            c0 += 8;
        }
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn weighted_block<T: KvLanes, const K: usize>(
        p: &[f32],
        values: &[T],
        hd: usize,
        cnt: usize,
        c0: usize,
        out: &mut [f32],
    ) {
        let op = out.as_mut_ptr().add(c0);
        let mut acc = [_mm256_setzero_ps(); K];
        for (k, a) in acc.iter_mut().enumerate() {
            *a = _mm256_loadu_ps(op.add(8 * k));
        }
        let vp = values.as_ptr().add(c0);
        for (s, &w) in p[..cnt].iter().enumerate() {
            let w = _mm256_set1_ps(w);
            let v = vp.add(s * hd);
            for (k, a) in acc.iter_mut().enumerate() {
                *a = _mm256_fmadd_ps(w, T::load8(v.add(8 * k)), *a);
            }
        }
        for (k, a) in acc.iter().enumerate() {
            _mm256_storeu_ps(op.add(8 * k), *a);
        }
    }

    #[target_feature(enable = "avx512f")]
    pub unsafe fn dot_avx512(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len().min(b.len());
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        let mut acc = [_mm512_setzero_ps(); 4];
        let mut i = 0;
        while i + 64 <= n {
            for (l, acc) in acc.iter_mut().enumerate() {
                *acc = _mm512_fmadd_ps(_mm512_loadu_ps(pa.add(i + 16 * l)), _mm512_loadu_ps(pb.add(i + 16 * l)), *acc);
            }
            i += 64;
        }
        while i + 16 <= n {
            acc[0] = _mm512_fmadd_ps(_mm512_loadu_ps(pa.add(i)), _mm512_loadu_ps(pb.add(i)), acc[0]);
            i += 16;
        }
        if i < n {
            let mask: __mmask16 = (1u32 << (n - i)) as u16 - 1;
            acc[1] =
                _mm512_fmadd_ps(_mm512_maskz_loadu_ps(mask, pa.add(i)), _mm512_maskz_loadu_ps(mask, pb.add(i)), acc[1]);
        }
        let v = _mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3]));
        _mm512_reduce_add_ps(v)
    }
}

/// `y[m, n] = x[m, k] · w[n, k]ᵀ` for many rows with f32 weights in the PyTorch
/// `[out_features, in_features]` layout: rows split across threads, one single-threaded GEMM
/// each. For the modest matrices of small models this beats the GEMM's own threading
/// (measured in BENCHMARKS.md).
pub(crate) fn matmul_t_gemm(x: &[f32], w: &[f32], y: &mut [f32], m: usize, k: usize, n: usize) {
    let rows = m.div_ceil(pool().threads()).max(8);
    pool().for_chunks(&mut y[..m * n], rows * n, |c, yc| {
        let xc = &x[c * rows * k..(c * rows + yc.len() / n) * k];
        matmul_single(xc, w, yc, yc.len() / n, k, n, true);
    });
}

/// Single-threaded `dst[m, nc] = x[m, k] · panel[nc, k]ᵀ` where `dst` rows are `ldc` apart.
///
/// # Safety
/// `dst` must be valid for writes at `i * ldc + j` for every `i < m`, `j < nc`, and no other
/// thread may touch those elements meanwhile.
pub(crate) unsafe fn gemm_into(x: &[f32], panel: &[f32], dst: *mut f32, m: usize, k: usize, nc: usize, ldc: usize) {
    assert!(x.len() >= m * k && panel.len() >= nc * k, "gemm_into: buffer too small");
    gemm_raw(dst, ldc, x, panel, (m, k, nc), (k, 1));
}

/// Single-threaded `c[m, n] = a[m, k] · b[k, n]` (both row-major), or `a · bᵀ` when
/// `b_transposed` (then `b` is `[n, k]`). For work that is already split across threads.
pub fn matmul_single(a: &[f32], b: &[f32], c: &mut [f32], m: usize, k: usize, n: usize, b_transposed: bool) {
    assert!(a.len() >= m * k && b.len() >= k * n && c.len() >= m * n, "matmul_single: buffer too small");
    let strides = if b_transposed { (k, 1) } else { (1, n) };
    // SAFETY: the assert above bounds every index the strides can reach.
    unsafe { gemm_raw(c.as_mut_ptr(), n, a, b, (m, k, n), strides) };
}

/// `dst[m, n] = a[m, k] · b` with `b`'s element (t, j) at `t * rs + j * cs` (`b_strides` = (cs, rs)).
///
/// # Safety
/// `a`, `b` and `dst` (rows `ldc` apart) must hold every element the shape and strides reach.
unsafe fn gemm_raw(
    dst: *mut f32,
    ldc: usize,
    a: &[f32],
    b: &[f32],
    (m, k, n): (usize, usize, usize),
    (cs, rs): (usize, usize),
) {
    if m == 0 || n == 0 {
        return;
    }
    gemm::gemm(
        m,
        n,
        k,
        dst,
        1,
        ldc as isize,
        false,
        a.as_ptr(),
        1,
        k as isize,
        b.as_ptr(),
        cs as isize,
        rs as isize,
        0.0,
        1.0,
        false,
        false,
        false,
        gemm::Parallelism::None,
    );
}

/// RMSNorm of each `dim`-long row of `x` into `out`, as transformers computes it:
/// `w * (x / sqrt(mean(x²) + eps))`.
pub fn rms_norm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32], dim: usize) {
    let rows = |r0: usize, out: &mut [f32]| {
        for (xr, or) in x[r0 * dim..].chunks_exact(dim).zip(out.chunks_exact_mut(dim)) {
            let ss = dot(xr, xr);
            let inv = 1.0 / (ss / dim as f32 + eps).sqrt();
            for ((o, &v), &g) in or.iter_mut().zip(xr).zip(w) {
                *o = g * (v * inv);
            }
        }
    };
    let n = x.len() / dim;
    if n >= 64 {
        pool().for_chunks(&mut out[..n * dim], 32 * dim, |c, o| rows(c * 32, o));
    } else {
        rows(0, &mut out[..n * dim]);
    }
}

/// Rotary embedding in transformers' rotate-half layout, applied in place to one head vector.
#[inline]
pub fn rope(v: &mut [f32], cos: &[f32], sin: &[f32]) {
    let half = v.len() / 2;
    for i in 0..half {
        let (a, b) = (v[i], v[i + half]);
        v[i] = a * cos[i] - b * sin[i];
        v[i + half] = b * cos[i] + a * sin[i];
    }
}

/// In-place softmax.
pub fn softmax(v: &mut [f32]) {
    let max = v.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum = (vector().exp_shift_sum)(v, max);
    let inv = 1.0 / sum;
    v.iter_mut().for_each(|x| *x *= inv);
}

/// The activation kernels picked for this CPU once: the dot product, and the element-wise
/// kernels built on `exp`, vectorised where the CPU allows (libm's scalar `expf` is most of the
/// cost of attention's softmax and of SwiGLU otherwise).
struct Vector {
    dot: fn(&[f32], &[f32]) -> f32,
    /// `v[i] = exp(v[i] - shift)`; returns the sum.
    exp_shift_sum: fn(&mut [f32], f32) -> f32,
    /// `o[i] = silu(g[i]) * u[i]`.
    silu_mul: fn(&[f32], &[f32], &mut [f32]),
    /// See [`attn_scores`]; this one needs `q.len()` divisible by 8 (else the portable one runs).
    attn_scores: fn(&[f32], &[f32], f32, &mut [f32]),
    /// See [`attn_weighted_sum`]; `out.len()` divisible by 8 likewise.
    attn_weighted_sum: fn(&[f32], &[f32], &mut [f32]),
    /// The same two over f16 keys and values.
    attn_scores_f16: fn(&[f32], &[half::f16], f32, &mut [f32]),
    attn_weighted_sum_f16: fn(&[f32], &[half::f16], &mut [f32]),
    /// f16 to f32, element by element.
    widen_f16: fn(&[half::f16], &mut [f32]),
    /// f32 to f16 (to nearest, ties to even), element by element.
    narrow_f16: fn(&[f32], &mut [half::f16]),
}

fn vector() -> &'static Vector {
    static V: OnceLock<Vector> = OnceLock::new();
    V.get_or_init(|| Vector::for_features(crate::cpu::features()))
}

impl Vector {
    /// The kernels for an instruction set (the engine's own: [`vector`]).
    fn for_features(f: Features) -> Vector {
        #[cfg(target_arch = "x86_64")]
        if f.level >= Level::Avx2 {
            return Vector {
                dot: if f.level == Level::Avx512 {
                    |a, b| unsafe { x86::dot_avx512(a, b) }
                } else {
                    |a, b| unsafe { x86::dot_avx2(a, b) }
                },
                exp_shift_sum: |v, s| unsafe { x86::exp_shift_sum(v, s) },
                silu_mul: |g, u, o| unsafe { x86::silu_mul(g, u, o) },
                attn_scores: |q, k, s, o| unsafe { x86::attn_scores(q, k, s, o) },
                attn_weighted_sum: |p, v, o| unsafe { x86::attn_weighted_sum(p, v, o) },
                attn_scores_f16: |q, k, s, o| unsafe { x86::attn_scores(q, k, s, o) },
                attn_weighted_sum_f16: |p, v, o| unsafe { x86::attn_weighted_sum(p, v, o) },
                widen_f16: |s, d| unsafe { x86::widen_f16(s, d) },
                narrow_f16: |s, d| unsafe { x86::narrow_f16(s, d) },
            };
        }
        let _ = f;
        Vector {
            dot: dot_portable,
            exp_shift_sum: exp_shift_sum_portable,
            silu_mul: silu_mul_portable,
            attn_scores: attn_scores_portable,
            attn_weighted_sum: attn_weighted_sum_portable,
            attn_scores_f16: attn_scores_portable,
            attn_weighted_sum_f16: attn_weighted_sum_portable,
            widen_f16: widen_f16_portable,
            narrow_f16: narrow_f16_portable,
        }
    }
}

/// An element of the KV cache: f32 (the reference) or f16 (half the memory and bandwidth).
pub trait KvElem: Copy + Send + Sync + 'static {
    /// `q · key` (the portable attention kernels' dot product).
    fn dot(q: &[f32], key: &[Self]) -> f32;
    /// `out += w · value` (the portable attention kernels' update).
    fn axpy(w: f32, value: &[Self], out: &mut [f32]);
    /// `dst[i] = src[i]` as f32.
    fn widen(src: &[Self], dst: &mut [f32]);
    /// The vectorised attention kernels for this element type.
    #[doc(hidden)]
    fn kernels() -> AttnKernels<Self>;
}

/// The two attention kernels over one KV element type (see [`attn_scores`]).
#[doc(hidden)]
pub struct AttnKernels<T: 'static> {
    scores: fn(&[f32], &[T], f32, &mut [f32]),
    weighted_sum: fn(&[f32], &[T], &mut [f32]),
}

impl KvElem for f32 {
    #[inline]
    fn dot(q: &[f32], key: &[f32]) -> f32 {
        dot(q, key)
    }
    #[inline]
    fn axpy(w: f32, value: &[f32], out: &mut [f32]) {
        axpy(w, value, out)
    }
    fn widen(src: &[f32], dst: &mut [f32]) {
        dst.copy_from_slice(src);
    }
    fn kernels() -> AttnKernels<f32> {
        AttnKernels { scores: vector().attn_scores, weighted_sum: vector().attn_weighted_sum }
    }
}

impl KvElem for half::f16 {
    fn dot(q: &[f32], key: &[half::f16]) -> f32 {
        q.iter().zip(key).map(|(&a, &b)| a * b.to_f32()).sum()
    }
    fn axpy(w: f32, value: &[half::f16], out: &mut [f32]) {
        for (o, &v) in out.iter_mut().zip(value) {
            *o += w * v.to_f32();
        }
    }
    fn widen(src: &[half::f16], dst: &mut [f32]) {
        widen_f16(src, dst)
    }
    fn kernels() -> AttnKernels<half::f16> {
        AttnKernels { scores: vector().attn_scores_f16, weighted_sum: vector().attn_weighted_sum_f16 }
    }
}

/// Attention scores of one query against consecutive key rows of the same width:
/// `out[s] = scale * q · keys[s]` for `s < out.len()`.
pub fn attn_scores<T: KvElem>(q: &[f32], keys: &[T], scale: f32, out: &mut [f32]) {
    assert!(keys.len() >= out.len() * q.len(), "attn_scores: {} keys of {} wanted", out.len(), q.len());
    if q.len().is_multiple_of(8) {
        (T::kernels().scores)(q, keys, scale, out)
    } else {
        attn_scores_portable(q, keys, scale, out)
    }
}

/// The attention-weighted sum of value rows: `out += Σ p[s] · values[s]` for `s < p.len()`.
pub fn attn_weighted_sum<T: KvElem>(p: &[f32], values: &[T], out: &mut [f32]) {
    assert!(values.len() >= p.len() * out.len(), "attn_weighted_sum: {} values of {} wanted", p.len(), out.len());
    if out.len().is_multiple_of(8) {
        (T::kernels().weighted_sum)(p, values, out)
    } else {
        attn_weighted_sum_portable(p, values, out)
    }
}

fn attn_scores_portable<T: KvElem>(q: &[f32], keys: &[T], scale: f32, out: &mut [f32]) {
    for (o, key) in out.iter_mut().zip(keys.chunks_exact(q.len())) {
        *o = T::dot(q, key) * scale;
    }
}

fn attn_weighted_sum_portable<T: KvElem>(p: &[f32], values: &[T], out: &mut [f32]) {
    for (&w, value) in p.iter().zip(values.chunks_exact(out.len())) {
        T::axpy(w, value, out);
    }
}

/// `dst[i] = src[i]` as f32 (F16C where the CPU has it): the f16 KV cache's keys and values for
/// prompt attention, and f16 weight rows.
pub(crate) fn widen_f16(src: &[half::f16], dst: &mut [f32]) {
    assert_eq!(src.len(), dst.len(), "widen_f16: lengths differ");
    (vector().widen_f16)(src, dst)
}

/// `dst[i] = src[i]` rounded to f16 (F16C where the CPU has it): what the f16 KV cache stores.
pub(crate) fn narrow_f16(src: &[f32], dst: &mut [half::f16]) {
    assert_eq!(src.len(), dst.len(), "narrow_f16: lengths differ");
    (vector().narrow_f16)(src, dst)
}

fn narrow_f16_portable(src: &[f32], dst: &mut [half::f16]) {
    for (d, &x) in dst.iter_mut().zip(src) {
        *d = half::f16::from_f32(x);
    }
}

fn widen_f16_portable(src: &[half::f16], dst: &mut [f32]) {
    use half::slice::HalfFloatSliceExt;
    src.convert_to_f32_slice(dst);
}

fn exp_shift_sum_portable(v: &mut [f32], shift: f32) -> f32 {
    let mut sum = 0.0;
    for x in v.iter_mut() {
        *x = (*x - shift).exp();
        sum += *x;
    }
    sum
}

fn silu_mul_portable(g: &[f32], u: &[f32], o: &mut [f32]) {
    for ((o, &g), &u) in o.iter_mut().zip(g).zip(u) {
        *o = g / (1.0 + (-g).exp()) * u;
    }
}

/// `out = silu(gate) * up` for SwiGLU; `gu` holds each row as `[gate | up]`.
pub fn swiglu(gu: &[f32], out: &mut [f32], inter: usize) {
    let rows = |r0: usize, out: &mut [f32]| {
        for (row, o) in gu[r0 * 2 * inter..].chunks_exact(2 * inter).zip(out.chunks_exact_mut(inter)) {
            let (g, u) = row.split_at(inter);
            (vector().silu_mul)(g, u, o);
        }
    };
    let n = out.len() / inter;
    if n >= 16 {
        pool().for_chunks(&mut out[..n * inter], 8 * inter, |c, o| rows(c * 8, o));
    } else {
        rows(0, &mut out[..n * inter]);
    }
}

/// `out[j] += p * v[j]`.
#[inline]
pub fn axpy(p: f32, v: &[f32], out: &mut [f32]) {
    for (o, &x) in out.iter_mut().zip(v) {
        *o += p * x;
    }
}

/// Deterministic pseudo-random values in [-1, 1] for tests.
#[cfg(test)]
pub(crate) fn test_data(len: usize, seed: u32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(2654435761).wrapping_add(1);
    (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            (s % 2001) as f32 / 1000.0 - 1.0
        })
        .collect()
}

/// `x · wᵀ` in f64, the reference for product tests.
#[cfg(test)]
pub(crate) fn test_naive_matmul_t(x: &[f32], w: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
    let mut y = vec![0f32; m * n];
    for i in 0..m {
        for j in 0..n {
            y[i * n + j] = (0..k).map(|t| x[i * k + t] as f64 * w[j * k + t] as f64).sum::<f64>() as f32;
        }
    }
    y
}

#[cfg(test)]
mod tests {
    use super::*;

    use super::test_naive_matmul_t as naive;

    use super::test_data as data;

    #[test]
    fn f16_rounding_and_widening_agree_with_the_portable_code_bit_for_bit() {
        let simd = Vector::for_features(crate::cpu::Features::detect(crate::cpu::KernelCap::Auto));
        // Ties (1 + 2^-11 rounds to even), the subnormal range, overflow to infinity, signed zeros.
        let mut x: Vec<f32> = vec![
            0.0,
            -0.0,
            1.0 + f32::powi(2.0, -11),
            1.0 + 3.0 * f32::powi(2.0, -11),
            6.0e-8,
            -3.0e-8,
            1.0e-5,
            65504.0,
            65520.0,
            -1.0e6,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::MIN_POSITIVE,
        ];
        x.extend(data(200, 3).iter().map(|v| v * 300.0));
        for n in 0..x.len() {
            let (mut a, mut b) = (vec![half::f16::ZERO; n], vec![half::f16::ZERO; n]);
            (simd.narrow_f16)(&x[..n], &mut a);
            narrow_f16_portable(&x[..n], &mut b);
            assert_eq!(
                a.iter().map(|h| h.to_bits()).collect::<Vec<_>>(),
                b.iter().map(|h| h.to_bits()).collect::<Vec<_>>(),
                "n = {n}"
            );
            let (mut wa, mut wb) = (vec![0f32; n], vec![0f32; n]);
            (simd.widen_f16)(&a, &mut wa);
            widen_f16_portable(&b, &mut wb);
            assert_eq!(
                wa.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                wb.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
            );
        }
        let (mut nan, mut h) = ([f32::NAN; 9], [half::f16::ZERO; 9]);
        nan[3] = 1.0;
        (simd.narrow_f16)(&nan, &mut h);
        assert!(h.iter().enumerate().all(|(i, v)| (i == 3) != v.is_nan()), "{h:?}");
    }

    #[test]
    fn single_threaded_products_match_naive() {
        let (m, k, n) = (5, 19, 7);
        let a = data(m * k, 8);
        let bt = data(n * k, 9);
        let mut b = vec![0f32; k * n];
        for j in 0..n {
            for t in 0..k {
                b[t * n + j] = bt[j * k + t];
            }
        }
        let r = naive(&a, &bt, m, k, n);
        let mut c1 = vec![0f32; m * n];
        let mut c2 = vec![0f32; m * n];
        matmul_single(&a, &bt, &mut c1, m, k, n, true);
        matmul_single(&a, &b, &mut c2, m, k, n, false);
        for i in 0..m * n {
            assert!((c1[i] - r[i]).abs() < 1e-4 && (c2[i] - r[i]).abs() < 1e-4);
        }
    }

    #[test]
    fn dot_handles_every_tail_length() {
        for len in 0..100 {
            let a = data(len, 5);
            let b = data(len, 6);
            let r: f64 = a.iter().zip(&b).map(|(x, y)| *x as f64 * *y as f64).sum();
            assert!((dot(&a, &b) as f64 - r).abs() < 1e-4, "len {len}");
        }
    }

    #[test]
    fn softmax_sums_to_one_and_survives_large_values() {
        let mut v = vec![1000.0, 1001.0, f32::NEG_INFINITY];
        softmax(&mut v);
        assert!((v.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert_eq!(v[2], 0.0);
    }

    #[test]
    fn vector_exp_and_silu_match_libm() {
        // e^x across the range whose sum still fits in f32, every tail length.
        for len in [1, 7, 8, 9, 100, 1003] {
            let xs: Vec<f32> = (0..len).map(|i| -87.0 + 167.0 * i as f32 / len as f32).collect();
            let mut v = xs.clone();
            let sum = (vector().exp_shift_sum)(&mut v, 0.0);
            let mut want_sum = 0f64;
            for (x, e) in xs.iter().zip(&v) {
                let want = (*x as f64).exp();
                want_sum += want;
                assert!(((*e as f64 - want) / want).abs() < 1e-6, "e^{x}: {e} vs {want}");
            }
            // Summed in f32 lanes: n * eps at worst.
            assert!(((sum as f64 - want_sum) / want_sum).abs() < 1e-4, "sum of {len}");
        }
        let mut v = vec![f32::NEG_INFINITY, -200.0, 0.0, 200.0];
        (vector().exp_shift_sum)(&mut v, 0.0);
        assert_eq!(&v[..3], &[0.0, 0.0, 1.0]);
        assert!(v[3].is_finite() && v[3] > 1e38);
        // silu(g) * u, large magnitudes included, no NaN.
        let g: Vec<f32> = (0..37).map(|i| (i as f32 - 18.0) * 6.0).collect();
        let u: Vec<f32> = (0..37).map(|i| 0.5 + i as f32 / 10.0).collect();
        let mut o = vec![f32::NAN; 37];
        (vector().silu_mul)(&g, &u, &mut o);
        for i in 0..37 {
            let want = g[i] as f64 / (1.0 + (-g[i] as f64).exp()) * u[i] as f64;
            assert!(
                (o[i] as f64 - want).abs() <= 1e-6 * want.abs().max(1e-3),
                "silu({}) * {}: {} vs {want}",
                g[i],
                u[i],
                o[i]
            );
        }
    }

    #[test]
    fn f16_widening_is_exact_for_every_length() {
        // Every f16 class: zeros, subnormals, normals, infinities, NaN.
        let bits = [0u16, 0x8000, 0x0001, 0x03ff, 0x0400, 0x3c00, 0xbc00, 0x7bff, 0x7c00, 0xfc00, 0x7e00, 0x3555];
        for n in [0, 1, 7, 8, 9, 31, 32, 33, 100] {
            let src: Vec<half::f16> =
                (0..n).map(|i| half::f16::from_bits(bits[i % bits.len()] ^ (i as u16 & 0x10))).collect();
            let mut got = vec![0f32; n];
            <half::f16 as KvElem>::widen(&src, &mut got);
            for (g, w) in got.iter().zip(&src) {
                assert!(g.to_bits() == w.to_f32().to_bits() || g.is_nan() && w.is_nan(), "{n}: {g} vs {w}");
            }
        }
    }

    #[test]
    fn attention_kernels_match_the_portable_ones() {
        for hd in [8, 24, 64, 72, 128, 12] {
            for cnt in [1, 3, 4, 5, 8, 9, 17] {
                let q = test_data(hd, 1 + hd as u32);
                let kv = test_data(cnt * hd + 5, 7 + cnt as u32);
                let kv16: Vec<half::f16> = kv.iter().map(|&v| half::f16::from_f32(v)).collect();
                let mut got = vec![f32::NAN; cnt];
                attn_scores(&q, &kv, 0.125, &mut got);
                let mut got16 = vec![f32::NAN; cnt];
                attn_scores(&q, &kv16, 0.125, &mut got16);
                let mut want = vec![0f32; cnt];
                attn_scores_portable(&q, &kv, 0.125, &mut want);
                let mut want16 = vec![0f32; cnt];
                attn_scores_portable(&q, &kv16, 0.125, &mut want16);
                for i in 0..cnt {
                    let (g, w, g16, w16) = (got[i], want[i], got16[i], want16[i]);
                    assert!((g - w).abs() <= 1e-5 * (1.0 + w.abs()), "scores hd {hd} cnt {cnt}: {g} vs {w}");
                    assert!(
                        (g16 - w16).abs() <= 1e-5 * (1.0 + w16.abs()),
                        "f16 scores hd {hd} cnt {cnt}: {g16} vs {w16}"
                    );
                    // f16 keeps 11 significant bits: the f16 scores stay near the f32 ones.
                    assert!(
                        (g16 - w).abs() <= 2e-3 * (1.0 + w.abs()),
                        "f16 vs f32 scores hd {hd} cnt {cnt}: {g16} vs {w}"
                    );
                }
                let p = test_data(cnt, 3);
                let mut got = test_data(hd, 11);
                let (mut want, mut got16, mut want16) = (got.clone(), got.clone(), got.clone());
                attn_weighted_sum(&p, &kv, &mut got);
                attn_weighted_sum_portable(&p, &kv, &mut want);
                attn_weighted_sum(&p, &kv16, &mut got16);
                attn_weighted_sum_portable(&p, &kv16, &mut want16);
                for i in 0..hd {
                    let (g, w, g16, w16) = (got[i], want[i], got16[i], want16[i]);
                    assert!((g - w).abs() <= 1e-5 * (1.0 + w.abs()), "sum hd {hd} cnt {cnt}: {g} vs {w}");
                    assert!((g16 - w16).abs() <= 1e-5 * (1.0 + w16.abs()), "f16 sum hd {hd} cnt {cnt}: {g16} vs {w16}");
                    assert!(
                        (g16 - w).abs() <= 2e-3 * (1.0 + w.abs()),
                        "f16 vs f32 sum hd {hd} cnt {cnt}: {g16} vs {w}"
                    );
                }
            }
        }
    }

    #[test]
    fn the_portable_activation_kernels_are_the_portable_code_and_agree_with_the_simd_ones() {
        let port = Vector::for_features(Features::PORTABLE);
        let best = Vector::for_features(Features::detect(crate::cpu::KernelCap::Auto));
        let (a, b) = (test_data(203, 90), test_data(203, 91));
        // Bit for bit the portable functions (the SIMD ones sum in another order and use their
        // own e^x), and within rounding of the SIMD ones.
        assert_eq!((port.dot)(&a, &b).to_bits(), dot_portable(&a, &b).to_bits());
        assert!(((port.dot)(&a, &b) - (best.dot)(&a, &b)).abs() < 1e-4);
        let (mut v1, mut v2, mut v3) = (a.clone(), a.clone(), a.clone());
        let s1 = (port.exp_shift_sum)(&mut v1, 0.5);
        let s2 = exp_shift_sum_portable(&mut v2, 0.5);
        let s3 = (best.exp_shift_sum)(&mut v3, 0.5);
        assert_eq!((s1.to_bits(), &v1), (s2.to_bits(), &v2));
        assert!((s1 - s3).abs() < 1e-4 * s1 && v1.iter().zip(&v3).all(|(x, y)| (x - y).abs() <= 1e-6 * x.abs()));
        let (mut o1, mut o2, mut o3) = (vec![0f32; 203], vec![0f32; 203], vec![0f32; 203]);
        (port.silu_mul)(&a, &b, &mut o1);
        silu_mul_portable(&a, &b, &mut o2);
        (best.silu_mul)(&a, &b, &mut o3);
        assert_eq!(o1, o2);
        assert!(o1.iter().zip(&o3).all(|(x, y)| (x - y).abs() <= 1e-6 * (1.0 + x.abs())));
        let (q, keys) = (test_data(64, 92), test_data(64 * 9, 93));
        let keys16: Vec<half::f16> = keys.iter().map(|&v| half::f16::from_f32(v)).collect();
        let (mut s1, mut s2, mut s3) = (vec![0f32; 9], vec![0f32; 9], vec![0f32; 9]);
        (port.attn_scores)(&q, &keys, 0.125, &mut s1);
        attn_scores_portable(&q, &keys, 0.125, &mut s2);
        (best.attn_scores)(&q, &keys, 0.125, &mut s3);
        assert_eq!(s1, s2);
        assert!(s1.iter().zip(&s3).all(|(x, y)| (x - y).abs() <= 1e-5 * (1.0 + x.abs())));
        (port.attn_scores_f16)(&q, &keys16, 0.125, &mut s1);
        attn_scores_portable(&q, &keys16, 0.125, &mut s2);
        assert_eq!(s1, s2);
        let p = test_data(9, 94);
        let (mut w1, mut w2, mut w3) = (vec![0f32; 64], vec![0f32; 64], vec![0f32; 64]);
        (port.attn_weighted_sum)(&p, &keys, &mut w1);
        attn_weighted_sum_portable(&p, &keys, &mut w2);
        (best.attn_weighted_sum)(&p, &keys, &mut w3);
        assert_eq!(w1, w2);
        assert!(w1.iter().zip(&w3).all(|(x, y)| (x - y).abs() <= 1e-5 * (1.0 + x.abs())));
        (port.attn_weighted_sum_f16)(&p, &keys16, &mut w1);
        attn_weighted_sum_portable(&p, &keys16, &mut w2);
        assert_eq!(w1, w2);
    }

    #[test]
    fn rope_rotates_pairs_half_apart() {
        let mut v = vec![1.0, 2.0, 3.0, 4.0];
        rope(&mut v, &[0.0, 1.0], &[1.0, 0.0]);
        assert_eq!(v, vec![-3.0, 2.0, 1.0, 4.0]);
    }
}
