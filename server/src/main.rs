//! `ghostline-server`: runs the model and serves completions (see DESIGN.md, "CLI").
//!
//! `serve` (the default) loads a checkpoint and serves the HTTP API v1; `keys` manages API
//! keys; `stats` prints the telemetry figures; `generate` runs one completion in the terminal.

mod bench;
mod cache;
mod filters;
mod fim;
mod http;
mod keys;
mod limits;
mod prefix_cache;
mod redis_link;
mod scheduler;
mod stats;
mod store;
mod telemetry;
mod typeahead;

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use ghostline_engine::{Backend, Checkpoint, Device, KvDtype, SamplingParams, Tokenizer, WeightFormat};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
use serde::Deserialize;

#[derive(Parser)]
#[command(
    name = "ghostline-server",
    version,
    about = "ghostline's companion server: runs the model and serves completions"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once
enum Command {
    /// Serve completions over HTTP (the default).
    Serve(ServeArgs),
    /// Replay simulated typing (or a throughput test) against a running server.
    Bench(bench::BenchArgs),
    /// Manage API keys (stored hashed in the server's database).
    Keys {
        #[command(flatten)]
        db: DbArgs,
        #[command(subcommand)]
        command: keys::KeysCommand,
    },
    /// Print acceptance, cache and latency figures from the telemetry store.
    Stats {
        #[command(flatten)]
        db: DbArgs,
        /// Unix seconds, or an age like 30m, 24h, 7d.
        #[arg(long, default_value = "7d")]
        since: String,
        /// Print the JSON of GET /v1/stats instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Complete one prompt in the terminal.
    Generate {
        /// Checkpoint directory in the Hugging Face layout (default: the bundled model).
        #[arg(long)]
        model: Option<PathBuf>,
        /// Text to continue.
        #[arg(long)]
        prompt: String,
        #[arg(long, default_value_t = 64)]
        max_tokens: usize,
        #[arg(long, default_value_t = 0.0)]
        temperature: f32,
        #[arg(long, default_value_t = 1.0)]
        top_p: f32,
        #[arg(long, default_value_t = 0)]
        top_k: usize,
        #[arg(long)]
        seed: Option<u64>,
        /// Stop strings (repeatable).
        #[arg(long)]
        stop: Vec<String>,
    },
}

/// Where the database is, for `keys` and `stats` (the same as `serve` uses).
#[derive(Args, Clone)]
struct DbArgs {
    /// Directory for the server's state.
    #[arg(long, env = "GHOSTLINE_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Database URL: postgres://… (default: SQLite in the data dir).
    #[arg(long, env = "GHOSTLINE_DATABASE")]
    database: Option<String>,
    /// The server's TOML config file (its data_dir and database apply).
    #[arg(long, env = "GHOSTLINE_CONFIG")]
    config: Option<PathBuf>,
}

impl DbArgs {
    fn target(&self) -> anyhow::Result<store::DbTarget> {
        let a = merge(ServeArgs {
            data_dir: self.data_dir.clone(),
            database: self.database.clone(),
            config: self.config.clone(),
            ..ServeArgs::default()
        })?;
        store::DbTarget::resolve(a.database.as_deref(), &data_dir(a.data_dir))
    }
}

/// The data dir: given, or the user's data directory.
fn data_dir(given: Option<PathBuf>) -> PathBuf {
    given.unwrap_or_else(|| {
        let base = std::env::var_os("XDG_DATA_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")));
        base.map_or_else(|| PathBuf::from("ghostline-data"), |b| b.join("ghostline"))
    })
}

