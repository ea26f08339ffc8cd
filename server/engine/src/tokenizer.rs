//! The checkpoint's tokenizer (`tokenizer.json` through the `tokenizers` crate) with the
//! special tokens, BOS rule and EOS ids from `tokenizer_config.json` and `generation_config.json`,
//! plus an incremental detokenizer that never cuts a UTF-8 character in half.

use std::collections::HashMap;
use std::path::Path;

use serde_json::Value;

use crate::config::token_ids;
use crate::error::{io_err, EngineError, Result};

/// A loaded tokenizer with the checkpoint's special-token conventions.
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    /// How untrusted text is encoded (`encode_text`).
    text_only: TextOnly,
    /// Ids that end generation: generation_config's `eos_token_id` (one or several), the
    /// tokenizer config's `eos_token`, and config.json's `eos_token_id`.
    pub eos_ids: Vec<u32>,
    pub bos_id: Option<u32>,
    /// `Some(true|false)` when tokenizer_config.json says whether to add BOS; `None` leaves it
    /// to tokenizer.json's post-processor.
    add_bos: Option<bool>,
    /// Added tokens marked special (FIM markers, EOS, ...), by content.
    special: HashMap<String, u32>,
}

impl Tokenizer {
    /// The tokenizer a GGUF file's metadata describes (`tokenizer.ggml.*`); `config_eos` are
    /// EOS ids to add to the file's.
    fn from_gguf(file: &crate::gguf::GgufFile, config_eos: &[u32]) -> Result<Self> {
        let t = crate::gguf::tokenizer::build(file)?;
        let mut eos_ids = t.eos_ids;
        for &id in config_eos {
            if !eos_ids.contains(&id) {
                eos_ids.push(id);
            }
        }
        // No post-processor adds BOS here, so there is none to take away when the file says
        // not to add it (a prompt may begin with the BOS text itself, as SmolLM2's
        // `<|im_start|>` does).
        let add_bos = t.add_bos.then_some(true);
        Ok(Self::from_parts(t.inner, t.bos_id, eos_ids, add_bos, &t.special))
    }

    /// Loads `tokenizer.json` and, when present, `tokenizer_config.json` and
    /// `generation_config.json` from a checkpoint directory. `config_eos` are the EOS ids of
    /// config.json.
    ///
    /// `dir` may also be a `.gguf` file: its tokenizer comes from the file's metadata, unless a
    /// `tokenizer.json` lies beside it, which wins (with that directory's configs).
    pub fn load(dir: &Path, config_eos: &[u32]) -> Result<Self> {
        Self::load_with(dir, config_eos, None)
    }

    /// [`Tokenizer::load`], for a `.gguf` file already opened (`file`, the one at `dir`) from
    /// that file's metadata, so that it is not read twice.
    pub fn load_with(dir: &Path, config_eos: &[u32], file: Option<&crate::gguf::GgufFile>) -> Result<Self> {
        if crate::gguf::is_gguf(dir) {
            let beside = dir.parent().unwrap_or(Path::new("."));
            if beside.join("tokenizer.json").is_file() {
                return Self::load(beside, config_eos);
            }
            return match file {
                Some(f) => Self::from_gguf(f, config_eos),
                None => Self::from_gguf(&crate::gguf::GgufFile::open(dir)?, config_eos),
            };
        }
        let path = dir.join("tokenizer.json");
        let bytes = std::fs::read(&path).map_err(io_err(&path))?;
        let inner = tokenizers::Tokenizer::from_bytes(&bytes)
            .map_err(|e| EngineError::Tokenizer { path: path.clone(), message: e.to_string() })?;
        let mut special = HashMap::new();
        for (id, tok) in inner.get_added_tokens_decoder() {
            if tok.special {
                special.insert(tok.content.clone(), id);
            }
        }

        let tc_path = dir.join("tokenizer_config.json");
        let tc = read_optional_json(&tc_path)?;
        let gc_path = dir.join("generation_config.json");
        let gc = read_optional_json(&gc_path)?;
        let named = |v: Option<&Value>| -> Option<u32> {
            let s = match v? {
                Value::String(s) => s.as_str(),
                Value::Object(o) => o.get("content")?.as_str()?,
                _ => return None,
            };
            inner.token_to_id(s)
        };

        let mut eos_ids: Vec<u32> = Vec::new();
        let mut push = |ids: Vec<u32>| {
            for id in ids {
                if !eos_ids.contains(&id) {
                    eos_ids.push(id);
                }
            }
        };
        if let Some(gc) = &gc {
            push(token_ids(gc.get("eos_token_id")).ok_or_else(|| EngineError::Config {
                path: gc_path.clone(),
                message: "eos_token_id must be a token id or a list of them".into(),
            })?);
        }
        if let Some(id) = tc.as_ref().and_then(|tc| named(tc.get("eos_token"))) {
            push(vec![id]);
        }
        push(config_eos.to_vec());

        let bos_id = tc
            .as_ref()
            .and_then(|tc| named(tc.get("bos_token")))
            .or_else(|| gc.as_ref().and_then(|gc| token_ids(gc.get("bos_token_id"))).and_then(|v| v.first().copied()));
        let add_bos = tc.as_ref().and_then(|tc| tc.get("add_bos_token")).and_then(Value::as_bool);
        Ok(Tokenizer { text_only: TextOnly::new(&inner), inner, eos_ids, bos_id, add_bos, special })
    }

