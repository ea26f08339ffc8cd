//! The soak mode of `ghostline-server bench` (`--soak-out DIR`), which `server/benches/soak.sh`
//! runs while it kills and restarts Redis, PostgreSQL and the server.
//!
//! Each simulated developer types with its own key round the files for the whole run, hangs up
//! on a share of its streams after their first text, and posts telemetry about what it was
//! shown; a real language server is driven through a typing session beside them (`lsp.rs`).
//! The RSS of the server (its PID re-read from a file, since it restarts) and of the language
//! server is sampled from `/proc`. At the end: every failure by cause and by the fault it fell
//! in (the script's `UNIX_MS EVENT` lines), the KV blocks requests still hold once idle, and
//! every acknowledged telemetry event looked up in the database. `report.json`, `rss.csv` and
//! `table.txt` go to the out dir; the table is printed.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use ghostline_api::{TelemetryBatch, TelemetryEvent, TelemetryKind};
use ghostline_engine::sampling::Rng;
use serde_json::{json, Value};

use super::{lsp, send_cause, status_cause, Outcome};
use crate::dashboard::gauge;
use crate::ingest::unix_ms;
use crate::store::{DbTarget, Store, Val};

/// Options of the soak mode.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct SoakArgs {
    /// Soak mode: type round the files for all of --seconds and write the report to this dir.
    #[arg(long)]
    pub soak_out: Option<PathBuf>,
    /// Soak mode: API keys, one a line; developer i sends line i mod n.
    #[arg(long)]
    pub keys_file: Option<PathBuf>,
    /// Soak mode: share of requests the client hangs up on after their first text.
    #[arg(long, default_value_t = 0.1)]
    pub disconnect_share: f64,
    /// Soak mode: telemetry events a developer gathers before it posts them.
    #[arg(long, default_value_t = 8)]
    pub telemetry_batch: usize,
    /// Soak mode: the language server binary (`ghostline`) to drive through a typing session too.
    #[arg(long)]
    pub lsp: Option<PathBuf>,
    /// Soak mode: the file holding the server's PID (rewritten when it restarts), for RSS samples.
    #[arg(long)]
    pub server_pid_file: Option<PathBuf>,
    /// Soak mode: seconds between RSS samples.
    #[arg(long, default_value_t = 2.0)]
    pub rss_every_secs: f64,
    /// Soak mode: the fault script's log, lines `UNIX_MS EVENT [VALUE]` (redis_down, redis_up,
    /// postgres_down, postgres_up, server_killed, server_ready; probe_NAME STATUS).
    #[arg(long)]
    pub phases: Option<PathBuf>,
    /// Soak mode: the server's database URL, to look up every acknowledged telemetry event.
    #[arg(long)]
    pub check_database: Option<String>,
}

/// Failures this long after a fault ended still count as the fault's.
const GRACE_MS: u64 = 2000;

#[derive(Default)]
struct DevTelemetry {
    pending: Vec<TelemetryEvent>,
    next: u64,
    posting: bool,
}

/// What the developers share in a soak.
pub struct Run {
    args: SoakArgs,
    out: PathBuf,
    url: String,
    keys: Vec<String>,
    /// Prefix of every event id of this run.
    run_id: String,
    started_ms: u64,
    failures: Mutex<Vec<(u64, String)>>,
    served: Mutex<Vec<u64>>,
    devs: Mutex<BTreeMap<usize, DevTelemetry>>,
    acked: Mutex<HashSet<String>>,
    /// Events of refused telemetry posts, by cause (they are posted again).
    refused: Mutex<BTreeMap<String, usize>>,
    posts: Mutex<(usize, usize)>,
}

/// What runs beside the developers: the RSS sampler and the language server's typist.
pub struct Side {
    stop: Arc<AtomicBool>,
    sampler: tokio::task::JoinHandle<Vec<Sample>>,
    lsp: Option<std::thread::JoinHandle<anyhow::Result<lsp::LspStats>>>,
}

#[derive(Clone, Copy)]
struct Sample {
    t_s: f64,
    server_pid: Option<u32>,
    server_kb: Option<u64>,
    lsp_kb: Option<u64>,
}

fn rss_kb(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines().find_map(|l| l.strip_prefix("VmRSS:"))?.trim().trim_end_matches("kB").trim().parse().ok()
}

fn read_pid(p: &Path) -> Option<u32> {
    std::fs::read_to_string(p).ok()?.trim().parse().ok()
}

