//! The `ghostline` binary over stdio against a real ghostline-server (the bundled house model)
//! on loopback: initialize, open Python and Rust files, edit, inline completions and menu
//! completions, accept, type ahead without a new server request, cancel and supersede.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The server binary, built next to ours by `cargo build --workspace` (tests/run does it).
fn server_binary() -> PathBuf {
    let ours = PathBuf::from(env!("CARGO_BIN_EXE_ghostline"));
    let p = ours.with_file_name(format!("ghostline-server{}", std::env::consts::EXE_SUFFIX));
    assert!(p.exists(), "{} is missing: build the workspace first (`cargo build --workspace`, as tests/run does)", p.display());
    p
}

/// Starts ghostline-server on a free loopback port with the bundled model; returns its address.
fn start_server() -> (Proc, String) {
    let mut child = Command::new(server_binary())
        .args(["serve", "--addr", "127.0.0.1:0", "--threads", "2"])
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

fn http_get(addr: &str, path: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    body
}

/// Completions the server has answered with status 200.
fn served(addr: &str) -> u64 {
    let metrics = http_get(addr, "/metrics");
    metrics
        .lines()
        .filter(|l| l.starts_with("ghostline_requests_total{") && l.contains("endpoint=\"/v1/completions\"") && l.contains("status=\"200\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

struct Lsp {
    _proc: Proc,
    stdin: ChildStdin,
    rx: Receiver<Value>,
    next_id: i64,
    /// Notifications and server requests seen while waiting for responses.
    seen: Vec<Value>,
}

impl Lsp {
    fn start(server_url: &str) -> Lsp {
        let mut child = Command::new(env!("CARGO_BIN_EXE_ghostline"))
            .env("GHOSTLINE_SERVER_URL", server_url)
            .env("GHOSTLINE_LOG", "ghostline=debug")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start ghostline");
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
            if tx.send(serde_json::from_slice(&buf).unwrap()).is_err() {
                return;
            }
        });
        Lsp { _proc: Proc(child), stdin, rx, next_id: 0, seen: vec![] }
    }

    fn send(&mut self, msg: Value) {
        let body = msg.to_string();
        write!(self.stdin, "Content-Length: {}\r\n\r\n{}", body.len(), body).unwrap();
        self.stdin.flush().unwrap();
    }

    fn notify(&mut self, method: &str, params: Value) {
        self.send(json!({"jsonrpc": "2.0", "method": method, "params": params}));
    }

    fn send_request(&mut self, method: &str, params: Value) -> i64 {
        self.next_id += 1;
        let id = self.next_id;
        self.send(json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}));
        id
    }

    fn response(&mut self, id: i64) -> Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let msg = self.rx.recv_timeout(left).unwrap_or_else(|_| panic!("no response to request {id}"));
            if msg["id"] == json!(id) && msg.get("method").is_none() {
                return msg;
            }
            self.seen.push(msg);
        }
    }

    /// Waits for a notification or server request that satisfies `pred`.
    fn wait_for(&mut self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        if let Some(m) = self.seen.iter().find(|m| pred(m)) {
            return m.clone();
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let msg = self.rx.recv_timeout(left).unwrap_or_else(|_| panic!("no {what}; saw {:?}", self.seen));
            if pred(&msg) {
                return msg;
            }
            self.seen.push(msg);
        }
    }

    fn request(&mut self, method: &str, params: Value) -> Value {
        let id = self.send_request(method, params);
        let r = self.response(id);
        assert!(r.get("error").is_none(), "{method}: {r}");
        r["result"].clone()
    }

    fn initialize(&mut self, options: Value) -> Value {
        let r = self.request(
            "initialize",
            json!({"processId": null, "rootUri": null, "capabilities": {"general": {"positionEncodings": ["utf-8", "utf-16"]}}, "initializationOptions": options, "clientInfo": {"name": "test"}}),
        );
        self.notify("initialized", json!({}));
        r
    }

    fn open(&mut self, uri: &str, lang: &str, text: &str) {
        self.notify("textDocument/didOpen", json!({"textDocument": {"uri": uri, "languageId": lang, "version": 1, "text": text}}));
    }

    fn insert(&mut self, uri: &str, version: i32, line: u32, ch: u32, text: &str) {
        let p = json!({"line": line, "character": ch});
        self.notify("textDocument/didChange", json!({"textDocument": {"uri": uri, "version": version}, "contentChanges": [{"range": {"start": p, "end": p}, "text": text}]}));
    }

    fn inline(&mut self, uri: &str, line: u32, ch: u32, invoked: bool) -> Value {
        self.request("textDocument/inlineCompletion", inline_params(uri, line, ch, invoked))
    }
}

fn inline_params(uri: &str, line: u32, ch: u32, invoked: bool) -> Value {
    json!({"textDocument": {"uri": uri}, "position": {"line": line, "character": ch}, "context": {"triggerKind": if invoked { 1 } else { 2 }}})
}

const PY: &str = "import os\n\n\ndef total_size(paths):\n    sizes = []\n    for p in paths:\n        size = \n        sizes.append(size)\n    return sum(sizes)\n";
const PY_URI: &str = "file:///work/sizes.py";
const RS: &str = "use std::collections::HashMap;\n\nfn count_words(text: &str) -> HashMap<String, usize> {\n    let mut counts = HashMap::new();\n    for word in text.split_whitespace() {\n        \n    }\n    counts\n}\n";
const RS_URI: &str = "file:///work/words.rs";

