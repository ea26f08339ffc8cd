//! Request validation, as pure functions: the body's bytes to a typed `CompletionRequest`, and
//! that request (with the facts of the served model and the server's limits) to a `Validated`
//! completion or one `HttpError`. Nothing here does IO or touches the model; the tests below
//! run every case without a server.

use ghostline_api::{CompletionRequest, ContextSnippet, TelemetryEvent};
use ghostline_engine::SamplingParams;

use crate::error::HttpError;

/// Request limits.
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    pub max_body_bytes: usize,
    pub max_tokens: u32,
    pub max_n: u32,
    pub max_stop: usize,
    pub max_stop_len: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_body_bytes: 1 << 20, max_tokens: 512, max_n: 4, max_stop: 4, max_stop_len: 64 }
    }
}

/// What validation needs to know of the served model.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelFacts {
    pub name: String,
    pub context_length: usize,
    /// The FIM family, if the model can fill in the middle.
    pub fim: Option<&'static str>,
}

/// A completion request that passed validation, with every default filled in.
#[derive(Debug, Clone, PartialEq)]
pub struct Validated {
    pub prompt: String,
    /// Present means fill-in-the-middle (the model has FIM tokens).
    pub suffix: Option<String>,
    pub context: Vec<ContextSnippet>,
    pub n: usize,
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    pub stop: Vec<String>,
    /// Prompt tokens that fit beside `max_tokens` in the context.
    pub budget: usize,
    pub truncate: bool,
    pub stream: bool,
    /// (user, path): a newer request with the same pair supersedes this one.
    pub supersede: Option<(String, String)>,
    /// Clipped to 64 characters, for the completion record.
    pub language: Option<String>,
    pub editor: Option<String>,
}

impl Validated {
    /// Greedy with one candidate: the answer is a function of the prompt, so it can be cached.
    pub fn deterministic(&self) -> bool {
        self.sampling.is_greedy() && self.n == 1
    }
}

/// The body as a `CompletionRequest`: empty, non-UTF-8, malformed or mistyped bodies are a 400
/// naming the offending field where there is one.
pub fn parse_completion(body: &[u8]) -> Result<CompletionRequest, HttpError> {
    let text = json_text(body, "the request body is empty; send a JSON object with at least \"prompt\"")?;
    let mut de = serde_json::Deserializer::from_str(text);
    serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let param = (path != ".").then_some(path);
        let inner = e.into_inner();
        let message = if inner.is_syntax() || inner.is_eof() {
            format!("malformed JSON: {inner}")
        } else {
            format!("invalid request: {inner}")
        };
        HttpError::Invalid { message, param }
    })
}

fn json_text<'a>(body: &'a [u8], empty: &str) -> Result<&'a str, HttpError> {
    if body.iter().all(|b| b.is_ascii_whitespace()) {
        return Err(HttpError::invalid_body(empty));
    }
    std::str::from_utf8(body).map_err(|e| {
        HttpError::invalid_body(format!("the request body is not valid UTF-8 (at byte {})", e.valid_up_to()))
    })
}

fn clip(s: Option<String>) -> Option<String> {
    s.map(|s| s.chars().take(64).collect())
}

/// Why a request with a suffix is refused by a model without FIM tokens.
pub const NO_FIM: &str =
    "this model has no fill-in-the-middle tokens, so it cannot take a suffix; omit \"suffix\" for left-to-right completion";

