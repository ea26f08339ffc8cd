//! Weight matrices in the storage format the engine computes on directly: f32 (the
//! reference), bf16, or int8 with one f16 scale per group of 32 (`q8`, the layout of
//! llama.cpp's q8_0).
//!
//! A [`Matrix`] is a linear layer's weight in the PyTorch `[out, in]` layout. Products come in
//! two shapes:
//! - few rows (decode: one row per running sequence): each weight row is streamed once from
//!   memory and dotted with every input row while it is in registers. bf16 rows are widened to
//!   f32 in registers; for q8 the input rows are quantized to int8 groups first and the dot
//!   products run on integers (`maddubs` on AVX2), as llama.cpp does.
//! - many rows (prefill): the weight is widened panel by panel (64 output columns at a time,
//!   per thread) into an f32 scratch and multiplied with the blocked GEMM, so the cost of the
//!   widening is shared by every input row and no full f32 copy is ever held. Where native bf16
//!   products are switched on, bf16 weights instead meet inputs rounded to bf16 and packed in
//!   column pairs, in a register-tiled `vdpbf16ps` GEMM; on AVX-512 VNNI, q8 weights meet
//!   inputs quantized per group and packed four columns at a time, in a `vpdpbusd` GEMM.
//!
//! SIMD variants are chosen at run time (AVX2 + FMA + F16C on x86-64), with a portable
//! fallback that computes the same sums, so one binary runs on any x86-64 and on ARM.

use std::cell::{Cell, RefCell};
use std::str::FromStr;
use std::sync::OnceLock;

use crate::ops;
use crate::pool::pool;
use half::{bf16, f16};

/// Elements per quantization group of the q8 format.
pub const Q8_GROUP: usize = 32;

/// Rows at or above which a product goes to the blocked GEMM instead of the streaming kernels.
const GEMM_MIN_ROWS: usize = 16;
/// Most input rows the streaming kernels take (their stack buffers' size).
const FEW_ROWS_MAX: usize = GEMM_MIN_ROWS;

/// Input rows from which a bf16 product goes to the native bf16 kernels (AVX-512 BF16) when
/// they are switched on (`GHOSTLINE_BF16_NATIVE=1`; one row measured slower than the widening
/// kernels): the streaming kernel up to `NATIVE_BF16_ROWS_MAX` rows, the packed GEMM above.
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
    Bf16,
    Q8,
}

impl WeightFormat {
    pub fn name(self) -> &'static str {
        match self {
            WeightFormat::F32 => "f32",
            WeightFormat::Bf16 => "bf16",
            WeightFormat::Q8 => "q8",
        }
    }
}

impl std::fmt::Display for WeightFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for WeightFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "f32" | "fp32" | "float32" => Ok(WeightFormat::F32),
            "bf16" | "bfloat16" => Ok(WeightFormat::Bf16),
            "q8" | "q8_0" | "int8" => Ok(WeightFormat::Q8),
            other => Err(format!("unknown weight format {other:?}; use f32, bf16 or q8")),
        }
    }
}

/// One group of 32 weights: an f16 scale and 32 signed bytes (34 bytes, as q8_0).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
pub struct BlockQ8 {
    pub d: u16,
    pub q: [i8; Q8_GROUP],
}

/// One group of 32 activations, quantized for the integer dot products (f32 scale).
#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub struct BlockQ8A {
    d: f32,
    q: [i8; Q8_GROUP],
}

const BLOCK_A_ZERO: BlockQ8A = BlockQ8A { d: 0.0, q: [0; Q8_GROUP] };

#[derive(PartialEq)]
enum Data {
    F32(Vec<f32>),
    Bf16(Vec<u16>),
    Q8(Vec<BlockQ8>),
}

/// A `[rows, cols]` weight matrix (rows = output features).
#[derive(PartialEq)]
pub struct Matrix {
    pub rows: usize,
    pub cols: usize,
    data: Data,
}

impl Matrix {
    /// Stores `w` (`rows * cols` floats) in `format`. q8 needs `cols` to be a multiple of 32;
    /// other shapes fall back to bf16 (see [`Matrix::format`]).
    pub fn new(w: Vec<f32>, rows: usize, cols: usize, format: WeightFormat) -> Matrix {
        assert_eq!(w.len(), rows * cols, "Matrix::new: {} floats for [{rows}, {cols}]", w.len());
        if format == WeightFormat::F32 {
            return Matrix { rows, cols, data: Data::F32(w) };
        }
        let mut b = MatrixBuilder::new(rows, cols, format);
        b.push(&w);
        b.finish()
    }

    pub fn format(&self) -> WeightFormat {
        match self.data {
            Data::F32(_) => WeightFormat::F32,
            Data::Bf16(_) => WeightFormat::Bf16,
            Data::Q8(_) => WeightFormat::Q8,
        }
    }

    /// Bytes the weights take in memory.
    pub fn bytes(&self) -> usize {
        match &self.data {
            Data::F32(v) => v.len() * 4,
            Data::Bf16(v) => v.len() * 2,
            Data::Q8(v) => v.len() * std::mem::size_of::<BlockQ8>(),
        }
    }

    /// Writes rows `r0..r0 + out.len() / cols` as f32 into `out`.
    pub fn rows_into(&self, r0: usize, out: &mut [f32]) {
        let k = self.cols;
        let n = out.len() / k;
        assert!(r0 + n <= self.rows, "rows_into: rows {r0}..{} of {}", r0 + n, self.rows);
        match &self.data {
            Data::F32(v) => out.copy_from_slice(&v[r0 * k..(r0 + n) * k]),
            Data::Bf16(v) => widen_bf16(&v[r0 * k..(r0 + n) * k], out),
            Data::Q8(v) => {
                let g = k / Q8_GROUP;
                for (b, o) in v[r0 * g..(r0 + n) * g].iter().zip(out.chunks_exact_mut(Q8_GROUP)) {
                    let d = f16::from_bits(b.d).to_f32();
                    for (o, &q) in o.iter_mut().zip(&b.q) {
                        *o = d * q as f32;
                    }
                }
            }
        }
    }

    /// `y[m, rows] = x[m, cols] · selfᵀ (+ bias)`.
    pub fn matmul_t(&self, x: &[f32], bias: Option<&[f32]>, y: &mut [f32], m: usize) {
        let (k, n) = (self.cols, self.rows);
        assert!(x.len() >= m * k && y.len() >= m * n, "matmul_t: buffer too small");
        if m == 0 || n == 0 {
            return;
        }
        match (&self.data, m >= GEMM_MIN_ROWS) {
            (Data::Bf16(w), _) if self.native_bf16(m) => self.matmul_native_bf16(w, x, y, m),
            (Data::F32(w), true) => ops::matmul_t_gemm(x, w, y, m, k, n),
            (Data::Q8(w), _) if m >= Q8_GEMM_MIN_ROWS && kernels().gemm_q8_vnni.is_some() => {
                self.matmul_q8_gemm(w, x, y, m)
            }
            (_, true) => self.matmul_panels(x, y, m),
            (_, false) => self.matmul_few_rows(x, y, m),
        }
        if let Some(b) = bias {
            for row in y[..m * n].chunks_exact_mut(n) {
                row.iter_mut().zip(b).for_each(|(v, b)| *v += b);
            }
        }
    }

