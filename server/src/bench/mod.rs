//! The typing load generator: simulated developers type through real source files character by
//! character; after each pause longer than the debounce a completion request is sent for the
//! cursor position (prefix = text typed so far, suffix = rest of the file), and a newer request
//! supersedes (drops) the one in flight, as an editor plugin does.
//!
//! Also a throughput mode: the same K requests one at a time, then all at once; and a gateway
//! mode: N response-cache hits, then N one-token misses, reporting client-side latency and the
//! server's own `ghostline_gateway_seconds` (auth, limits, validation, cache lookup).
//!
//! And a soak mode (`--soak-out DIR`, `soak.rs`), which `server/benches/soak.sh` runs while it
//! kills and restarts Redis, PostgreSQL and the server: the same typists, each with its own key,
//! typing round the files for the whole run, hanging up on some streams, posting telemetry and
//! driving a real language server (`lsp.rs`); it reports failures by cause and by fault, RSS over
//! time, the KV blocks held once idle and whether every acknowledged telemetry event is stored.

mod lsp;
mod soak;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use futures_util::StreamExt;
use ghostline_api::{affinity, CacheOutcome, CompletionChunk, CompletionRequest, ModelList, AFFINITY_HEADER};
use ghostline_engine::sampling::Rng;
use serde_json::{json, Value};

/// Options of `ghostline-server bench`.
#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    /// Server base URL.
    #[arg(long, default_value = "http://127.0.0.1:8484")]
    pub url: String,
    /// Simulated developers typing at once.
    #[arg(long, default_value_t = 4)]
    pub developers: usize,
    /// Source files to type through (files or directories of .py / .rs files).
    #[arg(long, num_args = 1.., required_unless_present = "gateway")]
    pub files: Vec<PathBuf>,
    /// How long to type, in seconds.
    #[arg(long, default_value_t = 30.0)]
    pub seconds: f64,
    /// Mean time between keystrokes in milliseconds (exponentially spread, 30 ms minimum).
    #[arg(long, default_value_t = 150.0)]
    pub key_ms: f64,
    /// Quiet time after a keystroke before a request is sent.
    #[arg(long, default_value_t = 75)]
    pub debounce_ms: u64,
    #[arg(long, default_value_t = 32)]
    pub max_tokens: u32,
    /// Characters of prefix / suffix sent (the editor's window).
    #[arg(long, default_value_t = 1200)]
    pub prefix_chars: usize,
    #[arg(long, default_value_t = 400)]
    pub suffix_chars: usize,
    /// Instead of typing: K identical-shape requests sequentially, then concurrently.
    #[arg(long)]
    pub throughput: Option<usize>,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Instead of typing: N cache hits, then N one-token misses, measuring the gateway.
    #[arg(long)]
    pub gateway: Option<usize>,
    /// API key sent as `Authorization: Bearer`.
    #[arg(long, env = "GHOSTLINE_API_KEY")]
    pub key: Option<String>,
    #[command(flatten)]
    pub soak: soak::SoakArgs,
}

#[derive(Default)]
struct Stats {
    sent: usize,
    completed: usize,
    superseded: usize,
    disconnected: usize,
    errors: usize,
    ttft_ms: Vec<f64>,
    total_ms: Vec<f64>,
    prompt_tokens: u64,
    cached_tokens: u64,
    completion_tokens: u64,
    typeahead: usize,
}

fn collect_files(paths: &[PathBuf]) -> anyhow::Result<Vec<String>> {
    let mut out = Vec::new();
    let mut stack: Vec<PathBuf> = paths.to_vec();
    while let Some(p) = stack.pop() {
        if p.is_dir() {
            for e in std::fs::read_dir(&p).with_context(|| format!("reading {}", p.display()))? {
                stack.push(e?.path());
            }
        } else if matches!(p.extension().and_then(|e| e.to_str()), Some("py" | "rs")) {
            if let Ok(t) = std::fs::read_to_string(&p) {
                if t.len() > 200 {
                    out.push(t);
                }
            }
        }
    }
    if out.is_empty() {
        bail!("no .py or .rs files of more than 200 bytes under the given --files");
    }
    out.sort();
    Ok(out)
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * p).round() as usize]
}

