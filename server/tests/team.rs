//! The team server end to end: API keys, rate limits and fair admission, the response cache
//! (in process and shared through a real `redis-server`), safety filters, and the telemetry
//! store on SQLite and on a real PostgreSQL, all with the real binary on loopback.

mod common;

use std::io::{BufRead, BufReader};
use std::time::{Duration, Instant};

use common::{add_key, client, keys, keys_output, streamed_text, Launch, Postgres, Redis, Server, TempDir};
use serde_json::{json, Value};

const MODEL: &str = "qwen2-tied-bf16";

fn status_of(s: &Server, body: &Value) -> (u16, reqwest::header::HeaderMap, Value) {
    let r = s.req(reqwest::Method::POST, "/v1/completions").json(body).send().unwrap();
    let (st, h) = (r.status().as_u16(), r.headers().clone());
    (st, h, r.json().unwrap_or(Value::Null))
}

fn header<'a>(h: &'a reqwest::header::HeaderMap, name: &str) -> &'a str {
    h.get(name).map(|v| v.to_str().unwrap()).unwrap_or_else(|| panic!("no {name} header in {h:?}"))
}

#[test]
fn keys_gate_every_request_and_a_revoked_key_fails_at_once() {
    let data = TempDir::new("data");
    let db = ["--data-dir", data.arg()];
    let key = add_key(&db, "alice", &["--requests-per-minute", "1000"]);
    assert!(key.len() >= 3 + 32, "at least 128 bits: {key}");
    let listed = keys(&db, &["list"]);
    assert!(listed.contains("alice") && listed.contains("1000") && !listed.contains(&key), "{listed}");
    let again = keys_output(&db, &["add", "alice"]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("revoke it first"));

    let mut s = Launch::new(MODEL).data_dir(data.path()).start();
    let body = json!({"prompt": "x = ", "max_tokens": 2});
    let (st, h, missing) = status_of(&s, &body);
    assert_eq!(st, 401);
    assert_eq!(header(&h, "www-authenticate"), "Bearer");
    assert_eq!(missing["error"]["type"], "authentication_error");
    s.key = Some("gl-000000000000000000000000000000000000000000000000".into());
    let (st, _, wrong) = status_of(&s, &body);
    assert_eq!(st, 401);
    assert_eq!(wrong, missing, "a wrong key is answered exactly like a missing one");
    assert_eq!(s.telemetry(&json!({"events": []})).0, 401);
    assert_eq!(s.get("/metrics").0, 401);

    s.key = None;
    assert_eq!(s.get("/health").0, 200);
    assert_eq!(s.get("/ready").0, 200);
    let s = s.with_key(&key);
    s.complete(body.clone());
    assert_eq!(s.get("/v1/models").0, 200);
    assert!(s.metrics().contains("ghostline_requests_total{endpoint=\"/v1/completions\",status=\"401\"}"));

    keys(&db, &["revoke", "alice"]);
    let (st, _, _) = status_of(&s, &body);
    assert_eq!(st, 401, "revoked keys stop working without a restart");
    assert!(keys(&db, &["list"]).contains("revoked"));
    let out = keys_output(&db, &["revoke", "alice"]);
    assert!(!out.status.success());
}

#[test]
fn with_open_metrics_and_no_keys_on_loopback_nothing_needs_a_key() {
    let s = Launch::new(MODEL).args(&["--open-metrics"]).start();
    s.complete(json!({"prompt": "x", "max_tokens": 1}));
    assert!(s.metrics().contains("ghostline_requests_total"));
    assert_eq!(s.get("/v1/stats").0, 200);
}