    /// Whether an `m`-row product with these weights runs on the native bf16 kernels. They
    /// round the inputs to bf16 too (as llama.cpp's bf16 path does), so results move by about
    /// 1e-2 relative; off unless `GHOSTLINE_BF16_NATIVE=1`, so that bf16 weights otherwise give
    /// what f32 compute on them gives.
    fn native_bf16(&self, m: usize) -> bool {
        static ON: OnceLock<bool> = OnceLock::new();
        let on = *ON.get_or_init(|| {
            std::env::var("GHOSTLINE_BF16_NATIVE").is_ok_and(|v| v == "1") && kernels().dots2_bf16_native.is_some()
        });
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

    /// q8 product of `Q8_GEMM_MIN_ROWS` rows or more on AVX-512 VNNI: the input rows are
    /// quantized per group of 32 as for the streaming kernels and packed in blocks of 16 rows
    /// (8 for up to 8 rows), four columns at a time (`Q8Rows`), so one load holds the same four
    /// columns of a block's rows; each weight row's
    /// four int8 values are broadcast against it, biased to u8, and `vpdpbusd` adds the four
    /// products to 16 integer sums, one per input row, scaled into f32 once per group. The
    /// weights are read as stored.
    fn matmul_q8_gemm(&self, w: &[BlockQ8], x: &[f32], y: &mut [f32], m: usize) {
        let (k, n) = (self.cols, self.rows);
        let Some(gemm) = kernels().gemm_q8_vnni else {
            return self.matmul_panels(x, y, m);
        };
        let g = k / Q8_GROUP;
        let xq = Q8Rows::new(&x[..m * k], m, k, if m <= 8 { 8 } else { 16 }, INPUT_WORDS.take());
        // SAFETY: `w` holds the n rows of g groups each, `y` the m x n output.
        gemm_tasks(w, g, y, n, |w, rows, dst| unsafe { gemm(&xq, w, rows, dst, n) });
        INPUT_WORDS.set(xq.words);
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
        let xq = match &self.data {
            Data::Q8(_) => Some(quantize_rows(&x[..m * k], QUANT_ROWS.take())),
            _ => None,
        };
        let out = SyncPtr(y.as_mut_ptr());
        // Several input rows: two weight rows at a time (f32, bf16), so each input vector
        // loaded serves two FMAs.
        let pairs = m > 1 && !matches!(self.data, Data::Q8(_));
        pool().run(n.div_ceil(COLS), &|c| {
            let (r0, r1) = (c * COLS, ((c + 1) * COLS).min(n));
            if let (Data::Q8(w), Some(xq)) = (&self.data, &xq) {
                // The task's weight rows in one call (a q8 row of a small model is only a few
                // groups, so a call per row would cost as much as its arithmetic).
                thread_local! {
                    static BUF: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
                }
                let g = k / Q8_GROUP;
                if m == 1 {
                    // One input row: the task's outputs are y[r0..r1] itself.
                    // SAFETY: task c alone writes y[r0..r1], inside the m * n floats `matmul_t`
                    // checked.
                    let o = unsafe { std::slice::from_raw_parts_mut(out.at(r0), r1 - r0) };
                    (kern.dots_q8)(xq, 1, &w[r0 * g..r1 * g], g, o);
                    return;
                }
                BUF.with(|b| {
                    let mut b = b.borrow_mut();
                    // Every element the kernel reads back it writes first: no zeroing per call.
                    if b.len() < COLS * m {
                        b.resize(COLS * m, 0.0);
                    }
                    let buf = &mut b[..(r1 - r0) * m];
                    let w = &w[r0 * g..r1 * g];
                    (kern.dots_q8)(xq, m, w, g, buf);
                    for (r, o) in buf.chunks_exact(m).enumerate() {
                        // SAFETY: as below.
                        unsafe { out.write_column(n, r0 + r, o) };
                    }
                });
                return;
            }
            let mut acc = [[0f32; FEW_ROWS_MAX]; 2];
            let [a0, a1] = &mut acc;
            let (o0, o1) = (&mut a0[..m], &mut a1[..m]);
            let mut row = r0;
            while row < r1 {
                let two = pairs && row + 1 < r1;
                let (w0, w1) = (row * k..(row + 1) * k, (row + 1) * k..(row + 2) * k);
                match &self.data {
                    Data::F32(w) if two => (kern.dots2_f32)(x, m, &w[w0], &w[w1], o0, o1),
                    Data::Bf16(w) if two => (kern.dots2_bf16)(x, m, &w[w0], &w[w1], o0, o1),
                    Data::F32(w) => (kern.dots_f32)(x, m, &w[w0], o0),
                    Data::Bf16(w) => (kern.dots_bf16)(x, m, &w[w0], o0),
                    Data::Q8(_) => unreachable!("q8 rows are done above"),
                }
                for (j, o) in [&*o0, &*o1].into_iter().take(if two { 2 } else { 1 }).enumerate() {
                    // SAFETY: task c alone writes columns c * COLS.. of each of the m rows, and
                    // `matmul_t` checked that y holds m * n floats.
                    unsafe { out.write_column(n, row + j, o) };
                }
                row += if two { 2 } else { 1 };
            }
        });
        if let Some(v) = xq {
            QUANT_ROWS.set(v);
        }
    }
}

impl std::fmt::Debug for Matrix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Matrix[{}, {}] {}", self.rows, self.cols, self.format())
    }
}

/// Builds a [`Matrix`] from its rows in order, a few at a time, converting each batch of rows
/// to the storage format at once, so that loading never holds a whole f32 copy of a weight.
pub struct MatrixBuilder {
    rows: usize,
    cols: usize,
    filled: usize,
    data: Data,
}

impl MatrixBuilder {
    /// A `[rows, cols]` matrix in `format` (q8 falls back to bf16 as in [`Matrix::new`]).
    pub fn new(rows: usize, cols: usize, format: WeightFormat) -> MatrixBuilder {
        let format = if format == WeightFormat::Q8 && cols % Q8_GROUP != 0 { WeightFormat::Bf16 } else { format };
        let n = rows * cols;
        let data = match format {
            WeightFormat::F32 => Data::F32(Vec::with_capacity(n)),
            WeightFormat::Bf16 => Data::Bf16(Vec::with_capacity(n)),
            WeightFormat::Q8 => Data::Q8(Vec::with_capacity(n / Q8_GROUP)),
        };
        MatrixBuilder { rows, cols, filled: 0, data }
    }

