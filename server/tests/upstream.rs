//! The server as a gateway to an inference upstream (`--upstream`), against real engines on
//! loopback: llama.cpp's `llama-server` (found through `GHOSTLINE_LLAMA_SERVER`, which tests/run
//! sets after building it once into a cache) serving SmolLM2-135M-Instruct Q4_1
//! (`GHOSTLINE_SMOLLM2_GGUF`), through both of its APIs; and an upstream that is down or never
//! answers. Without llama-server or the GGUF file the llama-server test says so and passes.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{client, free_port, Launch, Server, TempDir};

/// Polls `done` every 100 ms until it holds; panics with `what` after `secs` (a generous bound:
/// how fast it happens is not what is tested).
fn wait_until(secs: u64, what: &str, mut done: impl FnMut() -> bool) {
    let t = Instant::now();
    while !done() {
        assert!(t.elapsed() < Duration::from_secs(secs), "{what} (waited {secs}s)");
        std::thread::sleep(Duration::from_millis(100));
    }
}
use serde_json::{json, Value};

fn env_file(var: &str) -> Option<PathBuf> {
    std::env::var_os(var).map(PathBuf::from).filter(|p| p.is_file())
}

/// The llama-server binary and the SmolLM2 GGUF file the tests on a real upstream need, or
/// `None` after saying how to get them (the test is then skipped).
fn llama_server_and_gguf() -> Option<(PathBuf, PathBuf)> {
    let found = env_file("GHOSTLINE_LLAMA_SERVER").zip(env_file("GHOSTLINE_SMOLLM2_GGUF"));
    if found.is_none() {
        eprintln!(
            "skipped: set GHOSTLINE_LLAMA_SERVER to a llama-server binary and GHOSTLINE_SMOLLM2_GGUF to \
             SmolLM2-135M-Instruct.Q4_1.gguf (tests/run does both)"
        );
    }
    found
}

/// A real llama-server on a loopback port, one slot, with its /slots and /metrics endpoints.
struct LlamaServer {
    child: Child,
    base: String,
    _log_dir: TempDir,
}

impl Drop for LlamaServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl LlamaServer {
    fn start(bin: &PathBuf, gguf: &PathBuf) -> LlamaServer {
        LlamaServer::start_on(bin, gguf, free_port())
    }

