//! The HTTP API v1 (DESIGN.md): request validation, prompt templating, streaming and errors.
//! Handlers only validate, submit to the scheduler and stream its events back.

use std::convert::Infallible;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::body::{Body, Bytes};
use axum::extract::{Extension, MatchedPath, Query, Request as HttpRequest, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::stream::{self, Stream, StreamExt};
use ghostline_api::{
    CacheOutcome, Choice, CompletionChunk, CompletionRequest, ErrorBody, ErrorDetail, FinishReason,
    PromptTokensDetails, TelemetryEvent, Timings, Usage,
};
use ghostline_engine::{SamplingParams, Tokenizer};
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::json;

use crate::cache::{self, ResponseCache};
use crate::filters::{Filters, Outgoing};
use crate::fim::{self, FimTemplate, PromptError};
use crate::keys::{Auth, Denied, Principal};
use crate::limits::{Decision, InFlight, Limiter, Rates, Slot};
use crate::scheduler::{Event, Request, Scheduler, SubmitError, Summary};
use crate::store::{DbTarget, Store};
use crate::telemetry::{CompletionRecord, EventRecord, Ingest, IngestError};
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
    /// Token healing of FIM prompts (`--token-healing`), when on.
    pub heal: Option<Arc<fim::HealIndex>>,
    /// How FIM requests with the cursor inside a line are prompted (`--mid-line-prompt`).
    pub mid_line: fim::MidLine,
    /// EOS ids, plus the FIM markers for FIM requests.
    pub eos_ids: Vec<u32>,
    pub fim_stop_ids: Vec<u32>,
    pub limits: Limits,
    pub typeahead: Mutex<TypeAhead>,
    pub metrics: PrometheusHandle,
    pub started: Instant,
    pub gateway: Gateway,
}

/// What sits in front of the model: keys, limits, the response cache, filters and telemetry.
pub struct Gateway {
    pub auth: Arc<Auth>,
    pub limiter: Limiter,
    /// Bucket size of the per-key rates, in seconds of the rate.
    pub burst_secs: f64,
    pub inflight: Arc<InFlight>,
    /// Queued + running sequences one key may have.
    pub max_inflight_per_key: usize,
    pub cache: Option<Arc<ResponseCache>>,
    /// Model name and weights digest: part of every cache key.
    pub model_identity: String,
    pub filters: Filters,
    pub ingest: Ingest,
    pub database: DbTarget,
    /// Serve /metrics and /v1/stats without a key.
    pub open_metrics: bool,
    /// Keep prompt and completion text in the completion record.
    pub store_text: bool,
    /// Log the text the engine is given (debugging only).
    pub log_prompts: bool,
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
    fn status(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        ApiError { status, kind, message: message.into(), param: None, code: None, retry_after: None }
    }
    fn retry(mut self, secs: u64) -> Self {
        self.retry_after = Some(secs.max(1));
        self
    }
    fn too_large(limit: usize) -> Self {
        ApiError::status(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            format!("the request body is larger than {limit} bytes"),
        )
        .code("body_too_large")
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
        .route("/v1/telemetry", post(telemetry))
        .route("/v1/stats", get(stats))
        .route("/v1/models", get(models))
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics_text))
        .fallback(|| async { ApiError::status(StatusCode::NOT_FOUND, "not_found_error", "no such endpoint") })
        .layer(axum::middleware::from_fn_with_state(state.clone(), authenticate))
        .layer(axum::middleware::from_fn(count_requests))
        .with_state(state)
}

