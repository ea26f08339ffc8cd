//! The options of `serve`, each defined once in `serve_options!` below: its flag, its
//! environment variable, its config-file key (the option's name), its default and its help,
//! which shows the default. A flag wins over the environment, which wins over the TOML file
//! (`--config`), which wins over the default. The engine's knobs (`--threads`, `--bf16-native`,
//! `--kernels`) are options of the same kind, handed to the engine in one place
//! (`EngineOptions::hand_to_engine`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Deserialize;

use crate::prompt::MidLine;
use crate::upstream::{UpstreamKind, UpstreamPrompt};

/// The type of a resolved option: the value itself when it has a default, else an `Option`.
macro_rules! resolved_ty {
    ($ty:ty) => { Option<$ty> };
    ($ty:ty, $default:expr) => { $ty };
}

/// The resolved value of an option from the flag / environment, the file, and the default.
macro_rules! resolve {
    ($given:expr) => {
        $given
    };
    ($given:expr, $default:expr) => {
        $given.unwrap_or_else(|| $default)
    };
}

macro_rules! serve_options {
    ($(
        $name:ident : $ty:ty $(= $default:expr => $shown:literal)?,
        $(env $env:literal,)?
        $(flag $flag:literal,)?
        $([$($attr:tt)*],)?
        $help:literal;
    )*) => {
        /// Options of `serve`, as given on the command line or in the environment.
        #[derive(clap::Args, Default, Clone, Debug)]
        pub struct ServeArgs {
            /// TOML config file: its keys are the options' names (`max_queue = 64`).
            #[arg(long, env = "GHOSTLINE_CONFIG")]
            pub config: Option<PathBuf>,
            $(
                #[arg(
                    long $(= $flag)?,
                    $(env = $env,)?
                    help = concat!($help $(, " [default: ", $shown, "]")?)
                    $(, $($attr)*)?
                )]
                pub $name: Option<$ty>,
            )*
        }

        /// The same options in the TOML file.
        #[derive(Deserialize, Default)]
        #[serde(deny_unknown_fields)]
        struct FileConfig {
            $( $name: Option<$ty>, )*
        }

        /// Every option, resolved.
        #[derive(Debug, Clone)]
        pub struct Settings {
            $( pub $name: resolved_ty!($ty $(, $default)?), )*
        }

        impl Settings {
            fn resolve(given: ServeArgs, file: FileConfig) -> Settings {
                Settings { $( $name: resolve!(given.$name.or(file.$name) $(, $default)?), )* }
            }
        }

        /// Every option's config-file key, for the tests.
        #[cfg(test)]
        const KEYS: &[&str] = &[$(stringify!($name)),*];
    };
}

