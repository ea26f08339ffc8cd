//! `config.json` of a Hugging Face checkpoint, read into the few numbers the forward pass needs.
//!
//! Only the `llama` and `qwen2` architectures are accepted; anything this engine cannot run
//! exactly as transformers does (another rope scaling, sliding-window attention, another
//! activation) is refused with an error that names the field.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::error::{io_err, EngineError, Result};
use crate::gguf::{GgufFile, Value as GgufValue};

/// The model families the engine runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    Llama,
    Qwen2,
}

/// How rotary frequencies are adjusted for long contexts.
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    None,
    /// Position interpolation: every frequency divided by `factor`.
    Linear {
        factor: f32,
    },
    /// Llama 3.x frequency-dependent scaling.
    Llama3 {
        factor: f32,
        low_freq_factor: f32,
        high_freq_factor: f32,
        original_max_position_embeddings: f32,
    },
    /// Every inverse frequency divided by its own factor (a GGUF file's `rope_freqs.weight`,
    /// which is how llama.cpp stores Llama 3.x scaling).
    Factors(Vec<f32>),
}

/// The shape and numerics of a decoder-only transformer checkpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    pub arch: Arch,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f32,
    pub rope_theta: f32,
    pub rope_scaling: RopeScaling,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    /// Bias on the q, k and v projections (always for qwen2, `attention_bias` for llama).
    pub qkv_bias: bool,
    /// Bias on the output projection (llama's `attention_bias` covers it too; qwen2 has none).
    pub o_bias: bool,
    /// Bias on gate, up and down projections (llama `mlp_bias`).
    pub mlp_bias: bool,
    /// Token ids named in config.json (`eos_token_id`, one or several).
    pub eos_token_ids: Vec<u32>,
    pub bos_token_id: Option<u32>,
}

