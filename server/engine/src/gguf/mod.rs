//! GGUF files (llama.cpp's single-file checkpoints): header, metadata and tensor table read from
//! a memory map with every count and offset checked against the file's length, the model's
//! hyper-parameters from the `<arch>.*` keys, the tokenizer from `tokenizer.ggml.*`, and the
//! weights dequantized block by block into the engine's storage format.
//!
//! A truncated or lying file is an [`EngineError`] that names the file and the field; no count
//! read from the file is trusted for an allocation before the bytes it claims are known to be
//! there.

pub mod dequant;
pub mod tokenizer;

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use crate::error::{io_err, EngineError, Result};
use crate::matrix::{Matrix, MatrixBuilder, Rounding, WeightFormat};
use crate::weights::{DType, TensorSource};
use dequant::GgmlType;

const MAGIC: &[u8; 4] = b"GGUF";
const DEFAULT_ALIGNMENT: u64 = 32;

/// Whether a path names a GGUF file, as opposed to a checkpoint directory: by its extension, or
/// for a file without one (an Ollama blob is `sha256-…`) by its first four bytes.
pub fn is_gguf(path: &Path) -> bool {
    if path.extension().and_then(|e| e.to_str()).is_some_and(|e| e.eq_ignore_ascii_case("gguf")) {
        return true;
    }
    let mut magic = [0u8; 4];
    path.is_file()
        && File::open(path).and_then(|mut f| std::io::Read::read_exact(&mut f, &mut magic)).is_ok()
        && &magic == MAGIC
}

/// One metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    Str(String),
    Array(Vec<Value>),
}

impl Value {
    /// GGUF's name of the value's type, for error messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::U8(_) => "uint8",
            Value::I8(_) => "int8",
            Value::U16(_) => "uint16",
            Value::I16(_) => "int16",
            Value::U32(_) => "uint32",
            Value::I32(_) => "int32",
            Value::U64(_) => "uint64",
            Value::I64(_) => "int64",
            Value::F32(_) => "float32",
            Value::F64(_) => "float64",
            Value::Bool(_) => "bool",
            Value::Str(_) => "string",
            Value::Array(_) => "array",
        }
    }

    /// The value as an unsigned integer, if it is a non-negative integer of any width.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v.into()),
            Value::U16(v) => Some(v.into()),
            Value::U32(v) => Some(v.into()),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// The value as a float, if it is a number.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v.into()),
            Value::F64(v) => Some(v),
            Value::I8(v) => Some(v.into()),
            Value::I16(v) => Some(v.into()),
            Value::I32(v) => Some(v.into()),
            Value::I64(v) => Some(v as f64),
            _ => self.as_u64().map(|v| v as f64),
        }
    }
}

/// One entry of the tensor table.
#[derive(Debug, Clone)]
pub struct TensorInfo {
    pub ty: GgmlType,
    /// GGUF's dimensions, fastest first: `[cols, rows]` for a matrix.
    pub dims: Vec<u64>,
    /// Absolute byte range in the file.
    pub start: usize,
    pub end: usize,
}

impl TensorInfo {
    /// `(rows, cols)` of a matrix or vector (`rows` = 1) in the PyTorch `[out, in]` sense.
    fn rows_cols(&self) -> (usize, usize) {
        let cols = self.dims.first().copied().unwrap_or(1) as usize;
        let rows = self.dims.iter().skip(1).product::<u64>() as usize;
        (rows, cols)
    }
}

/// A parsed GGUF file: its metadata and tensor table, over a read-only memory map.
pub struct GgufFile {
    pub path: PathBuf,
    pub version: u32,
    pub metadata: HashMap<String, Value>,
    pub tensors: HashMap<String, TensorInfo>,
    map: Mmap,
    /// Set for `llama` files: q and k rows come back in transformers' order.
    unpermute: Option<(usize, usize)>,
    /// Matrices keep the blocks of their tensors as stored (4 bits stay 4 bits) where the
    /// kernels compute on that type; see [`GgufFile::keep_as_stored`].
    as_stored: bool,
}