/// Lets a request through with its `Principal`, or answers 401 without saying why.
async fn authenticate(State(st): State<Arc<AppState>>, mut req: HttpRequest, next: Next) -> Response {
    req.extensions_mut().insert(Arrived(Instant::now()));
    let path = req.extensions().get::<MatchedPath>().map(|p| p.as_str().to_string());
    let needed = match path.as_deref() {
        None | Some("/health" | "/ready") => false,
        Some("/metrics" | "/v1/stats") => !st.gateway.open_metrics,
        Some(_) => true,
    };
    if !needed {
        req.extensions_mut().insert(Principal::default());
        return next.run(req).await;
    }
    let header = req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).map(str::to_string);
    let auth = st.gateway.auth.clone();
    // SQLite answers in microseconds, less than a hop to the blocking pool; Postgres is a round trip.
    let checked = if auth.is_local() {
        Ok(auth.check(header.as_deref()))
    } else {
        tokio::task::spawn_blocking(move || auth.check(header.as_deref())).await
    };
    match checked {
        Ok(Ok(p)) => {
            req.extensions_mut().insert(p);
            next.run(req).await
        }
        Ok(Err(Denied::Unauthorized)) => {
            let mut r = ApiError::status(
                StatusCode::UNAUTHORIZED,
                "authentication_error",
                "a valid API key is required: send the header Authorization: Bearer KEY",
            )
            .code("invalid_api_key")
            .into_response();
            r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            r
        }
        _ => ApiError::status(
            StatusCode::SERVICE_UNAVAILABLE,
            "overloaded_error",
            "the key store cannot be read; retry shortly",
        )
        .retry(1)
        .into_response(),
    }
}

/// When the request reached the gateway (before auth), for `ghostline_gateway_seconds`.
#[derive(Clone, Copy)]
struct Arrived(Instant);

/// Time spent in the gateway (auth, limits, validation, cache lookup) before a request is
/// answered from a cache or handed to the scheduler.
fn gateway_time(arrived: Instant, outcome: &'static str) {
    metrics::histogram!("ghostline_gateway_seconds", "outcome" => outcome).record(arrived.elapsed().as_secs_f64());
}

/// OpenAI's `x-ratelimit-*` headers for a key's buckets.
fn rate_headers(r: &mut Response, rates: &Rates, d: &Decision) {
    let h = r.headers_mut();
    let secs = |ms: u64| {
        HeaderValue::from_str(&format!("{:.3}s", ms as f64 / 1000.0)).unwrap_or(HeaderValue::from_static("0s"))
    };
    if let (Some(l), Some(rem)) = (rates.requests_per_minute, d.remaining_requests) {
        h.insert("x-ratelimit-limit-requests", HeaderValue::from(l));
        h.insert("x-ratelimit-remaining-requests", HeaderValue::from(rem));
        h.insert("x-ratelimit-reset-requests", secs(d.reset_requests_ms));
    }
    if let (Some(l), Some(rem)) = (rates.tokens_per_minute, d.remaining_tokens) {
        h.insert("x-ratelimit-limit-tokens", HeaderValue::from(l));
        h.insert("x-ratelimit-remaining-tokens", HeaderValue::from(rem));
        h.insert("x-ratelimit-reset-tokens", secs(d.reset_tokens_ms));
    }
}

fn rates_of(st: &AppState, p: &Principal) -> Rates {
    Rates {
        requests_per_minute: p.requests_per_minute,
        tokens_per_minute: p.tokens_per_minute,
        burst_secs: st.gateway.burst_secs,
    }
}

async fn count_requests(req: HttpRequest, next: Next) -> Response {
    let endpoint =
        req.extensions().get::<MatchedPath>().map(|p| p.as_str().to_string()).unwrap_or_else(|| "unmatched".into());
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
    /// The client's editor, for the completion record and /v1/stats.
    #[serde(default)]
    editor: Option<String>,
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
    heal: Option<fim::Heal>,
    stream: bool,
    typeahead_key: u64,
    editor: Option<String>,
}

