//! What goes over the wire to an inference upstream and back, for each kind, as pure functions:
//! the request body of one candidate and the reading of one streamed chunk. The prompt travels
//! as token ids where the engine takes them (llama.cpp's `/completion` and the OpenAI-style
//! `/v1/completions` of vLLM, SGLang and llama.cpp take `prompt` as a list of ints), so no text
//! of a request can become a control token upstream, and the upstream computes on exactly the
//! ids the gateway counted, healed and cached; else as text rendered by `text::render`
//! (`--upstream-prompt`, [`UpstreamPrompt`]).

use ghostline_api::FinishReason;
use ghostline_engine::SamplingParams;
use serde_json::{json, Map, Value};

/// Which API the upstream speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
pub enum UpstreamKind {
    /// llama.cpp's `llama-server`, native `/completion` (token ids come back with each piece).
    #[serde(rename = "llama-cpp")]
    LlamaCpp,
    /// An OpenAI-style `/v1/completions` (vLLM, SGLang, llama-server, ...): text comes back.
    #[serde(rename = "openai")]
    OpenAi,
}

impl std::str::FromStr for UpstreamKind {
    type Err = String;
    fn from_str(s: &str) -> Result<UpstreamKind, String> {
        match s {
            "llama-cpp" => Ok(UpstreamKind::LlamaCpp),
            "openai" => Ok(UpstreamKind::OpenAi),
            _ => Err(format!("unknown upstream kind {s:?}: expected llama-cpp or openai")),
        }
    }
}

/// How the prompt goes to the upstream (`--upstream-prompt`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamPrompt {
    /// Token ids, always.
    Tokens,
    /// Text whose user parts cannot turn into control tokens (`text::render`), always.
    Text,
    /// Token ids; text from the first time the upstream refuses a token-id prompt (400 / 422)
    /// and takes the same request as text.
    Auto,
}

impl std::str::FromStr for UpstreamPrompt {
    type Err = String;
    fn from_str(s: &str) -> Result<UpstreamPrompt, String> {
        match s {
            "tokens" => Ok(UpstreamPrompt::Tokens),
            "text" => Ok(UpstreamPrompt::Text),
            "auto" => Ok(UpstreamPrompt::Auto),
            _ => Err(format!("unknown upstream prompt form {s:?}: expected tokens, text or auto")),
        }
    }
}

impl UpstreamPrompt {
    /// Whether an upstream's refusal of a token-id prompt with `status` is worth trying as text.
    pub fn retries_as_text(self, status: u16) -> bool {
        self == UpstreamPrompt::Auto && matches!(status, 400 | 422)
    }
}

impl UpstreamKind {
    pub fn name(self) -> &'static str {
        match self {
            UpstreamKind::LlamaCpp => "llama-cpp",
            UpstreamKind::OpenAi => "openai",
        }
    }

    /// The completion endpoint under the upstream's base URL.
    pub fn path(self) -> &'static str {
        match self {
            UpstreamKind::LlamaCpp => "/completion",
            UpstreamKind::OpenAi => "/v1/completions",
        }
    }

    /// What the readiness probe asks: llama-server's `/health` (503 while it loads the model),
    /// the model list of an OpenAI-style server.
    pub fn probe_path(self) -> &'static str {
        match self {
            UpstreamKind::LlamaCpp => "/health",
            UpstreamKind::OpenAi => "/v1/models",
        }
    }
}

/// The bias given to the allowed first tokens of a healed prompt: far above any logit gap, so
/// greedy choice and sampling alike pick among them alone (the largest bias vLLM accepts).
pub const FIRST_TOKEN_BIAS: f64 = 100.0;

/// One candidate's request.
pub struct Ask<'a> {
    pub prompt: &'a [u32],
    pub max_tokens: usize,
    pub sampling: &'a SamplingParams,
    /// Candidate i's seed is the job's plus i, as in the local scheduler.
    pub seed: Option<u64>,
    pub stop_ids: &'a [u32],
    /// Tokens to favour by [`FIRST_TOKEN_BIAS`] (the first token of a healed prompt).
    pub favour: &'a [u32],
    /// The upstream's model name (OpenAI kind), when it must be named.
    pub model: Option<&'a str>,
}

