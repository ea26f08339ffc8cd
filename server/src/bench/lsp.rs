//! A typist at a real language server: the `ghostline` binary over stdio, pointed at the server
//! under test, with a few of the files open. A region of one file is taken out and typed back
//! character by character, each keystroke a `didChange` followed by an automatic
//! `textDocument/inlineCompletion`, as an editor sends them; the language server waits, asks
//! the server and answers (a newer keystroke ends the older request); at some line ends the
//! typist pauses, long enough for a suggestion to arrive. Then the next region.
//! Counts the answers; the soak samples the process's RSS through the PID it publishes.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use ghostline_engine::sampling::Rng;
use serde_json::{json, Value};

/// Documents open at once; the typing goes round them.
const OPEN_DOCS: usize = 4;
/// Longest region typed back at a time, in bytes.
const REGION: usize = 400;
/// The share of line ends the typist pauses at, and for how long (ms).
const LINE_END_PAUSE: (f64, f64) = (0.3, 1500.0);
/// Requests left unanswered at most; beyond it a keystroke sends none.
const MAX_OUTSTANDING: usize = 32;

pub struct LspArgs {
    pub bin: PathBuf,
    pub url: String,
    pub key: Option<String>,
    /// Its cache dir (telemetry spool) and stderr log go here.
    pub dir: PathBuf,
    pub key_ms: f64,
    pub seed: u64,
    pub deadline: Instant,
}

#[derive(Default, serde::Serialize)]
pub struct LspStats {
    pub pid: u32,
    pub keystrokes: u64,
    pub requests: u64,
    /// Keystrokes that sent no request because too many were unanswered.
    pub skipped: u64,
    pub with_items: u64,
    pub empty: u64,
    pub errors: u64,
    pub unanswered_at_end: usize,
    /// Its own `ghostline/stats` at the end.
    pub stats: Value,
    /// Whether it exited by itself before the end of the run, and how it ended.
    pub exited_early: bool,
    pub exit: String,
}

struct Doc {
    uri: String,
    /// The file, of which `text[cut..cut + len]` is still to be typed.
    text: String,
    cut: usize,
    len: usize,
    version: i64,
}

impl Doc {
    /// What the editor holds now.
    fn current(&self) -> String {
        format!("{}{}", &self.text[..self.cut], &self.text[self.cut + self.len..])
    }
}

struct Conn {
    child: Child,
    stdin: ChildStdin,
    rx: Receiver<Value>,
    next_id: i64,
}

impl Conn {
    fn send(&mut self, msg: &Value) -> anyhow::Result<()> {
        let body = msg.to_string();
        write!(self.stdin, "Content-Length: {}\r\n\r\n{body}", body.len())?;
        self.stdin.flush()?;
        Ok(())
    }
    fn notify(&mut self, method: &str, params: Value) -> anyhow::Result<()> {
        self.send(&json!({"jsonrpc": "2.0", "method": method, "params": params}))
    }
    fn request(&mut self, method: &str, params: Value) -> anyhow::Result<i64> {
        self.next_id += 1;
        let id = self.next_id;
        self.send(&json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}))?;
        Ok(id)
    }
}

fn reader(out: impl Read + Send + 'static) -> Receiver<Value> {
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        let mut out = BufReader::new(out);
        loop {
            let mut len = None;
            loop {
                let mut line = String::new();
                if out.read_line(&mut line).unwrap_or(0) == 0 {
                    return;
                }
                let line = line.trim_end();
                if line.is_empty() {
                    break;
                }
                if let Some(v) = line.strip_prefix("Content-Length: ") {
                    len = v.parse::<usize>().ok();
                }
            }
            let Some(len) = len else { return };
            let mut buf = vec![0; len];
            if out.read_exact(&mut buf).is_err() {
                return;
            }
            let Ok(v) = serde_json::from_slice::<Value>(&buf) else { return };
            if tx.send(v).is_err() {
                return;
            }
        }
    });
    rx
}

/// Whether a file of the soak's set (Rust and Python sources) is Rust.
fn rust(text: &str) -> bool {
    text.contains("fn ") && (text.contains("use ") || text.contains("let "))
}

/// The width of `line` in the negotiated encoding (UTF-8 bytes or UTF-16 units).
fn units(line: &str, utf8: bool) -> usize {
    if utf8 {
        line.len()
    } else {
        line.encode_utf16().count()
    }
}

/// Line and column of byte `at` of `text`.
fn position(text: &str, at: usize, utf8: bool) -> (usize, usize) {
    let before = &text[..at];
    let line = before.matches('\n').count();
    let start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, units(&before[start..], utf8))
}