/// The editor's view around the cursor. The window's start moves in coarse steps and sits on a
/// line start, as a plugin's does, so that consecutive keystrokes send the same beginning.
fn window(text: &str, pos: usize, before: usize, after: usize) -> (String, String) {
    let mut start = (pos.saturating_sub(before) / 256) * 256;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    if start > 0 {
        start = text[start..pos].find('\n').map_or(start, |i| start + i + 1);
    }
    let mut end = (pos + after).min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    (text[start..pos].to_string(), text[pos..end].to_string())
}

/// How one streamed request ended.
enum Outcome {
    /// `[DONE]` came: time to the first text and in all (ms), and the final chunk.
    Done { ttft: f64, total: f64, last: Option<CompletionChunk> },
    /// A newer keystroke dropped it.
    Superseded,
    /// The client hung up after the first text, as a closed editor does.
    Disconnected,
    /// It failed; the cause as a short name (`connection_refused`, `http_503_engine_failed`,
    /// `stream_cut`, `stream_error_server_error`, …).
    Failed(String),
}

/// The cause of a request that got no answer.
fn send_cause(e: &reqwest::Error) -> String {
    let mut chain = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        chain.push_str(&s.to_string());
        src = s.source();
    }
    let chain = chain.to_lowercase();
    if e.is_timeout() {
        "timeout".into()
    } else if chain.contains("refused") {
        "connection_refused".into()
    } else if e.is_connect() {
        "connect_failed".into()
    } else if chain.contains("reset") || chain.contains("closed") || chain.contains("incomplete") {
        "connection_closed".into()
    } else {
        "request_failed".into()
    }
}

/// `http_STATUS_CODE` of an error answer (the body's `error.code`, else its `error.type`).
async fn status_cause(resp: reqwest::Response) -> String {
    let status = resp.status().as_u16();
    let body = resp.text().await.unwrap_or_default();
    match serde_json::from_str::<ghostline_api::ErrorBody>(&body) {
        Ok(b) => format!("http_{status}_{}", b.error.code.unwrap_or(b.error.kind)),
        Err(_) => format!("http_{status}"),
    }
}

/// Sends one streaming request; with `hang_up` the client goes away after the first text.
async fn one(
    client: &reqwest::Client,
    url: &str,
    key: Option<&str>,
    body: &CompletionRequest,
    cancel: Option<tokio::sync::watch::Receiver<u64>>,
    my_gen: u64,
    hang_up: bool,
) -> Outcome {
    let t0 = Instant::now();
    let mut post = client.post(format!("{url}/v1/completions")).json(body);
    if let Some(k) = key {
        post = post.bearer_auth(k);
    }
    // The language server's affinity: user (else the key) and file, so a consistent-hash
    // balancer in front keeps each simulated developer on one replica.
    if let Some(a) = affinity(body.user.as_deref().or(key), body.path.as_deref()) {
        post = post.header(AFFINITY_HEADER, a);
    }
    // A newer keystroke drops the request while it waits for its answer too.
    let sent = match &cancel {
        Some(c) => {
            let mut c = c.clone();
            tokio::select! {
                r = post.send() => r,
                _ = c.wait_for(|g| *g != my_gen) => return Outcome::Superseded,
            }
        }
        None => post.send().await,
    };
    let resp = match sent {
        Ok(r) => r,
        Err(e) => return Outcome::Failed(send_cause(&e)),
    };
    if !resp.status().is_success() {
        return Outcome::Failed(status_cause(resp).await);
    }
    let mut stream = resp.bytes_stream();
    let mut buf = Vec::new();
    let mut ttft = None;
    let mut last = None;
    loop {
        let next = if let Some(c) = &cancel {
            let mut c = c.clone();
            tokio::select! {
                n = stream.next() => n,
                _ = c.wait_for(|g| *g != my_gen) => return Outcome::Superseded,
            }
        } else {
            stream.next().await
        };
        let Some(chunk) = next else { break };
        match chunk {
            Ok(c) => buf.extend_from_slice(&c),
            Err(_) => return Outcome::Failed("stream_cut".into()),
        }
        while let Some(i) = buf.windows(2).position(|w| w == b"\n\n") {
            let ev: Vec<u8> = buf.drain(..i + 2).collect();
            let line = String::from_utf8_lossy(&ev);
            let data = line.trim().strip_prefix("data: ").unwrap_or("").to_string();
            if data == "[DONE]" {
                let total = t0.elapsed().as_secs_f64() * 1000.0;
                return Outcome::Done { ttft: ttft.unwrap_or(total), total, last };
            }
            if let Ok(c) = serde_json::from_str::<CompletionChunk>(&data) {
                if ttft.is_none() && c.choices.first().is_some_and(|ch| !ch.text.is_empty()) {
                    ttft = Some(t0.elapsed().as_secs_f64() * 1000.0);
                    if hang_up {
                        return Outcome::Disconnected;
                    }
                }
                last = Some(c);
            } else if let Ok(e) = serde_json::from_str::<ghostline_api::ErrorBody>(&data) {
                return Outcome::Failed(format!("stream_error_{}", e.error.code.unwrap_or(e.error.kind)));
            }
        }
    }
    Outcome::Failed("stream_cut".into())
}

