//! The HTTP API v1 (docs: DESIGN.md): the router, the auth middleware, and short handlers that
//! read the body, validate it (`validate`), build the prompt (`prompt`, off the async workers
//! when it is long), pass the gateway (`gateway`), submit to inference and hand the events to
//! `respond`. Handlers never touch model state; they do not know what runs the model.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{Extension, MatchedPath, Query, Request as HttpRequest, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::StreamExt;
use ghostline_api::{CacheOutcome, ModelInfo, ModelList};
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::json;

use crate::error::HttpError;
use crate::gateway::{gateway_time, Gateway};
use crate::health::Health;
use crate::inference::{Event, Inference, Job, SubmitError};
use crate::keys::{Auth, Denied, Principal};
use crate::prompt::{PromptBuilder, PromptPlan};
use crate::respond::{respond, unix_now, Reply};
use crate::store::{DbTarget, Store};
use crate::validate::{self, Limits, ModelFacts, Validated};

/// Everything the handlers share.
pub struct AppState {
    pub model: ModelFacts,
    pub limits: Limits,
    pub prompts: Arc<PromptBuilder>,
    pub inference: Arc<dyn Inference>,
    pub gateway: Arc<Gateway>,
    pub auth: Arc<Auth>,
    /// Serve /metrics and /v1/stats without a key.
    pub open_metrics: bool,
    pub database: DbTarget,
    pub metrics: PrometheusHandle,
    pub started: Instant,
    /// Log the text the engine is given (debugging only).
    pub log_prompts: bool,
    /// Draining or failed: new work is refused and `/ready` says 503.
    pub health: Arc<Health>,
    /// Time to receive a whole request body once its headers are in.
    pub body_timeout: Duration,
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
        .route("/dashboard", get(crate::dashboard::page))
        .route("/v1/dashboard", get(crate::dashboard::data))
        .fallback(|| async { HttpError::NoSuchEndpoint })
        .layer(axum::middleware::from_fn_with_state(state.clone(), authenticate))
        .layer(axum::middleware::from_fn_with_state(state.clone(), refuse_when_draining))
        .layer(axum::middleware::from_fn(count_requests))
        .with_state(state)
}

/// When the request reached the gateway (before auth), for `ghostline_gateway_seconds`.
#[derive(Clone, Copy)]
struct Arrived(Instant);

/// Lets a request through with its `Principal`, or answers 401 without saying why.
async fn authenticate(State(st): State<Arc<AppState>>, mut req: HttpRequest, next: Next) -> Response {
    req.extensions_mut().insert(Arrived(Instant::now()));
    let path = req.extensions().get::<MatchedPath>().map(|p| p.as_str().to_string());
    let needed = match path.as_deref() {
        // The dashboard's page holds no data; what it reads (/v1/dashboard) needs a key.
        None | Some("/health" | "/ready" | "/dashboard") => false,
        Some("/metrics" | "/v1/stats") => !st.open_metrics,
        Some(_) => true,
    };
    if !needed {
        req.extensions_mut().insert(Principal::default());
        return next.run(req).await;
    }
    let header = req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).map(str::to_string);
    let auth = st.auth.clone();
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
        Ok(Err(Denied::Unauthorized)) => HttpError::Unauthorized.into_response(),
        _ => HttpError::KeyStoreUnavailable.into_response(),
    }
}

/// While draining (after SIGTERM) or once the engine has failed, new work gets 503 with
/// `Retry-After` and the connection is closed, so that the client retries on another replica.
/// Probes and metrics are still answered.
async fn refuse_when_draining(State(st): State<Arc<AppState>>, req: HttpRequest, next: Next) -> Response {
    let work = matches!(
        req.extensions().get::<MatchedPath>().map(MatchedPath::as_str),
        Some("/v1/completions" | "/v1/telemetry")
    );
    let refusal = match st.health.failure() {
        Some(why) => Some(HttpError::EngineFailed(why)),
        None => st.health.draining().then_some(HttpError::ShuttingDown),
    };
    match refusal {
        Some(e) if work => {
            let mut r = e.into_response();
            r.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
            r
        }
        _ => next.run(req).await,
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
    if let Some(why) = st.health.failure() {
        let body = json!({"status": "engine_failed", "model": st.model.name, "error": why});
        return (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response();
    }
    if st.health.draining() {
        return (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"status": "draining", "model": st.model.name})))
            .into_response();
    }
    if let Some(why) = st.health.upstream_down() {
        let body = json!({"status": "upstream_unavailable", "model": st.model.name, "error": why});
        return (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response();
    }
    Json(json!({"status": "ready", "model": st.model.name})).into_response()
}

