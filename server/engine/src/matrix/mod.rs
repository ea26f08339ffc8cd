//! Weight matrices in the storage formats the engine computes on directly: f32 (the
//! reference), f16 and bf16, ggml's Q8_0 (`q8`: int8 with one f16 scale per group of 32), and
//! ggml's 4-bit and k-quant blocks (Q4_0, Q4_1, Q4_K, Q5_K, Q6_K), each kept in memory as
//! stored.
//!
//! A [`Matrix`] is a linear layer's weight in the PyTorch `[out, in]` layout (ggml's `ne[0]`
//! is `cols`). Products come in two shapes:
//! - few rows (decode: one row per running sequence): each weight row is streamed once from
//!   memory and dotted with every input row while it is in registers. 16-bit rows are widened
//!   to f32 in registers; for the quantized formats the input rows are quantized to int8
//!   groups of 32 first and the dot products run on integers (`maddubs` on AVX2, `vpdpbusd`
//!   where the CPU has AVX-512 VNNI), as llama.cpp does.
//! - many rows (prefill): the weight is widened panel by panel (64 output columns at a time,
//!   per thread) into an f32 scratch and multiplied with the blocked GEMM, so the cost of the
//!   widening is shared by every input row and no full f32 copy is ever held. Where native bf16
//!   products are switched on, bf16 weights instead meet inputs rounded to bf16 and packed in
//!   column pairs, in a register-tiled `vdpbf16ps` GEMM; on AVX-512 VNNI, q8 weights meet
//!   inputs quantized per group and packed four columns at a time, in a `vpdpbusd` GEMM.
//! - Q4_0, Q4_1 and Q8_0 rows interleaved sixteen at a time (`interleaved`, where the CPU has
//!   AVX2): both shapes go through one kernel over quantized inputs, the sixteen rows' sums in
//!   the lanes of the registers.
//!
//! The modules: one per storage format (`float`, [`q8_0`], [`q4_0`], [`q4_1`], [`q4_k`],
//! [`q5_k`], [`q6_k`]; [`quant`] is what the ggml block formats share), the inputs of the
//! integer and native bf16 products (`input`), and one module per CPU feature family
//! (`portable`, `avx2`, `avx512`) behind one kernel table (`kernels`), chosen once for
//! [`crate::cpu::features`].

#[macro_use]
mod kernels;
#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
mod float;
mod input;
mod interleaved;
mod portable;
pub mod q4_0;
pub mod q4_1;
pub mod q4_k;
pub mod q5_k;
pub mod q6_k;
pub mod q8_0;
pub mod quant;

use std::cell::RefCell;
use std::str::FromStr;

use half::{bf16, f16};

use crate::cpu::pool;
use crate::error::{EngineError, Result};
use crate::ops;
use float::{bf16_bits, widen_bf16};
use input::{quantize_rows, BfPairs, BlockQ8A, Q8Rows, INPUT_BF16, INPUT_WORDS, QUANT_ROWS};
use interleaved::{Q4x16, Q8x16};
use kernels::{kernels, GemmBf16Native};
use q8_0::quantize_group;
pub use q8_0::BlockQ8;
pub use quant::{BlockQ4K, BlockQ4_0, BlockQ4_1, BlockQ5K, BlockQ6K, QuantBlock};

/// Elements per quantization group of the q8 format (and per sub-block of the others).
pub const Q8_GROUP: usize = 32;

/// Rows at or above which a product goes to the blocked GEMM instead of the streaming kernels.
const GEMM_MIN_ROWS: usize = 16;
/// Most input rows the streaming kernels take (their stack buffers' size).
const FEW_ROWS_MAX: usize = GEMM_MIN_ROWS;

/// Input rows from which a bf16 product goes to the native bf16 kernels (AVX-512 BF16) when
/// they are switched on ([`crate::cpu::CpuOptions::bf16_native`]; one row measured slower than
/// the widening kernels): the streaming kernel up to `NATIVE_BF16_ROWS_MAX` rows, the packed
/// GEMM above.
const NATIVE_BF16_MIN_ROWS: usize = 8;
const NATIVE_BF16_ROWS_MAX: usize = 15;
/// Input rows from which q8 products go to the VNNI GEMM where the CPU has it (in blocks of 8
/// rows up to 8, of 16 above; from 8 rows it measured at least as fast as the streaming VNNI
/// kernel it replaced, BENCHMARKS.md); fewer go to the streaming kernels.
const Q8_GEMM_MIN_ROWS: usize = 8;
/// Weight rows per task of the packed native bf16 GEMM (a multiple of its tile's 6).
const NATIVE_GEMM_COLS: usize = 48;

/// Output columns per task in the streaming kernels and per widened panel in prefill.
const COLS: usize = 32;
const PANEL: usize = 64;

/// How weights are stored in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightFormat {
    F32,
    F16,
    Bf16,
    /// ggml's Q8_0.
    Q8,
    /// ggml's Q4_0.
    Q4,
    Q4_1,
    Q4K,
    Q5K,
    Q6K,
}

impl WeightFormat {
    pub fn name(self) -> &'static str {
        match self {
            WeightFormat::F32 => "f32",
            WeightFormat::F16 => "f16",
            WeightFormat::Bf16 => "bf16",
            WeightFormat::Q8 => "q8",
            WeightFormat::Q4 => "q4",
            WeightFormat::Q4_1 => "q4_1",
            WeightFormat::Q4K => "q4_k",
            WeightFormat::Q5K => "q5_k",
            WeightFormat::Q6K => "q6_k",
        }
    }

    /// Weights per block of the format (1 for the float formats).
    pub fn block(self) -> usize {
        match self {
            WeightFormat::F32 | WeightFormat::F16 | WeightFormat::Bf16 => 1,
            WeightFormat::Q8 | WeightFormat::Q4 | WeightFormat::Q4_1 => 32,
            WeightFormat::Q4K | WeightFormat::Q5K | WeightFormat::Q6K => 256,
        }
    }
}

impl std::fmt::Display for WeightFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The formats a checkpoint's f32 weights can be converted to at load (`--weights`). q4 is
/// ggml's Q4_0: blocks of 32 (every width the q8 format takes), the fastest 4-bit kernels,
/// and what llama.cpp's Q4_0 files hold, so the two compare like for like.
impl FromStr for WeightFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "f32" | "fp32" | "float32" => Ok(WeightFormat::F32),
            "bf16" | "bfloat16" => Ok(WeightFormat::Bf16),
            "q8" | "q8_0" | "int8" => Ok(WeightFormat::Q8),
            "q4" | "q4_0" => Ok(WeightFormat::Q4),
            "q4_1" => Ok(WeightFormat::Q4_1),
            other => Err(format!("unknown weight format {other:?}; use f32, bf16, q8, q4 or q4_1")),
        }
    }
}

#[derive(PartialEq)]
enum Data {
    F32(Vec<f32>),
    F16(Vec<f16>),
    Bf16(Vec<u16>),
    Q8(Vec<BlockQ8>),
    Q4_0(Vec<BlockQ4_0>),
    Q4_1(Vec<BlockQ4_1>),
    /// Q4_0, Q4_1 and Q8_0 rows interleaved sixteen at a time ([`interleaved`]).
    Q4_0x16(Vec<Q4x16>),
    Q4_1x16(Vec<Q4x16>),
    Q8x16(Vec<Q8x16>),
    Q4K(Vec<BlockQ4K>),
    Q5K(Vec<BlockQ5K>),
    Q6K(Vec<BlockQ6K>),
}

/// ggml's type ids of the tensor types [`Matrix::from_ggml`] takes.
pub mod ggml_type {
    pub const F32: u32 = 0;
    pub const F16: u32 = 1;
    pub const Q4_0: u32 = 2;
    pub const Q4_1: u32 = 3;
    pub const Q8_0: u32 = 8;
    pub const Q4_K: u32 = 12;
    pub const Q5_K: u32 = 13;
    pub const Q6_K: u32 = 14;
    pub const BF16: u32 = 30;
}

/// A `[rows, cols]` weight matrix (rows = output features).
#[derive(PartialEq)]
pub struct Matrix {
    pub rows: usize,
    pub cols: usize,
    data: Data,
}

/// The blocks of a ggml tensor's bytes (`data.len()` already checked to be whole blocks).
fn blocks<B: QuantBlock>(data: &[u8]) -> Vec<B> {
    data.chunks_exact(B::BYTES).map(B::from_bytes).collect()
}

impl Matrix {
    /// Stores `w` (`rows * cols` floats) in `format`. The block formats need `cols` to be a
    /// multiple of their block; other shapes fall back to bf16 (see [`Matrix::format`]).
    pub fn new(w: Vec<f32>, rows: usize, cols: usize, format: WeightFormat) -> Matrix {
        assert_eq!(w.len(), rows * cols, "Matrix::new: {} floats for [{rows}, {cols}]", w.len());
        if format == WeightFormat::F32 {
            return Matrix { rows, cols, data: Data::F32(w) };
        }
        let mut b = MatrixBuilder::new(rows, cols, format);
        b.push(&w);
        b.finish()
    }

