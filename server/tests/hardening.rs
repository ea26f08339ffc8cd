//! Slow, hostile and failing conditions against the real binary on loopback: raw TCP clients
//! that stall in their headers or body, oversize announced bodies, more connections than the
//! server admits, draining after SIGTERM. Bounds on time are generous (many times the configured
//! timeout) so that a loaded machine does not fail them.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use common::raw::{awaiting_body, connect, read_until_closed, status_of};
use common::{client, start};
use serde_json::{json, Value};

const HALF_HEADERS: &[u8] = b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: appl";

#[test]
fn half_sent_headers_are_cut_off_at_the_header_timeout() {
    let s = start("qwen2-tied-bf16", &["--header-timeout-secs", "1"]);
    let mut c = connect(&s);
    c.write_all(HALF_HEADERS).unwrap();
    let (_, took) = read_until_closed(&mut c);
    assert!(took < Duration::from_secs(10), "closed after {took:?} with a 1 s header timeout");
    // A silent connection (nothing sent at all) likewise.
    let mut c = connect(&s);
    let (_, took) = read_until_closed(&mut c);
    assert!(took < Duration::from_secs(10), "silent connection closed after {took:?}");
    assert_eq!(s.get("/health").0, 200);
}

#[test]
fn an_announced_oversize_body_is_refused_at_once_and_a_stalled_body_times_out() {
    // The body timeout is long, so that a 413 can only come from the announced length.
    let s = start("qwen2-tied-bf16", &["--body-timeout-secs", "60", "--header-timeout-secs", "60"]);
    for path in ["/v1/completions", "/v1/telemetry"] {
        let mut c = connect(&s);
        write!(
            c,
            "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 67108864\r\n\r\n"
        )
        .unwrap();
        let (answer, _) = read_until_closed(&mut c);
        assert_eq!(status_of(&answer), 413, "{path}: {answer}");
        assert!(answer.contains("body_too_large"), "{answer}");
    }
    let s = start("qwen2-tied-bf16", &["--body-timeout-secs", "1"]);
    let mut c = connect(&s);
    c.write_all(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"prompt\": ")
        .unwrap();
    let (answer, took) = read_until_closed(&mut c);
    assert_eq!(status_of(&answer), 408, "{answer}");
    assert!(answer.contains("body_timeout"), "{answer}");
    assert!(took < Duration::from_secs(10), "answered after {took:?}");
}

#[test]
fn slow_connections_do_not_keep_others_from_being_served() {
    let s = start("qwen2-tied-bf16", &["--header-timeout-secs", "2"]);
    let slow: Vec<TcpStream> = (0..200)
        .map(|_| {
            let mut c = connect(&s);
            c.write_all(HALF_HEADERS).unwrap();
            c
        })
        .collect();
    for _ in 0..5 {
        assert_eq!(s.get("/health").0, 200);
        let v = s.complete(json!({"prompt": "def f(x):\n", "suffix": "\n", "max_tokens": 4}));
        assert!(v["choices"][0]["text"].is_string());
    }
    // All slots taken by stalled clients: a normal client is served once they are cut off.
    let s = start("qwen2-tied-bf16", &["--header-timeout-secs", "1", "--max-connections", "4"]);
    drop(slow);
    let mut slow: Vec<TcpStream> = (0..4)
        .map(|_| {
            let mut c = connect(&s);
            c.write_all(HALF_HEADERS).unwrap();
            c
        })
        .collect();
    let t = Instant::now();
    assert_eq!(s.get("/health").0, 200);
    assert!(t.elapsed() < Duration::from_secs(20), "served after {:?}", t.elapsed());
    for c in &mut slow {
        let (_, took) = read_until_closed(c);
        assert!(took < Duration::from_secs(20));
    }
}

#[test]
fn sigterm_drains_ready_says_503_new_work_is_refused_and_the_running_request_finishes() {
    let mut s = start("qwen2-tied-bf16", &["--body-timeout-secs", "60", "--shutdown-grace-secs", "60"]);
    // A request in flight: its handler is waiting for the body (hyper sends `100 Continue` when
    // the handler starts reading it).
    let body = json!({"prompt": "def add(a, b):\n", "suffix": "\n", "max_tokens": 4}).to_string();
    let mut running = awaiting_body(&s, body.len());
    // A client that connected before the signal and sends its request only after the drain
    // began (a keystroke racing the SIGTERM). The server accepts connections in the order they
    // came, so once a later one is answered, this one has been accepted.
    let mut early = connect(&s);
    assert_eq!(s.get("/health").0, 200);
    let pid = s.child.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let t = Instant::now();
    let ready = loop {
        let (status, v) = s.get("/ready");
        if status == 503 || t.elapsed() > Duration::from_secs(20) {
            break (status, v);
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(ready.0, 503, "{}", ready.1);
    assert_eq!(ready.1["status"], "draining");
    let r = client()
        .post(format!("{}/v1/completions", s.base))
        .json(&json!({"prompt": "x", "max_tokens": 2}))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 503);
    assert_eq!(r.headers()["retry-after"], "1");
    let v: Value = r.json().unwrap();
    assert_eq!(v["error"]["type"], "overloaded_error");
    // The early connection's request gets its answer (not a close with nothing), and then the
    // connection closes.
    early.write_all(b"GET /ready HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let (answer, _) = read_until_closed(&mut early);
    assert!(answer.starts_with("HTTP/1.1 "), "the connection made before SIGTERM was closed unanswered");
    assert_eq!(status_of(&answer), 503, "{answer}");
    assert!(answer.contains("draining"), "{answer}");
    // The running request completes.
    running.write_all(body.as_bytes()).unwrap();
    let (answer, _) = read_until_closed(&mut running);
    assert_eq!(status_of(&answer), 200, "{answer}");
    assert!(answer.contains("\"text_completion\""), "{answer}");
    let t = Instant::now();
    loop {
        if let Some(status) = s.child.try_wait().unwrap() {
            assert!(status.success(), "{status}");
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(30), "server did not exit after its last request");
        std::thread::sleep(Duration::from_millis(50));
    }
}
