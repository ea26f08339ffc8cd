//! What the server's integration tests share: the real `ghostline-server` binary on a loopback
//! port, and real Redis and PostgreSQL servers started for a test and stopped after it.

#![allow(dead_code)]

pub mod raw;

use std::io::{BufRead, BufReader, Read};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("engine/tests/fixtures").join(name)
}

/// A directory removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicU32 = AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!(
            "ghostline-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
    pub fn arg(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ghostline-server"))
}

/// `ghostline-server keys …` on a data dir (and database URL); panics unless it succeeds.
pub fn keys(db: &[&str], args: &[&str]) -> String {
    let out = keys_output(db, args);
    assert!(out.status.success(), "keys {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

pub fn keys_output(db: &[&str], args: &[&str]) -> Output {
    bin().arg("keys").args(db).args(args).output().unwrap()
}

/// Adds a key and returns it (the last line printed).
pub fn add_key(db: &[&str], name: &str, limits: &[&str]) -> String {
    let mut args = vec!["add", name];
    args.extend(limits);
    keys(db, &args).lines().last().unwrap().trim().to_string()
}

pub struct Server {
    pub child: Child,
    pub base: String,
    /// Sent as `Authorization: Bearer` when set.
    pub key: Option<String>,
    pub data: Option<TempDir>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How to start a server.
pub struct Launch<'a> {
    pub model: &'a str,
    pub args: Vec<String>,
    pub envs: Vec<(String, String)>,
    /// The data dir; a fresh one when None.
    pub data_dir: Option<&'a Path>,
    /// Where stderr goes (inherited when None).
    pub stderr: Option<&'a Path>,
    /// The address to listen on; a free loopback port when None.
    pub addr: Option<String>,
}

impl<'a> Launch<'a> {
    pub fn new(model: &'a str) -> Launch<'a> {
        Launch { model, args: Vec::new(), envs: Vec::new(), data_dir: None, stderr: None, addr: None }
    }
    pub fn args(mut self, a: &[&str]) -> Self {
        self.args.extend(a.iter().map(|s| s.to_string()));
        self
    }
    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.envs.push((k.into(), v.into()));
        self
    }
    pub fn data_dir(mut self, d: &'a Path) -> Self {
        self.data_dir = Some(d);
        self
    }
    pub fn stderr(mut self, p: &'a Path) -> Self {
        self.stderr = Some(p);
        self
    }
    /// Listen on this address (a replica started again on its port).
    pub fn addr(mut self, a: &str) -> Self {
        self.addr = Some(a.to_string());
        self
    }
    pub fn start(self) -> Server {
        let own = self.data_dir.is_none().then(|| TempDir::new("data"));
        let dir = self.data_dir.unwrap_or_else(|| own.as_ref().unwrap().path());
        let stderr = match self.stderr {
            Some(p) => Stdio::from(std::fs::File::create(p).unwrap()),
            None => Stdio::inherit(),
        };
        let mut child = bin()
            .env("GHOSTLINE_LOG", "warn")
            .envs(self.envs.iter().map(|(k, v)| (k, v)))
            .args(["serve", "--addr", self.addr.as_deref().unwrap_or("127.0.0.1:0"), "--model"])
            .arg(fixture(self.model))
            .args(["--threads", "2", "--data-dir"])
            .arg(dir)
            .args(&self.args)
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("starting ghostline-server");
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        let base = line
            .trim()
            .strip_prefix("ghostline-server listening on ")
            .unwrap_or_else(|| panic!("unexpected first line: {line:?}"))
            .to_string();
        Server { child, base, key: None, data: own }
    }
}

pub fn start(model: &str, extra: &[&str]) -> Server {
    Launch::new(model).args(extra).start()
}

pub fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder().timeout(Duration::from_secs(60)).build().unwrap()
}

impl Server {
    pub fn with_key(mut self, key: &str) -> Server {
        self.key = Some(key.to_string());
        self
    }
    pub fn req(&self, method: reqwest::Method, path: &str) -> reqwest::blocking::RequestBuilder {
        let r = client().request(method, format!("{}{path}", self.base));
        match &self.key {
            Some(k) => r.bearer_auth(k),
            None => r,
        }
    }
    pub fn post_raw(&self, body: impl Into<reqwest::blocking::Body>) -> (u16, Value) {
        let r = self
            .req(reqwest::Method::POST, "/v1/completions")
            .header("content-type", "application/json")
            .body(body)
            .send()
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().unwrap_or(Value::Null))
    }
    pub fn complete(&self, body: Value) -> Value {
        let (s, v) = self.post_raw(body.to_string());
        assert_eq!(s, 200, "{v}");
        v
    }
    /// Streams a completion and returns every `data:` payload in order.
    pub fn stream(&self, mut body: Value) -> Vec<String> {
        body["stream"] = json!(true);
        let r = self.req(reqwest::Method::POST, "/v1/completions").json(&body).send().unwrap();
        assert_eq!(r.status().as_u16(), 200);
        assert!(r.headers()["content-type"].to_str().unwrap().starts_with("text/event-stream"));
        let mut text = String::new();
        BufReader::new(r).read_to_string(&mut text).unwrap();
        text.split("\n\n")
            .filter(|e| !e.trim().is_empty())
            .map(|e| e.strip_prefix("data: ").unwrap_or_else(|| panic!("not an SSE data line: {e:?}")).to_string())
            .collect()
    }
    pub fn get(&self, path: &str) -> (u16, Value) {
        let r = self.req(reqwest::Method::GET, path).send().unwrap();
        let status = r.status().as_u16();
        (status, r.json().unwrap_or(Value::Null))
    }
    pub fn telemetry(&self, body: &Value) -> (u16, Value) {
        let r = self.req(reqwest::Method::POST, "/v1/telemetry").json(body).send().unwrap();
        let status = r.status().as_u16();
        (status, r.json().unwrap_or(Value::Null))
    }
    pub fn metrics(&self) -> String {
        self.req(reqwest::Method::GET, "/metrics").send().unwrap().text().unwrap()
    }
    pub fn metric(&self, name: &str) -> f64 {
        self.metrics()
            .lines()
            .filter(|l| l.starts_with(name) && !l.starts_with('#'))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }
}