    /// Appends whole rows (`w.len()` a multiple of `cols`).
    pub fn push(&mut self, w: &[f32]) {
        assert!(
            w.len() % self.cols.max(1) == 0,
            "MatrixBuilder::push: {} floats is not whole rows of {}",
            w.len(),
            self.cols
        );
        let rows = w.len() / self.cols.max(1);
        assert!(self.filled + rows <= self.rows, "MatrixBuilder::push: more than {} rows", self.rows);
        match &mut self.data {
            Data::F32(v) => v.extend_from_slice(w),
            Data::Bf16(v) => v.extend(w.iter().map(|&x| bf16::from_f32(x).to_bits())),
            Data::Q8(v) => v.extend(w.chunks_exact(Q8_GROUP).map(quantize_group)),
        }
        self.filled += rows;
    }

    pub fn finish(self) -> Matrix {
        assert_eq!(self.filled, self.rows, "MatrixBuilder::finish: {} of {} rows", self.filled, self.rows);
        Matrix { rows: self.rows, cols: self.cols, data: self.data }
    }
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

/// Input rows rounded to bf16 and packed for the native bf16 GEMM: in blocks of 16 rows (the
/// last padded with zero rows), pair by pair: word `(b * pairs + p) * 16 + l` holds columns
/// 2p and 2p + 1 of row 16b + l (low and high half).
struct BfPairs {
    words: Vec<u32>,
    m: usize,
    pairs: usize,
}

impl BfPairs {
    /// `x` is `m` rows of `k` (even) columns, packed into `words`' allocation. One block of 16
    /// rows per task.
    fn new(x: &[f32], m: usize, k: usize, mut words: Vec<u32>) -> BfPairs {
        let pairs = k / 2;
        words.clear();
        words.resize(m.div_ceil(16) * pairs * 16, 0);
        pool().for_chunks(&mut words, pairs * 16, |b, dst| {
            for (l, row) in x.chunks_exact(k).skip(b * 16).take(16.min(m - b * 16)).enumerate() {
                for (p, two) in row.chunks_exact(2).enumerate() {
                    dst[p * 16 + l] = u32::from(bf16_bits(two[0])) | u32::from(bf16_bits(two[1])) << 16;
                }
            }
        });
        BfPairs { words, m, pairs }
    }
}

/// Input rows quantized as [`quantize_rows`] does, packed for the q8 GEMM in blocks of `lanes`
/// rows (16, or 8 for a product of at most 8 rows; the last block padded with zero rows). A
/// block is `lanes * (quads + 2 * groups)` words: word `t * lanes + l` holds columns 4t..4t+3
/// of its row l as four i8; then per group the rows' scales (f32 bits); then per group
/// 128 · Σq of each row (what biasing the weights to u8 adds to each integer sum).
struct Q8Rows {
    words: Vec<u32>,
    m: usize,
    groups: usize,
    lanes: usize,
}

impl Q8Rows {
    /// `x` is `m` rows of `k` columns, packed into `words`' allocation.
    fn new(x: &[f32], m: usize, k: usize, lanes: usize, mut words: Vec<u32>) -> Q8Rows {
        let groups = k / Q8_GROUP;
        let quads = k / 4;
        let stride = lanes * (quads + 2 * groups);
        words.clear();
        words.resize(m.div_ceil(lanes) * stride, 0);
        pool().for_chunks(&mut words, stride, |b, blk| {
            let (q, rest) = blk.split_at_mut(quads * lanes);
            let (d, corr) = rest.split_at_mut(groups * lanes);
            for (l, row) in x.chunks_exact(k).skip(b * lanes).take(lanes.min(m - b * lanes)).enumerate() {
                for (gi, grp) in row.chunks_exact(Q8_GROUP).enumerate() {
                    let mut bytes = [0u8; Q8_GROUP];
                    let mut sum = 0i32;
                    let scale = quantize_input_group(grp, |t, v| {
                        bytes[t] = v as u8;
                        sum += i32::from(v);
                    });
                    for (t, four) in bytes.chunks_exact(4).enumerate() {
                        q[(gi * 8 + t) * lanes + l] = u32::from_le_bytes([four[0], four[1], four[2], four[3]]);
                    }
                    d[gi * lanes + l] = scale.to_bits();
                    corr[gi * lanes + l] = (128 * sum) as u32;
                }
            }
        });
        Q8Rows { words, m, groups, lanes }
    }
}

/// `bf16::from_f32(v).to_bits()` (round to nearest even, NaN kept quiet), without branches so
/// that loops over it vectorize.
#[inline]
fn bf16_bits(v: f32) -> u16 {
    let x = v.to_bits();
    let nan = x & 0x7fff_ffff > 0x7f80_0000;
    let up = u32::from(x & 0x8000 != 0 && x & 0x17fff != 0);
    let r = (x >> 16) + up;
    (if nan { (x >> 16) | 0x40 } else { r }) as u16
}

fn quantize_group(g: &[f32]) -> BlockQ8 {
    let amax = g.iter().fold(0f32, |m, x| m.max(x.abs()));
    let d = f16::from_f32(amax / 127.0);
    let inv = if d.to_f32() > 0.0 { 1.0 / d.to_f32() } else { 0.0 };
    let mut q = [0i8; Q8_GROUP];
    for (q, &x) in q.iter_mut().zip(g) {
        *q = round_i8((x * inv).clamp(-127.0, 127.0));
    }
    BlockQ8 { d: d.to_bits(), q }
}

/// Quantizes input rows (a multiple of 32 floats) into groups with f32 scales, in `out`'s
/// allocation.
fn quantize_rows(x: &[f32], mut out: Vec<BlockQ8A>) -> Vec<BlockQ8A> {
    out.clear();
    out.resize(x.len() / Q8_GROUP, BLOCK_A_ZERO);
    for (b, g) in out.iter_mut().zip(x.chunks_exact(Q8_GROUP)) {
        b.d = quantize_input_group(g, |t, q| b.q[t] = q);
    }
    out
}

// The calling thread's input buffers of its last product of each kind, taken for the next one
// and put back after it, so that a decode step allocates nothing once they have grown.
thread_local! {
    static QUANT_ROWS: Cell<Vec<BlockQ8A>> = const { Cell::new(Vec::new()) };
    static INPUT_WORDS: Cell<Vec<u32>> = const { Cell::new(Vec::new()) };
    static INPUT_BF16: Cell<Vec<u16>> = const { Cell::new(Vec::new()) };
}

/// Quantizes one group of 32 inputs symmetrically to i8, handing each value to `put`; returns
/// the group's scale. Both input layouts ([`BlockQ8A`], [`Q8Rows`]) quantize through here.
#[inline]
fn quantize_input_group(g: &[f32], mut put: impl FnMut(usize, i8)) -> f32 {
    let amax = g.iter().fold(0f32, |m, x| m.max(x.abs()));
    let inv = if amax > 0.0 { 127.0 / amax } else { 0.0 };
    for (t, &v) in g.iter().enumerate() {
        put(t, round_i8(v * inv));
    }
    amax / 127.0
}

/// A stored weight element as f32 (the scalar tails of the SIMD kernels).
trait Weight: Copy {
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

/// Rounds half away from zero, as `f32::round`, for |v| <= 127.5 (without a libm call, which
/// is what `round` is without SSE4.1, so the loops around it vectorise).
#[inline]
fn round_i8(v: f32) -> i8 {
    (v + if v >= 0.0 { 0.5 } else { -0.5 }) as i8
}

fn widen_bf16(src: &[u16], out: &mut [f32]) {
    for (o, &b) in out.iter_mut().zip(src) {
        *o = b.to_f32();
    }
}

/// `out[i] = x_i · w` for the `m` rows `x_i` of `x` (each `w.len()` long).
type DotsF32 = fn(&[f32], usize, &[f32], &mut [f32]);
type DotsBf16 = fn(&[f32], usize, &[u16], &mut [f32]);
/// The same against two weight rows at once (`out0` for `w0`, `out1` for `w1`).
type Dots2F32 = fn(&[f32], usize, &[f32], &[f32], &mut [f32], &mut [f32]);
type Dots2Bf16 = fn(&[f32], usize, &[u16], &[u16], &mut [f32], &mut [f32]);
/// `out[r * m + i] = xq_i · w_r` for `m` quantized rows and each weight row `w_r` of `w`, all
/// of `g` groups.
type DotsQ8 = fn(&[BlockQ8A], usize, &[BlockQ8], usize, &mut [f32]);
/// Like [`Dots2Bf16`] with the input rows in bf16 too.
type Dots2Bf16Native = fn(&[u16], usize, &[u16], &[u16], &mut [f32], &mut [f32]);
/// `dst[i * ldc + j] = x_i · w_j` for every packed input row `i` and each of the `rows` weight
/// rows `w_j` in `w` (bf16, `2 * x.pairs` columns each).
///
/// # Safety
/// `dst` must be valid for writes at `i * ldc + j` for every `i < x.m`, `j < rows`, with no
/// other thread touching those elements meanwhile.
type GemmBf16Native = unsafe fn(&BfPairs, &[u16], usize, *mut f32, usize);
/// [`GemmBf16Native`] for q8: quantized input rows against `rows` q8 weight rows of
/// `x.groups` groups each.
type GemmQ8 = unsafe fn(&Q8Rows, &[BlockQ8], usize, *mut f32, usize);

struct Kernels {
    dots_f32: DotsF32,
    dots_bf16: DotsBf16,
    dots2_f32: Dots2F32,
    dots2_bf16: Dots2Bf16,
    dots_q8: DotsQ8,
    /// Where the CPU multiplies bf16 pairs natively (AVX-512 BF16).
    dots2_bf16_native: Option<Dots2Bf16Native>,
    gemm_bf16_native: Option<GemmBf16Native>,
    /// Where the CPU has AVX-512 VNNI: many-row q8 products.
    gemm_q8_vnni: Option<GemmQ8>,
}

fn kernels() -> &'static Kernels {
    static K: OnceLock<Kernels> = OnceLock::new();
    K.get_or_init(|| {
        // GHOSTLINE_KERNELS=avx2|portable caps the choice (to compare kernels on one machine).
        let cap = std::env::var("GHOSTLINE_KERNELS").unwrap_or_default();
        kernel_sets()
            .into_iter()
            .find(|(name, _)| match cap.as_str() {
                "avx2" => *name != "avx512",
                "portable" => *name == "portable",
                _ => true,
            })
            .map(|(_, k)| k)
            .unwrap_or_else(portable_kernels)
    })
}

/// Every kernel set this CPU can run, best first, the portable one last.
fn kernel_sets() -> Vec<(&'static str, Kernels)> {
    let mut sets = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        let avx2 = has!("avx2") && has!("fma") && has!("f16c");
        if avx2 && has!("avx512f") && has!("avx512bw") && has!("avx512vl") {
            sets.push((
                "avx512",
                Kernels {
                    dots_f32: |x, m, w, o| unsafe { x86v4::dots_f32(x, m, w, o) },
                    dots_bf16: |x, m, w, o| unsafe { x86v4::dots_bf16(x, m, w, o) },
                    dots2_f32: |x, m, w0, w1, o0, o1| unsafe { x86v4::dots2_f32(x, m, w0, w1, o0, o1) },
                    dots2_bf16: |x, m, w0, w1, o0, o1| unsafe { x86v4::dots2_bf16(x, m, w0, w1, o0, o1) },
                    // The AVX2 q8 kernel: the same loop on 256-bit VNNI (`vpdpbusd` in place of
                    // `maddubs` + `madd`) measured 8-13 % slower here (BENCHMARKS.md).
                    dots_q8: |x, m, w, g, o| unsafe { x86::dots_q8(x, m, w, g, o) },
                    dots2_bf16_native: if has!("avx512bf16") {
                        Some(|x, m, w0, w1, o0, o1| unsafe { x86v4::dots2_bf16_native(x, m, w0, w1, o0, o1) })
                    } else {
                        None
                    },
                    gemm_bf16_native: if has!("avx512bf16") { Some(x86v4::gemm_bf16_native) } else { None },
                    gemm_q8_vnni: if has!("avx512vnni") { Some(x86v4::gemm_q8_vnni) } else { None },
                },
            ));
        }
        if avx2 {
            sets.push((
                "avx2",
                Kernels {
                    dots_f32: |x, m, w, o| unsafe { x86::dots_f32(x, m, w, o) },
                    dots_bf16: |x, m, w, o| unsafe { x86::dots_bf16(x, m, w, o) },
                    dots2_f32: |x, m, w0, w1, o0, o1| unsafe { x86::dots2_f32(x, m, w0, w1, o0, o1) },
                    dots2_bf16: |x, m, w0, w1, o0, o1| unsafe { x86::dots2_bf16(x, m, w0, w1, o0, o1) },
                    dots_q8: |x, m, w, g, o| unsafe { x86::dots_q8(x, m, w, g, o) },
                    dots2_bf16_native: None,
                    gemm_bf16_native: None,
                    gemm_q8_vnni: None,
                },
            ));
        }
    }
    sets.push(("portable", portable_kernels()));
    sets
}

