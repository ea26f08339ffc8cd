//! The tokenizer a GGUF file describes in its `tokenizer.ggml.*` keys, built as a
//! `tokenizers::Tokenizer` so that the rest of the engine cannot tell it from a
//! `tokenizer.json`: byte-level BPE (`gpt2`) with the pre-tokenizer llama.cpp uses for the
//! file's `tokenizer.ggml.pre`, or a SentencePiece BPE vocabulary (`llama`) with scores and
//! byte fallback. Control tokens, BOS / EOS / EOT and the FIM markers become special tokens.

use std::collections::{HashMap, HashSet};

use serde_json::{json, Value as Json};

use super::{GgufFile, Value};
use crate::error::{EngineError, Result};

/// llama.cpp's token types (`tokenizer.ggml.token_type`).
const NORMAL: i64 = 1;
const CONTROL: i64 = 3;
const USER_DEFINED: i64 = 4;

/// The FIM marker keys of a GGUF file and, for files without them, the texts the markers have
/// in the families the server knows (Qwen2.5-Coder, StarCoder, DeepSeek-Coder, CodeLlama).
const FIM: &[(&str, &[&str])] = &[
    ("fim_pre", &["<|fim_prefix|>", "<fim_prefix>", "<｜fim▁begin｜>", "▁<PRE>"]),
    ("fim_suf", &["<|fim_suffix|>", "<fim_suffix>", "<｜fim▁hole｜>", "▁<SUF>"]),
    ("fim_mid", &["<|fim_middle|>", "<fim_middle>", "<｜fim▁end｜>", "▁<MID>"]),
    ("fim_pad", &["<|fim_pad|>", "<fim_pad>"]),
    ("fim_rep", &["<|repo_name|>", "<repo_name>"]),
    ("fim_sep", &["<|file_sep|>", "<file_sep>"]),
];

/// Older spellings of the FIM keys (CodeLlama files).
const FIM_OLD: &[(&str, &str)] = &[("fim_pre", "prefix"), ("fim_suf", "suffix"), ("fim_mid", "middle")];

/// Texts llama.cpp recognises as end-of-turn tokens when a file names none.
const EOT_TEXTS: &[&str] =
    &["<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<EOT>", "▁<EOT>", "<|EOT|>"];

/// What the engine's [`crate::Tokenizer`] needs besides the `tokenizers` model.
pub struct GgufTokenizer {
    pub inner: tokenizers::Tokenizer,
    pub bos_id: Option<u32>,
    /// EOS, then EOT (by key, else by text), each once.
    pub eos_ids: Vec<u32>,
    pub add_bos: bool,
    /// FIM markers and end-of-turn tokens found, by content.
    pub special: Vec<(String, u32)>,
}

/// The pre-tokenizer regexes llama.cpp uses for `tokenizer.ggml.pre` (llama-vocab.cpp), applied
/// one after another, each splitting the pieces of the one before, and whether merges are
/// skipped for words already in the vocabulary (`ignore_merges`).
fn pre_tokenizer(pre: &str) -> Option<(&'static [&'static str], bool)> {
    const GPT2: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)";
    const LLAMA3: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    const QWEN2: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    Some(match pre {
        "llama-bpe" | "llama3" | "llama-v3" | "dbrx" | "smaug-bpe" => (&[LLAMA3], true),
        "qwen2" | "deepseek-r1-qwen" | "megrez" => (&[QWEN2], false),
        "starcoder" | "smollm" | "refact" | "command-r" | "codeshell" | "exaone" | "minerva" => {
            (&[r"\p{N}", GPT2], false)
        }
        "gpt-2" | "gpt2" | "mpt" | "olmo" | "jais" => (&[GPT2], false),
        "deepseek-coder" => (&["[\r\n]", r"\s?\p{L}+", r"\s?\p{P}+", "[一-龥ࠀ-一가-퟿]+", r"\p{N}"], false),
        _ => return None,
    })
}

const KNOWN_PRE: &str = "llama-bpe, qwen2, smollm, starcoder, deepseek-coder, gpt2 (and their llama.cpp aliases)";