impl GgufFile {
    /// Opens and memory-maps `path` and checks its header, metadata and tensor table.
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(io_err(path))?;
        // SAFETY: the map is read-only; a file changed underneath a running server is outside
        // what the engine can defend against, as with any mmap-based loader.
        let map = unsafe { Mmap::map(&file) }.map_err(io_err(path))?;
        let (version, metadata, tensors) = parse(&map, path)?;
        Ok(GgufFile { path: path.to_path_buf(), version, metadata, tensors, map, unpermute: None, as_stored: false })
    }

    fn err(&self, message: String) -> EngineError {
        EngineError::Weights { path: self.path.clone(), message }
    }

    /// A metadata value by key.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }

    /// The bytes of a tensor (bounds were checked when the file was opened).
    pub fn tensor_bytes(&self, info: &TensorInfo) -> &[u8] {
        &self.map[info.start..info.end]
    }

    fn tensor(&self, name: &str) -> Result<&TensorInfo> {
        self.tensors.get(name).ok_or_else(|| self.err(format!("missing tensor {name}")))
    }

    /// Lets a tensor's file pages go once it has been converted.
    fn release(&self, info: &TensorInfo) {
        #[cfg(unix)]
        // SAFETY: the map is read-only and file-backed, so dropped pages are read again from
        // the file if anything touches them later; nothing is lost.
        unsafe {
            let _ =
                self.map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, info.start, info.end - info.start);
        }
    }

    /// Whether any weight matrix is stored in a block-quantized type.
    /// Matrices are built from the tensors' blocks as stored, each in its own type, instead of
    /// being converted into one format; returns the format most of them are in.
    pub fn keep_as_stored(&mut self) -> WeightFormat {
        self.as_stored = true;
        let mut counts: HashMap<u32, (usize, GgmlType)> = HashMap::new();
        for t in self.tensors.values().filter(|t| t.dims.len() >= 2) {
            counts.entry(t.ty.id()).or_insert((0, t.ty)).0 += 1;
        }
        counts.into_values().max_by_key(|&(n, ty)| (n, ty.id())).map_or(WeightFormat::F32, |(_, ty)| ty.stored_format())
    }

    pub fn is_quantized(&self) -> bool {
        self.tensors.values().any(|t| t.ty.is_quantized())
    }

    /// The GGUF tensor `name`, a vector of `len` elements, as f32.
    pub fn vector(&self, name: &str, len: usize) -> Result<Vec<f32>> {
        self.rows_f32(self.tensor(name)?, name, 1, len)
    }

    /// Reads tensor `name` checked to be `[rows, cols]` as f32.
    fn rows_f32(&self, info: &TensorInfo, name: &str, rows: usize, cols: usize) -> Result<Vec<f32>> {
        if info.rows_cols() != (rows, cols) {
            return Err(self.err(format!(
                "tensor {name} has dimensions {:?}, expected [{cols}, {rows}] (GGUF order, fastest first)",
                info.dims
            )));
        }
        let out = dequant::to_f32(info.ty, self.tensor_bytes(info), rows * cols)
            .map_err(|m| self.err(format!("tensor {name}: {m}")));
        self.release(info);
        out
    }
}

/// The one place a GGUF tensor becomes a [`Matrix`]: `parts` (each a tensor's type, rows and
/// bytes, all `cols` wide) stacked by rows in `format`. Today every block is dequantized to f32
/// rows here and fed to [`MatrixBuilder`]; formats the kernels compute on directly take over here.
pub fn matrix_from_ggml(
    parts: &[(GgmlType, usize, &[u8])],
    cols: usize,
    format: WeightFormat,
) -> Result<(Matrix, Rounding), String> {
    let total = parts.iter().map(|p| p.1).sum();
    let mut b = MatrixBuilder::new(total, cols, format);
    for &(ty, rows, data) in parts {
        // A few hundred rows at a time, so no f32 copy of a whole tensor is held.
        let per_batch = ((1usize << 20) / (cols * 4).max(1)).max(1);
        let row_bytes = ty.row_bytes(cols)?;
        if data.len() != rows * row_bytes {
            return Err(format!("{} bytes for {rows} rows of {cols} {}", data.len(), ty.name()));
        }
        for chunk in data.chunks(per_batch * row_bytes) {
            let n = chunk.len() / row_bytes;
            b.push(&dequant::to_f32(ty, chunk, n * cols)?);
        }
    }
    Ok(b.finish_measured())
}

impl TensorSource for GgufFile {
    fn f32(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let g = gguf_name(name).ok_or_else(|| self.err(format!("no GGUF tensor corresponds to {name}")))?;
        let info = self.tensor(&g)?;
        let (rows, cols) = match *shape {
            [n] => (1, n),
            [r, c] => (r, c),
            _ => return Err(self.err(format!("tensor {g}: shape {shape:?} is not a vector or matrix"))),
        };
        self.rows_f32(info, &g, rows, cols)
    }

