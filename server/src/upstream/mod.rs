//! Inference delegated to an upstream engine (`--upstream URL`, `--upstream-kind llama-cpp |
//! openai`): the other implementation of `Inference`. The gateway keeps everything else (keys,
//! limits, caches, filters, telemetry, metrics) and builds the prompt as for local inference;
//! here each candidate becomes one streamed request of token ids (`wire`), and what comes back
//! goes through the same output path as the local scheduler's (`inference::Output`: the
//! streaming decoder, the lead, the stop strings and ids).
//!
//! Cancellation is by dropping: a superseded job (same user and path), a client that went away
//! or a candidate that hit a stop drops its upstream response, which closes the connection, and
//! the engines abort a request whose connection closed. Every wait has a deadline
//! (`--upstream-timeout-ms`): for the response to start, and between two chunks of it. An
//! upstream that cannot be reached, or refuses with 502 / 503 / 504 / 429, before anything was
//! streamed is `Event::Unavailable` (the client gets 503 with `Retry-After`).
//!
//! Readiness: `watch` probes the upstream every [`PROBE_EVERY`] (llama-server's `/health`, an
//! OpenAI-style server's `/v1/models`), each probe bounded by [`PROBE_TIMEOUT`] (or the upstream
//! timeout when shorter), and keeps `Health` and the `ghostline_upstream_up` gauge on the last
//! answer, so that `/ready` answers 503 while the upstream is down and a balancer or Kubernetes
//! sends the replica nothing meanwhile.

pub mod text;
pub mod wire;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::future::try_join_all;
use ghostline_api::FinishReason;
use ghostline_engine::{StreamDecoder, Tokenizer};
use tokio::sync::{mpsc, oneshot};

use crate::health::Health;
use crate::inference::{Event, Events, Inference, Job, Output, SubmitError, Summary};
pub use wire::{UpstreamKind, UpstreamPrompt};

/// How often the upstream's readiness is probed.
pub const PROBE_EVERY: Duration = Duration::from_secs(2);
/// The longest one probe waits (the upstream timeout when that is shorter).
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// Where the upstream is and how long to wait for it.
#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    /// Base URL (`http://host:port`), without the endpoint's path.
    pub url: String,
    pub kind: UpstreamKind,
    /// Longest wait for the response to start, and between two of its chunks.
    pub timeout: Duration,
    /// Jobs in flight at most; beyond it `submit` answers `QueueFull` (503).
    pub max_jobs: usize,
    /// The model name the upstream serves it under (OpenAI kind), when it must be named.
    pub model: Option<String>,
    /// Token ids, text, or ids until the upstream refuses them.
    pub prompt: UpstreamPrompt,
}

/// The upstream `Inference`.
pub struct Upstream {
    shared: Arc<Shared>,
    rt: tokio::runtime::Handle,
}

struct Shared {
    cfg: UpstreamConfig,
    endpoint: String,
    client: reqwest::Client,
    tok: Arc<Tokenizer>,
    jobs: AtomicUsize,
    next_id: AtomicU64,
    /// The live job of each supersession key and how to cancel it.
    live: Mutex<HashMap<SupersedeKey, (u64, oneshot::Sender<()>)>>,
    /// Prompts go as text (`--upstream-prompt text`, or `auto` once the upstream refused ids).
    text_prompts: AtomicBool,
}

/// (user, path), as in `Job::supersede_key`.
type SupersedeKey = (String, String);

