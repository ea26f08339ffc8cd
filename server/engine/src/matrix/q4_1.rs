//! ggml's Q4_1: blocks of 32 weights, an f16 scale `d` and minimum `m` and 32 nibbles,
//! `w = d · q + m`, nibbles laid out as Q4_0's.

use super::quant::{f16_to_f32, read_block, QuantBlock, SubScales};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
pub struct BlockQ4_1 {
    pub d: u16,
    pub m: u16,
    pub qs: [u8; 16],
}

const _: () = assert!(std::mem::size_of::<BlockQ4_1>() == 20);

impl QuantBlock for BlockQ4_1 {
    const GGML_TYPE: u32 = 3;
    const NAME: &'static str = "Q4_1";
    const SUBS: usize = 1;
    const BYTES: usize = 20;

    fn from_bytes(b: &[u8]) -> Self {
        // SAFETY: integer fields only, 20 bytes (checked above), `b` checked by read_block.
        let raw: BlockQ4_1 = unsafe { read_block(b) };
        BlockQ4_1 { d: u16::from_le(raw.d), m: u16::from_le(raw.m), ..raw }
    }

    fn scales(&self) -> [SubScales; 8] {
        let mut s = [SubScales::default(); 8];
        s[0] = SubScales::uniform(f16_to_f32(self.d), f16_to_f32(self.m));
        s
    }

    fn quants(&self, _j: usize) -> [u8; 32] {
        std::array::from_fn(|t| if t < 16 { self.qs[t] & 0xf } else { self.qs[t - 16] >> 4 })
    }
}

impl BlockQ4_1 {
    /// Quantizes 32 weights as ggml does (`quantize_row_q4_1_ref`): 16 steps from the minimum
    /// to the maximum.
    pub fn quantize(x: &[f32]) -> BlockQ4_1 {
        let (min, max) = x[..32].iter().fold((f32::MAX, f32::MIN), |(lo, hi), &v| (lo.min(v), hi.max(v)));
        let d = (max - min) / 15.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        let q = |v: f32| (((v - min) * id + 0.5) as i32).clamp(0, 15) as u8;
        BlockQ4_1 {
            d: half::f16::from_f32(d).to_bits(),
            m: half::f16::from_f32(min).to_bits(),
            qs: std::array::from_fn(|j| q(x[j]) | q(x[j + 16]) << 4),
        }
    }
}
