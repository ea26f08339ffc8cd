//! One typing replay, comparable across language servers: three Python functions typed from an
//! empty file one key at a time (an Enter brings the next line's indentation, as editors
//! auto-indent), with a pause at the end of every line, drive `ghostline` (adaptive triggering
//! and the fixed 75 ms debounce), llm-ls and lsp-ai, each the way its usual editor drives it:
//!
//! - ghostline as VS Code does: `textDocument/inlineCompletion` (automatic) at every keystroke,
//!   the previous one cancelled;
//! - llm-ls as llm.nvim does: `llm-ls/getCompletions` 150 ms after the last keystroke (its
//!   debounce), the previous one cancelled, with llm.nvim's `backend = "openai"` parameters;
//! - lsp-ai as VS Code does: `textDocument/completion` at every keystroke, the previous one
//!   cancelled.
//!
//! All ask one backend: a stub speaking the OpenAI completions protocol on 127.0.0.1 (port 0),
//! with fixed latency (first token after 60 ms, then one token per 10 ms; the answer is one line
//! and its end), streamed as SSE when asked, one JSON body otherwise; or, with
//! `REPLAY_BACKEND=server`, the real ghostline-server with the bundled model (build it first:
//! `cargo build --release -p ghostline-server`).
//!
//! Per server and typing speed it reports backend requests per 100 keystrokes, the share of
//! pauses that got a fresh suggestion (a non-empty answer to the request for the paused-at
//! keystroke, arrived within the pause), key-to-suggestion p50 / p90 / p99 at those pauses, and
//! the language server's peak RSS (`VmHWM`).
//!
//! Run: `cargo bench --bench replay`
//! Env: REPLAY_SPEEDS (ms per key, default `60,120,250`), REPLAY_PAUSE_MS (default 600),
//! REPLAY_BACKEND (`stub`, default, or `server`), GHOSTLINE_PEERS_DIR (where `llm-ls` and
//! `lsp-ai` are; default `../shared/tools` from the repository root; a peer that is missing is
//! skipped with a message), REPLAY_ONLY (a comma-separated subset of `adaptive,debounce,llm-ls,lsp-ai`).

#[path = "../tests/support/lsp_client.rs"]
mod lsp_client;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lsp_client::{inline_params, served, server_binary, start_server, temp_dir, Lsp, Proc};
use serde_json::{json, Value};

/// What is typed: three functions, 26 lines.
const SCRIPT: &str = r#"import os


def total_size(paths):
    sizes = []
    for p in paths:
        size = os.path.getsize(p)
        sizes.append(size)
    return sum(sizes)


def largest(paths, n):
    pairs = [(os.path.getsize(p), p) for p in paths]
    pairs.sort(reverse=True)
    return [p for _, p in pairs[:n]]


def describe(paths):
    lines = []
    for p in paths:
        kind = "dir" if os.path.isdir(p) else "file"
        lines.append(f"{kind}: {p}")
    if not lines:
        return "nothing"
    text = "\n".join(lines)
    return text
"#;

/// The stub's answer, token by token: one line and its end.
const TOKENS: [&str; 5] = ["  #", " stub", " answer", " ok", "\n"];
const FIRST_TOKEN_MS: u64 = 60;
const TOKEN_MS: u64 = 10;

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

// ---------------------------------------------------------------- the stub backend

/// An OpenAI-compatible completions server with fixed latency, on loopback.
struct Stub {
    addr: String,
    completions: Arc<AtomicU64>,
}

fn read_request(r: &mut BufReader<TcpStream>) -> Option<(String, Vec<u8>)> {
    let mut first = String::new();
    if r.read_line(&mut first).ok()? == 0 {
        return None;
    }
    let mut len = 0usize;
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).ok()? == 0 {
            return None;
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                len = v.trim().parse().ok()?;
            }
        }
    }
    let mut body = vec![0; len];
    r.read_exact(&mut body).ok()?;
    Some((first, body))
}

