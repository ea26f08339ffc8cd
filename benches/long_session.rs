//! A long editing session through the language server, for its memory: 20 files of this
//! repository open at once (Rust, Python, TypeScript, JavaScript, and the Go, Java, C, C++ and
//! TSX files of `tests/fixtures/languages`, so that nine grammars load), then 10,000 edits
//! typed into them in bursts (a line retyped after an existing one or a word typed inside one,
//! with typos taken back), each burst ending in a pause, with completion requests, against the
//! real ghostline-server with the bundled model on loopback. ghostline and llm-ls run the same
//! session side by side, each driven as its usual editor drives it (ghostline as VS Code does:
//! `textDocument/inlineCompletion` at every keystroke, the previous one cancelled; llm-ls as
//! llm.nvim does: `llm-ls/getCompletions` when its 150 ms debounce fires, which is at the
//! pauses). Each language server's `VmRSS` and `VmHWM` are sampled every 500 edits, and
//! `/proc/PID/smaps_rollup` split into heap (anonymous) and file pages at the end.
//!
//! Run: `cargo build --release -p ghostline-server && cargo bench --bench long_session`
//! Env: LONG_EDITS (default 10000), LONG_KEY_MS (between keystrokes, default 10),
//! LONG_PAUSE_MS (at the end of a burst, default 300), LONG_SEED (default 1),
//! GHOSTLINE_PEERS_DIR (where `llm-ls` is; default `../shared/tools` from the repository root;
//! skipped with a message when missing), GHOSTLINE_SERVER_BIN (another server build),
//! LONG_GHOSTLINE_WRAP (a command that runs ghostline, e.g. `heaptrack -o FILE` or
//! `valgrind --tool=massif --massif-out-file=FILE`; split at spaces), LONG_ONLY (`ghostline` or
//! `llm-ls`).

#[path = "../tests/support/lsp_client.rs"]
mod lsp_client;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use lsp_client::{inline_params, server_binary, start_server, temp_dir, Lsp};
use serde_json::{json, Value};

/// The open files: (path from the repository root, LSP language id).
const FILES: [(&str, &str); 20] = [
    ("src/suggest.rs", "rust"),
    ("src/documents.rs", "rust"),
    ("src/context.rs", "rust"),
    ("src/telemetry.rs", "rust"),
    ("src/postprocess.rs", "rust"),
    ("src/pacing.rs", "rust"),
    ("server/api/src/lib.rs", "rust"),
    ("fuzz/src/lib.rs", "rust"),
    ("server/training/evaluate.py", "python"),
    ("server/training/train.py", "python"),
    ("server/training/build_corpus.py", "python"),
    ("server/training/prepare_data.py", "python"),
    ("benches/lsp_startup.py", "python"),
    ("editors/vscode/src/extension.ts", "typescript"),
    ("tests/vscode/drive.js", "javascript"),
    ("tests/fixtures/languages/HydrationBoundary.tsx", "typescriptreact"),
    ("tests/fixtures/languages/singleflight.go", "go"),
    ("tests/fixtures/languages/JPypeContext.java", "java"),
    ("tests/fixtures/languages/demovfs.c", "c"),
    ("tests/fixtures/languages/sais.hxx", "cpp"),
];

const SAMPLE_EVERY: usize = 500;
const LLM_NVIM_DEBOUNCE: Duration = Duration::from_millis(150);

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.replace('_', "").parse().ok()).unwrap_or(default)
}

/// xorshift64*: the session is the same for every language server and every run of a seed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n.max(1) as u64) as usize
    }
}

/// One edit: a `contentChanges` entry, where the cursor is after it, and whether the typist
/// pauses after it (the end of a burst).
struct Edit {
    file: usize,
    start: (u32, u32),
    end: (u32, u32),
    text: String,
    cursor: (u32, u32),
    pause: bool,
}

fn utf16(s: &str) -> u32 {
    s.encode_utf16().count() as u32
}

