//! Whole LSP messages, fuzzed (driven by `ghostline-fuzz`) through the language server's real
//! message handling, in process over pipes: `lsp::serve_io` (the framing, tower-lsp-server's
//! codec and router, the handlers, the documents, the keystroke path on a scripted source).
//! Inputs are sessions: an input that starts with `{` is one JSON body per line, each framed
//! with one of the header spellings clients use; any other input goes to the server as it is,
//! so the framing itself is fuzzed. Seeds carry lone surrogate escapes in `didOpen` /
//! `didChange` text and URIs, invalid UTF-8, CR / LF / CRLF mixes, out-of-range and
//! non-boundary positions, huge and empty edits. After each input a valid request must still get
//! its answer (unless the input ended the session with `exit`, or left a message unfinished that
//! the request then completes), and nothing may panic.
//!
//! The fixed regression tests at the end pin what the fuzzer's first runs found: before
//! `framing`, each of these inputs ended the session.

use std::sync::Arc;

use crate::framing::{Frame, Framer};
use crate::settings::{Settings, Trigger};
use crate::source::script::{Reply, Script};
use crate::suggest::Core;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tower_lsp_server::jsonrpc::{Request, Response};

const FINAL: &str = r#"{"jsonrpc":"2.0","id":"fuzz-final","method":"ghostline/stats"}"#;

fn framed(body: &[u8], style: usize) -> Vec<u8> {
    let n = body.len();
    let head = match style % 4 {
        0 => format!("Content-Length: {n}\r\n\r\n"),
        1 => format!("Content-Length: {n}\r\nContent-Type: application/vscode-jsonrpc; charset=utf-8\r\n\r\n"),
        2 => format!("content-length: {n}\n\n"),
        _ => format!("Content-Type: application/json\r\nContent-Length:{n}\r\n\r\n"),
    };
    [head.as_bytes(), body].concat()
}

/// The bytes the client sends for an input.
fn wire(input: &[u8]) -> Vec<u8> {
    if input.first() == Some(&b'{') {
        input.split(|&b| b == b'\n').enumerate().flat_map(|(i, body)| framed(body, i)).collect()
    } else {
        input.to_vec()
    }
}

/// Whether the final request must be answered: the server's own framing, run over the same
/// bytes, hands it over whole, and no message before it was `exit`.
fn must_answer(wire: &[u8], last: &[u8]) -> bool {
    let mut f = Framer::default();
    f.push(wire);
    f.push(last);
    let bodies: Vec<Vec<u8>> = std::iter::from_fn(|| f.next_frame())
        .filter_map(|fr| match fr {
            Frame::Message(b) => Some(b),
            Frame::Dropped(_) => None,
        })
        .collect();
    let exit = |b: &Vec<u8>| {
        serde_json::from_slice::<Response>(b).is_err()
            && serde_json::from_slice::<Request>(b).is_ok_and(|r| r.method() == "exit")
    };
    bodies.last().is_some_and(|b| b == FINAL.as_bytes()) && !bodies.iter().any(exit)
}

fn settings() -> Settings {
    Settings { telemetry: false, request_timeout_ms: 500, ..Settings::default() }
}

