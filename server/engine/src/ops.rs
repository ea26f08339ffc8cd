//! CPU kernels on f32 activations: the blocked GEMM entry points, dot products, RMSNorm,
//! rotary embedding, softmax, SwiGLU. (Products with stored weights in their storage formats
//! are in [`crate::matrix`].) SIMD variants are picked at run time, so one binary runs on any
//! x86-64 (and elsewhere through the portable fallback).

use std::sync::OnceLock;

use crate::pool::pool;

type DotFn = fn(&[f32], &[f32]) -> f32;

fn dot_impl() -> DotFn {
    static IMPL: OnceLock<DotFn> = OnceLock::new();
    *IMPL.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            if std::is_x86_feature_detected!("avx512f") {
                return |a, b| unsafe { x86::dot_avx512(a, b) };
            }
            if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                return |a, b| unsafe { x86::dot_avx2(a, b) };
            }
        }
        dot_portable
    })
}

/// Dot product of two equally long slices.
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    (dot_impl())(a, b)
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
mod x86 {
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
        let v = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
        let lo = _mm256_castps256_ps128(v);
        let hi = _mm256_extractf128_ps(v, 1);
        let s4 = _mm_add_ps(lo, hi);
        let s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
        let s1 = _mm_add_ss(s2, _mm_shuffle_ps(s2, s2, 1));
        let mut s = _mm_cvtss_f32(s1);
        while i < n {
            s += *pa.add(i) * *pb.add(i);
            i += 1;
        }
        s
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
unsafe fn gemm_raw(dst: *mut f32, ldc: usize, a: &[f32], b: &[f32], (m, k, n): (usize, usize, usize), (cs, rs): (usize, usize)) {
    if m == 0 || n == 0 {
        return;
    }
    gemm::gemm(
        m, n, k,
        dst, 1, ldc as isize,
        false,
        a.as_ptr(), 1, k as isize,
        b.as_ptr(), cs as isize, rs as isize,
        0.0, 1.0,
        false, false, false,
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
    let mut sum = 0.0;
    for x in v.iter_mut() {
        *x = (*x - max).exp();
        sum += *x;
    }
    let inv = 1.0 / sum;
    v.iter_mut().for_each(|x| *x *= inv);
}

/// `out = silu(gate) * up` for SwiGLU; `gu` holds each row as `[gate | up]`.
pub fn swiglu(gu: &[f32], out: &mut [f32], inter: usize) {
    let rows = |r0: usize, out: &mut [f32]| {
        for (row, o) in gu[r0 * 2 * inter..].chunks_exact(2 * inter).zip(out.chunks_exact_mut(inter)) {
            let (g, u) = row.split_at(inter);
            for ((o, &g), &u) in o.iter_mut().zip(g).zip(u) {
                *o = g / (1.0 + (-g).exp()) * u;
            }
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
    fn rope_rotates_pairs_half_apart() {
        let mut v = vec![1.0, 2.0, 3.0, 4.0];
        rope(&mut v, &[0.0, 1.0], &[1.0, 0.0]);
        assert_eq!(v, vec![-3.0, 2.0, 1.0, 4.0]);
    }
}
