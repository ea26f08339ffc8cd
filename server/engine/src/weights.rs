//! Memory-mapped safetensors files, one or sharded, read into f32 tensors.
//!
//! The header of every file is checked against the file's length before any tensor is read, so
//! a truncated or half-written file is reported by name instead of crashing the process.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use half::{bf16, f16};
use memmap2::Mmap;
use serde_json::Value;

use crate::error::{io_err, EngineError, Result};
use crate::matrix::{Matrix, MatrixBuilder, Rounding, WeightFormat};

/// Where a model's tensors come from (safetensors files or a GGUF file), addressed by
/// transformers' tensor names.
pub trait TensorSource {
    /// Tensor `name`, its shape checked against `shape`, as f32.
    fn f32(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>>;
    /// The named matrices (each `(name, rows)`, all `cols` wide) stacked by rows, in `format`,
    /// and how far converting them to it moved the weights (nothing for blocks kept as stored).
    fn stacked(&self, parts: &[(String, usize)], cols: usize, format: WeightFormat) -> Result<(Matrix, Rounding)>;
    /// The float type most weight matrices are stored in, if they are stored as floats.
    fn main_dtype(&self) -> Option<DType>;
}

impl TensorSource for WeightFiles {
    fn f32(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        WeightFiles::f32(self, name, shape)
    }

    // Weight matrices go straight from the file into their storage format, a batch of rows at
    // a time.
    fn stacked(&self, parts: &[(String, usize)], cols: usize, format: WeightFormat) -> Result<(Matrix, Rounding)> {
        let mut b = MatrixBuilder::new(parts.iter().map(|(_, r)| r).sum(), cols, format);
        for (name, rows) in parts {
            self.rows_f32(name, &[*rows, cols], |chunk| b.push(chunk))?;
        }
        Ok(b.finish_measured())
    }

    fn main_dtype(&self) -> Option<DType> {
        WeightFiles::main_dtype(self)
    }
}

/// Element type of a stored tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DType {
    F32,
    F16,
    BF16,
}

impl DType {
    fn size(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F16 | DType::BF16 => 2,
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct TensorInfo {
    file: usize,
    dtype: DType,
    pub(crate) shape: Vec<usize>,
    /// Absolute byte range in the file.
    pub(crate) start: usize,
    pub(crate) end: usize,
}

/// All tensors of a checkpoint, indexed by name, backed by memory maps.
pub struct WeightFiles {
    paths: Vec<PathBuf>,
    maps: Vec<Mmap>,
    tensors: HashMap<String, TensorInfo>,
}

impl WeightFiles {
    /// Opens `model.safetensors`, or the shards listed in `model.safetensors.index.json`.
    pub fn open_dir(dir: &Path) -> Result<Self> {
        let index = dir.join("model.safetensors.index.json");
        let single = dir.join("model.safetensors");
        let files: Vec<PathBuf> = if index.exists() {
            let text = std::fs::read_to_string(&index).map_err(io_err(&index))?;
            let werr = |message: String| EngineError::Weights { path: index.clone(), message };
            let v: Value = serde_json::from_str(&text).map_err(|e| werr(format!("not valid JSON: {e}")))?;
            let map = v
                .get("weight_map")
                .and_then(Value::as_object)
                .ok_or_else(|| werr("missing object weight_map".into()))?;
            let mut names: Vec<String> = Vec::new();
            for (tensor, file) in map {
                let file = file.as_str().ok_or_else(|| werr(format!("weight_map[{tensor}] must be a file name")))?;
                if file.contains('/') || file.contains('\\') || file.starts_with('.') {
                    return Err(werr(format!("weight_map[{tensor}] names a file outside the checkpoint: {file}")));
                }
                if !names.iter().any(|n| n == file) {
                    names.push(file.to_string());
                }
            }
            names.sort();
            names.into_iter().map(|n| dir.join(n)).collect()
        } else if single.exists() {
            vec![single]
        } else {
            return Err(EngineError::Weights {
                path: dir.to_path_buf(),
                message: "no model.safetensors or model.safetensors.index.json in the checkpoint directory".into(),
            });
        };
        Self::open_files(&files)
    }

    /// Opens the given safetensors files; a tensor name may appear in only one of them.
    pub fn open_files(files: &[PathBuf]) -> Result<Self> {
        let mut out = WeightFiles { paths: Vec::new(), maps: Vec::new(), tensors: HashMap::new() };
        for (i, path) in files.iter().enumerate() {
            let file = File::open(path).map_err(io_err(path))?;
            // SAFETY: the map is read-only; a checkpoint changed underneath a running server is
            // outside what the engine can defend against, as with any mmap-based loader.
            let map = unsafe { Mmap::map(&file) }.map_err(io_err(path))?;
            for (name, mut info) in parse_header(&map, path)? {
                info.file = i;
                if out.tensors.insert(name.clone(), info).is_some() {
                    return Err(EngineError::Weights {
                        path: path.clone(),
                        message: format!("tensor {name} appears in more than one file"),
                    });
                }
            }
            out.paths.push(path.clone());
            out.maps.push(map);
        }
        Ok(out)
    }

    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// The dtype most tensors are stored in (for reporting).
    pub fn main_dtype(&self) -> Option<DType> {
        let mut counts = [0usize; 3];
        for t in self.tensors.values() {
            counts[t.dtype as usize] += 1;
        }
        let best = (0..3).max_by_key(|&i| counts[i])?;
        (counts[best] > 0).then(|| [DType::F32, DType::F16, DType::BF16][best])
    }

    /// Reads tensor `name`, checks that its shape is `shape`, and converts it to f32.
    pub fn f32(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let mut out = Vec::with_capacity(shape.iter().product());
        self.rows_f32(name, shape, |rows| out.extend_from_slice(rows))?;
        Ok(out)
    }

    /// Reads tensor `name` (shape checked against `shape`) in batches of whole rows (about
    /// 1 MiB of the file each) converted to f32, and lets each batch's file pages go once it is
    /// converted: loading holds one copy of the weights, in the format they are computed in,
    /// plus one batch.
    pub fn rows_f32(&self, name: &str, shape: &[usize], mut f: impl FnMut(&[f32])) -> Result<()> {
        let info = self.tensors.get(name).ok_or_else(|| EngineError::Weights {
            path: self.paths.first().cloned().unwrap_or_default(),
            message: format!("missing tensor {name}"),
        })?;
        let path = &self.paths[info.file];
        if info.shape != shape {
            return Err(EngineError::Weights {
                path: path.clone(),
                message: format!("tensor {name} has shape {:?}, expected {:?}", info.shape, shape),
            });
        }
        let map = &self.maps[info.file];
        let row_bytes = shape.iter().skip(1).product::<usize>().max(1) * info.dtype.size();
        let batch = ((1 << 20) / row_bytes).max(1) * row_bytes;
        let mut buf = Vec::with_capacity(batch / info.dtype.size());
        let mut start = info.start;
        while start < info.end {
            let end = (start + batch).min(info.end);
            let bytes = &map[start..end];
            buf.clear();
            match info.dtype {
                DType::F32 => buf.extend(bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))),
                DType::F16 => buf.extend(bytes.chunks_exact(2).map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32())),
                DType::BF16 => buf.extend(bytes.chunks_exact(2).map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32())),
            }
            f(&buf);
            #[cfg(unix)]
            // SAFETY: the map is read-only and file-backed, so dropped pages are read again from
            // the file if anything touches them later; nothing is lost.
            unsafe {
                let _ = map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, start, end - start);
            }
            start = end;
        }
        Ok(())
    }
}