    fn stacked(&self, parts: &[(String, usize)], cols: usize, format: WeightFormat) -> Result<(Matrix, Rounding)> {
        let mut owned: Vec<(GgmlType, usize, std::borrow::Cow<'_, [u8]>)> = Vec::with_capacity(parts.len());
        let mut infos = Vec::with_capacity(parts.len());
        for (name, rows) in parts {
            let g = gguf_name(name).ok_or_else(|| self.err(format!("no GGUF tensor corresponds to {name}")))?;
            let info = self.tensor(&g)?;
            if info.rows_cols() != (*rows, cols) {
                return Err(self.err(format!(
                    "tensor {g} has dimensions {:?}, expected [{cols}, {rows}] (GGUF order, fastest first)",
                    info.dims
                )));
            }
            let bytes = self.tensor_bytes(info);
            let heads = match (self.unpermute, g.rsplit('.').nth(1)) {
                (Some((q, _)), Some("attn_q")) => Some(q),
                (Some((_, k)), Some("attn_k")) => Some(k),
                _ => None,
            };
            let data = match heads {
                Some(h) => std::borrow::Cow::Owned(unpermute_rows(bytes, *rows, h).ok_or_else(|| {
                    self.err(format!("tensor {g}: {rows} rows do not split into {h} heads of even size"))
                })?),
                None => std::borrow::Cow::Borrowed(bytes),
            };
            owned.push((info.ty, *rows, data));
            infos.push((g, info));
        }
        let views: Vec<(GgmlType, usize, &[u8])> = owned.iter().map(|(t, r, d)| (*t, *r, &d[..])).collect();
        let names: Vec<&str> = infos.iter().map(|(g, _)| g.as_str()).collect();
        let one_type = views.first().map(|v| v.0).filter(|&t| views.iter().all(|v| v.0 == t));
        let m = match one_type {
            // As stored: the parts' rows are whole blocks, so stacking them is concatenating.
            Some(ty) if self.as_stored && ty.computed_as_stored() => {
                let rows = views.iter().map(|v| v.1).sum();
                let data: std::borrow::Cow<'_, [u8]> = match views.as_slice() {
                    [one] => std::borrow::Cow::Borrowed(one.2),
                    many => std::borrow::Cow::Owned(many.iter().flat_map(|v| v.2.iter().copied()).collect()),
                };
                let m = Matrix::from_ggml(ty.id(), rows, cols, &data)
                    .map_err(|e| self.err(format!("tensor {}: {e}", names.join(" + "))))?;
                (m, Rounding::default())
            }
            // Converted: to the format asked for; as stored, a type the kernels lack to the
            // nearest one they compute on, and parts of different types (llama.cpp's Q4_K_M
            // keeps some q/k/v and gate/up in Q6_K or Q8_0 beside Q4_K) to q8, which holds
            // every 4- to 8-bit block's values closely, or to f32 where a part is floats.
            _ => {
                let target = match one_type {
                    _ if !self.as_stored => format,
                    Some(ty) => ty.stored_format(),
                    None if views.iter().all(|v| v.0.is_quantized()) => WeightFormat::Q8,
                    None => WeightFormat::F32,
                };
                matrix_from_ggml(&views, cols, target)
                    .map_err(|m| self.err(format!("tensor {}: {m}", names.join(" + "))))?
            }
        };
        for (_, info) in infos {
            self.release(info);
        }
        Ok(m)
    }

    fn main_dtype(&self) -> Option<DType> {
        let mut counts = [0usize; 3];
        for t in self.tensors.values().filter(|t| t.dims.len() >= 2) {
            match t.ty {
                GgmlType::F32 => counts[0] += 1,
                GgmlType::F16 => counts[1] += 1,
                GgmlType::Bf16 => counts[2] += 1,
                _ => return None,
            }
        }
        let best = (0..3).max_by_key(|&i| counts[i])?;
        (counts[best] > 0).then(|| [DType::F32, DType::F16, DType::BF16][best])
    }
}

