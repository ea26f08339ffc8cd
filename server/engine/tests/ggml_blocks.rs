//! ggml tensors as GGUF files store them, into [`Matrix::from_ggml`]: every type the engine
//! computes on dequantizes to what gguf-py's reference dequantization gives (random blocks of
//! each type and real blocks of the SmolLM2 Q4_1 file, written by `make_ggml_blocks.py`), and
//! its products equal those of its dequantized weights.

use std::path::PathBuf;

use ghostline_engine::Matrix;
use serde_json::Value;

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/ggml-blocks")
}

/// A fixture: name, ggml type, rows, columns, raw bytes, the reference dequantization.
type Tensor = (String, u32, usize, usize, Vec<u8>, Vec<f32>);

fn tensors() -> Vec<Tensor> {
    tensors_in(&dir())
}

fn tensors_in(dir: &std::path::Path) -> Vec<Tensor> {
    let index: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("index.json")).unwrap()).unwrap();
    index
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            let name = t["name"].as_str().unwrap().to_string();
            let raw = std::fs::read(dir.join(format!("{name}.bin"))).unwrap();
            let want = std::fs::read(dir.join(format!("{name}.f32"))).unwrap();
            let want = want.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
            let n = |k: &str| t[k].as_u64().unwrap() as usize;
            (name, t["type"].as_u64().unwrap() as u32, n("rows"), n("cols"), raw, want)
        })
        .collect()
}

#[test]
fn every_ggml_type_dequantizes_as_the_reference_does() {
    let all = tensors();
    assert!(all.len() >= 11, "{} fixtures", all.len());
    for (name, ty, rows, cols, raw, want) in all {
        let m = Matrix::from_ggml(ty, rows, cols, &raw).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!((m.rows, m.cols), (rows, cols));
        let got = m.dequantize_rows();
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            // The same formula in the same order: equal to the bit (NaN for NaN).
            assert!(g.to_bits() == w.to_bits() || (g.is_nan() && w.is_nan()), "{name}[{i}]: {g} vs {w}");
        }
        // A row range alone, as embeddings read it.
        let mut row = vec![0f32; cols];
        m.rows_into(rows - 1, &mut row);
        assert_eq!(row, got[(rows - 1) * cols..]);
    }
}

#[test]
fn ggml_products_equal_those_of_the_dequantized_weights() {
    for (name, ty, rows, cols, raw, want) in tensors() {
        let m = Matrix::from_ggml(ty, rows, cols, &raw).unwrap();
        for batch in [1, 3, 16] {
            let x: Vec<f32> = (0..batch * cols).map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0).collect();
            let mut y = vec![f32::NAN; batch * rows];
            m.matmul_t(&x, None, &mut y, batch);
            for i in 0..batch {
                for j in 0..rows {
                    let r: f64 = (0..cols).map(|t| x[i * cols + t] as f64 * want[j * cols + t] as f64).sum::<f64>();
                    let scale: f64 =
                        (0..cols).map(|t| (x[i * cols + t] as f64 * want[j * cols + t] as f64).abs()).sum();
                    // The decode kernels (and the VNNI GEMMs but Q6_K's) quantize the inputs to
                    // int8 groups (|error| at most half a step of 1/127 of a group's largest
                    // input).
                    let quantized = ty > 1 && ty != 30 && (batch < 16 || ty != 14);
                    let tol = if quantized { 1e-2 } else { 1e-5 };
                    let e = (y[i * rows + j] as f64 - r).abs();
                    assert!(e <= tol * scale.max(1e-6), "{name} batch {batch} [{i}, {j}]: {} vs {r}", y[i * rows + j]);
                }
            }
        }
    }
}

#[test]
fn from_ggml_refuses_what_it_cannot_take() {
    let err = |ty, rows, cols, len| Matrix::from_ggml(ty, rows, cols, &vec![0u8; len]).unwrap_err().to_string();
    // Q5_0 (6) and IQ types are not among the formats.
    assert!(err(6, 1, 32, 22).contains("type 6 is not supported"), "{}", err(6, 1, 32, 22));
    assert!(err(99, 1, 32, 22).contains("not supported"));
    // A row length that is not whole blocks.
    assert!(err(2, 1, 48, 27).contains("multiple of 32"), "{}", err(2, 1, 48, 27));
    assert!(err(12, 2, 32, 144).contains("multiple of 256"));
    // Bytes that are not exactly the tensor.
    assert!(err(2, 2, 64, 71).contains("takes 72 bytes, not 71"), "{}", err(2, 2, 64, 71));
    assert!(err(0, 3, 5, 61).contains("takes 60 bytes"));
    assert!(err(14, 1, 256, 209).contains("takes 210 bytes"));
    // A shape whose size overflows.
    assert!(err(0, usize::MAX, 2, 8).contains("more than"));
    assert!(Matrix::from_ggml(2, 2, 64, &[0u8; 72]).is_ok());
}

/// Q5_0 and Q5_1, which llama.cpp's Q4_K_M files hold where a row is not whole k-quant blocks:
/// the kernels lack them, so the loader dequantizes them as gguf-py does (to the bit) and
/// converts them to q8, whose change it measures.
#[test]
fn five_bit_blocks_dequantize_as_the_reference_does_and_convert_to_q8() {
    use ghostline_engine::gguf::{dequant, matrix_from_ggml};
    let all = tensors_in(&dir().join("converted"));
    assert_eq!(all.len(), 2);
    for (name, ty, rows, cols, raw, want) in all {
        let t = dequant::GgmlType::from_id(ty).unwrap();
        assert!(!t.computed_as_stored() && t.is_quantized(), "{name}");
        let got = dequant::to_f32(t, &raw, rows * cols).unwrap();
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!(g.to_bits() == w.to_bits(), "{name}[{i}]: {g} vs {w}");
        }
        let (m, rounding) = matrix_from_ggml(&[(t, rows, &raw)], cols, t.stored_format()).unwrap();
        assert_eq!(m.format(), ghostline_engine::WeightFormat::Q8, "{name}");
        let back = m.dequantize_rows();
        let err2: f64 = back.iter().zip(&want).map(|(a, b)| f64::from(a - b).powi(2)).sum();
        let ref2: f64 = want.iter().map(|b| f64::from(*b).powi(2)).sum();
        let rms = (err2 / ref2).sqrt();
        assert!((rounding.relative_rms() - rms).abs() < 1e-9, "{name}: measured {rounding:?}, is {rms}");
        assert!(rms > 0.0 && rms < 0.01, "{name}: q8 changes five-bit weights by {rms} (RMS)");
    }
    // Matrix::from_ggml, which keeps blocks as stored, still refuses them.
    assert!(Matrix::from_ggml(6, 1, 32, &[0u8; 22]).is_err());
}