/// The session's edits, typed into a model of the files' lines (`\n`-split, as LSP counts
/// lines for these files).
fn session(texts: &[String], edits: usize, seed: u64) -> Vec<Edit> {
    let mut files: Vec<Vec<String>> = texts.iter().map(|t| t.split('\n').map(str::to_string).collect()).collect();
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let mut out = Vec::with_capacity(edits);
    while out.len() < edits {
        // Most bursts go to the five files being worked on, the rest anywhere.
        let f = if rng.below(10) < 7 { rng.below(5) } else { rng.below(files.len()) };
        let lines = &mut files[f];
        let row = rng.below(lines.len());
        // What is typed: another line of the same file, as code looks in it.
        let model = lines[rng.below(lines.len())].trim().to_string();
        let model: String = if model.is_empty() { "let x = 1;".into() } else { model.chars().take(60).collect() };
        let (r, mut c);
        if rng.below(10) < 7 {
            // A new line after `row`, with its indentation.
            let indent: String = lines[row].chars().take_while(|c| *c == ' ' || *c == '\t').collect();
            let at = (row as u32, utf16(&lines[row]));
            let text = format!("\n{indent}");
            lines.insert(row + 1, indent.clone());
            r = row + 1;
            c = utf16(&indent);
            out.push(Edit { file: f, start: at, end: at, text, cursor: (r as u32, c), pause: false });
        } else {
            // A word inside the line, at a character boundary.
            let n = lines[row].chars().count();
            let k = rng.below(n + 1);
            r = row;
            c = utf16(&lines[row].chars().take(k).collect::<String>());
        }
        let word: String =
            if r == row { model.split(' ').next().unwrap_or("x").chars().take(16).collect() } else { model };
        for ch in word.chars() {
            if out.len() >= edits {
                break;
            }
            let typo = rng.below(12) == 0 && ch.is_ascii_alphabetic();
            let typed = if typo { 'q' } else { ch };
            insert(&mut files[f][r], c, typed);
            let at = (r as u32, c);
            c += typed.len_utf16() as u32;
            out.push(Edit {
                file: f,
                start: at,
                end: at,
                text: typed.to_string(),
                cursor: (r as u32, c),
                pause: false,
            });
            if typo {
                // Taken back at once.
                let w = typed.len_utf16() as u32;
                remove(&mut files[f][r], c - w);
                out.push(Edit {
                    file: f,
                    start: (r as u32, c - w),
                    end: (r as u32, c),
                    text: String::new(),
                    cursor: (r as u32, c - w),
                    pause: false,
                });
                c -= w;
                insert(&mut files[f][r], c, ch);
                out.push(Edit {
                    file: f,
                    start: (r as u32, c),
                    end: (r as u32, c),
                    text: ch.to_string(),
                    cursor: (r as u32, c + ch.len_utf16() as u32),
                    pause: false,
                });
                c += ch.len_utf16() as u32;
            }
        }
        if let Some(last) = out.last_mut() {
            last.pause = true;
        }
    }
    out.truncate(edits);
    if let Some(last) = out.last_mut() {
        last.pause = true;
    }
    out
}

/// The byte index of UTF-16 column `col` in `line`.
fn byte_at(line: &str, col: u32) -> usize {
    let mut units = 0;
    for (i, ch) in line.char_indices() {
        if units >= col {
            return i;
        }
        units += ch.len_utf16() as u32;
    }
    line.len()
}

fn insert(line: &mut String, col: u32, ch: char) {
    let i = byte_at(line, col);
    line.insert(i, ch);
}

fn remove(line: &mut String, col: u32) {
    let i = byte_at(line, col);
    line.remove(i);
}

// ---------------------------------------------------------------- the language servers

#[derive(Clone, Copy, PartialEq)]
enum Driver {
    /// VS Code's inline completions: a request at every keystroke, the previous one cancelled.
    Inline,
    /// llm.nvim: `llm-ls/getCompletions` once its debounce fires (at the pauses here).
    LlmNvim,
}

fn initialize(lsp: &mut Lsp, root: &Path, options: Value) {
    let root_uri = format!("file://{}", root.display());
    let id = lsp.send_request(
        "initialize",
        json!({"processId": null, "rootUri": root_uri, "capabilities": {"general": {"positionEncodings": ["utf-16"]}}, "initializationOptions": options, "clientInfo": {"name": "long-session"}}),
    );
    let r = lsp.response(id);
    assert!(r.get("error").is_none(), "initialize: {r}");
    lsp.notify("initialized", json!({}));
}

fn ghostline(addr: &str, root: &Path) -> Lsp {
    let wrap: Vec<String> = std::env::var("LONG_GHOSTLINE_WRAP")
        .map(|w| w.split_whitespace().map(str::to_string).collect())
        .unwrap_or_default();
    let bin = env!("CARGO_BIN_EXE_ghostline");
    let mut cmd = match wrap.split_first() {
        Some((first, rest)) => {
            let mut c = Command::new(first);
            c.args(rest).arg(bin);
            c
        }
        None => Command::new(bin),
    };
    cmd.env("GHOSTLINE_CACHE_DIR", temp_dir("long-cache")).env("GHOSTLINE_SERVER_URL", format!("http://{addr}"));
    let mut lsp = Lsp::spawn(cmd);
    initialize(&mut lsp, root, json!({"requestTimeoutMs": 5000}));
    lsp
}