fn portable_kernels() -> Kernels {
    Kernels {
        dots_f32: portable::dots_f32,
        dots_bf16: portable::dots_bf16,
        dots2_f32: |x, m, w0, w1, o0, o1| {
            portable::dots_f32(x, m, w0, o0);
            portable::dots_f32(x, m, w1, o1);
        },
        dots2_bf16: |x, m, w0, w1, o0, o1| {
            portable::dots_bf16(x, m, w0, o0);
            portable::dots_bf16(x, m, w1, o1);
        },
        dots_q8: portable::dots_q8,
        dots2_bf16_native: None,
        gemm_bf16_native: None,
        gemm_q8_vnni: None,
    }
}

/// Calls `f::<R>(i)` for consecutive groups of at most four input rows, so that the SIMD
/// kernels are compiled for each group size and never compute a row twice.
#[cfg(target_arch = "x86_64")]
macro_rules! by_fours {
    ($m:expr, $f:ident $(<$t:ty>)?, $($arg:expr),*) => {{
        let mut i = 0;
        while i < $m {
            match $m - i {
                1 => $f::<1 $(, $t)?>(i, $($arg),*),
                2 => $f::<2 $(, $t)?>(i, $($arg),*),
                3 => $f::<3 $(, $t)?>(i, $($arg),*),
                _ => $f::<4 $(, $t)?>(i, $($arg),*),
            }
            i += 4;
        }
    }};
}