/// Checks every field against the limits and the model, filling in the defaults.
pub fn validate(req: CompletionRequest, model: &ModelFacts, lim: &Limits) -> Result<Validated, HttpError> {
    if let Some(m) = &req.model {
        if m != &model.name {
            return Err(HttpError::ModelNotFound { asked: m.clone(), served: model.name.clone() });
        }
    }
    let max_tokens = req.max_tokens.unwrap_or(64);
    if max_tokens == 0 || max_tokens > lim.max_tokens {
        return Err(HttpError::invalid(format!("max_tokens must be between 1 and {}", lim.max_tokens), "max_tokens"));
    }
    let n = req.n.unwrap_or(1);
    if n == 0 || n > lim.max_n {
        return Err(HttpError::invalid(format!("n must be between 1 and {}", lim.max_n), "n"));
    }
    let temperature = req.temperature.unwrap_or(0.0);
    if !(0.0..=2.0).contains(&temperature) {
        return Err(HttpError::invalid("temperature must be between 0 and 2", "temperature"));
    }
    let top_p = req.top_p.unwrap_or(1.0);
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(HttpError::invalid("top_p must be in (0, 1]", "top_p"));
    }
    let stop = req.stop.unwrap_or_default();
    if stop.len() > lim.max_stop {
        return Err(HttpError::invalid(format!("at most {} stop sequences are allowed", lim.max_stop), "stop"));
    }
    if stop.iter().any(|s| s.is_empty() || s.len() > lim.max_stop_len) {
        return Err(HttpError::invalid(
            format!("each stop sequence must be 1 to {} bytes long", lim.max_stop_len),
            "stop",
        ));
    }
    let budget = model.context_length.saturating_sub(max_tokens as usize);
    if budget == 0 {
        return Err(HttpError::invalid(
            format!("max_tokens leaves no room for the prompt in the context of {} tokens", model.context_length),
            "max_tokens",
        ));
    }
    if req.suffix.is_some() && model.fim.is_none() {
        return Err(HttpError::invalid(NO_FIM, "suffix"));
    }
    let supersede = match (req.user, req.path) {
        (Some(u), Some(p)) => Some((u, p)),
        _ => None,
    };
    Ok(Validated {
        prompt: req.prompt,
        suffix: req.suffix,
        context: req.context.unwrap_or_default(),
        n: n as usize,
        max_tokens: max_tokens as usize,
        sampling: SamplingParams { temperature, top_k: req.top_k.unwrap_or(0) as usize, top_p, seed: req.seed },
        stop,
        budget,
        truncate: req.truncate.unwrap_or(false),
        stream: req.stream.unwrap_or(false),
        supersede,
        language: clip(req.language),
        editor: clip(req.editor),
    })
}

/// Most events one telemetry batch may carry.
pub const MAX_EVENTS: usize = 1000;

fn check_event(e: &TelemetryEvent) -> Result<(), (&'static str, String)> {
    let short = |v: &Option<String>| v.as_ref().is_none_or(|s| s.len() <= 128);
    if e.completion_id.is_empty() || e.completion_id.len() > 128 {
        return Err(("completion_id", "completion_id must be 1 to 128 bytes".into()));
    }
    for (name, v) in [("event_id", &e.event_id), ("editor", &e.editor), ("language", &e.language)] {
        if !short(v) {
            return Err((name, format!("{name} must be at most 128 bytes")));
        }
    }
    Ok(())
}

