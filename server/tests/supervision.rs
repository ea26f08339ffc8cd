//! The engine under injected faults (`--fault-injection`, honoured by debug builds, which the
//! tests run): a failing step fails its own requests and the engine keeps serving; an engine
//! that keeps failing turns `/ready` to 503 and the process exits non-zero.

mod common;

use std::io::Write;
use std::time::{Duration, Instant};

use common::raw::{awaiting_body, read_until_closed, status_of};
use common::{Launch, TempDir};
use serde_json::{json, Value};

fn body() -> Value {
    json!({"prompt": "def add(a, b):\n", "suffix": "\n", "max_tokens": 6, "temperature": 0.0})
}

#[test]
fn a_panicking_or_failing_step_fails_its_requests_and_the_engine_keeps_serving() {
    for (fault, says) in [("panic-at-step:1", "panicked"), ("error-at-step:1", "injected fault")] {
        let s = Launch::new("qwen2-tied-bf16").args(&["--fault-injection", fault, "--prefix-cache", "false"]).start();
        let (status, v) = s.post_raw(body().to_string());
        assert_eq!(status, 500, "{fault}: {v}");
        assert_eq!(v["error"]["type"], "server_error");
        assert!(v["error"]["message"].as_str().unwrap().contains(says), "{fault}: {v}");
        // The next requests are served, streamed or not, and /ready still says ready.
        let plain = s.complete(body());
        let events = s.stream(body());
        assert_eq!(common::streamed_text(&events).0, plain["choices"][0]["text"].as_str().unwrap());
        assert_eq!(s.get("/ready").0, 200);
        assert_eq!(s.metric("ghostline_engine_faults_total"), 1.0, "{fault}");
        // The gauge is set after each engine turn.
        let t = Instant::now();
        while s.metric("ghostline_kv_blocks_used") != 0.0 {
            assert!(t.elapsed() < Duration::from_secs(20), "{fault}: KV blocks still in use");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

#[test]
fn an_engine_that_keeps_failing_turns_ready_503_and_the_process_exits_non_zero() {
    let dir = TempDir::new("faults");
    let log = dir.path().join("stderr");
    let mut s = Launch::new("qwen2-tied-bf16")
        .args(&["--fault-injection", "panic-always", "--body-timeout-secs", "60"])
        .stderr(&log)
        .start();
    for _ in 0..2 {
        let (status, v) = s.post_raw(body().to_string());
        assert_eq!(status, 500, "{v}");
    }
    // A request whose body is still to come keeps the server draining until it is answered.
    let late = body().to_string();
    let mut held = awaiting_body(&s, late.len());
    let (status, v) = s.post_raw(body().to_string());
    assert_eq!(status, 500, "{v}");
    let t = Instant::now();
    let ready = loop {
        let (status, v) = s.get("/ready");
        if status != 200 || t.elapsed() > Duration::from_secs(30) {
            break (status, v);
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(ready.0, 503, "{}", ready.1);
    assert_eq!(ready.1["status"], "engine_failed");
    held.write_all(late.as_bytes()).unwrap();
    let (answer, _) = read_until_closed(&mut held);
    assert_eq!(status_of(&answer), 503, "{answer}");
    assert!(answer.contains("engine_failed") && answer.to_ascii_lowercase().contains("retry-after: 1"), "{answer}");
    let t = Instant::now();
    let status = loop {
        if let Some(status) = s.child.try_wait().unwrap() {
            break status;
        }
        assert!(t.elapsed() < Duration::from_secs(30), "the server did not exit");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(!status.success(), "{status}");
    let stderr = std::fs::read_to_string(&log).unwrap();
    assert!(stderr.contains("the engine failed"), "{stderr}");
}