mod portable {
    use super::*;

    pub fn dots_f32(x: &[f32], m: usize, w: &[f32], out: &mut [f32]) {
        let k = w.len();
        for (i, o) in out[..m].iter_mut().enumerate() {
            *o = ops::dot(&x[i * k..(i + 1) * k], w);
        }
    }

    pub fn dots_bf16(x: &[f32], m: usize, w: &[u16], out: &mut [f32]) {
        let k = w.len();
        for (i, o) in out[..m].iter_mut().enumerate() {
            let xr = &x[i * k..(i + 1) * k];
            let mut acc = [0f32; 8];
            let mut t = 0;
            while t + 8 <= k {
                for l in 0..8 {
                    acc[l] += xr[t + l] * f32::from_bits((w[t + l] as u32) << 16);
                }
                t += 8;
            }
            let mut s: f32 = acc.iter().sum();
            for t in t..k {
                s += xr[t] * f32::from_bits((w[t] as u32) << 16);
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
}

/// The f32 / bf16 streaming kernels, written once for each vector width: the target features,
/// `$n` f32 lanes per vector, the lane intrinsics, the lane sum, and the trait that loads `$n`
/// weights as a vector.
#[cfg(target_arch = "x86_64")]
macro_rules! streaming_kernels {
    ($feat:literal, $n:literal, $zero:ident, $loadu:ident, $fmadd:ident, $add:ident, $hsum:path, $Lanes:ident) => {
        /// Input rows against one f32 weight row; the weight is loaded once per vector.
        #[target_feature(enable = $feat)]
        pub unsafe fn dots_f32(x: &[f32], m: usize, w: &[f32], out: &mut [f32]) {
            assert!(x.len() >= m * w.len() && out.len() >= m);
            by_fours!(m, dots_r<f32>, x, w, out);
        }

        /// Input rows against one bf16 weight row, widened in registers.
        #[target_feature(enable = $feat)]
        pub unsafe fn dots_bf16(x: &[f32], m: usize, w: &[u16], out: &mut [f32]) {
            assert!(x.len() >= m * w.len() && out.len() >= m);
            by_fours!(m, dots_r<u16>, x, w, out);
        }

        #[inline]
        #[target_feature(enable = $feat)]
        unsafe fn dots_r<const R: usize, W: $Lanes>(i: usize, x: &[f32], w: &[W], out: &mut [f32]) {
            let k = w.len();
            let pw = w.as_ptr();
            let px: [*const f32; R] = std::array::from_fn(|l| x.as_ptr().add((i + l) * k));
            let mut acc = [$zero(); R];
            let mut acc2 = [$zero(); R];
            let mut t = 0;
            while t + 2 * $n <= k {
                let w0 = W::load(pw.add(t));
                let w1 = W::load(pw.add(t + $n));
                for l in 0..R {
                    acc[l] = $fmadd(w0, $loadu(px[l].add(t)), acc[l]);
                    acc2[l] = $fmadd(w1, $loadu(px[l].add(t + $n)), acc2[l]);
                }
                t += 2 * $n;
            }
            while t + $n <= k {
                let w0 = W::load(pw.add(t));
                for l in 0..R {
                    acc[l] = $fmadd(w0, $loadu(px[l].add(t)), acc[l]);
                }
                t += $n;
            }
            for l in 0..R {
                let mut s = $hsum($add(acc[l], acc2[l]));
                for t in t..k {
                    s += *px[l].add(t) * (*pw.add(t)).to_f32();
                }
                out[i + l] = s;
            }
        }

        /// Input rows against two f32 weight rows: each input vector is loaded once for both.
        #[target_feature(enable = $feat)]
        pub unsafe fn dots2_f32(x: &[f32], m: usize, w0: &[f32], w1: &[f32], o0: &mut [f32], o1: &mut [f32]) {
            assert!(w0.len() == w1.len() && x.len() >= m * w0.len() && o0.len() >= m && o1.len() >= m);
            by_fours!(m, dots2_r<f32>, x, w0, w1, o0, o1);
        }

        /// Input rows against two bf16 weight rows, widened in registers.
        #[target_feature(enable = $feat)]
        pub unsafe fn dots2_bf16(x: &[f32], m: usize, w0: &[u16], w1: &[u16], o0: &mut [f32], o1: &mut [f32]) {
            assert!(w0.len() == w1.len() && x.len() >= m * w0.len() && o0.len() >= m && o1.len() >= m);
            by_fours!(m, dots2_r<u16>, x, w0, w1, o0, o1);
        }

        /// A tile of R input rows by two weight rows: 2R accumulators, per vector two weight loads
        /// and R input loads for 2R FMAs.
        #[inline]
        #[target_feature(enable = $feat)]
        unsafe fn dots2_r<const R: usize, W: $Lanes>(
            i: usize,
            x: &[f32],
            w0: &[W],
            w1: &[W],
            o0: &mut [f32],
            o1: &mut [f32],
        ) {
            let k = w0.len();
            let (p0, p1) = (w0.as_ptr(), w1.as_ptr());
            let px: [*const f32; R] = std::array::from_fn(|l| x.as_ptr().add((i + l) * k));
            let mut a0 = [$zero(); R];
            let mut a1 = [$zero(); R];
            let mut t = 0;
            while t + $n <= k {
                let v0 = W::load(p0.add(t));
                let v1 = W::load(p1.add(t));
                for l in 0..R {
                    let xv = $loadu(px[l].add(t));
                    a0[l] = $fmadd(v0, xv, a0[l]);
                    a1[l] = $fmadd(v1, xv, a1[l]);
                }
                t += $n;
            }
            for l in 0..R {
                let (mut s0, mut s1) = ($hsum(a0[l]), $hsum(a1[l]));
                for t in t..k {
                    let xv = *px[l].add(t);
                    s0 += xv * (*p0.add(t)).to_f32();
                    s1 += xv * (*p1.add(t)).to_f32();
                }
                o0[i + l] = s0;
                o1[i + l] = s1;
            }
        }
    };
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{BlockQ8, BlockQ8A};
    use crate::ops::x86::hsum;
    use std::arch::x86_64::*;

    /// A weight element type the kernels widen to f32 lanes.
    trait Lanes: super::Weight {
        /// Eight weights from `p` as f32 lanes (implementations enable the kernels' target
        /// features, or the intrinsics would not inline).
        unsafe fn load(p: *const Self) -> __m256;
    }

    impl Lanes for f32 {
        #[inline]
        #[target_feature(enable = "avx2,fma,f16c")]
        unsafe fn load(p: *const f32) -> __m256 {
            _mm256_loadu_ps(p)
        }
    }

    impl Lanes for u16 {
        /// bf16: the 16 bits are the high half of an f32.
        #[inline]
        #[target_feature(enable = "avx2,fma,f16c")]
        unsafe fn load(p: *const u16) -> __m256 {
            _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128(p as *const __m128i)), 16))
        }
    }