    /// A tokenizer from an already built `tokenizers` model with its special-token conventions:
    /// `add_bos` `Some(..)` decides whether [`Tokenizer::encode`] puts `bos_id` first (`None`
    /// leaves it to the post-processor), and `special` (FIM markers, EOT, ...) joins the added
    /// tokens marked special as the tokens [`Tokenizer::special_id`] knows.
    pub fn from_parts(
        inner: tokenizers::Tokenizer,
        bos_id: Option<u32>,
        eos_ids: Vec<u32>,
        add_bos: Option<bool>,
        special: &[(String, u32)],
    ) -> Self {
        let mut map = HashMap::new();
        for (id, tok) in inner.get_added_tokens_decoder() {
            if tok.special {
                map.insert(tok.content.clone(), id);
            }
        }
        for (content, id) in special {
            map.insert(content.clone(), *id);
        }
        Tokenizer { text_only: TextOnly::new(&inner), inner, eos_ids, bos_id, add_bos, special: map }
    }

    /// Encodes text with the tokenizer's post-processor (BOS for Llama-style tokenizers) when
    /// `add_special_tokens` is set. Special-token text such as `<|fim_prefix|>` becomes its id.
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        self.encode_with(&self.inner, text, add_special_tokens)
    }

    /// Encodes untrusted text (a user's code): special-token text such as `<|endoftext|>` stays
    /// text, so that only ids a caller puts in (a template's markers, BOS) are control tokens.
    pub fn encode_text(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        if self.text_only.same_as_inner(text) {
            return self.encode_with(&self.inner, text, add_special_tokens);
        }
        let copy = self.text_only.copy.get_or_init(|| {
            let mut t = self.inner.clone();
            t.set_encode_special_tokens(true);
            t
        });
        self.encode_with(copy, text, add_special_tokens)
    }

    fn encode_with(&self, inner: &tokenizers::Tokenizer, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        let enc = inner.encode_fast(text, add_special_tokens).map_err(|e| EngineError::Tokenize(e.to_string()))?;
        let mut ids = enc.get_ids().to_vec();
        if add_special_tokens {
            if let (Some(add), Some(bos)) = (self.add_bos, self.bos_id) {
                let has = ids.first() == Some(&bos);
                if add && !has {
                    ids.insert(0, bos);
                } else if !add && has {
                    ids.remove(0);
                }
            }
        }
        Ok(ids)
    }

    /// Decodes ids to text; special tokens are dropped when `skip_special` is set.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        self.inner.decode(ids, skip_special).map_err(|e| EngineError::Tokenize(e.to_string()))
    }

    /// The id of a token given by its text (special tokens included).
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.special.get(token).copied().or_else(|| self.inner.token_to_id(token))
    }

    /// The id of a special (added) token, if the tokenizer has it.
    pub fn special_id(&self, token: &str) -> Option<u32> {
        self.special.get(token).copied()
    }

    /// All special tokens by content.
    pub fn special_tokens(&self) -> &HashMap<String, u32> {
        &self.special
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }
}

fn read_optional_json(path: &Path) -> Result<Option<Value>> {
    match std::fs::read_to_string(path) {
        Ok(text) => serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| EngineError::Config { path: path.to_path_buf(), message: format!("not valid JSON: {e}") }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(EngineError::Io { path: path.to_path_buf(), source: e }),
    }
}

/// Turns generated token ids into text pieces as they arrive.
///
/// Byte-level BPE tokens can end in the middle of a UTF-8 character; such a piece is held back
/// until the following tokens complete it. A few prompt tokens are kept as left context so that
/// tokenizers which strip a leading space at the start of a decode (SentencePiece) still give
/// the right first piece.
pub struct StreamDecoder {
    ids: Vec<u32>,
    prefix_offset: usize,
    read_offset: usize,
}

impl StreamDecoder {
    /// `context` is the tail of the prompt (a handful of tokens is enough).
    pub fn new(context: &[u32]) -> Self {
        let ctx = &context[context.len().saturating_sub(4)..];
        StreamDecoder { ids: ctx.to_vec(), prefix_offset: 0, read_offset: ctx.len() }
    }