serve_options! {
    addr: SocketAddr = SocketAddr::from(([127, 0, 0, 1], 8484)) => "127.0.0.1:8484", env "GHOSTLINE_ADDR",
        "Address to listen on (a non-loopback one needs an API key, or --insecure-no-auth).";
    model: String, env "GHOSTLINE_MODEL",
        "The model: a checkpoint directory (Hugging Face layout), a .gguf file, hf:ORG/NAME[@REV][/FILE.gguf] or ollama:NAME[:TAG]. Default: the bundled ghostline-tiny.";
    device: String = "cpu".into() => "cpu", env "GHOSTLINE_DEVICE",
        "cpu, or cuda[:N] where built with the cuda feature.";
    data_dir: PathBuf, env "GHOSTLINE_DATA_DIR",
        "Directory for the server's state. Default: $XDG_DATA_HOME/ghostline (~/.local/share/ghostline).";
    model_name: String, env "GHOSTLINE_MODEL_NAME",
        "Name the model is served under. Default: the checkpoint directory's name.";
    kv_memory_mb: usize, env "GHOSTLINE_KV_MEMORY_MB",
        "KV cache memory budget in MiB. Default: 512 on the CPU; on a GPU, half its free memory, at most 16 GiB.";
    max_batch_tokens: usize = 512 => "512", env "GHOSTLINE_MAX_BATCH_TOKENS",
        "Tokens computed per engine step at most (decode tokens plus prefill chunks).";
    max_running: usize = 64 => "64", env "GHOSTLINE_MAX_RUNNING",
        "Requests running at once at most.";
    max_queue: usize = 256 => "256", env "GHOSTLINE_MAX_QUEUE",
        "Requests waiting at most; beyond it the server answers 503.";
    prefix_cache: bool = true => "true", env "GHOSTLINE_PREFIX_CACHE",
        "Reuse KV blocks of earlier prompts that share a prefix (true/false).";
    typeahead_entries: usize = 256 => "256", env "GHOSTLINE_TYPEAHEAD_ENTRIES",
        "Remembered completions for typed-ahead reuse (0 turns it off).";
    fim_template: String, env "GHOSTLINE_FIM_TEMPLATE",
        "FIM template: qwen, starcoder, deepseek, codellama or none. Default: detected from the tokenizer.";
    token_healing: bool, env "GHOSTLINE_TOKEN_HEALING",
        "Token healing of prompts with the cursor inside a line: the prompt's last token is left for \
         the model to choose again, so that a completion can start inside it (true/false). Default: the \
         model directory's ghostline.json, else true.";
    mid_line_prompt: MidLine, env "GHOSTLINE_MID_LINE_PROMPT",
        "How FIM requests with the cursor inside a line (code before it, nothing after it on the line) \
         are prompted: fim (the template) or plain (the prefix alone, completed to the end of the line). \
         Default: the model directory's ghostline.json, else fim.";
    max_body_bytes: usize = 1 << 20 => "1048576", env "GHOSTLINE_MAX_BODY_BYTES",
        "Largest request body in bytes.";
    max_tokens_limit: u32 = 512 => "512", env "GHOSTLINE_MAX_TOKENS_LIMIT",
        "Largest max_tokens a request may ask for.";
    threads: usize, env "GHOSTLINE_THREADS",
        "Engine threads. Default: all cores.";
    bf16_native: bool = false => "false", env "GHOSTLINE_BF16_NATIVE",
        [num_args = 0..=1, default_missing_value = "true", value_parser = clap::builder::BoolishValueParser::new()],
        "On a CPU with AVX-512 BF16, compute bf16 products of 8 rows or more natively (logits move by about 1e-2).";
    kernels: String, env "GHOSTLINE_KERNELS",
        "Cap the CPU kernels: auto, avx512, avx2 or portable (to compare kernels on one machine). Default: auto, the best the CPU has.";
    weights: String = "auto".into() => "auto", env "GHOSTLINE_WEIGHTS",
        "How the CPU backend holds weights: auto, stored (the checkpoint's own precision: bf16 or f32, a \
         GGUF file's blocks), or one format for every matrix: f32, bf16, q8 (int8 in groups of 32), q4, q4_1. \
         auto: q8 where the CPU has AVX2 or AVX-512 and q8 changes no matrix by more than 2% (RMS), else \
         stored; a GGUF file's quantized blocks as stored. The load log says which, and why.";
    kv_cache: String = "f16".into() => "f16", env "GHOSTLINE_KV_CACHE",
        "How the CPU backend stores the KV cache: f16 (half the memory) or f32.";
    upstream: String, env "GHOSTLINE_UPSTREAM",
        "Send inference to this engine instead of running the model here: its base URL, http://HOST:PORT \
         (llama.cpp's llama-server, vLLM, SGLang; see docs/scale.md). --model still gives the tokenizer and \
         FIM template (a directory with only the tokenizer files will do). Default: none, the model runs here.";
    upstream_kind: UpstreamKind = UpstreamKind::LlamaCpp => "llama-cpp", env "GHOSTLINE_UPSTREAM_KIND",
        "The upstream's API: llama-cpp (llama-server's /completion) or openai (/v1/completions of vLLM, \
         SGLang or llama-server).";
    upstream_model: String, env "GHOSTLINE_UPSTREAM_MODEL",
        "The model name sent to an openai upstream (vLLM's --served-model-name). Default: none sent.";
    upstream_prompt: UpstreamPrompt = UpstreamPrompt::Auto => "auto", env "GHOSTLINE_UPSTREAM_PROMPT",
        "How the prompt goes to the upstream: tokens (token ids), text (text in which the user's code cannot \
         spell a control token), or auto (token ids, and text from the first time the upstream refuses ids \
         with 400 / 422 but takes the same request as text, as TGI does).";
    upstream_timeout_ms: u64 = 30_000 => "30000", env "GHOSTLINE_UPSTREAM_TIMEOUT_MS",
        "Longest wait in milliseconds for the upstream's answer to start, and between two of its chunks.";
    shutdown_grace_secs: u64 = 10 => "10", env "GHOSTLINE_SHUTDOWN_GRACE_SECS",
        "Seconds running streams get to finish after SIGTERM (new requests meanwhile get 503).";
    header_timeout_secs: u64 = 10 => "10", env "GHOSTLINE_HEADER_TIMEOUT_SECS",
        "Seconds a connection has to send a request's headers, from its opening or from the end of its \
         previous answer (so also how long an idle keep-alive connection is kept); then it is closed.";
    body_timeout_secs: u64 = 10 => "10", env "GHOSTLINE_BODY_TIMEOUT_SECS",
        "Seconds a request has to send its whole body once its headers are in; then 408.";
    max_connections: usize = 2048 => "2048", env "GHOSTLINE_MAX_CONNECTIONS",
        "Connections open at once at most; further clients wait to be accepted.";
    redis: String, env "GHOSTLINE_REDIS",
        "Redis URL for the shared cache and limits (team deployments). Default: none.";
    database: String, env "GHOSTLINE_DATABASE",
        "Database URL: postgres://… or sqlite:PATH. Default: SQLite in the data dir.";
    insecure_no_auth: bool = false => "false", env "GHOSTLINE_INSECURE_NO_AUTH",
        [num_args = 0..=1, default_missing_value = "true", value_parser = clap::builder::BoolishValueParser::new()],
        "Serve a non-loopback address without API keys.";
    cache_mb: usize = 64 => "64", env "GHOSTLINE_CACHE_MB",
        "Response cache size in MiB, in process (0 turns the response cache off).";
    cache_ttl_secs: u64 = 3600 => "3600", env "GHOSTLINE_CACHE_TTL_SECS",
        "How long Redis keeps a cached response, in seconds.";
    redis_timeout_ms: u64 = 250 => "250", env "GHOSTLINE_REDIS_TIMEOUT_MS",
        "Deadline of one Redis operation, in milliseconds.";
    max_inflight_per_key: usize = 16 => "16", env "GHOSTLINE_MAX_INFLIGHT_PER_KEY",
        "Sequences one key may have queued or running at once.";
    rate_limit_burst_secs: f64 = 60.0 => "60", env "GHOSTLINE_RATE_LIMIT_BURST_SECS",
        "Per-key rate buckets hold this many seconds of the rate (60: a minute's worth).";
    open_metrics: bool = false => "false", env "GHOSTLINE_OPEN_METRICS",
        [num_args = 0..=1, default_missing_value = "true", value_parser = clap::builder::BoolishValueParser::new()],
        "Serve /metrics and /v1/stats without an API key.";
    redact_secrets: bool = true => "true", env "GHOSTLINE_REDACT_SECRETS",
        "Redact secrets from prompts and drop completions with secrets (true/false).";
    secret_patterns: Vec<String> = Vec::new() => "none", flag "secret-pattern",
        "Another secret pattern (regex; repeatable).";
    blocklist: Vec<String> = Vec::new() => "none", flag "blocklist",
        "Drop completions matching this regex (repeatable).";
    store_completion_text: bool = false => "false", env "GHOSTLINE_STORE_COMPLETION_TEXT",
        [num_args = 0..=1, default_missing_value = "true", value_parser = clap::builder::BoolishValueParser::new()],
        "Keep prompt and completion text in the completion record.";
    debug_log_prompts: bool = false => "false", env "GHOSTLINE_DEBUG_LOG_PROMPTS",
        [num_args = 0..=1, default_missing_value = "true", value_parser = clap::builder::BoolishValueParser::new()],
        "Log the text given to the engine (debugging; it contains code).";
    fault_injection: String, env "GHOSTLINE_FAULT_INJECTION", [hide = true],
        "Tests only, debug builds only: make engine steps fail (panic-at-step:K, error-at-step:K, panic-always).";
    telemetry_backlog: usize = 10_000 => "10000", env "GHOSTLINE_TELEMETRY_BACKLOG",
        "Telemetry events and completion records waiting to be stored at most; beyond it 503.";
}