    /// A matrix from a ggml tensor as a GGUF file stores it: `ggml_type` is ggml's type id (see
    /// [`ggml_type`]), `data` the tensor's bytes, row-major with `cols` (ggml's `ne[0]`) along a
    /// row. The quantized blocks are kept as they are, the floats too (f16 and bf16 in 16 bits).
    pub fn from_ggml(ggml_type: u32, rows: usize, cols: usize, data: &[u8]) -> Result<Matrix> {
        let (format, block, bytes) = match ggml_type {
            ggml_type::F32 => (WeightFormat::F32, 1, 4),
            ggml_type::F16 => (WeightFormat::F16, 1, 2),
            ggml_type::BF16 => (WeightFormat::Bf16, 1, 2),
            ggml_type::Q8_0 => (WeightFormat::Q8, 32, std::mem::size_of::<BlockQ8>()),
            ggml_type::Q4_0 => (WeightFormat::Q4, 32, BlockQ4_0::BYTES),
            ggml_type::Q4_1 => (WeightFormat::Q4_1, 32, BlockQ4_1::BYTES),
            ggml_type::Q4_K => (WeightFormat::Q4K, 256, BlockQ4K::BYTES),
            ggml_type::Q5_K => (WeightFormat::Q5K, 256, BlockQ5K::BYTES),
            ggml_type::Q6_K => (WeightFormat::Q6K, 256, BlockQ6K::BYTES),
            other => {
                return Err(EngineError::Invalid(format!(
                    "ggml tensor type {other} is not supported (F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q4_K, Q5_K, Q6_K are)"
                )))
            }
        };
        if !cols.is_multiple_of(block) {
            return Err(EngineError::Invalid(format!(
                "a {format} tensor of {cols} columns: the row length must be a multiple of {block}"
            )));
        }
        let want = rows.checked_mul(cols / block).and_then(|b| b.checked_mul(bytes));
        if want != Some(data.len()) {
            return Err(EngineError::Invalid(format!(
                "a [{rows}, {cols}] {format} tensor takes {} bytes, not {}",
                want.map_or("more than usize::MAX".to_string(), |w| w.to_string()),
                data.len()
            )));
        }
        let u16s = || data.chunks_exact(2).map(|b| u16::from_le_bytes([b[0], b[1]]));
        let data = match format {
            WeightFormat::F32 => {
                Data::F32(data.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect())
            }
            WeightFormat::F16 => Data::F16(u16s().map(f16::from_bits).collect()),
            WeightFormat::Bf16 => Data::Bf16(u16s().collect()),
            WeightFormat::Q8 => Data::Q8(
                data.chunks_exact(34)
                    .map(|b| BlockQ8 {
                        d: u16::from_le_bytes([b[0], b[1]]),
                        q: std::array::from_fn(|i| b[2 + i] as i8),
                    })
                    .collect(),
            ),
            WeightFormat::Q4 => Data::Q4_0(blocks(data)),
            WeightFormat::Q4_1 => Data::Q4_1(blocks(data)),
            WeightFormat::Q4K => Data::Q4K(blocks(data)),
            WeightFormat::Q5K => Data::Q5K(blocks(data)),
            WeightFormat::Q6K => Data::Q6K(blocks(data)),
        };
        Ok(Matrix { rows, cols, data })
    }

    pub fn format(&self) -> WeightFormat {
        match self.data {
            Data::F32(_) => WeightFormat::F32,
            Data::F16(_) => WeightFormat::F16,
            Data::Bf16(_) => WeightFormat::Bf16,
            Data::Q8(_) | Data::Q8x16(_) => WeightFormat::Q8,
            Data::Q4_0(_) | Data::Q4_0x16(_) => WeightFormat::Q4,
            Data::Q4_1(_) | Data::Q4_1x16(_) => WeightFormat::Q4_1,
            Data::Q4K(_) => WeightFormat::Q4K,
            Data::Q5K(_) => WeightFormat::Q5K,
            Data::Q6K(_) => WeightFormat::Q6K,
        }
    }

    /// Bytes the weights take in memory.
    pub fn bytes(&self) -> usize {
        fn size<T>(v: &[T]) -> usize {
            std::mem::size_of_val(v)
        }
        match &self.data {
            Data::F32(v) => size(v),
            Data::F16(v) => size(v),
            Data::Bf16(v) => size(v),
            Data::Q8(v) => size(v),
            Data::Q4_0(v) => size(v),
            Data::Q4_1(v) => size(v),
            Data::Q4_0x16(v) | Data::Q4_1x16(v) => size(v),
            Data::Q8x16(v) => size(v),
            Data::Q4K(v) => size(v),
            Data::Q5K(v) => size(v),
            Data::Q6K(v) => size(v),
        }
    }

    /// Writes rows `r0..r0 + out.len() / cols` as f32 into `out` (dequantized, for every
    /// format: embeddings, tied output layers, the widened panels).
    pub fn rows_into(&self, r0: usize, out: &mut [f32]) {
        let n = out.len() / self.cols;
        assert!(r0 + n <= self.rows, "rows_into: rows {r0}..{} of {}", r0 + n, self.rows);
        data_rows_into(&self.data, self.cols, r0, out);
    }