    /// Adds one token; returns the text it completes (possibly empty).
    pub fn push(&mut self, tok: &Tokenizer, id: u32) -> Result<String> {
        self.ids.push(id);
        let prefix = tok.decode(&self.ids[self.prefix_offset..self.read_offset], true)?;
        let full = tok.decode(&self.ids[self.prefix_offset..], true)?;
        if full.len() > prefix.len() && !full.ends_with('\u{FFFD}') {
            let piece = match full.get(prefix.len()..) {
                Some(p) if full.starts_with(&prefix) => p.to_string(),
                // The decode of the shorter window is not a prefix of the longer one (a
                // normaliser merged across the boundary): emit the longest common extension.
                _ => {
                    let common = full.char_indices().zip(prefix.chars()).take_while(|((_, a), b)| a == b).count();
                    let at = full.char_indices().nth(common).map_or(full.len(), |(i, _)| i);
                    full[at..].to_string()
                }
            };
            self.prefix_offset = self.read_offset;
            self.read_offset = self.ids.len();
            Ok(piece)
        } else {
            Ok(String::new())
        }
    }

    /// Text still held back (an incomplete character at the very end), decoded lossily.
    pub fn flush(&mut self, tok: &Tokenizer) -> Result<String> {
        let prefix = tok.decode(&self.ids[self.prefix_offset..self.read_offset], true)?;
        let full = tok.decode(&self.ids[self.prefix_offset..], true)?;
        self.prefix_offset = self.ids.len();
        self.read_offset = self.ids.len();
        Ok(full.get(prefix.len()..).unwrap_or("").to_string())
    }
}

/// Untrusted text is encoded with special tokens' text read as plain text. That takes a copy of
/// the tokenizer with `set_encode_special_tokens(true)`, as large as the tokenizer itself
/// (vocabulary, merges, cache: several MiB for a 50k vocabulary). The copy encodes differently
/// only where the text holds a special token's content, so it is made the first time some text
/// does; until then (most servers, always) the one tokenizer serves both.
struct TextOnly {
    /// The contents of the special added tokens, matched on the raw text.
    specials: Vec<String>,
    /// A special token is matched after normalisation, where a raw match says nothing: the
    /// copy is then always used.
    always: bool,
    copy: std::sync::OnceLock<tokenizers::Tokenizer>,
}

impl TextOnly {
    fn new(inner: &tokenizers::Tokenizer) -> TextOnly {
        let special: Vec<_> = inner.get_added_tokens_decoder().into_values().filter(|t| t.special).collect();
        TextOnly {
            always: special.iter().any(|t| t.normalized),
            specials: special.into_iter().map(|t| t.content).filter(|c| !c.is_empty()).collect(),
            copy: std::sync::OnceLock::new(),
        }
    }

    /// Whether `text` encodes the same with special tokens read as text as without.
    fn same_as_inner(&self, text: &str) -> bool {
        !self.always && !self.specials.iter().any(|s| text.contains(s.as_str()))
    }
}

#[cfg(test)]
mod text_tests {
    use super::*;

    #[test]
    fn special_token_text_is_a_control_token_only_through_encode() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/qwen2-tied-bf16");
        let tok = Tokenizer::load(&dir, &[]).unwrap();
        let special: Vec<u32> = tok.special_tokens().values().copied().collect();
        let text = "EOS = \"<|endoftext|>\" + \"<|fim_middle|>\"";
        assert!(tok.encode(text, false).unwrap().iter().any(|i| special.contains(i)));
        let plain = tok.encode_text(text, false).unwrap();
        assert!(!plain.iter().any(|i| special.contains(i)), "{plain:?}");
        assert_eq!(tok.decode(&plain, false).unwrap(), text);
        assert_eq!(tok.encode_text("def f(x):", false).unwrap(), tok.encode("def f(x):", false).unwrap());
    }

    #[test]
    fn the_text_only_copy_is_made_only_for_text_that_spells_a_special_token() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/qwen2-tied-bf16");
        let tok = Tokenizer::load(&dir, &[]).unwrap();
        // Text with a special token's pieces but not its whole content (`<|` and `endoftext`):
        // one tokenizer serves, and gives what the copy gives.
        let near = "a = \"<|\" + \"endoftext|>\"  # <|fim_ prefix";
        let plain = tok.encode_text(near, false).unwrap();
        assert!(tok.text_only.copy.get().is_none());
        let mut copy = tok.inner.clone();
        copy.set_encode_special_tokens(true);
        assert_eq!(copy.encode_fast(near, false).unwrap().get_ids(), plain.as_slice());
        // The first text that spells one makes the copy.
        let spelled = "x = \"<|fim_middle|>\"";
        let ids = tok.encode_text(spelled, false).unwrap();
        assert!(tok.text_only.copy.get().is_some());
        assert_eq!(copy.encode_fast(spelled, false).unwrap().get_ids(), ids.as_slice());
        assert_ne!(ids, tok.encode(spelled, false).unwrap());
    }
}
