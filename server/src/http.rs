//! The HTTP API v1 (DESIGN.md): request validation, prompt templating, streaming and errors.
//! Handlers only validate, submit to the scheduler and stream its events back.

use std::convert::Infallible;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::body::{Body, Bytes};
use axum::extract::{MatchedPath, Request as HttpRequest, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::stream::{self, Stream, StreamExt};
use ghostline_api::{
    CacheOutcome, Choice, CompletionChunk, CompletionRequest, ErrorBody, ErrorDetail, FinishReason,
    PromptTokensDetails, Timings, Usage,
};
use ghostline_engine::{SamplingParams, Tokenizer};
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::json;

use crate::fim::{self, FimTemplate, PromptError};
use crate::scheduler::{Event, Request, Scheduler, SubmitError, Summary};
use crate::typeahead::TypeAhead;

/// Request limits.
#[derive(Debug, Clone)]
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

/// Everything the handlers share.
pub struct AppState {
    pub model_name: String,
    pub context_length: usize,
    pub scheduler: Scheduler,
    pub tokenizer: Arc<Tokenizer>,
    pub template: Option<FimTemplate>,
    /// EOS ids, plus the FIM markers for FIM requests.
    pub eos_ids: Vec<u32>,
    pub fim_stop_ids: Vec<u32>,
    pub limits: Limits,
    pub typeahead: Mutex<TypeAhead>,
    pub metrics: PrometheusHandle,
    pub started: Instant,
}

/// An error answer in the contract's shape.
pub struct ApiError {
    status: StatusCode,
    kind: &'static str,
    message: String,
    param: Option<String>,
    code: Option<&'static str>,
    retry_after: Option<u64>,
}

impl ApiError {
    fn bad(message: impl Into<String>, param: Option<&str>) -> Self {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            kind: "invalid_request_error",
            message: message.into(),
            param: param.map(str::to_string),
            code: None,
            retry_after: None,
        }
    }
    fn code(mut self, code: &'static str) -> Self {
        self.code = Some(code);
        self
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                kind: self.kind.into(),
                message: self.message,
                param: self.param,
                code: self.code.map(str::to_string),
            },
        };
        let mut r = (self.status, Json(body)).into_response();
        if let Some(s) = self.retry_after {
            r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        r
    }
}

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/v1/completions", post(completions))
        .route("/v1/models", get(models))
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics_text))
        .fallback(|| async {
            ApiError {
                status: StatusCode::NOT_FOUND,
                kind: "not_found_error",
                message: "no such endpoint".into(),
                param: None,
                code: None,
                retry_after: None,
            }
        })
        .layer(axum::middleware::from_fn(count_requests))
        .with_state(state)
}

async fn count_requests(req: HttpRequest, next: Next) -> Response {
    let endpoint = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let resp = next.run(req).await;
    metrics::counter!("ghostline_requests_total", "endpoint" => endpoint, "status" => resp.status().as_u16().to_string())
        .increment(1);
    resp
}

async fn health(State(st): State<Arc<AppState>>) -> Response {
    Json(json!({"status": "ok", "uptime_s": st.started.elapsed().as_secs()})).into_response()
}

async fn ready(State(st): State<Arc<AppState>>) -> Response {
    Json(json!({"status": "ready", "model": st.model_name})).into_response()
}

async fn metrics_text(State(st): State<Arc<AppState>>) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], st.metrics.render()).into_response()
}

async fn models(State(st): State<Arc<AppState>>) -> Response {
    Json(json!({
        "object": "list",
        "data": [{
            "id": st.model_name,
            "object": "model",
            "created": unix_now(),
            "owned_by": "ghostline",
            "context_length": st.context_length,
            "fim": st.template.as_ref().map(|t| t.family),
        }]
    }))
    .into_response()
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn completion_id() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = DefaultHasher::new();
    COUNTER.fetch_add(1, Ordering::Relaxed).hash(&mut h);
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos()).hash(&mut h);
    std::process::id().hash(&mut h);
    let a = h.finish();
    a.hash(&mut h);
    format!("cmpl-{:016x}{:08x}", a, h.finish() as u32)
}

/// Extra request fields the server understands beyond the shared wire type.
#[derive(serde::Deserialize, Default)]
struct Extras {
    /// Trim the far ends of prefix and suffix (or the prompt's start) to fit the context,
    /// instead of answering 400.
    #[serde(default)]
    truncate: bool,
}

/// Validated settings of one completion.
struct Plan {
    req: CompletionRequest,
    ids: Vec<u32>,
    n: usize,
    max_tokens: usize,
    sampling: SamplingParams,
    stop: Vec<String>,
    stop_ids: Vec<u32>,
    stream: bool,
    typeahead_key: u64,
}

