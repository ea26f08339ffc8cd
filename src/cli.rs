//! Command line: LSP on stdio by default; `ghostline complete FILE:LINE:COL` for a try-out in a
//! terminal, through the same path an editor's request takes.

use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::document::{Document, Position, PositionEncoding};
use crate::settings::Settings;
use crate::suggest::{Ask, Core};
use crate::trigger::Multiline;

#[derive(Parser, Debug)]
#[command(name = "ghostline", version, about = "The ghostline language server: AI code suggestions over LSP (stdio)")]
pub struct Cli {
    /// Speak LSP on stdio (the default; accepted because editors pass it).
    #[arg(long, global = true)]
    pub stdio: bool,
    /// ghostline-server URL [env: GHOSTLINE_SERVER_URL] [default: http://127.0.0.1:8484]
    #[arg(long, global = true)]
    pub server_url: Option<String>,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Print one completion for a position in a file (LINE and COL count from 1; COL in characters).
    Complete(CompleteArgs),
}

#[derive(Args, Debug)]
pub struct CompleteArgs {
    /// FILE:LINE:COL
    pub location: String,
    /// Line mode: auto, always or never.
    #[arg(long, value_parser = ["auto", "always", "never"])]
    pub multiline: Option<String>,
    /// Most tokens to generate.
    #[arg(long)]
    pub max_tokens: Option<u32>,
    /// Language id (default: from the file's extension).
    #[arg(long)]
    pub language: Option<String>,
    /// Longest wait for the completion, in milliseconds (default: the `requestTimeoutMs`
    /// setting's, 2000).
    #[arg(long)]
    pub timeout_ms: Option<u64>,
}

impl Cli {
    pub fn settings(&self) -> Settings {
        let mut s = Settings::from_env();
        if let Some(url) = &self.server_url {
            for w in s.update(&serde_json::json!({ "serverUrl": url })) {
                eprintln!("{w}");
            }
        }
        s
    }
}

/// The LSP language id for a file name (a `.h` header is taken for C; `--language cpp` says
/// otherwise).
pub fn language_for(path: &str) -> &'static str {
    match std::path::Path::new(path).extension().and_then(|e| e.to_str()).unwrap_or("") {
        "py" | "pyi" => "python",
        "rs" => "rust",
        "js" | "mjs" | "cjs" => "javascript",
        "jsx" => "javascriptreact",
        "ts" | "mts" | "cts" => "typescript",
        "tsx" => "typescriptreact",
        "go" => "go",
        "java" => "java",
        "c" | "h" => "c",
        "cpp" | "cc" | "cxx" | "c++" | "hpp" | "hh" | "hxx" | "h++" | "ipp" => "cpp",
        _ => "plaintext",
    }
}

/// Splits `FILE:LINE:COL` (the file may contain colons).
pub fn parse_location(loc: &str) -> Result<(String, u32, u32), String> {
    let bad = || format!("expected FILE:LINE:COL with LINE and COL counting from 1, got {loc:?}");
    let mut parts = loc.rsplitn(3, ':');
    let col: u32 = parts.next().and_then(|c| c.parse().ok()).ok_or_else(bad)?;
    let line: u32 = parts.next().and_then(|l| l.parse().ok()).ok_or_else(bad)?;
    let file = parts.next().filter(|f| !f.is_empty()).ok_or_else(bad)?;
    if line == 0 || col == 0 {
        return Err(bad());
    }
    Ok((file.to_string(), line, col))
}

pub async fn complete(mut settings: Settings, args: CompleteArgs) -> ExitCode {
    let (file, line, col) = match parse_location(&args.location) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("ghostline complete: {e}");
            return ExitCode::from(2);
        }
    };
    let text = match std::fs::read(&file) {
        Ok(bytes) => match String::from_utf8(bytes) {
            Ok(t) => t,
            Err(_) => {
                eprintln!("ghostline complete: {file} is not UTF-8 text");
                return ExitCode::from(2);
            }
        },
        Err(e) => {
            eprintln!("ghostline complete: cannot read {file}: {e}");
            return ExitCode::from(2);
        }
    };
    if let Some(m) = &args.multiline {
        settings.multiline = match m.as_str() {
            "always" => Multiline::Always,
            "never" => Multiline::Never,
            _ => Multiline::Auto,
        };
    }
    if let Some(n) = args.max_tokens {
        settings.max_tokens = n.clamp(1, 1024);
    }
    if let Some(ms) = args.timeout_ms {
        settings.request_timeout_ms = ms.clamp(100, 600_000);
    }
    let language = args.language.unwrap_or_else(|| language_for(&file).to_string());
    // Column in characters -> the position in UTF-16 units the core expects.
    let doc = Document::new(&text, 1, language.as_str());
    let rope = doc.rope();
    let l = (line - 1) as usize;
    if l >= rope.len_lines() {
        eprintln!("ghostline complete: {file} has {} lines; line {line} is past the end", rope.len_lines());
        return ExitCode::from(2);
    }
    let line_start = rope.line_to_char(l);
    let line_len = crate::trigger::line_around(&doc, line_start).1.chars().count();
    let c = line_start + ((col - 1) as usize).min(line_len);
    let pos = doc.position(c, PositionEncoding::Utf16);
    let url = settings.server_url.clone();
    let core = Core::new(settings);
    let uri = format!(
        "file://{}",
        std::path::absolute(&file).map(|p| p.to_string_lossy().into_owned()).unwrap_or(file.clone())
    );
    core.open(&uri, &language, 1, &text);
    match core.suggest(&uri, Position::new(pos.line, pos.character), Ask { invoked: true, n: 1, debounce: false }).await
    {
        Ok(Some(s)) => {
            println!("{}", s.items[0].1);
            ExitCode::SUCCESS
        }
        Ok(None) => {
            eprintln!("ghostline complete: no suggestion at {file}:{line}:{col}");
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!(
                "ghostline complete: {e} (server {url}; start it with `cargo run --release -p ghostline-server`)"
            );
            ExitCode::from(3)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_parse_from_the_right() {
        assert_eq!(parse_location("a/b.py:3:7").unwrap(), ("a/b.py".into(), 3, 7));
        assert_eq!(parse_location("c:/x:y.rs:1:1").unwrap(), ("c:/x:y.rs".into(), 1, 1));
        for bad in ["a.py", "a.py:3", "a.py:0:1", ":1:1", "a.py:x:1"] {
            assert!(parse_location(bad).is_err(), "{bad}");
        }
        for (file, id) in [
            ("src/x.rs", "rust"),
            ("README", "plaintext"),
            ("app/main.ts", "typescript"),
            ("app/View.tsx", "typescriptreact"),
            ("lib/index.mjs", "javascript"),
            ("lib/App.jsx", "javascriptreact"),
            ("cmd/main.go", "go"),
            ("src/Main.java", "java"),
            ("lexer.c", "c"),
            ("lexer.h", "c"),
            ("sais.hxx", "cpp"),
            ("x.cc", "cpp"),
        ] {
            assert_eq!(language_for(file), id, "{file}");
        }
    }
}