fn parse_and_plan(st: &AppState, body: &[u8]) -> Result<Plan, ApiError> {
    if body.iter().all(|b| b.is_ascii_whitespace()) {
        return Err(ApiError::bad("the request body is empty; send a JSON object with at least \"prompt\"", None));
    }
    let text = std::str::from_utf8(body).map_err(|e| {
        ApiError::bad(format!("the request body is not valid UTF-8 (at byte {})", e.valid_up_to()), None)
    })?;
    let mut de = serde_json::Deserializer::from_str(text);
    let mut req: CompletionRequest = serde_path_to_error::deserialize(&mut de).map_err(|e| {
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
    // Secrets go before anything else reads the text: caches, logs, the model.
    let f = &st.gateway.filters;
    f.redact_in_place(&mut req.prompt);
    if let Some(s) = req.suffix.as_mut() {
        f.redact_in_place(s);
    }
    for c in req.context.iter_mut().flatten() {
        f.redact_in_place(&mut c.text);
    }

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
    let mut stop = req.stop.clone().unwrap_or_default();
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
            let heal = st.heal.as_deref();
            let prompt = if st.mid_line == fim::MidLine::Plain && fim::cursor_mid_line(&req.prompt, suffix) {
                // The rest of the line, left to right: the prompt holds no suffix to stop at.
                if !stop.iter().any(|s| s == "\n") {
                    stop.push("\n".into());
                }
                fim::build_plain(&st.tokenizer, &req.prompt, budget, extras.truncate, heal)
            } else {
                let ctx = req.context.clone().unwrap_or_default();
                fim::build_fim(&st.tokenizer, t, &req.prompt, suffix, &ctx, budget, extras.truncate, heal)
            };
            (prompt, st.fim_stop_ids.clone())
        }
        None => (fim::build_plain(&st.tokenizer, &req.prompt, budget, extras.truncate, None), st.eos_ids.clone()),
    };
    let (ids, heal) = match prompt {
        Ok(p) => (p.ids, p.heal),
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
        heal,
        stream,
        typeahead_key: h.finish(),
        editor: extras.editor.map(|e| e.chars().take(64).collect()),
        req,
    })
}

async fn read_body(body: Body, limit: usize) -> Result<Bytes, ApiError> {
    axum::body::to_bytes(body, limit).await.map_err(|_| ApiError::too_large(limit))
}

async fn completions(
    State(st): State<Arc<AppState>>,
    Extension(who): Extension<Principal>,
    arrived: Option<Extension<Arrived>>,
    body: Body,
) -> Response {
    let t0 = arrived.map_or_else(Instant::now, |a| a.0 .0);
    let rates = rates_of(&st, &who);
    let decision = match &who.name {
        Some(name) if rates.limited() => Some(st.gateway.limiter.admit(name, &rates).await),
        _ => None,
    };
    let mut resp = match decision {
        Some(d) if !d.allowed => {
            metrics::counter!("ghostline_rate_limited_total", "reason" => "rate").increment(1);
            ApiError::status(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limit_error",
                "this key's rate limit is reached; retry after the time in Retry-After",
            )
            .code("rate_limit_exceeded")
            .retry(d.retry_ms.div_ceil(1000))
            .into_response()
        }
        _ => complete(&st, who, t0, body).await.unwrap_or_else(IntoResponse::into_response),
    };
    if let Some(d) = decision {
        rate_headers(&mut resp, &rates, &d);
    }
    resp
}