impl ModelConfig {
    /// Reads and validates `config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(io_err(path))?;
        Self::from_json(&text, path)
    }

    /// Parses the text of a `config.json`; `path` is only used in error messages.
    pub fn from_json(text: &str, path: &Path) -> Result<Self> {
        let err = |message: String| EngineError::Config { path: PathBuf::from(path), message };
        let value: Value = serde_json::from_str(text).map_err(|e| err(format!("not valid JSON: {e}")))?;
        let obj = value.as_object().ok_or_else(|| err("expected a JSON object".into()))?;
        let f = Fields { obj, path };

        let model_type = f.str("model_type")?;
        let arch = match model_type.as_str() {
            "llama" => Arch::Llama,
            "qwen2" => Arch::Qwen2,
            other => return Err(err(format!("model_type \"{other}\" is not supported (supported: llama, qwen2)"))),
        };
        if let Some(act) = f.opt_str("hidden_act")? {
            if act != "silu" {
                return Err(err(format!("hidden_act \"{act}\" is not supported (only silu)")));
            }
        }
        if arch == Arch::Qwen2 && f.opt_bool("use_sliding_window")?.unwrap_or(false) {
            return Err(err("use_sliding_window = true is not supported".into()));
        }

        let hidden_size = f.usize("hidden_size")?;
        let num_heads = f.usize("num_attention_heads")?;
        let num_kv_heads = f.opt_usize("num_key_value_heads")?.unwrap_or(num_heads);
        if num_heads == 0 || num_kv_heads == 0 || num_heads % num_kv_heads != 0 {
            return Err(err(format!(
                "num_attention_heads ({num_heads}) must be a positive multiple of num_key_value_heads ({num_kv_heads})"
            )));
        }
        let head_dim = match f.opt_usize("head_dim")? {
            Some(d) => d,
            None => {
                if hidden_size % num_heads != 0 {
                    return Err(err(format!(
                        "hidden_size ({hidden_size}) is not divisible by num_attention_heads ({num_heads}) and no head_dim is given"
                    )));
                }
                hidden_size / num_heads
            }
        };
        if head_dim == 0 || head_dim % 2 != 0 {
            return Err(err(format!("head_dim ({head_dim}) must be even and positive")));
        }

        // transformers 5 moves rope settings into `rope_parameters`; accept both spellings.
        let rope_params = match obj.get("rope_parameters") {
            Some(Value::Object(m)) => Some(m),
            _ => None,
        };
        let rope_theta = match rope_params.and_then(|m| m.get("rope_theta")).and_then(Value::as_f64) {
            Some(t) => t,
            None => f.opt_f64("rope_theta")?.unwrap_or(10000.0),
        };
        let scaling_obj = match obj.get("rope_scaling") {
            Some(Value::Object(m)) => Some(m),
            Some(Value::Null) | None => rope_params,
            Some(_) => return Err(err("rope_scaling must be an object or null".into())),
        };
        let rope_scaling = parse_rope_scaling(scaling_obj, obj, path)?;

        let qkv_bias;
        let o_bias;
        let mlp_bias;
        match arch {
            Arch::Qwen2 => {
                qkv_bias = true;
                o_bias = false;
                mlp_bias = false;
            }
            Arch::Llama => {
                let ab = f.opt_bool("attention_bias")?.unwrap_or(false);
                qkv_bias = ab;
                o_bias = ab;
                mlp_bias = f.opt_bool("mlp_bias")?.unwrap_or(false);
            }
        }

        let cfg = ModelConfig {
            arch,
            vocab_size: f.usize("vocab_size")?,
            hidden_size,
            intermediate_size: f.usize("intermediate_size")?,
            num_layers: f.usize("num_hidden_layers")?,
            num_heads,
            num_kv_heads,
            head_dim,
            rms_norm_eps: f.opt_f64("rms_norm_eps")?.unwrap_or(1e-6) as f32,
            rope_theta: rope_theta as f32,
            rope_scaling,
            max_position_embeddings: f.opt_usize("max_position_embeddings")?.unwrap_or(2048),
            tie_word_embeddings: f.opt_bool("tie_word_embeddings")?.unwrap_or(false),
            qkv_bias,
            o_bias,
            mlp_bias,
            eos_token_ids: f.token_ids("eos_token_id")?,
            bos_token_id: f.token_ids("bos_token_id")?.first().copied(),
        };
        cfg.check(path)?;
        Ok(cfg)
    }

    /// The hyper-parameters of a GGUF file, from its `<arch>.*` metadata keys (llama.cpp's
    /// names), the token list and the tensor table.
    pub fn from_gguf(file: &GgufFile) -> Result<Self> {
        let path = &file.path;
        let err = |message: String| EngineError::Config { path: path.clone(), message };
        let arch_name = match file.get("general.architecture") {
            Some(GgufValue::Str(s)) => s.as_str(),
            Some(v) => {
                return Err(err(format!("metadata key general.architecture must be a string, got {}", v.type_name())))
            }
            None => return Err(err("metadata key general.architecture is missing".into())),
        };
        let arch = match arch_name {
            "llama" => Arch::Llama,
            "qwen2" => Arch::Qwen2,
            other => return Err(err(format!("architecture \"{other}\" is not supported (supported: llama, qwen2)"))),
        };
        let key = |k: &str| format!("{arch_name}.{k}");
        let opt_uint = |k: &str| -> Result<Option<usize>> {
            match file.get(k) {
                None => Ok(None),
                Some(v) => match v.as_u64() {
                    Some(n) if n <= (1 << 31) => Ok(Some(n as usize)),
                    _ => Err(err(format!(
                        "metadata key {k} must be a non-negative integer, got {} {v:?}",
                        v.type_name()
                    ))),
                },
            }
        };
        let uint =
            |k: &str| -> Result<usize> { opt_uint(k)?.ok_or_else(|| err(format!("metadata key {k} is missing"))) };
        let opt_float = |k: &str| -> Result<Option<f64>> {
            match file.get(k) {
                None => Ok(None),
                Some(v @ (GgufValue::F32(_) | GgufValue::F64(_))) => Ok(v.as_f64()),
                Some(v) => Err(err(format!("metadata key {k} must be a float, got {}", v.type_name()))),
            }
        };
        let opt_id = |k: &str| -> Result<Option<u32>> { Ok(opt_uint(k)?.map(|n| n as u32)) };

        let hidden_size = uint(&key("embedding_length"))?;
        let num_heads = uint(&key("attention.head_count"))?;
        let num_kv_heads = opt_uint(&key("attention.head_count_kv"))?.unwrap_or(num_heads);
        if num_heads == 0 || num_kv_heads == 0 || num_heads % num_kv_heads != 0 {
            return Err(err(format!(
                "{} ({num_heads}) must be a positive multiple of {} ({num_kv_heads})",
                key("attention.head_count"),
                key("attention.head_count_kv")
            )));
        }
        let head_dim = match opt_uint(&key("attention.key_length"))? {
            Some(d) => d,
            None if hidden_size % num_heads == 0 => hidden_size / num_heads,
            None => {
                return Err(err(format!(
                    "{} ({hidden_size}) is not divisible by {} ({num_heads})",
                    key("embedding_length"),
                    key("attention.head_count")
                )))
            }
        };
        if let Some(v) = opt_uint(&key("attention.value_length"))? {
            if v != head_dim {
                return Err(err(format!(
                    "{} ({v}) differs from the key length ({head_dim})",
                    key("attention.value_length")
                )));
            }
        }
        if head_dim == 0 || head_dim % 2 != 0 {
            return Err(err(format!("head dimension {head_dim} must be even and positive")));
        }
        if let Some(r) = opt_uint(&key("rope.dimension_count"))? {
            if r != head_dim {
                return Err(err(format!(
                    "{} = {r}: partial rotary embeddings are not supported (head dimension {head_dim})",
                    key("rope.dimension_count")
                )));
            }
        }
        let scaling_type = match file.get(&key("rope.scaling.type")) {
            None => "none",
            Some(GgufValue::Str(s)) => s.as_str(),
            Some(v) => {
                return Err(err(format!(
                    "metadata key {} must be a string, got {}",
                    key("rope.scaling.type"),
                    v.type_name()
                )))
            }
        };
        let factor = opt_float(&key("rope.scaling.factor"))?;
        let mut rope_scaling = match (scaling_type, factor) {
            ("none", _) => RopeScaling::None,
            ("linear", Some(f)) if f.is_finite() && f > 0.0 => {
                if f == 1.0 {
                    RopeScaling::None
                } else {
                    RopeScaling::Linear { factor: f as f32 }
                }
            }
            ("linear", _) => {
                return Err(err(format!(
                    "{} must be a positive number for linear rope scaling",
                    key("rope.scaling.factor")
                )))
            }
            (other, _) => {
                return Err(err(format!(
                    "{} \"{other}\" is not supported (supported: none, linear)",
                    key("rope.scaling.type")
                )))
            }
        };
        if let Some(info) = file.tensors.get("rope_freqs.weight") {
            if rope_scaling != RopeScaling::None {
                return Err(err("rope_freqs.weight and linear rope scaling together are not supported".into()));
            }
            let factors =
                file.vector("rope_freqs.weight", head_dim / 2).map_err(|e| err(format!("rope_freqs.weight: {e}")))?;
            if factors.iter().any(|f| !(f.is_finite() && *f > 0.0)) || info.dims.len() != 1 {
                return Err(err("rope_freqs.weight must hold positive factors".into()));
            }
            rope_scaling = RopeScaling::Factors(factors);
        }

        let vocab_size = match file.get("tokenizer.ggml.tokens") {
            Some(GgufValue::Array(a)) => a.len(),
            Some(v) => {
                return Err(err(format!("metadata key tokenizer.ggml.tokens must be an array, got {}", v.type_name())))
            }
            None => uint(&key("vocab_size"))?,
        };
        let has = |t: &str| file.tensors.contains_key(t);
        let (qkv_bias, o_bias, mlp_bias) = match arch {
            Arch::Qwen2 => (true, false, false),
            Arch::Llama => (has("blk.0.attn_q.bias"), has("blk.0.attn_output.bias"), has("blk.0.ffn_gate.bias")),
        };
        let mut eos_token_ids: Vec<u32> = Vec::new();
        for k in ["tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id"] {
            if let Some(id) = opt_id(k)? {
                if !eos_token_ids.contains(&id) {
                    eos_token_ids.push(id);
                }
            }
        }
        let cfg = ModelConfig {
            arch,
            vocab_size,
            hidden_size,
            intermediate_size: uint(&key("feed_forward_length"))?,
            num_layers: uint(&key("block_count"))?,
            num_heads,
            num_kv_heads,
            head_dim,
            rms_norm_eps: opt_float(&key("attention.layer_norm_rms_epsilon"))?
                .ok_or_else(|| err(format!("metadata key {} is missing", key("attention.layer_norm_rms_epsilon"))))?
                as f32,
            rope_theta: opt_float(&key("rope.freq_base"))?.unwrap_or(10000.0) as f32,
            rope_scaling,
            max_position_embeddings: uint(&key("context_length"))?,
            tie_word_embeddings: !has("output.weight"),
            qkv_bias,
            o_bias,
            mlp_bias,
            eos_token_ids,
            bos_token_id: opt_id("tokenizer.ggml.bos_token_id")?,
        };
        cfg.check(path)?;
        Ok(cfg)
    }

    fn check(&self, path: &Path) -> Result<()> {
        let err = |message: String| EngineError::Config { path: PathBuf::from(path), message };
        for (name, v) in [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_layers),
            ("max_position_embeddings", self.max_position_embeddings),
        ] {
            if v == 0 {
                return Err(err(format!("{name} must be positive")));
            }
        }
        if !(self.rms_norm_eps.is_finite() && self.rms_norm_eps > 0.0) {
            return Err(err("rms_norm_eps must be a positive number".into()));
        }
        if !(self.rope_theta.is_finite() && self.rope_theta > 0.0) {
            return Err(err("rope_theta must be a positive number".into()));
        }
        Ok(())
    }

    /// Number of query, key and value rows of the fused qkv projection.
    pub fn qkv_dim(&self) -> usize {
        (self.num_heads + 2 * self.num_kv_heads) * self.head_dim
    }

    /// Rotary inverse frequencies, computed as transformers does (f32, then scaled).
    pub fn rope_inv_freq(&self) -> Vec<f32> {
        let dim = self.head_dim;
        let base = self.rope_theta;
        let mut inv: Vec<f32> = (0..dim / 2).map(|i| 1.0f32 / base.powf((2 * i) as f32 / dim as f32)).collect();
        match &self.rope_scaling {
            RopeScaling::None => {}
            RopeScaling::Factors(factors) => inv.iter_mut().zip(factors).for_each(|(f, d)| *f /= d),
            &RopeScaling::Linear { factor } => inv.iter_mut().for_each(|f| *f /= factor),
            &RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings: old,
            } => {
                let low_freq_wavelen = old / low_freq_factor;
                let high_freq_wavelen = old / high_freq_factor;
                for f in inv.iter_mut() {
                    let wavelen = 2.0 * std::f32::consts::PI / *f;
                    let scaled = if wavelen > low_freq_wavelen { *f / factor } else { *f };
                    // Between the two wavelengths, both included (and NaN, as transformers lets it through).
                    let medium = wavelen.partial_cmp(&high_freq_wavelen) != Some(std::cmp::Ordering::Less)
                        && wavelen.partial_cmp(&low_freq_wavelen) != Some(std::cmp::Ordering::Greater);
                    *f = if medium {
                        let smooth = (old / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor);
                        (1.0 - smooth) * scaled / factor + smooth * scaled
                    } else {
                        scaled
                    };
                }
            }
        }
        inv
    }
}