/// Options of `serve`. Each can also come from the environment (`GHOSTLINE_*`) or the TOML
/// config file; a flag wins over the environment, which wins over the file.
#[derive(Args, Default, Clone)]
struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "GHOSTLINE_ADDR")]
    addr: Option<SocketAddr>,
    /// Checkpoint directory (Hugging Face layout). Default: the bundled ghostline-tiny.
    #[arg(long, env = "GHOSTLINE_MODEL")]
    model: Option<String>,
    /// cpu, or cuda[:N] where built with the cuda feature.
    #[arg(long, env = "GHOSTLINE_DEVICE")]
    device: Option<String>,
    /// TOML config file.
    #[arg(long, env = "GHOSTLINE_CONFIG")]
    config: Option<PathBuf>,
    /// Directory for the server's state.
    #[arg(long, env = "GHOSTLINE_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Name the model is served under (default: the checkpoint directory's name).
    #[arg(long, env = "GHOSTLINE_MODEL_NAME")]
    model_name: Option<String>,
    /// KV cache memory budget in MiB (default: 512 on the CPU; on a GPU, half its free memory, at most 16 GiB).
    #[arg(long, env = "GHOSTLINE_KV_MEMORY_MB")]
    kv_memory_mb: Option<usize>,
    /// Tokens computed per engine step at most (decode tokens plus prefill chunks).
    #[arg(long, env = "GHOSTLINE_MAX_BATCH_TOKENS")]
    max_batch_tokens: Option<usize>,
    /// Requests running at once at most.
    #[arg(long, env = "GHOSTLINE_MAX_RUNNING")]
    max_running: Option<usize>,
    /// Requests waiting at most; beyond it the server answers 503.
    #[arg(long, env = "GHOSTLINE_MAX_QUEUE")]
    max_queue: Option<usize>,
    /// Reuse KV blocks of earlier prompts that share a prefix (true/false).
    #[arg(long, env = "GHOSTLINE_PREFIX_CACHE")]
    prefix_cache: Option<bool>,
    /// Remembered completions for typed-ahead reuse (0 turns it off).
    #[arg(long, env = "GHOSTLINE_TYPEAHEAD_ENTRIES")]
    typeahead_entries: Option<usize>,
    /// FIM template: qwen, starcoder, deepseek, codellama or none (default: detected).
    #[arg(long, env = "GHOSTLINE_FIM_TEMPLATE")]
    fim_template: Option<String>,
    /// Token healing of FIM prompts with the cursor inside a line: the prefix's last token is
    /// left for the model to choose again, so that a completion can start inside it
    /// (true/false; default: the model directory's `ghostline.json`, else false).
    #[arg(long, env = "GHOSTLINE_TOKEN_HEALING")]
    token_healing: Option<bool>,
    /// How FIM requests with the cursor inside a line (code before it, nothing after it on the
    /// line) are prompted: fim (the template) or plain (the prefix alone, completed to the end
    /// of the line). Default: the model directory's `ghostline.json`, else fim.
    #[arg(long, env = "GHOSTLINE_MID_LINE_PROMPT")]
    mid_line_prompt: Option<String>,
    /// Largest request body in bytes.
    #[arg(long, env = "GHOSTLINE_MAX_BODY_BYTES")]
    max_body_bytes: Option<usize>,
    /// Largest max_tokens a request may ask for.
    #[arg(long, env = "GHOSTLINE_MAX_TOKENS_LIMIT")]
    max_tokens_limit: Option<u32>,
    /// Engine threads (default: all cores).
    #[arg(long, env = "GHOSTLINE_THREADS")]
    threads: Option<usize>,
    /// How the CPU backend stores weights: f32, bf16, q8 (int8 in groups of 32; fast, slightly
    /// less exact) or q4 (ggml's Q4_0, 4 bits; a quarter of q8's memory, less exact still).
    /// Default: the checkpoint's own precision (bf16 or f32).
    #[arg(long, env = "GHOSTLINE_WEIGHTS")]
    weights: Option<String>,
    /// How the CPU backend stores the KV cache: f16 (default; half the memory) or f32.
    #[arg(long, env = "GHOSTLINE_KV_CACHE")]
    kv_cache: Option<String>,
    /// Seconds running streams get to finish after SIGTERM.
    #[arg(long, env = "GHOSTLINE_SHUTDOWN_GRACE_SECS")]
    shutdown_grace_secs: Option<u64>,
    /// Redis URL for the shared cache and limits (team deployments).
    #[arg(long, env = "GHOSTLINE_REDIS")]
    redis: Option<String>,
    /// Telemetry database URL (team deployments).
    #[arg(long, env = "GHOSTLINE_DATABASE")]
    database: Option<String>,
    /// Serve a non-loopback address without API keys.
    #[arg(long, env = "GHOSTLINE_INSECURE_NO_AUTH")]
    insecure_no_auth: bool,
    /// Response cache size in MiB, in process (0 turns the response cache off).
    #[arg(long, env = "GHOSTLINE_CACHE_MB")]
    cache_mb: Option<usize>,
    /// How long Redis keeps a cached response, in seconds.
    #[arg(long, env = "GHOSTLINE_CACHE_TTL_SECS")]
    cache_ttl_secs: Option<u64>,
    /// Deadline of one Redis operation, in milliseconds.
    #[arg(long, env = "GHOSTLINE_REDIS_TIMEOUT_MS")]
    redis_timeout_ms: Option<u64>,
    /// Sequences one key may have queued or running at once.
    #[arg(long, env = "GHOSTLINE_MAX_INFLIGHT_PER_KEY")]
    max_inflight_per_key: Option<usize>,
    /// Per-key rate buckets hold this many seconds of the rate (60: a minute's worth).
    #[arg(long, env = "GHOSTLINE_RATE_LIMIT_BURST_SECS")]
    rate_limit_burst_secs: Option<f64>,
    /// Serve /metrics and /v1/stats without an API key.
    #[arg(long, env = "GHOSTLINE_OPEN_METRICS")]
    open_metrics: bool,
    /// Redact secrets from prompts and drop completions with secrets (true/false).
    #[arg(long, env = "GHOSTLINE_REDACT_SECRETS")]
    redact_secrets: Option<bool>,
    /// Another secret pattern (regex; repeatable).
    #[arg(long = "secret-pattern")]
    secret_patterns: Vec<String>,
    /// Drop completions matching this regex (repeatable).
    #[arg(long = "blocklist")]
    blocklist: Vec<String>,
    /// Keep prompt and completion text in the completion record.
    #[arg(long, env = "GHOSTLINE_STORE_COMPLETION_TEXT")]
    store_completion_text: bool,
    /// Log the text given to the engine (debugging; it contains code).
    #[arg(long, env = "GHOSTLINE_DEBUG_LOG_PROMPTS")]
    debug_log_prompts: bool,
    /// Telemetry events and completion records waiting to be stored at most; beyond it 503.
    #[arg(long, env = "GHOSTLINE_TELEMETRY_BACKLOG")]
    telemetry_backlog: Option<usize>,
}