/// One session: `bytes` then the final request to a fresh server; the messages it sent back,
/// up to the final answer or the end of its stream. Client and server run in one task, so a
/// panic in the server is raised here.
/// `first` (when not empty) goes first and is answered before the rest is sent, as clients wait
/// for the answer to `initialize` (id 1).
async fn session(core: Arc<Core>, first: Vec<u8>, bytes: Vec<u8>) -> Vec<Value> {
    let (mut client_w, server_r) = tokio::io::duplex(64 << 10);
    let (server_w, mut client_r) = tokio::io::duplex(64 << 10);
    let server = super::serve_io(core, server_r, server_w);
    // The client's stream ends after the final request: answers still in flight go out.
    let (initialized_tx, initialized) = tokio::sync::oneshot::channel::<()>();
    let write = async move {
        if !first.is_empty() {
            let _ = client_w.write_all(&first).await;
            let _ = initialized.await;
        }
        let _ = client_w.write_all(&bytes).await;
        let _ = client_w.write_all(&framed(FINAL.as_bytes(), 0)).await;
        let _ = client_w.shutdown().await;
    };
    let read = async move {
        let mut initialized_tx = Some(initialized_tx);
        let mut got = vec![];
        let mut buf: Vec<u8> = vec![];
        let mut chunk = vec![0u8; 64 << 10];
        loop {
            // The server's output is canonical: `Content-Length: N\r\n\r\n` and a body.
            while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                let n: usize = head.trim_start_matches("Content-Length: ").parse().expect("the server's header");
                if buf.len() < end + 4 + n {
                    break;
                }
                let v: Value = serde_json::from_slice(&buf[end + 4..end + 4 + n]).expect("the server's JSON");
                buf.drain(..end + 4 + n);
                if v["id"] == 1 && v.get("method").is_none() {
                    initialized_tx.take().map(|tx| tx.send(()));
                }
                got.push(v);
            }
            match client_r.read(&mut chunk).await {
                Ok(0) | Err(_) => return got,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    };
    let ((), (), got) = tokio::join!(server, write, read);
    got
}

fn runtime() -> tokio::runtime::Runtime {
    // A paused clock that jumps ahead when all is idle: debounces and deadlines cost no time,
    // and a session that would hang meets its (virtual) limit at once.
    tokio::runtime::Builder::new_current_thread().enable_all().start_paused(true).build().unwrap()
}

fn core() -> Arc<Core> {
    let script = Script::new(vec![Reply::Texts(vec!["value = 1\n"]); 4]);
    let mut s = settings();
    s.trigger = Trigger::Adaptive;
    Core::with_source(s, script)
}

/// Runs a session under a virtual hour's limit.
fn run_session(rt: &tokio::runtime::Runtime, core: Arc<Core>, first: Vec<u8>, bytes: Vec<u8>) -> Vec<Value> {
    rt.block_on(async {
        tokio::time::timeout(std::time::Duration::from_secs(3600), session(core, first, bytes))
            .await
            .expect("the session neither answered nor ended")
    })
}

fn line_session(msgs: &[Value]) -> Vec<u8> {
    msgs.iter().map(|m| m.to_string()).collect::<Vec<_>>().join("\n").into_bytes()
}

fn init(enc: &str) -> Value {
    json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"capabilities": {"general": {"positionEncodings": [enc]}}, "initializationOptions": {"telemetry": false}}})
}

fn note(method: &str, params: Value) -> Value {
    json!({"jsonrpc": "2.0", "method": method, "params": params})
}

fn change(uri: &str, v: i32, range: Option<((u64, u64), (u64, u64))>, text: &str) -> Value {
    let mut c = json!({"text": text});
    if let Some(((l0, c0), (l1, c1))) = range {
        c["range"] = json!({"start": {"line": l0, "character": c0}, "end": {"line": l1, "character": c1}});
    }
    note("textDocument/didChange", json!({"textDocument": {"uri": uri, "version": v}, "contentChanges": [c]}))
}