/// A completion past the rate limit: validation, fair admission, the caches, the engine.
async fn complete(st: &Arc<AppState>, who: Principal, t0: Instant, body: Body) -> Result<Response, ApiError> {
    let bytes = read_body(body, st.limits.max_body_bytes).await?;
    let plan = parse_and_plan(st, &bytes)?;
    let slot = match &who.name {
        Some(name) => {
            Some(st.gateway.inflight.acquire(name, plan.n, st.gateway.max_inflight_per_key).ok_or_else(|| {
                metrics::counter!("ghostline_rate_limited_total", "reason" => "in_flight").increment(1);
                ApiError::status(
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate_limit_error",
                    format!(
                        "this key already has {} sequences queued or running; wait for one to finish",
                        st.gateway.max_inflight_per_key
                    ),
                )
                .code("too_many_in_flight")
                .retry(1)
            })?)
        }
        None => None,
    };
    let id = completion_id();
    let reply =
        Reply { model: st.model_name.clone(), id: id.clone(), created: unix_now(), streaming: plan.stream, n: plan.n };
    let deterministic = plan.sampling.is_greedy() && plan.n == 1;
    let cache_key = (deterministic && st.gateway.cache.is_some()).then(|| {
        cache::key(&cache::KeyParts {
            model: &st.gateway.model_identity,
            prompt_ids: &plan.ids,
            stop_ids: &plan.stop_ids,
            max_tokens: plan.max_tokens,
            stop: &plan.stop,
            top_k: plan.sampling.top_k,
            top_p: plan.sampling.top_p,
            heal: plan.heal.as_ref().map(|h| h.text.as_str()),
        })
    });
    let mut record = Recorder {
        st: st.clone(),
        typeahead_key: deterministic.then_some(plan.typeahead_key),
        prompt: plan.req.prompt.clone(),
        cache_key,
        completion: Some(CompletionRecord {
            id,
            key_name: who.name.clone(),
            language: plan.req.language.as_ref().map(|l| l.chars().take(64).collect()),
            editor: plan.editor.clone(),
            model: st.model_name.clone(),
            prompt_tokens: plan.ids.len() as u64,
            ..CompletionRecord::default()
        }),
        who,
        started: t0,
        _slot: slot,
    };
    let answer = |text: String, finish: FinishReason, completion_tokens: usize| {
        let ms = t0.elapsed().as_secs_f64() * 1000.0;
        let summary = Summary {
            prompt_tokens: plan.ids.len(),
            completion_tokens,
            total_ms: ms,
            ttft_ms: ms,
            ..Summary::default()
        };
        stream::iter(vec![Event::Text { index: 0, text }, Event::Done { index: 0, finish }, Event::Finished(summary)])
    };

    // The response cache: the same question, answered before (here or by another replica).
    if let (Some(c), Some(k)) = (&st.gateway.cache, &cache_key) {
        if let Some(e) = c.get(k).await {
            metrics::counter!("ghostline_cache_hits_total", "kind" => "response").increment(1);
            record.cache_key = None;
            gateway_time(t0, "hit");
            let events = answer(e.text.clone(), e.finish, e.completion_tokens as usize);
            return Ok(respond(reply, CacheOutcome::Hit, events, record).await);
        }
    }
    // Typed-ahead: the user typed the start of a recent suggestion.
    if deterministic {
        let hit = st.typeahead.lock().ok().and_then(|t| t.lookup(plan.typeahead_key, &plan.req.prompt));
        if let Some((text, finish)) = hit {
            metrics::counter!("ghostline_cache_hits_total", "kind" => "typeahead").increment(1);
            record.typeahead_key = None;
            record.cache_key = None;
            return Ok(respond(reply, CacheOutcome::Typeahead, answer(text, finish, 0), record).await);
        }
    }

    if st.gateway.log_prompts {
        let text = st.tokenizer.decode(&plan.ids, false).unwrap_or_default();
        tracing::info!(target: "ghostline::prompts", id = %reply.id, "engine input: {text:?}");
    }
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let key = match (&plan.req.user, &plan.req.path) {
        (Some(u), Some(p)) => Some((u.clone(), p.clone())),
        _ => None,
    };
    let req = Request {
        prompt: plan.ids,
        n: plan.n,
        max_tokens: plan.max_tokens,
        sampling: plan.sampling,
        stop: plan.stop,
        stop_ids: plan.stop_ids,
        heal: plan.heal,
        supersede_key: key,
        events: tx,
        submitted: t0,
    };
    gateway_time(t0, "miss");
    if let Err(e) = st.scheduler.submit(req) {
        let msg = match e {
            SubmitError::QueueFull => "the server is busy; retry shortly",
            SubmitError::Stopped => "the server is shutting down",
        };
        return Err(ApiError::status(StatusCode::SERVICE_UNAVAILABLE, "overloaded_error", msg).retry(1));
    }
    let events = tokio_stream::wrappers::UnboundedReceiverStream::new(rx);
    Ok(respond(reply, CacheOutcome::Miss, events, record).await)
}