fn peers_dir() -> PathBuf {
    match std::env::var_os("GHOSTLINE_PEERS_DIR") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/tools"),
    }
}

/// llm-ls and llm.nvim's request parameters with `backend = "openai"`, or why it is skipped.
fn llm_ls(addr: &str, root: &Path) -> Result<(Lsp, Value), String> {
    let bin = peers_dir().join("llm-ls");
    if !bin.is_file() {
        return Err(format!("{} not found (set GHOSTLINE_PEERS_DIR)", bin.display()));
    }
    let mut cmd = Command::new(&bin);
    cmd.env("HOME", temp_dir("long-llm-ls-home")).env_remove("RUST_LOG");
    let mut lsp = Lsp::spawn(cmd);
    initialize(&mut lsp, root, json!(null));
    let raw = lsp_client::http_get(addr, "/v1/models");
    let body = raw.split("\r\n\r\n").nth(1).unwrap_or("");
    let model = serde_json::from_str::<Value>(body).ok().and_then(|v| v["data"][0]["id"].as_str().map(str::to_string));
    // The server reads FIM markers in a prompt as text: llm-ls asks it left to right, as
    // benches/replay.rs does against the real server.
    let params = json!({
        "ide": "neovim", "model": model.unwrap_or_default(), "backend": "openai",
        "url": format!("http://{addr}/v1/completions"),
        "requestBody": {"max_tokens": 48, "temperature": 0.0}, "tokensToClear": ["<|endoftext|>"],
        "apiToken": null,
        "fim": {"enabled": false, "prefix": "<fim_prefix>", "middle": "<fim_middle>", "suffix": "<fim_suffix>"},
        "tokenizerConfig": null, "contextWindow": 1024, "tlsSkipVerifyInsecure": false,
        "disableUrlPathCompletion": false,
    });
    Ok((lsp, params))
}

