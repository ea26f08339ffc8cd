//! The float formats: bf16 rounding and widening, and the element trait of the f32 / bf16
//! streaming kernels' scalar tails.

/// `bf16::from_f32(v).to_bits()` (round to nearest even, NaN kept quiet), without branches so
/// that loops over it vectorize.
#[inline]
pub(super) fn bf16_bits(v: f32) -> u16 {
    let x = v.to_bits();
    let nan = x & 0x7fff_ffff > 0x7f80_0000;
    let up = u32::from(x & 0x8000 != 0 && x & 0x17fff != 0);
    let r = (x >> 16) + up;
    (if nan { (x >> 16) | 0x40 } else { r }) as u16
}

/// A stored weight element as f32 (the scalar tails of the SIMD kernels).
pub(super) trait Weight: Copy {
    fn to_f32(self) -> f32;
}

impl Weight for f32 {
    fn to_f32(self) -> f32 {
        self
    }
}

impl Weight for u16 {
    /// bf16: the 16 bits are the high half of an f32.
    fn to_f32(self) -> f32 {
        f32::from_bits((self as u32) << 16)
    }
}

pub(super) fn widen_bf16(src: &[u16], out: &mut [f32]) {
    for (o, &b) in out.iter_mut().zip(src) {
        *o = b.to_f32();
    }
}

impl Weight for half::f16 {
    fn to_f32(self) -> f32 {
        half::f16::to_f32(self)
    }
}