    /// Started on a given port (again, after it was stopped).
    fn start_on(bin: &PathBuf, gguf: &PathBuf, port: u16) -> LlamaServer {
        let log_dir = TempDir::new("llama-server");
        let log = log_dir.path().join("log");
        let child = Command::new(bin)
            .args(["-m"])
            .arg(gguf)
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            // One thread: on a busy machine llama.cpp's spinning threads lose far more than they gain.
            .args(["-c", "2048", "-np", "1", "-t", "1", "--slots", "--metrics"])
            // /slots then shows each slot's last prompt, as the text of the tokens it computed on.
            .env("LLAMA_SERVER_SLOTS_DEBUG", "1")
            .stdout(Stdio::from(std::fs::File::create(&log).unwrap()))
            .stderr(Stdio::from(std::fs::File::create(log.with_extension("err")).unwrap()))
            .spawn()
            .expect("starting llama-server");
        let s = LlamaServer { child, base: format!("http://127.0.0.1:{port}"), _log_dir: log_dir };
        let t = Instant::now();
        loop {
            let up = client().get(format!("{}/health", s.base)).send().map(|r| r.status().as_u16());
            if up.is_ok_and(|s| s == 200) {
                return s;
            }
            let err = std::fs::read_to_string(log.with_extension("err")).unwrap_or_default();
            assert!(t.elapsed() < Duration::from_secs(120), "llama-server did not come up: {err}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn post(&self, path: &str, body: Value) -> Value {
        let r = client().post(format!("{}{path}", self.base)).json(&body).send().unwrap();
        assert_eq!(r.status().as_u16(), 200);
        r.json().unwrap()
    }

    /// The ids llama-server makes of `text` in a prompt (special-token text parsed, as in prompts).
    fn tokenize(&self, text: &str) -> Vec<u64> {
        let v = self.post("/tokenize", json!({"content": text, "parse_special": true}));
        v["tokens"].as_array().unwrap().iter().map(|t| t.as_u64().unwrap()).collect()
    }

    /// llama_decode() calls so far: it grows by one for every token the engine generates.
    fn decodes(&self) -> f64 {
        let text = client().get(format!("{}/metrics", self.base)).send().unwrap().text().unwrap();
        text.lines()
            .find(|l| l.starts_with("llamacpp:n_decode_total"))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or_else(|| panic!("no llamacpp:n_decode_total in {text}"))
    }

    /// Waits until the one slot is idle.
    fn wait_idle(&self) {
        let t = Instant::now();
        loop {
            let slots: Value = client().get(format!("{}/slots", self.base)).send().unwrap().json().unwrap();
            if slots[0]["is_processing"] == json!(false) {
                return;
            }
            assert!(t.elapsed() < Duration::from_secs(120), "the slot never went idle: {slots}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn gateway(model: &str, upstream: &str, kind: &str, extra: &[&str]) -> Server {
    Launch::new(model).args(&["--upstream", upstream, "--upstream-kind", kind]).args(extra).start()
}

/// Streams a completion and reads it until the first text arrives; then the response is dropped,
/// which closes the connection.
fn first_text_then_hang_up(g: &Server, body: Value) -> String {
    let mut r = g.req(reqwest::Method::POST, "/v1/completions").json(&body).send().unwrap();
    if r.status().as_u16() != 200 {
        panic!("{}: {}", r.status(), r.text().unwrap_or_default());
    }
    let mut reader = BufReader::new(&mut r);
    let mut line = String::new();
    loop {
        line.clear();
        assert!(reader.read_line(&mut line).unwrap() > 0, "the stream ended before any text");
        let Some(data) = line.trim().strip_prefix("data: ") else { continue };
        let v: Value = serde_json::from_str(data).unwrap();
        let text = v["choices"][0]["text"].as_str().unwrap_or_default();
        if !text.is_empty() {
            return text.to_string();
        }
    }
}

const COUNTING: &str = "1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,";

#[test]
fn a_gateway_to_llama_server_answers_as_it_does_and_its_cancellations_reach_it() {
    let Some((bin, gguf)) = llama_server_and_gguf() else { return };
    let ls = LlamaServer::start(&bin, &gguf);
    let model = gguf.to_str().unwrap();
    let native = gateway(model, &ls.base, "llama-cpp", &["--max-tokens-limit", "1500"]);
    let openai = gateway(model, &ls.base, "openai", &[]);

    // The upstream's context bounds the model's (8192 in the file, 2048 served).
    let (_, models) = native.get("/v1/models");
    assert_eq!(models["data"][0]["context_length"], json!(2048), "{models}");

    // The same greedy request, directly and through the gateway's two kinds, streamed or not.
    let prompt = "def fibonacci(n):\n";
    let direct = ls.post("/completion", json!({"prompt": prompt, "n_predict": 24, "temperature": 0.0}));
    let want = direct["content"].as_str().unwrap();
    assert_eq!(direct["tokens_predicted"], json!(24), "{direct}");
    let body = json!({"prompt": prompt, "max_tokens": 24, "temperature": 0});
    for g in [&native, &openai] {
        let v = g.complete(body.clone());
        assert_eq!(v["choices"][0]["text"].as_str(), Some(want), "{v}");
        assert_eq!(v["choices"][0]["finish_reason"], json!("length"), "{v}");
        assert_eq!(v["usage"]["completion_tokens"], json!(24), "{v}");
        let (text, last) = common::streamed_text(&g.stream(body.clone()));
        assert_eq!((text.as_str(), &last["choices"][0]["finish_reason"]), (want, &json!("length")));
    }
    // A stop string ends the completion in the gateway, as for local inference.
    let stop_at = want.split_whitespace().nth(1).unwrap().to_string();
    let v = native.complete(json!({"prompt": prompt, "max_tokens": 24, "temperature": 0, "stop": [stop_at]}));
    assert_eq!(v["choices"][0]["finish_reason"], json!("stop"), "{v}");
    assert!(want.starts_with(v["choices"][0]["text"].as_str().unwrap()), "{v} / {want:?}");

    // A healed prompt (the cursor inside a word): the first token comes from a request with the
    // allowed tokens favoured; both kinds choose the same.
    let healed = json!({"prompt": "import o", "max_tokens": 8, "temperature": 0});
    let a = native.complete(healed.clone());
    let b = openai.complete(healed);
    assert_eq!(a["choices"][0]["text"], b["choices"][0]["text"], "{a} / {b}");

    // The counting prompt runs to its limit without cancellation (no end-of-text within 100).
    let control = ls.post("/completion", json!({"prompt": COUNTING, "n_predict": 100, "temperature": 0.0}));
    assert_eq!(control["stop_type"], json!("limit"), "{control}");

    // A client that hangs up after the first text: the upstream stops generating at once.
    let before = ls.decodes();
    let long = json!({"prompt": COUNTING, "max_tokens": 1500, "temperature": 0, "stream": true});
    first_text_then_hang_up(&native, long.clone());
    ls.wait_idle();
    let after = ls.decodes();
    assert!(
        after - before < 100.0,
        "{} decodes after the client hung up: the upstream kept generating",
        after - before
    );
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(ls.decodes(), after, "the slot is idle and nothing decodes");

    // Superseded (same user and file): the first stream ends cancelled and the upstream's one
    // slot is free for the newer request at once.
    let before = ls.decodes();
    let keyed = |max: u32, stream: bool| json!({"prompt": COUNTING, "max_tokens": max, "temperature": 0, "stream": stream, "user": "u", "path": "a.py"});
    let g = &native;
    std::thread::scope(|s| {
        let first = s.spawn(|| g.stream(keyed(1500, true)));
        // Wait for the first stream to be generating upstream.
        let t = Instant::now();
        while ls.decodes() - before < 5.0 {
            assert!(t.elapsed() < Duration::from_secs(60), "the first request never started");
            std::thread::sleep(Duration::from_millis(20));
        }
        let newer = g.complete(keyed(4, false));
        assert_eq!(newer["choices"][0]["finish_reason"], json!("length"), "{newer}");
        let (_, last) = common::streamed_text(&first.join().unwrap());
        assert_eq!(last["choices"][0]["finish_reason"], json!("cancelled"), "{last}");
    });
    ls.wait_idle();
    assert!(ls.decodes() - before < 100.0, "the superseded request kept generating upstream");
    assert!(native.metric("ghostline_cancelled_total") >= 1.0);
}

#[test]
fn ready_follows_the_upstream_down_and_up_again_while_health_stays_200() {
    let Some((bin, gguf)) = llama_server_and_gguf() else { return };
    let mut ls = LlamaServer::start(&bin, &gguf);
    let port: u16 = ls.base.rsplit(':').next().unwrap().parse().unwrap();
    let model = gguf.to_str().unwrap();
    for kind in ["llama-cpp", "openai"] {
        let g = gateway(model, &ls.base, kind, &["--open-metrics"]);
        wait_until(60, &format!("{kind}: /ready never said 200 with the upstream up"), || g.get("/ready").0 == 200);
        assert_eq!(g.metric("ghostline_upstream_up"), 1.0, "{kind}");
        // The upstream goes away: not ready (with why), still alive.
        drop(ls);
        wait_until(60, &format!("{kind}: /ready still 200 with the upstream gone"), || g.get("/ready").0 == 503);
        let (_, ready) = g.get("/ready");
        assert_eq!(ready["status"], "upstream_unavailable", "{ready}");
        assert!(ready["error"].as_str().is_some_and(|e| e.contains(&port.to_string())), "{ready}");
        assert_eq!(g.get("/health").0, 200, "liveness does not depend on the upstream");
        assert_eq!(g.metric("ghostline_upstream_up"), 0.0, "{kind}");
        // Back on the same port: ready again.
        ls = LlamaServer::start_on(&bin, &gguf, port);
        wait_until(60, &format!("{kind}: /ready not 200 again after the upstream came back"), || {
            g.get("/ready").0 == 200
        });
        assert_eq!(g.metric("ghostline_upstream_up"), 1.0, "{kind}");
        let v = g.complete(json!({"prompt": "def f():\n", "max_tokens": 2, "temperature": 0}));
        assert_eq!(v["choices"][0]["finish_reason"], json!("length"), "{kind}: {v}");
    }
}

#[test]
fn text_prompts_complete_as_token_prompts_do_and_user_code_cannot_spell_a_control_token() {
    let Some((bin, gguf)) = llama_server_and_gguf() else { return };
    let ls = LlamaServer::start(&bin, &gguf);
    let model = gguf.to_str().unwrap();
    let tokens = gateway(model, &ls.base, "openai", &["--upstream-prompt", "tokens"]);
    let text = gateway(model, &ls.base, "openai", &["--upstream-prompt", "text"]);
    // Ordinary prompts: the same greedy completion either way.
    for prompt in ["def fibonacci(n):\n", "import os\nimport sys\n\ndef main(", "class Point:\n    def __init__(self"] {
        let body = json!({"prompt": prompt, "max_tokens": 16, "temperature": 0});
        let (a, b) = (tokens.complete(body.clone()), text.complete(body));
        assert_eq!(a["choices"][0]["text"], b["choices"][0]["text"], "{prompt:?}: {a} / {b}");
        assert!(!a["choices"][0]["text"].as_str().unwrap().is_empty(), "{a}");
    }
    // Code that spells a control token (SmolLM2's <|im_start|>, one id when parsed as special).
    let control = ls.tokenize("<|im_start|>");
    assert_eq!(control.len(), 1, "{control:?}");
    let code = "marker = '<|im_start|>'\nprint(marker)\n";
    assert!(ls.tokenize(code).contains(&control[0]), "sent as plain text, the code would hold the control token");
    text.complete(json!({"prompt": code, "max_tokens": 4, "temperature": 0}));
    ls.wait_idle();
    let slots: Value = client().get(format!("{}/slots", ls.base)).send().unwrap().json().unwrap();
    let computed = slots[0]["prompt"].as_str().unwrap_or_else(|| panic!("no prompt in /slots: {slots}"));
    assert!(computed.contains("marker = '<\u{200B}|im_start|>'"), "the upstream computed on {computed:?}");
    assert!(
        !ls.tokenize(computed).contains(&control[0]),
        "the upstream's prompt holds the control token: {computed:?}"
    );
}

/// A directory with the tokenizer files of the bundled model and nothing else: no config.json,
/// no weights.
fn tokenizer_only() -> TempDir {
    let d = TempDir::new("tokenizer-only");
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/ghostline-tiny");
    for f in ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json"] {
        std::fs::copy(src.join(f), d.path().join(f)).unwrap();
    }
    d
}

fn assert_unavailable(g: &Server, stream: bool, says: &str) {
    let r = g
        .req(reqwest::Method::POST, "/v1/completions")
        .json(&json!({"prompt": "def f(", "max_tokens": 4, "stream": stream}))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 503);
    assert_eq!(r.headers().get("retry-after").and_then(|v| v.to_str().ok()), Some("1"));
    let v: Value = r.json().unwrap();
    assert_eq!(v["error"]["type"], json!("overloaded_error"), "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains(says), "{v}");
}

#[test]
fn an_upstream_that_is_down_or_silent_gets_a_503_with_retry_after_never_a_hang() {
    let tok = tokenizer_only();
    // Down: nothing listens on the port. The gateway starts anyway, on the tokenizer alone.
    let down = format!("http://127.0.0.1:{}", free_port());
    let g = gateway(tok.arg(), &down, "llama-cpp", &[]);
    let (_, models) = g.get("/v1/models");
    assert_eq!(models["data"][0]["context_length"], json!(512), "from tokenizer_config.json: {models}");
    for stream in [false, true] {
        assert_unavailable(&g, stream, "cannot be reached");
    }
    // Not ready, and says why; alive all the same.
    let (status, ready) = g.get("/ready");
    assert_eq!((status, &ready["status"]), (503, &json!("upstream_unavailable")), "{ready}");
    assert_eq!(g.get("/health").0, 200);
    drop(g);

    // Silent: the upstream accepts the connection and never answers.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for c in listener.incoming().flatten() {
            let mut c2 = c.try_clone().unwrap();
            std::thread::spawn(move || {
                let mut sink = [0u8; 4096];
                while matches!(c2.read(&mut sink), Ok(n) if n > 0) {}
            });
            held.push(c);
        }
    });
    let g = gateway(tok.arg(), &url, "openai", &["--upstream-timeout-ms", "300"]);
    let t = Instant::now();
    assert_unavailable(&g, true, "did not answer within 0.3s");
    assert!(t.elapsed() < Duration::from_secs(30), "the deadline bounds the wait");
    assert!(g.metric("ghostline_upstream_requests_total") >= 1.0);
}