fn record(stats: &Mutex<Stats>, r: &Outcome) {
    let mut s = stats.lock().unwrap_or_else(|e| e.into_inner());
    match r {
        Outcome::Done { ttft, total, last } => {
            s.completed += 1;
            s.ttft_ms.push(*ttft);
            s.total_ms.push(*total);
            if let Some(u) = last.as_ref().and_then(|c| c.usage.as_ref()) {
                s.prompt_tokens += u64::from(u.prompt_tokens);
                s.cached_tokens += u64::from(u.prompt_tokens_details.cached_tokens);
                s.completion_tokens += u64::from(u.completion_tokens);
            }
            if last.as_ref().and_then(|c| c.cache) == Some(CacheOutcome::Typeahead) {
                s.typeahead += 1;
            }
        }
        Outcome::Superseded => s.superseded += 1,
        Outcome::Disconnected => s.disconnected += 1,
        Outcome::Failed(_) => s.errors += 1,
    }
}

/// Where a developer starts typing in `text`: a line start in its first half.
fn start_in(text: &str, rng: &mut Rng) -> usize {
    let mut pos = (rng.next_u64() % (text.len() as u64 / 2).max(1)) as usize;
    while !text.is_char_boundary(pos) {
        pos += 1;
    }
    text[..pos].rfind('\n').map_or(0, |i| i + 1)
}

async fn developer(
    id: usize,
    a: Arc<BenchArgs>,
    files: Arc<Vec<String>>,
    client: reqwest::Client,
    stats: Arc<Mutex<Stats>>,
    deadline: Instant,
    soak: Option<Arc<soak::Run>>,
) {
    let mut rng = Rng::new(a.seed.wrapping_mul(1000).wrapping_add(id as u64));
    let mut text = &files[(rng.next_u64() % files.len() as u64) as usize];
    // Start somewhere in the file, on a line start, and type from there.
    let mut pos = start_in(text, &mut rng);
    let key = soak.as_ref().and_then(|s| s.key(id)).or_else(|| a.key.clone());
    let (gen_tx, gen_rx) = tokio::sync::watch::channel(0u64);
    let mut generation = 0u64;
    let mut tasks: Vec<tokio::task::JoinHandle<()>> = Vec::new();
    while Instant::now() < deadline {
        if pos >= text.len() {
            // A soak types for the whole run: on to another file.
            if soak.is_none() {
                break;
            }
            text = &files[(rng.next_u64() % files.len() as u64) as usize];
            pos = start_in(text, &mut rng);
        }
        let ch = text[pos..].chars().next().map_or(1, char::len_utf8);
        pos += ch;
        let gap = (-(1.0 - rng.next_f64()).ln() * a.key_ms).max(30.0);
        // A pause longer than the debounce fires a request at the current position.
        if gap > a.debounce_ms as f64 {
            tokio::time::sleep(Duration::from_millis(a.debounce_ms)).await;
            generation += 1;
            let _ = gen_tx.send(generation);
            let (prefix, suffix) = window(text, pos, a.prefix_chars, a.suffix_chars);
            let body = CompletionRequest {
                prompt: prefix,
                suffix: Some(suffix),
                max_tokens: Some(a.max_tokens),
                temperature: Some(0.0),
                stream: Some(true),
                truncate: Some(true),
                user: Some(format!("dev{id}")),
                path: Some(format!("file{id}")),
                stop: Some(vec!["\n".into()]),
                ..CompletionRequest::default()
            };
            let (c, url, st, rx, g) = (client.clone(), a.url.clone(), stats.clone(), gen_rx.clone(), generation);
            let (key, run) = (key.clone(), soak.clone());
            let hang_up = soak.as_ref().is_some_and(|s| s.hang_up(&mut rng));
            stats.lock().unwrap_or_else(|e| e.into_inner()).sent += 1;
            tasks.retain(|t| !t.is_finished());
            tasks.push(tokio::spawn(async move {
                let r = one(&c, &url, key.as_deref(), &body, Some(rx), g, hang_up).await;
                record(&st, &r);
                if let Some(run) = run {
                    run.observe(id, &r);
                }
            }));
            if let Some(s) = &soak {
                let _ = s.flush(id, &client, false);
            }
            tokio::time::sleep(Duration::from_secs_f64((gap - a.debounce_ms as f64) / 1000.0)).await;
        } else {
            tokio::time::sleep(Duration::from_secs_f64(gap / 1000.0)).await;
        }
    }
    for t in tasks {
        let _ = t.await;
    }
}