impl ServeArgs {
    /// The options resolved against the config file (when one is named) and the defaults.
    pub fn resolve(self) -> anyhow::Result<Settings> {
        let file = match &self.config {
            None => FileConfig::default(),
            Some(path) => {
                let text =
                    std::fs::read_to_string(path).with_context(|| format!("reading config file {}", path.display()))?;
                toml::from_str(&text).with_context(|| format!("config file {}", path.display()))?
            }
        };
        Ok(Settings::resolve(self, file))
    }
}

impl Settings {
    /// The data dir: given, or the user's data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.data_dir.clone().unwrap_or_else(|| {
            let base = std::env::var_os("XDG_DATA_HOME")
                .map(PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")));
            base.map_or_else(|| PathBuf::from("ghostline-data"), |b| b.join("ghostline"))
        })
    }

    /// The engine's knobs among the options.
    pub fn engine(&self) -> EngineOptions {
        EngineOptions { threads: self.threads, bf16_native: self.bf16_native, kernels: self.kernels.clone() }
    }
}

/// The options the engine runs by.
#[derive(Debug, Clone, PartialEq)]
pub struct EngineOptions {
    /// Engine threads (default: all cores).
    pub threads: Option<usize>,
    /// Native AVX-512 BF16 products.
    pub bf16_native: bool,
    /// Cap on the CPU kernels: `auto`, `avx512`, `avx2` or `portable`.
    pub kernels: Option<String>,
}

