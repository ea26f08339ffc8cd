//! The team dashboard end to end: a real server whose store is filled through the API
//! (completions and telemetry, never written to the database by hand), `/v1/dashboard` read back
//! on SQLite and on a real PostgreSQL, its admin-key gate, and the page itself in headless
//! Chromium. The browser test needs playwright-core and Chromium, which `tests/editor-tools`
//! installs, so it is ignored in a plain `cargo test`; tests/run runs it with
//! GHOSTLINE_EDITOR_TOOLS set and `-- --ignored`. By hand:
//! `eval "$(tests/editor-tools)"; export GHOSTLINE_EDITOR_TOOLS;
//! cargo test -p ghostline-server --test dashboard -- --ignored`.
//! The browser run leaves a screenshot in `target/tmp/dashboard.png`.

mod common;

use std::time::{Duration, Instant};

use common::{add_key, client, Launch, Postgres, Server, TempDir};
use serde_json::{json, Value};

const MODEL: &str = "qwen2-tied-bf16";

fn event(id: &str, completion: &str, kind: &str, chars: Option<u32>) -> Value {
    let mut e = json!({"event_id": id, "completion_id": completion, "choice_index": 0, "kind": kind, "shown_ms": 90});
    if let Some(c) = chars {
        e["accepted_chars"] = json!(c);
    }
    e
}

/// Three python completions from vscode and one rust completion from nvim, each shown once;
/// two python ones accepted (10 and 4 characters, one partly), one rejected, the rust one accepted
/// (7 characters). Returns the completion ids.
fn seed(s: &Server) -> Vec<String> {
    let mut ids = Vec::new();
    for (i, (lang, editor)) in
        [("python", "vscode"), ("python", "vscode"), ("python", "vscode"), ("rust", "nvim")].into_iter().enumerate()
    {
        let done = s.complete(json!({
            "prompt": format!("def f{i}(x):\n    return "), "suffix": "\n", "max_tokens": 3,
            "language": lang, "editor": editor,
        }));
        ids.push(done["id"].as_str().unwrap().to_string());
    }
    let events = json!({"events": [
        event("s0", &ids[0], "shown", None), event("s1", &ids[1], "shown", None),
        event("s2", &ids[2], "shown", None), event("s3", &ids[3], "shown", None),
        event("a0", &ids[0], "accepted", Some(10)), event("p1", &ids[1], "partially_accepted", Some(4)),
        event("r2", &ids[2], "rejected", None), event("a3", &ids[3], "accepted", Some(7)),
    ]});
    assert_eq!(s.telemetry(&events).0, 202);
    ids
}