fn parse_and_plan(st: &AppState, body: &[u8]) -> Result<Plan, ApiError> {
    if body.iter().all(|b| b.is_ascii_whitespace()) {
        return Err(ApiError::bad("the request body is empty; send a JSON object with at least \"prompt\"", None));
    }
    let text = std::str::from_utf8(body)
        .map_err(|e| ApiError::bad(format!("the request body is not valid UTF-8 (at byte {})", e.valid_up_to()), None))?;
    let mut de = serde_json::Deserializer::from_str(text);
    let req: CompletionRequest = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let param = (path != ".").then_some(path);
        let inner = e.into_inner();
        let msg = if inner.is_syntax() || inner.is_eof() {
            format!("malformed JSON: {inner}")
        } else {
            format!("invalid request: {inner}")
        };
        ApiError::bad(msg, param.as_deref())
    })?;
    let extras: Extras = serde_json::from_str(text).unwrap_or_default();
    let lim = &st.limits;

    if let Some(m) = &req.model {
        if m != &st.model_name {
            return Err(ApiError {
                status: StatusCode::NOT_FOUND,
                kind: "not_found_error",
                message: format!("model \"{m}\" is not served here (this server serves \"{}\")", st.model_name),
                param: Some("model".into()),
                code: Some("model_not_found"),
                retry_after: None,
            });
        }
    }
    let max_tokens = req.max_tokens.unwrap_or(64);
    if max_tokens == 0 || max_tokens > lim.max_tokens {
        return Err(ApiError::bad(format!("max_tokens must be between 1 and {}", lim.max_tokens), Some("max_tokens")));
    }
    let n = req.n.unwrap_or(1);
    if n == 0 || n > lim.max_n {
        return Err(ApiError::bad(format!("n must be between 1 and {}", lim.max_n), Some("n")));
    }
    let temperature = req.temperature.unwrap_or(0.0);
    if !(0.0..=2.0).contains(&temperature) {
        return Err(ApiError::bad("temperature must be between 0 and 2", Some("temperature")));
    }
    let top_p = req.top_p.unwrap_or(1.0);
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(ApiError::bad("top_p must be in (0, 1]", Some("top_p")));
    }
    let top_k = req.top_k.unwrap_or(0) as usize;
    let stop = req.stop.clone().unwrap_or_default();
    if stop.len() > lim.max_stop {
        return Err(ApiError::bad(format!("at most {} stop sequences are allowed", lim.max_stop), Some("stop")));
    }
    if stop.iter().any(|s| s.is_empty() || s.len() > lim.max_stop_len) {
        return Err(ApiError::bad(
            format!("each stop sequence must be 1 to {} bytes long", lim.max_stop_len),
            Some("stop"),
        ));
    }
    let budget = st.context_length.saturating_sub(max_tokens as usize);
    if budget == 0 {
        return Err(ApiError::bad(
            format!("max_tokens leaves no room for the prompt in the context of {} tokens", st.context_length),
            Some("max_tokens"),
        ));
    }
    let (prompt, stop_ids) = match &req.suffix {
        Some(suffix) => {
            let Some(t) = &st.template else {
                return Err(ApiError::bad(
                    "this model has no fill-in-the-middle tokens, so it cannot take a suffix; omit \"suffix\" for left-to-right completion",
                    Some("suffix"),
                ));
            };
            let ctx = req.context.clone().unwrap_or_default();
            (fim::build_fim(&st.tokenizer, t, &req.prompt, suffix, &ctx, budget, extras.truncate), st.fim_stop_ids.clone())
        }
        None => (fim::build_plain(&st.tokenizer, &req.prompt, budget, extras.truncate), st.eos_ids.clone()),
    };
    let ids = match prompt {
        Ok(p) => p.ids,
        Err(PromptError::TooLong { tokens, budget }) => {
            return Err(ApiError::bad(
                format!(
                    "the prompt is {tokens} tokens but only {budget} fit in the context ({} tokens minus max_tokens); shorten it or send \"truncate\": true",
                    st.context_length
                ),
                Some("prompt"),
            )
            .code("context_length_exceeded"))
        }
        Err(PromptError::Tokenize(m)) => return Err(ApiError::bad(format!("cannot tokenize the prompt: {m}"), Some("prompt"))),
    };

    let mut h = DefaultHasher::new();
    (&req.suffix, &stop, top_k, n, req.seed).hash(&mut h);
    (temperature.to_bits(), top_p.to_bits()).hash(&mut h);
    if let Some(c) = &req.context {
        for s in c {
            (&s.path, &s.text).hash(&mut h);
        }
    }
    let stream = req.stream.unwrap_or(false);
    Ok(Plan {
        ids,
        n: n as usize,
        max_tokens: max_tokens as usize,
        sampling: SamplingParams { temperature, top_k, top_p, seed: req.seed },
        stop,
        stop_ids,
        stream,
        typeahead_key: h.finish(),
        req,
    })
}

