//! ggml's Q4_K: super-blocks of 256 weights in 8 sub-blocks of 32, an f16 scale `d` and
//! minimum scale `dmin`, per sub-block a 6-bit scale `sc` and min `m` (packed in 12 bytes),
//! `w = d · sc · q - dmin · m` with 4-bit `q`. Sub-blocks 2c and 2c + 1 are the low and high
//! nibbles of bytes `32c..32c + 32`.

use super::quant::{f16_to_f32, read_block, scale_min_k4, QuantBlock, SubScales};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
pub struct BlockQ4K {
    pub d: u16,
    pub dmin: u16,
    pub scales: [u8; 12],
    pub qs: [u8; 128],
}

const _: () = assert!(std::mem::size_of::<BlockQ4K>() == 144);

/// The sub-block scales of a Q4_K / Q5_K block.
pub(super) fn k4_scales(d: u16, dmin: u16, scales: &[u8; 12]) -> [SubScales; 8] {
    let (d, dmin) = (f16_to_f32(d), f16_to_f32(dmin));
    std::array::from_fn(|j| {
        let (sc, m) = scale_min_k4(j, scales);
        SubScales::uniform(d * f32::from(sc), -(dmin * f32::from(m)))
    })
}

impl QuantBlock for BlockQ4K {
    const GGML_TYPE: u32 = 12;
    const NAME: &'static str = "Q4_K";
    const SUBS: usize = 8;
    const BYTES: usize = 144;

    fn from_bytes(b: &[u8]) -> Self {
        // SAFETY: integer fields only, 144 bytes (checked above), `b` checked by read_block.
        let raw: BlockQ4K = unsafe { read_block(b) };
        BlockQ4K { d: u16::from_le(raw.d), dmin: u16::from_le(raw.dmin), ..raw }
    }

    fn scales(&self) -> [SubScales; 8] {
        k4_scales(self.d, self.dmin, &self.scales)
    }

    fn quants(&self, j: usize) -> [u8; 32] {
        let q = &self.qs[32 * (j / 2)..32 * (j / 2) + 32];
        std::array::from_fn(|t| if j.is_multiple_of(2) { q[t] & 0xf } else { q[t] >> 4 })
    }
}
