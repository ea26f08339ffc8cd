//! ggml's Q4_0: blocks of 32 weights, an f16 scale `d` and 32 nibbles, `w = d · (q - 8)`.
//! Byte `j` holds weight `j` in its low nibble and weight `j + 16` in its high one.

use super::quant::{f16_to_f32, read_block, QuantBlock, SubScales};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
pub struct BlockQ4_0 {
    pub d: u16,
    pub qs: [u8; 16],
}

const _: () = assert!(std::mem::size_of::<BlockQ4_0>() == 18);

impl QuantBlock for BlockQ4_0 {
    const GGML_TYPE: u32 = 2;
    const NAME: &'static str = "Q4_0";
    const SUBS: usize = 1;
    const BYTES: usize = 18;
    const ZERO: u8 = 8;

    fn from_bytes(b: &[u8]) -> Self {
        // SAFETY: integer fields only, 18 bytes (checked above), `b` checked by read_block.
        let raw: BlockQ4_0 = unsafe { read_block(b) };
        BlockQ4_0 { d: u16::from_le(raw.d), ..raw }
    }

    fn scales(&self) -> [SubScales; 8] {
        let d = f16_to_f32(self.d);
        let mut s = [SubScales::default(); 8];
        s[0] = SubScales::uniform(d, -8.0 * d);
        s
    }

    fn quants(&self, _j: usize) -> [u8; 32] {
        std::array::from_fn(|t| if t < 16 { self.qs[t] & 0xf } else { self.qs[t - 16] >> 4 })
    }
}

impl BlockQ4_0 {
    /// Quantizes 32 weights as ggml does (`quantize_row_q4_0_ref`): the scale maps the value
    /// of largest magnitude to -8.
    pub fn quantize(x: &[f32]) -> BlockQ4_0 {
        let (mut amax, mut max) = (0f32, 0f32);
        for &v in &x[..32] {
            if v.abs() > amax {
                amax = v.abs();
                max = v;
            }
        }
        let d = max / -8.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        let q = |v: f32| ((v * id + 8.5) as i32).clamp(0, 15) as u8;
        BlockQ4_0 { d: half::f16::from_f32(d).to_bits(), qs: std::array::from_fn(|j| q(x[j]) | q(x[j + 16]) << 4) }
    }
}
