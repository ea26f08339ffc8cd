//! The gateway: what stands between a key's request and the model, in three steps, each concern
//! in one place.
//! - `admit`: the key's rate buckets, before the body is read (429 with `x-ratelimit-*`).
//! - `open` (after validation and the prompt): the key's in-flight slots, the cache keys and
//!   the completion record, held by a `Ticket`; `lookup` answers from the response cache or
//!   the typed-ahead cache when it can.
//! - `Ticket::finish` when the completion ends: fills both caches, charges the key's generated
//!   tokens and records the completion (or, dropped before the end, records it cancelled).

use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::http::HeaderValue;
use axum::response::Response;
use ghostline_api::{CacheOutcome, CompletionRequest, FinishReason};

use crate::error::HttpError;
use crate::filters::{Filters, Hold};
use crate::inference::{Event, Summary};
use crate::ingest::{CompletionRecord, EventRecord, Ingest, IngestError};
use crate::keys::Principal;
use crate::limits::{Decision, InFlight, Limiter, Rates, Slot};
use crate::prompt::PromptPlan;
use crate::response_cache::{self, CachedAnswer, ResponseCache};
use crate::typeahead::TypeAhead;
use crate::validate::Validated;

/// Per-key limits: rate buckets and in-flight sequences.
pub struct KeyLimits {
    pub limiter: Limiter,
    /// Bucket size of the per-key rates, in seconds of the rate.
    pub burst_secs: f64,
    /// Queued + running sequences one key may have.
    pub max_inflight: usize,
}

/// The answer caches.
pub struct Caches {
    pub response: Option<Arc<ResponseCache>>,
    /// Model name, weights digest, device and KV format: part of every response-cache key.
    pub model_identity: String,
    pub typeahead: TypeAhead,
}

/// Where completions are recorded.
pub struct Recording {
    pub ingest: Ingest,
    /// The model name in each record.
    pub model: String,
    /// Keep prompt and completion text in the record.
    pub store_text: bool,
}

pub struct Gateway {
    limits: KeyLimits,
    inflight: Arc<InFlight>,
    response: Option<Arc<ResponseCache>>,
    model_identity: String,
    typeahead: Mutex<TypeAhead>,
    filters: Filters,
    recording: Recording,
}

/// A key's admission: its rates and, when it has any, the buckets' answer.
pub struct Admission {
    rates: Rates,
    decision: Option<Decision>,
}

impl Admission {
    /// The 429 of an empty bucket.
    pub fn refusal(&self) -> Option<HttpError> {
        let d = self.decision.filter(|d| !d.allowed)?;
        metrics::counter!("ghostline_rate_limited_total", "reason" => "rate").increment(1);
        Some(HttpError::RateLimited { retry_secs: d.retry_ms.div_ceil(1000) })
    }

    /// OpenAI's `x-ratelimit-*` headers for the key's buckets, on whatever the answer is.
    pub fn headers(&self, r: &mut Response) {
        let Some(d) = &self.decision else { return };
        let h = r.headers_mut();
        let secs = |ms: u64| {
            HeaderValue::from_str(&format!("{:.3}s", ms as f64 / 1000.0)).unwrap_or(HeaderValue::from_static("0s"))
        };
        if let (Some(l), Some(rem)) = (self.rates.requests_per_minute, d.remaining_requests) {
            h.insert("x-ratelimit-limit-requests", HeaderValue::from(l));
            h.insert("x-ratelimit-remaining-requests", HeaderValue::from(rem));
            h.insert("x-ratelimit-reset-requests", secs(d.reset_requests_ms));
        }
        if let (Some(l), Some(rem)) = (self.rates.tokens_per_minute, d.remaining_tokens) {
            h.insert("x-ratelimit-limit-tokens", HeaderValue::from(l));
            h.insert("x-ratelimit-remaining-tokens", HeaderValue::from(rem));
            h.insert("x-ratelimit-reset-tokens", secs(d.reset_tokens_ms));
        }
    }
}

impl Gateway {
    pub fn new(limits: KeyLimits, caches: Caches, filters: Filters, recording: Recording) -> Gateway {
        Gateway {
            limits,
            inflight: Arc::default(),
            response: caches.response,
            model_identity: caches.model_identity,
            typeahead: Mutex::new(caches.typeahead),
            filters,
            recording,
        }
    }

