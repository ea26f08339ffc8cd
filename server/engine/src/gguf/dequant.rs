//! ggml's tensor types and a scalar reference dequantization of their blocks to f32, written
//! after ggml's `dequantize_row_*` (ggml-quants.c) so that a weight comes out as the same f32
//! that llama.cpp and gguf-py compute.

use half::{bf16, f16};

/// The ggml tensor types the loader reads (ids as in ggml.h).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GgmlType {
    F32,
    F16,
    Bf16,
    Q4_0,
    Q4_1,
    /// 5-bit blocks: computed on after conversion to q8 at load (see [`GgmlType::stored_format`]).
    Q5_0,
    Q5_1,
    Q8_0,
    Q4K,
    Q5K,
    Q6K,
}

/// Elements per k-quant super-block.
const QK_K: usize = 256;

impl GgmlType {
    /// ggml's numeric id of the type.
    pub fn id(self) -> u32 {
        match self {
            GgmlType::F32 => 0,
            GgmlType::F16 => 1,
            GgmlType::Q4_0 => 2,
            GgmlType::Q4_1 => 3,
            GgmlType::Q5_0 => 6,
            GgmlType::Q5_1 => 7,
            GgmlType::Q8_0 => 8,
            GgmlType::Q4K => 12,
            GgmlType::Q5K => 13,
            GgmlType::Q6K => 14,
            GgmlType::Bf16 => 30,
        }
    }

    /// The weight format that computes on this type's blocks as they are stored, or for the
    /// types the kernels lack (Q5_0, Q5_1: llama.cpp's Q4_K_M files hold them where a row is
    /// not whole k-quant blocks) the nearest one they are converted to at load, q8.
    pub fn stored_format(self) -> crate::matrix::WeightFormat {
        use crate::matrix::WeightFormat as F;
        match self {
            GgmlType::F32 => F::F32,
            GgmlType::F16 => F::F16,
            GgmlType::Bf16 => F::Bf16,
            GgmlType::Q4_0 => F::Q4,
            GgmlType::Q4_1 => F::Q4_1,
            GgmlType::Q5_0 | GgmlType::Q5_1 => F::Q8,
            GgmlType::Q8_0 => F::Q8,
            GgmlType::Q4K => F::Q4K,
            GgmlType::Q5K => F::Q5K,
            GgmlType::Q6K => F::Q6K,
        }
    }

