//! `ghostline-server`: runs the model and serves completions (see DESIGN.md, "CLI").
//!
//! `serve` (the default) loads a checkpoint and serves the HTTP API v1; `keys` manages API
//! keys; `stats` prints the telemetry figures; `generate` runs one completion in the terminal.

mod bench;
mod config;
mod dashboard;
mod error;
mod filters;
#[cfg(test)]
mod fuzz;
mod gateway;
mod health;
mod http;
mod inference;
mod ingest;
mod keys;
mod limits;
mod listen;
mod model_source;
mod prefix_cache;
mod prompt;
mod redis_link;
mod respond;
mod response_cache;
mod scheduler;
mod stats;
mod store;
mod typeahead;
mod upstream;
mod validate;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use config::{ModelServing, ServeArgs, Settings};
use ghostline_engine::{Backend, Checkpoint, Device, KvDtype, SamplingParams, Tokenizer, Weights};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};

#[derive(Parser)]
#[command(
    name = "ghostline-server",
    version,
    about = "ghostline's companion server: runs the model and serves completions"
)]
#[command(args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// With no subcommand the server serves: `ghostline-server --model X` is `serve --model X`.
    #[command(flatten)]
    serve: ServeArgs,
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
    /// List the models `--model` can open here without a download (the bundled one, the
    /// Hugging Face cache, Ollama's pulled models).
    Models,
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
        let s = ServeArgs {
            data_dir: self.data_dir.clone(),
            database: self.database.clone(),
            config: self.config.clone(),
            ..ServeArgs::default()
        }
        .resolve()?;
        store::DbTarget::resolve(s.database.as_deref(), &s.data_dir())
    }
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