/// The JSON body of one candidate's streamed request: the prompt as `a.prompt`'s ids, or as
/// `text` (their rendering) when given.
pub fn body(kind: UpstreamKind, a: &Ask<'_>, text: Option<&str>) -> Value {
    let s = a.sampling;
    let mut m = Map::new();
    match text {
        Some(t) => m.insert("prompt".into(), json!(t)),
        None => m.insert("prompt".into(), json!(a.prompt)),
    };
    m.insert("stream".into(), json!(true));
    m.insert("temperature".into(), json!(s.temperature.max(0.0)));
    m.insert("top_p".into(), json!(s.top_p));
    // ghostline's samplers are temperature, top-k and top-p alone: turn the engines' extra
    // default cuts off.
    m.insert("min_p".into(), json!(0.0));
    if let Some(seed) = a.seed {
        // llama.cpp's seeds are 32-bit, with u32::MAX meaning "random".
        let s = (seed % u64::from(u32::MAX)) as u32;
        m.insert("seed".into(), json!(s));
    }
    if !a.favour.is_empty() {
        let bias: Map<String, Value> = a.favour.iter().map(|id| (id.to_string(), json!(FIRST_TOKEN_BIAS))).collect();
        m.insert("logit_bias".into(), Value::Object(bias));
    }
    match kind {
        UpstreamKind::LlamaCpp => {
            m.insert("n_predict".into(), json!(a.max_tokens));
            m.insert("top_k".into(), json!(s.top_k));
            m.insert("return_tokens".into(), json!(true));
            m.insert("cache_prompt".into(), json!(true));
        }
        UpstreamKind::OpenAi => {
            m.insert("max_tokens".into(), json!(a.max_tokens));
            // -1 is "no top-k cut" for vLLM and SGLang alike (llama.cpp: any k <= 0).
            m.insert("top_k".into(), json!(if s.top_k == 0 { -1 } else { s.top_k as i64 }));
            m.insert("stream_options".into(), json!({"include_usage": true}));
            if !a.stop_ids.is_empty() {
                // vLLM and SGLang stop on these ids; llama.cpp stops on its end-of-generation ids.
                m.insert("stop_token_ids".into(), json!(a.stop_ids));
            }
            if let Some(model) = a.model {
                m.insert("model".into(), json!(model));
            }
        }
    }
    Value::Object(m)
}

/// What one streamed chunk says.
#[derive(Debug, Default, PartialEq)]
pub struct Chunk {
    /// Generated token ids (llama.cpp), in order.
    pub tokens: Vec<u32>,
    /// Generated text (OpenAI kind; llama.cpp's `content` is not used, the ids are decoded here).
    pub text: String,
    /// The upstream ended the candidate, and why.
    pub finish: Option<FinishReason>,
    /// Prompt tokens the upstream found in its cache, when it says.
    pub cached_tokens: Option<usize>,
    /// The upstream's prompt processing time, when it says.
    pub prompt_ms: Option<f64>,
    /// Tokens generated, when the upstream counts them (OpenAI usage).
    pub completion_tokens: Option<usize>,
    /// The last chunk (llama.cpp's `stop: true`, or an OpenAI usage chunk).
    pub last: bool,
}

