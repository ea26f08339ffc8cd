//! ggml's Q8_0: blocks of 32 weights, an f16 scale and 32 signed bytes.

use half::f16;

use super::input::round_i8;
use super::Q8_GROUP;

/// One group of 32 weights: an f16 scale and 32 signed bytes (34 bytes, as q8_0).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
pub struct BlockQ8 {
    pub d: u16,
    pub q: [i8; Q8_GROUP],
}

pub(super) fn quantize_group(g: &[f32]) -> BlockQ8 {
    let amax = g.iter().fold(0f32, |m, x| m.max(x.abs()));
    let d = f16::from_f32(amax / 127.0);
    let inv = if d.to_f32() > 0.0 { 1.0 / d.to_f32() } else { 0.0 };
    let mut q = [0i8; Q8_GROUP];
    for (q, &x) in q.iter_mut().zip(g) {
        *q = round_i8((x * inv).clamp(-127.0, 127.0));
    }
    BlockQ8 { d: d.to_bits(), q }
}

/// The weights of whole blocks as f32 (`out` holds 32 per block). Not inlined into the
/// dispatch over formats, where it compiled to several times the instructions.
#[inline(never)]
pub(super) fn dequantize(blocks: &[BlockQ8], out: &mut [f32]) {
    for (b, o) in blocks.iter().zip(out.chunks_exact_mut(Q8_GROUP)) {
        let d = f16::from_bits(b.d).to_f32();
        let o: &mut [f32; Q8_GROUP] = o.try_into().expect("chunks of 32");
        for (o, &q) in o.iter_mut().zip(&b.q) {
            *o = d * f32::from(q);
        }
    }
}