fn serve_one(stream: TcpStream, completions: &AtomicU64) -> std::io::Result<()> {
    let mut r = BufReader::new(stream.try_clone()?);
    let mut w = stream;
    let Some((first, body)) = read_request(&mut r) else { return Ok(()) };
    if first.starts_with("GET /v1/models") {
        let body = json!({"object": "list", "data": [{"id": "stub", "object": "model", "created": 0, "owned_by": "bench", "context_length": 4096, "fim": "qwen"}]}).to_string();
        write!(w, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len())?;
        return Ok(());
    }
    if !first.starts_with("POST /v1/completions") {
        write!(w, "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")?;
        return Ok(());
    }
    completions.fetch_add(1, Ordering::Relaxed);
    let req: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let id = format!("cmpl-stub-{}", completions.load(Ordering::Relaxed));
    let created = 1_764_201_600u64;
    if req["stream"].as_bool() == Some(true) {
        write!(w, "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\nConnection: close\r\n\r\n")?;
        for (i, t) in TOKENS.iter().enumerate() {
            std::thread::sleep(Duration::from_millis(if i == 0 { FIRST_TOKEN_MS } else { TOKEN_MS }));
            let last = i + 1 == TOKENS.len();
            let chunk = json!({"id": id, "object": "text_completion", "created": created, "model": "stub",
                "choices": [{"index": 0, "text": t, "finish_reason": if last { json!("stop") } else { Value::Null }}]});
            // A client that let go ends the stream here.
            write!(w, "data: {chunk}\n\n")?;
            w.flush()?;
        }
        write!(w, "data: [DONE]\n\n")?;
        return w.flush();
    }
    std::thread::sleep(Duration::from_millis(FIRST_TOKEN_MS + TOKEN_MS * (TOKENS.len() as u64 - 1)));
    let text: String = TOKENS.concat();
    let body = json!({"id": id, "object": "text_completion", "created": created, "model": "stub",
        "choices": [{"index": 0, "text": text, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 1, "completion_tokens": TOKENS.len(), "total_tokens": TOKENS.len() + 1}})
    .to_string();
    write!(
        w,
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    w.flush()
}

impl Stub {
    fn start() -> Stub {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the stub backend on loopback");
        let addr = listener.local_addr().expect("the stub's address").to_string();
        let completions = Arc::new(AtomicU64::new(0));
        let count = completions.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let count = count.clone();
                std::thread::spawn(move || {
                    let _ = stream.set_nodelay(true);
                    let _ = serve_one(stream, &count);
                });
            }
        });
        Stub { addr, completions }
    }
}

/// The backend every language server asks, and how its completions are counted.
enum Backend {
    Stub(Stub),
    /// The server process (kept alive) and its address.
    Server(#[allow(dead_code)] Proc, String),
}

impl Backend {
    fn addr(&self) -> &str {
        match self {
            Backend::Stub(s) => &s.addr,
            Backend::Server(_, a) => a,
        }
    }

    fn completions(&self) -> u64 {
        match self {
            Backend::Stub(s) => s.completions.load(Ordering::Relaxed),
            Backend::Server(_, a) => served(a),
        }
    }

    /// The model name to ask for.
    fn model(&self) -> String {
        match self {
            Backend::Stub(_) => "stub".into(),
            Backend::Server(_, a) => {
                let raw = lsp_client::http_get(a, "/v1/models");
                let body = raw.split("\r\n\r\n").nth(1).unwrap_or("");
                serde_json::from_str::<Value>(body)
                    .ok()
                    .and_then(|v| v["data"][0]["id"].as_str().map(str::to_string))
                    .unwrap_or_default()
            }
        }
    }
}

// ---------------------------------------------------------------- the typing script

/// One keystroke: the text it inserts at (line, col), and whether the typist pauses after it.
struct Key {
    text: String,
    line: u32,
    col: u32,
    pause: bool,
}

/// Every line's text typed after its indentation, a pause at its end, then an Enter that
/// brings the next line's indentation.
fn keystrokes(script: &str) -> Vec<Key> {
    let lines: Vec<&str> = script.lines().collect();
    let mut keys = vec![];
    for (i, l) in lines.iter().enumerate() {
        let indent = l.len() - l.trim_start().len();
        let mut col = indent as u32;
        let content = l.trim_start();
        for (j, c) in content.chars().enumerate() {
            let last = j + 1 == content.chars().count();
            keys.push(Key { text: c.to_string(), line: i as u32, col, pause: last });
            col += c.len_utf16() as u32;
        }
        if let Some(next) = lines.get(i + 1) {
            let next_indent = next.len() - next.trim_start().len();
            keys.push(Key { text: format!("\n{}", &next[..next_indent]), line: i as u32, col, pause: false });
        }
    }
    keys
}

/// Where the cursor is after a keystroke.
fn cursor_after(k: &Key) -> (u32, u32) {
    match k.text.strip_prefix('\n') {
        Some(indent) => (k.line + 1, indent.len() as u32),
        None => (k.line, k.col + k.text.encode_utf16().count() as u32),
    }
}

// ---------------------------------------------------------------- the peers and their clients

#[derive(Clone, Copy, PartialEq)]
enum Client {
    /// VS Code's inline completions: a request at every keystroke, the previous one cancelled.
    Inline,
    /// llm.nvim: `llm-ls/getCompletions` after 150 ms without a keystroke.
    LlmNvim,
    /// VS Code's completion menu: `textDocument/completion` at every keystroke.
    Completion,
}

struct Peer {
    name: &'static str,
    lsp: Lsp,
    client: Client,
    /// Extra fields of the completion request (llm-ls's parameters).
    params: Value,
}

const LLM_NVIM_DEBOUNCE: Duration = Duration::from_millis(150);

/// `initialize` and `initialized`; the error a server answered, if any.
fn initialize(lsp: &mut Lsp, options: Value) -> Result<(), String> {
    let id = lsp.send_request(
        "initialize",
        json!({"processId": null, "rootUri": null, "capabilities": {"general": {"positionEncodings": ["utf-16"]}, "textDocument": {"completion": {"completionItem": {"snippetSupport": false}}}}, "initializationOptions": options, "clientInfo": {"name": "replay"}}),
    );
    let r = lsp.response(id);
    if let Some(e) = r.get("error") {
        return Err(e.to_string());
    }
    lsp.notify("initialized", json!({}));
    Ok(())
}

fn ghostline(backend: &Backend, options: Value) -> Lsp {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ghostline"));
    cmd.env("GHOSTLINE_CACHE_DIR", temp_dir("replay-cache"))
        .env("GHOSTLINE_SERVER_URL", format!("http://{}", backend.addr()));
    let mut lsp = Lsp::spawn(cmd);
    initialize(&mut lsp, options).expect("ghostline initializes");
    lsp
}

fn peers_dir() -> PathBuf {
    match std::env::var_os("GHOSTLINE_PEERS_DIR") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/tools"),
    }
}