    fn rates(&self, who: &Principal) -> Rates {
        Rates {
            requests_per_minute: who.requests_per_minute,
            tokens_per_minute: who.tokens_per_minute,
            burst_secs: self.limits.burst_secs,
        }
    }

    /// Takes one request from the key's bucket, when it has rates.
    pub async fn admit(&self, who: &Principal) -> Admission {
        let rates = self.rates(who);
        let decision = match &who.name {
            Some(name) if rates.limited() => Some(self.limits.limiter.admit(name, &rates).await),
            _ => None,
        };
        Admission { rates, decision }
    }

    /// Takes secrets out of everything the model, the caches and the logs would read.
    pub fn redact(&self, req: &mut CompletionRequest) {
        let f = &self.filters;
        f.redact_in_place(&mut req.prompt);
        if let Some(s) = req.suffix.as_mut() {
            f.redact_in_place(s);
        }
        for c in req.context.iter_mut().flatten() {
            f.redact_in_place(&mut c.text);
        }
    }

    /// Stores a telemetry batch; returns once it is committed.
    pub async fn ingest(&self, who: &Principal, events: Vec<ghostline_api::TelemetryEvent>) -> Result<(), HttpError> {
        let records = events.into_iter().map(|event| EventRecord { event, key_name: who.name.clone() }).collect();
        self.recording.ingest.submit(records).await.map_err(|e| match e {
            IngestError::Busy => HttpError::TelemetryBacklogFull,
            IngestError::Failed(m) => HttpError::TelemetryFailed(m),
        })
    }

    /// Opens a completion: the key's in-flight slots for its candidates, its cache keys and
    /// its record.
    pub fn open(
        self: &Arc<Self>,
        who: Principal,
        v: &Validated,
        plan: &PromptPlan,
        id: String,
        started: Instant,
    ) -> Result<Ticket, HttpError> {
        let slot = match &who.name {
            Some(name) => Some(self.inflight.acquire(name, v.n, self.limits.max_inflight).ok_or_else(|| {
                metrics::counter!("ghostline_rate_limited_total", "reason" => "in_flight").increment(1);
                HttpError::TooManyInFlight { cap: self.limits.max_inflight }
            })?),
            None => None,
        };
        let deterministic = v.deterministic();
        let cache_key = (deterministic && self.response.is_some()).then(|| {
            response_cache::key(&response_cache::KeyParts {
                model: &self.model_identity,
                prompt_ids: &plan.ids,
                stop_ids: &plan.stop_ids,
                max_tokens: v.max_tokens,
                stop: &plan.stop,
                top_k: v.sampling.top_k,
                top_p: v.sampling.top_p,
                heal: (!plan.lead.is_empty()).then_some(plan.lead.as_str()),
            })
        });
        let completion = CompletionRecord {
            id,
            key_name: who.name.clone(),
            language: v.language.clone(),
            editor: v.editor.clone(),
            model: self.recording.model.clone(),
            prompt_tokens: plan.ids.len() as u64,
            ..CompletionRecord::default()
        };
        Ok(Ticket {
            gateway: self.clone(),
            rates: self.rates(&who),
            who,
            typeahead_key: deterministic.then(|| typeahead_key(v, plan)),
            prompt: v.prompt.clone(),
            prompt_tokens: plan.ids.len(),
            cache_key,
            completion: Some(completion),
            started,
            _slot: slot,
        })
    }

    /// The answer from the response cache (the same question, answered here or by another
    /// replica) or the typed-ahead cache (the user typed the start of a recent suggestion), as
    /// the events the engine would have sent.
    pub async fn lookup(&self, t: &mut Ticket) -> Option<(CacheOutcome, Vec<Event>)> {
        if let (Some(c), Some(k)) = (&self.response, &t.cache_key) {
            if let Some(e) = c.get(k).await {
                metrics::counter!("ghostline_cache_hits_total", "kind" => "response").increment(1);
                t.cache_key = None;
                gateway_time(t.started, "hit");
                return Some((CacheOutcome::Hit, t.answer(e.text.clone(), e.finish, e.completion_tokens as usize)));
            }
        }
        let key = t.typeahead_key?;
        let hit = self.typeahead.lock().ok().and_then(|ta| ta.lookup(key, &t.prompt));
        let (text, finish) = hit?;
        metrics::counter!("ghostline_cache_hits_total", "kind" => "typeahead").increment(1);
        t.typeahead_key = None;
        t.cache_key = None;
        Some((CacheOutcome::Typeahead, t.answer(text, finish, 0)))
    }
}

