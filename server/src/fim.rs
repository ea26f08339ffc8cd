//! Prompt templates: fill-in-the-middle per model family, repository-level context, and the
//! token budget that decides what is kept when everything does not fit.

use ghostline_api::ContextSnippet;
use ghostline_engine::Tokenizer;

/// The FIM conventions of one model family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FimTemplate {
    pub family: &'static str,
    pub prefix: String,
    pub suffix: String,
    pub middle: String,
    /// Marker before each context file (`<|file_sep|>` for Qwen), if the family has one.
    pub file_sep: Option<String>,
    /// Whether the prompt starts with the tokenizer's BOS token.
    pub bos: bool,
    /// Text placed between the prefix marker and the prefix (CodeLlama puts a space there).
    pub prefix_lead: &'static str,
    /// Text placed after the suffix (CodeLlama: " " before `<MID>`).
    pub suffix_tail: &'static str,
}

/// The families the server knows, in detection order.
pub fn known_templates() -> Vec<FimTemplate> {
    vec![
        FimTemplate {
            family: "qwen",
            prefix: "<|fim_prefix|>".into(),
            suffix: "<|fim_suffix|>".into(),
            middle: "<|fim_middle|>".into(),
            file_sep: Some("<|file_sep|>".into()),
            bos: false,
            prefix_lead: "",
            suffix_tail: "",
        },
        FimTemplate {
            family: "starcoder",
            prefix: "<fim_prefix>".into(),
            suffix: "<fim_suffix>".into(),
            middle: "<fim_middle>".into(),
            file_sep: Some("<file_sep>".into()),
            bos: false,
            prefix_lead: "",
            suffix_tail: "",
        },
        FimTemplate {
            family: "deepseek",
            prefix: "<｜fim▁begin｜>".into(),
            suffix: "<｜fim▁hole｜>".into(),
            middle: "<｜fim▁end｜>".into(),
            file_sep: None,
            bos: true,
            prefix_lead: "",
            suffix_tail: "",
        },
        FimTemplate {
            family: "codellama",
            prefix: "▁<PRE>".into(),
            suffix: "▁<SUF>".into(),
            middle: "▁<MID>".into(),
            file_sep: None,
            bos: true,
            prefix_lead: " ",
            suffix_tail: "",
        },
    ]
}

/// Picks the template whose three markers are all tokens of the tokenizer, or the one named.
pub fn detect(tok: &Tokenizer, name: Option<&str>) -> Result<Option<FimTemplate>, String> {
    let all = known_templates();
    if let Some(name) = name {
        if name == "none" {
            return Ok(None);
        }
        let t = all
            .into_iter()
            .find(|t| t.family == name)
            .ok_or_else(|| format!("unknown FIM template \"{name}\" (known: qwen, starcoder, deepseek, codellama, none)"))?;
        for m in [&t.prefix, &t.suffix, &t.middle] {
            if tok.token_id(m).is_none() {
                return Err(format!("FIM template \"{name}\" needs the token {m}, which this tokenizer lacks"));
            }
        }
        return Ok(Some(t));
    }
    Ok(all.into_iter().find(|t| [&t.prefix, &t.suffix, &t.middle].iter().all(|m| tok.token_id(m).is_some())))
}

impl FimTemplate {
    /// Ids of the special tokens that end a completion in code: the markers and the file
    /// separator (the model has run past the hole when it emits one).
    pub fn stop_ids(&self, tok: &Tokenizer) -> Vec<u32> {
        let mut v: Vec<u32> = [&self.prefix, &self.suffix, &self.middle]
            .into_iter()
            .chain(self.file_sep.as_ref())
            .filter_map(|m| tok.token_id(m))
            .collect();
        for extra in ["<|fim_pad|>", "<|repo_name|>", "<|endoftext|>", "<EOT>", "<|EOT|>"] {
            if let Some(id) = tok.special_id(extra) {
                v.push(id);
            }
        }
        v.sort_unstable();
        v.dedup();
        v
    }
}