/// A peer's binary in the peers' directory, or a message saying it is skipped.
fn peer_binary(name: &str) -> Option<PathBuf> {
    let p = peers_dir().join(name);
    if p.is_file() {
        return Some(p);
    }
    println!("{name}: skipped, {} not found (set GHOSTLINE_PEERS_DIR)", p.display());
    None
}

fn peer_command(bin: &Path, home: &Path) -> Command {
    let mut cmd = Command::new(bin);
    // Their logs and caches go to a temporary home.
    cmd.env("HOME", home).env_remove("RUST_LOG");
    cmd
}

fn llm_ls(backend: &Backend, fim: bool) -> Option<Peer> {
    let bin = peer_binary("llm-ls")?;
    let mut lsp = Lsp::spawn(peer_command(&bin, &temp_dir("llm-ls-home")));
    if let Err(e) = initialize(&mut lsp, json!(null)) {
        println!("llm-ls: skipped, initialize failed: {e}");
        return None;
    }
    // llm.nvim's parameters with `backend = "openai"` (its defaults for the rest).
    let params = json!({
        "ide": "neovim",
        "model": backend.model(),
        "backend": "openai",
        "url": format!("http://{}/v1/completions", backend.addr()),
        "requestBody": {"max_tokens": 48, "temperature": 0.0},
        "tokensToClear": ["<|endoftext|>"],
        "apiToken": null,
        "fim": {"enabled": fim, "prefix": "<fim_prefix>", "middle": "<fim_middle>", "suffix": "<fim_suffix>"},
        "tokenizerConfig": null,
        "contextWindow": 1024,
        "tlsSkipVerifyInsecure": false,
        "disableUrlPathCompletion": false,
    });
    Some(Peer { name: "llm-ls", lsp, client: Client::LlmNvim, params })
}

fn lsp_ai(backend: &Backend, fim: bool) -> Option<Peer> {
    let bin = peer_binary("lsp-ai")?;
    let mut lsp = Lsp::spawn(peer_command(&bin, &temp_dir("lsp-ai-home")));
    let mut parameters = json!({"max_tokens": 48, "max_context": 1024});
    if fim {
        parameters["fim"] = json!({"start": "<fim_prefix>", "middle": "<fim_middle>", "end": "<fim_suffix>"});
    }
    let init = initialize(
        &mut lsp,
        json!({
            "memory": {"file_store": {}},
            "models": {"stub": {"type": "open_ai", "completions_endpoint": format!("http://{}/v1/completions", backend.addr()),
                "model": backend.model(), "auth_token": "none"}},
            "completion": {"model": "stub", "parameters": parameters},
        }),
    );
    if let Err(e) = init {
        println!("lsp-ai: skipped, initialize failed: {e}");
        return None;
    }
    Some(Peer { name: "lsp-ai", lsp, client: Client::Completion, params: json!({}) })
}