    streaming_kernels!(
        "avx2,fma,f16c",
        8,
        _mm256_setzero_ps,
        _mm256_loadu_ps,
        _mm256_fmadd_ps,
        _mm256_add_ps,
        hsum,
        Lanes
    );

    /// Quantized input rows against one q8 weight row: per group of 32, |w| · (x · sign w)
    /// with `maddubs` (u8 x i8 pairs to i16), then to i32 and f32, scaled by both groups'
    /// scales.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dots_q8(x: &[BlockQ8A], m: usize, w: &[BlockQ8], g: usize, out: &mut [f32]) {
        let rows = w.len() / g;
        assert!(x.len() >= m * g && out.len() >= m * rows);
        for (wr, out) in w.chunks_exact(g).zip(out.chunks_exact_mut(m)) {
            by_fours!(m, dots_q8_r, x, wr, out);
        }
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn dots_q8_r<const R: usize>(i: usize, x: &[BlockQ8A], w: &[BlockQ8], out: &mut [f32]) {
        let g = w.len();
        let ones = _mm256_set1_epi16(1);
        let px: [*const BlockQ8A; R] = std::array::from_fn(|l| x.as_ptr().add((i + l) * g));
        let mut acc = [_mm256_setzero_ps(); R];
        for (b, wb) in w.iter().enumerate() {
            let wq = _mm256_loadu_si256(wb.q.as_ptr() as *const __m256i);
            let aw = _mm256_sign_epi8(wq, wq);
            let dw = _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(wb.d as i32)));
            for l in 0..R {
                let xb = &*px[l].add(b);
                let xq = _mm256_loadu_si256(xb.q.as_ptr() as *const __m256i);
                let p16 = _mm256_maddubs_epi16(aw, _mm256_sign_epi8(xq, wq));
                let p = _mm256_cvtepi32_ps(_mm256_madd_epi16(p16, ones));
                acc[l] = _mm256_fmadd_ps(_mm256_set1_ps(dw * xb.d), p, acc[l]);
            }
        }
        for l in 0..R {
            out[i + l] = hsum(acc[l]);
        }
    }
}

/// The f32 and bf16 kernels with 512-bit registers (AVX-512F/BW/VL): twice the lanes per FMA
/// and per load of an input vector.
#[cfg(target_arch = "x86_64")]
mod x86v4 {
    use std::arch::x86_64::*;

    use super::{BfPairs, BlockQ8, Q8Rows};

    /// A weight element type widened to sixteen f32 lanes.
    trait Lanes16: super::Weight {
        unsafe fn load(p: *const Self) -> __m512;
    }

    impl Lanes16 for f32 {
        #[inline]
        #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
        unsafe fn load(p: *const f32) -> __m512 {
            _mm512_loadu_ps(p)
        }
    }

