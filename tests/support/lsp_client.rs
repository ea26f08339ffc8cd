//! A minimal LSP client over a child's stdio and helpers to run ghostline-server, shared by
//! the integration tests and the typing benchmark.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A fresh, empty temporary directory for this test process.
pub fn temp_dir(what: &str) -> PathBuf {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let d = std::env::temp_dir().join(format!(
        "ghostline-test-{what}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The server binary, built next to ours by `cargo build --workspace` (tests/run does it), or
/// the one `GHOSTLINE_SERVER_BIN` names (a benchmark comparing two builds).
pub fn server_binary(ours: &str) -> PathBuf {
    if let Some(p) = std::env::var_os("GHOSTLINE_SERVER_BIN") {
        return PathBuf::from(p);
    }
    let ours = PathBuf::from(ours);
    let p = ours.with_file_name(format!("ghostline-server{}", std::env::consts::EXE_SUFFIX));
    assert!(
        p.exists(),
        "{} is missing: build the workspace first (`cargo build --workspace`, as tests/run does)",
        p.display()
    );
    p
}

/// Starts ghostline-server on a free loopback port with the bundled model; returns its address.
pub fn start_server(binary: PathBuf, extra: &[&str]) -> (Proc, String) {
    start_server_on(binary, "127.0.0.1:0", extra)
}

/// Starts ghostline-server at a given loopback address (to restart it on the same port).
pub fn start_server_at(binary: PathBuf, addr: &str, extra: &[&str]) -> Proc {
    start_server_on(binary, addr, extra).0
}

fn start_server_on(binary: PathBuf, addr: &str, extra: &[&str]) -> (Proc, String) {
    let mut child = Command::new(binary)
        .args(["serve", "--addr", addr])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start ghostline-server");
    let out = child.stdout.take().unwrap();
    let mut lines = BufReader::new(out).lines();
    let addr = loop {
        let line = lines.next().expect("server exited before listening").unwrap();
        if let Some(a) = line.strip_prefix("ghostline-server listening on http://") {
            break a.trim().to_string();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    (Proc(child), addr)
}

pub fn http_get(addr: &str, path: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    body
}

/// One figure of the server's `GET /v1/stats` (`overall.FIELD`), 0 when unreadable.
pub fn server_stat(addr: &str, field: &str) -> u64 {
    let raw = http_get(addr, "/v1/stats");
    let body = raw.split("\r\n\r\n").nth(1).unwrap_or("");
    serde_json::from_str::<Value>(body).map(|v| v["overall"][field].as_u64().unwrap_or(0)).unwrap_or(0)
}

/// Completions the server has answered with status 200.
pub fn served(addr: &str) -> u64 {
    let metrics = http_get(addr, "/metrics");
    metrics
        .lines()
        .filter(|l| {
            l.starts_with("ghostline_requests_total{")
                && l.contains("endpoint=\"/v1/completions\"")
                && l.contains("status=\"200\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

pub struct Lsp {
    _proc: Proc,
    stdin: ChildStdin,
    /// Messages from the server with their arrival time.
    pub rx: Receiver<(Instant, Value)>,
    next_id: i64,
    /// Notifications and server requests seen while waiting for responses.
    pub seen: Vec<Value>,
}

impl Lsp {
    pub fn start(binary: &str, server_url: &str) -> Lsp {
        let cache = temp_dir("cache");
        Self::start_with(binary, server_url, &cache)
    }

    /// Starts the LSP with its cache directory (telemetry spool) at `cache`.
    pub fn start_with(binary: &str, server_url: &str, cache: &std::path::Path) -> Lsp {
        let mut cmd = Command::new(binary);
        cmd.env("GHOSTLINE_CACHE_DIR", cache)
            .env("GHOSTLINE_SERVER_URL", server_url)
            .env("GHOSTLINE_LOG", "ghostline=debug");
        Self::spawn(cmd)
    }

    /// Starts any language server over stdio (the benchmarks' peers).
    pub fn spawn(mut cmd: Command) -> Lsp {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("start {:?}: {e}", cmd.get_program()));
        let stdin = child.stdin.take().unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let (tx, rx) = channel();
        std::thread::spawn(move || loop {
            let mut len = 0usize;
            loop {
                let mut line = String::new();
                if out.read_line(&mut line).unwrap_or(0) == 0 {
                    return;
                }
                let line = line.trim_end();
                if line.is_empty() {
                    break;
                }
                if let Some(v) = line.strip_prefix("Content-Length: ") {
                    len = v.parse().unwrap();
                }
            }
            let mut buf = vec![0; len];
            if out.read_exact(&mut buf).is_err() {
                return;
            }
            if tx.send((Instant::now(), serde_json::from_slice(&buf).unwrap())).is_err() {
                return;
            }
        });
        Lsp { _proc: Proc(child), stdin, rx, next_id: 0, seen: vec![] }
    }

    pub fn pid(&self) -> u32 {
        self._proc.0.id()
    }

    pub fn send(&mut self, msg: Value) {
        let body = msg.to_string();
        write!(self.stdin, "Content-Length: {}\r\n\r\n{}", body.len(), body).unwrap();
        self.stdin.flush().unwrap();
    }

    /// Bytes as they are, framing included (tests of what a broken client sends).
    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.stdin.write_all(bytes).unwrap();
        self.stdin.flush().unwrap();
    }

    pub fn notify(&mut self, method: &str, params: Value) {
        self.send(json!({"jsonrpc": "2.0", "method": method, "params": params}));
    }

    pub fn send_request(&mut self, method: &str, params: Value) -> i64 {
        self.next_id += 1;
        let id = self.next_id;
        self.send(json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}));
        id
    }

    pub fn response(&mut self, id: i64) -> Value {
        self.response_to(json!(id))
    }

    /// The response to the request of `id` (a number or a string).
    pub fn response_to(&mut self, id: Value) -> Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let (_, msg) = self.rx.recv_timeout(left).unwrap_or_else(|_| panic!("no response to request {id}"));
            if msg["id"] == id && msg.get("method").is_none() {
                return msg;
            }
            self.seen.push(msg);
        }
    }

    /// Waits for a notification or server request that satisfies `pred`.
    pub fn wait_for(&mut self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        if let Some(m) = self.seen.iter().find(|m| pred(m)) {
            return m.clone();
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let (_, msg) = self.rx.recv_timeout(left).unwrap_or_else(|_| panic!("no {what}; saw {:?}", self.seen));
            self.seen.push(msg.clone());
            if pred(&msg) {
                return msg;
            }
        }
    }

    pub fn request(&mut self, method: &str, params: Value) -> Value {
        let id = self.send_request(method, params);
        let r = self.response(id);
        assert!(r.get("error").is_none(), "{method}: {r}");
        r["result"].clone()
    }

    pub fn initialize(&mut self, options: Value) -> Value {
        let r = self.request(
            "initialize",
            json!({"processId": null, "rootUri": null, "capabilities": {"general": {"positionEncodings": ["utf-8", "utf-16"]}}, "initializationOptions": options, "clientInfo": {"name": "test"}}),
        );
        self.notify("initialized", json!({}));
        r
    }

    pub fn open(&mut self, uri: &str, lang: &str, text: &str) {
        self.notify(
            "textDocument/didOpen",
            json!({"textDocument": {"uri": uri, "languageId": lang, "version": 1, "text": text}}),
        );
    }

    pub fn insert(&mut self, uri: &str, version: i32, line: u32, ch: u32, text: &str) {
        let p = json!({"line": line, "character": ch});
        self.notify("textDocument/didChange", json!({"textDocument": {"uri": uri, "version": version}, "contentChanges": [{"range": {"start": p, "end": p}, "text": text}]}));
    }

    pub fn inline(&mut self, uri: &str, line: u32, ch: u32, invoked: bool) -> Value {
        self.request("textDocument/inlineCompletion", inline_params(uri, line, ch, invoked))
    }
}

pub fn inline_params(uri: &str, line: u32, ch: u32, invoked: bool) -> Value {
    json!({"textDocument": {"uri": uri}, "position": {"line": line, "character": ch}, "context": {"triggerKind": if invoked { 1 } else { 2 }}})
}