impl Upstream {
    /// Must be called inside the runtime that will run the jobs.
    pub fn new(cfg: UpstreamConfig, tok: Arc<Tokenizer>) -> anyhow::Result<Upstream> {
        let base = cfg.url.trim_end_matches('/').to_string();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            anyhow::bail!("--upstream {}: give the engine's base URL, http://HOST:PORT", cfg.url);
        }
        if base.starts_with("https://") {
            anyhow::bail!(
                "--upstream {}: this build speaks plain HTTP to its upstream; reach the engine over a private \
                 network or a local TLS-terminating proxy",
                cfg.url
            );
        }
        let client = reqwest::Client::builder()
            .no_proxy()
            .tcp_nodelay(true)
            .connect_timeout(cfg.timeout.min(Duration::from_secs(5)))
            // Below the engines' own keep-alive timeouts (llama-server: 5 s), so that a pooled
            // connection is rarely one the upstream is closing.
            .pool_idle_timeout(Duration::from_secs(3))
            .build()?;
        let endpoint = format!("{base}{}", cfg.kind.path());
        let text_first = cfg.prompt == UpstreamPrompt::Text;
        let shared = Shared {
            cfg,
            endpoint,
            client,
            tok,
            jobs: AtomicUsize::new(0),
            next_id: AtomicU64::new(0),
            live: Mutex::new(HashMap::new()),
            text_prompts: AtomicBool::new(text_first),
        };
        Ok(Upstream { shared: Arc::new(shared), rt: tokio::runtime::Handle::current() })
    }

    /// The context length the upstream serves, when it says (llama.cpp's `/props`, vLLM's
    /// `max_model_len` in `/v1/models`); `None` when it does not answer in time.
    pub async fn context_length(&self) -> Option<usize> {
        let sh = &self.shared;
        let base = sh.cfg.url.trim_end_matches('/');
        let (path, pointer) = match sh.cfg.kind {
            UpstreamKind::LlamaCpp => ("/props", "/default_generation_settings/n_ctx"),
            UpstreamKind::OpenAi => ("/v1/models", "/data/0/max_model_len"),
        };
        let get = sh.client.get(format!("{base}{path}")).timeout(sh.cfg.timeout.min(Duration::from_secs(5))).send();
        let v: serde_json::Value = get.await.ok()?.json().await.ok()?;
        v.pointer(pointer).and_then(serde_json::Value::as_u64).map(|n| n as usize).filter(|&n| n > 0)
    }
}

impl Upstream {
    /// Probes the upstream now and every [`PROBE_EVERY`] from then on, for as long as the
    /// runtime runs, keeping `health` (what `/ready` answers) and `ghostline_upstream_up` on the
    /// last probe's answer. Until the first probe has answered the upstream counts as down.
    pub fn watch(&self, health: Arc<Health>) {
        health.set_upstream(Err("not probed yet".into()));
        metrics::gauge!("ghostline_upstream_up").set(0.0);
        let sh = self.shared.clone();
        self.rt.spawn(async move {
            let mut every = tokio::time::interval(PROBE_EVERY);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut first = true;
            loop {
                every.tick().await;
                let probe = probe(&sh).await;
                metrics::gauge!("ghostline_upstream_up").set(if probe.is_ok() { 1.0 } else { 0.0 });
                let why = probe.as_ref().err().cloned();
                if health.set_upstream(probe) || first {
                    match why {
                        None => tracing::info!(upstream = %sh.cfg.url, "the upstream answers: ready"),
                        Some(why) => tracing::warn!(upstream = %sh.cfg.url, "not ready: {why}"),
                    }
                }
                first = false;
            }
        });
    }
}

/// One readiness probe: a GET of the kind's probe path that must answer 2xx in time.
async fn probe(sh: &Shared) -> Result<(), String> {
    let url = format!("{}{}", sh.cfg.url.trim_end_matches('/'), sh.cfg.kind.probe_path());
    let wait = sh.cfg.timeout.min(PROBE_TIMEOUT);
    let mut tries = 0;
    loop {
        tries += 1;
        match sh.client.get(&url).timeout(wait).send().await {
            Ok(r) if r.status().is_success() => return Ok(()),
            Ok(r) => return Err(format!("the upstream's {url} answered {}", r.status())),
            Err(e) if e.is_timeout() => {
                return Err(format!("the upstream's {url} did not answer within {:.1}s", wait.as_secs_f64()))
            }
            // A pooled connection the upstream closed meanwhile fails at once: one more try on a
            // new connection, as for completions.
            Err(_) if tries == 1 => continue,
            Err(e) => return Err(format!("the upstream cannot be reached at {url}: {}", error_chain(&e))),
        }
    }
}

impl Inference for Upstream {
    fn submit(&self, job: Job) -> Result<Events, SubmitError> {
        let sh = self.shared.clone();
        let cap = sh.cfg.max_jobs.max(1);
        if sh.jobs.fetch_add(1, Ordering::AcqRel) >= cap {
            sh.jobs.fetch_sub(1, Ordering::AcqRel);
            return Err(SubmitError::QueueFull);
        }
        metrics::gauge!("ghostline_upstream_jobs").set(sh.jobs.load(Ordering::Relaxed) as f64);
        let id = sh.next_id.fetch_add(1, Ordering::Relaxed);
        let (cancel_tx, cancel_rx) = oneshot::channel();
        if let Some(key) = &job.supersede_key {
            let older = sh.live.lock().ok().and_then(|mut l| l.insert(key.clone(), (id, cancel_tx)));
            if let Some((_, cancel)) = older {
                let _ = cancel.send(());
            }
        }
        let (tx, rx) = mpsc::unbounded_channel();
        self.rt.spawn(run_job(sh, job, id, tx, cancel_rx));
        Ok(rx)
    }
}

