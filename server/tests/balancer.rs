//! Replicas behind a real load balancer: the configurations in deploy/ checked by the tools that
//! run them (`nginx -t`, `haproxy -c`, deploy/k8s/check.py), and real nginx running
//! deploy/nginx/ghostline.conf in front of three replicas that share a real Redis and
//! PostgreSQL on loopback. Without nginx (Debian package nginx; tests/run installs it) the
//! balancer tests say so and pass.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::raw::{awaiting_body, read_until_closed, status_of};
use common::{add_key, client, free_port, keys, Launch, Postgres, Redis, Server, TempDir};
use serde_json::{json, Value};

const MODEL: &str = "qwen2-tied-bf16";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// A tool on PATH or in /usr/sbin (Debian puts nginx and haproxy there, outside a user's PATH).
fn tool(name: &str) -> Option<PathBuf> {
    let on_path =
        std::env::var_os("PATH").and_then(|p| std::env::split_paths(&p).map(|d| d.join(name)).find(|p| p.is_file()));
    on_path.or_else(|| Some(Path::new("/usr/sbin").join(name)).filter(|p| p.is_file()))
}

/// deploy/nginx/ghostline.conf with its replicas and listen address replaced, inside a minimal
/// nginx.conf under a temp prefix.
fn nginx_conf(dir: &Path, replicas: Option<&[u16]>, port: u16) -> PathBuf {
    let shipped = std::fs::read_to_string(repo().join("deploy/nginx/ghostline.conf")).unwrap();
    let conf = match replicas {
        None => shipped,
        Some(ports) => {
            let mut out = String::new();
            let mut placed = false;
            for line in shipped.lines() {
                let t = line.trim_start();
                if t.starts_with("server 10.0.0.") {
                    if !placed {
                        for p in ports {
                            out.push_str(&format!("    server 127.0.0.1:{p} max_fails=1 fail_timeout=5s;\n"));
                        }
                        placed = true;
                    }
                } else if t.starts_with("listen ") {
                    out.push_str(&format!("    listen 127.0.0.1:{port};\n"));
                } else {
                    out.push_str(line);
                    out.push('\n');
                }
            }
            assert!(placed, "the shipped configuration lists no replicas");
            out
        }
    };
    std::fs::write(dir.join("ghostline.conf"), conf).unwrap();
    let d = dir.display();
    let main = format!(
        "daemon off;\nmaster_process off;\nerror_log {d}/error.log;\npid {d}/nginx.pid;\nevents {{ worker_connections 256; }}\n\
         http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n  \
         fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n  \
         include {d}/ghostline.conf;\n}}\n"
    );
    let path = dir.join("nginx.conf");
    std::fs::write(&path, main).unwrap();
    path
}

