//! Replays typing through real files with the `ghostline` LSP and a real ghostline-server:
//! lines of a Python and a Rust file are erased and typed again one character at a time, each
//! keystroke sending didChange and an automatic inline-completion request (cancelling the
//! previous one, as VS Code does). Reports keystroke-to-suggestion latency, server requests per
//! 100 keystrokes and the share of suggestions answered without a server request.
//!
//! Run: `cargo build --release -p ghostline-server && cargo bench --bench typing`
//! Env: TYPING_INTERVAL_MS (default 120), TYPING_KEYS per file (default 300),
//! TYPING_MODEL (a checkpoint; default the bundled model), TYPING_DEBOUNCE_MS (default 75),
//! TYPING_LSP_BIN and GHOSTLINE_SERVER_BIN (other builds of the two binaries, to compare builds
//! in one session).

#[path = "../tests/support/lsp_client.rs"]
mod lsp_client;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use lsp_client::{inline_params, served, server_binary, start_server, Lsp};
use serde_json::json;

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[derive(Default)]
struct Tally {
    keys: u64,
    answered: Vec<f64>,
    empty: u64,
    cancelled: u64,
}

fn drain(lsp: &mut Lsp, pending: &mut HashMap<i64, Instant>, t: &mut Tally, until: Instant) {
    loop {
        let left = until.saturating_duration_since(Instant::now());
        let Ok((at, msg)) = lsp.rx.recv_timeout(left) else { return };
        let Some(id) = msg["id"].as_i64() else { continue };
        let Some(sent) = pending.remove(&id) else { continue };
        if msg.get("error").is_some() {
            t.cancelled += 1;
        } else if msg["result"]["items"].as_array().is_some_and(|a| !a.is_empty()) {
            t.answered.push((at - sent).as_secs_f64() * 1e3);
        } else {
            t.empty += 1;
        }
    }
}

fn main() {
    let interval = Duration::from_millis(env_num("TYPING_INTERVAL_MS", 120));
    let keys_per_file = env_num("TYPING_KEYS", 300);
    let debounce = env_num("TYPING_DEBOUNCE_MS", 75);
    let own = env!("CARGO_BIN_EXE_ghostline");
    let lsp_bin = std::env::var("TYPING_LSP_BIN").unwrap_or_else(|_| own.to_string());
    let bin = lsp_bin.as_str();
    let mut extra = vec!["--threads".to_string(), "2".to_string()];
    if let Ok(m) = std::env::var("TYPING_MODEL") {
        extra.extend(["--model".to_string(), m]);
    }
    let extra: Vec<&str> = extra.iter().map(|s| s.as_str()).collect();
    let (_server, addr) = start_server(server_binary(bin), &extra);
    let mut lsp = Lsp::start(bin, &format!("http://{addr}"));
    lsp.initialize(json!({"debounceMs": debounce}));
    let root = env!("CARGO_MANIFEST_DIR");
    let files = [("server/training/evaluate.py", "python"), ("src/context.rs", "rust")];
    let served_before = served(&addr);
    let mut t = Tally::default();
    let mut pending: HashMap<i64, Instant> = HashMap::new();
    for (path, lang) in files {
        let text = std::fs::read_to_string(format!("{root}/{path}")).expect("read the file to replay");
        let uri = format!("file:///replay/{path}");
        lsp.open(&uri, lang, &text);
        let lines: Vec<&str> = text.lines().collect();
        let targets: Vec<usize> = (0..lines.len())
            .filter(|&i| (12..=70).contains(&lines[i].trim().len()) && !lines[i].trim().starts_with(['#', '/']))
            .collect();
        let mut version = 1;
        let mut typed_in_file = 0;
        let step = (targets.len() / 12).max(1);
        for &line in targets.iter().step_by(step) {
            if typed_in_file >= keys_per_file {
                break;
            }
            let l = lines[line];
            let indent = l.len() - l.trim_start().len();
            let content = l.trim_start();
            version += 1;
            lsp.notify(
                "textDocument/didChange",
                json!({"textDocument": {"uri": uri, "version": version}, "contentChanges": [{"range": {"start": {"line": line, "character": indent}, "end": {"line": line, "character": l.len()}}, "text": ""}]}),
            );
            let mut col = indent;
            for c in content.chars() {
                version += 1;
                lsp.insert(&uri, version, line as u32, col as u32, &c.to_string());
                col += c.len_utf8();
                for id in pending.keys().copied().collect::<Vec<_>>() {
                    lsp.notify("$/cancelRequest", json!({"id": id}));
                }
                let id = lsp
                    .send_request("textDocument/inlineCompletion", inline_params(&uri, line as u32, col as u32, false));
                pending.insert(id, Instant::now());
                t.keys += 1;
                typed_in_file += 1;
                drain(&mut lsp, &mut pending, &mut t, Instant::now() + interval);
            }
            // The typist pauses at the end of the line.
            drain(&mut lsp, &mut pending, &mut t, Instant::now() + Duration::from_millis(600));
        }
    }
    drain(&mut lsp, &mut pending, &mut t, Instant::now() + Duration::from_secs(2));
    let requests = served(&addr) - served_before;
    let stats = lsp.request("ghostline/stats", json!(null));
    let mut lat = t.answered.clone();
    lat.sort_by(|a, b| a.total_cmp(b));
    let without_server = stats["cache_hits"].as_u64().unwrap_or(0) + stats["reused"].as_u64().unwrap_or(0);
    println!("typing replay: {} keystrokes at {} ms intervals, debounce {debounce} ms", t.keys, interval.as_millis());
    println!(
        "  suggestions shown:            {} ({} empty, {} cancelled by the next keystroke)",
        lat.len(),
        t.empty,
        t.cancelled
    );
    println!(
        "  keystroke-to-suggestion ms:   p50 {:.1}  p90 {:.1}  p99 {:.1}",
        percentile(&lat, 0.5),
        percentile(&lat, 0.9),
        percentile(&lat, 0.99)
    );
    println!("  server requests / 100 keys:   {:.1}", requests as f64 * 100.0 / t.keys.max(1) as f64);
    println!(
        "  answered without the server:  {} of {} answers (typed-ahead cache {}, shared stream {})",
        without_server,
        lat.len(),
        stats["cache_hits"],
        stats["reused"]
    );
    println!("  lsp counters: {stats}");
    let r = lsp.request("shutdown", json!(null));
    assert!(r.is_null());
    lsp.notify("exit", json!(null));
}