fn parse_rope_scaling(
    scaling: Option<&Map<String, Value>>,
    root: &Map<String, Value>,
    path: &Path,
) -> Result<RopeScaling> {
    let err = |message: String| EngineError::Config { path: PathBuf::from(path), message };
    let Some(m) = scaling else { return Ok(RopeScaling::None) };
    let kind = m.get("rope_type").or_else(|| m.get("type")).and_then(Value::as_str).unwrap_or("default");
    let num = |key: &str| -> Result<f32> {
        match m.get(key).and_then(Value::as_f64) {
            Some(v) if v.is_finite() => Ok(v as f32),
            _ => Err(err(format!("rope_scaling.{key} is missing or not a number"))),
        }
    };
    match kind {
        "default" => Ok(RopeScaling::None),
        "linear" => {
            let factor = num("factor")?;
            if factor <= 0.0 {
                return Err(err("rope_scaling.factor must be positive".into()));
            }
            Ok(RopeScaling::Linear { factor })
        }
        "llama3" => {
            let factor = num("factor")?;
            let low = num("low_freq_factor")?;
            let high = num("high_freq_factor")?;
            let old = match m.get("original_max_position_embeddings").and_then(Value::as_f64) {
                Some(v) => v as f32,
                None => root
                    .get("max_position_embeddings")
                    .and_then(Value::as_f64)
                    .ok_or_else(|| err("rope_scaling.original_max_position_embeddings is missing".into()))?
                    as f32,
            };
            if factor <= 0.0 || low <= 0.0 || high <= low || old <= 0.0 {
                return Err(err(
                    "rope_scaling (llama3) needs factor > 0 and 0 < low_freq_factor < high_freq_factor".into()
                ));
            }
            Ok(RopeScaling::Llama3 {
                factor,
                low_freq_factor: low,
                high_freq_factor: high,
                original_max_position_embeddings: old,
            })
        }
        other => {
            Err(err(format!("rope_scaling type \"{other}\" is not supported (supported: default, linear, llama3)")))
        }
    }
}