fn seeds() -> Vec<Vec<u8>> {
    let rs = "file:///fuzz/a.rs";
    let py = "file:///fuzz/b%20c.py";
    let inline = |id: i64, uri: &str, l: u64, c: u64, kind: u8| json!({"jsonrpc": "2.0", "id": id, "method": "textDocument/inlineCompletion", "params": {"textDocument": {"uri": uri}, "position": {"line": l, "character": c}, "context": {"triggerKind": kind}}});
    let complete = |id: i64, uri: &str, l: u64, c: u64| json!({"jsonrpc": "2.0", "id": id, "method": "textDocument/completion", "params": {"textDocument": {"uri": uri}, "position": {"line": l, "character": c}}});
    // JSON escapes written by hand: serde_json would not write a lone surrogate.
    let lone = |m: &Value, from: &str, to: &str| m.to_string().replace(from, to);
    let open_rs = note(
        "textDocument/didOpen",
        json!({"textDocument": {"uri": rs, "languageId": "rust", "version": 1, "text": "fn main() {\r\n    let s = \"LONE😀\";\r\n    \r}\n"}}),
    );
    let mut a = vec![
        init("utf-16").to_string(),
        note("initialized", json!({})).to_string(),
        lone(&open_rs, "LONE", "\\ud800x\\udc00"),
        lone(&change(rs, 2, Some(((1, 14), (1, 15))), "SURR"), "SURR", "\\ud83d"),
        change(rs, 3, Some(((1, 16), (9, 4294967295))), "\r\n\n\r").to_string(),
        inline(2, rs, 1, 15, 1).to_string(),
        change(rs, 4, Some(((0, 0), (0, 0))), &"é😀\r\n".repeat(200)).to_string(),
        change(rs, 5, Some(((3, 2), (1, 1))), "").to_string(),
        complete(3, rs, 2, 3).to_string(),
        inline(4, rs, 99999, 0, 2).to_string(),
        note("$/cancelRequest", json!({"id": 4})).to_string(),
        note("textDocument/didClose", json!({"textDocument": {"uri": rs}})).to_string(),
    ];
    let mut b = vec![
        init("utf-8").to_string(),
        note("initialized", json!({})).to_string(),
        lone(
            &note(
                "textDocument/didOpen",
                json!({"textDocument": {"uri": format!("{py}URI"), "languageId": "python", "version": 1, "text": "def f(x):\n\treturn x  # é\r\n"}}),
            ),
            "URI",
            "\\udfff%ZZ",
        ),
        change(&format!("{py}\u{fffd}%ZZ"), 2, Some(((0, 1), (0, 2))), "é").to_string(),
        change(py, 3, None, "").to_string(),
        change(py, 4, Some(((0, 0), (0, 0))), "x = 1\r\ny = 2\rz = 3\n").to_string(),
        complete(2, py, 1, 3).to_string(),
        json!({"jsonrpc": "2.0", "id": 3, "method": "workspace/executeCommand", "params": {"command": "ghostline.accepted", "arguments": [7, "x"]}}).to_string(),
        json!({"jsonrpc": "2.0", "id": 4, "method": "shutdown"}).to_string(),
        inline(5, py, 0, 0, 1).to_string(),
    ];
    let c = vec![
        inline(1, rs, 0, 0, 1).to_string(),
        init("utf-16").to_string(),
        json!({"jsonrpc": "2.0", "id": 9, "result": null}).to_string(),
        note("textDocument/didOpen", json!({"textDocument": {"uri": 5, "text": null}})).to_string(),
        note("textDocument/didShowCompletion", json!({"item": {"command": {"arguments": ["id", -1]}}})).to_string(),
        json!({"jsonrpc": "2.0", "id": "s", "method": "ghostline/stats", "params": [1, 2]}).to_string(),
        "{\"jsonrpc\":\"2.0\",\"method\":\"textDocument/didOpen\",\"params\":{\"textDocument\":{\"uri\":\"file:///x\",\"languageId\":\"go\",\"version\":1,\"text\":\"\x01\x1f\"}}}".into(),
    ];
    a.push(String::new());
    b.push(String::from("{\"jsonrpc\":\"2.0\",\"id\":77,\"method\":\"x\",\"params\":\"\\ud800"));
    let mut out: Vec<Vec<u8>> = [a, b, c].iter().map(|s| s.join("\n").into_bytes()).collect();
    // Raw framing: garbage, a bad length, CRLF and LF headers, invalid UTF-8, a short body.
    let good =
        |id: i64| framed(json!({"jsonrpc": "2.0", "id": id, "method": "ghostline/stats"}).to_string().as_bytes(), 0);
    let init_raw = framed(init("utf-16").to_string().as_bytes(), 0);
    out.push([&b"garbage\r\n\r\n"[..], &init_raw, b"Content-Length: x\r\n\r\n", &good(2)].concat());
    out.push(
        [&init_raw[..], b"Content-Length: 3\r\nA: b\r\nC: d\r\n\r\n{}x", &good(2), b"\xff\xfe\r\n", &good(3)].concat(),
    );
    out.push(
        [&init_raw[..], b"Content-Length: 20\n\n{\"jsonrpc\":\"2.0\",\xc3}", b"content-length: 2\r\n\r\n{}", &good(2)]
            .concat(),
    );
    out.push([&init_raw[..], b"Content-Length: 999999999999999999999\r\n\r\n", &good(2)].concat());
    out
}

const DICT: &[&[u8]] = &[
    b"\\ud800",
    b"\\udbff",
    b"\\udc00",
    b"\\ud83d\\ude00",
    b"\\u0000",
    b"\\\\",
    b"\\r\\n",
    b"\\r",
    b"\\n",
    b"\r\n",
    b"\n",
    b"\xed\xa0\x80",
    b"\xff",
    b"\"character\":4294967295",
    b"\"line\":4294967296",
    b"\"character\":-1",
    b"\"text\":\"\"",
    b"\"range\":{\"start\":{\"line\":0,\"character\":0},\"end\":{\"line\":0,\"character\":0}},",
    b"\"textDocument/didChange\"",
    b"\"textDocument/didOpen\"",
    b"\"textDocument/inlineCompletion\"",
    b"\"textDocument/completion\"",
    b"\"shutdown\"",
    b"\"languageId\":\"typescriptreact\"",
    b"\"uri\":\"file:///fuzz/a.rs\"",
    b"\"uri\":\"untitled:\\ud800\"",
    b"Content-Length: ",
    b"Content-Length: 0\r\n\r\n",
    b"\r\n\r\n",
    b"\"id\":",
    b"null",
    b"{}",
    b"[]",
    b"1e400",
];