/// The same options in the TOML file.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    addr: Option<SocketAddr>,
    model: Option<String>,
    device: Option<String>,
    data_dir: Option<PathBuf>,
    model_name: Option<String>,
    kv_memory_mb: Option<usize>,
    max_batch_tokens: Option<usize>,
    max_running: Option<usize>,
    max_queue: Option<usize>,
    prefix_cache: Option<bool>,
    typeahead_entries: Option<usize>,
    fim_template: Option<String>,
    token_healing: Option<bool>,
    mid_line_prompt: Option<String>,
    max_body_bytes: Option<usize>,
    max_tokens_limit: Option<u32>,
    threads: Option<usize>,
    weights: Option<String>,
    kv_cache: Option<String>,
    shutdown_grace_secs: Option<u64>,
    redis: Option<String>,
    database: Option<String>,
    insecure_no_auth: Option<bool>,
    cache_mb: Option<usize>,
    cache_ttl_secs: Option<u64>,
    redis_timeout_ms: Option<u64>,
    max_inflight_per_key: Option<usize>,
    rate_limit_burst_secs: Option<f64>,
    open_metrics: Option<bool>,
    redact_secrets: Option<bool>,
    secret_patterns: Option<Vec<String>>,
    blocklist: Option<Vec<String>>,
    store_completion_text: Option<bool>,
    debug_log_prompts: Option<bool>,
    telemetry_backlog: Option<usize>,
}

