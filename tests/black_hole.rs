//! The `ghostline` binary over stdio against servers on loopback that accept connections and
//! then never answer: a black hole (nothing at all), and one that lists its model but never
//! answers a completion. Every request costs at most about its deadline and the user is told
//! once; a newer keystroke ends a waiting request at once. Bounds are generous (many times the
//! deadline) so that a loaded machine does not fail them.

use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use serde_json::json;

#[path = "support/lsp_client.rs"]
mod lsp_client;
use lsp_client::{inline_params, Lsp};

const BIN: &str = env!("CARGO_BIN_EXE_ghostline");

const PY: &str = "import os\n\n\ndef total_size(paths):\n    sizes = []\n    for p in paths:\n        size = \n        sizes.append(size)\n    return sum(sizes)\n";
const PY_URI: &str = "file:///project/sizes.py";

/// A server that accepts every connection, reads what comes, and answers `GET /v1/models` when
/// `models` is set, never anything else. Connections are held until the test ends.
fn silent_server(models: bool) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        let mut held: Vec<TcpStream> = Vec::new();
        for conn in listener.incoming() {
            let Ok(conn) = conn else { return };
            let mut c = conn.try_clone().unwrap();
            held.push(conn);
            std::thread::spawn(move || {
                use std::io::Write;
                let mut buf = vec![0u8; 65536];
                loop {
                    let n = c.read(&mut buf).unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    if models && buf[..n].starts_with(b"GET /v1/models") {
                        let body = r#"{"object":"list","data":[{"id":"m","object":"model","context_length":2048,"fim":"qwen"}]}"#;
                        let _ = write!(
                            c,
                            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                            body.len()
                        );
                    }
                }
            });
        }
    });
    addr
}

fn told(lsp: &Lsp) -> usize {
    lsp.seen.iter().filter(|m| m["method"] == "window/showMessage").count()
}

#[test]
fn a_black_hole_server_costs_each_request_its_deadline_and_one_notice() {
    for models in [false, true] {
        let addr = silent_server(models);
        let mut lsp = Lsp::start(BIN, &format!("http://{addr}"));
        lsp.initialize(json!({"requestTimeoutMs": 400, "debounceMs": 0}));
        lsp.open(PY_URI, "python", PY);
        for i in 0..3 {
            let t = Instant::now();
            let r = lsp.inline(PY_URI, 6, 15, true);
            assert!(r.is_null(), "{r}");
            assert!(t.elapsed() < Duration::from_secs(4), "models={models} request {i}: {:?}", t.elapsed());
            // Past the backoff, so that the next request asks the server again.
            std::thread::sleep(Duration::from_millis(if i == 0 { 1100 } else { 2100 }));
        }
        lsp.wait_for("the notice", |m| m["method"] == "window/showMessage");
        assert_eq!(told(&lsp), 1, "models={models}: {:?}", lsp.seen);
        assert!(lsp.request("shutdown", json!(null)).is_null());
    }
}

#[test]
fn a_newer_keystroke_ends_a_request_waiting_on_a_silent_server() {
    let addr = silent_server(true);
    let mut lsp = Lsp::start(BIN, &format!("http://{addr}"));
    // A deadline far away: only the keystroke can end the wait early.
    lsp.initialize(json!({"requestTimeoutMs": 60000, "debounceMs": 0}));
    lsp.open(PY_URI, "python", PY);
    let t = Instant::now();
    let id = lsp.send_request("textDocument/inlineCompletion", inline_params(PY_URI, 6, 15, true));
    std::thread::sleep(Duration::from_millis(300));
    lsp.insert(PY_URI, 2, 6, 15, "l");
    let r = lsp.response(id);
    assert!(r["result"].is_null(), "{r}");
    assert!(t.elapsed() < Duration::from_secs(20), "ended after {:?}", t.elapsed());
}