/// Why a candidate failed.
enum Fail {
    /// The upstream is down, overloaded or too slow: worth retrying elsewhere or later.
    Down(String),
    /// Anything else (a refusal, a broken stream).
    Broken(String),
}

/// What the candidates of one job share.
struct JobState {
    done: Vec<AtomicBool>,
    sent_any: AtomicBool,
    first_text: Mutex<Option<Instant>>,
    completion_tokens: AtomicUsize,
    cached_tokens: AtomicUsize,
    prompt_ms: Mutex<f64>,
}

impl JobState {
    fn send(&self, tx: &mpsc::UnboundedSender<Event>, index: usize, text: String) {
        if text.is_empty() {
            return;
        }
        if let Ok(mut f) = self.first_text.lock() {
            f.get_or_insert_with(Instant::now);
        }
        self.sent_any.store(true, Ordering::Release);
        let _ = tx.send(Event::Text { index: index as u32, text });
    }

    fn end(&self, tx: &mpsc::UnboundedSender<Event>, index: usize, finish: FinishReason) {
        if !self.done[index].swap(true, Ordering::AcqRel) {
            self.sent_any.store(true, Ordering::Release);
            let _ = tx.send(Event::Done { index: index as u32, finish });
        }
    }
}

/// Frees the job's place and its supersession entry however the job ends.
struct JobGuard {
    sh: Arc<Shared>,
    id: u64,
    key: Option<SupersedeKey>,
}

impl Drop for JobGuard {
    fn drop(&mut self) {
        self.sh.jobs.fetch_sub(1, Ordering::AcqRel);
        metrics::gauge!("ghostline_upstream_jobs").set(self.sh.jobs.load(Ordering::Relaxed) as f64);
        if let (Some(key), Ok(mut live)) = (&self.key, self.sh.live.lock()) {
            if live.get(key).is_some_and(|(id, _)| *id == self.id) {
                live.remove(key);
            }
        }
    }
}

async fn run_job(sh: Arc<Shared>, job: Job, id: u64, tx: mpsc::UnboundedSender<Event>, cancel: oneshot::Receiver<()>) {
    let _guard = JobGuard { sh: sh.clone(), id, key: job.supersede_key.clone() };
    let st = JobState {
        done: (0..job.n).map(|_| AtomicBool::new(false)).collect(),
        sent_any: AtomicBool::new(false),
        first_text: Mutex::new(None),
        completion_tokens: AtomicUsize::new(0),
        cached_tokens: AtomicUsize::new(0),
        prompt_ms: Mutex::new(0.0),
    };
    let work = try_join_all((0..job.n).map(|i| candidate(&sh, &job, i, &tx, &st)));
    let outcome = tokio::select! {
        r = work => r.map(|_| ()),
        // A newer job of the same user and file: its upstream requests are dropped here.
        Ok(()) = cancel => {
            metrics::counter!("ghostline_cancelled_total", "reason" => "superseded").increment(1);
            for i in 0..job.n {
                st.end(&tx, i, FinishReason::Cancelled);
            }
            Ok(())
        }
        // The client went away: nothing to send, the requests are dropped here.
        () = tx.closed() => {
            metrics::counter!("ghostline_cancelled_total", "reason" => "disconnected").increment(1);
            return;
        }
    };
    match outcome {
        Ok(()) => {
            metrics::counter!("ghostline_upstream_requests_total", "outcome" => "ok").increment(1);
            let now = Instant::now();
            let ms = |a: Instant, b: Instant| b.saturating_duration_since(a).as_secs_f64() * 1000.0;
            let first = st.first_text.lock().ok().and_then(|f| *f);
            let _ = tx.send(Event::Finished(Summary {
                prompt_tokens: job.prompt.len(),
                cached_tokens: st.cached_tokens.load(Ordering::Relaxed),
                completion_tokens: st.completion_tokens.load(Ordering::Relaxed),
                queue_ms: 0.0,
                prefill_ms: st.prompt_ms.lock().map_or(0.0, |p| *p),
                ttft_ms: first.map_or(0.0, |f| ms(job.submitted, f)),
                total_ms: ms(job.submitted, now),
            }));
        }
        Err(Fail::Down(m)) if !st.sent_any.load(Ordering::Acquire) => {
            metrics::counter!("ghostline_upstream_requests_total", "outcome" => "unavailable").increment(1);
            tracing::warn!(upstream = %sh.endpoint, "{m}");
            let _ = tx.send(Event::Unavailable(m));
        }
        Err(Fail::Down(m) | Fail::Broken(m)) => {
            metrics::counter!("ghostline_upstream_requests_total", "outcome" => "failed").increment(1);
            tracing::warn!(upstream = %sh.endpoint, "{m}");
            let _ = tx.send(Event::Error(m));
        }
    }
}