/// Serving settings a model directory may carry for itself in `ghostline.json`.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ModelServing {
    /// `fim` or `plain`: see `--mid-line-prompt`.
    mid_line_prompt: Option<fim::MidLine>,
    /// See `--token-healing`.
    token_healing: Option<bool>,
}

/// The model directory's `ghostline.json`, or the defaults when it has none.
fn model_serving(dir: &Path) -> anyhow::Result<ModelServing> {
    let path = dir.join("ghostline.json");
    match std::fs::read_to_string(&path) {
        Ok(text) => serde_json::from_str(&text)
            .with_context(|| format!("reading the model's serving settings {}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(ModelServing::default()),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

fn merge(mut a: ServeArgs) -> anyhow::Result<ServeArgs> {
    let Some(path) = a.config.clone() else { return Ok(a) };
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading config file {}", path.display()))?;
    let f: FileConfig = toml::from_str(&text).with_context(|| format!("config file {}", path.display()))?;
    macro_rules! fill {
        ($($field:ident),*) => { $( if a.$field.is_none() { a.$field = f.$field; } )* };
    }
    fill!(
        addr,
        model,
        device,
        data_dir,
        model_name,
        kv_memory_mb,
        max_batch_tokens,
        max_running,
        max_queue,
        prefix_cache,
        typeahead_entries,
        fim_template,
        token_healing,
        mid_line_prompt,
        max_body_bytes,
        max_tokens_limit,
        threads,
        weights,
        kv_cache,
        shutdown_grace_secs,
        redis,
        database,
        cache_mb,
        cache_ttl_secs,
        redis_timeout_ms,
        max_inflight_per_key,
        rate_limit_burst_secs,
        redact_secrets,
        telemetry_backlog
    );
    a.insecure_no_auth |= f.insecure_no_auth.unwrap_or(false);
    a.open_metrics |= f.open_metrics.unwrap_or(false);
    a.store_completion_text |= f.store_completion_text.unwrap_or(false);
    a.debug_log_prompts |= f.debug_log_prompts.unwrap_or(false);
    if a.secret_patterns.is_empty() {
        a.secret_patterns = f.secret_patterns.unwrap_or_default();
    }
    if a.blocklist.is_empty() {
        a.blocklist = f.blocklist.unwrap_or_default();
    }
    Ok(a)
}

/// Where the bundled model lives: beside the executable's repository checkout, or the source
/// tree the binary was built from.
fn bundled_model() -> PathBuf {
    let rel = Path::new("server/models/ghostline-tiny");
    if rel.join("config.json").exists() {
        return rel.to_path_buf();
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("models/ghostline-tiny")
}

fn resolve_model(arg: Option<&str>) -> anyhow::Result<PathBuf> {
    match arg {
        Some(m) => {
            let p = PathBuf::from(m);
            if p.is_dir() {
                Ok(p)
            } else {
                bail!(
                    "model {m} not found: --model takes a checkpoint directory in the Hugging Face layout \
                     (config.json, model.safetensors, tokenizer.json)"
                )
            }
        }
        None => {
            let p = bundled_model();
            if p.join("config.json").exists() && p.join("model.safetensors").exists() {
                Ok(p)
            } else {
                bail!(
                    "the bundled model is missing at {} (build it with server/training, see its README), \
                     or pass --model DIR with a checkpoint in the Hugging Face layout",
                    p.display()
                )
            }
        }
    }
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("GHOSTLINE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
}

/// The engine's CPU options: the threads, and from the environment the kernel cap
/// (`GHOSTLINE_KERNELS`: auto, avx512, avx2, portable) and native bf16 products
/// (`GHOSTLINE_BF16_NATIVE=1`).
fn engine_cpu_options(threads: Option<usize>) -> anyhow::Result<ghostline_engine::CpuOptions> {
    let kernels = std::env::var("GHOSTLINE_KERNELS").unwrap_or_default();
    Ok(ghostline_engine::CpuOptions {
        threads,
        kernels: kernels.parse().map_err(|e: String| anyhow::anyhow!("GHOSTLINE_KERNELS: {e}"))?,
        bf16_native: std::env::var("GHOSTLINE_BF16_NATIVE").is_ok_and(|v| v == "1"),
    })
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        None => serve(merge(ServeArgs::parse_from_env()?)?),
        Some(Command::Serve(a)) => serve(merge(a)?),
        Some(Command::Bench(a)) => bench::run(a),
        Some(Command::Keys { db, command }) => {
            let target = db.target()?;
            let mut store = store::Store::open(&target)?;
            keys::run_cli(&mut store, command)
        }
        Some(Command::Stats { db, since, json }) => {
            let target = db.target()?;
            let now = telemetry::unix_ms();
            let since =
                stats::parse_since(&since, now).context("--since takes unix seconds or an age like 30m, 24h, 7d")?;
            let report = stats::report(&mut store::Store::open(&target)?, since)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", stats::render(&report));
            }
            Ok(())
        }
        Some(Command::Generate { model, prompt, max_tokens, temperature, top_p, top_k, seed, stop }) => {
            let threads = std::env::var("GHOSTLINE_THREADS").ok().map(|v| v.parse()).transpose()?;
            ghostline_engine::cpu::configure(engine_cpu_options(threads)?)?;
            let dir = resolve_model(model.as_ref().and_then(|p| p.to_str()))?;
            let t0 = Instant::now();
            let ckpt = Checkpoint::load(&dir).with_context(|| format!("loading {}", dir.display()))?;
            eprintln!(
                "loaded {} ({:.1}M parameters) in {:.2}s",
                dir.display(),
                ckpt.model.num_params() as f64 / 1e6,
                t0.elapsed().as_secs_f64()
            );
            let mut pool = ckpt.kv_pool_as(256 << 20, KvDtype::default());
            let mut params = ckpt.default_params(max_tokens);
            params.sampling = SamplingParams { temperature, top_k, top_p, seed };
            params.stop = stop;
            let t1 = Instant::now();
            let mut out = std::io::stdout().lock();
            let g = ckpt.complete(&mut pool, &prompt, &params, |piece| {
                let _ = out.write_all(piece.as_bytes());
                let _ = out.flush();
                true
            })?;
            eprintln!(
                "\n{} prompt + {} generated tokens in {:.3}s ({:?})",
                g.prompt_tokens,
                g.tokens.len(),
                t1.elapsed().as_secs_f64(),
                g.finish
            );
            Ok(())
        }
    }
}

impl ServeArgs {
    /// `ghostline-server` with no subcommand: the serve options from the environment only.
    fn parse_from_env() -> anyhow::Result<Self> {
        #[derive(Parser)]
        struct Only {
            #[command(flatten)]
            a: ServeArgs,
        }
        Ok(Only::try_parse_from(["ghostline-server"])?.a)
    }
}

fn serve(a: ServeArgs) -> anyhow::Result<()> {
    init_tracing();
    let addr = a.addr.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8484)));
    let device = Device::parse(a.device.as_deref().unwrap_or("cpu")).map_err(anyhow::Error::msg)?;
    let database = store::DbTarget::resolve(a.database.as_deref(), &data_dir(a.data_dir.clone()))?;
    let require_key = !addr.ip().is_loopback() && !a.insecure_no_auth;
    let auth = Arc::new(keys::Auth::new(database.clone(), store::Store::open(&database)?, require_key));
    if require_key && !auth.any() {
        bail!(
            "refusing to serve {addr} without API keys: add one with `ghostline-server keys add NAME`, bind a \
             loopback address, or pass --insecure-no-auth to serve the network unauthenticated"
        );
    }
    let filters = filters::Filters::new(a.redact_secrets.unwrap_or(true), &a.secret_patterns, &a.blocklist)?;
    let ingest = telemetry::Ingest::start(
        database.clone(),
        store::Store::open(&database)?,
        a.telemetry_backlog.unwrap_or(10_000),
    );
    tracing::info!(database = %database.describe(), keys = auth.any(), "database ready");
    ghostline_engine::cpu::configure(engine_cpu_options(a.threads)?)?;
    let dir = resolve_model(a.model.as_deref())?;
    let t0 = Instant::now();
    let weights = a.weights.as_deref().map(str::parse::<WeightFormat>).transpose().map_err(anyhow::Error::msg)?;
    let kv_dtype = a.kv_cache.as_deref().map(str::parse::<KvDtype>).transpose().map_err(anyhow::Error::msg)?;
    let backend = Backend::load_as(&dir, device, weights)
        .with_context(|| format!("loading model {} on {device}", dir.display()))?;
    let backend_desc = backend.describe();
    let tokenizer = Tokenizer::load(&dir, &backend.config().eos_token_ids)
        .with_context(|| format!("loading the tokenizer of {}", dir.display()))?;
    let model_name = a.model_name.clone().unwrap_or_else(|| {
        dir.canonicalize()
            .ok()
            .and_then(|p| p.file_name().map(|s| s.to_string_lossy().into_owned()))
            .unwrap_or_else(|| "model".into())
    });
    let template = fim::detect(&tokenizer, a.fim_template.as_deref()).map_err(anyhow::Error::msg)?;
    let mut fim_stop_ids = tokenizer.eos_ids.clone();
    if let Some(t) = &template {
        fim_stop_ids.extend(t.stop_ids(&tokenizer));
    }
    fim_stop_ids.sort_unstable();
    fim_stop_ids.dedup();
    let serving = model_serving(&dir)?;
    let token_healing = a.token_healing.or(serving.token_healing).unwrap_or(false);
    let heal = (template.is_some() && token_healing).then(|| Arc::new(fim::HealIndex::new(&tokenizer)));
    let mid_line = match &a.mid_line_prompt {
        Some(m) => m.parse::<fim::MidLine>().map_err(anyhow::Error::msg)?,
        None => serving.mid_line_prompt.unwrap_or_default(),
    };
    let mid_line = if template.is_some() { mid_line } else { fim::MidLine::Fim };
    let kv_bytes = a.kv_memory_mb.map_or_else(|| backend.default_kv_bytes(), |mb| mb << 20);
    let pool = backend.kv_pool_as(kv_bytes, kv_dtype.unwrap_or_default()).context("allocating the KV cache")?;
    let kv_name = pool.host_dtype().map_or("device", KvDtype::name);
    tracing::info!(
        model = %dir.display(),
        name = %model_name,
        device = %backend.describe(),
        cpu = %ghostline_engine::cpu::describe(),
        params_m = backend.num_params() as f64 / 1e6,
        fim = template.as_ref().map(|t| t.family).unwrap_or("none"),
        mid_line = mid_line.name(),
        kv_blocks = pool.max_blocks(),
        kv_cache = kv_name,
        load_s = t0.elapsed().as_secs_f64(),
        "model loaded"
    );
    let context_length = backend.config().max_position_embeddings;
    let eos_ids = tokenizer.eos_ids.clone();
    let tokenizer = Arc::new(tokenizer);
    let sched = scheduler::Scheduler::start(
        Arc::new(backend),
        tokenizer.clone(),
        pool,
        scheduler::SchedulerConfig {
            max_batch_tokens: a.max_batch_tokens.unwrap_or(512),
            max_running: a.max_running.unwrap_or(64),
            max_queue: a.max_queue.unwrap_or(256),
            prefix_cache: a.prefix_cache.unwrap_or(true),
        },
    );
    let latency = [0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0, 10.0];
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Full("ghostline_ttft_seconds".into()), &latency)?
        .set_buckets_for_metric(Matcher::Full("ghostline_request_duration_seconds".into()), &latency)?
        .set_buckets_for_metric(
            Matcher::Full("ghostline_batch_size".into()),
            &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0],
        )?
        .install_recorder()
        .context("installing the metrics recorder")?;
    let mut limits = http::Limits::default();
    if let Some(b) = a.max_body_bytes {
        limits.max_body_bytes = b;
    }
    if let Some(m) = a.max_tokens_limit {
        limits.max_tokens = m.max(1);
    }
    // Outputs depend on the weights' format and the device too, so cached answers do. (How a
    // prompt was built, healed or not, is in the cache key itself: its ids, stops and healed text.)
    let model_identity = format!(
        "{model_name}@{}/{}/kv-{}",
        cache::model_digest(&dir).context("hashing the model files")?,
        backend_desc,
        kv_name
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    // The Redis connection manager spawns its tasks on this runtime.
    let entered = rt.enter();
    let redis = match &a.redis {
        Some(url) => {
            Some(Arc::new(redis_link::RedisLink::new(url, Duration::from_millis(a.redis_timeout_ms.unwrap_or(250)))?))
        }
        None => None,
    };
    let cache_bytes = a.cache_mb.unwrap_or(64) << 20;
    let cache_ttl = Duration::from_secs(a.cache_ttl_secs.unwrap_or(3600));
    let gateway = http::Gateway {
        auth,
        limiter: limits::Limiter::new(redis.clone()),
        burst_secs: a.rate_limit_burst_secs.filter(|b| *b > 0.0).unwrap_or(60.0),
        inflight: Arc::default(),
        max_inflight_per_key: a.max_inflight_per_key.unwrap_or(16).max(1),
        cache: (cache_bytes > 0).then(|| Arc::new(cache::ResponseCache::new(cache_bytes, redis.clone(), cache_ttl))),
        model_identity,
        filters,
        ingest,
        database,
        open_metrics: a.open_metrics,
        store_text: a.store_completion_text,
        log_prompts: a.debug_log_prompts,
    };
    drop(entered);
    let state = Arc::new(http::AppState {
        model_name,
        context_length,
        scheduler: sched,
        tokenizer,
        template,
        heal,
        mid_line,
        eos_ids,
        fim_stop_ids,
        limits,
        typeahead: Mutex::new(typeahead::TypeAhead::new(a.typeahead_entries.unwrap_or(256))),
        metrics: handle,
        started: Instant::now(),
        gateway,
    });
    let grace = Duration::from_secs(a.shutdown_grace_secs.unwrap_or(10));
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("binding {addr}"))?;
        let local = listener.local_addr()?;
        tracing::info!("listening on http://{local}");
        // Scripts and tests read this line to find the port when asked for port 0.
        println!("ghostline-server listening on http://{local}");
        let _ = std::io::stdout().flush();
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let app = http::router(state);
        let server = axum::serve(listener, app).with_graceful_shutdown(async move {
            shutdown_signal().await;
            tracing::info!("shutting down: no new connections, {}s for running streams", grace.as_secs());
            let _ = stop_tx.send(true);
        });
        let mut stop_rx2 = stop_rx.clone();
        tokio::select! {
            r = server => r.context("serving")?,
            _ = async move {
                let _ = stop_rx2.wait_for(|v| *v).await;
                tokio::time::sleep(grace).await;
            } => tracing::warn!("grace period over; closing remaining streams"),
        }
        drop(stop_rx);
        anyhow::Ok(())
    })?;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
