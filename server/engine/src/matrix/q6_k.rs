//! ggml's Q6_K: super-blocks of 256 weights in 16 groups of 16, an f16 scale `d`, per group
//! an 8-bit signed scale `sc`, `w = d · sc · (q - 32)` with 6-bit `q`: the low 4 bits in `ql`,
//! the high 2 in `qh`. Half `n` of the block (128 weights) reads `ql[64n..64n + 64]` and
//! `qh[32n..32n + 32]`; its sub-block `g` (32 weights) takes the low (g < 2) or high nibbles
//! of `ql[64n + 32 (g % 2)..]` and bits `2g, 2g + 1` of `qh`.

use super::quant::{f16_to_f32, read_block, QuantBlock, SubScales};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
pub struct BlockQ6K {
    pub ql: [u8; 128],
    pub qh: [u8; 64],
    pub scales: [i8; 16],
    pub d: u16,
}

const _: () = assert!(std::mem::size_of::<BlockQ6K>() == 210);

impl QuantBlock for BlockQ6K {
    const GGML_TYPE: u32 = 14;
    const NAME: &'static str = "Q6_K";
    const SUBS: usize = 8;
    const BYTES: usize = 210;
    const ZERO: u8 = 32;

    fn from_bytes(b: &[u8]) -> Self {
        // SAFETY: integer fields only, 210 bytes (checked above), `b` checked by read_block.
        let raw: BlockQ6K = unsafe { read_block(b) };
        BlockQ6K { d: u16::from_le(raw.d), ..raw }
    }

    fn scales(&self) -> [SubScales; 8] {
        let d = f16_to_f32(self.d);
        std::array::from_fn(|j| {
            let a = [0, 1].map(|h| d * f32::from(self.scales[2 * j + h]));
            SubScales { a, b: a.map(|a| -32.0 * a) }
        })
    }

    fn quants(&self, j: usize) -> [u8; 32] {
        let (n, g) = (j / 4, j % 4);
        let ql = &self.ql[64 * n + 32 * (g % 2)..];
        let qh = &self.qh[32 * n..];
        std::array::from_fn(|t| {
            let low = if g < 2 { ql[t] & 0xf } else { ql[t] >> 4 };
            low | ((qh[t] >> (2 * g)) & 3) << 4
        })
    }
}