/// Reads the `data:` payload of one SSE event. `Ok(None)` for `[DONE]`.
pub fn parse(kind: UpstreamKind, data: &str) -> Result<Option<Chunk>, String> {
    let data = data.trim();
    if data == "[DONE]" {
        return Ok(None);
    }
    let v: Value =
        serde_json::from_str(data).map_err(|e| format!("the upstream sent a chunk that is not JSON: {e}"))?;
    if let Some(err) = v.get("error") {
        let msg = err.get("message").and_then(Value::as_str).map_or_else(|| err.to_string(), str::to_string);
        return Err(format!("the upstream failed: {msg}"));
    }
    let mut c = Chunk::default();
    match kind {
        UpstreamKind::LlamaCpp => {
            if let Some(ids) = v.get("tokens").and_then(Value::as_array) {
                for id in ids {
                    let id = id.as_u64().and_then(|i| u32::try_from(i).ok());
                    c.tokens.push(id.ok_or("the upstream sent a token id that is not one")?);
                }
            }
            if v.get("stop").and_then(Value::as_bool) == Some(true) {
                c.last = true;
                c.finish = Some(match v.get("stop_type").and_then(Value::as_str) {
                    Some("limit") => FinishReason::Length,
                    _ => FinishReason::Stop,
                });
                c.cached_tokens = v.get("tokens_cached").and_then(Value::as_u64).map(|n| n as usize);
                c.prompt_ms = v.pointer("/timings/prompt_ms").and_then(Value::as_f64);
            }
        }
        UpstreamKind::OpenAi => {
            if let Some(choice) = v.get("choices").and_then(Value::as_array).and_then(|c| c.first()) {
                c.text = choice.get("text").and_then(Value::as_str).unwrap_or_default().to_string();
                c.finish = match choice.get("finish_reason").and_then(Value::as_str) {
                    Some("length") => Some(FinishReason::Length),
                    Some(_) => Some(FinishReason::Stop),
                    None => None,
                };
            }
            if let Some(u) = v.get("usage").filter(|u| !u.is_null()) {
                c.last = true;
                c.cached_tokens =
                    u.pointer("/prompt_tokens_details/cached_tokens").and_then(Value::as_u64).map(|n| n as usize);
                c.completion_tokens = u.get("completion_tokens").and_then(Value::as_u64).map(|n| n as usize);
            }
            c.prompt_ms = v.pointer("/timings/prompt_ms").and_then(Value::as_f64);
        }
    }
    Ok(Some(c))
}

/// Splits an SSE byte stream into the `data:` payloads of its events, across reads.
#[derive(Default)]
pub struct SseLines {
    buf: Vec<u8>,
}