#[test]
fn the_deploy_configurations_pass_their_tools_checks() {
    match tool("nginx") {
        None => eprintln!("skipped the nginx check: no nginx (Debian package nginx)"),
        Some(nginx) => {
            let dir = TempDir::new("nginx-t");
            let conf = nginx_conf(dir.path(), None, 0);
            let out = Command::new(nginx).arg("-t").arg("-p").arg(dir.path()).arg("-c").arg(&conf).output().unwrap();
            let said = String::from_utf8_lossy(&out.stderr);
            assert!(out.status.success() && said.contains("test is successful"), "{said}");
        }
    }
    match tool("haproxy") {
        None => eprintln!("skipped the HAProxy check: no haproxy (Debian package haproxy)"),
        Some(haproxy) => {
            let out = Command::new(haproxy).arg("-c").arg("-f").arg(repo().join("deploy/haproxy/haproxy.cfg")).output();
            let out = out.unwrap();
            let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
            assert!(out.status.success() && said.contains("Configuration file is valid"), "{said}");
            assert!(!said.contains("WARNING"), "{said}");
        }
    }
    let yaml_ok = Command::new("python3").args(["-c", "import yaml"]).status().is_ok_and(|s| s.success());
    if !yaml_ok {
        eprintln!("skipped the Kubernetes check: python3 with PyYAML is needed (Debian package python3-yaml)");
        return;
    }
    let check = |file: &Path| {
        let out = Command::new("python3").arg(repo().join("deploy/k8s/check.py")).arg(file).output().unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let shipped = repo().join("deploy/k8s/ghostline.yaml");
    let (ok, said) = check(&shipped);
    assert!(ok, "{said}");
    assert!(said.contains("HorizontalPodAutoscaler") && said.contains("PodDisruptionBudget"), "{said}");
    // The checker fails what the API server or the rollout would: each of these breaks one rule.
    let text = std::fs::read_to_string(&shipped).unwrap();
    let dir = TempDir::new("k8s");
    let broken = [
        ("terminationGracePeriodSeconds: 35", "terminationGracePeriodSeconds: 12", "does not cover"),
        ("httpGet: {path: /ready, port: http}", "httpGet: {path: /health, port: http}", "must probe /ready"),
        ("containerPort: 8484", "containerPort: \"8484\"", "expected integer"),
        ("  replicas: 3", "  replicas: 3\n  replica: 3", "unknown field replica"),
        ("    name: ghostline\n  minReplicas", "    name: ghostlin\n  minReplicas", "targets no Deployment"),
        ("selector: {app: ghostline}", "selector: {app: ghost}", "matches no pod"),
    ];
    for (from, to, says) in broken {
        assert!(text.contains(from), "{from:?} is not in the manifest any more");
        let f = dir.path().join("broken.yaml");
        std::fs::write(&f, text.replacen(from, to, 1)).unwrap();
        let (ok, said) = check(&f);
        assert!(!ok && said.contains(says), "{to:?}: {said}");
    }
}

/// Real nginx in the foreground (one process), killed when dropped.
struct Nginx {
    child: Child,
    base: String,
    _dir: TempDir,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Nginx {
    fn start(bin: &Path, replicas: &[u16]) -> Nginx {
        let dir = TempDir::new("nginx");
        let port = free_port();
        let conf = nginx_conf(dir.path(), Some(replicas), port);
        let child = Command::new(bin)
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(&conf)
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting nginx");
        let t = std::time::Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(t.elapsed() < Duration::from_secs(20), "nginx did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Nginx { child, base: format!("http://127.0.0.1:{port}"), _dir: dir }
    }

    /// What nginx logged (its error log: failed attempts, retries to the next replica).
    fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("error.log")).unwrap_or_default()
    }

    fn post(&self, path: &str, key: &str, affinity: &str, body: &Value) -> (u16, Value) {
        let r = client()
            .post(format!("{}{path}", self.base))
            .bearer_auth(key)
            .header("x-ghostline-affinity", affinity)
            .json(body)
            .send();
        match r {
            Ok(r) => (r.status().as_u16(), r.json().unwrap_or(Value::Null)),
            Err(e) => (0, json!(e.to_string())),
        }
    }
}

fn completions_served(s: &Server) -> f64 {
    s.metric("ghostline_requests_total{endpoint=\"/v1/completions\"")
}

fn event(id: &str, completion: &str) -> Value {
    json!({"event_id": id, "completion_id": completion, "choice_index": 0, "kind": "shown", "shown_ms": 80, "client_ts": 1764201600000u64})
}

#[test]
fn three_replicas_behind_nginx_keep_affinity_share_keys_and_cache_and_survive_a_sigkill() {
    let Some(nginx) = tool("nginx") else {
        eprintln!("skipped: no nginx (Debian package nginx; tests/run installs it)");
        return;
    };
    let redis = Redis::start();
    let pg = Postgres::start();
    let url = pg.url();
    let db = ["--database", url.as_str()];
    let key = add_key(&db, "team", &[]);
    let leaver = add_key(&db, "leaver", &[]);
    let launch = || Launch::new(MODEL).args(&["--database", &url, "--redis", &redis.url()]).start().with_key(&key);
    let mut reps = vec![launch(), launch(), launch()];
    let ports: Vec<u16> = reps.iter().map(|s| s.base.rsplit(':').next().unwrap().parse().unwrap()).collect();
    let lb = Nginx::start(&nginx, &ports);

    // Affinity: each developer's requests all land on one replica, by each replica's own count.
    let where_lands = |reps: &[Server], dev: &str, n: usize| -> usize {
        let before: Vec<f64> = reps.iter().map(completions_served).collect();
        for i in 0..n {
            let body = json!({"prompt": format!("# {dev} {i}\ndef f{i}("), "max_tokens": 2});
            assert_eq!(lb.post("/v1/completions", &key, dev, &body).0, 200);
        }
        let grew: Vec<f64> = reps.iter().zip(&before).map(|(s, b)| completions_served(s) - b).collect();
        let at: Vec<usize> = (0..reps.len()).filter(|&i| grew[i] > 0.0).collect();
        assert_eq!(at.len(), 1, "{dev}'s requests were spread: {grew:?}");
        assert_eq!(grew[at[0]], n as f64, "{grew:?}");
        at[0]
    };
    let devs = ["3f2a9c0d11e4b7a8", "0b8e7d6c5a4f3e21", "9d1c2b3a4f5e6d7c", "77aa88bb99cc00dd", "e5f6a7b8c9d0e1f2"];
    for dev in devs {
        where_lands(&reps, dev, 4);
    }

    // A key revoked in the shared database is refused by every replica.
    let probe = json!({"prompt": "x = ", "max_tokens": 1});
    assert_eq!(lb.post("/v1/completions", &leaver, devs[0], &probe).0, 200);
    keys(&db, &["revoke", "leaver"]);
    for s in &reps {
        let r = client().post(format!("{}/v1/completions", s.base)).bearer_auth(&leaver).json(&probe).send().unwrap();
        assert_eq!(r.status().as_u16(), 401, "{} still takes the revoked key", s.base);
    }

    // The response cache is shared: what one replica computed, the others answer.
    let body = json!({"prompt": "class Point:\n", "max_tokens": 4, "temperature": 0.0});
    assert_eq!(reps[0].complete(body.clone())["cache"], "miss");
    std::thread::sleep(Duration::from_millis(200)); // stored to Redis just after the answer
    for s in &reps[1..] {
        let v = s.complete(body.clone());
        assert_eq!(v["cache"], "hit", "{v}");
    }

    // SIGKILL of the replica a developer lands on, under load: the language server's next
    // request succeeds through another replica, and acknowledged telemetry is kept.
    let dev = "c0ffee00c0ffee00";
    let home = where_lands(&reps, dev, 2);
    let done = lb.post("/v1/completions", &key, dev, &json!({"prompt": "y = ", "max_tokens": 2}));
    let completion = done.1["id"].as_str().unwrap().to_string();
    let batch = json!({"events": [event("k1", &completion), event("k2", &completion)]});
    assert_eq!(lb.post("/v1/telemetry", &key, dev, &batch), (202, json!({"accepted": 2})));
    let stop = AtomicBool::new(false);
    let statuses = std::thread::scope(|s| {
        let load = s.spawn(|| {
            let mut seen = Vec::new();
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let body = json!({"prompt": format!("for i{i} in range("), "max_tokens": 3});
                seen.push(lb.post("/v1/completions", &key, dev, &body).0);
                i += 1;
            }
            seen
        });
        std::thread::sleep(Duration::from_millis(300));
        reps[home].child.kill().unwrap();
        reps[home].child.wait().unwrap();
        let next = lb.post("/v1/completions", &key, dev, &json!({"prompt": "z = ", "max_tokens": 2}));
        assert_eq!(next.0, 200, "the next request after the kill: {}", next.1);
        std::thread::sleep(Duration::from_millis(300));
        stop.store(true, Ordering::Relaxed);
        load.join().unwrap()
    });
    let failed = statuses.iter().filter(|&&s| s != 200).count();
    assert!(statuses.len() >= 2 && failed <= 1, "only a request in flight at the kill may fail: {statuses:?}");
    let alive = reps.remove(home);
    drop(alive);
    let (st, stats) = reps[0].get("/v1/stats?since=1h");
    assert_eq!(st, 200, "{stats}");
    assert_eq!(stats["overall"]["shown"], 2, "the acknowledged events outlive the replica: {stats}");
}