/// A region of `text` to type back: a line start and up to `REGION` bytes.
fn region(text: &str, rng: &mut Rng) -> (usize, usize) {
    let mut at = (rng.next_u64() % text.len().max(1) as u64) as usize;
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    let at = text[..at].rfind('\n').map_or(0, |i| i + 1);
    let mut end = (at + REGION).min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    (at, end - at)
}

pub fn run(a: LspArgs, files: &[String], pid: &AtomicU32) -> anyhow::Result<LspStats> {
    if files.is_empty() {
        bail!("no files to type");
    }
    std::fs::create_dir_all(&a.dir).with_context(|| format!("creating {}", a.dir.display()))?;
    let log = std::fs::File::create(a.dir.join("stderr.log"))?;
    let mut cmd = Command::new(&a.bin);
    cmd.env("GHOSTLINE_SERVER_URL", &a.url)
        .env("GHOSTLINE_CACHE_DIR", a.dir.join("cache"))
        .env("GHOSTLINE_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(log);
    match &a.key {
        Some(k) => cmd.env("GHOSTLINE_API_KEY", k),
        None => cmd.env_remove("GHOSTLINE_API_KEY"),
    };
    let mut child = cmd.spawn().with_context(|| format!("starting {}", a.bin.display()))?;
    let stdin = child.stdin.take().context("the language server's stdin")?;
    let rx = reader(child.stdout.take().context("the language server's stdout")?);
    let mut st = LspStats { pid: child.id(), ..LspStats::default() };
    pid.store(child.id(), Ordering::Relaxed);
    let mut c = Conn { child, stdin, rx, next_id: 0 };
    let result = session(&mut c, &a, files, &mut st);
    let _ = c.request("shutdown", Value::Null);
    let _ = c.notify("exit", Value::Null);
    let t = Instant::now();
    let status = loop {
        match c.child.try_wait() {
            Ok(Some(s)) => break Some(s),
            Ok(None) if t.elapsed() < Duration::from_secs(10) => std::thread::sleep(Duration::from_millis(50)),
            _ => break None,
        }
    };
    st.exit = match status {
        Some(s) => s.to_string(),
        None => {
            let _ = c.child.kill();
            let _ = c.child.wait();
            "killed: no exit within 10 s of `exit`".into()
        }
    };
    pid.store(0, Ordering::Relaxed);
    result.map(|()| st)
}

fn session(c: &mut Conn, a: &LspArgs, files: &[String], st: &mut LspStats) -> anyhow::Result<()> {
    let mut rng = Rng::new(a.seed.wrapping_mul(7919).wrapping_add(17));
    let init = c.request(
        "initialize",
        json!({"processId": null, "rootUri": null, "clientInfo": {"name": "ghostline-soak"},
               "capabilities": {"general": {"positionEncodings": ["utf-8", "utf-16"]}},
               "initializationOptions": {}}),
    )?;
    let mut outstanding: HashMap<i64, Instant> = HashMap::new();
    let until = Instant::now() + Duration::from_secs(60);
    let utf8 = loop {
        let m = match c.rx.recv_timeout(until.saturating_duration_since(Instant::now())) {
            Ok(m) => m,
            Err(_) => bail!("no answer to initialize within 60 s"),
        };
        if m["id"] == json!(init) && m.get("method").is_none() {
            break m["result"]["capabilities"]["positionEncoding"] == "utf-8";
        }
    };
    c.notify("initialized", json!({}))?;
    let mut docs: Vec<Doc> = (0..OPEN_DOCS.min(files.len()))
        .map(|i| {
            let text = files[(rng.next_u64() as usize + i) % files.len()].clone();
            let (cut, len) = region(&text, &mut rng);
            let ext = if rust(&text) { "rs" } else { "py" };
            Doc { uri: format!("file:///soak/doc{i}.{ext}"), text, cut, len, version: 1 }
        })
        .collect();
    for d in &docs {
        let lang = if rust(&d.text) { "rust" } else { "python" };
        c.notify(
            "textDocument/didOpen",
            json!({"textDocument": {"uri": d.uri, "languageId": lang, "version": d.version, "text": d.current()}}),
        )?;
    }
    let mut k = 0;
    while Instant::now() < a.deadline {
        drain(c, st, &mut outstanding, Duration::ZERO)?;
        let d = &mut docs[k];
        if d.len == 0 {
            // This region is typed: the next one, sent as the whole new text.
            let (cut, len) = region(&d.text, &mut rng);
            (d.cut, d.len) = (cut, len);
            d.version += 1;
            c.notify(
                "textDocument/didChange",
                json!({"textDocument": {"uri": d.uri, "version": d.version}, "contentChanges": [{"text": d.current()}]}),
            )?;
            k = (k + 1) % docs.len();
            continue;
        }
        let ch = d.text[d.cut..].chars().next().map_or(' ', |c| c);
        let (line, col) = position(&d.text, d.cut, utf8);
        d.cut += ch.len_utf8();
        d.len -= ch.len_utf8();
        d.version += 1;
        let at = json!({"line": line, "character": col});
        c.notify(
            "textDocument/didChange",
            json!({"textDocument": {"uri": d.uri, "version": d.version},
                   "contentChanges": [{"range": {"start": at, "end": at}, "text": ch.to_string()}]}),
        )?;
        st.keystrokes += 1;
        let (line, col) = position(&d.text, d.cut, utf8);
        if outstanding.len() < MAX_OUTSTANDING {
            let id = c.request(
                "textDocument/inlineCompletion",
                json!({"textDocument": {"uri": d.uri}, "position": {"line": line, "character": col},
                       "context": {"triggerKind": 2}}),
            )?;
            outstanding.insert(id, Instant::now());
            st.requests += 1;
        } else {
            st.skipped += 1;
        }
        let mut gap = (-(1.0 - rng.next_f64()).ln() * a.key_ms).max(30.0);
        if ch == '\n' && rng.next_f64() < LINE_END_PAUSE.0 {
            // A pause at a line's end, where a suggestion has time to arrive.
            gap += LINE_END_PAUSE.1;
        }
        drain(c, st, &mut outstanding, Duration::from_secs_f64(gap / 1000.0))?;
    }
    let end = Instant::now() + Duration::from_secs(30);
    while !outstanding.is_empty() && Instant::now() < end {
        drain(c, st, &mut outstanding, Duration::from_millis(100))?;
    }
    st.unanswered_at_end = outstanding.len();
    let id = c.request("ghostline/stats", Value::Null)?;
    let end = Instant::now() + Duration::from_secs(10);
    while Instant::now() < end {
        match c.rx.recv_timeout(Duration::from_millis(100)) {
            Ok(m) if m["id"] == json!(id) && m.get("method").is_none() => {
                st.stats = m["result"].clone();
                break;
            }
            Ok(m) => answer(c, st, &mut outstanding, m)?,
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
    }
    Ok(())
}

/// Takes the language server's messages for up to `wait`.
fn drain(
    c: &mut Conn,
    st: &mut LspStats,
    outstanding: &mut HashMap<i64, Instant>,
    wait: Duration,
) -> anyhow::Result<()> {
    let end = Instant::now() + wait;
    loop {
        let left = end.saturating_duration_since(Instant::now());
        let m = if left.is_zero() { c.rx.try_recv().ok() } else { c.rx.recv_timeout(left).ok() };
        match m {
            Some(m) => answer(c, st, outstanding, m)?,
            None => {
                if let Ok(Some(s)) = c.child.try_wait() {
                    st.exited_early = true;
                    bail!("the language server exited during the run: {s}");
                }
                if Instant::now() >= end {
                    return Ok(());
                }
            }
        }
    }
}

fn answer(c: &mut Conn, st: &mut LspStats, outstanding: &mut HashMap<i64, Instant>, m: Value) -> anyhow::Result<()> {
    match (m.get("id").and_then(Value::as_i64), m.get("method")) {
        // A request of the server's own (progress, registrations): answered empty.
        (_, Some(_)) if m.get("id").is_some() => {
            c.send(&json!({"jsonrpc": "2.0", "id": m["id"], "result": null}))?;
        }
        (Some(id), None) if outstanding.remove(&id).is_some() => {
            if m.get("error").is_some() {
                st.errors += 1;
            } else if m["result"]["items"].as_array().is_some_and(|i| !i.is_empty()) {
                st.with_items += 1;
            } else {
                st.empty += 1;
            }
        }
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_count_in_the_negotiated_encoding() {
        let t = "a\nx\u{e9}\u{1f600}y";
        assert_eq!(position(t, 0, true), (0, 0));
        assert_eq!(position(t, 2, false), (1, 0));
        let y = t.find('y').unwrap();
        assert_eq!(position(t, y, true), (1, 1 + 2 + 4));
        assert_eq!(position(t, y, false), (1, 1 + 1 + 2));
    }
}