async fn completions(State(st): State<Arc<AppState>>, body: Body) -> Response {
    let t0 = Instant::now();
    let bytes: Bytes = match axum::body::to_bytes(body, st.limits.max_body_bytes).await {
        Ok(b) => b,
        Err(_) => {
            return ApiError {
                status: StatusCode::PAYLOAD_TOO_LARGE,
                kind: "invalid_request_error",
                message: format!("the request body is larger than {} bytes", st.limits.max_body_bytes),
                param: None,
                code: Some("body_too_large"),
                retry_after: None,
            }
            .into_response()
        }
    };
    let plan = match parse_and_plan(&st, &bytes) {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    let id = completion_id();
    let created = unix_now();

    // Typed-ahead: the user typed the start of a recent suggestion.
    if plan.sampling.is_greedy() && plan.n == 1 {
        let hit = st.typeahead.lock().ok().and_then(|t| t.lookup(plan.typeahead_key, &plan.req.prompt));
        if let Some((text, finish)) = hit {
            metrics::counter!("ghostline_cache_hits_total", "kind" => "typeahead").increment(1);
            let ms = t0.elapsed().as_secs_f64() * 1000.0;
            let summary = Summary { prompt_tokens: plan.ids.len(), total_ms: ms, ttft_ms: ms, ..Summary::default() };
            let record = Recorder { st: st.clone(), key: None, prompt: String::new() };
            let events = vec![
                Event::Text { index: 0, text },
                Event::Done { index: 0, finish },
                Event::Finished(summary),
            ];
            return respond(st.model_name.clone(), id, created, plan.stream, 1, CacheOutcome::Typeahead, stream::iter(events), record).await;
        }
    }

    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let key = match (&plan.req.user, &plan.req.path) {
        (Some(u), Some(p)) => Some((u.clone(), p.clone())),
        _ => None,
    };
    let n = plan.n;
    let record = Recorder {
        st: st.clone(),
        key: (plan.sampling.is_greedy() && n == 1).then_some(plan.typeahead_key),
        prompt: plan.req.prompt.clone(),
    };
    let req = Request {
        prompt: plan.ids,
        n,
        max_tokens: plan.max_tokens,
        sampling: plan.sampling,
        stop: plan.stop,
        stop_ids: plan.stop_ids,
        supersede_key: key,
        events: tx,
        submitted: t0,
    };
    if let Err(e) = st.scheduler.submit(req) {
        let (status, msg) = match e {
            SubmitError::QueueFull => (StatusCode::SERVICE_UNAVAILABLE, "the server is busy; retry shortly"),
            SubmitError::Stopped => (StatusCode::SERVICE_UNAVAILABLE, "the server is shutting down"),
        };
        return ApiError { status, kind: "overloaded_error", message: msg.into(), param: None, code: None, retry_after: Some(1) }
            .into_response();
    }
    let events = tokio_stream::wrappers::UnboundedReceiverStream::new(rx);
    respond(st.model_name.clone(), id, created, plan.stream, n, CacheOutcome::Miss, events, record).await
}

/// Remembers a finished deterministic completion for typed-ahead reuse.
struct Recorder {
    st: Arc<AppState>,
    key: Option<u64>,
    prompt: String,
}

impl Recorder {
    fn done(&self, text: &str, finish: Option<FinishReason>) {
        if let (Some(key), Some(f)) = (self.key, finish) {
            if let Ok(mut t) = self.st.typeahead.lock() {
                t.record(key, &self.prompt, text, f);
            }
        }
    }
}

fn observe(summary: &Summary, cache: CacheOutcome) {
    metrics::histogram!("ghostline_ttft_seconds").record(summary.ttft_ms / 1000.0);
    metrics::histogram!("ghostline_request_duration_seconds").record(summary.total_ms / 1000.0);
    if cache == CacheOutcome::Miss {
        metrics::counter!("ghostline_prompt_tokens_total").increment(summary.prompt_tokens as u64);
        metrics::counter!("ghostline_cached_tokens_total").increment(summary.cached_tokens as u64);
        metrics::counter!("ghostline_generated_tokens_total").increment(summary.completion_tokens as u64);
    }
}

fn final_fields(summary: &Summary) -> (Usage, Timings) {
    (
        Usage {
            prompt_tokens: summary.prompt_tokens as u32,
            completion_tokens: summary.completion_tokens as u32,
            total_tokens: (summary.prompt_tokens + summary.completion_tokens) as u32,
            prompt_tokens_details: PromptTokensDetails { cached_tokens: summary.cached_tokens as u32 },
        },
        Timings {
            queue_ms: round3(summary.queue_ms),
            prefill_ms: round3(summary.prefill_ms),
            ttft_ms: round3(summary.ttft_ms),
            total_ms: round3(summary.total_ms),
        },
    )
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

#[allow(clippy::too_many_arguments)]
async fn respond<S>(
    model: String,
    id: String,
    created: u64,
    streaming: bool,
    n: usize,
    cache: CacheOutcome,
    events: S,
    record: Recorder,
) -> Response
where
    S: Stream<Item = Event> + Send + Unpin + 'static,
{
    let chunk = move |choices: Vec<Choice>| CompletionChunk {
        id: id.clone(),
        object: "text_completion".into(),
        created,
        model: model.clone(),
        choices,
        usage: None,
        cache: None,
        timings: None,
    };
    if !streaming {
        let mut texts = vec![String::new(); n];
        let mut finishes: Vec<Option<FinishReason>> = vec![None; n];
        let mut events = events;
        while let Some(ev) = events.next().await {
            match ev {
                Event::Text { index, text } => texts[index as usize].push_str(&text),
                Event::Done { index, finish } => finishes[index as usize] = Some(finish),
                Event::Error(m) => {
                    return ApiError {
                        status: StatusCode::INTERNAL_SERVER_ERROR,
                        kind: "server_error",
                        message: m,
                        param: None,
                        code: None,
                        retry_after: None,
                    }
                    .into_response()
                }
                Event::Finished(summary) => {
                    observe(&summary, cache);
                    if n == 1 {
                        record.done(&texts[0], finishes[0]);
                    }
                    let (usage, timings) = final_fields(&summary);
                    let mut c = chunk(
                        texts
                            .drain(..)
                            .enumerate()
                            .map(|(i, text)| Choice { index: i as u32, text, finish_reason: finishes[i] })
                            .collect(),
                    );
                    c.usage = Some(usage);
                    c.cache = Some(cache);
                    c.timings = Some(timings);
                    return Json(c).into_response();
                }
            }
        }
        return ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            kind: "server_error",
            message: "the engine stopped before the completion finished".into(),
            param: None,
            code: None,
            retry_after: None,
        }
        .into_response();
    }

    struct St<S> {
        events: S,
        finishes: Vec<Option<FinishReason>>,
        text0: String,
        done: bool,
        record: Recorder,
    }
    let state = St { events, finishes: vec![None; n], text0: String::new(), done: false, record };
    let body = stream::unfold((state, chunk), move |(mut s, chunk)| async move {
        if s.done {
            return None;
        }
        loop {
            let Some(ev) = s.events.next().await else {
                s.done = true;
                return Some((vec![SseEvent::default().data("[DONE]")], (s, chunk)));
            };
            match ev {
                Event::Text { index, text } => {
                    if index == 0 {
                        s.text0.push_str(&text);
                    }
                    let c = chunk(vec![Choice { index, text, finish_reason: None }]);
                    return Some((vec![sse_json(&c)], (s, chunk)));
                }
                Event::Done { index, finish } => s.finishes[index as usize] = Some(finish),
                Event::Error(m) => {
                    s.done = true;
                    let e = ErrorBody {
                        error: ErrorDetail { kind: "server_error".into(), message: m, param: None, code: None },
                    };
                    let ev = SseEvent::default().data(serde_json::to_string(&e).unwrap_or_default());
                    return Some((vec![ev, SseEvent::default().data("[DONE]")], (s, chunk)));
                }
                Event::Finished(summary) => {
                    s.done = true;
                    observe(&summary, cache);
                    if s.finishes.len() == 1 {
                        s.record.done(&s.text0, s.finishes[0]);
                    }
                    let (usage, timings) = final_fields(&summary);
                    let mut c = chunk(
                        s.finishes
                            .iter()
                            .enumerate()
                            .map(|(i, f)| Choice { index: i as u32, text: String::new(), finish_reason: *f })
                            .collect(),
                    );
                    c.usage = Some(usage);
                    c.cache = Some(cache);
                    c.timings = Some(timings);
                    return Some((vec![sse_json(&c), SseEvent::default().data("[DONE]")], (s, chunk)));
                }
            }
        }
    })
    .flat_map(|evs| stream::iter(evs.into_iter().map(Ok::<_, Infallible>)));
    Sse::new(body).into_response()
}

fn sse_json(c: &CompletionChunk) -> SseEvent {
    SseEvent::default().data(serde_json::to_string(c).unwrap_or_default())
}