pub fn run(mut a: BenchArgs) -> anyhow::Result<()> {
    let files = Arc::new(if a.gateway.is_some() { Vec::new() } else { collect_files(&a.files)? });
    let soak = match &a.soak.soak_out {
        Some(_) => {
            let run = soak::Run::new(a.soak.clone(), &a.url)?;
            if a.key.is_none() {
                a.key = run.key(0);
            }
            Some(Arc::new(run))
        }
        None => None,
    };
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(async move {
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(k) = &a.key {
            headers.insert(reqwest::header::AUTHORIZATION, format!("Bearer {k}").parse().context("--key")?);
        }
        let client = reqwest::Client::builder().pool_max_idle_per_host(64).default_headers(headers).build()?;
        let m: ModelList = client.get(format!("{}/v1/models", a.url)).send().await?.json().await?;
        let model = m.data.first().map_or_else(|| "?".to_string(), |m| m.id.clone());
        if let Some(n) = a.gateway {
            return gateway(&client, &a.url, n.max(1), &model).await;
        }
        if let Some(k) = a.throughput {
            return throughput(&client, &a, &files, k, &model).await;
        }
        let stats = Arc::new(Mutex::new(Stats::default()));
        let a = Arc::new(a);
        let t0 = Instant::now();
        let deadline = t0 + Duration::from_secs_f64(a.seconds);
        let side = match &soak {
            Some(run) => Some(run.start_side(&files, a.key_ms, a.seed, deadline)?),
            None => None,
        };
        let devs: Vec<_> = (0..a.developers)
            .map(|i| {
                let d = developer(i, a.clone(), files.clone(), client.clone(), stats.clone(), deadline, soak.clone());
                tokio::spawn(d)
            })
            .collect();
        for d in devs {
            let _ = d.await;
        }
        let secs = t0.elapsed().as_secs_f64();
        let mut s = std::mem::take(&mut *stats.lock().unwrap_or_else(|e| e.into_inner()));
        let out = json!({
            "model": model, "developers": a.developers, "seconds": (secs * 10.0).round() / 10.0,
            "requests_sent": s.sent, "completed": s.completed, "superseded": s.superseded,
            "disconnected": s.disconnected, "errors": s.errors,
            "requests_per_s": ((s.completed as f64 / secs) * 100.0).round() / 100.0,
            "ttft_ms": {"p50": pct(&mut s.ttft_ms, 0.5), "p90": pct(&mut s.ttft_ms, 0.9), "p99": pct(&mut s.ttft_ms, 0.99)},
            "total_ms": {"p50": pct(&mut s.total_ms, 0.5), "p90": pct(&mut s.total_ms, 0.9), "p99": pct(&mut s.total_ms, 0.99)},
            "cached_token_share": if s.prompt_tokens > 0 { (s.cached_tokens as f64 / s.prompt_tokens as f64 * 1000.0).round() / 1000.0 } else { 0.0 },
            "typeahead_hits": s.typeahead,
            "completion_tokens": s.completion_tokens,
        });
        match (soak, side) {
            (Some(run), Some(side)) => run.finish(&client, side, out).await,
            _ => {
                println!("{out}");
                anyhow::Ok(())
            }
        }
    })
}