// ---------------------------------------------------------------- one replay

#[derive(Default)]
struct Tally {
    keys: u64,
    /// Per pause: the key-to-suggestion time of its fresh suggestion, if it got one.
    pauses: Vec<Option<f64>>,
    backend_requests: u64,
    rss_kb: u64,
    stats: Value,
}

fn non_empty(client: Client, result: &Value) -> bool {
    let text = |v: &Value| v.as_str().is_some_and(|t| !t.trim().is_empty());
    match client {
        Client::Inline => result["items"].as_array().is_some_and(|a| a.iter().any(|i| text(&i["insertText"]))),
        Client::LlmNvim => {
            result["completions"].as_array().is_some_and(|a| a.iter().any(|c| text(&c["generated_text"])))
        }
        Client::Completion => {
            let items = result.get("items").unwrap_or(result);
            items.as_array().is_some_and(|a| {
                a.iter().any(|i| text(&i["insertText"]) || text(&i["textEdit"]["newText"]) || text(&i["label"]))
            })
        }
    }
}

fn peak_rss_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn request_for(peer: &mut Peer, uri: &str, (line, col): (u32, u32)) -> i64 {
    match peer.client {
        Client::Inline => peer.lsp.send_request("textDocument/inlineCompletion", inline_params(uri, line, col, false)),
        Client::LlmNvim => {
            let mut p = peer.params.clone();
            p["textDocument"] = json!({"uri": uri});
            p["position"] = json!({"line": line, "character": col});
            peer.lsp.send_request("llm-ls/getCompletions", p)
        }
        Client::Completion => peer.lsp.send_request(
            "textDocument/completion",
            json!({"textDocument": {"uri": uri}, "position": {"line": line, "character": col}, "context": {"triggerKind": 1}}),
        ),
    }
}

fn replay(peer: &mut Peer, backend: &Backend, keys: &[Key], interval: Duration, pause: Duration) -> Tally {
    let dir: String = peer.name.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '-').collect();
    let uri = format!("file:///replay/{dir}/sizes.py");
    peer.lsp.open(&uri, "python", "");
    std::thread::sleep(Duration::from_millis(300));
    let before = backend.completions();
    let mut t = Tally::default();
    // Request id -> the keystroke it is for.
    let mut pending: HashMap<i64, usize> = HashMap::new();
    let mut version = 1;
    for (i, k) in keys.iter().enumerate() {
        version += 1;
        let p = json!({"line": k.line, "character": k.col});
        peer.lsp.notify("textDocument/didChange", json!({"textDocument": {"uri": uri, "version": version}, "contentChanges": [{"range": {"start": p, "end": p}, "text": k.text}]}));
        let key_at = Instant::now();
        t.keys += 1;
        let mut debounce = None;
        let cancel = |lsp: &mut Lsp, pending: &mut HashMap<i64, usize>| {
            for id in pending.drain().map(|(id, _)| id) {
                lsp.notify("$/cancelRequest", json!({"id": id}));
            }
        };
        match peer.client {
            Client::Inline | Client::Completion => {
                cancel(&mut peer.lsp, &mut pending);
                let id = request_for(peer, &uri, cursor_after(k));
                pending.insert(id, i);
            }
            Client::LlmNvim => debounce = Some(key_at + LLM_NVIM_DEBOUNCE),
        }
        let until = key_at + interval + if k.pause { pause } else { Duration::ZERO };
        let mut fresh = None;
        loop {
            let now = Instant::now();
            if now >= until {
                break;
            }
            let next = debounce.map_or(until, |d: Instant| d.min(until));
            match peer.lsp.rx.recv_timeout(next.saturating_duration_since(now)) {
                Ok((at, msg)) => {
                    let Some(id) = msg["id"].as_i64() else { continue };
                    if msg.get("method").is_some() {
                        // A request from the server (configuration, progress): answer it empty.
                        peer.lsp.send(json!({"jsonrpc": "2.0", "id": msg["id"], "result": null}));
                        continue;
                    }
                    let Some(for_key) = pending.remove(&id) else { continue };
                    if for_key == i && k.pause && fresh.is_none() && non_empty(peer.client, &msg["result"]) {
                        fresh = Some((at - key_at).as_secs_f64() * 1e3);
                    }
                }
                Err(_) => {
                    if debounce.is_some_and(|d| Instant::now() >= d) {
                        debounce = None;
                        cancel(&mut peer.lsp, &mut pending);
                        let id = request_for(peer, &uri, cursor_after(k));
                        pending.insert(id, i);
                    }
                }
            }
        }
        if k.pause {
            t.pauses.push(fresh);
        }
    }
    std::thread::sleep(Duration::from_millis(500));
    t.backend_requests = backend.completions() - before;
    t.rss_kb = peak_rss_kb(peer.lsp.pid());
    if peer.name.starts_with("ghostline") {
        t.stats = peer.lsp.request("ghostline/stats", json!(null));
    }
    t
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn report(name: &str, interval: Duration, t: &Tally) {
    let mut lat: Vec<f64> = t.pauses.iter().flatten().copied().collect();
    lat.sort_by(|a, b| a.total_cmp(b));
    println!(
        "| {} | {name} | {:.1} | {} of {} ({:.0}%) | {:.0} | {:.0} | {:.0} | {:.1} |",
        interval.as_millis(),
        t.backend_requests as f64 * 100.0 / t.keys.max(1) as f64,
        lat.len(),
        t.pauses.len(),
        lat.len() as f64 * 100.0 / t.pauses.len().max(1) as f64,
        percentile(&lat, 0.5),
        percentile(&lat, 0.9),
        percentile(&lat, 0.99),
        t.rss_kb as f64 / 1024.0,
    );
}