/// How one request through the balancer ended.
#[derive(Debug)]
enum Outcome {
    /// 200 and the whole answer (a stream up to `[DONE]`).
    Whole,
    /// Refused or failed before any of the response came: what a rolling restart must not cause.
    Failed(String),
    /// 200, then the stream broke off before `[DONE]`.
    Cut(String),
}

/// One completion through the balancer, streamed or not, read to its end.
fn one_request(lb: &Nginx, key: &str, affinity: &str, prompt: &str, stream: bool) -> Outcome {
    let body = json!({"prompt": prompt, "max_tokens": 6, "stream": stream});
    let sent = client()
        .post(format!("{}/v1/completions", lb.base))
        .bearer_auth(key)
        .header("x-ghostline-affinity", affinity)
        .json(&body)
        .send();
    let r = match sent {
        Ok(r) => r,
        Err(e) => return Outcome::Failed(format!("no response: {e}")),
    };
    let status = r.status().as_u16();
    if status != 200 {
        return Outcome::Failed(format!("{status}: {}", r.text().unwrap_or_default()));
    }
    if !stream {
        return match r.json::<Value>() {
            Ok(v) if v["choices"][0]["text"].is_string() => Outcome::Whole,
            other => Outcome::Cut(format!("{other:?}")),
        };
    }
    let mut events = Vec::new();
    for line in BufReader::new(r).lines() {
        match line {
            Ok(l) if l.starts_with("data: ") => events.push(l),
            Ok(_) => {}
            Err(e) => return Outcome::Cut(format!("after {} events: {e}", events.len())),
        }
    }
    match events.last().map(String::as_str) {
        Some("data: [DONE]") => Outcome::Whole,
        _ => Outcome::Cut(format!("ended without [DONE] after {} events", events.len())),
    }
}