/// A templated prompt and what was cut to fit.
#[derive(Debug, Clone, PartialEq)]
pub struct Prompt {
    pub ids: Vec<u32>,
    pub trimmed_prefix_tokens: usize,
    pub trimmed_suffix_tokens: usize,
    pub dropped_snippets: usize,
}

/// Why a prompt could not be built.
#[derive(Debug, Clone, PartialEq)]
pub enum PromptError {
    TooLong { tokens: usize, budget: usize },
    Tokenize(String),
}

/// Builds the token ids of a FIM prompt within `budget` tokens. Context snippets are dropped
/// first (the last ones, which rank lowest), then, when `truncate` allows it, the far end of the
/// suffix and the far start of the prefix, keeping twice as much prefix as suffix.
pub fn build_fim(
    tok: &Tokenizer,
    t: &FimTemplate,
    prefix: &str,
    suffix: &str,
    context: &[ContextSnippet],
    budget: usize,
    truncate: bool,
) -> Result<Prompt, PromptError> {
    let enc = |s: &str| tok.encode(s, false).map_err(|e| PromptError::Tokenize(e.to_string()));
    let special = |s: &str| tok.token_id(s).ok_or_else(|| PromptError::Tokenize(format!("missing token {s}")));
    let (pre_id, suf_id, mid_id) = (special(&t.prefix)?, special(&t.suffix)?, special(&t.middle)?);
    let bos: Vec<u32> = if t.bos { tok.bos_id.into_iter().collect() } else { Vec::new() };

    let mut p_ids = enc(&format!("{}{prefix}", t.prefix_lead))?;
    let mut s_ids = enc(&format!("{suffix}{}", t.suffix_tail))?;
    let fixed = bos.len() + 3;
    let core = fixed + p_ids.len() + s_ids.len();

    let mut trimmed_prefix_tokens = 0;
    let mut trimmed_suffix_tokens = 0;
    if core > budget {
        if !truncate {
            return Err(PromptError::TooLong { tokens: core, budget });
        }
        let room = budget.saturating_sub(fixed);
        if room == 0 {
            return Err(PromptError::TooLong { tokens: core, budget });
        }
        // Prefix gets two thirds of the room unless the suffix needs less.
        let s_keep = s_ids.len().min(room / 3).max(room.saturating_sub(p_ids.len()));
        let s_keep = s_keep.min(s_ids.len());
        let p_keep = (room - s_keep).min(p_ids.len());
        trimmed_suffix_tokens = s_ids.len() - s_keep;
        trimmed_prefix_tokens = p_ids.len() - p_keep;
        s_ids.truncate(s_keep);
        p_ids.drain(..p_ids.len() - p_keep);
    }
    let core = fixed + p_ids.len() + s_ids.len();

    // Repository-level context: each snippet as `<sep>path\ntext\n`, while it fits.
    let mut ctx_ids = Vec::new();
    let mut dropped_snippets = 0;
    if let (Some(sep), false) = (&t.file_sep, context.is_empty()) {
        let sep_id = special(sep)?;
        for (i, snip) in context.iter().enumerate() {
            let mut piece = vec![sep_id];
            piece.extend(enc(&format!("{}\n{}\n", snip.path, snip.text))?);
            if core + ctx_ids.len() + piece.len() + 1 > budget {
                dropped_snippets = context.len() - i;
                break;
            }
            ctx_ids.extend(piece);
        }
        if !ctx_ids.is_empty() {
            // The current file's own separator line precedes the FIM markers.
            ctx_ids.push(sep_id);
        }
    } else {
        dropped_snippets = context.len();
    }

    let mut ids = bos;
    ids.extend(ctx_ids);
    ids.push(pre_id);
    ids.extend(p_ids);
    ids.push(suf_id);
    ids.extend(s_ids);
    ids.push(mid_id);
    Ok(Prompt { ids, trimmed_prefix_tokens, trimmed_suffix_tokens, dropped_snippets })
}