/// `/v1/dashboard` once the completion records (written after the answer) are all stored.
fn settled(s: &Server, query: &str, completions: u64) -> Value {
    let t = Instant::now();
    loop {
        let (st, v) = s.get(&format!("/v1/dashboard{query}"));
        assert_eq!(st, 200, "{v}");
        if v["totals"]["completions"].as_u64() == Some(completions) {
            return v;
        }
        assert!(t.elapsed() < Duration::from_secs(30), "the completion records never arrived: {v}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn group<'a>(v: &'a Value, dim: &str, name: &str) -> &'a Value {
    v[dim].as_array().unwrap().iter().find(|g| g["name"] == name).unwrap_or_else(|| panic!("{dim} {name}: {v}"))
}

fn check_figures(v: &Value) {
    let t = &v["totals"];
    assert_eq!(
        (t["shown"].as_u64(), t["accepted"].as_u64(), t["rejected"].as_u64()),
        (Some(4), Some(2), Some(1)),
        "{v}"
    );
    assert_eq!(t["partially_accepted"], 1);
    assert_eq!(t["accepted_chars"], 21);
    assert_eq!(t["acceptance_rate"], 0.75);
    let py = group(v, "by_language", "python");
    assert_eq!((py["shown"].as_u64(), py["acceptance_rate"].as_f64()), (Some(3), Some(0.6667)), "{v}");
    assert_eq!(group(v, "by_editor", "nvim")["accepted_chars"], 7);
    assert!(v["ttft_ms"]["p50"].as_f64().unwrap() > 0.0, "{v}");
    let series = v["series"].as_array().unwrap();
    assert!(!series.is_empty() && series.len() <= 25, "hour buckets over 24 h: {}", series.len());
    let shown: u64 = series.iter().map(|b| b["shown"].as_u64().unwrap()).sum();
    assert_eq!(shown, 4, "every event is in one bucket");
}

#[test]
fn the_dashboard_reads_what_the_api_stored_and_needs_an_admin_key() {
    let data = TempDir::new("dash");
    let db = ["--data-dir", data.arg()];
    let user = add_key(&db, "dev", &[]);
    let admin = add_key(&db, "lead", &["--admin"]);
    let s = Launch::new(MODEL).data_dir(data.path()).start().with_key(&user);
    seed(&s);

    // The page is public and self-contained; its data is not.
    let page = client().get(format!("{}/dashboard", s.base)).send().unwrap();
    assert_eq!(page.status().as_u16(), 200);
    assert!(page.headers()["content-type"].to_str().unwrap().starts_with("text/html"));
    let html = page.text().unwrap();
    assert!(html.contains("/v1/dashboard"));
    // Nothing from elsewhere: no script or style files, and the only absolute URL is SVG's namespace.
    assert!(!html.contains(" src=") && !html.contains("<link") && !html.contains("https://"));
    assert_eq!(html.matches("http://").count(), html.matches("http://www.w3.org/2000/svg").count());
    let anonymous = client().get(format!("{}/v1/dashboard", s.base)).send().unwrap();
    assert_eq!(anonymous.status().as_u16(), 401);
    let (st, v) = s.get("/v1/dashboard");
    assert_eq!(st, 403, "a key without the admin role: {v}");
    assert_eq!(v["error"]["code"], "admin_key_required");

    let s = s.with_key(&admin);
    let v = settled(&s, "", 4);
    check_figures(&v);
    let keys = v["keys"].as_array().unwrap();
    let dev = keys.iter().find(|k| k["name"] == "dev").unwrap();
    assert_eq!(
        (dev["admin"].as_bool(), keys.iter().find(|k| k["name"] == "lead").unwrap()["admin"].as_bool()),
        (Some(false), Some(true))
    );
    assert!(dev["last_used_ms"].as_i64().unwrap() > 0, "dev made the completions: {dev}");
    assert!(!v.to_string().contains(&user), "never a key itself");
    assert!(v["live"]["kv_blocks_used"].is_number(), "{}", v["live"]);
    assert_eq!(group(&v, "by_key", "dev")["completions"], 4);

    // Filters narrow every figure; what the filters offer stays.
    let rust = settled(&s, "?language=rust&range=2h&bucket=minute", 1);
    assert_eq!((rust["totals"]["shown"].as_u64(), rust["totals"]["accepted_chars"].as_u64()), (Some(1), Some(7)));
    assert_eq!(rust["by_language"].as_array().unwrap().len(), 1);
    assert_eq!(rust["seen"]["languages"], json!(["python", "rust"]));
    assert_eq!(rust["bucket_ms"], 60_000);
    let (st, e) = s.get("/v1/dashboard?range=90d&bucket=minute");
    assert_eq!((st, e["error"]["param"].as_str()), (400, Some("bucket")), "{e}");
    assert_eq!(s.get("/v1/dashboard?range=later").1["error"]["param"], "range");
}

#[test]
fn the_dashboard_on_postgres() {
    let pg = Postgres::start();
    let url = pg.url();
    let db = ["--database", url.as_str()];
    let admin = add_key(&db, "lead", &["--admin"]);
    let s = Launch::new(MODEL).args(&["--database", &url]).start().with_key(&admin);
    seed(&s);
    check_figures(&settled(&s, "", 4));
    let nvim = settled(&s, "?editor=nvim", 1);
    assert_eq!(nvim["totals"]["accepted"], 1);
}

#[test]
#[ignore = "needs playwright-core and Chromium (see the file's header)"]
fn the_page_draws_the_stored_figures_in_a_real_browser() {
    let tools = std::path::PathBuf::from(
        std::env::var("GHOSTLINE_EDITOR_TOOLS")
            .expect("GHOSTLINE_EDITOR_TOOLS: the folder tests/editor-tools installs into"),
    );
    let data = TempDir::new("dash-browser");
    let db = ["--data-dir", data.arg()];
    let user = add_key(&db, "dev", &[]);
    let admin = add_key(&db, "lead", &["--admin"]);
    let mut s = Launch::new(MODEL).data_dir(data.path()).start().with_key(&user);
    let ids = seed(&s);
    s.key = Some(admin.clone());
    settled(&s, "", 4);

    let shot = concat!(env!("CARGO_TARGET_TMPDIR"), "/dashboard.png");
    let out = std::process::Command::new("node")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/dashboard/drive.js"))
        .env("PLAYWRIGHT_CORE", tools.join("node_modules/playwright-core"))
        .env("DASHBOARD_URL", format!("{}/dashboard?refresh=1", s.base))
        .env("SERVER_URL", &s.base)
        .env("ADMIN_KEY", &admin)
        .env("USER_KEY", &user)
        .env("COMPLETION_ID", &ids[3])
        .env("GHOSTLINE_SCREENSHOT", shot)
        .output()
        .expect("run node");
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!("{e}: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
    });
    assert!(report.get("error").is_none(), "{report}\n{}", String::from_utf8_lossy(&out.stderr));
    // Without a key the page asks for one and shows nothing.
    assert_eq!(report["unauthenticated"]["form_shown"], true, "{report}");
    assert_eq!(report["unauthenticated"]["shown_tile"], "", "{report}");
    // With the admin key: the numbers the API stored, in tiles, tables and charts.
    let a = &report["all"];
    assert_eq!(a["tiles"]["acceptance_rate"], "75.0%", "{report}");
    assert_eq!(a["tiles"]["accepted_chars"], "21", "{report}");
    assert_eq!(a["tiles"]["shown"], "4", "{report}");
    assert_eq!(a["language"]["python"]["shown"], "3", "{report}");
    assert_eq!(a["language"]["python"]["acceptance_rate"], "66.7%", "{report}");
    assert_eq!(a["editor"]["nvim"]["accepted_chars"], "7", "{report}");
    assert_eq!(a["keys"]["dev"]["role"], "user", "{report}");
    assert_eq!(a["keys"]["lead"]["role"], "admin", "{report}");
    assert!(a["chart_points"]["events"].as_u64().unwrap() >= 3, "{report}");
    assert!(a["chart_points"]["latency"].as_u64().unwrap() >= 1, "{report}");
    // The language filter narrows the page.
    let r = &report["rust"];
    assert_eq!(
        (r["tiles"]["shown"].as_str(), r["tiles"]["accepted_chars"].as_str()),
        (Some("1"), Some("7")),
        "{report}"
    );
    assert_eq!(r["languages"], json!(["rust"]), "{report}");
    // It refreshes while open: an event posted after it loaded shows up without a reload.
    assert_eq!(report["refreshed"]["shown"], "2", "{report}");
    // The CSV holds what is shown.
    let csv = report["csv"].as_str().unwrap();
    assert!(csv.starts_with("section,name,completions,shown"), "{csv}");
    assert!(csv.lines().any(|l| l.starts_with("language,rust,1,2,")), "{csv}");
    assert!(std::path::Path::new(shot).exists());
}