    /// All rows as f32 (`rows * cols` floats).
    pub fn dequantize_rows(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.rows * self.cols];
        self.rows_into(0, &mut out);
        out
    }

    /// `y[m, rows] = x[m, cols] · selfᵀ (+ bias)`.
    pub fn matmul_t(&self, x: &[f32], bias: Option<&[f32]>, y: &mut [f32], m: usize) {
        let (k, n) = (self.cols, self.rows);
        assert!(x.len() >= m * k && y.len() >= m * n, "matmul_t: buffer too small");
        if m == 0 || n == 0 {
            return;
        }
        let kern = kernels();
        let interleaved = match &self.data {
            Data::Q4_0x16(w) | Data::Q4_1x16(w) => {
                self.matmul_interleaved(w, kern.gemm_q4x16, x, y, m);
                true
            }
            Data::Q8x16(w) => {
                self.matmul_interleaved(w, kern.gemm_q8x16, x, y, m);
                true
            }
            _ => false,
        };
        let int_gemm = interleaved
            || m >= Q8_GEMM_MIN_ROWS
                && match &self.data {
                    Data::Q8(w) => self.matmul_blocks_gemm(w, 1, kern.gemm_q8_vnni, x, y, m),
                    Data::Q4_0(w) => self.matmul_blocks_gemm(w, 1, kern.gemm_q4_0_vnni, x, y, m),
                    Data::Q4_1(w) => self.matmul_blocks_gemm(w, 1, kern.gemm_q4_1_vnni, x, y, m),
                    Data::Q4K(w) => self.matmul_blocks_gemm(w, 8, kern.gemm_q4_k_vnni, x, y, m),
                    Data::Q5K(w) => self.matmul_blocks_gemm(w, 8, kern.gemm_q5_k_vnni, x, y, m),
                    _ => false,
                };
        if !int_gemm {
            match (&self.data, m >= GEMM_MIN_ROWS) {
                (Data::Bf16(w), _) if self.native_bf16(m) => self.matmul_native_bf16(w, x, y, m),
                (Data::F32(w), true) => ops::matmul_t_gemm(x, w, y, m, k, n),
                (_, true) => self.matmul_panels(x, y, m),
                (_, false) => self.matmul_few_rows(x, y, m),
            }
        }
        if let Some(b) = bias {
            for row in y[..m * n].chunks_exact_mut(n) {
                row.iter_mut().zip(b).for_each(|(v, b)| *v += b);
            }
        }
    }

    /// Whether an `m`-row product with these weights runs on the native bf16 kernels. They
    /// round the inputs to bf16 too (as llama.cpp's bf16 path does), so results move by about
    /// 1e-2 relative; off unless the caller switches them on ([`crate::cpu::CpuOptions::bf16_native`]), so that bf16 weights otherwise give
    /// what f32 compute on them gives.
    fn native_bf16(&self, m: usize) -> bool {
        let on = crate::cpu::bf16_native() && kernels().dots2_bf16_native.is_some();
        let gemm = kernels().gemm_bf16_native.is_some() && self.cols.is_multiple_of(2);
        on && matches!(self.data, Data::Bf16(_)) && m >= NATIVE_BF16_MIN_ROWS && (m <= NATIVE_BF16_ROWS_MAX || gemm)
    }

    /// bf16 x bf16 products with f32 sums (`vdpbf16ps`: 32 products per instruction): the
    /// inputs are rounded to bf16 once, then each pair of weight rows is read once for all of
    /// them.
    fn matmul_native_bf16(&self, w: &[u16], x: &[f32], y: &mut [f32], m: usize) {
        let (k, n) = (self.cols, self.rows);
        let Some(kern) = kernels().dots2_bf16_native else {
            return self.matmul_panels(x, y, m);
        };
        if m > NATIVE_BF16_ROWS_MAX {
            return match kernels().gemm_bf16_native.filter(|_| k % 2 == 0) {
                Some(gemm) => self.matmul_native_bf16_gemm(gemm, w, x, y, m),
                None => self.matmul_panels(x, y, m),
            };
        }
        let mut xb = INPUT_BF16.take();
        xb.clear();
        xb.extend(x[..m * k].iter().map(|&v| bf16_bits(v)));
        let out = SyncPtr(y.as_mut_ptr());
        pool().run(n.div_ceil(COLS), &|c| {
            let mut acc = [[0f32; NATIVE_BF16_ROWS_MAX]; 2];
            let [a0, a1] = &mut acc;
            let (o0, o1) = (&mut a0[..m], &mut a1[..m]);
            let (r0, r1) = (c * COLS, ((c + 1) * COLS).min(n));
            for row in (r0..r1).step_by(2) {
                // An odd last row goes through as both rows of the pair.
                let row1 = (row + 1).min(r1 - 1);
                kern(&xb, m, &w[row * k..(row + 1) * k], &w[row1 * k..(row1 + 1) * k], o0, o1);
                for (j, o) in [&*o0, &*o1].into_iter().take(row1 + 1 - row).enumerate() {
                    // SAFETY: task c alone writes columns c * COLS.. of each of the m rows, and
                    // `matmul_t` checked that y holds m * n floats.
                    unsafe { out.write_column(n, row + j, o) };
                }
            }
        });
        INPUT_BF16.set(xb);
    }

    /// Prefill-shaped bf16 product on the native bf16 instructions. The input rows are rounded
    /// to bf16 once and packed in blocks of 16 rows, pair by pair (`BfPairs`), so that one
    /// 512-bit load holds the same pair of columns of 16 rows; each pair of a weight row is
    /// broadcast against it, and `vdpbf16ps` adds both products to 16 sums, one per input row.
    /// The weights are read in their stored layout (no per-call repacking), each task taking
    /// `NATIVE_GEMM_COLS` neighbouring weight rows for every input row.
    fn matmul_native_bf16_gemm(&self, gemm: GemmBf16Native, w: &[u16], x: &[f32], y: &mut [f32], m: usize) {
        let (k, n) = (self.cols, self.rows);
        let xp = BfPairs::new(&x[..m * k], m, k, INPUT_WORDS.take());
        // SAFETY: `w` holds the n rows of k elements each, `y` the m x n output.
        gemm_tasks(w, k, y, n, |w, rows, dst| unsafe { gemm(&xp, w, rows, dst, n) });
        INPUT_WORDS.set(xp.words);
    }

    /// The q8 GEMM where the CPU has it, else the widened panels (for the tests).
    #[cfg(test)]
    fn matmul_q8_gemm(&self, w: &[BlockQ8], x: &[f32], y: &mut [f32], m: usize) {
        if !self.matmul_blocks_gemm(w, 1, kernels().gemm_q8_vnni, x, y, m) {
            self.matmul_panels(x, y, m)
        }
    }

    /// q8 product of `Q8_GEMM_MIN_ROWS` rows or more on AVX-512 VNNI: the input rows are
    /// quantized per group of 32 as for the streaming kernels and packed in blocks of 16 rows
    /// (8 for up to 8 rows), four columns at a time (`Q8Rows`), so one load holds the same four
    /// columns of a block's rows; each weight row's
    /// four int8 values are broadcast against it, biased to u8, and `vpdpbusd` adds the four
    /// products to 16 integer sums, one per input row, scaled into f32 once per group. The
    /// weights are read as stored.
    /// The ggml block formats with one scale per 32 weights run the same, their sub-blocks
    /// unpacked to unsigned bytes once per group (`subs` groups of 32 a block). Returns whether
    /// it ran (`gemm` is `None` where the CPU has no VNNI).
    fn matmul_blocks_gemm<B: Sync>(
        &self,
        w: &[B],
        subs: usize,
        gemm: Option<kernels::GemmQ<B>>,
        x: &[f32],
        y: &mut [f32],
        m: usize,
    ) -> bool {
        let Some(gemm) = gemm else {
            return false;
        };
        let k = self.cols;
        let n = self.rows;
        let xq = Q8Rows::new(&x[..m * k], m, k, if m <= 8 { 8 } else { 16 }, INPUT_WORDS.take());
        // SAFETY: `w` holds the n rows of k / 32 / subs blocks each, `y` the m x n output.
        gemm_tasks(w, k / Q8_GROUP / subs, y, n, |w, rows, dst| unsafe { gemm(&xq, w, rows, dst, n) });
        INPUT_WORDS.set(xq.words);
        true
    }

    /// Q4_0 / Q4_1 / Q8_0 rows interleaved sixteen at a time (see `interleaved`), where the CPU
    /// has AVX2 (the `maddubs` kernels) or AVX-512 VNNI and every block fits the layout;
    /// otherwise the matrix as it is. The
    /// same weights (the 4-bit formats in the same bytes, Q8_0 in 6 % more): only the
    /// products' speed changes.
    pub fn interleaved(self) -> Matrix {
        let f = kernels().features;
        if f.level < crate::cpu::Level::Avx2 {
            return self;
        }
        self.interleave()
    }

    /// [`Matrix::interleaved`] on any CPU (the products then run the portable kernel).
    fn interleave(self) -> Matrix {
        let per_row = self.cols / 32;
        let data = match &self.data {
            Data::Q4_0(w) => interleaved::interleave(w, per_row).map(Data::Q4_0x16),
            Data::Q4_1(w) => interleaved::interleave(w, per_row).map(Data::Q4_1x16),
            Data::Q8(w) => Some(Data::Q8x16(interleaved::interleave_q8(w, per_row))),
            _ => None,
        };
        match data {
            Some(data) => Matrix { data, ..self },
            None => self,
        }
    }

    /// Every product of interleaved rows, decode and prefill alike: the input rows are
    /// quantized to int8 groups once, then each task takes neighbouring groups of sixteen
    /// weight rows for every input row.
    fn matmul_interleaved<W: Sync>(&self, w: &[W], gemm: kernels::GemmX16<W>, x: &[f32], y: &mut [f32], m: usize) {
        let (k, n) = (self.cols, self.rows);
        let per_row = k / Q8_GROUP;
        let groups = n.div_ceil(interleaved::LANES);
        let xq = quantize_rows_parallel(&x[..m * k], k, QUANT_ROWS.take());
        // Decode: 32 rows a task, as the streaming kernels; prefill: one group.
        let per_task = if m <= 4 { 2 } else { 1 };
        let out = SyncPtr(y.as_mut_ptr());
        pool().run(groups.div_ceil(per_task), &|c| {
            let (g0, g1) = (c * per_task, ((c + 1) * per_task).min(groups));
            let cols = (n - g0 * interleaved::LANES).min((g1 - g0) * interleaved::LANES);
            // SAFETY: task c alone writes columns 16 g0 .. 16 g0 + cols of the m rows of `y`,
            // which holds m * n floats (`matmul_t` checked).
            unsafe { gemm(&xq, m, &w[g0 * per_row..g1 * per_row], per_row, cols, out.at(g0 * interleaved::LANES), n) };
        });
        QUANT_ROWS.set(xq);
    }

    /// Prefill-shaped product: per task, widen a panel of weight rows to f32 and run the
    /// blocked GEMM on it for every input row.
    fn matmul_panels(&self, x: &[f32], y: &mut [f32], m: usize) {
        thread_local! {
            static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
        }
        let (k, n) = (self.cols, self.rows);
        let out = SyncPtr(y.as_mut_ptr());
        pool().run(n.div_ceil(PANEL), &|p| {
            let (j0, j1) = (p * PANEL, ((p + 1) * PANEL).min(n));
            SCRATCH.with(|s| {
                let mut s = s.borrow_mut();
                s.resize(PANEL * k, 0.0);
                let panel = &mut s[..(j1 - j0) * k];
                self.rows_into(j0, panel);
                // SAFETY: tasks write disjoint column ranges j0..j1 of the m x n output, and
                // `matmul_t` checked that y holds m * n floats.
                unsafe { ops::gemm_into(x, panel, out.at(j0), m, k, j1 - j0, n) };
            });
        });
    }

    /// Decode-shaped product: each weight row is read once and dotted with every input row;
    /// results go straight to their place in `y` (no transposed copy).
    fn matmul_few_rows(&self, x: &[f32], y: &mut [f32], m: usize) {
        let (k, n) = (self.cols, self.rows);
        assert!(m <= FEW_ROWS_MAX, "matmul_few_rows: {m} rows");
        let kern = kernels();
        match &self.data {
            Data::Q8(w) => return self.few_rows_blocks(x, y, m, w, 1, kern.dots_q8),
            Data::Q4_0(w) => return self.few_rows_blocks(x, y, m, w, 1, kern.dots_q4_0),
            Data::Q4_1(w) => return self.few_rows_blocks(x, y, m, w, 1, kern.dots_q4_1),
            Data::Q4K(w) => return self.few_rows_blocks(x, y, m, w, 8, kern.dots_q4_k),
            Data::Q5K(w) => return self.few_rows_blocks(x, y, m, w, 8, kern.dots_q5_k),
            Data::Q6K(w) => return self.few_rows_blocks(x, y, m, w, 8, kern.dots_q6_k),
            Data::Q4_0x16(w) | Data::Q4_1x16(w) => return self.matmul_interleaved(w, kern.gemm_q4x16, x, y, m),
            Data::Q8x16(w) => return self.matmul_interleaved(w, kern.gemm_q8x16, x, y, m),
            Data::F32(_) | Data::F16(_) | Data::Bf16(_) => {}
        }
        let out = SyncPtr(y.as_mut_ptr());
        // Several input rows: two weight rows at a time, so each input vector loaded serves two
        // FMAs.
        let pairs = m > 1;
        pool().run(n.div_ceil(COLS), &|c| {
            let (r0, r1) = (c * COLS, ((c + 1) * COLS).min(n));
            let mut acc = [[0f32; FEW_ROWS_MAX]; 2];
            let [a0, a1] = &mut acc;
            let (o0, o1) = (&mut a0[..m], &mut a1[..m]);
            let mut row = r0;
            while row < r1 {
                let two = pairs && row + 1 < r1;
                let (w0, w1) = (row * k..(row + 1) * k, (row + 1) * k..(row + 2) * k);
                match &self.data {
                    Data::F32(w) if two => (kern.dots2_f32)(x, m, &w[w0], &w[w1], o0, o1),
                    Data::F16(w) if two => (kern.dots2_f16)(x, m, &w[w0], &w[w1], o0, o1),
                    Data::Bf16(w) if two => (kern.dots2_bf16)(x, m, &w[w0], &w[w1], o0, o1),
                    Data::F32(w) => (kern.dots_f32)(x, m, &w[w0], o0),
                    Data::F16(w) => (kern.dots_f16)(x, m, &w[w0], o0),
                    Data::Bf16(w) => (kern.dots_bf16)(x, m, &w[w0], o0),
                    _ => unreachable!("the block formats are done above"),
                }
                for (j, o) in [&*o0, &*o1].into_iter().take(if two { 2 } else { 1 }).enumerate() {
                    // SAFETY: task c alone writes columns c * COLS.. of each of the m rows, and
                    // `matmul_t` checked that y holds m * n floats.
                    unsafe { out.write_column(n, row + j, o) };
                }
                row += if two { 2 } else { 1 };
            }
        });
    }

    /// The decode-shaped product of a block format (`subs` groups of 32 a block): the input rows
    /// are quantized to int8 groups once, then each task's weight rows go through `dots` in one
    /// call (a row of a small model is only a few blocks, so a call per row would cost as much
    /// as its arithmetic).
    fn few_rows_blocks<B: Sync>(
        &self,
        x: &[f32],
        y: &mut [f32],
        m: usize,
        w: &[B],
        subs: usize,
        dots: fn(&[BlockQ8A], usize, &[B], usize, &mut [f32]),
    ) {
        thread_local! {
            static BUF: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
        }
        let (k, n) = (self.cols, self.rows);
        let g = k / Q8_GROUP;
        let per_row = g / subs;
        let xq = quantize_rows(&x[..m * k], QUANT_ROWS.take());
        let out = SyncPtr(y.as_mut_ptr());
        pool().run(n.div_ceil(COLS), &|c| {
            let (r0, r1) = (c * COLS, ((c + 1) * COLS).min(n));
            let w = &w[r0 * per_row..r1 * per_row];
            if m == 1 {
                // One input row: the task's outputs are y[r0..r1] itself.
                // SAFETY: task c alone writes y[r0..r1], inside the m * n floats `matmul_t`
                // checked.
                let o = unsafe { std::slice::from_raw_parts_mut(out.at(r0), r1 - r0) };
                dots(&xq, 1, w, g, o);
                return;
            }
            BUF.with(|b| {
                let mut b = b.borrow_mut();
                // Every element the kernel reads back it writes first: no zeroing per call.
                if b.len() < COLS * m {
                    b.resize(COLS * m, 0.0);
                }
                let buf = &mut b[..(r1 - r0) * m];
                dots(&xq, m, w, g, buf);
                for (r, o) in buf.chunks_exact(m).enumerate() {
                    // SAFETY: task c alone writes columns r0..r1 of each of the m rows, and
                    // `matmul_t` checked that y holds m * n floats.
                    unsafe { out.write_column(n, r0 + r, o) };
                }
            });
        });
        QUANT_ROWS.set(xq);
    }
}