/// Typed access to config fields with errors that name the field.
struct Fields<'a> {
    obj: &'a Map<String, Value>,
    path: &'a Path,
}

impl Fields<'_> {
    fn err(&self, message: String) -> EngineError {
        EngineError::Config { path: self.path.to_path_buf(), message }
    }
    fn get(&self, key: &str) -> Option<&Value> {
        self.obj.get(key).filter(|v| !v.is_null())
    }
    fn str(&self, key: &str) -> Result<String> {
        self.opt_str(key)?.ok_or_else(|| self.err(format!("missing field {key}")))
    }
    fn opt_str(&self, key: &str) -> Result<Option<String>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(self.err(format!("field {key} must be a string"))),
        }
    }
    fn usize(&self, key: &str) -> Result<usize> {
        self.opt_usize(key)?.ok_or_else(|| self.err(format!("missing field {key}")))
    }
    fn opt_usize(&self, key: &str) -> Result<Option<usize>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => match v.as_u64() {
                Some(n) if n <= (1 << 31) => Ok(Some(n as usize)),
                _ => Err(self.err(format!("field {key} must be a non-negative integer, got {v}"))),
            },
        }
    }
    fn opt_f64(&self, key: &str) -> Result<Option<f64>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v.as_f64().map(Some).ok_or_else(|| self.err(format!("field {key} must be a number, got {v}"))),
        }
    }
    fn opt_bool(&self, key: &str) -> Result<Option<bool>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(v) => Err(self.err(format!("field {key} must be true or false, got {v}"))),
        }
    }
    fn token_ids(&self, key: &str) -> Result<Vec<u32>> {
        token_ids(self.get(key)).ok_or_else(|| self.err(format!("field {key} must be a token id or a list of them")))
    }
}