/// Runs candidate `i` of a job to its end, streaming its text.
async fn candidate(
    sh: &Shared,
    job: &Job,
    i: usize,
    tx: &mpsc::UnboundedSender<Event>,
    st: &JobState,
) -> Result<(), Fail> {
    let seed = job.sampling.seed.map(|s| s.wrapping_add(i as u64));
    let mut out = Output::new(job, &sh.tok);
    let mut prompt = job.prompt.clone();
    if let Some(allowed) = &job.first_tokens {
        // A healed prompt: the first token is chosen among those that begin with the text taken
        // off, in a one-token request of its own; the rest follows from the prompt plus it.
        let first = first_token(sh, job, &prompt, allowed, seed).await?;
        prompt.push(first);
        let (text, finish) = out.token(first);
        st.send(tx, i, text);
        if let Some(f) = finish {
            st.completion_tokens.fetch_add(out.generated(), Ordering::Relaxed);
            st.end(tx, i, f);
            return Ok(());
        }
    }
    let ask = wire::Ask {
        prompt: &prompt,
        max_tokens: job.max_tokens - out.generated(),
        sampling: &job.sampling,
        seed,
        stop_ids: &job.stop_ids,
        favour: &[],
        model: sh.cfg.model.as_deref(),
    };
    let mut resp = open(sh, &ask).await?;
    let mut lines = wire::SseLines::default();
    let mut reported_tokens = None;
    let finish = 'read: loop {
        let Some(bytes) = next_bytes(sh, &mut resp).await? else {
            break 'read None;
        };
        for data in lines.push(&bytes) {
            let Some(c) = wire::parse(sh.cfg.kind, &data).map_err(Fail::Broken)? else { continue };
            if let Some(n) = c.cached_tokens {
                st.cached_tokens.fetch_max(n, Ordering::Relaxed);
            }
            if let (Some(ms), Ok(mut p)) = (c.prompt_ms, st.prompt_ms.lock()) {
                *p = p.max(ms);
            }
            reported_tokens = c.completion_tokens.or(reported_tokens);
            for id in c.tokens {
                let (text, finish) = out.token(id);
                st.send(tx, i, text);
                if let Some(f) = finish {
                    // Dropping the response below closes the connection: the upstream stops.
                    break 'read Some((f, true));
                }
            }
            if !c.text.is_empty() {
                let (text, finish) = out.text(&c.text);
                st.send(tx, i, text);
                if let Some(f) = finish {
                    break 'read Some((f, true));
                }
            }
            if let Some(f) = c.finish {
                if sh.cfg.kind == UpstreamKind::LlamaCpp || c.last {
                    break 'read Some((f, false));
                }
                // OpenAI kind: the usage chunk follows the choice's end.
                out.upstream_finish = Some(f);
            }
            if c.last {
                break 'read Some((out.upstream_finish.unwrap_or(FinishReason::Stop), false));
            }
        }
    };
    drop(resp);
    let Some((finish, ended_here)) = finish.or(out.upstream_finish.map(|f| (f, false))) else {
        return Err(Fail::Down("the upstream closed the stream before the completion ended".into()));
    };
    if !ended_here {
        st.send(tx, i, out.end());
    }
    let tokens = match sh.cfg.kind {
        UpstreamKind::OpenAi => reported_tokens.unwrap_or(out.generated()),
        UpstreamKind::LlamaCpp => out.generated(),
    };
    st.completion_tokens.fetch_add(tokens, Ordering::Relaxed);
    st.end(tx, i, finish);
    Ok(())
}

/// The first token of a healed prompt: one token, the allowed ones favoured by a logit bias.
async fn first_token(sh: &Shared, job: &Job, prompt: &[u32], allowed: &[u32], seed: Option<u64>) -> Result<u32, Fail> {
    let ask = wire::Ask {
        prompt,
        max_tokens: 1,
        sampling: &job.sampling,
        seed,
        stop_ids: &[],
        favour: allowed,
        model: sh.cfg.model.as_deref(),
    };
    let mut resp = open(sh, &ask).await?;
    let mut lines = wire::SseLines::default();
    let (mut ids, mut text) = (Vec::new(), String::new());
    while let Some(bytes) = next_bytes(sh, &mut resp).await? {
        for data in lines.push(&bytes) {
            if let Some(c) = wire::parse(sh.cfg.kind, &data).map_err(Fail::Broken)? {
                ids.extend(c.tokens);
                text.push_str(&c.text);
            }
        }
    }
    let chosen = match sh.cfg.kind {
        UpstreamKind::LlamaCpp => ids.first().copied(),
        // Text only: the allowed token whose text, after the prompt, is what came back.
        UpstreamKind::OpenAi => allowed.iter().copied().find(|&id| {
            let mut d = StreamDecoder::new(prompt);
            let piece = d.push(&sh.tok, id).unwrap_or_default() + &d.flush(&sh.tok).unwrap_or_default();
            !piece.is_empty() && piece == text
        }),
    };
    chosen.filter(|id| allowed.contains(id)).ok_or_else(|| {
        Fail::Broken(
            "the upstream's first token of a healed prompt is not one of the allowed ones (does it ignore \
             logit_bias?); serve with --token-healing false"
                .into(),
        )
    })
}