impl std::fmt::Debug for Matrix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Matrix[{}, {}] {}", self.rows, self.cols, self.format())
    }
}

/// Rows `r0..r0 + out.len() / k` of matrix data `k` wide as f32 ([`Matrix::rows_into`], and
/// [`MatrixBuilder`]'s measure of the rows it has stored).
fn data_rows_into(data: &Data, k: usize, r0: usize, out: &mut [f32]) {
    let n = out.len() / k.max(1);
    let rows = |per_row: usize| r0 * per_row..(r0 + n) * per_row;
    match data {
        Data::F32(v) => out.copy_from_slice(&v[rows(k)]),
        Data::F16(v) => ops::widen_f16(&v[rows(k)], out),
        Data::Bf16(v) => widen_bf16(&v[rows(k)], out),
        Data::Q8(v) => q8_0::dequantize(&v[rows(k / Q8_GROUP)], out),
        Data::Q4_0(v) => (kernels().dequantize_q4_0)(&v[rows(k / 32)], out),
        Data::Q4_1(v) => (kernels().dequantize_q4_1)(&v[rows(k / 32)], out),
        Data::Q4_0x16(v) => interleaved::dequantize_rows::<BlockQ4_0>(v, k / 32, r0, out),
        Data::Q4_1x16(v) => interleaved::dequantize_rows::<BlockQ4_1>(v, k / 32, r0, out),
        Data::Q8x16(v) => interleaved::dequantize_rows_q8(v, k / 32, r0, out),
        Data::Q4K(v) => (kernels().dequantize_q4_k)(&v[rows(k / 256)], out),
        Data::Q5K(v) => (kernels().dequantize_q5_k)(&v[rows(k / 256)], out),
        Data::Q6K(v) => (kernels().dequantize_q6_k)(&v[rows(k / 256)], out),
    }
}

/// Builds a [`Matrix`] from its rows in order, a few at a time, converting each batch of rows
/// to the storage format at once, so that loading never holds a whole f32 copy of a weight.
pub struct MatrixBuilder {
    rows: usize,
    cols: usize,
    filled: usize,
    data: Data,
    rounding: Rounding,
}

/// How far a conversion moved a matrix's weights: the sums of squares of the change and of the
/// weights converted, so that matrices add up ([`Rounding::add`]).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Rounding {
    pub err2: f64,
    pub ref2: f64,
}

impl Rounding {
    /// The change's root mean square relative to the weights' (0 for an exact conversion).
    pub fn relative_rms(&self) -> f64 {
        if self.ref2 > 0.0 {
            (self.err2 / self.ref2).sqrt()
        } else {
            0.0
        }
    }

    pub fn add(&mut self, other: Rounding) {
        self.err2 += other.err2;
        self.ref2 += other.ref2;
    }
}

impl MatrixBuilder {
    /// A `[rows, cols]` matrix in `format`. A block format whose block does not divide `cols`
    /// falls back to bf16 (as in [`Matrix::new`]); the k-quants, which have no quantizer here,
    /// to q4 (Q4_0).
    pub fn new(rows: usize, cols: usize, format: WeightFormat) -> MatrixBuilder {
        let format = match format {
            WeightFormat::Q4K | WeightFormat::Q5K | WeightFormat::Q6K => WeightFormat::Q4,
            f => f,
        };
        let format = if !cols.is_multiple_of(format.block()) { WeightFormat::Bf16 } else { format };
        let n = rows * cols;
        let data = match format {
            WeightFormat::F32 => Data::F32(Vec::with_capacity(n)),
            WeightFormat::F16 => Data::F16(Vec::with_capacity(n)),
            WeightFormat::Bf16 => Data::Bf16(Vec::with_capacity(n)),
            WeightFormat::Q8 => Data::Q8(Vec::with_capacity(n / Q8_GROUP)),
            WeightFormat::Q4 | WeightFormat::Q4K | WeightFormat::Q5K | WeightFormat::Q6K => {
                Data::Q4_0(Vec::with_capacity(n / 32))
            }
            WeightFormat::Q4_1 => Data::Q4_1(Vec::with_capacity(n / 32)),
        };
        MatrixBuilder { rows, cols, filled: 0, data, rounding: Rounding::default() }
    }

    /// Appends whole rows (`w.len()` a multiple of `cols`).
    pub fn push(&mut self, w: &[f32]) {
        assert!(
            w.len().is_multiple_of(self.cols.max(1)),
            "MatrixBuilder::push: {} floats is not whole rows of {}",
            w.len(),
            self.cols
        );
        let rows = w.len() / self.cols.max(1);
        assert!(self.filled + rows <= self.rows, "MatrixBuilder::push: more than {} rows", self.rows);
        match &mut self.data {
            Data::F32(v) => v.extend_from_slice(w),
            Data::F16(v) => v.extend(w.iter().map(|&x| f16::from_f32(x))),
            Data::Bf16(v) => v.extend(w.iter().map(|&x| bf16::from_f32(x).to_bits())),
            Data::Q8(v) => v.extend(w.chunks_exact(Q8_GROUP).map(quantize_group)),
            Data::Q4_0(v) => v.extend(w.chunks_exact(32).map(BlockQ4_0::quantize)),
            Data::Q4_1(v) => v.extend(w.chunks_exact(32).map(BlockQ4_1::quantize)),
            Data::Q4K(_) | Data::Q5K(_) | Data::Q6K(_) => unreachable!("the builder makes no k-quants"),
            Data::Q4_0x16(_) | Data::Q4_1x16(_) | Data::Q8x16(_) => unreachable!("the builder interleaves nothing"),
        }
        self.measure(w, self.filled);
        self.filled += rows;
    }

