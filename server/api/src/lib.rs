//! Wire types of ghostline's HTTP API v1 (see DESIGN.md, "HTTP API v1").
//!
//! Both sides of the wire use these types: the `ghostline` language server builds requests and
//! reads stream chunks, `ghostline-server` does the reverse. Field names follow the OpenAI
//! completions API where a convention exists.
//!
//! Invariant: this crate depends on serde alone and does no IO.

use serde::{Deserialize, Serialize};

/// A snippet from another file, sent as repository-level context.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContextSnippet {
    pub path: String,
    pub text: String,
}

/// Body of `POST /v1/completions`. Only `prompt` is required.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CompletionRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    pub prompt: String,
    /// Present (even empty) means fill-in-the-middle; absent means left-to-right completion.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suffix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_k: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub language: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<Vec<ContextSnippet>>,
    /// ghostline extension: trim the far ends of prefix and suffix (or the prompt's start) to
    /// fit the model's context instead of answering 400.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub truncate: Option<bool>,
    /// ghostline extension: the client's editor (`vscode`, `nvim`, `helix`, ...), for the
    /// completion record and `/v1/stats`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub editor: Option<String>,
}

/// Body of `GET /v1/models`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelList {
    pub object: String,
    pub data: Vec<ModelInfo>,
}

/// One model of `GET /v1/models`. The last two fields are ghostline extensions that clients
/// size and shape their requests by; other OpenAI-compatible servers omit them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelInfo {
    pub id: String,
    #[serde(default = "model_object")]
    pub object: String,
    #[serde(default)]
    pub created: u64,
    #[serde(default)]
    pub owned_by: String,
    /// The model's context length in tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context_length: Option<u32>,
    /// The fill-in-the-middle family (`qwen`, `starcoder`, `deepseek`, `codellama`), or `null`
    /// for a model that only completes left to right (a request with `suffix` is refused).
    #[serde(default)]
    pub fim: Option<String>,
}

fn model_object() -> String {
    "model".into()
}

/// Why a candidate stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    Stop,
    Length,
    Cancelled,
    /// Dropped by the server's output filters (a secret or a blocklisted pattern).
    ContentFilter,
}

/// Where the answer came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CacheOutcome {
    Miss,
    Hit,
    Typeahead,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Choice {
    pub index: u32,
    pub text: String,
    pub finish_reason: Option<FinishReason>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PromptTokensDetails {
    pub cached_tokens: u32,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    pub total_tokens: u32,
    pub prompt_tokens_details: PromptTokensDetails,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Timings {
    pub queue_ms: f64,
    pub prefill_ms: f64,
    pub ttft_ms: f64,
    pub total_ms: f64,
}

/// One SSE chunk, or the whole body when `stream` is false. `usage`, `cache` and `timings`
/// appear on the last chunk only.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CompletionChunk {
    pub id: String,
    pub object: String,
    pub created: u64,
    pub model: String,
    pub choices: Vec<Choice>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<CacheOutcome>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timings: Option<Timings>,
}

/// What happened to a suggestion.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TelemetryKind {
    Shown,
    Accepted,
    PartiallyAccepted,
    Rejected,
}

/// One event of `POST /v1/telemetry`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TelemetryEvent {
    /// Client-chosen id the server deduplicates on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_id: Option<String>,
    pub completion_id: String,
    pub choice_index: u32,
    pub kind: TelemetryKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accepted_chars: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shown_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_ts: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub editor: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub language: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TelemetryBatch {
    pub events: Vec<TelemetryEvent>,
}

/// The body of every error answer: `{"error": {...}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorDetail {
    #[serde(rename = "type")]
    pub kind: String,
    pub message: String,
    pub param: Option<String>,
    pub code: Option<String>,
}

/// The header a consistent-hash load balancer keys on, so one developer's keystrokes in one file
/// reach the replica that holds their prefix KV and typed-ahead state (docs/api.md).
pub const AFFINITY_HEADER: &str = "x-ghostline-affinity";

