//! `ghostline-server`: runs the model and serves completions (see DESIGN.md, "CLI").
//!
//! `generate` runs one completion in the terminal on any supported checkpoint, streaming the
//! text as it is produced.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use ghostline_engine::{Checkpoint, SamplingParams};

#[derive(Parser)]
#[command(name = "ghostline-server", version, about = "ghostline's companion server")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve completions over HTTP.
    Serve {
        #[arg(long, default_value = "127.0.0.1:8484")]
        addr: String,
        #[arg(long)]
        model: Option<PathBuf>,
    },
    /// Complete one prompt in the terminal.
    Generate {
        /// Checkpoint directory in the Hugging Face layout.
        #[arg(long, default_value = "server/models/ghostline-tiny")]
        model: PathBuf,
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

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        None | Some(Command::Serve { .. }) => {
            bail!("HTTP serving is not part of this build yet; use `ghostline-server generate --model DIR --prompt TEXT`")
        }
        Some(Command::Generate { model, prompt, max_tokens, temperature, top_p, top_k, seed, stop }) => {
            let t0 = std::time::Instant::now();
            let ckpt = Checkpoint::load(&model).with_context(|| format!("loading {}", model.display()))?;
            eprintln!(
                "loaded {} ({:.1}M parameters) in {:.2}s",
                model.display(),
                ckpt.model.num_params() as f64 / 1e6,
                t0.elapsed().as_secs_f64()
            );
            let mut pool = ckpt.kv_pool(256 << 20);
            let mut params = ckpt.default_params(max_tokens);
            params.sampling = SamplingParams { temperature, top_k, top_p, seed };
            params.stop = stop;
            let t1 = std::time::Instant::now();
            let mut out = std::io::stdout().lock();
            let g = ckpt.complete(&mut pool, &prompt, &params, |piece| {
                let _ = out.write_all(piece.as_bytes());
                let _ = out.flush();
                true
            })?;
            let dt = t1.elapsed().as_secs_f64();
            eprintln!(
                "\n{} prompt + {} generated tokens in {:.3}s ({:?})",
                g.prompt_tokens,
                g.tokens.len(),
                dt,
                g.finish
            );
            Ok(())
        }
    }
}
