//! The short soak: `server/benches/soak.sh` with a few developers for about 25 s, the same
//! faults as the long run (the server SIGKILLed and restarted on its port and data, Redis
//! killed and restarted, PostgreSQL stopped and started), real Redis, PostgreSQL and language
//! server on loopback; then the invariants of its report.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::TempDir;
use serde_json::Value;

/// The language server binary: `GHOSTLINE_LSP_BIN`, else `ghostline` beside this server build
/// (`cargo build --workspace`, as tests/run does, puts it there).
fn lsp_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("GHOSTLINE_LSP_BIN") {
        return PathBuf::from(p);
    }
    let p = Path::new(env!("CARGO_BIN_EXE_ghostline-server"))
        .with_file_name(format!("ghostline{}", std::env::consts::EXE_SUFFIX));
    assert!(p.exists(), "{} is missing: build the workspace first (`cargo build --workspace`)", p.display());
    p
}

fn count(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a count: {v}"))
}

#[test]
fn faults_during_typing_lose_no_acknowledged_telemetry_fail_nothing_on_redis_and_free_every_kv_block() {
    let out = TempDir::new("soak");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/soak.sh");
    let run = Command::new("bash")
        .arg(&script)
        .arg(out.path())
        .env("DURATION", "24")
        .env("DEVELOPERS", "6")
        .env("THREADS", "1")
        .env("GHOSTLINE_BIN", env!("CARGO_BIN_EXE_ghostline-server"))
        .env("GHOSTLINE_LSP_BIN", lsp_binary())
        .output()
        .expect("running server/benches/soak.sh");
    let log = |name: &str| std::fs::read_to_string(out.path().join(name)).unwrap_or_default();
    assert!(
        run.status.success(),
        "soak.sh failed: {}\n{}\nbench: {}\nserver: {}\nredis: {}\npg_ctl: {}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr),
        log("bench.err"),
        log("server.log"),
        log("redis.log"),
        log("pg_ctl.log")
    );
    let text = log("report.json");
    let r: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("report.json: {e}: {text}"));
    let table = String::from_utf8_lossy(&run.stdout);

    // The server came back after SIGKILL, on the same port and data.
    assert_eq!(r["probes"]["completion_after_restart"], 200, "{table}");
    assert!(count(&r["bench"]["completed"]) > 0, "{table}");
    // Redis is a cache: with it down completions are served, none failed.
    assert_eq!(r["probes"]["completion_while_redis_down"], 200, "{table}");
    assert_eq!(count(&r["completions_failed_while_redis_down"]), 0, "{table}");
    assert!(
        r["idle"]["metrics"]["ghostline_redis_errors_total"].as_f64().unwrap_or(0.0) >= 1.0,
        "Redis was not missed: {table}"
    );
    // With PostgreSQL down completions go on and telemetry is refused, not acknowledged.
    assert_eq!(r["probes"]["completion_while_postgres_down"], 200, "{table}");
    assert_eq!(r["probes"]["telemetry_while_postgres_down"], 503, "{table}");
    // Every acknowledged telemetry event is in PostgreSQL.
    let t = &r["telemetry"];
    assert!(count(&t["acknowledged_events"]) > 0, "{table}");
    assert_eq!(count(&t["database"]["acknowledged_missing"]), 0, "{}", t["database"]);
    assert_eq!(count(&t["never_acknowledged"]), 0, "{table}");
    // Once idle no request holds a KV block.
    let idle = &r["idle"]["metrics"];
    assert_eq!(idle["ghostline_kv_blocks_held"], 0.0, "{table}");
    assert_eq!(idle["ghostline_active_sequences"], 0.0, "{table}");
    // The language server typed through it all and answered.
    let lsp = &r["lsp"];
    assert!(lsp.get("error").is_none(), "{lsp}");
    assert_eq!(lsp["exited_early"], false, "{lsp}");
    assert!(count(&lsp["requests"]) > 0 && count(&lsp["unanswered_at_end"]) == 0, "{lsp}");
    assert!(r["rss_kb"]["server"]["max"].as_u64().is_some() && r["rss_kb"]["lsp"]["max"].as_u64().is_some(), "{table}");
}