#[test]
fn fuzz_lsp_messages() {
    let rt = runtime();
    let seeds = seeds();
    let seed_refs: Vec<&[u8]> = seeds.iter().map(|s| s.as_slice()).collect();
    let last = framed(FINAL.as_bytes(), 0);
    ghostline_fuzz::run("lsp_messages", &seed_refs, DICT, 200, |input| {
        let bytes = wire(input);
        let want = must_answer(&bytes, &last);
        let got = run_session(&rt, core(), vec![], bytes);
        if want {
            assert!(
                got.iter().any(|m| m["id"] == "fuzz-final" && (m.get("result").is_some() || m.get("error").is_some())),
                "the server stopped answering; it sent {got:?}"
            );
        }
    });
}

// ---------------------------------------------------------------- fixed regressions

/// A session's answers and the core it ran on: `first` (with `initialize`), then `bytes`.
fn run_fixed(first: Vec<u8>, bytes: Vec<u8>) -> (Vec<Value>, Arc<Core>) {
    let rt = runtime();
    let core = core();
    let got = run_session(&rt, core.clone(), first, bytes);
    (got, core)
}

fn answered(got: &[Value]) -> bool {
    got.iter().any(|m| m["id"] == "fuzz-final" && m.get("result").is_some_and(|r| r["requests"].is_u64()))
}

#[test]
fn lone_surrogates_in_text_and_uri_keep_the_session_and_become_replacement_characters() {
    let open = |uri: &str| {
        note(
            "textDocument/didOpen",
            json!({"textDocument": {"uri": uri, "languageId": "rust", "version": 1, "text": "let s = \"TEXT\";\n"}}),
        )
        .to_string()
        .replace("TEXT", "a\\ud800b\\ud83d\\ude00")
    };
    // A URI with a lone surrogate is U+FFFD, which no URI may hold: that open is refused as
    // invalid params (logged), and the session goes on.
    let bad_uri = open("URI").replace("URI", "file:///w/\\udc00.rs");
    // The edit replaces the pair after `b` (two UTF-16 units).
    let edit = change("file:///w/a.rs", 2, Some(((0, 12), (0, 14))), "LONE").to_string().replace("LONE", "\\udbff!");
    let first = framed(init("utf-16").to_string().as_bytes(), 0);
    let lines = [note("initialized", json!({})).to_string(), bad_uri, open("file:///w/a.rs"), edit].join("\n");
    let (got, core) = run_fixed(first, wire(lines.as_bytes()));
    assert!(answered(&got), "{got:?}");
    assert_eq!(core.document_text("file:///w/a.rs").as_deref(), Some("let s = \"a\u{fffd}b\u{fffd}!\";\n"));
}

#[test]
fn invalid_utf8_bad_headers_and_garbage_keep_the_session() {
    let init_raw = framed(init("utf-8").to_string().as_bytes(), 0);
    let open = note(
        "textDocument/didOpen",
        json!({"textDocument": {"uri": "file:///w/a.py", "languageId": "python", "version": 1, "text": "x = 'T'\n"}}),
    )
    .to_string()
    .into_bytes();
    let t = open.windows(1).position(|w| w == b"T").unwrap();
    let open = [&open[..t], b"\xff\xc3", &open[t + 1..]].concat();
    let first = [b"\x00\x01 not lsp at all\n\n".to_vec(), init_raw].concat();
    let bytes = [
        b"Content-Length: 2\r\nX-One: 1\r\nX-Two: 2\r\n\r\n{}".to_vec(),
        b"content-length: 5\n\n[1,2]".to_vec(),
        framed(b"{\"jsonrpc\": \"2.0\", \"method\": ", 0),
        framed(&open, 0),
    ]
    .concat();
    let (got, core) = run_fixed(first, bytes);
    assert!(answered(&got), "{got:?}");
    assert_eq!(core.document_text("file:///w/a.py").as_deref(), Some("x = '\u{fffd}\u{fffd}'\n"));
}

#[test]
fn an_unreadable_request_is_answered_with_an_error_and_positions_past_the_text_are_clamped() {
    let bad = br#"{"jsonrpc":"1.0","id":41,"method":"textDocument/completion"}"#.to_vec();
    let open = note(
        "textDocument/didOpen",
        json!({"textDocument": {"uri": "file:///w/a.rs", "languageId": "rust", "version": 1, "text": "fn a() {}\r\n"}}),
    );
    let msgs = [note("initialized", json!({})), open, change("file:///w/a.rs", 2, Some(((7, 4294967295), (0, 3))), "")];
    let bytes = [wire(&line_session(&msgs)), framed(&bad, 0)].concat();
    let (got, core) = run_fixed(framed(init("utf-16").to_string().as_bytes(), 0), bytes);
    assert!(answered(&got), "{got:?}");
    let err = got.iter().find(|m| m["id"] == 41).unwrap_or_else(|| panic!("no answer to 41: {got:?}"));
    assert_eq!(err["error"]["code"], -32600, "{err}");
    assert_eq!(core.document_text("file:///w/a.rs").as_deref(), Some("fn "));
}