async fn metrics_text(State(st): State<Arc<AppState>>) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], st.metrics.render()).into_response()
}

/// The body of `GET /v1/models`.
pub fn model_list(model: &ModelFacts, created: u64) -> ModelList {
    ModelList {
        object: "list".into(),
        data: vec![ModelInfo {
            id: model.name.clone(),
            object: "model".into(),
            created,
            owned_by: "ghostline".into(),
            context_length: Some(model.context_length as u32),
            fim: model.fim.map(str::to_string),
        }],
    }
}

async fn models(State(st): State<Arc<AppState>>) -> Json<ModelList> {
    Json(model_list(&st.model, unix_now()))
}

/// A body announced (`Content-Length`) over the limit is refused before any of it is read.
fn check_announced(headers: &HeaderMap, limit: usize) -> Result<(), HttpError> {
    let announced = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok());
    match announced {
        Some(n) if n > limit as u64 => Err(HttpError::BodyTooLarge { limit }),
        _ => Ok(()),
    }
}

/// The whole body, within `limit` bytes and `timeout`.
async fn read_body(body: Body, limit: usize, timeout: Duration) -> Result<Bytes, HttpError> {
    match tokio::time::timeout(timeout, axum::body::to_bytes(body, limit)).await {
        Ok(Ok(b)) => Ok(b),
        Ok(Err(_)) => Err(HttpError::BodyTooLarge { limit }),
        Err(_) => Err(HttpError::BodyTimeout { secs: timeout.as_secs() }),
    }
}

async fn completions(
    State(st): State<Arc<AppState>>,
    Extension(who): Extension<Principal>,
    arrived: Option<Extension<Arrived>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let t0 = arrived.map_or_else(Instant::now, |a| a.0 .0);
    if let Err(e) = check_announced(&headers, st.limits.max_body_bytes) {
        return e.into_response();
    }
    let admission = st.gateway.admit(&who).await;
    let mut resp = match admission.refusal() {
        Some(e) => e.into_response(),
        None => complete(&st, who, t0, body).await.unwrap_or_else(IntoResponse::into_response),
    };
    admission.headers(&mut resp);
    resp
}

/// A completion past the rate limit: validation, the prompt, the gateway, inference.
async fn complete(st: &AppState, who: Principal, t0: Instant, body: Body) -> Result<Response, HttpError> {
    let bytes = read_body(body, st.limits.max_body_bytes, st.body_timeout).await?;
    let mut req = validate::parse_completion(&bytes)?;
    // Secrets go before anything else reads the text: caches, logs, the model.
    st.gateway.redact(&mut req);
    let v = validate::validate(req, &st.model, &st.limits)?;
    let (v, plan) = build_prompt(st.prompts.clone(), v, st.model.context_length).await?;
    let reply = Reply::new(&st.model.name, v.stream, v.n);
    let mut ticket = st.gateway.open(who, &v, &plan, reply.id.clone(), t0)?;
    if let Some((outcome, events)) = st.gateway.lookup(&mut ticket).await {
        return Ok(respond(reply, outcome, futures_util::stream::iter(events), ticket).await);
    }
    if st.log_prompts {
        let text = st.prompts.render(&plan.ids);
        tracing::info!(target: "ghostline::prompts", id = %reply.id, "engine input: {text:?}");
    }
    let job = Job {
        prompt: plan.ids,
        n: v.n,
        max_tokens: v.max_tokens,
        sampling: v.sampling,
        stop: plan.stop,
        stop_ids: plan.stop_ids,
        first_tokens: plan.first_tokens,
        lead: plan.lead,
        supersede_key: v.supersede,
        submitted: t0,
    };
    gateway_time(t0, "miss");
    let mut events = st.inference.submit(job).map_err(|e| match e {
        SubmitError::QueueFull => HttpError::Busy,
        SubmitError::Stopped => st.health.failure().map_or(HttpError::ShuttingDown, HttpError::EngineFailed),
    })?;
    // Inference that cannot be reached says so before anything is produced: a 503 to retry,
    // not a stream that fails.
    let first = events.recv().await;
    if let Some(Event::Unavailable(m)) = first {
        return Err(HttpError::Unavailable(m));
    }
    let events = futures_util::stream::iter(first).chain(tokio_stream::wrappers::UnboundedReceiverStream::new(events));
    Ok(respond(reply, CacheOutcome::Miss, events, ticket).await)
}