/// The fixed fields of one answer.
struct Reply {
    model: String,
    id: String,
    created: u64,
    streaming: bool,
    n: usize,
}

/// What happens when a completion ends: output filters, typed-ahead and response caches, the
/// key's token bucket, the completion record. Holds the key's in-flight slot until dropped.
struct Recorder {
    st: Arc<AppState>,
    typeahead_key: Option<u64>,
    prompt: String,
    cache_key: Option<cache::Key>,
    /// Filled in when the completion ends; taken once recorded.
    completion: Option<CompletionRecord>,
    who: Principal,
    started: Instant,
    _slot: Option<Slot>,
}

/// A client that goes away before the end still leaves a record: cancelled, with what is known.
impl Drop for Recorder {
    fn drop(&mut self) {
        if let Some(mut c) = self.completion.take() {
            c.total_ms = self.started.elapsed().as_secs_f64() * 1000.0;
            c.cache = "miss";
            c.finish_reason = Some(finish_name(FinishReason::Cancelled));
            self.st.gateway.ingest.record(c);
        }
    }
}

impl Recorder {
    /// Why `text` must not be shown, if it must not.
    fn blocked(&self, text: &str) -> Option<&'static str> {
        let reason = self.st.gateway.filters.check_output(text)?;
        metrics::counter!("ghostline_filtered_completions_total", "reason" => reason).increment(1);
        Some(reason)
    }

    /// `first` is candidate 0's text and finish, or None when it was filtered out.
    fn finished(
        &mut self,
        first: Option<(&str, FinishReason)>,
        finishes: &[Option<FinishReason>],
        summary: &Summary,
        cache: CacheOutcome,
    ) {
        observe(summary, cache);
        let gw = &self.st.gateway;
        if let Some((text, finish)) = first.filter(|_| finishes.len() == 1) {
            if let (Some(key), Ok(mut t)) = (self.typeahead_key, self.st.typeahead.lock()) {
                t.record(key, &self.prompt, text, finish);
            }
            if let (Some(c), Some(k)) = (&gw.cache, self.cache_key) {
                if matches!(finish, FinishReason::Stop | FinishReason::Length) {
                    c.put(
                        k,
                        cache::Entry {
                            text: text.to_string(),
                            finish,
                            completion_tokens: summary.completion_tokens as u32,
                        },
                    );
                }
            }
            if let Some(c) = self.completion.as_mut().filter(|_| gw.store_text) {
                c.prompt = Some(self.prompt.clone());
                c.completion = Some(text.to_string());
            }
        }
        if let Some(name) = self.who.name.clone() {
            let rates = rates_of(&self.st, &self.who);
            let st = self.st.clone();
            let tokens = summary.completion_tokens as u64;
            tokio::spawn(async move { st.gateway.limiter.charge(&name, &rates, tokens).await });
        }
        let Some(mut c) = self.completion.take() else { return };
        c.prompt_tokens = summary.prompt_tokens as u64;
        c.cached_tokens = summary.cached_tokens as u64;
        c.completion_tokens = summary.completion_tokens as u64;
        c.queue_ms = summary.queue_ms;
        c.ttft_ms = summary.ttft_ms;
        c.total_ms = summary.total_ms;
        c.cache = match cache {
            CacheOutcome::Miss => "miss",
            CacheOutcome::Hit => "hit",
            CacheOutcome::Typeahead => "typeahead",
        };
        c.finish_reason = finishes.first().copied().flatten().map(finish_name);
        gw.ingest.record(c);
    }
}