impl Run {
    pub fn new(args: SoakArgs, url: &str) -> anyhow::Result<Run> {
        let out = args.soak_out.clone().context("--soak-out")?;
        std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
        let keys = match &args.keys_file {
            Some(p) => std::fs::read_to_string(p)
                .with_context(|| format!("reading --keys-file {}", p.display()))?
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(str::to_string)
                .collect(),
            None => Vec::new(),
        };
        let started_ms = unix_ms() as u64;
        Ok(Run {
            args,
            out,
            url: url.to_string(),
            keys,
            run_id: format!("soak-{started_ms}"),
            started_ms,
            failures: Mutex::new(Vec::new()),
            served: Mutex::new(Vec::new()),
            devs: Mutex::new(BTreeMap::new()),
            acked: Mutex::new(HashSet::new()),
            refused: Mutex::new(BTreeMap::new()),
            posts: Mutex::new((0, 0)),
        })
    }

    /// Developer `id`'s key.
    pub fn key(&self, id: usize) -> Option<String> {
        (!self.keys.is_empty()).then(|| self.keys[id % self.keys.len()].clone())
    }

    /// Whether the next request is one the client hangs up on.
    pub fn hang_up(&self, rng: &mut Rng) -> bool {
        rng.next_f64() < self.args.disconnect_share
    }

    /// Notes how a request ended; a served one is reported as shown (and a third of them
    /// accepted, a third rejected).
    pub fn observe(&self, dev: usize, r: &Outcome) {
        let now = unix_ms() as u64;
        match r {
            Outcome::Done { last, .. } => {
                self.served.lock().unwrap_or_else(|e| e.into_inner()).push(now);
                let Some(id) = last.as_ref().map(|c| c.id.clone()) else { return };
                let mut devs = self.devs.lock().unwrap_or_else(|e| e.into_inner());
                let d = devs.entry(dev).or_default();
                let n = d.next;
                d.next += 1;
                let ev = |kind, k: u64| TelemetryEvent {
                    event_id: Some(format!("{}-{dev}-{n}-{k}", self.run_id)),
                    completion_id: id.clone(),
                    choice_index: 0,
                    kind,
                    accepted_chars: (kind == TelemetryKind::Accepted).then_some(12),
                    shown_ms: Some(400),
                    client_ts: Some(now),
                    editor: Some("soak".into()),
                    language: None,
                };
                d.pending.push(ev(TelemetryKind::Shown, 0));
                match n % 3 {
                    0 => d.pending.push(ev(TelemetryKind::Accepted, 1)),
                    1 => d.pending.push(ev(TelemetryKind::Rejected, 1)),
                    _ => {}
                }
            }
            Outcome::Failed(cause) => {
                self.failures.lock().unwrap_or_else(|e| e.into_inner()).push((now, cause.clone()))
            }
            Outcome::Superseded | Outcome::Disconnected => {}
        }
    }

    /// Posts developer `dev`'s gathered events (once a batch is full, or any with `force`) unless
    /// a post of theirs is in flight; refused events are kept and posted again.
    pub fn flush(
        self: &Arc<Self>,
        dev: usize,
        client: &reqwest::Client,
        force: bool,
    ) -> Option<tokio::task::JoinHandle<()>> {
        let events = {
            let mut devs = self.devs.lock().unwrap_or_else(|e| e.into_inner());
            let d = devs.entry(dev).or_default();
            if d.posting || d.pending.is_empty() || (!force && d.pending.len() < self.args.telemetry_batch) {
                return None;
            }
            d.posting = true;
            std::mem::take(&mut d.pending)
        };
        let (run, client, key) = (self.clone(), client.clone(), self.key(dev));
        Some(tokio::spawn(async move {
            let outcome = run.post(&client, key.as_deref(), &events).await;
            let mut devs = run.devs.lock().unwrap_or_else(|e| e.into_inner());
            let d = devs.entry(dev).or_default();
            d.posting = false;
            let mut posts = run.posts.lock().unwrap_or_else(|e| e.into_inner());
            posts.0 += 1;
            match outcome {
                Ok(()) => {
                    posts.1 += 1;
                    let mut acked = run.acked.lock().unwrap_or_else(|e| e.into_inner());
                    acked.extend(events.iter().filter_map(|e| e.event_id.clone()));
                }
                Err(cause) => {
                    *run.refused.lock().unwrap_or_else(|e| e.into_inner()).entry(cause).or_default() += events.len();
                    let later = std::mem::replace(&mut d.pending, events);
                    d.pending.extend(later);
                }
            }
        }))
    }