#[test]
fn rate_limits_answer_429_with_headers_and_recover_and_one_key_cannot_hog_the_queue() {
    let data = TempDir::new("data");
    let db = ["--data-dir", data.arg()];
    // 120/min with a 1 s bucket: two requests at once, then one every 500 ms.
    let fast = add_key(&db, "fast", &["--requests-per-minute", "120"]);
    // 600 tokens/min with a 1 s bucket: ten tokens, then one every 100 ms.
    let tokens = add_key(&db, "tokens", &["--tokens-per-minute", "600"]);
    let hog = add_key(&db, "hog", &[]);
    let other = add_key(&db, "other", &[]);
    let mut s = Launch::new(MODEL)
        .data_dir(data.path())
        .args(&["--rate-limit-burst-secs", "1", "--max-inflight-per-key", "1", "--max-tokens-limit", "480"])
        .start()
        .with_key(&fast);
    let body = |i: u32| json!({"prompt": format!("v{i} = "), "max_tokens": 1});
    let (st, h, _) = status_of(&s, &body(0));
    assert_eq!(st, 200);
    assert_eq!(header(&h, "x-ratelimit-limit-requests"), "120");
    assert_eq!(header(&h, "x-ratelimit-remaining-requests"), "1");
    assert_eq!(status_of(&s, &body(1)).0, 200);
    let (st, h, v) = status_of(&s, &body(2));
    assert_eq!(st, 429, "{v}");
    assert_eq!(v["error"]["code"], "rate_limit_exceeded");
    assert_eq!(header(&h, "retry-after"), "1");
    assert_eq!(header(&h, "x-ratelimit-remaining-requests"), "0");
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(status_of(&s, &body(3)).0, 200, "the bucket refills");

    // Tokens are charged after the completion; the debt blocks the next request.
    s.key = Some(tokens);
    let v = s.complete(json!({"prompt": "def f(x):\n", "max_tokens": 40, "temperature": 0.0}));
    let generated = v["usage"]["completion_tokens"].as_u64().unwrap();
    assert!(generated > 10, "need a completion longer than the bucket: {v}");
    let t = Instant::now();
    let (st, h, _) = loop {
        // The charge lands just after the answer; allow it a moment.
        let r = status_of(&s, &body(4));
        if r.0 == 429 || t.elapsed() > Duration::from_secs(2) {
            break r;
        }
    };
    assert_eq!(st, 429);
    assert_eq!(header(&h, "x-ratelimit-remaining-tokens"), "0");
    assert!(header(&h, "retry-after").parse::<u64>().unwrap() >= 1);

    // Fair admission: "hog" holds its one slot with a long stream; it gets 429, "other" is served.
    s.key = Some(hog.clone());
    // A sampled stream of up to 480 tokens lasts tens of milliseconds on this model, unless it
    // meets its end of text early; which seeds do depends on the weight format and kernels, so
    // seeds are tried until a stream is still running when the second request comes.
    let (mut reader, mut finished) = (None, 0);
    for seed in 1..=20 {
        let long = json!({"prompt": "a", "max_tokens": 480, "temperature": 1.0, "seed": seed, "stream": true});
        let r = s.req(reqwest::Method::POST, "/v1/completions").json(&long).send().unwrap();
        let mut stream = BufReader::new(r);
        let mut line = String::new();
        stream.read_line(&mut line).unwrap();
        assert!(line.starts_with("data: "), "{line}");
        let (st, _, v) = status_of(&s, &body(5));
        if st == 429 {
            assert_eq!(v["error"]["code"], "too_many_in_flight");
            reader = Some(stream);
            break;
        }
        // The stream had ended: the slot was free and the request served (two completions).
        assert_eq!(st, 200, "{v}");
        finished += 2;
    }
    let reader = reader.expect("no stream of 20 was still running at the second request");
    s.key = Some(other);
    assert_eq!(status_of(&s, &body(6)).0, 200);
    drop(reader);
    s.key = Some(hog);
    let t = Instant::now();
    while status_of(&s, &body(7)).0 != 200 {
        assert!(t.elapsed() < Duration::from_secs(20), "the slot was not freed");
        std::thread::sleep(Duration::from_millis(50));
    }
    // The abandoned stream is recorded too, as cancelled.
    while s.get("/v1/stats?since=1h").1["by_key"]["hog"]["completions"] != 2 + finished {
        assert!(t.elapsed() < Duration::from_secs(20), "{}", s.get("/v1/stats?since=1h").1);
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn identical_greedy_requests_are_answered_from_the_response_cache() {
    let s = common::start(MODEL, &[]);
    let body = json!({"prompt": "import os\n", "suffix": "\n", "max_tokens": 8, "temperature": 0.0});
    let first = s.complete(body.clone());
    assert_eq!(first["cache"], "miss");
    let generated = s.metric("ghostline_generated_tokens_total");
    let second = s.complete(body.clone());
    assert_eq!(second["cache"], "hit");
    assert_eq!(second["choices"], first["choices"]);
    assert_eq!(second["usage"]["completion_tokens"], first["usage"]["completion_tokens"]);
    // The same SSE format, marked as a hit.
    let events = s.stream(body);
    let (text, last) = streamed_text(&events);
    assert_eq!(text, first["choices"][0]["text"].as_str().unwrap());
    assert_eq!(last["cache"], "hit");
    assert!(last["timings"]["total_ms"].is_f64());
    assert_eq!(s.metric("ghostline_generated_tokens_total"), generated, "the model ran for a hit");
    assert_eq!(s.metric("ghostline_cache_hits_total{kind=\"response\"}"), 2.0);
    // Sampled requests are never cached.
    let sampled = json!({"prompt": "import os\n", "max_tokens": 4, "temperature": 0.8, "seed": 3});
    assert_eq!(s.complete(sampled.clone())["cache"], "miss");
    assert_eq!(s.complete(sampled)["cache"], "miss");
}

/// Completes `prompt` on `a`, then asks `b`: was it a hit there?
fn shared_hit(a: &Server, b: &Server, prompt: &str) -> bool {
    let body = json!({"prompt": prompt, "max_tokens": 4, "temperature": 0.0});
    assert_eq!(a.complete(body.clone())["cache"], "miss");
    // a stores to Redis in the background, just after answering.
    std::thread::sleep(Duration::from_millis(100));
    b.complete(body)["cache"] == "hit"
}

#[test]
fn replicas_share_cache_and_limits_through_redis_and_survive_its_outage() {
    let mut redis = Redis::start();
    let data = TempDir::new("data");
    let db = ["--data-dir", data.arg()];
    let key = add_key(&db, "team", &[]);
    // 60/min with a 3 s bucket: three requests in all, across both replicas.
    let limited = add_key(&db, "limited", &["--requests-per-minute", "60"]);
    let launch = || {
        Launch::new(MODEL)
            .data_dir(data.path())
            .args(&["--redis", &redis.url(), "--rate-limit-burst-secs", "3"])
            .start()
            .with_key(&key)
    };
    let (mut a, mut b) = (launch(), launch());
    assert!(shared_hit(&a, &b, "class Point:\n"), "b answers from what a computed");
    assert_eq!(b.metric("ghostline_generated_tokens_total"), 0.0);

    (a.key, b.key) = (Some(limited.clone()), Some(limited));
    let one = |s: &Server, i: u32| status_of(s, &json!({"prompt": format!("w{i}"), "max_tokens": 1})).0;
    assert_eq!([one(&a, 0), one(&b, 1), one(&a, 2)], [200, 200, 200]);
    assert_eq!(one(&b, 3), 429, "the limit is shared, not per replica");

    // Redis goes away: requests still succeed, from the local cache and limits, and the
    // limits still hold (each replica's own bucket: three requests).
    redis.stop();
    assert_eq!([one(&a, 4), one(&a, 5), one(&a, 6), one(&a, 7)], [200, 200, 200, 429]);
    (a.key, b.key) = (Some(key.clone()), Some(key.clone()));
    let body = json!({"prompt": "for i in range(3):\n", "max_tokens": 4, "temperature": 0.0});
    assert_eq!(a.complete(body.clone())["cache"], "miss");
    assert_eq!(a.complete(body)["cache"], "hit");
    assert!(a.metric("ghostline_redis_errors_total") >= 1.0, "{}", a.metrics());

    // It comes back (empty): the replicas reconnect by themselves and share again.
    redis.restart();
    let t = Instant::now();
    let mut i = 0;
    while !shared_hit(&a, &b, &format!("def g{i}():\n")) {
        assert!(t.elapsed() < Duration::from_secs(20), "the shared cache did not resume");
        std::thread::sleep(Duration::from_millis(200));
        i += 1;
    }
}

#[test]
fn secrets_never_reach_the_model_and_filtered_completions_are_dropped() {
    let log = TempDir::new("log");
    let stderr = log.path().join("stderr");
    let s = Launch::new(MODEL)
        .args(&["--debug-log-prompts"])
        .env("GHOSTLINE_LOG", "warn,ghostline::prompts=info")
        .stderr(&stderr)
        .start();
    let pem_body = "MIIEowIBAAKCAQEAu1SU1LfVLPHCozMxH2Mo4lgOEePzNm0tRgeLezV6ffAt0gunVTLw";
    let prompt = format!("KEY = \"\"\"\n-----BEGIN RSA PRIVATE KEY-----\n{pem_body}\n-----END RSA PRIVATE KEY-----\n\"\"\"\naws = \"AKIAIOSFODNN7EXAMPLE\"\n");
    let body = json!({
        "prompt": prompt, "suffix": "\npassword = \"hunter2hunter2\"\n", "max_tokens": 4,
        "context": [{"path": "ci.yml", "text": "token: ghp_0123456789abcdefghijABCDEFGHIJ012345"}],
    });
    s.complete(body);
    let log_text = std::fs::read_to_string(&stderr).unwrap();
    assert!(log_text.contains("engine input") && log_text.contains("<REDACTED>"), "{log_text}");
    for secret in [pem_body, "AKIAIOSFODNN7EXAMPLE", "hunter2hunter2", "ghp_0123456789"] {
        assert!(!log_text.contains(secret), "{secret} reached the engine: {log_text}");
    }
    assert!(s.metric("ghostline_redactions_total") >= 4.0);

    // What the model says for a prompt, then a server that blocks exactly that.
    let ask = json!({"prompt": "if x:\n", "max_tokens": 8, "temperature": 0.0});
    let said = s.complete(ask.clone())["choices"][0]["text"].as_str().unwrap().to_string();
    let word = said.split(|c: char| !c.is_alphanumeric()).max_by_key(|w| w.len()).unwrap_or_default().to_string();
    assert!(!word.is_empty(), "need some text to block: {said:?}");
    let blocked = common::start(MODEL, &["--blocklist", &word]);
    let v = blocked.complete(ask.clone());
    assert_eq!(v["choices"][0]["finish_reason"], "content_filter", "{v}");
    assert_eq!(v["choices"][0]["text"], "");
    let events = blocked.stream(ask);
    let (text, last) = streamed_text(&events);
    assert!(!text.contains(&word), "blocked text was streamed: {text:?}");
    assert_eq!(last["choices"][0]["finish_reason"], "content_filter");
    assert_eq!(last["cache"], "miss", "a dropped completion is never cached");
    assert_eq!(blocked.metric("ghostline_filtered_completions_total"), 2.0);
}

fn event(id: &str, completion: &str, kind: &str) -> Value {
    json!({"event_id": id, "completion_id": completion, "choice_index": 0, "kind": kind, "shown_ms": 120, "client_ts": 1764201600000u64})
}

/// Acknowledged events survive SIGKILL; retries are stored once; bad batches are refused whole.
fn telemetry_round_trip(launch: &dyn Fn() -> Server, stats_cli: &[&str]) {
    let mut s = launch();
    let done = s.complete(json!({"prompt": "x = 1\n", "max_tokens": 2, "language": "python", "editor": "vscode"}));
    let id = done["id"].as_str().unwrap();
    let batch = json!({"events": [
        event("e1", id, "shown"), event("e2", id, "shown"), event("e3", id, "accepted"),
        event("e4", id, "partially_accepted"), event("e5", id, "rejected"),
    ]});
    let (st, v) = s.telemetry(&batch);
    assert_eq!((st, &v), (202, &json!({"accepted": 5})));
    s.child.kill().unwrap(); // SIGKILL right after the acknowledgement
    s.child.wait().unwrap();

    let s = launch();
    let check = |s: &Server| {
        let (st, r) = s.get("/v1/stats?since=1h");
        assert_eq!(st, 200, "{r}");
        let o = &r["overall"];
        assert_eq!(
            (o["shown"].as_u64(), o["accepted"].as_u64(), o["partially_accepted"].as_u64(), o["rejected"].as_u64()),
            (Some(2), Some(1), Some(1), Some(1)),
            "{r}"
        );
        assert_eq!(o["acceptance_rate"], 1.0);
        assert_eq!(o["partial_accept_share"], 0.5);
        assert_eq!(o["completions"], 1);
        assert_eq!(r["by_language"]["python"]["shown"], 2, "events take their completion's language: {r}");
        assert_eq!(r["by_editor"]["vscode"]["completions"], 1);
        assert!(o["total_ms"]["p50"].as_f64().unwrap() > 0.0);
    };
    check(&s);
    assert_eq!(s.telemetry(&batch).0, 202);
    check(&s); // the retried batch is stored once

    let bad = |body: Value, status: u16, param: Option<&str>| {
        let (st, v) = s.telemetry(&body);
        assert_eq!(st, status, "{v}");
        if let Some(p) = param {
            assert_eq!(v["error"]["param"], p, "{v}");
        }
    };
    bad(json!({"events": [event("e6", id, "shown"), event("e7", id, "clicked")]}), 400, Some("events[1].kind"));
    bad(json!({"events": [event("e6", id, "shown"), {"kind": "shown"}]}), 400, Some("events[1]"));
    bad(json!({"events": [event("e6", "", "shown")]}), 400, Some("events[0].completion_id"));
    bad(json!({"evnts": []}), 400, Some("events"));
    let many: Vec<Value> = (0..1001).map(|i| event(&format!("m{i}"), id, "shown")).collect();
    bad(json!({ "events": many }), 413, None);
    check(&s); // nothing of the refused batches was stored
    assert_eq!(s.get("/v1/stats?since=yesterday").0, 400);

    let out = common::bin().arg("stats").args(stats_cli).args(["--since", "1h"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("python") && table.contains("vscode") && table.contains("50.0%"), "{table}");
}

#[test]
fn sqlite_telemetry_is_durable_deduplicated_and_validated() {
    let data = TempDir::new("data");
    telemetry_round_trip(&|| Launch::new(MODEL).data_dir(data.path()).start(), &["--data-dir", data.arg()]);
    assert!(data.path().join("ghostline.db").exists());

    // A full backlog refuses the batch with Retry-After and stores none of it.
    let s = Launch::new(MODEL).args(&["--telemetry-backlog", "2"]).start();
    let r = client()
        .post(format!("{}/v1/telemetry", s.base))
        .json(&json!({"events": [event("b1", "c", "shown"), event("b2", "c", "shown"), event("b3", "c", "shown")]}))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 503);
    assert_eq!(r.headers()["retry-after"], "1");
    assert_eq!(s.get("/v1/stats").1["overall"]["shown"], 0);
}

#[test]
fn postgres_holds_keys_and_telemetry() {
    let pg = Postgres::start();
    let url = pg.url();
    let data = TempDir::new("data");
    let db = ["--database", url.as_str()];
    let key = add_key(&db, "pg-user", &[]);
    let launch = || Launch::new(MODEL).data_dir(data.path()).args(&["--database", &url]).start().with_key(&key);
    telemetry_round_trip(&launch, &db);
    assert!(!data.path().join("ghostline.db").exists(), "nothing went to SQLite");
    let mut s = launch();
    s.complete(json!({"prompt": "y", "max_tokens": 1}));

    // PostgreSQL goes away: completions go on with the keys last read; telemetry is refused
    // (not acknowledged) until it is back, then stored again.
    pg.stop();
    s.complete(json!({"prompt": "z", "max_tokens": 1}));
    let batch = json!({"events": [event("p1", "c", "shown")]});
    let (st, v) = s.telemetry(&batch);
    assert_eq!(st, 503, "{v}");
    pg.restart();
    let t = Instant::now();
    while s.telemetry(&batch).0 != 202 {
        assert!(t.elapsed() < Duration::from_secs(20), "telemetry did not recover");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(s.get("/v1/stats?since=1h").1["overall"]["shown"], 3);

    keys(&db, &["revoke", "pg-user"]);
    // After a failed read the keys last read serve for a short pause before the database is
    // asked again, so the revocation lands within it.
    let t = Instant::now();
    while status_of(&s, &json!({"prompt": "y", "max_tokens": 1})).0 != 401 {
        assert!(t.elapsed() < Duration::from_secs(20), "the revocation never took effect");
        std::thread::sleep(Duration::from_millis(50));
    }
    s.key = None;
    assert_eq!(
        status_of(&s, &json!({"prompt": "y", "max_tokens": 1})).0,
        401,
        "revoking the last key does not open the server"
    );
}