impl EngineOptions {
    /// The engine's CPU options; a kernel cap it does not know is an error naming the option.
    pub fn cpu(&self) -> anyhow::Result<ghostline_engine::CpuOptions> {
        let kernels = match &self.kernels {
            Some(k) => k.parse().map_err(|e: String| anyhow::anyhow!("--kernels / GHOSTLINE_KERNELS: {e}"))?,
            None => Default::default(),
        };
        Ok(ghostline_engine::CpuOptions {
            threads: self.threads.map(|t| t.max(1)),
            kernels,
            bf16_native: self.bf16_native,
        })
    }

    /// Hands the options to the engine, once, before the model loads.
    pub fn hand_to_engine(&self) -> anyhow::Result<()> {
        ghostline_engine::cpu::configure(self.cpu()?).context("configuring the engine's CPU kernels and threads")
    }
}

/// Serving settings a model directory may carry for itself in `ghostline.json`.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ModelServing {
    /// `fim` or `plain`: see `--mid-line-prompt`.
    pub mid_line_prompt: Option<MidLine>,
    /// See `--token-healing`.
    pub token_healing: Option<bool>,
}

impl ModelServing {
    /// The model directory's `ghostline.json`, or the defaults when it has none.
    pub fn read(dir: &Path) -> anyhow::Result<ModelServing> {
        if dir.is_file() {
            // A single-file checkpoint (.gguf) has no directory of its own to hold settings.
            return Ok(ModelServing::default());
        }
        let path = dir.join("ghostline.json");
        match std::fs::read_to_string(&path) {
            Ok(text) => serde_json::from_str(&text)
                .with_context(|| format!("reading the model's serving settings {}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(ModelServing::default()),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, Parser};

    #[derive(Parser)]
    struct Only {
        #[command(flatten)]
        a: ServeArgs,
    }

    fn parse(args: &[&str]) -> ServeArgs {
        Only::try_parse_from(std::iter::once("serve").chain(args.iter().copied())).unwrap().a
    }

    #[test]
    fn a_flag_wins_over_the_file_which_wins_over_the_default() {
        let file: FileConfig = toml::from_str("max_queue = 8\nmax_running = 4\nopen_metrics = true").unwrap();
        let s = Settings::resolve(parse(&["--max-queue", "9"]), file);
        assert_eq!((s.max_queue, s.max_running, s.max_batch_tokens), (9, 4, 512));
        assert!(s.open_metrics && !s.insecure_no_auth);
        let s = Settings::resolve(
            parse(&["--insecure-no-auth", "--blocklist", "a", "--blocklist", "b"]),
            FileConfig::default(),
        );
        assert!(s.insecure_no_auth);
        assert_eq!(s.blocklist, ["a", "b"]);
        assert_eq!(s.addr.to_string(), "127.0.0.1:8484");
        let s =
            Settings::resolve(parse(&["--bf16-native", "false", "--mid-line-prompt", "plain"]), FileConfig::default());
        assert_eq!((s.bf16_native, s.mid_line_prompt), (false, Some(MidLine::Plain)));
        assert_eq!(
            (s.upstream.as_deref(), s.upstream_kind, s.upstream_timeout_ms),
            (None, UpstreamKind::LlamaCpp, 30_000)
        );
        let file: FileConfig =
            toml::from_str("upstream = \"http://127.0.0.1:8080\"\nupstream_kind = \"openai\"").unwrap();
        let s = Settings::resolve(parse(&["--upstream-timeout-ms", "500"]), file);
        assert_eq!((s.upstream.as_deref(), s.upstream_kind), (Some("http://127.0.0.1:8080"), UpstreamKind::OpenAi));
        assert_eq!((s.upstream_timeout_ms, s.upstream_prompt), (500, UpstreamPrompt::Auto));
        let s = Settings::resolve(parse(&["--upstream-prompt", "text"]), FileConfig::default());
        assert_eq!(s.upstream_prompt, UpstreamPrompt::Text);
        assert!(Only::try_parse_from(["serve", "--upstream-kind", "vllm"]).is_err(), "an unknown kind is refused");
        assert!(toml::from_str::<FileConfig>("model_nmae = 1").is_err(), "an unknown key is refused");
    }

    #[test]
    fn every_option_has_a_file_key_a_flag_and_its_default_in_the_help() {
        let cmd = Only::command();
        let help = cmd.clone().render_long_help().to_string();
        for key in KEYS {
            assert!(cmd.get_arguments().any(|a| a.get_id().as_str() == *key), "{key} has no flag");
        }
        for shown in ["[default: 127.0.0.1:8484]", "[default: 512]", "[default: f16]", "[env: GHOSTLINE_MAX_QUEUE="] {
            assert!(help.contains(shown), "{shown} missing from\n{help}");
        }
    }

    #[test]
    fn the_engine_options_are_collected_in_one_place() {
        let s = Settings::resolve(
            parse(&["--threads", "3", "--kernels", "portable", "--bf16-native"]),
            FileConfig::default(),
        );
        assert_eq!(s.engine(), EngineOptions { threads: Some(3), bf16_native: true, kernels: Some("portable".into()) });
    }
}