    /// One telemetry post: Ok when the server acknowledged every event.
    async fn post(&self, client: &reqwest::Client, key: Option<&str>, events: &[TelemetryEvent]) -> Result<(), String> {
        let mut req = client
            .post(format!("{}/v1/telemetry", self.url))
            .timeout(Duration::from_secs(30))
            .json(&TelemetryBatch { events: events.to_vec() });
        if let Some(k) = key {
            req = req.bearer_auth(k);
        }
        let resp = req.send().await.map_err(|e| send_cause(&e))?;
        if resp.status().as_u16() != 202 {
            return Err(status_cause(resp).await);
        }
        let v: Value = resp.json().await.map_err(|_| "unreadable_acknowledgement".to_string())?;
        match v["accepted"].as_u64() {
            Some(n) if n == events.len() as u64 => Ok(()),
            _ => Err(format!("acknowledged_{}_of_{}", v["accepted"], events.len())),
        }
    }

    /// Starts the RSS sampler and the language server's typist.
    pub fn start_side(
        &self,
        files: &Arc<Vec<String>>,
        key_ms: f64,
        seed: u64,
        deadline: Instant,
    ) -> anyhow::Result<Side> {
        let stop = Arc::new(AtomicBool::new(false));
        let lsp_pid = Arc::new(AtomicU32::new(0));
        let lsp = match &self.args.lsp {
            Some(bin) => {
                let a = lsp::LspArgs {
                    bin: bin.clone(),
                    url: self.url.clone(),
                    key: self.key(0),
                    dir: self.out.join("lsp"),
                    key_ms,
                    seed,
                    deadline,
                };
                let (files, pid) = (files.clone(), lsp_pid.clone());
                Some(
                    std::thread::Builder::new()
                        .name("soak-lsp".into())
                        .spawn(move || lsp::run(a, &files, &pid))
                        .context("starting the language server's typist")?,
                )
            }
            None => None,
        };
        let (every, pid_file, s) = (self.args.rss_every_secs.max(0.1), self.args.server_pid_file.clone(), stop.clone());
        let sampler = tokio::spawn(async move {
            let t0 = Instant::now();
            let mut out = Vec::new();
            let mut tick = tokio::time::interval(Duration::from_secs_f64(every));
            while !s.load(Ordering::Relaxed) {
                tick.tick().await;
                let server_pid = pid_file.as_deref().and_then(read_pid);
                let lsp = lsp_pid.load(Ordering::Relaxed);
                out.push(Sample {
                    t_s: t0.elapsed().as_secs_f64(),
                    server_pid,
                    server_kb: server_pid.and_then(rss_kb),
                    lsp_kb: (lsp != 0).then(|| rss_kb(lsp)).flatten(),
                });
            }
            out
        });
        Ok(Side { stop, sampler, lsp })
    }