#[test]
fn inline_completions_type_ahead_menu_completions_accept_and_cancel() {
    let (_server, addr) = start_server();
    let mut lsp = Lsp::start(&format!("http://{addr}"));
    let init = lsp.initialize(json!({"debounceMs": 30, "multiline": "auto"}));
    let caps = &init["capabilities"];
    assert_eq!(caps["positionEncoding"], "utf-8");
    assert_eq!(caps["textDocumentSync"]["change"], 2, "incremental sync");
    assert_eq!(caps["inlineCompletionProvider"], true);
    assert!(caps["completionProvider"]["triggerCharacters"].as_array().unwrap().len() >= 4);
    assert_eq!(caps["executeCommandProvider"]["commands"][0], "ghostline.accepted");

    lsp.open(PY_URI, "python", PY);
    lsp.open(RS_URI, "rust", RS);
    // An edit before asking: `size = ` becomes `file_size = ` (line 6).
    lsp.insert(PY_URI, 2, 6, 8, "file_");
    let before = served(&addr);

    // Invoked inline completion in the middle of a statement: one line, up to 3 candidates.
    let r = lsp.inline(PY_URI, 6, 20, true);
    let items = r["items"].as_array().unwrap_or_else(|| panic!("no items: {r}")).clone();
    assert!(!items.is_empty() && items.len() <= 3, "{r}");
    let first = items[0]["insertText"].as_str().unwrap().to_string();
    assert!(!first.contains('\n') && !first.trim().is_empty(), "single line: {first:?}");
    assert_eq!(items[0]["range"]["start"], json!({"line": 6, "character": 20}));
    assert_eq!(items[0]["command"]["command"], "ghostline.accepted");
    let id = items[0]["command"]["arguments"][0].as_str().unwrap().to_string();
    assert!(id.starts_with("cmpl-"), "{id}");
    assert_eq!(served(&addr), before + 1, "one server request");

    // Type the suggestion's first character: answered from the cache, no new server request.
    let typed: String = first.chars().take(1).collect();
    lsp.insert(PY_URI, 3, 6, 20, &typed);
    let r = lsp.inline(PY_URI, 6, 20 + typed.len() as u32, false);
    let rest = r["items"][0]["insertText"].as_str().unwrap_or_else(|| panic!("typed-ahead miss: {r}"));
    assert_eq!(format!("{typed}{rest}"), first);
    assert_eq!(served(&addr), before + 1, "typed-ahead must not ask the server");

    // Accepting runs the command; it answers null.
    let r = lsp.request("workspace/executeCommand", json!({"command": "ghostline.accepted", "arguments": [id, 0]}));
    assert!(r.is_null());

    // Menu completion (Helix) in the Rust file: a text edit from the word start to the cursor.
    lsp.insert(RS_URI, 2, 5, 8, "*counts");
    let r = lsp.request("textDocument/completion", json!({"textDocument": {"uri": RS_URI}, "position": {"line": 5, "character": 15}}));
    assert_eq!(r["isIncomplete"], true);
    let item = &r["items"][0];
    let edit = &item["textEdit"];
    assert_eq!(edit["range"]["start"], json!({"line": 5, "character": 9}), "{r}");
    assert_eq!(edit["range"]["end"], json!({"line": 5, "character": 15}));
    assert!(edit["newText"].as_str().unwrap().starts_with("counts"), "{r}");
    assert!(item["filterText"].as_str().unwrap().starts_with("counts"));
    assert!(item["documentation"]["value"].as_str().unwrap().contains("```rust"));

    // No request in the middle of a word or inside a string on automatic triggers.
    let r = lsp.inline(RS_URI, 0, 6, false);
    assert!(r.is_null(), "mid-word: {r}");

    // Superseded: a newer keystroke for the same document answers the older request with null
    // while it waits out the debounce, so it never reaches the server.
    lsp.notify("workspace/didChangeConfiguration", json!({"settings": {"ghostline": {"debounceMs": 1500}}}));
    let n0 = served(&addr);
    let old = lsp.send_request("textDocument/inlineCompletion", inline_params(PY_URI, 4, 14, false));
    lsp.insert(PY_URI, 4, 4, 14, " ");
    let old = lsp.response(old);
    assert!(old["result"].is_null(), "{old}");
    assert_eq!(served(&addr), n0, "a superseded request must not reach the server");
    // Cancelled with $/cancelRequest: the request ends with RequestCancelled.
    let id = lsp.send_request("textDocument/inlineCompletion", inline_params(PY_URI, 8, 21, true));
    lsp.notify("$/cancelRequest", json!({"id": id}));
    let r = lsp.response(id);
    assert!(r["error"]["code"] == -32800 || r["result"].is_null(), "{r}");
    assert!(served(&addr) <= n0 + 1);

    let r = lsp.request("shutdown", json!(null));
    assert!(r.is_null());
    lsp.notify("exit", json!(null));
}

#[test]
fn a_missing_server_gives_empty_answers_promptly() {
    // A port that was free a moment ago: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut lsp = Lsp::start(&format!("http://127.0.0.1:{port}"));
    lsp.initialize(json!({"requestTimeoutMs": 1500}));
    lsp.open(PY_URI, "python", PY);
    let t = Instant::now();
    let r = lsp.inline(PY_URI, 6, 15, true);
    assert!(r.is_null(), "{r}");
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    // Bad settings are reported, not fatal.
    lsp.notify("workspace/didChangeConfiguration", json!({"settings": {"ghostline": {"debounceMs": "soon"}}}));
    lsp.wait_for("a warning about debounceMs", |m| m["method"] == "window/showMessage" && m["params"]["message"].as_str().unwrap_or("").contains("debounceMs"));
    let r = lsp.inline(PY_URI, 6, 15, true);
    assert!(r.is_null());
}