/// Undoes llama.cpp's row order for q and k of the `llama` architecture: its converter
/// interleaves the two rotary halves of every head (`reshape(heads, 2, d/2).swapaxes(1, 2)`),
/// because its rope pairs adjacent elements; the forward here rotates halves as transformers
/// does. `data` holds `rows` rows of equal byte length. `None` when the rows do not split.
fn unpermute_rows(data: &[u8], rows: usize, heads: usize) -> Option<Vec<u8>> {
    if heads == 0
        || !rows.is_multiple_of(heads)
        || !(rows / heads).is_multiple_of(2)
        || !data.len().is_multiple_of(rows.max(1))
    {
        return None;
    }
    let row = data.len() / rows;
    let d = rows / heads;
    let mut out = Vec::with_capacity(data.len());
    for h in 0..heads {
        for o in 0..d {
            // transformers row o = half j, index i; llama.cpp stores it at 2i + j.
            let (j, i) = (o / (d / 2), o % (d / 2));
            let s = h * d + 2 * i + j;
            out.extend_from_slice(&data[s * row..(s + 1) * row]);
        }
    }
    Some(out)
}

/// The GGUF name of a tensor named as transformers names it.
fn gguf_name(hf: &str) -> Option<String> {
    match hf {
        "model.embed_tokens.weight" => return Some("token_embd.weight".into()),
        "model.norm.weight" => return Some("output_norm.weight".into()),
        "lm_head.weight" => return Some("output.weight".into()),
        _ => {}
    }
    let rest = hf.strip_prefix("model.layers.")?;
    let (layer, rest) = rest.split_once('.')?;
    layer.parse::<usize>().ok()?;
    let (module, kind) = rest.rsplit_once('.')?;
    let short = match module {
        "input_layernorm" => "attn_norm",
        "post_attention_layernorm" => "ffn_norm",
        "self_attn.q_proj" => "attn_q",
        "self_attn.k_proj" => "attn_k",
        "self_attn.v_proj" => "attn_v",
        "self_attn.o_proj" => "attn_output",
        "mlp.gate_proj" => "ffn_gate",
        "mlp.up_proj" => "ffn_up",
        "mlp.down_proj" => "ffn_down",
        _ => return None,
    };
    Some(format!("blk.{layer}.{short}.{kind}"))
}

/// Opens a GGUF file for loading a model: the file, its config, and q/k row order set up.
pub fn open_model(path: &Path) -> Result<(GgufFile, crate::config::ModelConfig)> {
    let mut file = GgufFile::open(path)?;
    let config = crate::config::ModelConfig::from_gguf(&file)?;
    if config.arch == crate::config::Arch::Llama {
        file.unpermute = Some((config.num_heads, config.num_kv_heads));
    }
    Ok((file, config))
}

/// The weight format a GGUF file converts into when asked for one format (`--weights`, or
/// for the parts of a stacked matrix stored in different types): q8 for a block-quantized file,
/// else the file's own float precision. Unless asked, matrices keep their blocks as stored
/// ([`GgufFile::keep_as_stored`]).
pub fn default_format(file: &GgufFile) -> WeightFormat {
    if file.is_quantized() {
        WeightFormat::Q8
    } else {
        crate::model::default_format(file.main_dtype())
    }
}

/// A bounds-checked cursor over the header bytes.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    path: &'a Path,
}