    /// Adds what storing `w` as rows `r0..` changed to [`Self::rounding`].
    fn measure(&mut self, w: &[f32], r0: usize) {
        let norm2 = |w: &[f32]| w.iter().map(|&x| f64::from(x) * f64::from(x)).sum::<f64>();
        if let Data::F32(_) = self.data {
            self.rounding.add(Rounding { err2: 0.0, ref2: norm2(w) });
            return;
        }
        let mut back = vec![0f32; w.len()];
        data_rows_into(&self.data, self.cols, r0, &mut back);
        let err2 = w.iter().zip(&back).map(|(&x, &y)| f64::from(x - y) * f64::from(x - y)).sum();
        self.rounding.add(Rounding { err2, ref2: norm2(w) });
    }

    pub fn finish(self) -> Matrix {
        self.finish_measured().0
    }

    /// The matrix, and how far its conversion moved the weights pushed.
    pub fn finish_measured(self) -> (Matrix, Rounding) {
        assert_eq!(self.filled, self.rows, "MatrixBuilder::finish: {} of {} rows", self.filled, self.rows);
        (Matrix { rows: self.rows, cols: self.cols, data: self.data }, self.rounding)
    }
}

/// [`quantize_rows`] of rows of `k` floats, spread over the pool for prefill-sized inputs.
fn quantize_rows_parallel(x: &[f32], k: usize, out: Vec<BlockQ8A>) -> Vec<BlockQ8A> {
    const ROWS_PER_TASK: usize = 16;
    let m = x.len() / k.max(1);
    if m < 2 * ROWS_PER_TASK {
        return quantize_rows(x, out);
    }
    let mut out = quantize_rows(&[], out);
    let g = k / Q8_GROUP;
    out.resize(m * g, BlockQ8A { d: 0.0, s: [0.0; 2], q: [0; Q8_GROUP] });
    pool().for_chunks(&mut out, ROWS_PER_TASK * g, |c, dst| {
        let rows = &x[c * ROWS_PER_TASK * k..c * ROWS_PER_TASK * k + dst.len() * Q8_GROUP];
        input::quantize_rows_into(rows, dst);
    });
    out
}

struct SyncPtr(*mut f32);
impl SyncPtr {
    /// # Safety: as `pointer::add`.
    unsafe fn at(&self, i: usize) -> *mut f32 {
        self.0.add(i)
    }

    /// Writes `col[i]` to row `i`, column `j` of the row-major output with `n` columns.
    ///
    /// # Safety: the output holds `col.len() * n` floats, `j < n`, and no other thread writes
    /// column `j` meanwhile.
    unsafe fn write_column(&self, n: usize, j: usize, col: &[f32]) {
        for (i, v) in col.iter().enumerate() {
            *self.at(i * n + j) = *v;
        }
    }
}
// SAFETY: used only to hand disjoint parts of one output buffer to parallel tasks.
unsafe impl Sync for SyncPtr {}
unsafe impl Send for SyncPtr {}