pub(crate) fn parse_header(map: &[u8], path: &Path) -> Result<Vec<(String, TensorInfo)>> {
    let err = |message: String| EngineError::Weights { path: path.to_path_buf(), message };
    if map.len() < 8 {
        return Err(err(format!("file is truncated: {} bytes, not even a safetensors header", map.len())));
    }
    let n = u64::from_le_bytes(map[..8].try_into().expect("8 bytes")) as usize;
    if n > map.len() - 8 {
        return Err(err(format!(
            "file is truncated or not safetensors: header claims {n} bytes but the file has {}",
            map.len()
        )));
    }
    let header: Value = serde_json::from_slice(&map[8..8 + n])
        .map_err(|e| err(format!("safetensors header is not valid JSON: {e}")))?;
    let obj = header.as_object().ok_or_else(|| err("safetensors header is not an object".into()))?;
    let data_start = 8 + n;
    let data_len = map.len() - data_start;
    let mut out = Vec::with_capacity(obj.len());
    for (name, v) in obj {
        if name == "__metadata__" {
            continue;
        }
        let dtype = match v.get("dtype").and_then(Value::as_str) {
            Some("F32") => DType::F32,
            Some("F16") => DType::F16,
            Some("BF16") => DType::BF16,
            Some(other) => {
                return Err(err(format!("tensor {name} has dtype {other}; only F32, F16 and BF16 are supported")))
            }
            None => return Err(err(format!("tensor {name} has no dtype"))),
        };
        let shape: Vec<usize> = v
            .get("shape")
            .and_then(Value::as_array)
            .and_then(|a| a.iter().map(|d| d.as_u64().map(|d| d as usize)).collect())
            .ok_or_else(|| err(format!("tensor {name} has no valid shape")))?;
        let offs: Vec<usize> = v
            .get("data_offsets")
            .and_then(Value::as_array)
            .and_then(|a| a.iter().map(|d| d.as_u64().map(|d| d as usize)).collect())
            .filter(|o: &Vec<usize>| o.len() == 2 && o[0] <= o[1])
            .ok_or_else(|| err(format!("tensor {name} has no valid data_offsets")))?;
        let numel = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
        let expected = numel.and_then(|n| n.checked_mul(dtype.size()));
        if expected != Some(offs[1] - offs[0]) {
            return Err(err(format!(
                "tensor {name}: shape {shape:?} of {dtype:?} does not match its {} data bytes",
                offs[1] - offs[0]
            )));
        }
        if offs[1] > data_len {
            return Err(err(format!(
                "file is truncated: tensor {name} ends at byte {} of the data section but only {data_len} bytes are present",
                offs[1]
            )));
        }
        out.push((
            name.clone(),
            TensorInfo { file: 0, dtype, shape, start: data_start + offs[0], end: data_start + offs[1] },
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_st(dir: &Path, tensors: &[(&str, &str, Vec<usize>, Vec<u8>)]) -> PathBuf {
        let mut header = serde_json::Map::new();
        let mut data = Vec::new();
        for (name, dtype, shape, bytes) in tensors {
            let start = data.len();
            data.extend_from_slice(bytes);
            header.insert(
                name.to_string(),
                serde_json::json!({"dtype": dtype, "shape": shape, "data_offsets": [start, data.len()]}),
            );
        }
        let h = serde_json::to_vec(&Value::Object(header)).unwrap();
        let mut file = (h.len() as u64).to_le_bytes().to_vec();
        file.extend_from_slice(&h);
        file.extend_from_slice(&data);
        let p = dir.join("model.safetensors");
        std::fs::write(&p, file).unwrap();
        p
    }

    fn tmpdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("ghostline-weights-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn reads_all_three_dtypes() {
        let d = tmpdir("dtypes");
        let f32b: Vec<u8> = [1.5f32, -2.0].iter().flat_map(|x| x.to_le_bytes()).collect();
        let f16b: Vec<u8> = [f16::from_f32(0.5)].iter().flat_map(|x| x.to_le_bytes()).collect();
        let bf16b: Vec<u8> = [bf16::from_f32(3.0)].iter().flat_map(|x| x.to_le_bytes()).collect();
        write_st(&d, &[("a", "F32", vec![2], f32b), ("b", "F16", vec![1], f16b), ("c", "BF16", vec![1, 1], bf16b)]);
        let w = WeightFiles::open_dir(&d).unwrap();
        assert_eq!(w.f32("a", &[2]).unwrap(), vec![1.5, -2.0]);
        assert_eq!(w.f32("b", &[1]).unwrap(), vec![0.5]);
        assert_eq!(w.f32("c", &[1, 1]).unwrap(), vec![3.0]);
        let e = w.f32("a", &[3]).unwrap_err().to_string();
        assert!(e.contains("shape") && e.contains("model.safetensors"), "{e}");
        let e = w.f32("zzz", &[1]).unwrap_err().to_string();
        assert!(e.contains("missing tensor zzz"), "{e}");
        std::fs::remove_dir_all(d).ok();
    }

    #[test]
    fn truncated_file_is_reported_not_read() {
        let d = tmpdir("trunc");
        let bytes: Vec<u8> = vec![0u8; 64];
        let p = write_st(&d, &[("w", "F32", vec![16], bytes)]);
        let full = std::fs::read(&p).unwrap();
        for cut in [3, 20, full.len() - 1] {
            std::fs::write(&p, &full[..cut]).unwrap();
            let e = WeightFiles::open_dir(&d).err().expect("must fail").to_string();
            assert!(e.contains("truncated"), "cut {cut}: {e}");
        }
        std::fs::remove_dir_all(d).ok();
    }

    /// A tensor larger than one read batch arrives as whole rows, in order, in every dtype.
    #[test]
    fn large_tensors_are_read_in_batches_of_whole_rows() {
        let d = tmpdir("batches");
        let (rows, cols) = (1100, 520);
        // Exactly representable in bf16 too.
        let vals: Vec<f32> = (0..rows * cols).map(|i| ((i % 255) as f32 - 127.0) / 64.0).collect();
        let f32b: Vec<u8> = vals.iter().flat_map(|x| x.to_le_bytes()).collect();
        let bf16b: Vec<u8> = vals.iter().flat_map(|&x| bf16::from_f32(x).to_le_bytes()).collect();
        write_st(&d, &[("a", "F32", vec![rows, cols], f32b), ("b", "BF16", vec![rows, cols], bf16b)]);
        let w = WeightFiles::open_dir(&d).unwrap();
        for name in ["a", "b"] {
            let mut batches = 0;
            let mut got = Vec::new();
            w.rows_f32(name, &[rows, cols], |chunk| {
                assert_eq!(chunk.len() % cols, 0, "{name}: a batch of whole rows");
                batches += 1;
                got.extend_from_slice(chunk);
            })
            .unwrap();
            assert!(batches > 1, "{name}: {batches} batch");
            assert_eq!(got, vals, "{name}");
            // And read again after its pages were let go.
            assert_eq!(w.f32(name, &[rows, cols]).unwrap(), vals, "{name} again");
        }
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn unsupported_dtype_is_named() {
        let d = tmpdir("dtype");
        write_st(&d, &[("w", "I64", vec![1], vec![0; 8])]);
        let e = WeightFiles::open_dir(&d).err().unwrap().to_string();
        assert!(e.contains("I64"), "{e}");
        std::fs::remove_dir_all(d).ok();
    }
}