pub fn streamed_text(events: &[String]) -> (String, Value) {
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let mut text = String::new();
    let mut last = Value::Null;
    for e in &events[..events.len() - 1] {
        let v: Value = serde_json::from_str(e).unwrap();
        text.push_str(v["choices"][0]["text"].as_str().unwrap());
        last = v;
    }
    (text, last)
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn wait_for_port(port: u16, what: &str) {
    let t = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(t.elapsed() < Duration::from_secs(20), "{what} did not start on port {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A real `redis-server` on a loopback port, without persistence.
pub struct Redis {
    child: Option<Child>,
    pub port: u16,
    dir: TempDir,
}

impl Redis {
    pub fn start() -> Redis {
        let mut r = Redis { child: None, port: free_port(), dir: TempDir::new("redis") };
        r.restart();
        r
    }
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
    /// Starts it (again) on the same port.
    pub fn restart(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server is needed for this test (Debian package redis-server; tests/run installs it)");
        self.child = Some(child);
        wait_for_port(self.port, "redis-server");
    }
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A throwaway PostgreSQL cluster on a loopback port (Debian's postgresql package). As root,
/// the cluster runs as the `postgres` system user, since PostgreSQL refuses to run as root.
pub struct Postgres {
    dir: TempDir,
    bin: PathBuf,
    pub port: u16,
    as_postgres: bool,
}

fn pg_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("PATH")
        .and_then(|path| std::env::split_paths(&path).find(|d| d.join("pg_ctl").exists() && d.join("initdb").exists()))
    {
        return p;
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL is needed for this test (Debian package postgresql; tests/run installs it)")
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|p| p.join("pg_ctl").exists())
        .collect();
    versions.sort();
    versions.pop().expect("no PostgreSQL server binaries under /usr/lib/postgresql")
}

impl Postgres {
    fn run(&self, tool: &str, args: &[&str]) {
        let exe = self.bin.join(tool);
        let mut c = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(exe);
            c
        } else {
            Command::new(exe)
        };
        let out = c.args(args).stdin(Stdio::null()).output().unwrap();
        assert!(
            out.status.success(),
            "{tool} {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn start() -> Postgres {
        let as_postgres = Command::new("id").arg("-u").output().map(|o| o.stdout.starts_with(b"0\n")).unwrap_or(false);
        let pg = Postgres { dir: TempDir::new("pg"), bin: pg_bin(), port: free_port(), as_postgres };
        if as_postgres {
            let ok = Command::new("chown").args(["-R", "postgres:postgres", pg.dir.arg()]).status().unwrap();
            assert!(ok.success());
        }
        let data = pg.data();
        pg.run("initdb", &["-D", &data, "-A", "trust", "-U", "ghostline", "--no-sync", "--no-instructions"]);
        pg.restart();
        pg
    }

    fn data(&self) -> String {
        self.dir.path().join("data").to_str().unwrap().to_string()
    }

    /// Starts the cluster (again) on the same port.
    pub fn restart(&self) {
        let opts = format!("-p {} -c listen_addresses=127.0.0.1 -k {} -c fsync=off", self.port, self.dir.arg());
        let log = self.dir.path().join("log");
        self.run("pg_ctl", &["-D", &self.data(), "-o", &opts, "-l", log.to_str().unwrap(), "-w", "start"]);
    }

    pub fn stop(&self) {
        self.run("pg_ctl", &["-D", &self.data(), "-m", "immediate", "-w", "stop"]);
    }

    pub fn url(&self) -> String {
        format!("postgres://ghostline@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let data = self.dir.path().join("data");
        let exe = self.bin.join("pg_ctl");
        let args = ["-D", data.to_str().unwrap(), "-m", "immediate", "stop"];
        let _ = if self.as_postgres {
            Command::new("runuser").args(["-u", "postgres", "--"]).arg(exe).args(args).output()
        } else {
            Command::new(exe).args(args).output()
        };
    }
}