/// GPT-2's byte-to-character table: printable bytes stand for themselves, the rest are mapped
/// to U+0100 and up.
fn byte_chars() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut n = 0u32;
    for b in 0..=255u8 {
        let printable = matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
        table[b as usize] = if printable {
            char::from(b)
        } else {
            n += 1;
            char::from_u32(255 + n).unwrap_or('\u{FFFD}')
        };
    }
    table
}

/// Reads the tokenizer of `file`.
pub fn build(file: &GgufFile) -> Result<GgufTokenizer> {
    let path = &file.path;
    let err = |message: String| EngineError::Tokenizer { path: path.clone(), message };
    let strings = |key: &str, required: bool| -> Result<Option<Vec<&str>>> {
        match file.get(key) {
            None if required => Err(err(format!("metadata key {key} is missing"))),
            None => Ok(None),
            Some(Value::Array(a)) => a
                .iter()
                .enumerate()
                .map(|(i, v)| match v {
                    Value::Str(s) => Ok(s.as_str()),
                    v => Err(err(format!("metadata key {key}[{i}] must be a string, got {}", v.type_name()))),
                })
                .collect::<Result<Vec<_>>>()
                .map(Some),
            Some(v) => Err(err(format!("metadata key {key} must be an array of strings, got {}", v.type_name()))),
        }
    };
    let numbers = |key: &str, n: usize| -> Result<Option<Vec<f64>>> {
        match file.get(key) {
            None => Ok(None),
            Some(Value::Array(a)) if a.len() == n => a
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    v.as_f64()
                        .ok_or_else(|| err(format!("metadata key {key}[{i}] must be a number, got {}", v.type_name())))
                })
                .collect::<Result<Vec<_>>>()
                .map(Some),
            Some(Value::Array(a)) => Err(err(format!("metadata key {key} has {} entries for {n} tokens", a.len()))),
            Some(v) => Err(err(format!("metadata key {key} must be an array, got {}", v.type_name()))),
        }
    };
    let opt_bool = |key: &str| -> Result<Option<bool>> {
        match file.get(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(v) => Err(err(format!("metadata key {key} must be a bool, got {}", v.type_name()))),
        }
    };
    let tokens = strings("tokenizer.ggml.tokens", true)?.unwrap_or_default();
    if tokens.is_empty() || tokens.len() > u32::MAX as usize {
        return Err(err(format!("metadata key tokenizer.ggml.tokens holds {} tokens", tokens.len())));
    }
    let n = tokens.len();
    let id_key = |key: &str| -> Result<Option<u32>> {
        match file.get(key) {
            None => Ok(None),
            Some(v) => match v.as_u64() {
                Some(id) if (id as usize) < n => Ok(Some(id as u32)),
                // llama.cpp writes -1 (as a wrapped uint32) for "none".
                Some(0xFFFF_FFFF) => Ok(None),
                _ => Err(err(format!("metadata key {key} must be a token id below {n}, got {v:?}"))),
            },
        }
    };
    let types: Vec<i64> = numbers("tokenizer.ggml.token_type", n)?
        .map(|v| v.into_iter().map(|t| t as i64).collect())
        .unwrap_or_else(|| vec![NORMAL; n]);
    let model = match file.get("tokenizer.ggml.model") {
        Some(Value::Str(s)) => s.as_str(),
        Some(v) => {
            return Err(err(format!("metadata key tokenizer.ggml.model must be a string, got {}", v.type_name())))
        }
        None => return Err(err("metadata key tokenizer.ggml.model is missing".into())),
    };

    let bos_id = id_key("tokenizer.ggml.bos_token_id")?;
    let eos_id = id_key("tokenizer.ggml.eos_token_id")?;
    let by_text: HashMap<&str, u32> = tokens.iter().enumerate().map(|(i, t)| (*t, i as u32)).collect();
    let eot_id = match id_key("tokenizer.ggml.eot_token_id")? {
        Some(id) => Some(id),
        None => EOT_TEXTS
            .iter()
            .filter_map(|t| by_text.get(t).copied())
            .find(|&id| types[id as usize] == CONTROL && Some(id) != eos_id),
    };
    let mut special: Vec<(String, u32)> = Vec::new();
    for (key, texts) in FIM {
        let old = FIM_OLD.iter().find(|(k, _)| k == key).map(|(_, o)| format!("tokenizer.ggml.{o}_token_id"));
        let mut id = id_key(&format!("tokenizer.ggml.{key}_token_id"))?;
        if id.is_none() {
            if let Some(old) = old {
                id = id_key(&old)?;
            }
        }
        let id = id.or_else(|| texts.iter().find_map(|t| by_text.get(t).copied()));
        if let Some(id) = id {
            special.push((tokens[id as usize].to_string(), id));
        }
    }
    let mut eos_ids = Vec::new();
    for id in [eos_id, eot_id].into_iter().flatten() {
        if !eos_ids.contains(&id) {
            eos_ids.push(id);
            special.push((tokens[id as usize].to_string(), id));
        }
    }
    if let Some(id) = bos_id {
        special.push((tokens[id as usize].to_string(), id));
    }
    let special_ids: HashSet<u32> = special.iter().map(|(_, id)| *id).collect();

    let (json, add_bos_default) = match model {
        "gpt2" => {
            let pre = match file.get("tokenizer.ggml.pre") {
                Some(Value::Str(s)) => s.as_str(),
                Some(v) => {
                    return Err(err(format!("metadata key tokenizer.ggml.pre must be a string, got {}", v.type_name())))
                }
                None => "gpt2",
            };
            let (regexes, ignore_merges) = pre_tokenizer(pre).ok_or_else(|| {
                err(format!("tokenizer.ggml.pre \"{pre}\" is not supported (supported: {KNOWN_PRE})"))
            })?;
            let merges = strings("tokenizer.ggml.merges", true)?.unwrap_or_default();
            (byte_level(&tokens, &types, &merges, regexes, ignore_merges, &special_ids), false)
        }
        "llama" => {
            let scores = numbers("tokenizer.ggml.scores", n)?.ok_or_else(|| {
                err("metadata key tokenizer.ggml.scores is missing (a SentencePiece vocabulary needs it)".into())
            })?;
            let unk = id_key("tokenizer.ggml.unknown_token_id")?;
            let prefix = opt_bool("tokenizer.ggml.add_space_prefix")?.unwrap_or(true);
            (sentencepiece(&tokens, &types, &scores, unk, prefix, &special_ids), true)
        }
        other => {
            return Err(err(format!(
            "tokenizer.ggml.model \"{other}\" is not supported (supported: gpt2 byte-level BPE, llama SentencePiece)"
        )))
        }
    };
    let bytes = serde_json::to_vec(&json).map_err(|e| err(e.to_string()))?;
    let inner = tokenizers::Tokenizer::from_bytes(&bytes).map_err(|e| err(format!("building the tokenizer: {e}")))?;
    let add_bos = opt_bool("tokenizer.ggml.add_bos_token")?.unwrap_or(add_bos_default);
    special.sort();
    special.dedup();
    Ok(GgufTokenizer { inner, bos_id, eos_ids, add_bos, special })
}