    /// After the typing: the language server's report, the last telemetry, the idle server's
    /// KV blocks, the database check, and the report.
    pub async fn finish(self: Arc<Self>, client: &reqwest::Client, side: Side, bench: Value) -> anyhow::Result<()> {
        let lsp = match side.lsp {
            Some(h) => {
                let r = tokio::task::spawn_blocking(move || h.join()).await?;
                match r {
                    Ok(Ok(s)) => serde_json::to_value(s)?,
                    Ok(Err(e)) => json!({"error": format!("{e:#}")}),
                    Err(_) => json!({"error": "the typist panicked"}),
                }
            }
            None => Value::Null,
        };
        // Every gathered event is posted until acknowledged (the faults are over by now).
        let devs: Vec<usize> = self.devs.lock().unwrap_or_else(|e| e.into_inner()).keys().copied().collect();
        let until = Instant::now() + Duration::from_secs(60);
        for dev in devs {
            while Instant::now() < until {
                let left = {
                    let devs = self.devs.lock().unwrap_or_else(|e| e.into_inner());
                    devs.get(&dev).map_or((0, false), |d| (d.pending.len(), d.posting))
                };
                if left == (0, false) {
                    break;
                }
                match self.flush(dev, client, true) {
                    Some(h) => {
                        let _ = h.await;
                    }
                    None => tokio::time::sleep(Duration::from_millis(50)).await,
                }
                let still = self
                    .devs
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get(&dev)
                    .is_some_and(|d| !d.pending.is_empty());
                if still {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
        let unposted: usize =
            self.devs.lock().unwrap_or_else(|e| e.into_inner()).values().map(|d| d.pending.len()).sum();

        // Idle: no sequence running, none queued, no KV block held by a request.
        let t_idle = Instant::now();
        let mut live = BTreeMap::new();
        while t_idle.elapsed() < Duration::from_secs(60) {
            if let Ok(text) = self.metrics(client).await {
                for name in [
                    "ghostline_kv_blocks_held",
                    "ghostline_kv_blocks_used",
                    "ghostline_prefix_cache_blocks",
                    "ghostline_active_sequences",
                    "ghostline_queue_depth",
                    "ghostline_redis_errors_total",
                    "ghostline_redis_skipped_total",
                    "ghostline_engine_faults_total",
                    "ghostline_database_errors_total",
                ] {
                    live.insert(name, gauge(&text, name));
                }
                let idle = ["ghostline_kv_blocks_held", "ghostline_active_sequences", "ghostline_queue_depth"]
                    .iter()
                    .all(|n| live.get(n).copied().flatten() == Some(0.0));
                if idle {
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        let idle_after_s = t_idle.elapsed().as_secs_f64();
        side.stop.store(true, Ordering::Relaxed);
        let samples = side.sampler.await.unwrap_or_default();

        let acked: HashSet<String> = self.acked.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let stored = match &self.args.check_database {
            Some(url) => {
                let (url, like) = (url.clone(), format!("{}-%", self.run_id));
                let found = tokio::task::spawn_blocking(move || -> anyhow::Result<HashSet<String>> {
                    let mut store = Store::open(&DbTarget::resolve(Some(&url), Path::new("."))?)?;
                    let rows = store.query(
                        "SELECT event_id FROM telemetry_events WHERE event_id LIKE ?1",
                        &[Val::Text(Some(like))],
                    )?;
                    Ok(rows.into_iter().filter_map(|r| r.first().and_then(Val::text)).collect())
                })
                .await?;
                match found {
                    Ok(f) => {
                        let mut missing: Vec<&String> = acked.iter().filter(|id| !f.contains(*id)).collect();
                        missing.sort();
                        json!({"rows": f.len(), "acknowledged_missing": missing.len(),
                               "missing_examples": missing.iter().take(10).collect::<Vec<_>>()})
                    }
                    Err(e) => json!({"error": format!("{e:#}")}),
                }
            }
            None => Value::Null,
        };

        let phases = self.args.phases.as_deref().map(read_phases).unwrap_or_default();
        let windows = windows(&phases);
        let failures = std::mem::take(&mut *self.failures.lock().unwrap_or_else(|e| e.into_inner()));
        let served = std::mem::take(&mut *self.served.lock().unwrap_or_else(|e| e.into_inner()));
        let mut by_cause: BTreeMap<String, usize> = BTreeMap::new();
        let mut by_phase: BTreeMap<String, BTreeMap<String, usize>> = BTreeMap::new();
        for (t, cause) in &failures {
            *by_cause.entry(cause.clone()).or_default() += 1;
            *by_phase.entry(phase_of(&windows, *t).to_string()).or_default().entry(cause.clone()).or_default() += 1;
        }
        let mut served_by_phase: BTreeMap<String, usize> = BTreeMap::new();
        for t in &served {
            *served_by_phase.entry(phase_of(&windows, *t).to_string()).or_default() += 1;
        }
        let in_window = |name: &str| {
            failures.iter().filter(|(t, _)| windows.iter().any(|w| w.0 == name && w.1 <= *t && *t <= w.2)).count()
        };
        let probes: BTreeMap<String, Value> = phases
            .iter()
            .filter(|(_, n, _)| n.starts_with("probe_"))
            .map(|(_, n, v)| {
                (n.trim_start_matches("probe_").to_string(), v.parse::<u64>().map_or(json!(v), |x| json!(x)))
            })
            .collect();
        let (posts, posts_acked) = *self.posts.lock().unwrap_or_else(|e| e.into_inner());

        let report = json!({
            "run_id": self.run_id,
            "bench": bench,
            "failed_by_cause": by_cause,
            "failed_by_phase": by_phase,
            "served_by_phase": served_by_phase,
            "completions_failed_while_redis_down": in_window("redis_down"),
            "completions_failed_while_postgres_down": in_window("postgres_down"),
            "completions_failed_while_server_down": in_window("server_down"),
            "phases": phases.iter().map(|(t, n, v)| json!({"t_s": (*t as f64 - self.started_ms as f64) / 1000.0, "event": n, "value": v})).collect::<Vec<_>>(),
            "probes": probes,
            "telemetry": {
                "posts": posts, "posts_acknowledged": posts_acked,
                "acknowledged_events": acked.len(),
                "refused_events_by_cause": *self.refused.lock().unwrap_or_else(|e| e.into_inner()),
                "never_acknowledged": unposted,
                "database": stored,
            },
            "idle": {"after_s": (idle_after_s * 10.0).round() / 10.0, "metrics": live},
            "rss_kb": {"server": summary(&samples, |s| s.server_kb), "lsp": summary(&samples, |s| s.lsp_kb),
                       "server_by_pid": by_pid(&samples)},
            "lsp": lsp,
        });
        let mut csv = String::from("t_s,server_pid,server_rss_kb,lsp_rss_kb\n");
        for s in &samples {
            let o = |v: Option<u64>| v.map_or(String::new(), |v| v.to_string());
            csv.push_str(&format!(
                "{:.1},{},{},{}\n",
                s.t_s,
                o(s.server_pid.map(u64::from)),
                o(s.server_kb),
                o(s.lsp_kb)
            ));
        }
        std::fs::write(self.out.join("rss.csv"), csv)?;
        std::fs::write(self.out.join("report.json"), serde_json::to_string_pretty(&report)?)?;
        let t = table(&report);
        std::fs::write(self.out.join("table.txt"), &t)?;
        print!("{t}");
        Ok(())
    }

    async fn metrics(&self, client: &reqwest::Client) -> anyhow::Result<String> {
        let mut req = client.get(format!("{}/metrics", self.url)).timeout(Duration::from_secs(10));
        if let Some(k) = self.key(0) {
            req = req.bearer_auth(k);
        }
        Ok(req.send().await?.error_for_status()?.text().await?)
    }
}

/// The script's lines `UNIX_MS EVENT [VALUE]`.
fn read_phases(p: &Path) -> Vec<(u64, String, String)> {
    let text = std::fs::read_to_string(p).unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            let t = it.next()?.parse().ok()?;
            Some((t, it.next()?.to_string(), it.collect::<Vec<_>>().join(" ")))
        })
        .collect()
}

/// The faults' windows `(name, from_ms, to_ms)`: each down event to its up event plus the grace.
fn windows(phases: &[(u64, String, String)]) -> Vec<(&'static str, u64, u64)> {
    let mut out = Vec::new();
    for (name, down, up) in [
        ("server_down", "server_killed", "server_ready"),
        ("redis_down", "redis_down", "redis_up"),
        ("postgres_down", "postgres_down", "postgres_up"),
    ] {
        let mut from = None;
        for (t, e, _) in phases {
            if e == down {
                from = Some(*t);
            } else if e == up {
                if let Some(f) = from.take() {
                    out.push((name, f, t + GRACE_MS));
                }
            }
        }
        if let Some(f) = from {
            out.push((name, f, u64::MAX));
        }
    }
    out
}

fn phase_of(windows: &[(&'static str, u64, u64)], t: u64) -> &'static str {
    windows.iter().find(|w| w.1 <= t && t <= w.2).map_or("no_fault", |w| w.0)
}

fn summary(samples: &[Sample], f: impl Fn(&Sample) -> Option<u64>) -> Value {
    let v: Vec<u64> = samples.iter().filter_map(&f).collect();
    if v.is_empty() {
        return Value::Null;
    }
    json!({"samples": v.len(), "first": v[0], "middle": v[v.len() / 2], "last": v[v.len() - 1],
           "max": v.iter().max(), "min": v.iter().min()})
}

fn by_pid(samples: &[Sample]) -> Vec<Value> {
    let mut pids: Vec<u32> = Vec::new();
    for s in samples {
        if let Some(p) = s.server_pid.filter(|p| !pids.contains(p)) {
            pids.push(p);
        }
    }
    pids.iter()
        .map(|&p| {
            let mut v = summary(samples, |s| s.server_kb.filter(|_| s.server_pid == Some(p)));
            v["pid"] = json!(p);
            v
        })
        .collect()
}

/// The report as a printed table.
fn table(r: &Value) -> String {
    let b = &r["bench"];
    let mut rows: Vec<(String, String)> = vec![
        ("developers / seconds".into(), format!("{} / {}", b["developers"], b["seconds"])),
        ("requests sent".into(), b["requests_sent"].to_string()),
        ("served (completed)".into(), b["completed"].to_string()),
        ("superseded by a newer keystroke".into(), b["superseded"].to_string()),
        ("client hung up mid-stream".into(), b["disconnected"].to_string()),
        ("failed".into(), b["errors"].to_string()),
    ];
    if let Some(m) = r["failed_by_phase"].as_object() {
        for (phase, causes) in m {
            for (cause, n) in causes.as_object().into_iter().flatten() {
                rows.push((format!("  failed: {cause} ({phase})"), n.to_string()));
            }
        }
    }
    if let Some(m) = r["served_by_phase"].as_object() {
        for (phase, n) in m {
            rows.push((format!("served during {phase}"), n.to_string()));
        }
    }
    rows.push(("completions failed while Redis was down".into(), r["completions_failed_while_redis_down"].to_string()));
    rows.push(("TTFT p50 / p90 / p99 ms".into(), pcts(&b["ttft_ms"])));
    let t = &r["telemetry"];
    rows.push(("telemetry events acknowledged".into(), t["acknowledged_events"].to_string()));
    rows.push(("telemetry rows of this run in the database".into(), t["database"]["rows"].to_string()));
    rows.push(("acknowledged telemetry events lost".into(), t["database"]["acknowledged_missing"].to_string()));
    if let Some(m) = t["refused_events_by_cause"].as_object() {
        for (cause, n) in m {
            rows.push((format!("  telemetry refused, posted again: {cause}"), n.to_string()));
        }
    }
    let live = &r["idle"]["metrics"];
    rows.push(("KV blocks held once idle".into(), live["ghostline_kv_blocks_held"].to_string()));
    rows.push((
        "KV blocks used / prefix cache blocks once idle".into(),
        format!("{} / {}", live["ghostline_kv_blocks_used"], live["ghostline_prefix_cache_blocks"]),
    ));
    rows.push(("redis errors counted by the server".into(), live["ghostline_redis_errors_total"].to_string()));
    for (who, key) in [("server", "server"), ("language server", "lsp")] {
        let s = &r["rss_kb"][key];
        rows.push((
            format!("{who} RSS MiB first / middle / last / max"),
            ["first", "middle", "last", "max"].iter().map(|k| mib(&s[k])).collect::<Vec<_>>().join(" / "),
        ));
    }
    for s in r["rss_kb"]["server_by_pid"].as_array().into_iter().flatten() {
        rows.push((
            format!("  server pid {} RSS MiB first / last / max", s["pid"]),
            ["first", "last", "max"].iter().map(|k| mib(&s[k])).collect::<Vec<_>>().join(" / "),
        ));
    }
    let l = &r["lsp"];
    if !l.is_null() {
        rows.push(("language server keystrokes / requests".into(), format!("{} / {}", l["keystrokes"], l["requests"])));
        rows.push((
            "  answered with items / empty / errors".into(),
            format!("{} / {} / {}", l["with_items"], l["empty"], l["errors"]),
        ));
    }
    if let Some(m) = r["probes"].as_object() {
        for (name, v) in m {
            rows.push((format!("probe {name}"), v.to_string()));
        }
    }
    let w = rows.iter().map(|(k, _)| k.chars().count()).max().unwrap_or(0);
    let mut out = String::new();
    for (k, v) in rows {
        out.push_str(&format!("{k:<w$}  {v}\n"));
    }
    out
}

fn pcts(v: &Value) -> String {
    ["p50", "p90", "p99"]
        .iter()
        .map(|k| v[k].as_f64().map_or("-".into(), |x| format!("{x:.0}")))
        .collect::<Vec<_>>()
        .join(" / ")
}

fn mib(v: &Value) -> String {
    v.as_f64().map_or("-".into(), |kb| format!("{:.1}", kb / 1024.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_fall_in_the_fault_they_happened_in() {
        let p = |t, e: &str| (t, e.to_string(), String::new());
        let phases =
            [p(1000, "server_killed"), p(3000, "server_ready"), p(10_000, "redis_down"), p(12_000, "redis_up")];
        let w = windows(&phases);
        assert_eq!(phase_of(&w, 500), "no_fault");
        assert_eq!(phase_of(&w, 2000), "server_down");
        assert_eq!(phase_of(&w, 3000 + GRACE_MS), "server_down");
        assert_eq!(phase_of(&w, 3001 + GRACE_MS), "no_fault");
        assert_eq!(phase_of(&w, 13_000), "redis_down");
    }
}