fn finish_name(f: FinishReason) -> &'static str {
    match f {
        FinishReason::Stop => "stop",
        FinishReason::Length => "length",
        FinishReason::Cancelled => "cancelled",
        FinishReason::ContentFilter => "content_filter",
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

/// The last chunk: usage, cache outcome and timings.
fn final_chunk(mut c: CompletionChunk, summary: &Summary, cache: CacheOutcome) -> CompletionChunk {
    let (usage, timings) = final_fields(summary);
    c.usage = Some(usage);
    c.cache = Some(cache);
    c.timings = Some(timings);
    c
}

/// Candidate 0's text and finish, unless it was filtered out.
fn first(outs: &[Outgoing]) -> Option<(String, FinishReason)> {
    let o = outs.first().filter(|o| !o.blocked)?;
    Some((o.sent.clone(), o.finish?))
}

fn server_error(message: String) -> ApiError {
    ApiError::status(StatusCode::INTERNAL_SERVER_ERROR, "server_error", message)
}

async fn respond<S>(reply: Reply, cache: CacheOutcome, events: S, record: Recorder) -> Response
where
    S: Stream<Item = Event> + Send + Unpin + 'static,
{
    let Reply { model, id, created, streaming, n } = reply;
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
    let mut record = record;
    let mut outs: Vec<Outgoing> = (0..n).map(|_| Outgoing::default()).collect();
    if !streaming {
        let mut events = events;
        while let Some(ev) = events.next().await {
            match ev {
                Event::Text { index, text } => outs[index as usize].held.push_str(&text),
                Event::Done { index, finish } => outs[index as usize].finish = Some(finish),
                Event::Error(m) => return server_error(m).into_response(),
                Event::Finished(summary) => {
                    for o in outs.iter_mut() {
                        o.flush(&|t| record.blocked(t).is_some());
                    }
                    let f = first(&outs);
                    let finishes: Vec<_> = outs.iter().map(Outgoing::finish_reason).collect();
                    record.finished(f.as_ref().map(|(t, r)| (t.as_str(), *r)), &finishes, &summary, cache);
                    let choices = outs
                        .into_iter()
                        .enumerate()
                        .map(|(i, o)| Choice { index: i as u32, finish_reason: o.finish_reason(), text: o.sent })
                        .collect();
                    return Json(final_chunk(chunk(choices), &summary, cache)).into_response();
                }
            }
        }
        return server_error("the engine stopped before the completion finished".into()).into_response();
    }

    let hold = record.st.gateway.filters.hold();
    struct St<S> {
        events: S,
        outs: Vec<Outgoing>,
        done: bool,
        record: Recorder,
    }
    let state = St { events, outs, done: false, record };
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
                    let record = &s.record;
                    if let Some(text) = s.outs[index as usize].push(&|t| record.blocked(t).is_some(), &text, hold) {
                        let c = chunk(vec![Choice { index, text, finish_reason: None }]);
                        return Some((vec![sse_json(&c)], (s, chunk)));
                    }
                }
                Event::Done { index, finish } => s.outs[index as usize].finish = Some(finish),
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
                    let mut out = Vec::new();
                    for i in 0..s.outs.len() {
                        let record = &s.record;
                        if let Some(text) = s.outs[i].flush(&|t| record.blocked(t).is_some()) {
                            out.push(sse_json(&chunk(vec![Choice { index: i as u32, text, finish_reason: None }])));
                        }
                    }
                    let f = first(&s.outs);
                    let finishes: Vec<_> = s.outs.iter().map(Outgoing::finish_reason).collect();
                    s.record.finished(f.as_ref().map(|(t, r)| (t.as_str(), *r)), &finishes, &summary, cache);
                    let choices = finishes
                        .iter()
                        .enumerate()
                        .map(|(i, f)| Choice { index: i as u32, text: String::new(), finish_reason: *f })
                        .collect();
                    out.push(sse_json(&final_chunk(chunk(choices), &summary, cache)));
                    out.push(SseEvent::default().data("[DONE]"));
                    return Some((out, (s, chunk)));
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

/// Most events one telemetry batch may carry.
const MAX_EVENTS: usize = 1000;
/// Largest telemetry body: a full batch of long events fits.
const MAX_TELEMETRY_BYTES: usize = 4 << 20;

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

/// Parses a telemetry batch; the error names the first bad event.
fn parse_events(body: &[u8]) -> Result<Vec<TelemetryEvent>, ApiError> {
    let v: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| ApiError::bad(format!("malformed JSON: {e}"), None))?;
    let Some(list) = v.get("events").and_then(|e| e.as_array()) else {
        return Err(ApiError::bad("the body must be {\"events\": [...]}", Some("events")));
    };
    if list.len() > MAX_EVENTS {
        return Err(ApiError::status(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            format!("{} events in one batch; send at most {MAX_EVENTS}", list.len()),
        )
        .code("too_many_events"));
    }
    let mut out = Vec::with_capacity(list.len());
    for (i, raw) in list.iter().enumerate() {
        let e: TelemetryEvent = serde_path_to_error::deserialize(raw).map_err(|e| {
            let path = e.path().to_string();
            let param = if path == "." { format!("events[{i}]") } else { format!("events[{i}].{path}") };
            ApiError::bad(format!("event {i} is invalid: {}", e.into_inner()), Some(&param))
        })?;
        check_event(&e).map_err(|(field, msg)| {
            ApiError::bad(format!("event {i} is invalid: {msg}"), Some(&format!("events[{i}].{field}")))
        })?;
        out.push(e);
    }
    Ok(out)
}