fn added_token(id: usize, content: &str, special: bool) -> Json {
    json!({"id": id, "content": content, "single_word": false, "lstrip": false, "rstrip": false,
           "normalized": false, "special": special})
}

/// A vocabulary as the `tokenizers` BPE model wants it: the first id of each text wins, as in
/// llama.cpp's text-to-id map.
fn vocab_map(tokens: &[String]) -> serde_json::Map<String, Json> {
    let mut vocab = serde_json::Map::with_capacity(tokens.len());
    for (i, t) in tokens.iter().enumerate() {
        vocab.entry(t.clone()).or_insert(json!(i));
    }
    vocab
}

fn byte_level(
    tokens: &[&str],
    types: &[i64],
    merges: &[&str],
    regexes: &[&str],
    ignore_merges: bool,
    special: &HashSet<u32>,
) -> Json {
    let table = byte_chars();
    let alphabet: HashSet<char> = table.iter().copied().collect();
    // A token spelled outside the byte alphabet (a mislabelled added token) is respelled, as
    // transformers does, so the model's vocabulary stays whole.
    let spelled: Vec<String> = tokens
        .iter()
        .map(|t| {
            if t.chars().all(|c| alphabet.contains(&c)) {
                t.to_string()
            } else {
                t.bytes().map(|b| table[b as usize]).collect()
            }
        })
        .collect();
    let mut added = Vec::new();
    for (i, t) in tokens.iter().enumerate() {
        let control = types[i] == CONTROL || special.contains(&(i as u32));
        if control && t.chars().all(|c| alphabet.contains(&c)) {
            added.push(added_token(i, t, true));
        } else if types[i] == USER_DEFINED {
            added.push(added_token(i, t, false));
        }
    }
    let mut pre: Vec<Json> = regexes
        .iter()
        .map(|r| json!({"type": "Split", "pattern": {"Regex": r}, "behavior": "Isolated", "invert": false}))
        .collect();
    pre.push(json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false}));
    json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": added, "normalizer": null,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": pre},
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                  "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
                  "ignore_merges": ignore_merges, "vocab": vocab_map(&spelled), "merges": merges},
    })
}