/// A telemetry batch, validated whole; the error names the first bad event.
pub fn parse_events(body: &[u8]) -> Result<Vec<TelemetryEvent>, HttpError> {
    let v: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| HttpError::invalid_body(format!("malformed JSON: {e}")))?;
    let Some(list) = v.get("events").and_then(|e| e.as_array()) else {
        return Err(HttpError::invalid("the body must be {\"events\": [...]}", "events"));
    };
    if list.len() > MAX_EVENTS {
        return Err(HttpError::TooManyEvents { sent: list.len(), max: MAX_EVENTS });
    }
    let mut out = Vec::with_capacity(list.len());
    for (i, raw) in list.iter().enumerate() {
        let e: TelemetryEvent = serde_path_to_error::deserialize(raw).map_err(|e| {
            let path = e.path().to_string();
            let param = if path == "." { format!("events[{i}]") } else { format!("events[{i}].{path}") };
            HttpError::invalid(format!("event {i} is invalid: {}", e.into_inner()), &param)
        })?;
        check_event(&e).map_err(|(field, msg)| {
            HttpError::invalid(format!("event {i} is invalid: {msg}"), &format!("events[{i}].{field}"))
        })?;
        out.push(e);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(fim: bool) -> ModelFacts {
        ModelFacts { name: "tiny".into(), context_length: 512, fim: fim.then_some("qwen") }
    }

    /// The status and `param` of the answer to `body`, or "ok".
    fn verdict(body: &[u8], model: &ModelFacts) -> String {
        let lim = Limits::default();
        match parse_completion(body).and_then(|r| validate(r, model, &lim)) {
            Ok(_) => "ok".into(),
            Err(e) => format!("{} {}", e.status().as_u16(), e.body().error.param.unwrap_or_else(|| "-".into())),
        }
    }

    #[test]
    fn every_malformed_mistyped_or_out_of_range_body_names_its_field() {
        let table: &[(&[u8], &str)] = &[
            (b"", "400 -"),
            (b"  \n", "400 -"),
            (b"{\"prompt\": ", "400 prompt"),
            (b"{\"prompt\": \"\xff\xfe\"}", "400 -"),
            (br#"{"prompt": 5}"#, "400 prompt"),
            (br#"{"max_tokens": 5}"#, "400 -"),
            (br#"{"prompt": "x", "max_tokens": "many"}"#, "400 max_tokens"),
            (br#"{"prompt": "x", "max_tokens": 0}"#, "400 max_tokens"),
            (br#"{"prompt": "x", "max_tokens": 100000}"#, "400 max_tokens"),
            (br#"{"prompt": "x", "max_tokens": -1}"#, "400 max_tokens"),
            (br#"{"prompt": "x", "max_tokens": 512}"#, "400 max_tokens"),
            (br#"{"prompt": "x", "n": 5}"#, "400 n"),
            (br#"{"prompt": "x", "n": 0}"#, "400 n"),
            (br#"{"prompt": "x", "stop": ["a","b","c","d","e"]}"#, "400 stop"),
            (br#"{"prompt": "x", "stop": [""]}"#, "400 stop"),
            (br#"{"prompt": "x", "stop": "\n"}"#, "400 stop"),
            (br#"{"prompt": "x", "temperature": 7}"#, "400 temperature"),
            (br#"{"prompt": "x", "top_p": 0}"#, "400 top_p"),
            (br#"{"prompt": "x", "top_p": 1.5}"#, "400 top_p"),
            (br#"{"prompt": "x", "truncate": "yes"}"#, "400 truncate"),
            (br#"{"prompt": "x", "truncate": 1}"#, "400 truncate"),
            (br#"{"prompt": "x", "editor": 3}"#, "400 editor"),
            (br#"{"prompt": "x", "context": [{"path": "a.py"}]}"#, "400 context[0]"),
            (br#"{"prompt": "x", "model": "gpt-17"}"#, "404 model"),
            (br#"{"prompt": "x", "model": "tiny", "truncate": true, "editor": "nvim"}"#, "ok"),
            (br#"{"prompt": "x", "suffix": "", "n": 4, "max_tokens": 511, "top_p": 1, "temperature": 2}"#, "ok"),
        ];
        for (body, want) in table {
            assert_eq!(verdict(body, &facts(true)), *want, "{}", String::from_utf8_lossy(body));
        }
        assert_eq!(verdict(br#"{"prompt": "x", "suffix": ""}"#, &facts(false)), "400 suffix");
    }

    #[test]
    fn defaults_are_filled_in_and_free_text_is_clipped() {
        let lim = Limits::default();
        let req = parse_completion(br#"{"prompt": "x", "user": "u", "path": "a.py"}"#).unwrap();
        let v = validate(req, &facts(true), &lim).unwrap();
        assert_eq!((v.n, v.max_tokens, v.budget, v.truncate, v.stream), (1, 64, 448, false, false));
        assert_eq!(v.sampling, SamplingParams { temperature: 0.0, top_k: 0, top_p: 1.0, seed: None });
        assert!(v.deterministic());
        assert_eq!(v.supersede, Some(("u".into(), "a.py".into())));
        let long = "e".repeat(100);
        let req = CompletionRequest { prompt: "x".into(), editor: Some(long), n: Some(2), ..Default::default() };
        let v = validate(req, &facts(true), &lim).unwrap();
        assert_eq!(v.editor.as_ref().map(String::len), Some(64));
        assert!(!v.deterministic());
    }

    #[test]
    fn a_telemetry_batch_is_refused_whole_naming_the_first_bad_event() {
        let ok = br#"{"events": [{"completion_id": "c", "choice_index": 0, "kind": "shown"}]}"#;
        assert_eq!(parse_events(ok).unwrap().len(), 1);
        let table: &[(&[u8], &str)] = &[
            (b"{", "-"),
            (br#"{"event": []}"#, "events"),
            (br#"{"events": [{"completion_id": "c", "choice_index": 0, "kind": "seen"}]}"#, "events[0].kind"),
            (br#"{"events": [{"completion_id": "", "choice_index": 0, "kind": "shown"}]}"#, "events[0].completion_id"),
        ];
        for (body, want) in table {
            let e = parse_events(body).unwrap_err();
            assert_eq!(e.body().error.param.as_deref().unwrap_or("-"), *want, "{}", String::from_utf8_lossy(body));
        }
        let many = format!("{{\"events\": [{}]}}", vec!["{}"; MAX_EVENTS + 1].join(","));
        assert_eq!(parse_events(many.as_bytes()).unwrap_err(), HttpError::TooManyEvents { sent: 1001, max: 1000 });
    }
}
