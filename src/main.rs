//! `ghostline`: the language server that runs beside the editor.
//!
//! With no subcommand (or `--stdio`, as editors pass it) it speaks LSP on stdio and asks
//! ghostline-server for suggestions (DESIGN.md, "LSP contract"). `ghostline complete
//! FILE:LINE:COL` prints one completion in a terminal. Logs go to stderr, never stdout.

use clap::Parser;
use ghostline::cli::{Cli, Command};

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("GHOSTLINE_LOG").unwrap_or_else(|_| "ghostline=info".into()),
        )
        .init();
    let rt = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ghostline: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let settings = cli.settings();
    match cli.command {
        None => {
            rt.block_on(ghostline::lsp::serve(settings));
            std::process::ExitCode::SUCCESS
        }
        Some(Command::Complete(args)) => rt.block_on(ghostline::cli::complete(settings, args)),
    }
}