/// The local path of a `--model` value (a directory, a `.gguf` file, `hf:…`, `ollama:…`; see
/// `model_source`), or of the bundled model when none is given.
fn resolve_model(arg: Option<&str>) -> anyhow::Result<PathBuf> {
    use std::io::IsTerminal;
    match arg {
        Some(m) => model_source::resolve(&model_source::ModelSpec::parse(m)?, std::io::stderr().is_terminal()),
        None => {
            let p = bundled_model();
            if p.join("config.json").exists() && p.join("model.safetensors").exists() {
                Ok(p)
            } else {
                bail!(
                    "the bundled model is missing at {} (build it with server/training, see its README), \
                     or pass --model with a checkpoint directory, a .gguf file, hf:ORG/NAME or ollama:NAME",
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

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        None => serve(cli.serve.resolve()?),
        Some(Command::Serve(a)) => serve(a.resolve()?),
        Some(Command::Bench(a)) => bench::run(a),
        Some(Command::Keys { db, command }) => {
            let target = db.target()?;
            let mut store = store::Store::open(&target)?;
            keys::run_cli(&mut store, command)
        }
        Some(Command::Models) => {
            let models = model_source::list_local(&bundled_model());
            if models.is_empty() {
                println!("no models here; pass --model hf:ORG/NAME to download one");
            }
            for m in models {
                println!("{}\t{}", m.spec, m.path.display());
            }
            Ok(())
        }
        Some(Command::Stats { db, since, json }) => {
            let target = db.target()?;
            let now = ingest::unix_ms();
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
            // The engine's knobs from the environment (GHOSTLINE_THREADS, _KERNELS, _BF16_NATIVE).
            // And GHOSTLINE_WEIGHTS.
            let settings = cli.serve.resolve()?;
            settings.engine().hand_to_engine()?;
            let weights = settings.weights.parse::<Weights>().map_err(|e| anyhow::anyhow!("GHOSTLINE_WEIGHTS: {e}"))?;
            let dir = resolve_model(model.as_ref().and_then(|p| p.to_str()))?;
            let t0 = Instant::now();
            let ckpt = Checkpoint::load_as(&dir, weights).with_context(|| format!("loading {}", dir.display()))?;
            eprintln!(
                "loaded {} ({:.1}M parameters, weights {}) in {:.2}s",
                dir.display(),
                ckpt.model.num_params() as f64 / 1e6,
                ckpt.model.describe_weights(),
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

fn serve(a: Settings) -> anyhow::Result<()> {
    // First, while no other thread runs: the engine reads some of its options from the environment.
    a.engine().hand_to_engine()?;
    init_tracing();
    let addr = a.addr;
    let device = Device::parse(&a.device).map_err(anyhow::Error::msg)?;
    let database = store::DbTarget::resolve(a.database.as_deref(), &a.data_dir())?;
    let require_key = !addr.ip().is_loopback() && !a.insecure_no_auth;
    let auth = Arc::new(keys::Auth::new(database.clone(), store::Store::open(&database)?, require_key));
    if require_key && !auth.any() {
        bail!(
            "refusing to serve {addr} without API keys: add one with `ghostline-server keys add NAME`, bind a \
             loopback address, or pass --insecure-no-auth to serve the network unauthenticated"
        );
    }
    let filters = filters::Filters::new(a.redact_secrets, &a.secret_patterns, &a.blocklist)?;
    let ingest = ingest::Ingest::start(database.clone(), store::Store::open(&database)?, a.telemetry_backlog);
    tracing::info!(database = %database.describe(), keys = auth.any(), "database ready");
    let dir = resolve_model(a.model.as_deref())?;
    let t0 = Instant::now();
    // What runs the model: the engine here, or an upstream (then only the tokenizer loads).
    // A GGUF file's metadata is read once, for the weights and the tokenizer.
    let (local, tokenizer) = match &a.upstream {
        Some(_) => (None, None),
        None => {
            let weights = a.weights.parse::<Weights>().map_err(|e| anyhow::anyhow!("--weights: {e}"))?;
            let kv_dtype = a.kv_cache.parse::<KvDtype>().map_err(anyhow::Error::msg)?;
            let (backend, tokenizer) = Backend::load_with_tokenizer(&dir, device, weights)
                .with_context(|| format!("loading model {} on {device}", dir.display()))?;
            let kv_bytes = a.kv_memory_mb.map_or_else(|| backend.default_kv_bytes(), |mb| mb << 20);
            let pool = backend.kv_pool_as(kv_bytes, kv_dtype).context("allocating the KV cache")?;
            (Some((backend, pool)), Some(tokenizer))
        }
    };
    let mut meta = match &local {
        Some((backend, _)) => model_source::ModelMeta {
            eos_ids: backend.config().eos_token_ids.clone(),
            context_length: Some(backend.config().max_position_embeddings),
        },
        None => model_source::meta_without_weights(&dir)?,
    };
    let (backend_desc, kv_name) = match (&local, &a.upstream) {
        (Some((backend, pool)), _) => (backend.describe(), pool.host_dtype().map_or("device", KvDtype::name)),
        (None, url) => {
            (format!("upstream {} {}", a.upstream_kind.name(), url.as_deref().unwrap_or_default()), "upstream")
        }
    };
    let tokenizer = match tokenizer {
        Some(t) => t,
        None => Tokenizer::load(&dir, &meta.eos_ids)
            .with_context(|| format!("loading the tokenizer of {}", dir.display()))?,
    };
    let model_name = a.model_name.clone().unwrap_or_else(|| {
        dir.canonicalize()
            .ok()
            .and_then(|p| p.file_name().map(|s| s.to_string_lossy().into_owned()))
            .unwrap_or_else(|| "model".into())
    });
    let template = prompt::detect(&tokenizer, a.fim_template.as_deref()).map_err(anyhow::Error::msg)?;
    let serving = ModelServing::read(&dir)?;
    // On unless told otherwise: measured to help on every vocabulary tried (docs/models.md).
    let token_healing = a.token_healing.or(serving.token_healing).unwrap_or(true);
    let mid_line = a.mid_line_prompt.or(serving.mid_line_prompt).unwrap_or_default();
    let tokenizer = Arc::new(tokenizer);
    let prompts = Arc::new(prompt::PromptBuilder::new(tokenizer.clone(), template, token_healing, mid_line));
    tracing::info!(
        model = %dir.display(),
        name = %model_name,
        device = %backend_desc,
        cpu = %ghostline_engine::cpu::describe(),
        params_m = local.as_ref().map_or(0.0, |(b, _)| b.num_params() as f64 / 1e6),
        fim = prompts.family().unwrap_or("none"),
        mid_line = prompts.mid_line().name(),
        kv_blocks = local.as_ref().map_or(0, |(_, p)| p.max_blocks()),
        kv_cache = kv_name,
        load_s = t0.elapsed().as_secs_f64(),
        "model loaded"
    );
    let mut model = validate::ModelFacts { name: model_name.clone(), context_length: 0, fim: prompts.family() };
    let faults = match a.fault_injection.as_deref() {
        None => scheduler::FaultInjection::None,
        Some(_) if !cfg!(debug_assertions) => {
            bail!("--fault-injection (GHOSTLINE_FAULT_INJECTION) is for tests; only debug builds honour it")
        }
        Some(spec) => spec.parse().map_err(|e: String| anyhow::anyhow!("--fault-injection: {e}"))?,
    };
    let health = Arc::new(health::Health::default());
    let sched: Option<Arc<dyn inference::Inference>> = match local {
        None => None,
        Some((backend, pool)) => Some(Arc::new(
            scheduler::Scheduler::start(
                Arc::new(backend),
                tokenizer.clone(),
                pool,
                scheduler::SchedulerConfig {
                    max_batch_tokens: a.max_batch_tokens,
                    max_running: a.max_running,
                    max_queue: a.max_queue,
                    prefix_cache: a.prefix_cache,
                    faults,
                },
                health.clone(),
            )
            .context("starting the engine thread")?,
        )),
    };
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
    let limits = validate::Limits {
        max_body_bytes: a.max_body_bytes,
        max_tokens: a.max_tokens_limit.max(1),
        ..validate::Limits::default()
    };
    // Outputs depend on the weights' format and the device too, so cached answers do. (How a
    // prompt was built, healed or not, is in the cache key itself: its ids, stops and healed text.)
    let model_identity = format!(
        "{model_name}@{}/{}/kv-{}",
        response_cache::model_digest(&dir).context("hashing the model files")?,
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
        Some(url) => Some(Arc::new(redis_link::RedisLink::new(url, Duration::from_millis(a.redis_timeout_ms))?)),
        None => None,
    };
    let cache_bytes = a.cache_mb << 20;
    let cache_ttl = Duration::from_secs(a.cache_ttl_secs);
    let gateway = gateway::Gateway::new(
        gateway::KeyLimits {
            limiter: limits::Limiter::new(redis.clone()),
            burst_secs: if a.rate_limit_burst_secs > 0.0 { a.rate_limit_burst_secs } else { 60.0 },
            max_inflight: a.max_inflight_per_key.max(1),
        },
        gateway::Caches {
            response: (cache_bytes > 0)
                .then(|| Arc::new(response_cache::ResponseCache::new(cache_bytes, redis.clone(), cache_ttl))),
            model_identity,
            typeahead: typeahead::TypeAhead::new(a.typeahead_entries),
        },
        filters,
        gateway::Recording { ingest, model: model_name, store_text: a.store_completion_text },
    );
    let inference = match sched {
        Some(s) => s,
        None => {
            let cfg = upstream::UpstreamConfig {
                url: a.upstream.clone().unwrap_or_default(),
                kind: a.upstream_kind,
                timeout: Duration::from_millis(a.upstream_timeout_ms.max(1)),
                max_jobs: a.max_running + a.max_queue,
                model: a.upstream_model.clone(),
                prompt: a.upstream_prompt,
            };
            let up = upstream::Upstream::new(cfg, tokenizer)?;
            let served = rt.block_on(up.context_length());
            up.watch(health.clone());
            tracing::info!(upstream = %backend_desc, context = ?served, "inference goes upstream");
            // The upstream's own limit, when it says, bounds the model's.
            meta.context_length = match (meta.context_length, served) {
                (Some(m), Some(s)) => Some(m.min(s)),
                (m, s) => m.or(s),
            };
            Arc::new(up)
        }
    };
    model.context_length = meta.context_length.with_context(|| {
        format!(
            "{} says nothing of the model's context length (no config.json, no model_max_length in \
             tokenizer_config.json) and the upstream did not say either; add the checkpoint's config.json",
            dir.display()
        )
    })?;
    drop(entered);
    let state = Arc::new(http::AppState {
        model,
        limits,
        prompts,
        inference,
        gateway: Arc::new(gateway),
        auth,
        open_metrics: a.open_metrics,
        database,
        metrics: handle,
        started: Instant::now(),
        log_prompts: a.debug_log_prompts,
        health: health.clone(),
        body_timeout: Duration::from_secs(a.body_timeout_secs.max(1)),
    });
    let grace = Duration::from_secs(a.shutdown_grace_secs);
    let conn_limits = listen::ConnLimits {
        header_timeout: Duration::from_secs(a.header_timeout_secs.max(1)),
        max_connections: a.max_connections.max(1),
    };
    let failed = rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("binding {addr}"))?;
        let local = listener.local_addr()?;
        tracing::info!("listening on http://{local}");
        // Scripts and tests read this line to find the port when asked for port 0.
        println!("ghostline-server listening on http://{local}");
        let _ = std::io::stdout().flush();
        let app = http::router(state);
        // A signal, or an engine that cannot serve any more (then the process exits non-zero,
        // so that the orchestrator replaces it).
        let failed = Arc::new(std::sync::OnceLock::new());
        let stop = {
            let (health, failed) = (health.clone(), failed.clone());
            async move {
                tokio::select! {
                    _ = shutdown_signal() => {}
                    why = health.wait_engine_failure() => {
                        tracing::error!("the engine cannot serve any more ({why}); draining and exiting");
                        let _ = failed.set(why);
                    }
                }
            }
        };
        let on_drain = {
            let health = health.clone();
            move || {
                health.start_draining();
                tracing::info!("draining: new requests get 503, {}s for running streams", grace.as_secs());
            }
        };
        if listen::serve(listener, app, conn_limits, stop, on_drain, grace).await == listen::Ended::GraceOver {
            tracing::warn!("grace period over; closing remaining streams");
        }
        anyhow::Ok(failed.get().cloned())
    })?;
    if let Some(why) = failed {
        bail!("the engine failed: {why}");
    }
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