/// Request text up to which a prompt is tokenized on the async worker itself: below it,
/// tokenizing costs less than the hop to the blocking pool.
const INLINE_PROMPT_BYTES: usize = 2048;

/// Builds the prompt, on the blocking pool when the text is long enough for tokenizing it to
/// hold up an async worker.
async fn build_prompt(
    prompts: Arc<PromptBuilder>,
    v: Validated,
    context: usize,
) -> Result<(Validated, PromptPlan), HttpError> {
    let bytes = v.prompt.len()
        + v.suffix.as_ref().map_or(0, String::len)
        + v.context.iter().map(|c| c.path.len() + c.text.len()).sum::<usize>();
    let (v, plan) = if bytes <= INLINE_PROMPT_BYTES {
        let plan = prompts.build(&v);
        (v, plan)
    } else {
        tokio::task::spawn_blocking(move || {
            let plan = prompts.build(&v);
            (v, plan)
        })
        .await
        .map_err(|e| HttpError::Internal(format!("building the prompt failed: {e}")))?
    };
    Ok((v, plan.map_err(|e| HttpError::from_prompt(e, context))?))
}

/// Largest telemetry body: a full batch of long events fits.
const MAX_TELEMETRY_BYTES: usize = 4 << 20;

async fn telemetry(
    State(st): State<Arc<AppState>>,
    Extension(who): Extension<Principal>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, HttpError> {
    check_announced(&headers, MAX_TELEMETRY_BYTES)?;
    let bytes = read_body(body, MAX_TELEMETRY_BYTES, st.body_timeout).await?;
    let events = validate::parse_events(&bytes)?;
    let n = events.len();
    st.gateway.ingest(&who, events).await?;
    Ok((StatusCode::ACCEPTED, Json(json!({"accepted": n}))).into_response())
}

#[derive(serde::Deserialize)]
struct StatsQuery {
    since: Option<String>,
}

async fn stats(State(st): State<Arc<AppState>>, Query(q): Query<StatsQuery>) -> Result<Response, HttpError> {
    let now = crate::ingest::unix_ms();
    let since = match q.since.as_deref() {
        None => now - 7 * 86_400_000,
        Some(s) => crate::stats::parse_since(s, now)
            .ok_or_else(|| HttpError::invalid("since must be unix seconds or an age like 30m, 24h, 7d", "since"))?,
    };
    let target = st.database.clone();
    let report = tokio::task::spawn_blocking(move || -> anyhow::Result<crate::stats::Report> {
        let mut store = Store::open(&target)?;
        crate::stats::report(&mut store, since)
    })
    .await
    .map_err(|e| HttpError::Internal(e.to_string()))?
    .map_err(|e| HttpError::StatsUnavailable(e.to_string()))?;
    Ok(Json(report).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_model_list() {
        let fim = ModelFacts { name: "ghostline-tiny".into(), context_length: 2048, fim: Some("qwen") };
        let plain = ModelFacts { name: "llama".into(), context_length: 512, fim: None };
        let bodies = [fim, plain].map(|m| serde_json::to_string_pretty(&model_list(&m, 1764201600)).unwrap());
        insta::assert_snapshot!(bodies.join("\n"));
    }
}