    /// The type of a ggml type id; a known type the loader does not read is refused by name.
    pub fn from_id(id: u32) -> Result<GgmlType, String> {
        Ok(match id {
            0 => GgmlType::F32,
            1 => GgmlType::F16,
            2 => GgmlType::Q4_0,
            3 => GgmlType::Q4_1,
            6 => GgmlType::Q5_0,
            7 => GgmlType::Q5_1,
            8 => GgmlType::Q8_0,
            12 => GgmlType::Q4K,
            13 => GgmlType::Q5K,
            14 => GgmlType::Q6K,
            30 => GgmlType::Bf16,
            other => {
                let name = match other {
                    9 => "Q8_1",
                    10 => "Q2_K",
                    11 => "Q3_K",
                    15 => "Q8_K",
                    16 => "IQ2_XXS",
                    17 => "IQ2_XS",
                    18 => "IQ3_XXS",
                    19 => "IQ1_S",
                    20 => "IQ4_NL",
                    21 => "IQ3_S",
                    22 => "IQ2_S",
                    23 => "IQ4_XS",
                    24 => "I8",
                    25 => "I16",
                    26 => "I32",
                    27 => "I64",
                    28 => "F64",
                    29 => "IQ1_M",
                    34 => "TQ1_0",
                    35 => "TQ2_0",
                    39 => "MXFP4",
                    _ => return Err(format!("unknown ggml tensor type {other}")),
                };
                return Err(format!(
                    "tensor type {name} is not supported (supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K, Q6_K)"
                ));
            }
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            GgmlType::F32 => "F32",
            GgmlType::F16 => "F16",
            GgmlType::Bf16 => "BF16",
            GgmlType::Q4_0 => "Q4_0",
            GgmlType::Q4_1 => "Q4_1",
            GgmlType::Q5_0 => "Q5_0",
            GgmlType::Q5_1 => "Q5_1",
            GgmlType::Q8_0 => "Q8_0",
            GgmlType::Q4K => "Q4_K",
            GgmlType::Q5K => "Q5_K",
            GgmlType::Q6K => "Q6_K",
        }
    }

    /// `(elements, bytes)` of one block.
    pub fn block(self) -> (usize, usize) {
        match self {
            GgmlType::F32 => (1, 4),
            GgmlType::F16 | GgmlType::Bf16 => (1, 2),
            GgmlType::Q4_0 => (32, 18),
            GgmlType::Q4_1 => (32, 20),
            GgmlType::Q5_0 => (32, 22),
            GgmlType::Q5_1 => (32, 24),
            GgmlType::Q8_0 => (32, 34),
            GgmlType::Q4K => (QK_K, 144),
            GgmlType::Q5K => (QK_K, 176),
            GgmlType::Q6K => (QK_K, 210),
        }
    }

    pub fn is_quantized(self) -> bool {
        self.block().0 > 1
    }

    /// Whether the kernels compute on this type's blocks as stored (else they are converted to
    /// [`GgmlType::stored_format`] at load).
    pub fn computed_as_stored(self) -> bool {
        !matches!(self, GgmlType::Q5_0 | GgmlType::Q5_1)
    }

    /// Bytes of one row of `cols` elements (a row is a whole number of blocks).
    pub fn row_bytes(self, cols: usize) -> Result<usize, String> {
        let (n, b) = self.block();
        if !cols.is_multiple_of(n) {
            return Err(format!("rows of {cols} elements are not whole {} blocks of {n}", self.name()));
        }
        Ok(cols / n * b)
    }

    /// Bytes of a tensor of `numel` elements whose rows are `cols` long.
    pub fn bytes_for(self, cols: u64, numel: u64) -> Result<u64, String> {
        let (n, b) = self.block();
        if !cols.is_multiple_of(n as u64) {
            return Err(format!("rows of {cols} elements are not whole {} blocks of {n}", self.name()));
        }
        (numel / n as u64).checked_mul(b as u64).ok_or_else(|| "size overflows".to_string())
    }
}

fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// Dequantizes `data` (whole blocks of `ty`, `numel` elements) to f32.
pub fn to_f32(ty: GgmlType, data: &[u8], numel: usize) -> Result<Vec<f32>, String> {
    let (n, bytes) = ty.block();
    if !numel.is_multiple_of(n) || data.len() != numel / n * bytes {
        return Err(format!("{} bytes do not hold {numel} elements of {}", data.len(), ty.name()));
    }
    let mut out = Vec::with_capacity(numel);
    let blocks = data.chunks_exact(bytes);
    match ty {
        GgmlType::F32 => out.extend(blocks.map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))),
        GgmlType::F16 => out.extend(blocks.map(|b| f16_at(b, 0))),
        GgmlType::Bf16 => out.extend(blocks.map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32())),
        GgmlType::Q8_0 => blocks.for_each(|b| {
            let d = f16_at(b, 0);
            out.extend(b[2..].iter().map(|&q| q as i8 as f32 * d));
        }),
        GgmlType::Q4_0 => blocks.for_each(|b| {
            let (d, qs) = (f16_at(b, 0), &b[2..18]);
            out.extend(qs.iter().map(|&q| ((q & 0xF) as i32 - 8) as f32 * d));
            out.extend(qs.iter().map(|&q| ((q >> 4) as i32 - 8) as f32 * d));
        }),
        GgmlType::Q4_1 => blocks.for_each(|b| {
            let (d, m, qs) = (f16_at(b, 0), f16_at(b, 2), &b[4..20]);
            out.extend(qs.iter().map(|&q| (q & 0xF) as f32 * d + m));
            out.extend(qs.iter().map(|&q| (q >> 4) as f32 * d + m));
        }),
        // ggml's dequantize_row_q5_0 / _q5_1: the fifth bit of weight j in bit j of `qh`.
        GgmlType::Q5_0 | GgmlType::Q5_1 => blocks.for_each(|b| {
            let (d, m, rest) = match ty {
                GgmlType::Q5_0 => (f16_at(b, 0), None, &b[2..]),
                _ => (f16_at(b, 0), Some(f16_at(b, 2)), &b[4..]),
            };
            let qh = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]);
            let qs = &rest[4..20];
            let value = |q: u32| match m {
                None => (q as i32 - 16) as f32 * d,
                Some(m) => q as f32 * d + m,
            };
            out.extend(qs.iter().enumerate().map(|(j, &q)| value(u32::from(q & 0xF) | ((qh >> j) << 4 & 0x10))));
            out.extend(qs.iter().enumerate().map(|(j, &q)| value(u32::from(q >> 4) | ((qh >> (j + 12)) & 0x10))));
        }),
        GgmlType::Q4K => blocks.for_each(|b| {
            let (d, min, scales, qs) = (f16_at(b, 0), f16_at(b, 2), &b[4..16], &b[16..144]);
            for j in 0..QK_K / 64 {
                let q = &qs[32 * j..32 * j + 32];
                let (sc1, m1) = scale_min_k4(2 * j, scales);
                let (sc2, m2) = scale_min_k4(2 * j + 1, scales);
                let (d1, m1, d2, m2) = (d * sc1 as f32, min * m1 as f32, d * sc2 as f32, min * m2 as f32);
                out.extend(q.iter().map(|&x| d1 * (x & 0xF) as f32 - m1));
                out.extend(q.iter().map(|&x| d2 * (x >> 4) as f32 - m2));
            }
        }),
        GgmlType::Q5K => blocks.for_each(|b| {
            let (d, min, scales) = (f16_at(b, 0), f16_at(b, 2), &b[4..16]);
            let (qh, qs) = (&b[16..48], &b[48..176]);
            for j in 0..QK_K / 64 {
                let ql = &qs[32 * j..32 * j + 32];
                let (u1, u2) = (1u8 << (2 * j), 2u8 << (2 * j));
                let (sc1, m1) = scale_min_k4(2 * j, scales);
                let (sc2, m2) = scale_min_k4(2 * j + 1, scales);
                let (d1, m1, d2, m2) = (d * sc1 as f32, min * m1 as f32, d * sc2 as f32, min * m2 as f32);
                let hi = |h: u8, u: u8| if h & u != 0 { 16 } else { 0 };
                out.extend(ql.iter().zip(qh).map(|(&x, &h)| d1 * ((x & 0xF) + hi(h, u1)) as f32 - m1));
                out.extend(ql.iter().zip(qh).map(|(&x, &h)| d2 * ((x >> 4) + hi(h, u2)) as f32 - m2));
            }
        }),
        GgmlType::Q6K => blocks.for_each(|b| {
            let (ql, qh, sc, d) = (&b[0..128], &b[128..192], &b[192..208], f16_at(b, 208));
            for n in 0..2 {
                let (ql, qh, sc) = (&ql[64 * n..64 * n + 64], &qh[32 * n..32 * n + 32], &sc[8 * n..8 * n + 8]);
                let mut y = [0f32; 128];
                for l in 0..32 {
                    let is = l / 16;
                    let q1 = ((ql[l] & 0xF) | ((qh[l] & 3) << 4)) as i32 - 32;
                    let q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
                    let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
                    let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
                    let s = |k: usize| d * sc[is + k] as i8 as f32;
                    y[l] = s(0) * q1 as f32;
                    y[l + 32] = s(2) * q2 as f32;
                    y[l + 64] = s(4) * q3 as f32;
                    y[l + 96] = s(6) * q4 as f32;
                }
                out.extend_from_slice(&y);
            }
        }),
    }
    Ok(out)
}

