//! ggml's Q5_K: Q4_K with a fifth bit per weight: bit `j` of byte `t` of `qh` is the high bit
//! of weight `t` of sub-block `j`, `w = d · sc · q - dmin · m` with 5-bit `q`.

use super::q4_k::k4_scales;
use super::quant::{read_block, QuantBlock, SubScales};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
pub struct BlockQ5K {
    pub d: u16,
    pub dmin: u16,
    pub scales: [u8; 12],
    pub qh: [u8; 32],
    pub qs: [u8; 128],
}

const _: () = assert!(std::mem::size_of::<BlockQ5K>() == 176);

impl QuantBlock for BlockQ5K {
    const GGML_TYPE: u32 = 13;
    const NAME: &'static str = "Q5_K";
    const SUBS: usize = 8;
    const BYTES: usize = 176;

    fn from_bytes(b: &[u8]) -> Self {
        // SAFETY: integer fields only, 176 bytes (checked above), `b` checked by read_block.
        let raw: BlockQ5K = unsafe { read_block(b) };
        BlockQ5K { d: u16::from_le(raw.d), dmin: u16::from_le(raw.dmin), ..raw }
    }

    fn scales(&self) -> [SubScales; 8] {
        k4_scales(self.d, self.dmin, &self.scales)
    }

    fn quants(&self, j: usize) -> [u8; 32] {
        let q = &self.qs[32 * (j / 2)..32 * (j / 2) + 32];
        std::array::from_fn(|t| {
            let low = if j.is_multiple_of(2) { q[t] & 0xf } else { q[t] >> 4 };
            low | ((self.qh[t] >> j) & 1) << 4
        })
    }
}
