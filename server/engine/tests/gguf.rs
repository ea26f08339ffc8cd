//! GGUF files: small ones written here (every kind of damage reported by name, the loaded model
//! equal to the same weights as safetensors), and the real SmolLM2-135M Q4_1 file against what
//! transformers computed from it (`tests/fixtures/gguf`, made by `make_gguf_fixtures.py`).
//!
//! The real file is fetched by `tests/run` into a cache outside the repository and named by
//! `GHOSTLINE_SMOLLM2_GGUF`; without it those tests print why and pass.

use std::path::{Path, PathBuf};

use ghostline_engine::{
    generate, BatchItem, Checkpoint, GenerateParams, Logits, Model, SamplingParams, SeqKv, Tokenizer, WeightFormat,
    Weights,
};
use half::f16;
use serde_json::Value as Json;

// ---------------------------------------------------------------------------------------------
// A small GGUF writer.

enum Val {
    U32(u32),
    F32(f32),
    Bool(bool),
    Str(String),
    Strs(Vec<String>),
    I32s(Vec<i32>),
    F32s(Vec<f32>),
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend((s.len() as u64).to_le_bytes());
    out.extend(s.as_bytes());
}

fn put_val(out: &mut Vec<u8>, v: &Val) {
    match v {
        Val::U32(x) => {
            out.extend(4u32.to_le_bytes());
            out.extend(x.to_le_bytes());
        }
        Val::F32(x) => {
            out.extend(6u32.to_le_bytes());
            out.extend(x.to_le_bytes());
        }
        Val::Bool(b) => {
            out.extend(7u32.to_le_bytes());
            out.push(*b as u8);
        }
        Val::Str(s) => {
            out.extend(8u32.to_le_bytes());
            put_str(out, s);
        }
        Val::Strs(a) => {
            out.extend(9u32.to_le_bytes());
            out.extend(8u32.to_le_bytes());
            out.extend((a.len() as u64).to_le_bytes());
            for s in a {
                put_str(out, s);
            }
        }
        Val::F32s(a) => {
            out.extend(9u32.to_le_bytes());
            out.extend(6u32.to_le_bytes());
            out.extend((a.len() as u64).to_le_bytes());
            for x in a {
                out.extend(x.to_le_bytes());
            }
        }
        Val::I32s(a) => {
            out.extend(9u32.to_le_bytes());
            out.extend(5u32.to_le_bytes());
            out.extend((a.len() as u64).to_le_bytes());
            for x in a {
                out.extend(x.to_le_bytes());
            }
        }
    }
}

struct Tensor {
    name: String,
    /// GGUF order: `[cols, rows]`.
    dims: Vec<u64>,
    ty: u32,
    data: Vec<u8>,
}

/// The bytes of a GGUF file, with the byte offsets of its tensor table and data section.
struct Written {
    bytes: Vec<u8>,
    table_at: usize,
    data_at: usize,
}

fn write_gguf(version: u32, kvs: &[(String, Val)], tensors: &[Tensor]) -> Written {
    let mut out = b"GGUF".to_vec();
    out.extend(version.to_le_bytes());
    out.extend((tensors.len() as u64).to_le_bytes());
    out.extend((kvs.len() as u64).to_le_bytes());
    for (k, v) in kvs {
        put_str(&mut out, k);
        put_val(&mut out, v);
    }
    let table_at = out.len();
    let mut offset = 0u64;
    for t in tensors {
        put_str(&mut out, &t.name);
        out.extend((t.dims.len() as u32).to_le_bytes());
        for d in &t.dims {
            out.extend(d.to_le_bytes());
        }
        out.extend(t.ty.to_le_bytes());
        out.extend(offset.to_le_bytes());
        offset += (t.data.len() as u64).div_ceil(32) * 32;
    }
    while !out.len().is_multiple_of(32) {
        out.push(0);
    }
    let data_at = out.len();
    for t in tensors {
        out.extend(&t.data);
        while !(out.len() - data_at).is_multiple_of(32) {
            out.push(0);
        }
    }
    Written { bytes: out, table_at, data_at }
}

// ---------------------------------------------------------------------------------------------
// A tiny llama model: the same weights as a GGUF file (q/k rows permuted as llama.cpp's
// converter stores them) and as a safetensors checkpoint.

const H: usize = 64;
const HEADS: usize = 4;
const KV_HEADS: usize = 2;
const HD: usize = H / HEADS;
const FFN: usize = 96;
const LAYERS: usize = 2;

/// GPT-2's byte alphabet: the 256 single-byte tokens of a byte-level vocabulary.
fn byte_tokens() -> Vec<String> {
    let mut n = 0;
    (0..=255u8)
        .map(|b| {
            if matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF) {
                char::from(b).to_string()
            } else {
                n += 1;
                char::from_u32(255 + n).unwrap().to_string()
            }
        })
        .collect()
}

fn vocab() -> (Vec<String>, Vec<i32>, Vec<String>) {
    let mut tokens = byte_tokens();
    let g = |s: &str| s.replace(' ', "Ġ");
    let merges: Vec<String> = ["Ġ t", "h e", "Ġt he", "i n", "Ġ in", "1 2", "12 3", "4 5"].map(String::from).to_vec();
    for m in &merges {
        tokens.push(g(&m.replace(' ', "")));
    }
    tokens.extend(["<|endoftext|>", "<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>"].map(String::from));
    let mut types = vec![1; tokens.len()];
    let n = types.len();
    types[n - 4..].iter_mut().for_each(|t| *t = 3);
    (tokens, types, merges)
}