async fn telemetry(
    State(st): State<Arc<AppState>>,
    Extension(who): Extension<Principal>,
    body: Body,
) -> Result<Response, ApiError> {
    let bytes = read_body(body, MAX_TELEMETRY_BYTES).await?;
    let events = parse_events(&bytes)?;
    let n = events.len();
    let records = events.into_iter().map(|event| EventRecord { event, key_name: who.name.clone() }).collect();
    match st.gateway.ingest.submit(records).await {
        Ok(()) => Ok((StatusCode::ACCEPTED, Json(json!({"accepted": n}))).into_response()),
        Err(IngestError::Busy) => Err(ApiError::status(
            StatusCode::SERVICE_UNAVAILABLE,
            "overloaded_error",
            "the telemetry backlog is full; nothing of this batch was stored, retry it later",
        )
        .retry(1)),
        Err(IngestError::Failed(m)) => Err(ApiError::status(
            StatusCode::SERVICE_UNAVAILABLE,
            "overloaded_error",
            format!("{m}; nothing of this batch was acknowledged, retry it later"),
        )
        .retry(5)),
    }
}

#[derive(serde::Deserialize)]
struct StatsQuery {
    since: Option<String>,
}

async fn stats(State(st): State<Arc<AppState>>, Query(q): Query<StatsQuery>) -> Result<Response, ApiError> {
    let now = crate::telemetry::unix_ms();
    let since = match q.since.as_deref() {
        None => now - 7 * 86_400_000,
        Some(s) => crate::stats::parse_since(s, now)
            .ok_or_else(|| ApiError::bad("since must be unix seconds or an age like 30m, 24h, 7d", Some("since")))?,
    };
    let target = st.gateway.database.clone();
    let report = tokio::task::spawn_blocking(move || -> anyhow::Result<crate::stats::Report> {
        let mut store = Store::open(&target)?;
        crate::stats::report(&mut store, since)
    })
    .await
    .map_err(|e| server_error(e.to_string()))?
    .map_err(|e| {
        ApiError::status(
            StatusCode::SERVICE_UNAVAILABLE,
            "overloaded_error",
            format!("the telemetry store cannot be read: {e}"),
        )
        .retry(5)
    })?;
    Ok(Json(report).into_response())
}