/// Sends one request and waits for its response to start. The prompt goes as ids, or as text
/// (`text::render`) when told or once the upstream has refused ids (`--upstream-prompt auto`:
/// a 400 / 422 to ids that the same request as text does not get).
async fn open(sh: &Shared, ask: &wire::Ask<'_>) -> Result<reqwest::Response, Fail> {
    let deadline = tokio::time::Instant::now() + sh.cfg.timeout;
    let as_text = || text::render(&sh.tok, ask.prompt).map_err(Fail::Broken);
    let sending_text = sh.text_prompts.load(Ordering::Acquire);
    let first = if sending_text {
        post(sh, &wire::body(sh.cfg.kind, ask, Some(&as_text()?)), deadline).await?
    } else {
        post(sh, &wire::body(sh.cfg.kind, ask, None), deadline).await?
    };
    let (status, said) = match first {
        Ok(r) => return Ok(r),
        Err(refused) => refused,
    };
    if !sending_text && sh.cfg.prompt.retries_as_text(status) {
        if let Ok(r) = post(sh, &wire::body(sh.cfg.kind, ask, Some(&as_text()?)), deadline).await? {
            if !sh.text_prompts.swap(true, Ordering::AcqRel) {
                tracing::warn!(
                    upstream = %sh.endpoint,
                    "the upstream refused a prompt of token ids ({status}: {said}) and took it as text: \
                     prompts go as text from now on"
                );
                metrics::counter!("ghostline_upstream_text_fallback_total").increment(1);
            }
            return Ok(r);
        }
    }
    let m = format!("the upstream answered {status}: {said}");
    if matches!(status, 429 | 502 | 503 | 504) {
        Err(Fail::Down(m))
    } else {
        Err(Fail::Broken(m))
    }
}

/// Posts one body; a response that is not a success comes back as its status and (the start
/// of) its text.
async fn post(
    sh: &Shared,
    body: &serde_json::Value,
    deadline: tokio::time::Instant,
) -> Result<Result<reqwest::Response, (u16, String)>, Fail> {
    let secs = sh.cfg.timeout.as_secs_f64();
    let mut tries = 0;
    let resp = loop {
        tries += 1;
        let send = sh.client.post(&sh.endpoint).json(body).send();
        match tokio::time::timeout_at(deadline, send).await {
            Err(_) => return Err(Fail::Down(format!("the upstream did not answer within {secs:.1}s"))),
            // A kept-alive connection the upstream closed meanwhile fails at once; one retry goes
            // out on a new connection.
            Ok(Err(e)) if tries == 1 && !e.is_timeout() => continue,
            Ok(Err(e)) => return Err(Fail::Down(format!("the upstream cannot be reached: {}", error_chain(&e)))),
            Ok(Ok(r)) => break r,
        }
    };
    let status = resp.status();
    if status.is_success() {
        return Ok(Ok(resp));
    }
    let text = tokio::time::timeout(sh.cfg.timeout, resp.text()).await.ok().and_then(Result::ok).unwrap_or_default();
    Ok(Err((status.as_u16(), text.chars().take(300).collect())))
}

/// The response's next bytes, or `None` at its end; a stall longer than the timeout fails.
async fn next_bytes(sh: &Shared, resp: &mut reqwest::Response) -> Result<Option<axum::body::Bytes>, Fail> {
    match tokio::time::timeout(sh.cfg.timeout, resp.chunk()).await {
        Err(_) => Err(Fail::Down(format!(
            "the upstream stalled: nothing for {:.1}s in the middle of a completion",
            sh.cfg.timeout.as_secs_f64()
        ))),
        Ok(Err(e)) => Err(Fail::Down(format!("the upstream's stream broke: {}", error_chain(&e)))),
        Ok(Ok(b)) => Ok(b),
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}
