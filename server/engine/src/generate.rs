//! Generation on top of the forward pass: stop strings on decoded text, EOS, max tokens and
//! streaming, for one sequence at a time. (The server's scheduler drives `Model::forward`
//! directly for batches and reuses `StopMatcher` and `StreamDecoder` per sequence.)

use crate::error::Result;
use crate::kv::{KvPool, SeqKv};
use crate::model::{BatchItem, Logits, Model};
use crate::sampling::{Sampler, SamplingParams};
use crate::tokenizer::{StreamDecoder, Tokenizer};

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    /// EOS, a stop token or a stop string.
    Stop,
    /// `max_tokens` reached.
    Length,
    /// The caller's callback asked to stop.
    Cancelled,
}

/// Finds stop strings in streamed text, including one split across tokens.
///
/// Text that could still turn out to be the start of a stop string is held back; text is
/// released as soon as it cannot be. The stop string itself is never released.
#[derive(Debug, Clone, Default)]
pub struct StopMatcher {
    stops: Vec<String>,
    pending: String,
}

impl StopMatcher {
    pub fn new(stops: &[String]) -> Self {
        StopMatcher { stops: stops.iter().filter(|s| !s.is_empty()).cloned().collect(), pending: String::new() }
    }

    /// Feeds a piece of text; returns `(text safe to emit, whether a stop string was hit)`.
    pub fn push(&mut self, piece: &str) -> (String, bool) {
        self.pending.push_str(piece);
        let hit = self.stops.iter().filter_map(|s| self.pending.find(s.as_str())).min();
        if let Some(at) = hit {
            let out = self.pending[..at].to_string();
            self.pending.clear();
            return (out, true);
        }
        // Hold back the longest tail of `pending` that is a proper prefix of some stop string.
        let mut hold_from = self.pending.len();
        for (i, _) in self.pending.char_indices() {
            let tail = &self.pending[i..];
            if self.stops.iter().any(|s| s.len() > tail.len() && s.starts_with(tail)) {
                hold_from = i;
                break;
            }
        }
        let out = self.pending[..hold_from].to_string();
        self.pending.drain(..hold_from);
        (out, false)
    }

    /// Releases held-back text at the end of generation.
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.pending)
    }

    /// Ends the stream with its last piece of text (the decoder's flushed tail): returns the
    /// text to emit and whether a stop string was hit; held-back text is released if not.
    pub fn finish_with(&mut self, tail: &str) -> (String, bool) {
        let (mut out, hit) = self.push(tail);
        if !hit {
            out.push_str(&self.finish());
        }
        (out, hit)
    }
}

/// Settings of one generation.
#[derive(Debug, Clone)]
pub struct GenerateParams {
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    /// Stop strings, matched on decoded text.
    pub stop: Vec<String>,
    /// Token ids that end generation (typically the EOS ids).
    pub stop_ids: Vec<u32>,
}

/// The result of one generation.
#[derive(Debug, Clone, PartialEq)]
pub struct Generation {
    pub tokens: Vec<u32>,
    pub text: String,
    pub finish: Finish,
    pub prompt_tokens: usize,
}

/// Generates from `prompt` on a fresh sequence. `on_text` receives each piece of text as soon
/// as it is final and returns `false` to cancel.
pub fn generate(
    model: &Model,
    tok: &Tokenizer,
    pool: &mut KvPool,
    prompt: &[u32],
    params: &GenerateParams,
    mut on_text: impl FnMut(&str) -> bool,
) -> Result<Generation> {
    let mut seq = SeqKv::default();
    let r = generate_on(model, tok, pool, &mut seq, prompt, params, &mut on_text);
    pool.release(&mut seq);
    r
}

fn generate_on(
    model: &Model,
    tok: &Tokenizer,
    pool: &mut KvPool,
    seq: &mut SeqKv,
    prompt: &[u32],
    params: &GenerateParams,
    on_text: &mut dyn FnMut(&str) -> bool,
) -> Result<Generation> {
    let mut sampler = Sampler::new(params.sampling.clone());
    let mut decoder = StreamDecoder::new(prompt);
    let mut stops = StopMatcher::new(&params.stop);
    let mut text = String::new();
    let mut tokens = Vec::new();
    let mut input: Vec<u32> = prompt.to_vec();
    let mut finish = Finish::Length;
    let emit = |s: &str, text: &mut String, on_text: &mut dyn FnMut(&str) -> bool| -> bool {
        if s.is_empty() {
            return true;
        }
        text.push_str(s);
        on_text(s)
    };
    while tokens.len() < params.max_tokens {
        let logits = model.forward(pool, &mut [BatchItem { kv: seq, tokens: &input, logits: Logits::Last }])?;
        let next = sampler.sample(&logits[0]);
        if params.stop_ids.contains(&next) {
            finish = Finish::Stop;
            break;
        }
        tokens.push(next);
        let piece = decoder.push(tok, next)?;
        let (out, hit) = stops.push(&piece);
        if !emit(&out, &mut text, on_text) {
            return Ok(Generation { tokens, text, finish: Finish::Cancelled, prompt_tokens: prompt.len() });
        }
        if hit {
            return Ok(Generation { tokens, text, finish: Finish::Stop, prompt_tokens: prompt.len() });
        }
        input.clear();
        input.push(next);
    }
    let (rest, hit) = stops.finish_with(&decoder.flush(tok)?);
    if hit {
        finish = Finish::Stop;
    }
    if !emit(&rest, &mut text, on_text) {
        finish = Finish::Cancelled;
    }
    Ok(Generation { tokens, text, finish, prompt_tokens: prompt.len() })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stops: &[&str], pieces: &[&str]) -> (String, bool) {
        let stops: Vec<String> = stops.iter().map(|s| s.to_string()).collect();
        let mut m = StopMatcher::new(&stops);
        let mut out = String::new();
        for p in pieces {
            let (o, hit) = m.push(p);
            out.push_str(&o);
            if hit {
                return (out, true);
            }
        }
        out.push_str(&m.finish());
        (out, false)
    }

    #[test]
    fn stop_string_split_across_pieces() {
        assert_eq!(run(&["\n\n"], &["a = 1", "\n", "\nb"]), ("a = 1".into(), true));
        assert_eq!(run(&["</s>"], &["x<", "/", "s>y"]), ("x".into(), true));
    }

    #[test]
    fn near_miss_is_released() {
        assert_eq!(run(&["\n\n"], &["a\n", "b"]), ("a\nb".into(), false));
        assert_eq!(run(&["abc"], &["ab"]), ("ab".into(), false));
    }

    #[test]
    fn earliest_of_several_stops_wins_and_multibyte_text_is_safe() {
        assert_eq!(run(&["world", "lo"], &["hello world"]), ("hel".into(), true));
        assert_eq!(run(&["é!"], &["caf", "é", "é!"]), ("café".into(), true));
    }
}