impl<'a> Reader<'a> {
    fn err(&self, message: String) -> EngineError {
        EngineError::Weights { path: self.path.to_path_buf(), message }
    }

    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn bytes(&mut self, n: u64, what: &dyn Fn() -> String) -> Result<&'a [u8]> {
        if n > self.remaining() as u64 {
            return Err(self.err(format!(
                "file is truncated or corrupt: {} needs {n} bytes at offset {} but only {} remain",
                what(),
                self.pos,
                self.remaining()
            )));
        }
        let s = &self.buf[self.pos..self.pos + n as usize];
        self.pos += n as usize;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, what: &dyn Fn() -> String) -> Result<[u8; N]> {
        let b = self.bytes(N as u64, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(b);
        Ok(a)
    }

    fn u32(&mut self, what: &dyn Fn() -> String) -> Result<u32> {
        self.array::<4>(what).map(u32::from_le_bytes)
    }

    fn u64(&mut self, what: &dyn Fn() -> String) -> Result<u64> {
        self.array::<8>(what).map(u64::from_le_bytes)
    }

    fn string(&mut self, what: &dyn Fn() -> String) -> Result<String> {
        let n = self.u64(&|| format!("the length of {}", what()))?;
        let b = self.bytes(n, &|| format!("{} (a string of {n} bytes)", what()))?;
        String::from_utf8(b.to_vec()).map_err(|_| self.err(format!("{} is not valid UTF-8", what())))
    }

    fn value(&mut self, ty: u32, what: &dyn Fn() -> String, depth: usize) -> Result<Value> {
        Ok(match ty {
            0 => Value::U8(self.array::<1>(what)?[0]),
            1 => Value::I8(self.array::<1>(what)?[0] as i8),
            2 => Value::U16(u16::from_le_bytes(self.array(what)?)),
            3 => Value::I16(i16::from_le_bytes(self.array(what)?)),
            4 => Value::U32(u32::from_le_bytes(self.array(what)?)),
            5 => Value::I32(i32::from_le_bytes(self.array(what)?)),
            6 => Value::F32(f32::from_le_bytes(self.array(what)?)),
            7 => match self.array::<1>(what)?[0] {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                b => return Err(self.err(format!("{} is a bool of value {b} (not 0 or 1)", what()))),
            },
            8 => Value::Str(self.string(what)?),
            9 => {
                if depth > 0 {
                    return Err(self.err(format!("{} nests arrays, which GGUF readers do not support", what())));
                }
                let elem = self.u32(&|| format!("the element type of {}", what()))?;
                let n = self.u64(&|| format!("the element count of {}", what()))?;
                let min = match elem {
                    0 | 1 | 7 => 1,
                    2 | 3 => 2,
                    4..=6 => 4,
                    8 | 10..=12 => 8,
                    9 => 12,
                    t => return Err(self.err(format!("{} is an array of unknown value type {t}", what()))),
                };
                // Every element takes at least `min` bytes, so a count the file cannot hold is
                // refused before anything is allocated for it.
                if n.checked_mul(min).is_none_or(|b| b > self.remaining() as u64) {
                    return Err(self.err(format!(
                        "file is truncated or corrupt: {} claims {n} elements but only {} bytes remain",
                        what(),
                        self.remaining()
                    )));
                }
                let mut v = Vec::with_capacity(n as usize);
                for i in 0..n {
                    v.push(self.value(elem, &|| format!("{}[{i}]", what()), depth + 1)?);
                }
                Value::Array(v)
            }
            10 => Value::U64(u64::from_le_bytes(self.array(what)?)),
            11 => Value::I64(i64::from_le_bytes(self.array(what)?)),
            12 => Value::F64(f64::from_le_bytes(self.array(what)?)),
            t => return Err(self.err(format!("{} has unknown value type {t}", what()))),
        })
    }
}

pub(crate) type Parsed = (u32, HashMap<String, Value>, HashMap<String, TensorInfo>);