fn rand_vec(seed: u64, n: usize, scale: f32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 2.0 * scale
        })
        .collect()
}

/// llama.cpp's `permute` of q / k rows (convert_hf_to_gguf.py).
fn permute(w: &[f32], heads: usize, cols: usize) -> Vec<f32> {
    let d = w.len() / cols / heads;
    let mut out = vec![0.0; w.len()];
    for h in 0..heads {
        for i in 0..d / 2 {
            for j in 0..2 {
                let (dst, src) = (h * d + 2 * i + j, h * d + j * (d / 2) + i);
                out[dst * cols..(dst + 1) * cols].copy_from_slice(&w[src * cols..(src + 1) * cols]);
            }
        }
    }
    out
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Q8_0 blocks of `v` (32 values: an f16 scale and 32 int8).
fn q8_0_bytes(v: &[f32]) -> Vec<u8> {
    let mut out = Vec::new();
    for b in v.chunks(32) {
        let amax = b.iter().fold(0f32, |m, x| m.max(x.abs()));
        let d = amax / 127.0;
        out.extend(f16::from_f32(d).to_le_bytes());
        let id = if d > 0.0 { 1.0 / d } else { 0.0 };
        out.extend(b.iter().map(|x| (x * id).round() as i8 as u8));
    }
    out
}

/// ggml's Q5_0 blocks of `v` (as `quantize_row_q5_0_ref`: the scale from the value of largest
/// magnitude, `-max / 16`).
fn q5_0_bytes(v: &[f32]) -> Vec<u8> {
    let mut out = Vec::new();
    for b in v.chunks(32) {
        let max = b.iter().fold(0f32, |m, &x| if x.abs() > m.abs() { x } else { m });
        let d = max / -16.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        let q: Vec<u32> = b.iter().map(|x| ((x * id + 16.5) as i32).clamp(0, 31) as u32).collect();
        out.extend(f16::from_f32(d).to_le_bytes());
        let qh = (0..16).fold(0u32, |h, j| h | ((q[j] & 0x10) >> 4) << j | ((q[j + 16] & 0x10) >> 4) << (j + 16));
        out.extend(qh.to_le_bytes());
        out.extend((0..16).map(|j| (q[j] & 0xF) as u8 | ((q[j + 16] & 0xF) as u8) << 4));
    }
    out
}

/// The tiny model's tensors in transformers' naming and layout (`[rows, cols]`); `qwen2` adds
/// the q/k/v biases that architecture has.
fn hf_tensors_of(qwen2: bool) -> Vec<(String, usize, usize, Vec<f32>)> {
    let vocab_n = vocab().0.len();
    let mut t = vec![("model.embed_tokens.weight".to_string(), vocab_n, H, rand_vec(1, vocab_n * H, 0.5))];
    for l in 0..LAYERS {
        let p = format!("model.layers.{l}");
        let s = 100 * (l as u64 + 1);
        let mut norm = rand_vec(s, H, 0.2);
        norm.iter_mut().for_each(|x| *x += 1.0);
        t.push((format!("{p}.input_layernorm.weight"), 1, H, norm.clone()));
        t.push((format!("{p}.self_attn.q_proj.weight"), H, H, rand_vec(s + 1, H * H, 0.2)));
        t.push((format!("{p}.self_attn.k_proj.weight"), KV_HEADS * HD, H, rand_vec(s + 2, KV_HEADS * HD * H, 0.2)));
        t.push((format!("{p}.self_attn.v_proj.weight"), KV_HEADS * HD, H, rand_vec(s + 3, KV_HEADS * HD * H, 0.2)));
        t.push((format!("{p}.self_attn.o_proj.weight"), H, H, rand_vec(s + 4, H * H, 0.2)));
        if qwen2 {
            t.push((format!("{p}.self_attn.q_proj.bias"), 1, H, rand_vec(s + 8, H, 0.2)));
            t.push((format!("{p}.self_attn.k_proj.bias"), 1, KV_HEADS * HD, rand_vec(s + 9, KV_HEADS * HD, 0.2)));
            t.push((format!("{p}.self_attn.v_proj.bias"), 1, KV_HEADS * HD, rand_vec(s + 10, KV_HEADS * HD, 0.2)));
        }
        t.push((format!("{p}.post_attention_layernorm.weight"), 1, H, norm));
        t.push((format!("{p}.mlp.gate_proj.weight"), FFN, H, rand_vec(s + 5, FFN * H, 0.2)));
        t.push((format!("{p}.mlp.up_proj.weight"), FFN, H, rand_vec(s + 6, FFN * H, 0.2)));
        t.push((format!("{p}.mlp.down_proj.weight"), H, FFN, rand_vec(s + 7, H * FFN, 0.2)));
    }
    t.push(("model.norm.weight".to_string(), 1, H, vec![1.0; H]));
    t
}

fn gguf_name(hf: &str) -> String {
    let map = [
        ("input_layernorm", "attn_norm"),
        ("post_attention_layernorm", "ffn_norm"),
        ("self_attn.q_proj", "attn_q"),
        ("self_attn.k_proj", "attn_k"),
        ("self_attn.v_proj", "attn_v"),
        ("self_attn.o_proj", "attn_output"),
        ("mlp.gate_proj", "ffn_gate"),
        ("mlp.up_proj", "ffn_up"),
        ("mlp.down_proj", "ffn_down"),
    ];
    match hf {
        "model.embed_tokens.weight" => return "token_embd.weight".into(),
        "model.norm.weight" => return "output_norm.weight".into(),
        _ => {}
    }
    let rest = hf.strip_prefix("model.layers.").unwrap();
    let (l, rest) = rest.split_once('.').unwrap();
    let (module, kind) = rest.rsplit_once('.').unwrap();
    let short = map.iter().find(|(a, _)| *a == module).unwrap().1;
    format!("blk.{l}.{short}.{kind}")
}

fn metadata() -> Vec<(String, Val)> {
    metadata_of("llama")
}

fn metadata_of(arch: &str) -> Vec<(String, Val)> {
    let (tokens, types, merges) = vocab();
    let n = tokens.len() as u32;
    vec![
        ("general.architecture".into(), Val::Str(arch.into())),
        (format!("{arch}.block_count"), Val::U32(LAYERS as u32)),
        (format!("{arch}.context_length"), Val::U32(256)),
        (format!("{arch}.embedding_length"), Val::U32(H as u32)),
        (format!("{arch}.feed_forward_length"), Val::U32(FFN as u32)),
        (format!("{arch}.attention.head_count"), Val::U32(HEADS as u32)),
        (format!("{arch}.attention.head_count_kv"), Val::U32(KV_HEADS as u32)),
        (format!("{arch}.rope.freq_base"), Val::F32(10000.0)),
        (format!("{arch}.attention.layer_norm_rms_epsilon"), Val::F32(1e-5)),
        ("tokenizer.ggml.model".into(), Val::Str("gpt2".into())),
        ("tokenizer.ggml.pre".into(), Val::Str("smollm".into())),
        ("tokenizer.ggml.tokens".into(), Val::Strs(tokens)),
        ("tokenizer.ggml.token_type".into(), Val::I32s(types)),
        ("tokenizer.ggml.merges".into(), Val::Strs(merges)),
        ("tokenizer.ggml.eos_token_id".into(), Val::U32(n - 4)),
        ("tokenizer.ggml.add_bos_token".into(), Val::Bool(false)),
    ]
}

/// The tiny model as GGUF tensors, matrices in `ty` (0 = F32, 8 = Q8_0), norms in F32.
fn gguf_tensors(ty: u32) -> Vec<Tensor> {
    gguf_tensors_of(false, ty)
}

/// As llama.cpp writes them: q/k rows permuted for llama, as they are for qwen2.
fn gguf_tensors_of(qwen2: bool, ty: u32) -> Vec<Tensor> {
    gguf_tensors_from(hf_tensors_of(qwen2), qwen2, ty)
}

fn gguf_tensors_from(hf: Vec<(String, usize, usize, Vec<f32>)>, qwen2: bool, ty: u32) -> Vec<Tensor> {
    hf.into_iter()
        .map(|(name, rows, cols, mut w)| {
            if !qwen2 && name.ends_with("q_proj.weight") {
                w = permute(&w, HEADS, cols);
            } else if !qwen2 && name.ends_with("k_proj.weight") {
                w = permute(&w, KV_HEADS, cols);
            }
            let (dims, ty, data) = if rows == 1 {
                (vec![cols as u64], 0, f32_bytes(&w))
            } else if ty == 8 {
                (vec![cols as u64, rows as u64], 8, q8_0_bytes(&w))
            } else if ty == 6 && name.contains("self_attn") {
                // Q5_0 for attention only: stacks of one type, and gate/up stay F32.
                (vec![cols as u64, rows as u64], 6, q5_0_bytes(&w))
            } else {
                (vec![cols as u64, rows as u64], 0, f32_bytes(&w))
            };
            Tensor { name: gguf_name(&name), dims, ty, data }
        })
        .collect()
}

fn tmp(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("ghostline-gguf-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn write(dir: &Path, bytes: &[u8]) -> PathBuf {
    let p = dir.join("model.gguf");
    std::fs::write(&p, bytes).unwrap();
    p
}

fn load_err(path: &Path) -> String {
    match Checkpoint::load(path) {
        Ok(_) => panic!("{} should not load", path.display()),
        Err(e) => e.to_string(),
    }
}

/// The same weights as a safetensors checkpoint directory (config.json + model.safetensors).
fn write_safetensors(dir: &Path) {
    write_safetensors_of(dir, false)
}

fn write_safetensors_of(dir: &Path, qwen2: bool) {
    let mut header = serde_json::Map::new();
    let mut data = Vec::new();
    for (name, rows, cols, w) in hf_tensors_of(qwen2) {
        let start = data.len();
        data.extend(f32_bytes(&w));
        let shape = if rows == 1 { vec![cols] } else { vec![rows, cols] };
        header.insert(name, serde_json::json!({"dtype": "F32", "shape": shape, "data_offsets": [start, data.len()]}));
    }
    let h = serde_json::to_vec(&Json::Object(header)).unwrap();
    let mut file = (h.len() as u64).to_le_bytes().to_vec();
    file.extend(&h);
    file.extend(&data);
    std::fs::write(dir.join("model.safetensors"), file).unwrap();
    let config = serde_json::json!({
        "model_type": if qwen2 { "qwen2" } else { "llama" }, "hidden_size": H, "intermediate_size": FFN, "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS, "num_key_value_heads": KV_HEADS, "vocab_size": vocab().0.len(),
        "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "max_position_embeddings": 256, "tie_word_embeddings": true,
    });
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
}

fn last_logits(model: &Model, ids: &[u32]) -> Vec<f32> {
    let mut pool = ghostline_engine::KvPool::with_budget(model.kv_shape(16), 16 << 20);
    let mut seq = SeqKv::default();
    let out = model.forward(&mut pool, &mut [BatchItem { kv: &mut seq, tokens: ids, logits: Logits::Last }]).unwrap();
    out.into_iter().next().unwrap()
}

#[test]
fn a_gguf_file_loads_as_the_same_model_as_its_safetensors_checkpoint() {
    let d = tmp("same");
    let gguf = write(&d, &write_gguf(3, &metadata(), &gguf_tensors(0)).bytes);
    write_safetensors(&d);
    let ckpt = Checkpoint::load(&gguf).unwrap();
    let hf = Model::load(&d).unwrap();
    assert_eq!(ckpt.model.config.head_dim, HD);
    assert!(ckpt.model.config.tie_word_embeddings, "no output.weight: tied embeddings");
    assert_eq!(ckpt.model.format, WeightFormat::F32, "an f32 file loads in f32");
    let ids: Vec<u32> = ckpt.tokenizer.encode("the thin thing in the", true).unwrap();
    assert!(ids.contains(&258), "merges apply: {ids:?}");
    // q/k rows were put back in transformers' order: the same logits to the last bit of work.
    let (a, b) = (last_logits(&ckpt.model, &ids), last_logits(&hf, &ids));
    let diff = a.iter().zip(&b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
    assert!(diff < 1e-5, "gguf vs safetensors logits differ by {diff}");

    // Without its extension (as Ollama keeps its blobs), the file is known by its magic.
    let blob = d.join("sha256-0123abcd");
    std::fs::copy(&gguf, &blob).unwrap();
    let from_blob = Checkpoint::load(&blob).unwrap();
    assert_eq!(last_logits(&from_blob.model, &ids), a);

    // A Q8_0 file loads in q8 by default; its logits stay near the f32 ones.
    let q8 = write(&d, &write_gguf(2, &metadata(), &gguf_tensors(8)).bytes);
    let ckpt = Checkpoint::load(&q8).unwrap();
    assert_eq!(ckpt.model.format, WeightFormat::Q8);
    let c = last_logits(&ckpt.model, &ids);
    let scale = b.iter().fold(0f32, |m, x| m.max(x.abs()));
    let diff = c.iter().zip(&b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
    assert!(diff < 0.05 * scale, "q8 logits differ by {diff} (scale {scale})");
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn a_qwen2_gguf_file_keeps_its_q_and_k_rows_as_stored() {
    let d = tmp("qwen2");
    let gguf = write(&d, &write_gguf(3, &metadata_of("qwen2"), &gguf_tensors_of(true, 0)).bytes);
    write_safetensors_of(&d, true);
    let ckpt = Checkpoint::load(&gguf).unwrap();
    assert!(ckpt.model.config.qkv_bias);
    let ids = ckpt.tokenizer.encode("the thin thing", true).unwrap();
    let (a, b) = (last_logits(&ckpt.model, &ids), last_logits(&Model::load(&d).unwrap(), &ids));
    let diff = a.iter().zip(&b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
    assert!(diff < 1e-5, "gguf vs safetensors logits differ by {diff}");
    let _ = std::fs::remove_dir_all(&d);
}

/// A SentencePiece (`llama`) vocabulary as CodeLlama files carry it: merges from the scores,
/// `▁` for spaces, byte fallback, BOS added, the FIM markers under their older key names and the
/// end-of-turn token found by its text.
#[test]
fn a_sentencepiece_vocabulary_tokenizes_with_scores_and_byte_fallback() {
    let mut tokens: Vec<String> = vec!["<unk>".into(), "<s>".into(), "</s>".into()];
    let mut types = vec![2, 3, 3];
    for b in 0..=255u8 {
        tokens.push(format!("<0x{b:02X}>"));
        types.push(6);
    }
    let words = [
        "▁", "h", "e", "l", "o", "w", "r", "d", "he", "ll", "llo", "hello", "▁hello", "or", "ld", "orld", "▁w",
        "▁world",
    ];
    tokens.extend(words.iter().map(|w| w.to_string()));
    types.extend(words.iter().map(|_| 1));
    for m in ["▁<PRE>", "▁<SUF>", "▁<MID>", "▁<EOT>"] {
        tokens.push(m.into());
        types.push(3);
    }
    let id = |t: &str| tokens.iter().position(|x| x == t).unwrap() as u32;
    let score_vals: Vec<f32> = tokens.iter().map(|t| -(t.chars().count() as f32)).collect();
    let kv = vec![
        ("tokenizer.ggml.model".to_string(), Val::Str("llama".into())),
        ("tokenizer.ggml.tokens".into(), Val::Strs(tokens.clone())),
        ("tokenizer.ggml.token_type".into(), Val::I32s(types)),
        ("tokenizer.ggml.scores".into(), Val::F32s(score_vals)),
        ("tokenizer.ggml.bos_token_id".into(), Val::U32(1)),
        ("tokenizer.ggml.eos_token_id".into(), Val::U32(2)),
        ("tokenizer.ggml.unknown_token_id".into(), Val::U32(0)),
        ("tokenizer.ggml.prefix_token_id".into(), Val::U32(id("▁<PRE>"))),
        ("tokenizer.ggml.suffix_token_id".into(), Val::U32(id("▁<SUF>"))),
        ("tokenizer.ggml.middle_token_id".into(), Val::U32(id("▁<MID>"))),
    ];
    let d = tmp("spm");
    let p = write(&d, &write_gguf(3, &kv, &[]).bytes);
    let tok = Tokenizer::load(&p, &[]).unwrap();
    let ids = tok.encode("hello world é", true).unwrap();
    assert_eq!(ids, vec![1, id("▁hello"), id("▁world"), id("▁"), id("<0xC3>"), id("<0xA9>")], "{ids:?}");
    assert_eq!(tok.decode(&ids, true).unwrap(), "hello world é");
    assert_eq!(tok.special_id("▁<PRE>"), Some(id("▁<PRE>")));
    assert_eq!(tok.special_id("▁<MID>"), Some(id("▁<MID>")));
    assert_eq!(tok.eos_ids, vec![2, id("▁<EOT>")]);
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn special_and_fim_tokens_of_a_gguf_file_are_whole_tokens() {
    let d = tmp("fim");
    let p = write(&d, &write_gguf(3, &metadata(), &gguf_tensors(0)).bytes);
    let tok = Tokenizer::load(&p, &[]).unwrap();
    let n = vocab().0.len() as u32;
    assert_eq!(tok.special_id("<|fim_prefix|>"), Some(n - 3));
    assert_eq!(tok.special_id("<|fim_middle|>"), Some(n - 1));
    assert_eq!(tok.eos_ids, vec![n - 4]);
    let ids = tok.encode("<|fim_prefix|>the<|fim_suffix|> in<|fim_middle|>", true).unwrap();
    assert_eq!(ids, vec![n - 3, 116, 257, n - 2, 260, n - 1], "{ids:?}");
    assert_eq!(tok.decode(&ids, true).unwrap(), "the in");

    // A tokenizer.json beside the file wins.
    let house = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/ghostline-tiny/tokenizer.json");
    std::fs::copy(&house, d.join("tokenizer.json")).unwrap();
    let beside = Tokenizer::load(&p, &[]).unwrap();
    let want = Tokenizer::load(house.parent().unwrap(), &[]).unwrap();
    assert_eq!(beside.vocab_size(), want.vocab_size());
    assert_ne!(beside.vocab_size(), tok.vocab_size());
    let _ = std::fs::remove_dir_all(&d);
}

fn with_kv(edit: impl FnOnce(&mut Vec<(String, Val)>)) -> Vec<u8> {
    let mut kv = metadata();
    edit(&mut kv);
    write_gguf(3, &kv, &gguf_tensors(0)).bytes
}

fn set(kv: &mut [(String, Val)], key: &str, v: Val) {
    kv.iter_mut().find(|(k, _)| k == key).unwrap().1 = v;
}

#[test]
fn each_kind_of_damaged_gguf_file_is_named() {
    let d = tmp("bad");
    let good = write_gguf(3, &metadata(), &gguf_tensors(0));
    let check = |bytes: &[u8], want: &[&str]| {
        let p = write(&d, bytes);
        let e = load_err(&p);
        assert!(e.contains("model.gguf"), "names the file: {e}");
        for w in want {
            assert!(e.contains(w), "{w:?} not in: {e}");
        }
    };
    // Truncated in the header, the metadata, the tensor table and the data.
    for cut in [0, 3, 6, 20, 40, good.table_at - 3, good.table_at + 10, good.data_at + 100, good.bytes.len() - 1] {
        let p = write(&d, &good.bytes[..cut]);
        let e = load_err(&p);
        assert!(e.contains("truncated"), "cut at {cut}: {e}");
    }
    let mut b = good.bytes.clone();
    b[..4].copy_from_slice(b"GGML");
    check(&b, &["not a GGUF file"]);
    for v in [1u32, 4] {
        let mut b = good.bytes.clone();
        b[4..8].copy_from_slice(&v.to_le_bytes());
        check(&b, &[&format!("GGUF version {v} is not supported")]);
    }
    // A lying tensor count, metadata count, string length and array count.
    let mut b = good.bytes.clone();
    b[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
    check(&b, &["claims", "tensors"]);
    let mut b = good.bytes.clone();
    b[16..24].copy_from_slice(&(1u64 << 40).to_le_bytes());
    check(&b, &["claims", "metadata entries"]);
    let mut b = good.bytes.clone();
    b[24..32].copy_from_slice(&(u64::MAX - 3).to_le_bytes());
    check(&b, &["metadata key #0", "truncated"]);
    let tokens_at = find(&good.bytes, b"tokenizer.ggml.tokens") + "tokenizer.ggml.tokens".len() + 8;
    let mut b = good.bytes.clone();
    b[tokens_at..tokens_at + 8].copy_from_slice(&(1u64 << 61).to_le_bytes());
    check(&b, &["tokenizer.ggml.tokens", "claims 2305843009213693952 elements"]);

    // The first tensor's data offset moved past the end, or off the alignment.
    let first = &gguf_tensors(0)[0];
    let off_at = good.table_at + 8 + first.name.len() + 4 + 8 * first.dims.len() + 4;
    let mut b = good.bytes.clone();
    let mut aligned = (good.bytes.len() as u64).div_ceil(32) * 32;
    b[off_at..off_at + 8].copy_from_slice(&aligned.to_le_bytes());
    check(&b, &["token_embd.weight", "ends past"]);
    aligned = 4;
    b[off_at..off_at + 8].copy_from_slice(&aligned.to_le_bytes());
    check(&b, &["token_embd.weight", "not a multiple of the alignment 32"]);
    // An unknown and a known but unsupported tensor type.
    for (ty, want) in [(99u32, "unknown ggml tensor type 99"), (10, "Q2_K is not supported")] {
        let mut b = good.bytes.clone();
        b[off_at - 4..off_at].copy_from_slice(&ty.to_le_bytes());
        check(&b, &["token_embd.weight", want]);
    }

    check(&with_kv(|kv| set(kv, "general.architecture", Val::Str("mamba".into()))), &["\"mamba\" is not supported"]);
    check(
        &with_kv(|kv| set(kv, "llama.block_count", Val::Str("thirty".into()))),
        &["llama.block_count", "must be a non-negative integer", "string"],
    );
    check(
        &with_kv(|kv| set(kv, "llama.attention.layer_norm_rms_epsilon", Val::U32(1))),
        &["llama.attention.layer_norm_rms_epsilon", "must be a float"],
    );
    check(&with_kv(|kv| kv.retain(|(k, _)| k != "llama.embedding_length")), &["llama.embedding_length is missing"]);
    check(&with_kv(|kv| set(kv, "tokenizer.ggml.pre", Val::Str("klingon".into()))), &["\"klingon\" is not supported"]);
    check(&with_kv(|kv| set(kv, "tokenizer.ggml.model", Val::Str("bert".into()))), &["\"bert\" is not supported"]);
    check(&with_kv(|kv| set(kv, "tokenizer.ggml.eos_token_id", Val::U32(1 << 20))), &["eos_token_id", "below"]);
    check(&with_kv(|kv| kv.push(("general.alignment".into(), Val::U32(3)))), &["general.alignment", "power of two"]);
    check(&with_kv(|kv| kv.push(("llama.block_count".into(), Val::U32(1)))), &["llama.block_count appears twice"]);
    // A tensor of the wrong shape for the hyper-parameters.
    check(&with_kv(|kv| set(kv, "llama.feed_forward_length", Val::U32(FFN as u32 * 2))), &["ffn_gate", "dimensions"]);
    // A file that is not there is named as a file, not as a missing directory.
    let e = load_err(&d.join("absent.gguf"));
    assert!(e.contains("absent.gguf") && e.contains("No such file"), "{e}");
    let _ = std::fs::remove_dir_all(&d);
}

fn find(hay: &[u8], needle: &[u8]) -> usize {
    hay.windows(needle.len()).position(|w| w == needle).unwrap()
}

// ---------------------------------------------------------------------------------------------
// The real file against transformers.

fn real_file() -> Option<PathBuf> {
    match std::env::var_os("GHOSTLINE_SMOLLM2_GGUF").map(PathBuf::from) {
        Some(p) if p.is_file() => Some(p),
        _ => {
            eprintln!(
                "skipped: GHOSTLINE_SMOLLM2_GGUF does not name SmolLM2-135M-Instruct.Q4_1.gguf (tests/run fetches it)"
            );
            None
        }
    }
}

fn fixture() -> Json {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/gguf/smollm2-q4_1.json");
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

fn ids(v: &Json) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

#[test]
fn smollm2_tokenizer_matches_transformers_on_real_sources() {
    let Some(path) = real_file() else { return };
    let tok = Tokenizer::load(&path, &[]).unwrap();
    let fx = fixture();
    for c in fx["corpus"].as_array().unwrap() {
        let text = c["text"].as_str().unwrap();
        let got = tok.encode(text, true).unwrap();
        let want = ids(&c["ids"]);
        let first = got.iter().zip(&want).position(|(a, b)| a != b);
        assert_eq!(got, want, "{}: first difference at {first:?}", c["label"]);
        assert_eq!(tok.decode(&got, false).unwrap(), text, "{}", c["label"]);
    }
    for c in fx["cases"].as_array().unwrap() {
        assert_eq!(tok.encode(c["prompt"].as_str().unwrap(), true).unwrap(), ids(&c["input_ids"]));
    }
    // SmolLM2's conventions: no BOS added, <|im_end|> ends generation, control tokens whole.
    assert_eq!(tok.bos_id, Some(1));
    assert!(tok.eos_ids.contains(&2), "{:?}", tok.eos_ids);
    let chat = tok.encode("<|im_start|>user\nhi<|im_end|>", true).unwrap();
    assert_eq!((chat[0], chat.last()), (1, Some(&2)), "{chat:?}");
    assert_eq!(tok.vocab_size(), 49152);
}

/// Loads the real file in f32 (transformers' dequantized weights, exactly) and checks every
/// prompt's last-position logits: the top 50 within `TOL` of transformers' and in its order
/// wherever two neighbours are more than `2 · TOL` apart, and the sum and L2 norm of all 49,152.
///
/// `TOL` = 5e-4 absolute on logits of magnitude ~30: both sides compute in f32 from the same
/// f32 weights, so the differences come only from summation order (blocked / SIMD dot products
/// against MKL's), about 1e-6 relative per product, grown through 30 layers of residual adds
/// and RMSNorms: 3.6e-5 measured (printed by the test), so `TOL` leaves a margin of ten.
#[test]
fn smollm2_logits_and_greedy_continuations_match_transformers() {
    const TOL: f32 = 5e-4;
    let Some(path) = real_file() else { return };
    let ckpt = Checkpoint::load_as(&path, Some(WeightFormat::F32)).unwrap();
    let c = &ckpt.model.config;
    assert_eq!((c.num_layers, c.hidden_size, c.num_heads, c.num_kv_heads), (30, 576, 9, 3));
    assert!(c.tie_word_embeddings);
    let fx = fixture();
    let cases = fx["cases"].as_array().unwrap();
    let mut pool = ckpt.kv_pool(256 << 20);
    let (mut worst, mut worst_sum) = (0f32, 0f64);
    let mut agree = 0;
    for case in cases {
        let prompt_ids = ids(&case["input_ids"]);
        let mut seq = SeqKv::default();
        let out = ckpt
            .model
            .forward(&mut pool, &mut [BatchItem { kv: &mut seq, tokens: &prompt_ids, logits: Logits::Last }])
            .unwrap();
        pool.release(&mut seq);
        let logits = &out[0];
        let top_ids = ids(&case["top_ids"]);
        let top: Vec<f32> = case["top_logits"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();
        for (k, (&id, &want)) in top_ids.iter().zip(&top).enumerate() {
            let err = (logits[id as usize] - want).abs();
            worst = worst.max(err);
            assert!(err < TOL, "{:?}: logit of top-{k} id {id} off by {err}", case["prompt"]);
        }
        for k in 1..top.len() {
            if top[k - 1] - top[k] > 2.0 * TOL {
                let (a, b) = (logits[top_ids[k - 1] as usize], logits[top_ids[k] as usize]);
                assert!(a > b, "{:?}: top-{k} ids {} and {} swapped", case["prompt"], top_ids[k - 1], top_ids[k]);
            }
        }
        // All 49,152 within TOL each: |Δ sum| ≤ TOL · n and |Δ norm| ≤ ‖Δ‖₂ ≤ TOL · √n.
        let n = logits.len() as f64;
        let sum: f64 = logits.iter().map(|&x| x as f64).sum();
        let norm: f64 = logits.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt();
        let (want_sum, want_norm) = (case["logits_sum"].as_f64().unwrap(), case["logits_norm"].as_f64().unwrap());
        worst_sum = worst_sum.max((sum - want_sum).abs());
        assert!((sum - want_sum).abs() < TOL as f64 * n, "sum {sum} vs {want_sum}");
        assert!((norm - want_norm).abs() < TOL as f64 * n.sqrt(), "norm {norm} vs {want_norm}");

        let params =
            GenerateParams { max_tokens: 24, sampling: SamplingParams::default(), stop: vec![], stop_ids: vec![] };
        let g = generate(&ckpt.model, &ckpt.tokenizer, &mut pool, &prompt_ids, &params, |_| true).unwrap();
        let want = ids(&case["greedy"]);
        if g.tokens == want {
            agree += 1;
        } else {
            eprintln!(
                "{:?}: greedy differs at {:?}",
                case["prompt"],
                g.tokens.iter().zip(&want).position(|(a, b)| a != b)
            );
        }
    }
    eprintln!("largest top-50 logit difference {worst:.2e}, of a logit sum {worst_sum:.2e}; greedy 24-token continuations identical: {agree} of {}", cases.len());
    // Identical for all but at most one prompt: a near tie between two tokens can flip on a
    // summation-order difference and then the continuations part.
    assert!(agree + 1 >= cases.len(), "greedy continuations identical for only {agree} of {}", cases.len());
}

/// A quantized file computed on as stored (its default: SmolLM2's Q4_1 and Q8_0 blocks as they
/// are) and converted to q8 (`--weights q8`), against transformers' f32 on the dequantized
/// weights: reported, and the first greedy token must agree on most prompts in both.
#[test]
fn smollm2_as_stored_and_in_q8_stays_close_to_transformers() {
    let Some(path) = real_file() else { return };
    let fx = fixture();
    let cases = fx["cases"].as_array().unwrap();
    for (asked, name) in [(None, "as stored"), (Some(WeightFormat::Q8), "q8")] {
        let ckpt = Checkpoint::load_as(&path, asked).unwrap();
        assert_eq!(ckpt.model.format, asked.unwrap_or(WeightFormat::Q4_1), "{name}");
        let mut pool = ckpt.kv_pool(256 << 20);
        let (mut first, mut whole, mut same_tokens) = (0, 0, 0);
        for case in cases {
            let prompt_ids = ids(&case["input_ids"]);
            let params =
                GenerateParams { max_tokens: 24, sampling: SamplingParams::default(), stop: vec![], stop_ids: vec![] };
            let g = generate(&ckpt.model, &ckpt.tokenizer, &mut pool, &prompt_ids, &params, |_| true).unwrap();
            let want = ids(&case["greedy"]);
            first += (g.tokens.first() == want.first()) as usize;
            whole += (g.tokens == want) as usize;
            same_tokens += g.tokens.iter().zip(&want).take_while(|(a, b)| a == b).count();
        }
        let n = cases.len();
        eprintln!(
            "{name}: first token equal {first} of {n}, whole continuation {whole} of {n}, {same_tokens} of {} tokens before the first difference",
            n * 24
        );
        assert!(first + 1 >= n, "{name}: the first greedy token agrees on only {first} of {n}");
    }
}

/// Every pre-tokenizer llama.cpp names for the families the server knows compiles and splits
/// text into pieces that decode back to it.
#[test]
fn each_supported_pre_tokenizer_builds_and_round_trips() {
    let d = tmp("pre");
    let text = "def f(x):\n\treturn x + 12345  # café 数据 🚀\r\n    fn main() { let v = vec![1, 2]; }\n";
    for pre in ["smollm", "starcoder", "qwen2", "deepseek-coder", "llama-bpe", "gpt2"] {
        let bytes = with_kv(|kv| set(kv, "tokenizer.ggml.pre", Val::Str(pre.into())));
        let p = write(&d, &bytes);
        let tok = Tokenizer::load(&p, &[]).unwrap_or_else(|e| panic!("{pre}: {e}"));
        let ids = tok.encode(text, true).unwrap();
        assert_eq!(tok.decode(&ids, false).unwrap(), text, "{pre}");
        // Digits (the vocabulary merges 12, 123 and 45): one piece each where llama.cpp splits
        // them singly, up to three for llama-bpe, all together for gpt2.
        let digits = tok.encode("12345", true).unwrap().len();
        let want = if matches!(pre, "llama-bpe" | "gpt2") { 2 } else { 5 };
        assert_eq!(digits, want, "{pre}");
    }
    let _ = std::fs::remove_dir_all(&d);
}

/// Every quantized type against gguf-py's dequantization of the same random blocks
/// (`fixtures/gguf/dequant.json`), bit for bit, through the reference and through
/// `matrix_from_ggml` into an f32 matrix (one row per block).
#[test]
fn dequantization_equals_gguf_py_bit_for_bit() {
    use ghostline_engine::gguf::{dequant, matrix_from_ggml};
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/gguf/dequant.json");
    let fx: Json = serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap();
    let fx = fx.as_object().unwrap();
    assert_eq!(fx.len(), 6);
    for (name, case) in fx {
        let ty = dequant::GgmlType::from_id(case["type"].as_u64().unwrap() as u32).unwrap();
        assert_eq!(ty.name(), name);
        let hex = case["blocks"].as_str().unwrap();
        let bytes: Vec<u8> =
            (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap()).collect();
        let want: Vec<u32> = case["f32_bits"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
        let got: Vec<u32> = dequant::to_f32(ty, &bytes, want.len()).unwrap().iter().map(|x| x.to_bits()).collect();
        assert_eq!(got, want, "{name}");
        let (per_block, _) = ty.block();
        let rows = want.len() / per_block;
        let (m, rounding) = matrix_from_ggml(&[(ty, rows, &bytes)], per_block, WeightFormat::F32).unwrap();
        assert_eq!(rounding.err2, 0.0, "{name}: f32 holds every weight");
        let mut out = vec![0f32; want.len()];
        m.rows_into(0, &mut out);
        assert_eq!(out.iter().map(|x| x.to_bits()).collect::<Vec<_>>(), want, "{name} through matrix_from_ggml");
    }
}

/// `--weights auto` on a file of floats: q8 where the CPU has the integer kernels, after
/// measuring it against the file's own f32 on the code sample; the file's f32 when q8 would
/// choose other next tokens, and on the portable kernels.
#[test]
fn auto_weights_take_q8_only_where_it_is_fast_and_keeps_the_next_tokens() {
    let d = tmp("auto");
    let path = write(&d, &write_gguf(3, &metadata(), &gguf_tensors(0)).bytes);
    let fast = ghostline_engine::cpu::features().level >= ghostline_engine::cpu::Level::Avx2;
    let m = Model::load_as(&path, Weights::Auto).unwrap();
    let stored = Model::load_as(&path, Weights::Stored).unwrap();
    assert_eq!(stored.format, WeightFormat::F32);
    assert!(stored.agreement.is_none(), "nothing measured unless auto");
    if fast {
        assert_eq!(m.format, WeightFormat::Q8, "{}", m.describe_weights());
        let a = m.agreement.expect("measured on the sample");
        assert!(a.positions >= 20 && a.within_budget(), "{a:?}");
        assert!(m.rounding.relative_rms() > 0.0 && m.rounding.relative_rms() < 0.01, "{:?}", m.rounding);
    } else {
        assert_eq!(m.format, WeightFormat::F32, "{}", m.describe_weights());
        assert!(m.describe_weights().contains("portable kernels run q8 slower"), "{}", m.describe_weights());
    }

    // Rows of the (tied) embedding that differ from each other by far less than q8's step:
    // the f32 model's next tokens hang on differences that q8 rounds away, so auto keeps f32.
    let mut hf = hf_tensors_of(false);
    let common = rand_vec(7, H, 0.5);
    let (_, _, _, embed) = &mut hf[0];
    for (i, x) in embed.iter_mut().enumerate() {
        *x = common[i % H] + *x * 1e-4;
    }
    let path = write(&d, &write_gguf(3, &metadata(), &gguf_tensors_from(hf, false, 0)).bytes);
    let m = Model::load_as(&path, Weights::Auto).unwrap();
    assert_eq!(m.format, WeightFormat::F32, "{}", m.describe_weights());
    if fast {
        assert!(m.describe_weights().contains("outside the budget"), "{}", m.describe_weights());
    }
    let _ = std::fs::remove_dir_all(&d);
}

/// A file with Q5_0 tensors (as llama.cpp's Q4_K_M writes where rows are not whole k-quant
/// blocks): they load converted to q8, the load says so and what it changed, and the logits
/// stay near those of the f32 weights.
#[test]
fn five_bit_tensors_load_converted_to_q8_and_say_so() {
    let d = tmp("q5");
    let f32_file = write(&d, &write_gguf(3, &metadata(), &gguf_tensors(0)).bytes);
    let reference = Checkpoint::load(&f32_file).unwrap();
    let ids = reference.tokenizer.encode("the thin thing in the", true).unwrap();
    let want = last_logits(&reference.model, &ids);
    let q5 = d.join("q5.gguf");
    std::fs::write(&q5, write_gguf(3, &metadata(), &gguf_tensors(6)).bytes).unwrap();
    let m = Checkpoint::load(&q5).unwrap().model;
    let said = m.describe_weights();
    assert!(said.contains("converted to q8") && said.contains("self_attn"), "{said}");
    assert!(m.rounding.err2 > 0.0, "{said}");
    let got = last_logits(&m, &ids);
    let scale = want.iter().fold(0f32, |a, x| a.max(x.abs()));
    let diff = got.iter().zip(&want).fold(0f32, |a, (x, y)| a.max((x - y).abs()));
    assert!(diff < 0.1 * scale, "q5_0 logits differ by {diff} (scale {scale})");
    let _ = std::fs::remove_dir_all(&d);
}