/// The 6-bit scale and min of sub-block `j` of a Q4_K / Q5_K super-block (ggml's
/// `get_scale_min_k4`).
fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        ((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4), (q[j + 4] >> 4) | ((q[j] >> 6) << 4))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(x: f32) -> [u8; 2] {
        f16::from_f32(x).to_le_bytes()
    }

    #[test]
    fn q8_0_q4_0_and_q4_1_blocks_decode_as_ggml_does() {
        let mut q8 = h(0.5).to_vec();
        q8.extend((0..32).map(|i| (i as i8 - 16) as u8));
        let want: Vec<f32> = (0..32).map(|i| (i as f32 - 16.0) * 0.5).collect();
        assert_eq!(to_f32(GgmlType::Q8_0, &q8, 32).unwrap(), want);

        // Nibble j holds element j, the high nibble element j + 16.
        let qs: Vec<u8> = (0..16u8).map(|j| j | ((15 - j) << 4)).collect();
        let mut q4 = h(2.0).to_vec();
        q4.extend(&qs);
        let got = to_f32(GgmlType::Q4_0, &q4, 32).unwrap();
        assert_eq!(got[0], -16.0);
        assert_eq!(got[15], 14.0);
        assert_eq!(got[16], 14.0);
        assert_eq!(got[31], -16.0);

        let mut q41 = h(0.25).to_vec();
        q41.extend(h(-1.0));
        q41.extend(&qs);
        let got = to_f32(GgmlType::Q4_1, &q41, 32).unwrap();
        assert_eq!((got[0], got[1], got[16]), (-1.0, -0.75, 2.75));
    }

    /// One Q4_K super-block with known scales: sub-block s has scale s + 1 and min s, so
    /// every element is `d * (s + 1) * q - dmin * s`.
    #[test]
    fn q4_k_and_q5_k_scales_and_mins_unpack() {
        let mut scales = [0u8; 12];
        let (sc, mn): (Vec<u8>, Vec<u8>) = ((1..=8).collect(), (0..8).collect());
        for j in 0..8 {
            if j < 4 {
                scales[j] = sc[j];
                scales[j + 4] = mn[j];
            } else {
                scales[j + 4] = (sc[j] & 0xF) | ((mn[j] & 0xF) << 4);
                scales[j - 4] |= (sc[j] >> 4) << 6;
                scales[j] |= (mn[j] >> 4) << 6;
            }
        }
        for j in 0..8 {
            assert_eq!(scale_min_k4(j, &scales), (sc[j], mn[j]));
        }
        let qs: Vec<u8> = (0..128).map(|i| (i % 16) as u8 | (((i + 3) % 16) as u8) << 4).collect();
        let mut b = h(0.5).to_vec();
        b.extend(h(0.25));
        b.extend(scales);
        b.extend(&qs);
        let got = to_f32(GgmlType::Q4K, &b, 256).unwrap();
        for (i, &y) in got.iter().enumerate() {
            let (s, l) = (i / 32, i % 32);
            let byte = qs[32 * (s / 2) + l];
            let q = if s % 2 == 0 { byte & 0xF } else { byte >> 4 };
            assert_eq!(y, 0.5 * sc[s] as f32 * q as f32 - 0.25 * mn[s] as f32, "element {i}");
        }

        // Q5_K: the same plus a fifth bit from qh, bit 2j for the low nibbles of pair j.
        let qh: Vec<u8> = (0..32).map(|l| if l % 3 == 0 { 0xFF } else { 0x05 }).collect();
        let mut b5 = h(0.5).to_vec();
        b5.extend(h(0.25));
        b5.extend(scales);
        b5.extend(&qh);
        b5.extend(&qs);
        let got = to_f32(GgmlType::Q5K, &b5, 256).unwrap();
        for (i, &y) in got.iter().enumerate() {
            let (s, l) = (i / 32, i % 32);
            let byte = qs[32 * (s / 2) + l];
            let q = if s % 2 == 0 { byte & 0xF } else { byte >> 4 };
            let q = q + if qh[l] & (1 << s) != 0 { 16 } else { 0 };
            assert_eq!(y, 0.5 * sc[s] as f32 * q as f32 - 0.25 * mn[s] as f32, "element {i}");
        }
    }

    #[test]
    fn q6_k_six_bit_values_and_signed_scales() {
        let ql: Vec<u8> = (0..128).map(|i| (i * 7 % 256) as u8).collect();
        let qh: Vec<u8> = (0..64).map(|i| (i * 13 % 256) as u8).collect();
        let sc: Vec<i8> = (0..16).map(|i| i as i8 - 8).collect();
        let mut b = ql.clone();
        b.extend(&qh);
        b.extend(sc.iter().map(|&s| s as u8));
        b.extend(h(0.125));
        let got = to_f32(GgmlType::Q6K, &b, 256).unwrap();
        // Element e of half n: l = e % 32, quarter k = e / 32 (low/high nibble of ql[l] or
        // ql[l + 32], bits 2k..2k+1 of qh[l]), scale 16-element group 2k + l / 16.
        for (i, &y) in got.iter().enumerate() {
            let (n, e) = (i / 128, i % 128);
            let (k, l) = (e / 32, e % 32);
            let lo = ql[64 * n + l + if k % 2 == 1 { 32 } else { 0 }];
            let lo = if k >= 2 { lo >> 4 } else { lo & 0xF };
            let hi = (qh[32 * n + l] >> (2 * k)) & 3;
            let q = (lo | (hi << 4)) as i32 - 32;
            let s = sc[8 * n + 2 * k + l / 16];
            assert_eq!(y, 0.125 * s as f32 * q as f32, "element {i}");
        }
    }

    #[test]
    fn unsupported_types_are_named_and_sizes_checked() {
        assert!(GgmlType::from_id(10).unwrap_err().contains("Q2_K"));
        assert!(GgmlType::from_id(77).unwrap_err().contains("unknown ggml tensor type 77"));
        assert!(GgmlType::Q4K.row_bytes(100).is_err());
        assert_eq!(GgmlType::Q6K.row_bytes(512).unwrap(), 420);
        assert!(to_f32(GgmlType::Q8_0, &[0; 33], 32).is_err());
    }
}