/// Runs a packed GEMM over tasks of `NATIVE_GEMM_COLS` neighbouring weight rows (`per_row`
/// stored elements each): `gemm(rows' weights, row count, output at their first column)`, the
/// output `y` having `n` columns. The GEMM must write only those columns of its rows.
fn gemm_tasks<W: Sync>(w: &[W], per_row: usize, y: &mut [f32], n: usize, gemm: impl Fn(&[W], usize, *mut f32) + Sync) {
    let out = SyncPtr(y.as_mut_ptr());
    pool().run(n.div_ceil(NATIVE_GEMM_COLS), &|c| {
        let (j0, j1) = (c * NATIVE_GEMM_COLS, ((c + 1) * NATIVE_GEMM_COLS).min(n));
        // SAFETY: task c alone writes columns j0..j1, inside `y`; `matmul_t` checked its size.
        gemm(&w[j0 * per_row..j1 * per_row], j1 - j0, unsafe { out.at(j0) });
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::ops::{test_data as data, test_naive_matmul_t as naive};
    use input::quantize_rows;
    use kernels::{kernel_sets, Kernels};

    fn rel_err(got: &[f32], want: &[f32]) -> f32 {
        let num: f64 = got.iter().zip(want).map(|(a, b)| ((a - b) as f64).powi(2)).sum();
        let den: f64 = want.iter().map(|b| (*b as f64).powi(2)).sum();
        (num / den.max(1e-30)).sqrt() as f32
    }

    fn abs(v: &[f32]) -> Vec<f32> {
        v.iter().map(|x| x.abs()).collect()
    }

    /// |got - want| / |scale|, in the 2-norm: the error against the size of the terms summed.
    fn err_against(got: &[f32], want: &[f32], scale: &[f32]) -> f32 {
        let norm = |v: &mut dyn Iterator<Item = f32>| v.map(|x| (x as f64).powi(2)).sum::<f64>().sqrt();
        (norm(&mut got.iter().zip(want).map(|(a, b)| a - b)) / norm(&mut scale.iter().copied())) as f32
    }

    /// The weights each format actually holds, as f32.
    fn stored(m: &Matrix) -> Vec<f32> {
        let mut w = vec![0f32; m.rows * m.cols];
        m.rows_into(0, &mut w);
        w
    }

    #[test]
    fn every_format_and_row_count_matches_the_product_of_its_stored_weights() {
        for fmt in [WeightFormat::F32, WeightFormat::Bf16, WeightFormat::Q8] {
            for &(m, k, n) in &[
                (1, 64, 70),
                (3, 96, 33),
                (5, 128, 64),
                (8, 256, 65),
                (16, 64, 130),
                (40, 160, 129),
                (64, 96, 67),
                (90, 64, 50),
            ] {
                let x = data(m * k, 1);
                let w = data(n * k, 2);
                let b = data(n, 3);
                let mat = Matrix::new(w.clone(), n, k, fmt);
                assert_eq!(mat.format(), fmt);
                let mut y = vec![f32::NAN; m * n];
                mat.matmul_t(&x, Some(&b), &mut y, m);
                // Against the stored weights: exact up to summation order for f32 and bf16
                // (of the inputs rounded to bf16 where the CPU multiplies bf16 natively); q8
                // also quantizes the inputs (per group of 32) on the decode path.
                let xr: Vec<f32> = if mat.native_bf16(m) {
                    x.iter().map(|&v| bf16::from_f32(v).to_f32()).collect()
                } else {
                    x.clone()
                };
                let mut r = naive(&xr, &stored(&mat), m, k, n);
                for i in 0..m {
                    for j in 0..n {
                        r[i * n + j] += b[j];
                    }
                }
                let tol = |quantized: bool| if fmt == WeightFormat::Q8 && quantized { 1e-2 } else { 1e-5 };
                let e = rel_err(&y, &r);
                let quantized = m < GEMM_MIN_ROWS || kernels().gemm_q8_vnni.is_some();
                assert!(e < tol(quantized), "{fmt} m={m} k={k} n={n}: relative error {e}");
                // Both paths, whichever matmul_t chose.
                let r = naive(&x, &stored(&mat), m, k, n);
                if m <= FEW_ROWS_MAX {
                    let mut y = vec![f32::NAN; m * n];
                    mat.matmul_few_rows(&x, &mut y, m);
                    let e = rel_err(&y, &r);
                    assert!(e < tol(true), "{fmt} m={m} k={k} n={n}: streaming kernels: relative error {e}");
                }
                if fmt != WeightFormat::F32 {
                    let mut y = vec![f32::NAN; m * n];
                    mat.matmul_panels(&x, &mut y, m);
                    let e = rel_err(&y, &r);
                    assert!(e < tol(false), "{fmt} m={m} k={k} n={n}: widened panels: relative error {e}");
                }
                // And the storage error itself is that of the format.
                let e = rel_err(&stored(&mat), &w);
                let tol = match fmt {
                    WeightFormat::F32 => 0.0,
                    WeightFormat::Bf16 => 4e-3,
                    WeightFormat::Q8 => 1e-2,
                    other => unreachable!("{other} is not among the formats checked"),
                };
                assert!(e <= tol, "{fmt}: storage error {e}");
            }
        }
    }

    #[test]
    fn simd_and_portable_kernels_agree() {
        for (k, m) in [
            (157, 5),
            (160, 1),
            (160, 2),
            (160, 3),
            (160, 4),
            (160, 5),
            (160, 6),
            (160, 7),
            (160, 8),
            (160, 9),
            (200, 3),
            (224, 5),
            (256, 4),
            (256, 6),
            (64, 13),
        ] {
            let x = data(m * k, 4);
            let w = data(k, 5);
            let wb: Vec<u16> = w.iter().map(|&v| bf16::from_f32(v).to_bits()).collect();
            let wq: Vec<BlockQ8> = w.chunks_exact(Q8_GROUP).map(quantize_group).collect();
            let xq = quantize_rows(&x, Vec::new());
            for (name, kern) in kernel_sets() {
                let m_name = format!("{name} m={m} k={k}");
                let (mut a, mut b) = (vec![0f32; m], vec![0f32; m]);
                (kern.dots_f32)(&x, m, &w, &mut a);
                portable::dots_f32(&x, m, &w, &mut b);
                assert!(rel_err(&a, &b) < 1e-6, "f32 {m_name}");
                (kern.dots_bf16)(&x, m, &wb, &mut a);
                portable::dots_bf16(&x, m, &wb, &mut b);
                assert!(rel_err(&a, &b) < 1e-6, "bf16 {m_name}");
                let w1 = data(k, 6);
                let wb1: Vec<u16> = w1.iter().map(|&v| bf16::from_f32(v).to_bits()).collect();
                let wq1: Vec<BlockQ8> = w1.chunks_exact(Q8_GROUP).map(quantize_group).collect();
                let (mut a1, mut b1) = (vec![0f32; m], vec![0f32; m]);
                (kern.dots2_f32)(&x, m, &w, &w1, &mut a, &mut a1);
                portable::dots_f32(&x, m, &w, &mut b);
                portable::dots_f32(&x, m, &w1, &mut b1);
                assert!(rel_err(&a, &b) < 1e-6 && rel_err(&a1, &b1) < 1e-6, "f32 pairs {m_name}");
                (kern.dots2_bf16)(&x, m, &wb, &wb1, &mut a, &mut a1);
                portable::dots_bf16(&x, m, &wb, &mut b);
                portable::dots_bf16(&x, m, &wb1, &mut b1);
                assert!(rel_err(&a, &b) < 1e-6 && rel_err(&a1, &b1) < 1e-6, "bf16 pairs {m_name}");
                if k % Q8_GROUP == 0 {
                    // Two weight rows in one call, as the products make it.
                    let g = wq.len();
                    let wq2: Vec<BlockQ8> = wq.iter().chain(&wq1).copied().collect();
                    let (mut a2, mut b2) = (vec![0f32; 2 * m], vec![0f32; 2 * m]);
                    (kern.dots_q8)(&xq, m, &wq2, g, &mut a2);
                    portable::dots_q8(&xq, m, &wq2, g, &mut b2);
                    assert!(rel_err(&a2, &b2) < 1e-6, "q8 two rows {m_name}");
                    (kern.dots_q8)(&xq, m, &wq, g, &mut a);
                    portable::dots_q8(&xq, m, &wq, g, &mut b);
                    assert!(rel_err(&a, &b) < 1e-6, "q8 {m_name}");
                }
            }
        }
    }

    #[test]
    fn native_bf16_products_equal_those_of_the_inputs_rounded_to_bf16() {
        if kernels().dots2_bf16_native.is_none() {
            eprintln!("no native bf16 on this CPU: nothing to check");
            return;
        }
        // Up to NATIVE_BF16_ROWS_MAX rows the streaming kernel, above it the packed GEMM (odd
        // widths: the widened panels, exact for the unrounded inputs).
        for &(m, k, n) in &[
            (8, 64, 70),
            (9, 96, 33),
            (16, 100, 65),
            (40, 160, 129),
            (64, 32, 67),
            (13, 1000, 7),
            (65, 64, 70),
            (100, 96, 67),
            (130, 384, 13),
            (200, 62, 100),
            (77, 1002, 49),
            (70, 33, 20),
        ] {
            let x = data(m * k, 11);
            let mat = Matrix::new(data(n * k, 12), n, k, WeightFormat::Bf16);
            let Data::Bf16(w) = &mat.data else { unreachable!() };
            let mut y = vec![f32::NAN; m * n];
            mat.matmul_native_bf16(w, &x, &mut y, m);
            let rounded = m <= NATIVE_BF16_ROWS_MAX || k % 2 == 0;
            let xr: Vec<f32> = x.iter().map(|&v| if rounded { bf16::from_f32(v).to_f32() } else { v }).collect();
            let r = naive(&xr, &stored(&mat), m, k, n);
            let e = rel_err(&y, &r);
            assert!(e < 1e-5, "m={m} k={k} n={n}: relative error {e}");
        }
    }

    #[test]
    fn q8_gemm_equals_the_product_of_the_quantized_inputs() {
        if kernels().gemm_q8_vnni.is_none() {
            eprintln!("no AVX-512 VNNI on this CPU: nothing to check");
            return;
        }
        for &(m, k, n) in &[
            (8, 32, 7),
            (8, 384, 100),
            (5, 64, 53),
            (16, 32, 7),
            (17, 64, 70),
            (33, 96, 49),
            (64, 384, 100),
            (100, 1024, 13),
            (130, 160, 48),
            (200, 64, 131),
        ] {
            let x: Vec<f32> =
                data(m * k, 31).into_iter().enumerate().map(|(i, v)| if i % 97 == 0 { 0.0 } else { v }).collect();
            let mat = Matrix::new(data(n * k, 32), n, k, WeightFormat::Q8);
            let Data::Q8(w) = &mat.data else { unreachable!() };
            let mut y = vec![f32::NAN; m * n];
            mat.matmul_q8_gemm(w, &x, &mut y, m);
            let xq: Vec<f32> =
                quantize_rows(&x, Vec::new()).iter().flat_map(|b| b.q.map(|q| f32::from(q) * b.d)).collect();
            let e = rel_err(&y, &naive(&xq, &stored(&mat), m, k, n));
            assert!(e < 1e-5, "m={m} k={k} n={n}: relative error {e}");
        }
    }

    #[test]
    fn bf16_rounding_matches_half() {
        let mut v: Vec<f32> = data(4096, 21).into_iter().map(|x| x * 1e3).collect();
        v.extend([0.0, -0.0, 1.0, f32::MAX, f32::MIN_POSITIVE, 1e-40, f32::INFINITY, f32::NEG_INFINITY, f32::NAN]);
        // Halfway cases: ties go to the even neighbour, up or down.
        v.extend([f32::from_bits(0x3f80_8000), f32::from_bits(0x3f81_8000), f32::from_bits(0x3f80_8001)]);
        for x in v {
            assert_eq!(bf16_bits(x), bf16::from_f32(x).to_bits(), "{x:e} ({:#x})", x.to_bits());
        }
    }

    #[test]
    fn q8_falls_back_to_bf16_for_widths_not_divisible_by_32() {
        let m = Matrix::new(data(48 * 3, 7), 3, 48, WeightFormat::Q8);
        assert_eq!(m.format(), WeightFormat::Bf16);
        assert_eq!(m.bytes(), 48 * 3 * 2);
    }

    #[test]
    fn q8_of_zeros_and_extremes() {
        let mut w = vec![0f32; 64];
        w[33] = -5.0;
        w[40] = 5.0;
        let mat = Matrix::new(w.clone(), 1, 64, WeightFormat::Q8);
        let s = stored(&mat);
        assert!(s[..32].iter().all(|&v| v == 0.0), "an all-zero group stays zero");
        assert!((s[33] + 5.0).abs() < 5e-3 && (s[40] - 5.0).abs() < 5e-3, "{} {}", s[33], s[40]);
        assert_eq!(mat.bytes(), 2 * 34);
    }

    #[test]
    fn formats_parse() {
        assert_eq!("BF16".parse::<WeightFormat>(), Ok(WeightFormat::Bf16));
        assert_eq!("q8_0".parse::<WeightFormat>(), Ok(WeightFormat::Q8));
        assert_eq!("q4".parse::<WeightFormat>(), Ok(WeightFormat::Q4));
        assert_eq!("Q4_0".parse::<WeightFormat>(), Ok(WeightFormat::Q4));
        assert_eq!("q4_1".parse::<WeightFormat>(), Ok(WeightFormat::Q4_1));
        assert!("q3".parse::<WeightFormat>().unwrap_err().contains("q3"));
        // The k-quants come only from GGUF files (no quantizer for them here).
        assert!("q4_k".parse::<WeightFormat>().is_err());
    }

    /// Random ggml blocks of type `ty`: every byte random but the f16 scales, kept small and
    /// finite (`lo..hi` in steps).
    fn random_ggml(ty: u32, rows: usize, cols: usize, seed: u32) -> Matrix {
        let (size, per, scales): (usize, usize, &[usize]) = match ty {
            ggml_type::Q4_0 => (18, 32, &[0]),
            ggml_type::Q4_1 => (20, 32, &[0, 2]),
            ggml_type::Q8_0 => (34, 32, &[0]),
            ggml_type::Q4_K => (144, 256, &[0, 2]),
            ggml_type::Q5_K => (176, 256, &[0, 2]),
            ggml_type::Q6_K => (210, 256, &[208]),
            _ => unreachable!(),
        };
        let noise = data(rows * cols / per * size, seed);
        let mut bytes: Vec<u8> = noise.iter().map(|v| ((v + 1.0) * 127.9) as u8).collect();
        for (b, blk) in bytes.chunks_exact_mut(size).enumerate() {
            for (i, &off) in scales.iter().enumerate() {
                let v = (0.01 + 0.004 * ((b * 7 + i * 3) % 11) as f32) * if i == 1 && per == 32 { -1.0 } else { 1.0 };
                blk[off..off + 2].copy_from_slice(&f16::from_f32(v).to_bits().to_le_bytes());
            }
        }
        Matrix::from_ggml(ty, rows, cols, &bytes).unwrap()
    }

    const GGML_BLOCK_TYPES: [u32; 6] =
        [ggml_type::Q4_0, ggml_type::Q4_1, ggml_type::Q8_0, ggml_type::Q4_K, ggml_type::Q5_K, ggml_type::Q6_K];

    /// The inputs as the decode kernels see them: quantized to int8 groups of 32.
    fn quantized_inputs(x: &[f32]) -> Vec<f32> {
        quantize_rows(x, Vec::new()).iter().flat_map(|b| b.q.map(|q| f32::from(q) * b.d)).collect()
    }

    #[test]
    fn every_block_format_and_row_count_matches_the_product_of_its_dequantized_weights() {
        for ty in GGML_BLOCK_TYPES {
            let block = if ty >= ggml_type::Q4_K { 256 } else { 32 };
            for &(k, n) in &[(block, 1), (block, 7), (2 * block, 33), (3 * block, 70), (block * 5, 3)] {
                let mat = random_ggml(ty, n, k, 40 + n as u32);
                let w = mat.dequantize_rows();
                for m in (1..=33).chain([40, 64]) {
                    let x = data(m * k, 41 + m as u32);
                    let mut y = vec![f32::NAN; m * n];
                    mat.matmul_t(&x, None, &mut y, m);
                    // Decode shapes run on the int8 inputs (and the q8 VNNI GEMM from 8 rows),
                    // prefill shapes widen the weights and keep the f32 inputs.
                    let int_gemm = ty != ggml_type::Q6_K && kernels().gemm_q8_vnni.is_some();
                    let quantized = m < GEMM_MIN_ROWS || int_gemm;
                    let xr = if quantized { quantized_inputs(&x) } else { x.clone() };
                    // Relative to the sums of |x w| (the formats with offsets add two terms of
                    // about that size which cancel, llama.cpp's as much as these).
                    let scale = naive(&abs(&xr), &abs(&w), m, k, n);
                    let r = naive(&xr, &w, m, k, n);
                    let e = err_against(&y, &r, &scale);
                    assert!(e < 1e-5, "{} m={m} k={k} n={n}: relative error {e}", mat.format());
                    // Against the f32 inputs, the input quantization's error only.
                    let r = naive(&x, &w, m, k, n);
                    let e = err_against(&y, &r, &scale);
                    assert!(e < 1e-2, "{} m={m} k={k} n={n}: relative error {e} against f32 inputs", mat.format());
                }
            }
        }
    }

    /// Each block format's streaming kernel in `kern` against the portable one.
    fn check_block_kernels(name: &str, kern: &Kernels, m: usize, k: usize) {
        let x = data(m * k, 50 + m as u32);
        let xq = quantize_rows(&x, Vec::new());
        let g = k / Q8_GROUP;
        let port = Kernels::for_features(crate::cpu::Features::PORTABLE);
        for ty in GGML_BLOCK_TYPES {
            if !k.is_multiple_of(if ty >= ggml_type::Q4_K { 256 } else { 32 }) {
                continue;
            }
            // Three weight rows in one call, as the products make it.
            let mat = random_ggml(ty, 3, k, 60 + m as u32);
            let (mut a, mut b) = (vec![0f32; 3 * m], vec![f32::NAN; 3 * m]);
            match &mat.data {
                Data::Q8(w) => ((kern.dots_q8)(&xq, m, w, g, &mut a), (port.dots_q8)(&xq, m, w, g, &mut b)),
                Data::Q4_0(w) => ((kern.dots_q4_0)(&xq, m, w, g, &mut a), (port.dots_q4_0)(&xq, m, w, g, &mut b)),
                Data::Q4_1(w) => ((kern.dots_q4_1)(&xq, m, w, g, &mut a), (port.dots_q4_1)(&xq, m, w, g, &mut b)),
                Data::Q4K(w) => ((kern.dots_q4_k)(&xq, m, w, g, &mut a), (port.dots_q4_k)(&xq, m, w, g, &mut b)),
                Data::Q5K(w) => ((kern.dots_q5_k)(&xq, m, w, g, &mut a), (port.dots_q5_k)(&xq, m, w, g, &mut b)),
                Data::Q6K(w) => ((kern.dots_q6_k)(&xq, m, w, g, &mut a), (port.dots_q6_k)(&xq, m, w, g, &mut b)),
                _ => unreachable!(),
            };
            assert!(rel_err(&a, &b) < 1e-6, "{name} {} m={m} k={k}: {a:?} vs {b:?}", mat.format());
        }
    }

    #[test]
    fn simd_and_portable_block_kernels_agree() {
        for (name, kern) in kernel_sets() {
            for m in 1..=9 {
                for k in [32, 96, 256, 512, 768] {
                    check_block_kernels(name, &kern, m, k);
                }
            }
            // The VNNI variant and the maddubs one, where both run here.
            if kern.features.vnni {
                let plain = Kernels::for_features(crate::cpu::Features { vnni: false, ..kern.features });
                check_block_kernels("avx512 without vnni", &plain, 5, 512);
            }
        }
    }

    #[test]
    fn interleaved_rows_give_the_products_and_weights_of_the_stored_ones() {
        for ty in [ggml_type::Q4_0, ggml_type::Q4_1, ggml_type::Q8_0] {
            for &(k, n) in &[(32, 1), (96, 7), (64, 16), (576, 33), (160, 70)] {
                let stored_mat = random_ggml(ty, n, k, 140 + n as u32);
                let w = stored_mat.dequantize_rows();
                let mat = random_ggml(ty, n, k, 140 + n as u32).interleave();
                assert!(matches!(mat.data, Data::Q4_0x16(_) | Data::Q4_1x16(_) | Data::Q8x16(_)), "{ty}");
                assert_eq!(mat.format(), stored_mat.format());
                // Per row and block: the 4-bit formats' 20 bytes, Q8_0's 34 and its sum.
                let per_block = if ty == ggml_type::Q8_0 { 36 } else { 20 };
                assert_eq!(mat.bytes(), n.div_ceil(16) * 16 * k / 32 * per_block);
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&mat.dequantize_rows()), bits(&w), "{ty} k={k} n={n}: weights");
                // Rows from the middle too (embeddings read one row at a time).
                let mut row = vec![0f32; k];
                mat.rows_into(n - 1, &mut row);
                assert_eq!(bits(&row), bits(&w[(n - 1) * k..]), "{ty} k={k} n={n}: last row");
                for m in (1..=9).chain([16, 33, 40]) {
                    let x = data(m * k, 141 + m as u32);
                    let mut y = vec![f32::NAN; m * n];
                    mat.matmul_t(&x, None, &mut y, m);
                    let xr = quantized_inputs(&x);
                    let scale = naive(&abs(&xr), &abs(&w), m, k, n);
                    let r = naive(&xr, &w, m, k, n);
                    let e = err_against(&y, &r, &scale);
                    assert!(e < 1e-5, "{} m={m} k={k} n={n}: relative error {e}", mat.format());
                }
            }
        }
        // A Q4_0 scale whose offset (-8 d) overflows f16 keeps the stored layout.
        let mut b = f16::from_f32(9000.0).to_bits().to_le_bytes().to_vec();
        b.extend([0x88u8; 16]);
        let mat = Matrix::from_ggml(ggml_type::Q4_0, 1, 32, &b).unwrap().interleave();
        assert!(matches!(mat.data, Data::Q4_0(_)));
    }

    #[test]
    fn simd_and_portable_interleaved_kernels_agree() {
        for (name, kern) in kernel_sets() {
            for ty in [ggml_type::Q4_0, ggml_type::Q4_1, ggml_type::Q8_0] {
                for &(k, n, m) in &[(32, 5, 1), (96, 16, 3), (576, 40, 4), (160, 33, 7), (64, 48, 13)] {
                    let mat = random_ggml(ty, n, k, 150 + m as u32).interleave();
                    let x = data(m * k, 151 + n as u32);
                    let xq = quantize_rows(&x, Vec::new());
                    // Into a wider output: the columns past n must stay untouched.
                    let ldc = n + 3;
                    let (mut a, mut b) = (vec![7f32; m * ldc], vec![7f32; m * ldc]);
                    // SAFETY: both outputs hold m rows of ldc >= n columns.
                    unsafe {
                        match &mat.data {
                            Data::Q4_0x16(w) | Data::Q4_1x16(w) => {
                                (kern.gemm_q4x16)(&xq, m, w, k / 32, n, a.as_mut_ptr(), ldc);
                                interleaved::gemm_q4x16(&xq, m, w, k / 32, n, b.as_mut_ptr(), ldc);
                            }
                            Data::Q8x16(w) => {
                                (kern.gemm_q8x16)(&xq, m, w, k / 32, n, a.as_mut_ptr(), ldc);
                                interleaved::gemm_q8x16(&xq, m, w, k / 32, n, b.as_mut_ptr(), ldc);
                            }
                            _ => unreachable!("{ty} is interleaved"),
                        }
                    }
                    assert!(rel_err(&a, &b) < 1e-6, "{name} {} m={m} k={k} n={n}", mat.format());
                    assert!(a.chunks_exact(ldc).all(|r| r[n..].iter().all(|&v| v == 7.0)), "{name}: wrote past n");
                }
            }
        }
    }

    #[test]
    fn simd_and_portable_dequantization_agree_to_the_bit() {
        let port = Kernels::for_features(crate::cpu::Features::PORTABLE);
        for (name, kern) in kernel_sets() {
            for ty in [ggml_type::Q4_0, ggml_type::Q4_1, ggml_type::Q4_K, ggml_type::Q5_K, ggml_type::Q6_K] {
                let mat = random_ggml(ty, 3, 512, 90 + ty);
                let (mut a, mut b) = (vec![f32::NAN; 3 * 512], vec![0f32; 3 * 512]);
                match &mat.data {
                    Data::Q4_0(w) => ((kern.dequantize_q4_0)(w, &mut a), (port.dequantize_q4_0)(w, &mut b)),
                    Data::Q4_1(w) => ((kern.dequantize_q4_1)(w, &mut a), (port.dequantize_q4_1)(w, &mut b)),
                    Data::Q4K(w) => ((kern.dequantize_q4_k)(w, &mut a), (port.dequantize_q4_k)(w, &mut b)),
                    Data::Q5K(w) => ((kern.dequantize_q5_k)(w, &mut a), (port.dequantize_q5_k)(w, &mut b)),
                    Data::Q6K(w) => ((kern.dequantize_q6_k)(w, &mut a), (port.dequantize_q6_k)(w, &mut b)),
                    _ => unreachable!(),
                };
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&a), bits(&b), "{name} {}", mat.format());
            }
        }
    }

    #[test]
    fn the_portable_table_is_the_portable_code() {
        let port = Kernels::for_features(crate::cpu::Features::PORTABLE);
        assert_eq!(port.features, crate::cpu::Features::PORTABLE);
        assert!(port.dots2_bf16_native.is_none() && port.gemm_bf16_native.is_none() && port.gemm_q8_vnni.is_none());
        // Bit for bit what the portable functions give (the SIMD ones sum in another order).
        let (m, k) = (3, 96);
        let x = data(m * k, 70);
        let w = data(k, 71);
        let (mut a, mut b) = (vec![0f32; m], vec![0f32; m]);
        (port.dots_f32)(&x, m, &w, &mut a);
        portable::dots_f32(&x, m, &w, &mut b);
        assert_eq!(a, b);
        let mat = random_ggml(ggml_type::Q4_K, 2, 256, 72);
        let Data::Q4K(wq) = &mat.data else { unreachable!() };
        let x = data(m * 256, 73);
        let xq = quantize_rows(&x, Vec::new());
        let (mut a, mut b) = (vec![0f32; 2 * m], vec![0f32; 2 * m]);
        (port.dots_q4_k)(&xq, m, wq, 8, &mut a);
        portable::dots_quant(&xq, m, wq, 8, &mut b);
        assert_eq!(a, b);
    }

    #[test]
    fn from_ggml_blocks_with_known_values() {
        // Q4_0, d = 0.5: byte j holds weight j (low nibble j % 16) and weight j + 16 (15 - j).
        let mut b = f16::from_f32(0.5).to_bits().to_le_bytes().to_vec();
        b.extend((0..16u8).map(|j| j | (15 - j) << 4));
        let w = Matrix::from_ggml(ggml_type::Q4_0, 1, 32, &b).unwrap().dequantize_rows();
        let want: Vec<f32> =
            (0..16).map(|j| (j as f32 - 8.0) * 0.5).chain((0..16).map(|j| (7.0 - j as f32) * 0.5)).collect();
        assert_eq!(w, want);
        // Q4_1, d = 0.25, m = -1: w = 0.25 q - 1.
        let mut b = f16::from_f32(0.25).to_bits().to_le_bytes().to_vec();
        b.extend(f16::from_f32(-1.0).to_bits().to_le_bytes());
        b.extend([0x10u8; 16]);
        let w = Matrix::from_ggml(ggml_type::Q4_1, 1, 32, &b).unwrap().dequantize_rows();
        assert_eq!(w, [vec![-1.0; 16], vec![-0.75; 16]].concat());
        // Q8_0, d = 2: the bytes times two.
        let mut b = f16::from_f32(2.0).to_bits().to_le_bytes().to_vec();
        b.extend((0..32).map(|i| (i as i8 - 16) as u8));
        let w = Matrix::from_ggml(ggml_type::Q8_0, 1, 32, &b).unwrap().dequantize_rows();
        assert_eq!(w, (0..32).map(|i| 2.0 * (i as f32 - 16.0)).collect::<Vec<_>>());
        // Q4_K, d = 1, dmin = 0.5; sub-blocks 0..4 take scales 1..4 and mins 5..8 from bytes 0..8,
        // 4..8 take theirs from the nibbles of bytes 8..12; every quant byte is 0x53.
        let mut b = [1.0f32, 0.5].iter().flat_map(|&v| f16::from_f32(v).to_bits().to_le_bytes()).collect::<Vec<u8>>();
        b.extend([1, 2, 3, 4, 5, 6, 7, 8, 0x21, 0x43, 0x65, 0x87]);
        b.extend([0x53u8; 128]);
        let w = Matrix::from_ggml(ggml_type::Q4_K, 1, 256, &b).unwrap().dequantize_rows();
        let (sc, mins) = ([1.0, 2.0, 3.0, 4.0, 1.0, 3.0, 5.0, 7.0], [5.0, 6.0, 7.0, 8.0, 2.0, 4.0, 6.0, 8.0]);
        for j in 0..8 {
            let q = if j % 2 == 0 { 3.0 } else { 5.0 };
            assert!(
                w[32 * j..32 * j + 32].iter().all(|&v| v == sc[j] * q - 0.5 * mins[j]),
                "sub-block {j}: {}",
                w[32 * j]
            );
        }
        // Q6_K, d = 0.5, group scales 1..16: quants from ql = 0x21 and qh = 0b11_10_01_00 (sub-block g of
        // each half takes bits 2g of qh), so sub-block g holds (low or high nibble) | g << 4.
        let mut b = vec![0x21u8; 128];
        b.extend([0b1110_0100u8; 64]);
        b.extend(1..=16u8);
        b.extend(f16::from_f32(0.5).to_bits().to_le_bytes());
        let w = Matrix::from_ggml(ggml_type::Q6_K, 1, 256, &b).unwrap().dequantize_rows();
        for j in 0..8 {
            let g = j % 4;
            let q = (if g < 2 { 1 } else { 2 } | (g << 4)) as f32 - 32.0;
            for t in [0, 15, 16, 31] {
                let want = 0.5 * (2 * j + t / 16 + 1) as f32 * q;
                assert_eq!(w[32 * j + t], want, "sub-block {j}, weight {t}");
            }
        }
        // The float types, little-endian.
        let w = Matrix::from_ggml(ggml_type::F32, 1, 2, &[0, 0, 0x80, 0x3f, 0, 0, 0, 0xc0]).unwrap();
        assert_eq!(w.dequantize_rows(), [1.0, -2.0]);
        let w = Matrix::from_ggml(ggml_type::F16, 1, 2, &[0x00, 0x3c, 0x00, 0xb8]).unwrap();
        assert_eq!((w.format(), w.dequantize_rows()), (WeightFormat::F16, vec![1.0, -0.5]));
        let w = Matrix::from_ggml(ggml_type::BF16, 1, 2, &[0x80, 0x3f, 0x40, 0xc0]).unwrap();
        assert_eq!(w.dequantize_rows(), [1.0, -3.0]);
    }

    #[test]
    fn q4_quantization_keeps_four_bits_and_its_error_bound() {
        let w = data(70 * 96, 80);
        for fmt in [WeightFormat::Q4, WeightFormat::Q4_1] {
            let mat = Matrix::new(w.clone(), 70, 96, fmt);
            assert_eq!(mat.format(), fmt);
            // 18 or 20 bytes per 32 weights: no widening at load.
            assert_eq!(mat.bytes(), 70 * 3 * if fmt == WeightFormat::Q4 { 18 } else { 20 });
            // Half a step of 1/16 (Q4_0: of 2 amax / 16) of values in [-1, 1].
            let e = rel_err(&stored(&mat), &w);
            assert!(e < 0.12, "{fmt}: storage error {e}");
        }
        // A width that is not whole blocks falls back to bf16, as for q8.
        assert_eq!(Matrix::new(data(48, 81), 1, 48, WeightFormat::Q4).format(), WeightFormat::Bf16);
        // An all-zero group stays zero.
        let z = Matrix::new(vec![0.0; 32], 1, 32, WeightFormat::Q4);
        assert!(stored(&z).iter().all(|&v| v == 0.0));
    }
}