fn main() {
    let speeds: Vec<u64> = std::env::var("REPLAY_SPEEDS")
        .unwrap_or_else(|_| "60,120,250".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let pause = Duration::from_millis(env_num("REPLAY_PAUSE_MS", 600));
    let only: Option<Vec<String>> =
        std::env::var("REPLAY_ONLY").ok().map(|s| s.split(',').map(|x| x.trim().to_string()).collect());
    let wanted = |name: &str| only.as_ref().is_none_or(|o| o.iter().any(|x| x == name));
    let backend = match std::env::var("REPLAY_BACKEND").as_deref() {
        Ok("server") => {
            let (proc, addr) = start_server(server_binary(env!("CARGO_BIN_EXE_ghostline")), &["--threads", "2"]);
            Backend::Server(proc, addr)
        }
        _ => Backend::Stub(Stub::start()),
    };
    // The real server reads FIM markers in a prompt as text: the peers ask it left to right.
    let fim = matches!(backend, Backend::Stub(_));
    let keys = keystrokes(SCRIPT);
    let pauses = keys.iter().filter(|k| k.pause).count();
    println!(
        "replay: {} keystrokes, {pauses} pauses of {} ms at line ends; backend: {}",
        keys.len(),
        pause.as_millis(),
        match backend {
            Backend::Stub(_) => format!("stub (first token {FIRST_TOKEN_MS} ms, then {TOKEN_MS} ms per token)"),
            Backend::Server(..) => "ghostline-server, bundled model".into(),
        }
    );
    println!("| ms per key | language server | backend requests / 100 keys | pauses with a fresh suggestion | p50 ms | p90 ms | p99 ms | peak RSS MB |");
    println!("| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |");
    let mut notes = vec![];
    for ms in speeds {
        let interval = Duration::from_millis(ms);
        let mut peers: Vec<Peer> = vec![];
        let quiet = json!({"telemetry": false, "requestTimeoutMs": 5000});
        if wanted("adaptive") {
            let mut o = quiet.clone();
            o["trigger"] = json!("adaptive");
            peers.push(Peer {
                name: "ghostline (adaptive)",
                lsp: ghostline(&backend, o),
                client: Client::Inline,
                params: json!({}),
            });
        }
        if wanted("debounce") {
            let mut o = quiet.clone();
            o["debounceMs"] = json!(75);
            peers.push(Peer {
                name: "ghostline (debounce 75 ms)",
                lsp: ghostline(&backend, o),
                client: Client::Inline,
                params: json!({}),
            });
        }
        if wanted("llm-ls") {
            peers.extend(llm_ls(&backend, fim));
        }
        if wanted("lsp-ai") {
            peers.extend(lsp_ai(&backend, fim));
        }
        for peer in peers.iter_mut() {
            let t = replay(peer, &backend, &keys, interval, pause);
            report(peer.name, interval, &t);
            if !t.stats.is_null() {
                notes.push(format!("{} ms/key, {}: {}", ms, peer.name, t.stats["trigger"]));
            }
        }
        for mut peer in peers {
            peer.lsp.send_request("shutdown", json!(null));
            std::thread::sleep(Duration::from_millis(100));
            peer.lsp.notify("exit", json!(null));
        }
    }
    for n in notes {
        println!("  {n}");
    }
}