async fn throughput(
    client: &reqwest::Client,
    a: &BenchArgs,
    files: &[String],
    k: usize,
    model: &str,
) -> anyhow::Result<()> {
    let bodies: Vec<CompletionRequest> = (0..k)
        .map(|i| {
            let text = &files[i % files.len()];
            let mut pos = (text.len() / 2 + i * 97) % text.len();
            while !text.is_char_boundary(pos) {
                pos -= 1;
            }
            let (p, s) = window(text, pos, a.prefix_chars, a.suffix_chars);
            CompletionRequest {
                prompt: p,
                suffix: Some(s),
                max_tokens: Some(a.max_tokens),
                temperature: Some(0.0),
                stream: Some(true),
                truncate: Some(true),
                seed: Some(i as u64),
                ..CompletionRequest::default()
            }
        })
        .collect();
    let tokens = |v: &[Outcome]| -> u64 {
        v.iter()
            .filter_map(|r| match r {
                Outcome::Done { last, .. } => last.as_ref()?.usage.as_ref(),
                _ => None,
            })
            .map(|u| u64::from(u.completion_tokens))
            .sum()
    };
    let t = Instant::now();
    let mut seq = Vec::new();
    for b in &bodies {
        seq.push(one(client, &a.url, a.key.as_deref(), b, None, 0, false).await);
    }
    let seq_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let futs: Vec<_> = bodies.iter().map(|b| one(client, &a.url, a.key.as_deref(), b, None, 0, false)).collect();
    let conc = futures_util::future::join_all(futs).await;
    let conc_s = t.elapsed().as_secs_f64();
    let (ts, tc) = (tokens(&seq), tokens(&conc));
    println!(
        "{}",
        json!({"model": model, "requests": k, "sequential": {"seconds": seq_s, "completion_tokens": ts, "tok_per_s": ts as f64 / seq_s},
               "concurrent": {"seconds": conc_s, "completion_tokens": tc, "tok_per_s": tc as f64 / conc_s},
               "speedup": (tc as f64 / conc_s) / (ts as f64 / seq_s)})
    );
    Ok(())
}

/// The server's `ghostline_gateway_seconds{outcome}` quantiles, in microseconds.
async fn gateway_quantiles(client: &reqwest::Client, url: &str, outcome: &str) -> anyhow::Result<Value> {
    let text = client.get(format!("{url}/metrics")).send().await?.error_for_status()?.text().await?;
    let mut out = serde_json::Map::new();
    for l in text
        .lines()
        .filter(|l| l.starts_with("ghostline_gateway_seconds{") && l.contains(&format!("outcome=\"{outcome}\"")))
    {
        let Some((labels, v)) = l.rsplit_once(' ') else { continue };
        let Some(q) = labels.split("quantile=\"").nth(1).and_then(|r| r.split('"').next()) else { continue };
        if let Ok(v) = v.parse::<f64>() {
            out.insert(
                format!("p{}", (q.parse::<f64>().unwrap_or(0.0) * 100.0).round()),
                json!((v * 1e7).round() / 10.0),
            );
        }
    }
    Ok(Value::Object(out))
}

async fn gateway(client: &reqwest::Client, url: &str, n: usize, model: &str) -> anyhow::Result<()> {
    let post = |body: CompletionRequest| async move {
        let t = Instant::now();
        let c: CompletionChunk =
            client.post(format!("{url}/v1/completions")).json(&body).send().await?.error_for_status()?.json().await?;
        anyhow::Ok((t.elapsed().as_secs_f64() * 1e6, c))
    };
    let greedy = |prompt: String, max_tokens: u32| CompletionRequest {
        prompt,
        max_tokens: Some(max_tokens),
        temperature: Some(0.0),
        ..CompletionRequest::default()
    };
    let hit = greedy("def gateway_bench(x):\n    return".into(), 8);
    post(hit.clone()).await?;
    let mut hits = Vec::with_capacity(n);
    for _ in 0..n {
        let (us, c) = post(hit.clone()).await?;
        if c.cache != Some(CacheOutcome::Hit) {
            bail!("expected a response-cache hit, got {:?}: is the cache on (--cache-mb)?", c.cache);
        }
        hits.push(us);
    }
    let mut misses = Vec::with_capacity(n);
    for i in 0..n {
        let (us, _) = post(greedy(format!("v{i} = {}", i * 7919), 1)).await?;
        misses.push(us);
    }
    let us =
        |v: &mut Vec<f64>| json!({"p50": pct(v, 0.5).round(), "p90": pct(v, 0.9).round(), "p99": pct(v, 0.99).round()});
    println!(
        "{}",
        json!({"model": model, "requests": n,
               "hit": {"client_us": us(&mut hits), "gateway_us": gateway_quantiles(client, url, "hit").await?},
               "miss_1_token": {"client_us": us(&mut misses), "gateway_us": gateway_quantiles(client, url, "miss").await?}})
    );
    Ok(())
}