    impl Lanes16 for u16 {
        #[inline]
        #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
        unsafe fn load(p: *const u16) -> __m512 {
            _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256(p as *const __m256i)), 16))
        }
    }

    streaming_kernels!(
        "avx512f,avx512bw,avx512vl,avx2,fma,f16c",
        16,
        _mm512_setzero_ps,
        _mm512_loadu_ps,
        _mm512_fmadd_ps,
        _mm512_add_ps,
        _mm512_reduce_add_ps,
        Lanes16
    );

    /// bf16 input rows against two bf16 weight rows: `vdpbf16ps` multiplies 32 bf16 pairs per
    /// instruction into 16 f32 sums; the tail of a row is read with a mask (zeros past the end).
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16,avx2,fma,f16c")]
    pub unsafe fn dots2_bf16_native(x: &[u16], m: usize, w0: &[u16], w1: &[u16], o0: &mut [f32], o1: &mut [f32]) {
        assert!(w0.len() == w1.len() && x.len() >= m * w0.len() && o0.len() >= m && o1.len() >= m);
        by_fours!(m, dots2_native_r, x, w0, w1, o0, o1);
    }

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16,avx2,fma,f16c")]
    unsafe fn load32(p: *const u16, mask: __mmask32) -> __m512bh {
        std::mem::transmute::<__m512i, __m512bh>(_mm512_maskz_loadu_epi16(mask, p as *const i16))
    }

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16,avx2,fma,f16c")]
    unsafe fn dots2_native_r<const R: usize>(
        i: usize,
        x: &[u16],
        w0: &[u16],
        w1: &[u16],
        o0: &mut [f32],
        o1: &mut [f32],
    ) {
        let k = w0.len();
        let (p0, p1) = (w0.as_ptr(), w1.as_ptr());
        let px: [*const u16; R] = std::array::from_fn(|l| x.as_ptr().add((i + l) * k));
        let mut a0 = [_mm512_setzero_ps(); R];
        let mut a1 = [_mm512_setzero_ps(); R];
        let mut t = 0;
        while t < k {
            let mask: __mmask32 = if k - t >= 32 { !0 } else { (1u32 << (k - t)) - 1 };
            let v0 = load32(p0.add(t), mask);
            let v1 = load32(p1.add(t), mask);
            for l in 0..R {
                let xv = load32(px[l].add(t), mask);
                a0[l] = _mm512_dpbf16_ps(a0[l], v0, xv);
                a1[l] = _mm512_dpbf16_ps(a1[l], v1, xv);
            }
            t += 32;
        }
        for l in 0..R {
            o0[i + l] = _mm512_reduce_add_ps(a0[l]);
            o1[i + l] = _mm512_reduce_add_ps(a1[l]);
        }
    }

    /// The blocking both packed GEMMs share. For every `NC` weight rows and every run of up to
    /// `max_rb` blocks of `lanes` input rows, `tile(b, rb, j, cj, out)` computes blocks
    /// `b..b + rb` against weight rows `j..j + cj` (at most `max_cj`) into rows `0..rb * lanes`
    /// of `out` (`NC` apart), an L1-sized buffer copied out row by row: an accumulator is a
    /// column of the output, and written straight to it each of its elements would touch a
    /// different cache line.
    ///
    /// # Safety
    /// As the GEMMs': `dst` takes `m` rows of `rows` columns, `ldc` apart; `rb * lanes <= 64`.
    #[inline]
    unsafe fn blocked(
        m: usize,
        rows: usize,
        (lanes, max_rb, max_cj): (usize, usize, usize),
        dst: *mut f32,
        ldc: usize,
        mut tile: impl FnMut(usize, usize, usize, usize, *mut f32),
    ) {
        const NC: usize = super::NATIVE_GEMM_COLS;
        assert!(max_rb * lanes <= 64);
        let blocks = m.div_ceil(lanes);
        // Not zeroed: every element copied out below was written by a tile first.
        let mut buf = std::mem::MaybeUninit::<[f32; 64 * NC]>::uninit();
        let buf = buf.as_mut_ptr() as *mut f32;
        for j0 in (0..rows).step_by(NC) {
            let nc = (rows - j0).min(NC);
            let mut b = 0;
            while b < blocks {
                let rb = (blocks - b).min(max_rb);
                let mut j = 0;
                while j < nc {
                    let cj = (nc - j).min(max_cj);
                    tile(b, rb, j0 + j, cj, buf.add(j));
                    j += cj;
                }
                let i0 = b * lanes;
                for r in 0..(rb * lanes).min(m - i0) {
                    std::ptr::copy_nonoverlapping(buf.add(r * NC), dst.add((i0 + r) * ldc + j0), nc);
                }
                b += rb;
            }
        }
    }

    /// See [`super::GemmBf16Native`]. Register tile: up to 4 blocks of 16 input rows by up to 6
    /// weight rows, 24 accumulators; per pair of columns 4 loads of inputs, 6 broadcasts of
    /// weight pairs and 24 `vdpbf16ps`; tiles through [`blocked`]'s buffer.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16,avx2,fma,f16c")]
    pub unsafe fn gemm_bf16_native(x: &BfPairs, w: &[u16], rows: usize, dst: *mut f32, ldc: usize) {
        const NC: usize = super::NATIVE_GEMM_COLS;
        let k = 2 * x.pairs;
        assert!(w.len() >= rows * k && x.words.len() >= x.m.div_ceil(16) * 16 * x.pairs);
        blocked(x.m, rows, (16, 4, 6), dst, ldc, |b, rb, j, cj, out| {
            let wj = w.as_ptr().add(j * k);
            macro_rules! tile {
                ($($r:literal),*) => {
                    match (rb, cj) {
                        $( (r, 6) if r == $r => bf16_tile::<$r, 6>(x, b, wj, k, out, NC),
                           (r, 5) if r == $r => bf16_tile::<$r, 5>(x, b, wj, k, out, NC),
                           (r, 4) if r == $r => bf16_tile::<$r, 4>(x, b, wj, k, out, NC),
                           (r, 3) if r == $r => bf16_tile::<$r, 3>(x, b, wj, k, out, NC),
                           (r, 2) if r == $r => bf16_tile::<$r, 2>(x, b, wj, k, out, NC),
                           (r, 1) if r == $r => bf16_tile::<$r, 1>(x, b, wj, k, out, NC), )*
                        _ => unreachable!("tile {rb} x {cj}"),
                    }
                };
            }
            tile!(1, 2, 3, 4);
        });
    }

    /// Blocks `b0..b0 + R` of the packed inputs against `C` weight rows from `w` (`k` apart),
    /// into rows `0..16 R` of `dst` (`ldc` apart).
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16,avx2,fma,f16c")]
    unsafe fn bf16_tile<const R: usize, const C: usize>(
        x: &BfPairs,
        b0: usize,
        w: *const u16,
        k: usize,
        dst: *mut f32,
        ldc: usize,
    ) {
        let pairs = x.pairs;
        let xs: [*const u32; R] = std::array::from_fn(|r| x.words.as_ptr().add((b0 + r) * pairs * 16));
        let mut acc = [[_mm512_setzero_ps(); R]; C];
        for p in 0..pairs {
            let xv: [__m512bh; R] = std::array::from_fn(|r| {
                std::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512(xs[r].add(p * 16) as *const _))
            });
            for (c, a) in acc.iter_mut().enumerate() {
                let pair = (w.add(c * k + 2 * p) as *const i32).read_unaligned();
                let wv = std::mem::transmute::<__m512i, __m512bh>(_mm512_set1_epi32(pair));
                for r in 0..R {
                    a[r] = _mm512_dpbf16_ps(a[r], xv[r], wv);
                }
            }
        }
        // Each accumulator holds one weight row's sums for 16 input rows: a column of the
        // tile (rows past m are padding, written all the same).
        let mut col = [0f32; 16];
        for (c, a) in acc.iter().enumerate() {
            for (r, v) in a.iter().enumerate() {
                _mm512_storeu_ps(col.as_mut_ptr(), *v);
                for (l, &s) in col.iter().enumerate() {
                    *dst.add((r * 16 + l) * ldc + c) = s;
                }
            }
        }
    }

    /// How many q8 groups (34 bytes each) ahead of the one in use the GEMM prefetches.
    const PREFETCH_GROUPS: usize = 4;

    /// See [`super::GemmQ8`]. Register tile, 16-row blocks: up to 4 blocks by up to 3 weight
    /// rows, 12 integer and 12 f32 accumulators; per four columns 4 loads of inputs, 3
    /// broadcasts of weights (biased to u8 by flipping their sign bits) and 12 `vpdpbusd`; per
    /// group of 32 columns the integer sums, less 128 · Σq, go into f32 with both scales.
    /// 8-row blocks (products of at most 8 rows) run the same on 256-bit registers, one block
    /// by up to 8 weight rows. Tiles through [`blocked`]'s buffer.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    pub unsafe fn gemm_q8_vnni(x: &Q8Rows, w: &[BlockQ8], rows: usize, dst: *mut f32, ldc: usize) {
        const NC: usize = super::NATIVE_GEMM_COLS;
        let (g, lanes) = (x.groups, x.lanes);
        assert!(lanes == 8 || lanes == 16);
        assert!(w.len() >= rows * g && x.words.len() >= x.m.div_ceil(lanes) * lanes * (g * 8 + 2 * g));
        let shape = if lanes == 16 { (16, 4, 3) } else { (8, 1, 8) };
        blocked(x.m, rows, shape, dst, ldc, |b, rb, j, cj, out| {
            let wj = w.as_ptr().add(j * g);
            macro_rules! tile {
                ($($r:literal),*) => {
                    match (rb, cj) {
                        $( (r, 3) if r == $r => q8_tile::<$r, 3>(x, b, wj, out, NC),
                           (r, 2) if r == $r => q8_tile::<$r, 2>(x, b, wj, out, NC),
                           (r, 1) if r == $r => q8_tile::<$r, 1>(x, b, wj, out, NC), )*
                        _ => unreachable!("tile {rb} x {cj}"),
                    }
                };
            }
            if lanes == 16 {
                tile!(1, 2, 3, 4);
            } else {
                match cj {
                    8 => q8_tile8::<8>(x, b, wj, out, NC),
                    7 => q8_tile8::<7>(x, b, wj, out, NC),
                    6 => q8_tile8::<6>(x, b, wj, out, NC),
                    5 => q8_tile8::<5>(x, b, wj, out, NC),
                    4 => q8_tile8::<4>(x, b, wj, out, NC),
                    3 => q8_tile8::<3>(x, b, wj, out, NC),
                    2 => q8_tile8::<2>(x, b, wj, out, NC),
                    _ => q8_tile8::<1>(x, b, wj, out, NC),
                }
            }
        });
    }

    /// Block `b0` of 8-row packed inputs against `C` q8 weight rows, as [`q8_tile`] on 256-bit
    /// registers, into rows `0..8` of `dst` (`ldc` apart).
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    unsafe fn q8_tile8<const C: usize>(x: &Q8Rows, b0: usize, w: *const BlockQ8, dst: *mut f32, ldc: usize) {
        let g = x.groups;
        let (quads, stride) = (g * 8, 8 * (g * 8 + 2 * g));
        let base = x.words.as_ptr().add(b0 * stride);
        let flip = _mm256_set1_epi32(0x8080_8080u32 as i32);
        let mut acc = [_mm256_setzero_ps(); C];
        for gi in 0..g {
            let neg = _mm256_sub_epi32(
                _mm256_setzero_si256(),
                _mm256_loadu_si256(base.add((quads + g + gi) * 8) as *const __m256i),
            );
            let mut sums = [neg; C];
            for c in 0..C {
                // The weights are read four bytes at a time from C rows at once, a pattern the
                // hardware prefetchers follow too late: ask for a few groups ahead.
                _mm_prefetch::<_MM_HINT_T0>(w.wrapping_add(c * g + gi + PREFETCH_GROUPS) as *const i8);
            }
            for t in 0..8 {
                let xv = _mm256_loadu_si256(base.add((gi * 8 + t) * 8) as *const __m256i);
                for (c, s) in sums.iter_mut().enumerate() {
                    let quad = ((*w.add(c * g + gi)).q.as_ptr().add(4 * t) as *const i32).read_unaligned();
                    *s = _mm256_dpbusd_epi32(*s, _mm256_xor_si256(_mm256_set1_epi32(quad), flip), xv);
                }
            }
            let sx = _mm256_loadu_ps(base.add((quads + gi) * 8) as *const f32);
            for (c, (a, s)) in acc.iter_mut().zip(&sums).enumerate() {
                let dw =
                    _mm256_set1_ps(_mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(i32::from((*w.add(c * g + gi)).d)))));
                *a = _mm256_fmadd_ps(_mm256_cvtepi32_ps(*s), _mm256_mul_ps(sx, dw), *a);
            }
        }
        let mut col = [0f32; 8];
        for (c, a) in acc.iter().enumerate() {
            _mm256_storeu_ps(col.as_mut_ptr(), *a);
            for (l, &s) in col.iter().enumerate() {
                *dst.add(l * ldc + c) = s;
            }
        }
    }

    /// Blocks `b0..b0 + R` of the packed inputs against `C` q8 weight rows from `w` (`x.groups`
    /// groups apart), into rows `0..16 R` of `dst` (`ldc` apart).
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    unsafe fn q8_tile<const R: usize, const C: usize>(
        x: &Q8Rows,
        b0: usize,
        w: *const BlockQ8,
        dst: *mut f32,
        ldc: usize,
    ) {
        let g = x.groups;
        let (quads, stride) = (g * 8, 16 * (g * 8 + 2 * g));
        let base: [*const u32; R] = std::array::from_fn(|r| x.words.as_ptr().add((b0 + r) * stride));
        let flip = _mm512_set1_epi32(0x8080_8080u32 as i32);
        let mut acc = [[_mm512_setzero_ps(); R]; C];
        for gi in 0..g {
            // The sums start at -128 · Σq, taking the weights' bias back out up front.
            let neg: [__m512i; R] = std::array::from_fn(|r| {
                _mm512_sub_epi32(
                    _mm512_setzero_si512(),
                    _mm512_loadu_si512(base[r].add((quads + g + gi) * 16) as *const _),
                )
            });
            let mut sums = [neg; C];
            for c in 0..C {
                _mm_prefetch::<_MM_HINT_T0>(w.wrapping_add(c * g + gi + PREFETCH_GROUPS) as *const i8);
            }
            for t in 0..8 {
                let xv: [__m512i; R] =
                    std::array::from_fn(|r| _mm512_loadu_si512(base[r].add((gi * 8 + t) * 16) as *const _));
                for (c, s) in sums.iter_mut().enumerate() {
                    let quad = ((*w.add(c * g + gi)).q.as_ptr().add(4 * t) as *const i32).read_unaligned();
                    let wv = _mm512_xor_si512(_mm512_set1_epi32(quad), flip);
                    for r in 0..R {
                        s[r] = _mm512_dpbusd_epi32(s[r], wv, xv[r]);
                    }
                }
            }
            let sx: [__m512; R] =
                std::array::from_fn(|r| _mm512_loadu_ps(base[r].add((quads + gi) * 16) as *const f32));
            for (c, (a, s)) in acc.iter_mut().zip(&sums).enumerate() {
                let dw =
                    _mm512_set1_ps(_mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(i32::from((*w.add(c * g + gi)).d)))));
                for r in 0..R {
                    a[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s[r]), _mm512_mul_ps(sx[r], dw), a[r]);
                }
            }
        }
        let mut col = [0f32; 16];
        for (c, a) in acc.iter().enumerate() {
            for (r, v) in a.iter().enumerate() {
                _mm512_storeu_ps(col.as_mut_ptr(), *v);
                for (l, &s) in col.iter().enumerate() {
                    *dst.add((r * 16 + l) * ldc + c) = s;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::ops::{test_data as data, test_naive_matmul_t as naive};

    fn rel_err(got: &[f32], want: &[f32]) -> f32 {
        let num: f64 = got.iter().zip(want).map(|(a, b)| ((a - b) as f64).powi(2)).sum();
        let den: f64 = want.iter().map(|b| (*b as f64).powi(2)).sum();
        (num / den.max(1e-30)).sqrt() as f32
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
        assert!("q4".parse::<WeightFormat>().unwrap_err().contains("q4"));
    }
}