/// The affinity of a request: a stable hash (64-bit FNV-1a, hex) of what supersession keys on,
/// the user (else the API key) and the file. None when the request names neither.
pub fn affinity(user_or_key: Option<&str>, path: Option<&str>) -> Option<String> {
    if user_or_key.is_none() && path.is_none() {
        return None;
    }
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in user_or_key.unwrap_or_default().bytes().chain([0]).chain(path.unwrap_or_default().bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    Some(format!("{h:016x}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_affinity_is_stable_per_user_and_file() {
        // FNV-1a 64 of the one separator byte: the published offset basis and prime, nothing more.
        assert_eq!(affinity(Some(""), Some("")), Some("af63bd4c8601b7df".into()));
        let a = affinity(Some("ana"), Some("src/a.rs"));
        assert_eq!(a, affinity(Some("ana"), Some("src/a.rs")), "stable across calls and processes");
        assert_ne!(a, affinity(Some("ana"), Some("src/b.rs")));
        assert_ne!(a, affinity(Some("bo"), Some("src/a.rs")));
        assert_ne!(affinity(Some("ab"), Some("c")), affinity(Some("a"), Some("bc")), "the parts are separated");
        assert_eq!(affinity(None, None), None);
        assert_eq!(a.unwrap().len(), 16);
    }

    #[test]
    fn request_from_contract_example_parses() {
        let body = r#"{ "model": "ghostline-tiny", "prompt": "text before the cursor", "suffix": "text after the cursor",
  "max_tokens": 64, "temperature": 0.0, "top_p": 1.0, "seed": 7, "n": 1, "stop": ["\n\n"],
  "stream": true, "user": "opaque session id",
  "language": "python", "path": "src/app.py",
  "context": [{"path": "src/util.py", "text": "def helper(): ..."}] }"#;
        let req: CompletionRequest = serde_json::from_str(body).unwrap();
        assert_eq!(req.suffix.as_deref(), Some("text after the cursor"));
        assert_eq!(req.context.unwrap()[0].path, "src/util.py");
    }

    #[test]
    fn absent_and_empty_suffix_differ() {
        let a: CompletionRequest = serde_json::from_str(r#"{"prompt":"x"}"#).unwrap();
        let b: CompletionRequest = serde_json::from_str(r#"{"prompt":"x","suffix":""}"#).unwrap();
        assert_eq!(a.suffix, None);
        assert_eq!(b.suffix, Some(String::new()));
    }

    #[test]
    fn openai_fields_we_do_not_use_are_ignored() {
        let r: CompletionRequest = serde_json::from_str(r#"{"prompt":"x","logprobs":null,"echo":false}"#).unwrap();
        assert_eq!(r.prompt, "x");
    }

    #[test]
    fn a_mistyped_extension_field_is_an_error() {
        let e = serde_json::from_str::<CompletionRequest>(r#"{"prompt":"x","truncate":"yes"}"#);
        assert!(e.is_err());
        let r: CompletionRequest = serde_json::from_str(r#"{"prompt":"x","truncate":true,"editor":"nvim"}"#).unwrap();
        assert_eq!((r.truncate, r.editor.as_deref()), (Some(true), Some("nvim")));
    }

    #[test]
    fn a_model_list_from_another_server_parses_without_the_extensions() {
        let l: ModelList = serde_json::from_str(r#"{"object":"list","data":[{"id":"m","owned_by":"x"}]}"#).unwrap();
        assert_eq!(l.data[0].context_length, None);
        assert_eq!(l.data[0].fim, None);
    }

    #[test]
    fn chunk_serializes_like_the_contract() {
        let c = CompletionChunk {
            id: "cmpl-1".into(),
            object: "text_completion".into(),
            created: 1764201600,
            model: "ghostline-tiny".into(),
            choices: vec![Choice { index: 0, text: "return a + b".into(), finish_reason: Some(FinishReason::Stop) }],
            usage: None,
            cache: Some(CacheOutcome::Typeahead),
            timings: None,
        };
        let v = serde_json::to_value(&c).unwrap();
        assert_eq!(v["choices"][0]["finish_reason"], "stop");
        assert_eq!(v["cache"], "typeahead");
        assert!(v.get("usage").is_none());
    }
}