/// A SentencePiece BPE vocabulary: merges recovered from the scores (a pair merges with the
/// score of the token it makes, higher first, as SentencePiece and llama.cpp choose), spaces as
/// `▁`, unknown characters as `<0xNN>` byte tokens.
fn sentencepiece(
    tokens: &[&str],
    types: &[i64],
    scores: &[f64],
    unk: Option<u32>,
    add_space_prefix: bool,
    special: &HashSet<u32>,
) -> Json {
    let owned: Vec<String> = tokens.iter().map(|t| t.to_string()).collect();
    let index: HashMap<&str, usize> = {
        let mut m = HashMap::with_capacity(tokens.len());
        for (i, t) in tokens.iter().enumerate() {
            m.entry(*t).or_insert(i);
        }
        m
    };
    let mut merges: Vec<(f64, usize, usize, &str, &str)> = Vec::new();
    for (i, t) in tokens.iter().enumerate() {
        if types[i] != NORMAL && types[i] != USER_DEFINED {
            continue;
        }
        for (at, _) in t.char_indices().skip(1) {
            let (l, r) = t.split_at(at);
            if let (Some(&a), Some(&b)) = (index.get(l), index.get(r)) {
                merges.push((scores[i], a, b, l, r));
            }
        }
    }
    merges.sort_by(|x, y| y.0.total_cmp(&x.0).then(x.1.cmp(&y.1)).then(x.2.cmp(&y.2)));
    let merges: Vec<String> = merges.iter().map(|m| format!("{} {}", m.3, m.4)).collect();
    let mut added = Vec::new();
    for (i, t) in tokens.iter().enumerate() {
        if types[i] == CONTROL || special.contains(&(i as u32)) {
            added.push(added_token(i, t, true));
        } else if types[i] == USER_DEFINED {
            added.push(added_token(i, t, false));
        }
    }
    let replace = json!({"type": "Replace", "pattern": {"String": " "}, "content": "▁"});
    let normalizer = if add_space_prefix {
        json!({"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": "▁"}, replace]})
    } else {
        replace
    };
    let strip = if add_space_prefix { 1 } else { 0 };
    json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": added,
        "normalizer": normalizer, "pre_tokenizer": null, "post_processor": null,
        "decoder": {"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
            {"type": "ByteFallback"}, {"type": "Fuse"},
            {"type": "Strip", "content": " ", "start": strip, "stop": 0}]},
        "model": {"type": "BPE", "dropout": null, "unk_token": unk.map(|u| tokens[u as usize]),
                  "continuing_subword_prefix": null, "end_of_word_suffix": null, "fuse_unk": true,
                  "byte_fallback": true, "ignore_merges": false, "vocab": vocab_map(&owned), "merges": merges},
    })
}