/// Time spent in the gateway (auth, limits, validation, cache lookup) before a request is
/// answered from a cache or handed to inference.
pub fn gateway_time(arrived: Instant, outcome: &'static str) {
    metrics::histogram!("ghostline_gateway_seconds", "outcome" => outcome).record(arrived.elapsed().as_secs_f64());
}

/// What must match besides the prompt for a typed-ahead answer: suffix, context, stops and
/// sampling settings.
fn typeahead_key(v: &Validated, plan: &PromptPlan) -> u64 {
    let mut h = DefaultHasher::new();
    (&v.suffix, &plan.stop, v.sampling.top_k, v.n, v.sampling.seed).hash(&mut h);
    (v.sampling.temperature.to_bits(), v.sampling.top_p.to_bits()).hash(&mut h);
    for s in &v.context {
        (&s.path, &s.text).hash(&mut h);
    }
    h.finish()
}

/// One completion on its way through the gateway. Holds the key's in-flight slots until
/// dropped; dropped before `finish`, it records the completion as cancelled.
pub struct Ticket {
    gateway: Arc<Gateway>,
    who: Principal,
    rates: Rates,
    typeahead_key: Option<u64>,
    prompt: String,
    prompt_tokens: usize,
    cache_key: Option<response_cache::Key>,
    /// Filled in when the completion ends; taken once recorded.
    completion: Option<CompletionRecord>,
    started: Instant,
    _slot: Option<Slot>,
}

/// A client that goes away before the end still leaves a record: cancelled, with what is known.
impl Drop for Ticket {
    fn drop(&mut self) {
        if let Some(mut c) = self.completion.take() {
            c.total_ms = self.started.elapsed().as_secs_f64() * 1000.0;
            c.cache = "miss";
            c.finish_reason = Some(finish_name(FinishReason::Cancelled));
            self.gateway.recording.ingest.record(c);
        }
    }
}

impl Ticket {
    /// A cached answer as engine events.
    fn answer(&self, text: String, finish: FinishReason, completion_tokens: usize) -> Vec<Event> {
        let ms = self.started.elapsed().as_secs_f64() * 1000.0;
        let summary = Summary {
            prompt_tokens: self.prompt_tokens,
            completion_tokens,
            total_ms: ms,
            ttft_ms: ms,
            ..Summary::default()
        };
        vec![Event::Text { index: 0, text }, Event::Done { index: 0, finish }, Event::Finished(summary)]
    }

    /// How much streamed text waits for the output check.
    pub fn hold(&self) -> Hold {
        self.gateway.filters.hold()
    }

    /// Why `text` must not be shown, if it must not.
    pub fn blocked(&self, text: &str) -> Option<&'static str> {
        let reason = self.gateway.filters.check_output(text)?;
        metrics::counter!("ghostline_filtered_completions_total", "reason" => reason).increment(1);
        Some(reason)
    }

    /// The completion ended: `first` is candidate 0's text and finish, or None when it was
    /// filtered out. Fills the caches, charges the key, records the completion.
    pub fn finish(
        &mut self,
        first: Option<(&str, FinishReason)>,
        finishes: &[Option<FinishReason>],
        summary: &Summary,
        cache: CacheOutcome,
    ) {
        observe(summary, cache);
        let gw = self.gateway.clone();
        if let Some((text, finish)) = first.filter(|_| finishes.len() == 1) {
            if let (Some(key), Ok(mut t)) = (self.typeahead_key, gw.typeahead.lock()) {
                t.record(key, &self.prompt, text, finish);
            }
            if let (Some(c), Some(k)) = (&gw.response, self.cache_key) {
                if matches!(finish, FinishReason::Stop | FinishReason::Length) {
                    let completion_tokens = summary.completion_tokens as u32;
                    c.put(k, CachedAnswer { text: text.to_string(), finish, completion_tokens });
                }
            }
            if let Some(c) = self.completion.as_mut().filter(|_| gw.recording.store_text) {
                c.prompt = Some(self.prompt.clone());
                c.completion = Some(text.to_string());
            }
        }
        if let Some(name) = self.who.name.clone() {
            let (rates, tokens) = (self.rates, summary.completion_tokens as u64);
            let gw = gw.clone();
            tokio::spawn(async move { gw.limits.limiter.charge(&name, &rates, tokens).await });
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
        gw.recording.ingest.record(c);
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