impl SseLines {
    /// Adds bytes; returns the data lines now complete (comments and other fields skipped).
    pub fn push(&mut self, bytes: &[u8]) -> Vec<String> {
        self.buf.extend_from_slice(bytes);
        let mut out = Vec::new();
        while let Some(at) = self.buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.buf.drain(..=at).collect();
            let line = String::from_utf8_lossy(&line);
            let line = line.trim_end_matches(['\n', '\r']);
            if let Some(d) = line.strip_prefix("data:") {
                out.push(d.strip_prefix(' ').unwrap_or(d).to_string());
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_carry_ids_and_the_samplers_of_each_kind() {
        let s = SamplingParams { temperature: 0.0, top_k: 0, top_p: 1.0, seed: Some(7) };
        let ask = Ask {
            prompt: &[1, 2, 3],
            max_tokens: 16,
            sampling: &s,
            seed: Some(8),
            stop_ids: &[0, 2],
            favour: &[42],
            model: Some("m"),
        };
        let l = body(UpstreamKind::LlamaCpp, &ask, None);
        assert_eq!(l["prompt"], json!([1, 2, 3]));
        assert_eq!((l["n_predict"].as_u64(), l["top_k"].as_u64(), l["seed"].as_u64()), (Some(16), Some(0), Some(8)));
        assert_eq!(l["return_tokens"], json!(true));
        assert_eq!(l["logit_bias"], json!({"42": FIRST_TOKEN_BIAS}));
        assert!(l.get("model").is_none() && l.get("suffix").is_none());
        let o = body(UpstreamKind::OpenAi, &ask, None);
        assert_eq!((o["max_tokens"].as_u64(), o["top_k"].as_i64()), (Some(16), Some(-1)));
        assert_eq!(body(UpstreamKind::OpenAi, &ask, Some("def f(")).get("prompt"), Some(&json!("def f(")));
        assert_eq!((o["stop_token_ids"].clone(), o["model"].clone()), (json!([0, 2]), json!("m")));
        assert!(o.get("suffix").is_none(), "OpenAI-style engines refuse suffix");
    }

    #[test]
    fn llama_cpp_chunks_give_ids_and_the_end() {
        let c = parse(UpstreamKind::LlamaCpp, r#"{"content":"x","tokens":[5,6],"stop":false}"#).unwrap().unwrap();
        assert_eq!((c.tokens, c.finish, c.last), (vec![5, 6], None, false));
        let end = r#"{"content":"","tokens":[],"stop":true,"stop_type":"limit","tokens_cached":12,"timings":{"prompt_ms":3.5}}"#;
        let c = parse(UpstreamKind::LlamaCpp, end).unwrap().unwrap();
        assert_eq!(
            (c.finish, c.cached_tokens, c.prompt_ms, c.last),
            (Some(FinishReason::Length), Some(12), Some(3.5), true)
        );
        let eos = parse(UpstreamKind::LlamaCpp, r#"{"stop":true,"stop_type":"eos"}"#).unwrap().unwrap();
        assert_eq!(eos.finish, Some(FinishReason::Stop));
        let e = parse(UpstreamKind::LlamaCpp, r#"{"error":{"code":500,"message":"boom"}}"#).unwrap_err();
        assert!(e.contains("boom"), "{e}");
        assert!(parse(UpstreamKind::LlamaCpp, "{not json").is_err());
        assert!(parse(UpstreamKind::LlamaCpp, r#"{"tokens":[-1]}"#).is_err());
    }

    #[test]
    fn openai_chunks_give_text_finish_and_usage() {
        let c = parse(UpstreamKind::OpenAi, r#"{"choices":[{"text":"ab","index":0,"finish_reason":null}]}"#);
        let c = c.unwrap().unwrap();
        assert_eq!((c.text.as_str(), c.finish, c.last), ("ab", None, false));
        let c = parse(UpstreamKind::OpenAi, r#"{"choices":[{"text":"","finish_reason":"length"}]}"#).unwrap().unwrap();
        assert_eq!(c.finish, Some(FinishReason::Length));
        let u = r#"{"choices":[],"usage":{"prompt_tokens":9,"completion_tokens":2,"prompt_tokens_details":{"cached_tokens":4}}}"#;
        let c = parse(UpstreamKind::OpenAi, u).unwrap().unwrap();
        assert_eq!((c.last, c.cached_tokens, c.completion_tokens), (true, Some(4), Some(2)));
        assert_eq!(parse(UpstreamKind::OpenAi, "[DONE]").unwrap(), None);
    }

    #[test]
    fn sse_events_are_split_across_reads() {
        let mut s = SseLines::default();
        assert!(s.push(b"data: {\"a\"").is_empty());
        assert_eq!(s.push(b":1}\n\n: ping\n\ndata:[DONE]\r\n"), vec!["{\"a\":1}".to_string(), "[DONE]".to_string()]);
        assert_eq!("llama-cpp".parse::<UpstreamKind>(), Ok(UpstreamKind::LlamaCpp));
        assert!("vllm".parse::<UpstreamKind>().unwrap_err().contains("llama-cpp or openai"));
        assert_eq!("auto".parse::<UpstreamPrompt>(), Ok(UpstreamPrompt::Auto));
        assert!("ids".parse::<UpstreamPrompt>().unwrap_err().contains("tokens, text or auto"));
    }

    #[test]
    fn only_auto_turns_to_text_and_only_on_a_refusal_of_the_request() {
        assert!(UpstreamPrompt::Auto.retries_as_text(400) && UpstreamPrompt::Auto.retries_as_text(422));
        for status in [401, 404, 413, 429, 500, 503] {
            assert!(!UpstreamPrompt::Auto.retries_as_text(status), "{status}");
        }
        assert!(!UpstreamPrompt::Tokens.retries_as_text(422) && !UpstreamPrompt::Text.retries_as_text(422));
    }
}