/// Sets its flag when dropped (also when a panic unwinds past it).
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

fn served_ok(s: &Server) -> f64 {
    s.metric("ghostline_requests_total{endpoint=\"/v1/completions\",status=\"200\"}")
}

/// Polls `done` every 50 ms until it holds; panics with `what` after `secs`.
fn wait_until(secs: u64, what: &str, mut done: impl FnMut() -> bool) {
    let t = Instant::now();
    while !done() {
        assert!(t.elapsed() < Duration::from_secs(secs), "{what} (waited {secs}s)");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_rolling_restart_under_load_fails_no_request_that_had_not_started_streaming() {
    let Some(nginx) = tool("nginx") else {
        eprintln!("skipped: no nginx (Debian package nginx; tests/run installs it)");
        return;
    };
    let redis = Redis::start();
    let pg = Postgres::start();
    let url = pg.url();
    let key = add_key(&["--database", url.as_str()], "team", &[]);
    let redis_url = redis.url();
    let launch = |addr: &str| {
        Launch::new(MODEL)
            .addr(addr)
            .args(&["--database", &url, "--redis", &redis_url, "--shutdown-grace-secs", "60"])
            .args(&["--body-timeout-secs", "60"])
            .start()
            .with_key(&key)
    };
    let mut reps = [launch("127.0.0.1:0"), launch("127.0.0.1:0"), launch("127.0.0.1:0")];
    let ports: Vec<u16> = reps.iter().map(|s| s.base.rsplit(':').next().unwrap().parse().unwrap()).collect();
    let lb = Nginx::start(&nginx, &ports);

    // Six simulated developers, each over eight files (48 affinity keys, so every replica owns
    // some), send completions back to back for the whole restart; two in three are streamed.
    let stop = AtomicBool::new(false);
    let finished = AtomicUsize::new(0);
    let outcomes = Mutex::new(Vec::new());
    let held_body = json!({"prompt": "def add(a, b):\n", "max_tokens": 4}).to_string();
    std::thread::scope(|s| {
        for w in 0..6 {
            let (stop, finished, outcomes, lb, key) = (&stop, &finished, &outcomes, &lb, &key);
            s.spawn(move || {
                let mut i = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    let affinity = format!("dev{w}-file{}", i % 8);
                    let prompt = format!("# developer {w}, edit {i}\ndef f{i}(");
                    let o = one_request(lb, key, &affinity, &prompt, !i.is_multiple_of(3));
                    outcomes.lock().unwrap().push(o);
                    finished.fetch_add(1, Ordering::Relaxed);
                    i += 1;
                }
            });
        }
        // Should an assertion below fail, the load stops, so that the scope ends and the test fails.
        let _stop_load = StopOnDrop(&stop);
        wait_until(120, "the load never got going", || finished.load(Ordering::Relaxed) >= 30);

        for (i, &port) in ports.iter().enumerate() {
            // A request that is running on the replica when SIGTERM comes (its handler waits for
            // the body) keeps it draining while the load goes on.
            let mut held = awaiting_body(&reps[i], held_body.len());
            let pid = reps[i].child.id().to_string();
            assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
            wait_until(30, "/ready never said 503 after SIGTERM", || reps[i].get("/ready").0 == 503);
            assert_eq!(reps[i].get("/ready").1["status"], "draining");
            let r = reps[i].req(reqwest::Method::POST, "/v1/completions").json(&json!({"prompt": "x"})).send().unwrap();
            assert_eq!(r.status().as_u16(), 503, "new work on a draining replica");
            assert_eq!(r.headers().get("retry-after").and_then(|v| v.to_str().ok()), Some("1"));
            // The balancer keeps answering meanwhile, from the other two.
            let at = finished.load(Ordering::Relaxed);
            wait_until(120, "no request got through while a replica drained", || {
                finished.load(Ordering::Relaxed) >= at + 20
            });
            held.write_all(held_body.as_bytes()).unwrap();
            let (answer, _) = read_until_closed(&mut held);
            assert_eq!(status_of(&answer), 200, "the request running at SIGTERM: {answer}");
            wait_until(60, "the drained replica did not exit", || reps[i].child.try_wait().unwrap().is_some());
            let exit = reps[i].child.wait().unwrap();
            assert!(exit.success(), "replica {i} exited {exit}");

            // Started again on the same port; the next replica goes only once this one is ready
            // and the balancer sends it work again.
            reps[i] = launch(&format!("127.0.0.1:{port}"));
            wait_until(60, "the restarted replica never got ready", || reps[i].get("/ready").0 == 200);
            wait_until(120, "the balancer sent the restarted replica nothing", || served_ok(&reps[i]) > 0.0);
        }
    });

    let outcomes = outcomes.into_inner().unwrap();
    let failed: Vec<&String> =
        outcomes.iter().filter_map(|o| if let Outcome::Failed(m) = o { Some(m) } else { None }).collect();
    let cut: Vec<&String> =
        outcomes.iter().filter_map(|o| if let Outcome::Cut(m) = o { Some(m) } else { None }).collect();
    let whole = outcomes.iter().filter(|o| matches!(o, Outcome::Whole)).count();
    eprintln!(
        "rolling restart: {} requests, {whole} whole, {} failed, {} cut",
        outcomes.len(),
        failed.len(),
        cut.len()
    );
    assert!(
        failed.is_empty(),
        "{} of {} requests failed before their response started: {failed:?}\nnginx: {}",
        failed.len(),
        outcomes.len(),
        lb.log()
    );
    // Every stream running at a SIGTERM finished within the grace (60 s).
    assert!(cut.is_empty(), "{} streams were cut: {cut:?}", cut.len());
    for (i, s) in reps.iter().enumerate() {
        assert!(served_ok(s) > 0.0, "replica {i} served nothing after its restart");
    }
}
