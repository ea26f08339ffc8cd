//! The prompt as text, for engines that take no token ids (TGI's `/v1/completions` takes only
//! strings): the gateway's token ids rendered so that the upstream, which parses special-token
//! text in a prompt string into control tokens (llama.cpp, vLLM and TGI all do), finds exactly
//! the control tokens the gateway put in (the FIM template's markers, BOS) and no other. Runs of
//! ordinary ids (the user's prefix, suffix and snippets) are decoded to their text, and every
//! occurrence in it of a special token's text gets a U+200B ZERO WIDTH SPACE after its first
//! character, so that it tokenizes as ordinary text; the control ids become their text. The
//! result is checked with the tokenizer itself: its special tokens must be the prompt's, in
//! order, or the prompt is refused rather than sent.

use std::collections::HashMap;

use ghostline_engine::Tokenizer;

/// What breaks a special token's text inside user text.
pub const BREAK: char = '\u{200B}';

/// The prompt `ids` as text whose special tokens are the control ids among `ids` and no others.
pub fn render(tok: &Tokenizer, ids: &[u32]) -> Result<String, String> {
    let specials: HashMap<u32, &str> = tok.special_tokens().iter().map(|(t, &id)| (id, t.as_str())).collect();
    let texts: Vec<&str> = specials.values().copied().filter(|t| !t.is_empty()).collect();
    let decode = |upto: usize| tok.decode(&ids[..upto], false).map_err(|e| e.to_string());
    let mut out = String::new();
    // The text of `ids[..done]`, decoded as one (so that a run's first token keeps its leading
    // space where a tokenizer's decoder strips the sequence's first).
    let mut done_text = String::new();
    let flush = |upto: usize, done_text: &mut String, out: &mut String| -> Result<(), String> {
        let text = decode(upto)?;
        let run = text.strip_prefix(done_text.as_str()).ok_or("the tokenizer decodes the prompt inconsistently")?;
        out.push_str(&neutralise(run, &texts));
        *done_text = text;
        Ok(())
    };
    let mut run_start = 0;
    for (i, id) in ids.iter().enumerate() {
        let Some(&special) = specials.get(id) else { continue };
        if run_start < i {
            flush(i, &mut done_text, &mut out)?;
        }
        out.push_str(special);
        done_text = decode(i + 1)?;
        run_start = i + 1;
    }
    if run_start < ids.len() {
        flush(ids.len(), &mut done_text, &mut out)?;
    }
    let wanted: Vec<u32> = ids.iter().copied().filter(|id| specials.contains_key(id)).collect();
    let back = tok.encode(&out, false).map_err(|e| e.to_string())?;
    let found: Vec<u32> = back.into_iter().filter(|id| specials.contains_key(id)).collect();
    if found != wanted {
        return Err(format!(
            "the prompt cannot be sent as text without changing its control tokens ({wanted:?} became {found:?}); \
             use an upstream that takes token ids (--upstream-prompt tokens)"
        ));
    }
    Ok(out)
}

/// `text` with a [`BREAK`] after the first character of every occurrence of one of `specials`.
pub fn neutralise(text: &str, specials: &[&str]) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    loop {
        let Some(at) = specials.iter().filter_map(|s| rest.find(s)).min() else {
            out.push_str(rest);
            return out;
        };
        let first = rest[at..].chars().next().map_or(1, char::len_utf8);
        out.push_str(&rest[..at + first]);
        out.push(BREAK);
        rest = &rest[at + first..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn tiny() -> Tokenizer {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/ghostline-tiny");
        Tokenizer::load(&dir, &[]).unwrap()
    }

    #[test]
    fn neutralising_breaks_every_occurrence_and_nothing_else() {
        let s = ["<|fim_prefix|>", "<|endoftext|>"];
        assert_eq!(neutralise("plain text", &s), "plain text");
        let n = neutralise("a<|fim_prefix|>b<|endoftext|><|fim_prefix|>", &s);
        assert_eq!(n, "a<\u{200B}|fim_prefix|>b<\u{200B}|endoftext|><\u{200B}|fim_prefix|>");
        assert!(s.iter().all(|t| !n.contains(t)));
        assert_eq!(n.replace(BREAK, ""), "a<|fim_prefix|>b<|endoftext|><|fim_prefix|>");
    }

    #[test]
    fn user_text_that_spells_control_tokens_renders_to_text_without_them() {
        let tok = tiny();
        let is_special = |id: &u32| tok.special_tokens().values().any(|s| s == id);
        let [pre, suf, mid] =
            ["<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>"].map(|t| tok.special_id(t).unwrap());
        // A FIM prompt whose prefix and suffix spell every special token of the tokenizer.
        let spelled: String = tok.special_tokens().keys().map(|t| format!("x = '{t}'\n")).collect();
        let prefix = format!("# {spelled}def f(");
        let suffix = format!(")\n{spelled}");
        let mut ids = vec![pre];
        ids.extend(tok.encode_text(&prefix, false).unwrap());
        ids.push(suf);
        ids.extend(tok.encode_text(&suffix, false).unwrap());
        ids.push(mid);
        assert_eq!(ids.iter().filter(|&&id| is_special(&id)).count(), 3, "the user parts were encoded as text");
        let text = render(&tok, &ids).unwrap();
        // Re-tokenized with special-token parsing on, as an upstream does, the text holds the
        // template's three control tokens and no other; its user parts hold none.
        let back = tok.encode(&text, false).unwrap();
        let found: Vec<u32> = back.iter().copied().filter(|id| is_special(id)).collect();
        assert_eq!(found, vec![pre, suf, mid], "{text:?}");
        let cut =
            ["<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>"].iter().fold(text.clone(), |t, m| t.replace(m, "\0"));
        let parts: Vec<&str> = cut.split('\0').collect();
        assert_eq!(parts.len(), 4, "{text:?}");
        for (part, was) in [(parts[1], &prefix), (parts[2], &suffix)] {
            assert!(tok.encode(part, false).unwrap().iter().all(|id| !is_special(id)), "{part:?}");
            assert_eq!(&part.replace(BREAK, ""), was, "only the breaks were added");
        }
    }

    #[test]
    fn ordinary_prompts_render_to_their_own_text() {
        let tok = tiny();
        let code = "def fibonacci(n):\n    if n < 2:\n        return n\n";
        let ids = tok.encode_text(code, false).unwrap();
        assert_eq!(render(&tok, &ids).unwrap(), code);
        assert_eq!(tok.encode(code, false).unwrap(), ids, "the upstream would compute on the same ids");
    }
}