pub(crate) fn parse(buf: &[u8], path: &Path) -> Result<Parsed> {
    let mut r = Reader { buf, pos: 0, path };
    let magic = r.array::<4>(&|| "the GGUF magic".into())?;
    if &magic != MAGIC {
        return Err(r.err(format!("not a GGUF file: it starts with {magic:02x?}, not \"GGUF\"")));
    }
    let version = r.u32(&|| "the GGUF version".into())?;
    if !(2..=3).contains(&version) {
        return Err(r.err(format!("GGUF version {version} is not supported (supported: 2, 3)")));
    }
    let n_tensors = r.u64(&|| "the tensor count".into())?;
    let n_kv = r.u64(&|| "the metadata count".into())?;
    // A key-value pair takes at least 12 bytes and a tensor entry at least 24.
    if n_kv.checked_mul(12).is_none_or(|b| b > r.remaining() as u64) {
        return Err(r.err(format!(
            "file is truncated or corrupt: the header claims {n_kv} metadata entries but only {} bytes remain",
            r.remaining()
        )));
    }
    let mut metadata = HashMap::new();
    for i in 0..n_kv {
        let key = r.string(&|| format!("metadata key #{i}"))?;
        let ty = r.u32(&|| format!("the value type of metadata key {key}"))?;
        let v = r.value(ty, &|| format!("metadata key {key}"), 0)?;
        if metadata.insert(key.clone(), v).is_some() {
            return Err(r.err(format!("metadata key {key} appears twice")));
        }
    }
    let alignment = match metadata.get("general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some(Value::U32(a)) if *a > 0 && a.is_power_of_two() => u64::from(*a),
        Some(v) => {
            return Err(r.err(format!("metadata key general.alignment must be a uint32 power of two, got {v:?}")))
        }
    };
    if n_tensors.checked_mul(24).is_none_or(|b| b > r.remaining() as u64) {
        return Err(r.err(format!(
            "file is truncated or corrupt: the header claims {n_tensors} tensors but only {} bytes remain",
            r.remaining()
        )));
    }
    let mut table = Vec::with_capacity(n_tensors as usize);
    for i in 0..n_tensors {
        let name = r.string(&|| format!("the name of tensor #{i}"))?;
        let n_dims = r.u32(&|| format!("the dimension count of tensor {name}"))?;
        if !(1..=4).contains(&n_dims) {
            return Err(r.err(format!("tensor {name} has {n_dims} dimensions (GGUF allows 1 to 4)")));
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        for d in 0..n_dims {
            dims.push(r.u64(&|| format!("dimension {d} of tensor {name}"))?);
        }
        let ty_id = r.u32(&|| format!("the type of tensor {name}"))?;
        let offset = r.u64(&|| format!("the data offset of tensor {name}"))?;
        table.push((name, dims, ty_id, offset));
    }
    let data_start = (r.pos as u64).div_ceil(alignment) * alignment;
    let data_len = (buf.len() as u64).saturating_sub(data_start);
    let mut tensors = HashMap::with_capacity(table.len());
    for (name, dims, ty_id, offset) in table {
        let ty = GgmlType::from_id(ty_id).map_err(|m| r.err(format!("tensor {name}: {m}")))?;
        let numel = dims.iter().try_fold(1u64, |a, &d| a.checked_mul(d));
        let size = numel
            .ok_or_else(|| format!("dimensions {dims:?} overflow"))
            .and_then(|n| ty.bytes_for(dims[0], n))
            .map_err(|m| r.err(format!("tensor {name}: {m}")))?;
        if offset % alignment != 0 {
            return Err(
                r.err(format!("tensor {name}: data offset {offset} is not a multiple of the alignment {alignment}"))
            );
        }
        if offset.checked_add(size).is_none_or(|end| end > data_len) {
            return Err(r.err(format!(
                "file is truncated: tensor {name} ({size} bytes at data offset {offset}) ends past the {data_len} bytes of the data section"
            )));
        }
        let start = (data_start + offset) as usize;
        let info = TensorInfo { ty, dims, start, end: start + size as usize };
        if tensors.insert(name.clone(), info).is_some() {
            return Err(r.err(format!("tensor {name} appears twice in the tensor table")));
        }
    }
    Ok((version, metadata, tensors))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_to_llama_cpp_names() {
        assert_eq!(gguf_name("model.layers.12.self_attn.q_proj.weight").as_deref(), Some("blk.12.attn_q.weight"));
        assert_eq!(gguf_name("model.layers.0.self_attn.k_proj.bias").as_deref(), Some("blk.0.attn_k.bias"));
        assert_eq!(
            gguf_name("model.layers.3.post_attention_layernorm.weight").as_deref(),
            Some("blk.3.ffn_norm.weight")
        );
        assert_eq!(gguf_name("lm_head.weight").as_deref(), Some("output.weight"));
        assert_eq!(gguf_name("model.layers.x.mlp.up_proj.weight"), None);
    }

    /// The inverse of llama.cpp's `permute` (convert_hf_to_gguf.py): rows of one head
    /// `[a0 a1 a2 a3 | b0 b1 b2 b3]` are stored `a0 b0 a1 b1 a2 b2 a3 b3`.
    #[test]
    fn q_and_k_rows_come_back_in_rotate_half_order() {
        let (heads, d) = (2, 8);
        let original: Vec<u8> = (0..(heads * d) as u8).collect();
        // llama.cpp's permute: reshape(heads, 2, d/2).swapaxes(1, 2).
        let mut stored = vec![0u8; original.len()];
        for h in 0..heads {
            for i in 0..d / 2 {
                for j in 0..2 {
                    stored[h * d + 2 * i + j] = original[h * d + j * (d / 2) + i];
                }
            }
        }
        assert_eq!(&stored[..8], &[0, 4, 1, 5, 2, 6, 3, 7]);
        assert_eq!(unpermute_rows(&stored, heads * d, heads).unwrap(), original);
        assert!(unpermute_rows(&stored, heads * d, 3).is_none());
    }
}