/// `VmRSS` and `VmHWM` in KiB.
fn rss_kb(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// `smaps_rollup`'s resident memory split: (anonymous, file-backed) KiB.
fn rollup_kb(pid: u32) -> (u64, u64) {
    let s = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    let field = |name: &str| {
        s.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    let (rss, anon) = (field("Rss:"), field("Anonymous:"));
    (anon, rss.saturating_sub(anon))
}

/// The process a wrapper (heaptrack, valgrind) runs: the newest child of `pid`, or `pid`.
fn measured_pid(pid: u32) -> u32 {
    let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    children.split_whitespace().filter_map(|c| c.parse().ok()).next_back().unwrap_or(pid)
}

struct Run {
    name: &'static str,
    /// (edits so far, VmRSS KiB, VmHWM KiB).
    samples: Vec<(usize, u64, u64)>,
    rollup: (u64, u64),
    requests: u64,
    answered: u64,
    non_empty: u64,
    secs: f64,
}

fn non_empty(driver: Driver, result: &Value) -> bool {
    let text = |v: &Value| v.as_str().is_some_and(|t| !t.trim().is_empty());
    match driver {
        Driver::Inline => result["items"].as_array().is_some_and(|a| a.iter().any(|i| text(&i["insertText"]))),
        Driver::LlmNvim => {
            result["completions"].as_array().is_some_and(|a| a.iter().any(|c| text(&c["generated_text"])))
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn drive(
    name: &'static str,
    mut lsp: Lsp,
    driver: Driver,
    params: Value,
    uris: &[String],
    texts: &[String],
    edits: &[Edit],
    (key, pause): (Duration, Duration),
) -> Run {
    let pid = measured_pid(lsp.pid());
    let t0 = Instant::now();
    for (i, ((_, lang), text)) in FILES.iter().zip(texts).enumerate() {
        lsp.open(&uris[i], lang, text);
    }
    // Messages are handled in order: once an unknown request is answered (with an error), the
    // opens are done.
    let probe = lsp.send_request("long-session/probe", json!(null));
    lsp.response(probe);
    std::thread::sleep(Duration::from_millis(200));
    let mut run = Run { name, samples: vec![], rollup: (0, 0), requests: 0, answered: 0, non_empty: 0, secs: 0.0 };
    let sample = |run: &mut Run, n: usize| {
        let (rss, hwm) = rss_kb(pid);
        run.samples.push((n, rss, hwm));
    };
    sample(&mut run, 0);
    let mut versions = vec![1i64; uris.len()];
    let mut pending: Vec<i64> = vec![];
    let drain = |lsp: &mut Lsp, run: &mut Run, pending: &mut Vec<i64>, until: Instant| loop {
        let left = until.saturating_duration_since(Instant::now());
        let msg = if left.is_zero() { lsp.rx.try_recv().ok() } else { lsp.rx.recv_timeout(left).ok() };
        let Some((_, msg)) = msg else {
            if Instant::now() >= until {
                return;
            }
            continue;
        };
        if msg.get("method").is_some() {
            if msg.get("id").is_some() {
                // A request from the server (configuration, progress): answered empty.
                lsp.send(json!({"jsonrpc": "2.0", "id": msg["id"], "result": null}));
            }
            continue;
        }
        if let Some(id) = msg["id"].as_i64() {
            if let Some(k) = pending.iter().position(|p| *p == id) {
                pending.swap_remove(k);
                run.answered += 1;
                if non_empty(driver, &msg["result"]) {
                    run.non_empty += 1;
                }
            }
        }
    };
    let request = |lsp: &mut Lsp, run: &mut Run, pending: &mut Vec<i64>, uri: &str, (l, c): (u32, u32)| {
        for id in pending.iter() {
            lsp.notify("$/cancelRequest", json!({"id": id}));
        }
        let id = match driver {
            Driver::Inline => lsp.send_request("textDocument/inlineCompletion", inline_params(uri, l, c, false)),
            Driver::LlmNvim => {
                let mut p = params.clone();
                p["textDocument"] = json!({"uri": uri});
                p["position"] = json!({"line": l, "character": c});
                lsp.send_request("llm-ls/getCompletions", p)
            }
        };
        run.requests += 1;
        pending.push(id);
    };
    for (n, e) in edits.iter().enumerate() {
        versions[e.file] += 1;
        let uri = &uris[e.file];
        lsp.notify(
            "textDocument/didChange",
            json!({"textDocument": {"uri": uri, "version": versions[e.file]}, "contentChanges": [{
                "range": {"start": {"line": e.start.0, "character": e.start.1}, "end": {"line": e.end.0, "character": e.end.1}},
                "text": e.text}]}),
        );
        let at = Instant::now();
        if driver == Driver::Inline {
            request(&mut lsp, &mut run, &mut pending, uri, e.cursor);
        }
        if e.pause {
            if driver == Driver::LlmNvim {
                drain(&mut lsp, &mut run, &mut pending, at + LLM_NVIM_DEBOUNCE);
                request(&mut lsp, &mut run, &mut pending, uri, e.cursor);
            }
            drain(&mut lsp, &mut run, &mut pending, at + pause);
        } else {
            drain(&mut lsp, &mut run, &mut pending, at + key);
        }
        if (n + 1) % SAMPLE_EVERY == 0 {
            sample(&mut run, n + 1);
        }
    }
    drain(&mut lsp, &mut run, &mut pending, Instant::now() + Duration::from_secs(2));
    run.rollup = rollup_kb(pid);
    run.secs = t0.elapsed().as_secs_f64();
    lsp.send_request("shutdown", json!(null));
    std::thread::sleep(Duration::from_millis(200));
    lsp.notify("exit", json!(null));
    // A wrapper writes its profile once the process exits.
    std::thread::sleep(Duration::from_millis(if std::env::var_os("LONG_GHOSTLINE_WRAP").is_some() {
        5000
    } else {
        100
    }));
    run
}

/// Least-squares slope of RSS over the samples after the first tenth of the session, in KiB
/// per 1,000 edits.
fn trend(samples: &[(usize, u64, u64)], total: usize) -> f64 {
    let pts: Vec<(f64, f64)> =
        samples.iter().filter(|s| s.0 >= total / 10).map(|s| (s.0 as f64 / 1000.0, s.1 as f64)).collect();
    let n = pts.len() as f64;
    if n < 2.0 {
        return f64::NAN;
    }
    let (mx, my) = (pts.iter().map(|p| p.0).sum::<f64>() / n, pts.iter().map(|p| p.1).sum::<f64>() / n);
    let cov: f64 = pts.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    let var: f64 = pts.iter().map(|p| (p.0 - mx).powi(2)).sum();
    cov / var
}

fn mib(kb: u64) -> f64 {
    kb as f64 / 1024.0
}

fn main() {
    let edits_n = env_num("LONG_EDITS", 10_000) as usize;
    let key = Duration::from_millis(env_num("LONG_KEY_MS", 10));
    let pause = Duration::from_millis(env_num("LONG_PAUSE_MS", 300));
    let seed = env_num("LONG_SEED", 1);
    let only = std::env::var("LONG_ONLY").ok();
    let wanted = |n: &str| only.as_deref().is_none_or(|o| o == n);
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let texts: Vec<String> = FILES
        .iter()
        .map(|(p, _)| {
            let t = std::fs::read_to_string(root.join(p)).unwrap_or_else(|e| panic!("{p}: {e}"));
            // One line terminator, so the model's lines are LSP's lines.
            t.replace("\r\n", "\n").replace('\r', "\n")
        })
        .collect();
    let uris: Vec<String> = FILES.iter().map(|(p, _)| format!("file://{}", root.join(p).display())).collect();
    let edits = session(&texts, edits_n, seed);
    let bytes: usize = texts.iter().map(|t| t.len()).sum();
    let pauses = edits.iter().filter(|e| e.pause).count();
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find_map(|l| l.strip_prefix("model name").map(|v| v.trim_start_matches([' ', '\t', ':']).to_string()))
        })
        .unwrap_or_default();
    println!(
        "long session: {} files ({} KiB), {} edits in {pauses} bursts, {} ms per key, {} ms pauses, seed {seed}; cpu: {cpu}, {} cores",
        FILES.len(),
        bytes / 1024,
        edits.len(),
        key.as_millis(),
        pause.as_millis(),
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
    );
    let (_server, addr) = start_server(server_binary(env!("CARGO_BIN_EXE_ghostline")), &["--threads", "2"]);
    println!("backend: ghostline-server on {addr}, bundled model, 2 threads");
    let runs: Vec<Run> = std::thread::scope(|s| {
        let mut handles = vec![];
        if wanted("ghostline") {
            let lsp = ghostline(&addr, &root);
            let (uris, texts, edits) = (&uris, &texts, &edits);
            handles.push(
                s.spawn(move || drive("ghostline", lsp, Driver::Inline, json!({}), uris, texts, edits, (key, pause))),
            );
        }
        if wanted("llm-ls") {
            match llm_ls(&addr, &root) {
                Ok((lsp, params)) => {
                    let (uris, texts, edits) = (&uris, &texts, &edits);
                    handles.push(s.spawn(move || {
                        drive("llm-ls", lsp, Driver::LlmNvim, params, uris, texts, edits, (key, pause))
                    }));
                }
                Err(e) => println!("llm-ls: skipped, {e}"),
            }
        }
        handles.into_iter().map(|h| h.join().expect("a session thread")).collect()
    });
    println!();
    println!(
        "| edits | {} |",
        runs.iter().map(|r| format!("{} VmRSS MiB | {} VmHWM MiB", r.name, r.name)).collect::<Vec<_>>().join(" | ")
    );
    println!("| ---: |{}", " ---: | ---: |".repeat(runs.len()));
    if let Some(first) = runs.first() {
        for (i, (n, _, _)) in first.samples.iter().enumerate() {
            let cols: Vec<String> = runs
                .iter()
                .map(|r| r.samples.get(i).map_or(" | ".into(), |s| format!("{:.1} | {:.1}", mib(s.1), mib(s.2))))
                .collect();
            println!("| {n} | {} |", cols.join(" | "));
        }
    }
    println!();
    println!("| language server | RSS after opening | peak (VmHWM) | RSS at the end | trend after the first tenth | heap (anonymous) / file pages at the end | requests | answered | non-empty | wall |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for r in &runs {
        let start = r.samples.first().map_or(0, |s| s.1);
        let end = r.samples.last().map_or(0, |s| s.1);
        let peak = r.samples.iter().map(|s| s.2).max().unwrap_or(0);
        println!(
            "| {} | {:.1} MiB | {:.1} MiB | {:.1} MiB | {:+.0} KiB / 1,000 edits | {:.1} / {:.1} MiB | {} | {} | {} | {:.0} s |",
            r.name,
            mib(start),
            mib(peak),
            mib(end),
            trend(&r.samples, edits.len()),
            mib(r.rollup.0),
            mib(r.rollup.1),
            r.requests,
            r.answered,
            r.non_empty,
            r.secs
        );
    }
}
