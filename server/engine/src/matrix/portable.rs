//! The portable kernels: plain Rust, the reference the SIMD families are tested against.

use half::f16;

use super::float::Weight;
use super::input::BlockQ8A;
use super::q8_0::BlockQ8;
use super::quant::{dot_sub, QuantBlock};
use crate::ops;

pub fn dots_f32(x: &[f32], m: usize, w: &[f32], out: &mut [f32]) {
    let k = w.len();
    for (i, o) in out[..m].iter_mut().enumerate() {
        *o = ops::dot(&x[i * k..(i + 1) * k], w);
    }
}

pub fn dots_bf16(x: &[f32], m: usize, w: &[u16], out: &mut [f32]) {
    dots_widened(x, m, w, out)
}

pub fn dots_f16(x: &[f32], m: usize, w: &[f16], out: &mut [f32]) {
    dots_widened(x, m, w, out)
}

/// Input rows against one row of 16-bit weights, widened to f32 (eight partial sums).
fn dots_widened<W: Weight>(x: &[f32], m: usize, w: &[W], out: &mut [f32]) {
    let k = w.len();
    for (i, o) in out[..m].iter_mut().enumerate() {
        let xr = &x[i * k..(i + 1) * k];
        let mut acc = [0f32; 8];
        let mut t = 0;
        while t + 8 <= k {
            for l in 0..8 {
                acc[l] += xr[t + l] * w[t + l].to_f32();
            }
            t += 8;
        }
        let mut s: f32 = acc.iter().sum();
        for t in t..k {
            s += xr[t] * w[t].to_f32();
        }
        *o = s;
    }
}

pub fn dots_q8(x: &[BlockQ8A], m: usize, w: &[BlockQ8], g: usize, out: &mut [f32]) {
    for (wr, out) in w.chunks_exact(g).zip(out.chunks_exact_mut(m)) {
        for (i, o) in out.iter_mut().enumerate() {
            let mut s = 0f32;
            for (xb, wb) in x[i * g..(i + 1) * g].iter().zip(wr) {
                let dot: i32 = xb.q.iter().zip(&wb.q).map(|(&a, &b)| a as i32 * b as i32).sum();
                s += dot as f32 * (xb.d * f16::from_bits(wb.d).to_f32());
            }
            *o = s;
        }
    }
}

/// Quantized input rows against rows of a ggml block format (see [`super::quant`]).
pub fn dots_quant<B: QuantBlock>(x: &[BlockQ8A], m: usize, w: &[B], g: usize, out: &mut [f32]) {
    let per_row = g / B::SUBS;
    for (wr, out) in w.chunks_exact(per_row).zip(out.chunks_exact_mut(m)) {
        for (i, o) in out.iter_mut().enumerate() {
            let mut s = 0f32;
            for (wb, xb) in wr.iter().zip(x[i * g..(i + 1) * g].chunks_exact(B::SUBS)) {
                let sc = wb.scales();
                for (j, x) in xb.iter().enumerate() {
                    s += dot_sub(x, &wb.quants(j), &sc[j]);
                }
            }
            *o = s;
        }
    }
}

/// The weights of whole blocks as f32 ([`QuantBlock::dequantize`] block by block).
pub fn dequantize<B: QuantBlock>(w: &[B], out: &mut [f32]) {
    for (b, o) in w.iter().zip(out.chunks_exact_mut(32 * B::SUBS)) {
        b.dequantize(o);
    }
}