/// Reads a token id field that may be one integer, a list of integers or null.
pub(crate) fn token_ids(v: Option<&Value>) -> Option<Vec<u32>> {
    match v {
        None | Some(Value::Null) => Some(Vec::new()),
        Some(Value::Number(n)) => n.as_u64().and_then(|n| u32::try_from(n).ok()).map(|n| vec![n]),
        Some(Value::Array(a)) => a.iter().map(|x| x.as_u64().and_then(|n| u32::try_from(n).ok())).collect(),
        Some(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<ModelConfig> {
        ModelConfig::from_json(s, Path::new("config.json"))
    }

    const BASE: &str = r#""hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
        "num_attention_heads": 4, "vocab_size": 100"#;

    #[test]
    fn kv_heads_default_to_heads_and_head_dim_to_hidden_over_heads() {
        let c = parse(&format!(r#"{{"model_type": "llama", {BASE}}}"#)).unwrap();
        assert_eq!(c.num_kv_heads, 4);
        assert_eq!(c.head_dim, 16);
        assert!(!c.qkv_bias);
    }

    #[test]
    fn qwen2_always_has_qkv_bias() {
        let c = parse(&format!(r#"{{"model_type": "qwen2", {BASE}, "num_key_value_heads": 2}}"#)).unwrap();
        assert!(c.qkv_bias && !c.o_bias);
    }

    #[test]
    fn unknown_model_type_and_rope_are_refused_by_name() {
        let e = parse(&format!(r#"{{"model_type": "gpt2", {BASE}}}"#)).unwrap_err().to_string();
        assert!(e.contains("gpt2") && e.contains("config.json"), "{e}");
        let e = parse(&format!(
            r#"{{"model_type": "llama", {BASE}, "rope_scaling": {{"rope_type": "yarn", "factor": 4}}}}"#
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("yarn"), "{e}");
    }

    #[test]
    fn missing_and_mistyped_fields_are_named() {
        let e = parse(r#"{"model_type": "llama", "hidden_size": 64}"#).unwrap_err().to_string();
        assert!(e.contains("num_attention_heads"), "{e}");
        let e = parse(&format!(r#"{{"model_type": "llama", {BASE}, "rope_theta": "big"}}"#)).unwrap_err().to_string();
        assert!(e.contains("rope_theta"), "{e}");
        let e = parse("{not json").unwrap_err().to_string();
        assert!(e.contains("not valid JSON"), "{e}");
    }

    #[test]
    fn llama3_scaling_keeps_high_frequencies_and_divides_low_ones() {
        let c = parse(&format!(
            r#"{{"model_type": "llama", {BASE}, "rope_theta": 500000.0, "rope_scaling": {{"rope_type": "llama3", "factor": 8.0,
            "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 64}}}}"#
        ))
        .unwrap();
        let plain = ModelConfig { rope_scaling: RopeScaling::None, ..c.clone() }.rope_inv_freq();
        let scaled = c.rope_inv_freq();
        assert_eq!(scaled[0], plain[0]);
        let last = plain.len() - 1;
        assert!((scaled[last] - plain[last] / 8.0).abs() < 1e-12);
    }

    #[test]
    fn eos_may_be_a_list() {
        let c = parse(&format!(r#"{{"model_type": "llama", {BASE}, "eos_token_id": [1, 7]}}"#)).unwrap();
        assert_eq!(c.eos_token_ids, vec![1, 7]);
    }
}