/// Builds a plain left-to-right prompt within `budget`, dropping the oldest tokens when
/// `truncate` allows it.
pub fn build_plain(tok: &Tokenizer, prompt: &str, budget: usize, truncate: bool) -> Result<Prompt, PromptError> {
    let mut ids = tok.encode(prompt, true).map_err(|e| PromptError::Tokenize(e.to_string()))?;
    let mut trimmed = 0;
    if ids.len() > budget {
        if !truncate || budget == 0 {
            return Err(PromptError::TooLong { tokens: ids.len(), budget });
        }
        trimmed = ids.len() - budget;
        let keep_bos = tok.bos_id.is_some() && ids.first() == tok.bos_id.as_ref();
        if keep_bos {
            ids.drain(1..1 + trimmed);
        } else {
            ids.drain(..trimmed);
        }
    }
    if ids.is_empty() {
        // An empty prompt still needs one token to condition on.
        if let Some(b) = tok.bos_id.or_else(|| tok.eos_ids.first().copied()) {
            ids.push(b);
        }
    }
    Ok(Prompt { ids, trimmed_prefix_tokens: trimmed, trimmed_suffix_tokens: 0, dropped_snippets: 0 })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn qwen_tok() -> Tokenizer {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("engine/tests/fixtures/qwen2-tied-bf16");
        Tokenizer::load(&dir, &[]).unwrap()
    }

    #[test]
    fn qwen_template_is_detected_and_matches_the_contract() {
        let tok = qwen_tok();
        let t = detect(&tok, None).unwrap().unwrap();
        assert_eq!(t.family, "qwen");
        let p = build_fim(&tok, &t, "def f(", "):\n", &[], 1000, false).unwrap();
        let direct = tok.encode("<|fim_prefix|>def f(<|fim_suffix|>):\n<|fim_middle|>", false).unwrap();
        assert_eq!(p.ids, direct);
    }

    #[test]
    fn repo_level_context_uses_file_separators() {
        let tok = qwen_tok();
        let t = detect(&tok, None).unwrap().unwrap();
        let ctx = vec![ContextSnippet { path: "a.py".into(), text: "x = 1".into() }];
        let p = build_fim(&tok, &t, "y = ", "", &ctx, 1000, false).unwrap();
        let direct = tok
            .encode("<|file_sep|>a.py\nx = 1\n<|file_sep|><|fim_prefix|>y = <|fim_suffix|><|fim_middle|>", false)
            .unwrap();
        assert_eq!(p.ids, direct);
    }

    #[test]
    fn budget_drops_context_first_then_trims_far_ends() {
        let tok = qwen_tok();
        let t = detect(&tok, None).unwrap().unwrap();
        let ctx = vec![ContextSnippet { path: "a.py".into(), text: "import os\n".repeat(20) }];
        let prefix = "line one\n".repeat(30);
        let suffix = "tail\n".repeat(30);
        let full = build_fim(&tok, &t, &prefix, &suffix, &[], 10_000, false).unwrap().ids.len();
        let p = build_fim(&tok, &t, &prefix, &suffix, &ctx, full, false).unwrap();
        assert_eq!((p.dropped_snippets, p.ids.len()), (1, full));
        let e = build_fim(&tok, &t, &prefix, &suffix, &ctx, full - 10, false).unwrap_err();
        assert!(matches!(e, PromptError::TooLong { .. }));
        let p = build_fim(&tok, &t, &prefix, &suffix, &ctx, 60, true).unwrap();
        assert!(p.ids.len() <= 60);
        assert!(p.trimmed_prefix_tokens > 0 && p.trimmed_suffix_tokens > 0);
        // What is kept is the text nearest the cursor.
        let text = tok.decode(&p.ids, false).unwrap();
        assert!(text.contains("line one\n<|fim_suffix|>tail\n"), "{text}");
    }

    #[test]
    fn a_tokenizer_without_fim_tokens_has_no_template() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("engine/tests/fixtures/llama-gqa-f32");
        let tok = Tokenizer::load(&dir, &[]).unwrap();
        assert_eq!(detect(&tok, None).unwrap(), None);
        assert!(detect(&tok, Some("qwen")).is_err());
    }
}
