//! What happened to each suggestion, and getting that to the server off the keystroke path.
//!
//! Events come from explicit signals (the `ghostline.accepted` command, `didShowCompletion`,
//! `didPartiallyAcceptCompletion`) or are inferred from edits (`Outcomes`): after a suggestion is
//! served, the text inserted at its position decides —
//! - the inserted text contains the whole suggestion: `accepted`;
//! - it matched the suggestion's start and then went elsewhere: `partially_accepted` with the
//!   matched length, if the match came at least partly from one multi-character insert (an
//!   editor's accept-word / accept-line), else `rejected` (the user typed it themselves);
//! - anything else, a request elsewhere, or the document closed: `rejected`.
//!
//! Events queue in memory (bounded); a task posts them in batches (`POST /v1/telemetry`, every
//! few seconds or 100 events), retrying 429 / 503 / network errors with exponential backoff and
//! jitter, dropping a batch the server calls malformed (400). While the server is unreachable
//! they go to a spool file in the cache directory (bounded; the oldest are dropped and counted),
//! sent when it is back, also by a later process. Events carry ids the server deduplicates on.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ghostline_api::{TelemetryBatch, TelemetryEvent, TelemetryKind};
use parking_lot::{Mutex, RwLock};
use ropey::Rope;
use tokio::sync::mpsc;

use crate::cache::Anchor;
use crate::client::Api;

/// Events per POST.
pub const BATCH_EVENTS: usize = 100;
/// Longest wait before a partial batch is sent.
pub const BATCH_INTERVAL: Duration = Duration::from_secs(3);
/// Events waiting in memory; beyond it new events are dropped and counted.
const QUEUE_EVENTS: usize = 10_000;
/// Spool file bound.
pub const SPOOL_MAX_BYTES: u64 = 4 << 20;

pub fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// A suggestion on screen whose fate is not decided yet.
#[derive(Debug, Clone)]
struct Shown {
    anchor: Anchor,
    completion_id: String,
    index: u32,
    text: String,
    at: Instant,
    matched: usize,
    bulk_insert: bool,
    language: String,
}

/// Decides outcomes from edits, one open suggestion per document.
#[derive(Default)]
pub struct Outcomes {
    open: Vec<Shown>,
}

/// A decided outcome.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub completion_id: String,
    pub index: u32,
    pub kind: TelemetryKind,
    pub accepted_chars: Option<u32>,
    pub shown_ms: u64,
    pub language: String,
}

impl Outcomes {
    /// A suggestion was served at `anchor`. Any earlier one for the document is decided.
    pub fn shown(
        &mut self,
        anchor: Anchor,
        completion_id: &str,
        index: u32,
        text: &str,
        language: &str,
    ) -> Vec<Outcome> {
        let uri = anchor.uri.clone();
        let mut out = self.close_doc(&uri);
        // The same suggestion seen again while typing along is the one already tracked.
        out.retain(|o| o.completion_id != completion_id || o.kind != TelemetryKind::Rejected);
        self.open.push(Shown {
            anchor,
            completion_id: completion_id.into(),
            index,
            text: text.into(),
            at: Instant::now(),
            matched: 0,
            bulk_insert: false,
            language: language.into(),
        });
        out
    }

    fn decide(s: &Shown, kind: TelemetryKind, accepted: Option<usize>) -> Outcome {
        Outcome {
            completion_id: s.completion_id.clone(),
            index: s.index,
            kind,
            accepted_chars: accepted.map(|n| n as u32),
            shown_ms: s.at.elapsed().as_millis() as u64,
            language: s.language.clone(),
        }
    }

    fn verdict(s: &Shown) -> Outcome {
        if s.matched > 0 && s.bulk_insert {
            Self::decide(s, TelemetryKind::PartiallyAccepted, Some(s.matched))
        } else {
            Self::decide(s, TelemetryKind::Rejected, None)
        }
    }

    /// The document changed; `cursor` is the end of the last inserted text and `inserted` its
    /// length in characters.
    pub fn edited(&mut self, uri: &str, rope: &Rope, cursor: usize, inserted: usize) -> Vec<Outcome> {
        let mut out = Vec::new();
        self.open.retain_mut(|s| {
            if s.anchor.uri != uri {
                return true;
            }
            let typed = s.anchor.typed_since(uri, rope, cursor);
            match typed {
                Some(t) if t.starts_with(&s.text) => {
                    out.push(Self::decide(s, TelemetryKind::Accepted, Some(s.text.chars().count())));
                    false
                }
                Some(t) if s.text.starts_with(&t) => {
                    let n = t.chars().count();
                    if n > s.matched && inserted > 1 {
                        s.bulk_insert = true;
                    }
                    s.matched = n;
                    true
                }
                _ => {
                    out.push(Self::verdict(s));
                    false
                }
            }
        });
        out
    }

    /// The command on an accepted inline item ran.
    pub fn accepted(&mut self, completion_id: &str, index: u32) -> Option<Outcome> {
        let i = self.open.iter().position(|s| s.completion_id == completion_id && s.index == index)?;
        let s = self.open.remove(i);
        Some(Self::decide(&s, TelemetryKind::Accepted, Some(s.text.chars().count())))
    }

    /// The editor reported a partial accept of `chars` characters.
    pub fn partially_accepted(&mut self, completion_id: &str, chars: usize) -> Option<Outcome> {
        let s = self.open.iter_mut().find(|s| s.completion_id == completion_id)?;
        s.matched = s.matched.max(chars);
        Some(Self::decide(s, TelemetryKind::PartiallyAccepted, Some(chars)))
    }

    /// The document was closed, or the user asked elsewhere in it: its open suggestion is decided.
    pub fn close_doc(&mut self, uri: &str) -> Vec<Outcome> {
        let mut out = Vec::new();
        self.open.retain(|s| {
            if s.anchor.uri == uri {
                out.push(Self::verdict(s));
                false
            } else {
                true
            }
        });
        out
    }
}

/// The spool file: JSON lines of events waiting for the server.
pub struct Spool {
    path: PathBuf,
    max_bytes: u64,
    pub dropped: AtomicU64,
}

/// The user's cache directory for ghostline (`GHOSTLINE_CACHE_DIR`, `XDG_CACHE_HOME`,
/// `~/.cache`).
pub fn cache_dir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("GHOSTLINE_CACHE_DIR") {
        return Some(PathBuf::from(d));
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME") {
        return Some(PathBuf::from(d).join("ghostline"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache").join("ghostline"))
}

impl Spool {
    pub fn new(dir: &Path, max_bytes: u64) -> Spool {
        Spool { path: dir.join("telemetry-spool.jsonl"), max_bytes, dropped: AtomicU64::new(0) }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends events; when over the bound, the oldest are dropped and counted.
    pub fn append(&self, events: &[TelemetryEvent]) -> std::io::Result<()> {
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(&self.path)?;
        let mut buf = String::new();
        for e in events {
            if let Ok(line) = serde_json::to_string(e) {
                buf.push_str(&line);
                buf.push('\n');
            }
        }
        f.write_all(buf.as_bytes())?;
        drop(f);
        if std::fs::metadata(&self.path)?.len() > self.max_bytes {
            let text = std::fs::read_to_string(&self.path).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let mut keep = 0u64;
            let mut first = lines.len();
            while first > 0 && keep + (lines[first - 1].len() as u64) < self.max_bytes * 3 / 4 {
                first -= 1;
                keep += lines[first].len() as u64 + 1;
            }
            self.dropped.fetch_add(first as u64, Ordering::Relaxed);
            tracing::warn!("telemetry spool full: dropped the {first} oldest events");
            let tmp = self.path.with_extension("tmp");
            std::fs::write(&tmp, lines[first..].iter().map(|l| format!("{l}\n")).collect::<String>())?;
            std::fs::rename(&tmp, &self.path)?;
        }
        Ok(())
    }

    /// Claims the spooled events (renaming the file so another process cannot send them too).
    pub fn take(&self) -> Vec<TelemetryEvent> {
        let claimed = self.path.with_extension(format!("{}.sending", std::process::id()));
        if std::fs::rename(&self.path, &claimed).is_err() {
            return vec![];
        }
        let text = std::fs::read_to_string(&claimed).unwrap_or_default();
        let _ = std::fs::remove_file(&claimed);
        text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
    }
}

/// Where telemetry goes: a bounded queue in front of the sending task.
pub struct Telemetry {
    tx: Mutex<Option<mpsc::Sender<TelemetryEvent>>>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    pub dropped: AtomicU64,
    next: AtomicU64,
    session: String,
}

/// How a batch post ended.
#[derive(Debug, PartialEq)]
enum Sent {
    Stored,
    /// The server refused it as malformed: retrying cannot help.
    Refused(String),
    /// Worth retrying later (network, 429, 503, 5xx).
    Later(Option<u64>),
}

async fn post(api: &Api, events: &[TelemetryEvent]) -> Sent {
    let body = TelemetryBatch { events: events.to_vec() };
    match api.post_json("/v1/telemetry", &body, Duration::from_secs(10)).await {
        Ok((202, _)) | Ok((200, _)) => Sent::Stored,
        Ok((400, b)) | Ok((413, b)) => Sent::Refused(b),
        Ok((401, b)) => Sent::Refused(format!("401 {b}")),
        Ok(_) => Sent::Later(None),
        Err(_) => Sent::Later(None),
    }
}

fn jitter(base: Duration) -> Duration {
    let n = (unix_ms() ^ (std::process::id() as u64) << 7) % 1000;
    base + base.mul_f64(n as f64 / 2000.0)
}

impl Telemetry {
    /// Starts the sending task. `api` gives the current client (settings may change it).
    pub fn start(
        session: &str,
        spool: Option<Arc<Spool>>,
        api: impl Fn() -> Arc<Api> + Send + 'static,
    ) -> Arc<Telemetry> {
        let (tx, mut rx) = mpsc::channel::<TelemetryEvent>(QUEUE_EVENTS);
        let task = tokio::spawn(async move {
            let mut backoff = Duration::from_millis(500);
            let mut spool_retry = Instant::now();
            loop {
                // Collect a batch: up to BATCH_EVENTS, or what came within BATCH_INTERVAL.
                let mut batch = Vec::new();
                let deadline = tokio::time::Instant::now() + BATCH_INTERVAL;
                while batch.len() < BATCH_EVENTS {
                    match tokio::time::timeout_at(deadline, rx.recv()).await {
                        Ok(Some(e)) => batch.push(e),
                        Ok(None) => {
                            // Closing (shutdown): one try, then the spool.
                            if !batch.is_empty() {
                                if let (Sent::Later(_), Some(s)) = (post(&api(), &batch).await, &spool) {
                                    let _ = s.append(&batch);
                                }
                            }
                            return;
                        }
                        Err(_) => break,
                    }
                }
                // Spooled events from earlier (or from an earlier process) go first.
                if let Some(s) = &spool {
                    if Instant::now() >= spool_retry {
                        let old = s.take();
                        if !old.is_empty() {
                            let mut rest = old;
                            rest.append(&mut batch);
                            batch = rest;
                        }
                    }
                }
                let mut i = 0;
                while i < batch.len() {
                    let end = (i + BATCH_EVENTS * 10).min(batch.len());
                    let chunk = &batch[i..end];
                    let mut tries = 0;
                    loop {
                        match post(&api(), chunk).await {
                            Sent::Stored => {
                                backoff = Duration::from_millis(500);
                                break;
                            }
                            Sent::Refused(why) => {
                                tracing::warn!(
                                    "telemetry batch of {} refused, dropped: {}",
                                    chunk.len(),
                                    why.chars().take(300).collect::<String>()
                                );
                                break;
                            }
                            Sent::Later(retry_after) => {
                                tries += 1;
                                if tries >= 3 {
                                    match &spool {
                                        Some(s) => {
                                            if let Err(e) = s.append(&batch[i..]) {
                                                tracing::warn!("telemetry spool {}: {e}", s.path().display());
                                            }
                                        }
                                        None => {
                                            tracing::debug!("telemetry: {} events dropped (no spool)", batch.len() - i)
                                        }
                                    }
                                    spool_retry = Instant::now() + backoff;
                                    backoff = (backoff * 2).min(Duration::from_secs(60));
                                    i = batch.len();
                                    break;
                                }
                                let wait =
                                    retry_after.map(Duration::from_secs).unwrap_or_else(|| jitter(backoff * tries));
                                tokio::time::sleep(wait.min(Duration::from_secs(30))).await;
                            }
                        }
                    }
                    i = end.max(i);
                }
            }
        });
        Arc::new(Telemetry {
            tx: Mutex::new(Some(tx)),
            task: Mutex::new(Some(task)),
            dropped: AtomicU64::new(0),
            next: AtomicU64::new(0),
            session: session.to_string(),
        })
    }

    /// Queues an outcome seen in `editor` (never waits; a full queue drops and counts).
    pub fn record(&self, o: &Outcome, editor: Option<&str>) {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let e = TelemetryEvent {
            event_id: Some(format!("{}-{n}", self.session)),
            completion_id: o.completion_id.clone(),
            choice_index: o.index,
            kind: o.kind,
            accepted_chars: o.accepted_chars,
            shown_ms: Some(o.shown_ms),
            client_ts: Some(unix_ms()),
            editor: editor.map(str::to_string),
            language: Some(o.language.clone()),
        };
        let sent = self.tx.lock().as_ref().map(|tx| tx.try_send(e).is_ok());
        if sent != Some(true) {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Stops taking events and waits (up to `wait`) for the queued ones to be sent or spooled.
    pub async fn close(&self, wait: Duration) {
        self.tx.lock().take();
        let task = self.task.lock().take();
        if let Some(task) = task {
            let _ = tokio::time::timeout(wait, task).await;
        }
    }
}

/// The telemetry owner of the language server: the outcomes waiting on edits, the sender
/// (started on the first event, never when telemetry is off) and what it tags events with.
pub struct Recorder {
    session: String,
    outcomes: Mutex<Outcomes>,
    sender: Mutex<Option<Arc<Telemetry>>>,
    api: Arc<dyn Fn() -> Arc<Api> + Send + Sync>,
    /// The client reports shown suggestions itself (`didShowCompletion`).
    client_reports_shown: AtomicBool,
    /// The editor's name, from `clientInfo`.
    editor: RwLock<Option<String>>,
}

impl Recorder {
    /// `api` gives the client of the current settings.
    pub fn new(session: &str, api: impl Fn() -> Arc<Api> + Send + Sync + 'static) -> Recorder {
        Recorder {
            session: session.to_string(),
            outcomes: Mutex::new(Outcomes::default()),
            sender: Mutex::new(None),
            api: Arc::new(api),
            client_reports_shown: AtomicBool::new(false),
            editor: RwLock::new(None),
        }
    }

    pub fn set_editor(&self, name: Option<String>) {
        *self.editor.write() = name;
    }

    pub fn editor(&self) -> Option<String> {
        self.editor.read().clone()
    }

    /// Whether a sender runs.
    pub fn started(&self) -> bool {
        self.sender.lock().is_some()
    }

    /// Queues outcomes when `on` (nothing at all when telemetry is off).
    pub fn record(&self, on: bool, outcomes: &[Outcome]) {
        if outcomes.is_empty() || !on {
            return;
        }
        let t = {
            let mut t = self.sender.lock();
            if t.is_none() && tokio::runtime::Handle::try_current().is_ok() {
                let spool = cache_dir().map(|d| Arc::new(Spool::new(&d, SPOOL_MAX_BYTES)));
                let api = self.api.clone();
                *t = Some(Telemetry::start(&self.session, spool, move || api()));
            }
            t.clone()
        };
        if let Some(t) = t {
            let editor = self.editor();
            for o in outcomes {
                t.record(o, editor.as_deref());
            }
        }
    }

    /// Sends or spools what is queued (at shutdown).
    pub async fn close(&self) {
        let t = self.sender.lock().take();
        if let Some(t) = t {
            t.close(Duration::from_secs(2)).await;
        }
    }

    /// The document changed (see `Outcomes::edited`); returns what that decided.
    pub fn edited(&self, uri: &str, rope: &Rope, cursor: usize, inserted: usize) -> Vec<Outcome> {
        self.outcomes.lock().edited(uri, rope, cursor, inserted)
    }

    pub fn closed(&self, uri: &str) -> Vec<Outcome> {
        self.outcomes.lock().close_doc(uri)
    }

    pub fn accepted(&self, id: &str, index: u32) -> Vec<Outcome> {
        self.outcomes.lock().accepted(id, index).into_iter().collect()
    }

    pub fn partially_accepted(&self, id: &str, chars: usize) -> Vec<Outcome> {
        self.outcomes.lock().partially_accepted(id, chars).into_iter().collect()
    }

    /// The client reported a suggestion shown: from now on it reports them all.
    pub fn client_shown(&self, id: &str, index: u32, language: &str) -> Vec<Outcome> {
        self.client_reports_shown.store(true, Ordering::Relaxed);
        vec![shown_event(id, index, language)]
    }

    /// A suggestion goes on screen at `anchor`: earlier ones of the document are decided, and
    /// (unless the client reports it itself) a `shown` event is made for a new completion.
    pub fn on_screen(&self, anchor: Anchor, id: &str, text: &str, language: &str, new: bool) -> Vec<Outcome> {
        let mut out = self.outcomes.lock().shown(anchor, id, 0, text, language);
        if new && !self.client_reports_shown.load(Ordering::Relaxed) {
            out.push(shown_event(id, 0, language));
        }
        out
    }
}

fn shown_event(id: &str, index: u32, language: &str) -> Outcome {
    Outcome {
        completion_id: id.into(),
        index,
        kind: TelemetryKind::Shown,
        accepted_chars: None,
        shown_ms: 0,
        language: language.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(v: &[Outcome]) -> Vec<(TelemetryKind, Option<u32>)> {
        v.iter().map(|o| (o.kind, o.accepted_chars)).collect()
    }

    /// Replays (insert at char, text) edits after a suggestion shown at `at`.
    fn replay(doc: &str, at: usize, suggestion: &str, edits: &[(usize, &str)]) -> Vec<(TelemetryKind, Option<u32>)> {
        let mut rope = Rope::from_str(doc);
        let mut o = Outcomes::default();
        let mut out = o.shown(Anchor::new("u", &rope, at), "cmpl-1", 0, suggestion, "python");
        for (pos, text) in edits {
            rope.insert(*pos, text);
            out.extend(o.edited("u", &rope, pos + text.chars().count(), text.chars().count()));
        }
        out.extend(o.close_doc("u"));
        kinds(&out)
    }

    #[test]
    fn inferred_outcomes_from_recorded_edit_sequences() {
        use TelemetryKind::*;
        let doc = "x = \nprint(x)\n";
        // Accepted in one insert (Neovim/Helix apply the whole text).
        assert_eq!(replay(doc, 4, "compute(1)", &[(4, "compute(1)")]), vec![(Accepted, Some(10))]);
        // Typed along to the end by hand: accepted.
        let typed: Vec<(usize, String)> =
            "compute(1)".chars().enumerate().map(|(i, c)| (4 + i, c.to_string())).collect();
        let typed: Vec<(usize, &str)> = typed.iter().map(|(i, s)| (*i, s.as_str())).collect();
        assert_eq!(replay(doc, 4, "compute(1)", &typed), vec![(Accepted, Some(10))]);
        // Accept-word then typed something else: partially accepted, 8 chars.
        assert_eq!(replay(doc, 4, "compute(1)", &[(4, "compute("), (12, "2")]), vec![(PartiallyAccepted, Some(8))]);
        // Typed the first letters by hand then diverged: rejected.
        assert_eq!(replay(doc, 4, "compute(1)", &[(4, "c"), (5, "a")]), vec![(Rejected, None)]);
        // Typed something else at once; edited elsewhere; left without typing: rejected.
        assert_eq!(replay(doc, 4, "compute(1)", &[(4, "y")]), vec![(Rejected, None)]);
        assert_eq!(replay(doc, 4, "compute(1)", &[(10, "z")]), vec![(Rejected, None)]);
        assert_eq!(replay(doc, 4, "compute(1)", &[]), vec![(Rejected, None)]);
    }

    #[test]
    fn explicit_signals_decide_and_a_new_suggestion_closes_the_old() {
        let rope = Rope::from_str("abc\n");
        let mut o = Outcomes::default();
        assert!(o.shown(Anchor::new("u", &rope, 3), "c1", 0, "def", "rust").is_empty());
        assert_eq!(o.partially_accepted("c1", 2).unwrap().kind, TelemetryKind::PartiallyAccepted);
        assert_eq!(o.accepted("c1", 0).unwrap().accepted_chars, Some(3));
        assert!(o.accepted("c1", 0).is_none(), "decided once");
        o.shown(Anchor::new("u", &rope, 3), "c2", 0, "xyz", "rust");
        let out = o.shown(Anchor::new("u", &rope, 0), "c3", 0, "q", "rust");
        assert_eq!(kinds(&out), vec![(TelemetryKind::Rejected, None)]);
    }

    #[test]
    fn the_spool_is_bounded_and_claimed_once() {
        let dir = std::env::temp_dir().join(format!("ghostline-spool-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let spool = Spool::new(&dir, 4096);
        let ev = |i: u32| TelemetryEvent {
            event_id: Some(format!("e{i}")),
            completion_id: "cmpl-x".into(),
            choice_index: 0,
            kind: TelemetryKind::Shown,
            accepted_chars: None,
            shown_ms: None,
            client_ts: Some(1),
            editor: None,
            language: None,
        };
        let events: Vec<_> = (0..100).map(ev).collect();
        spool.append(&events).unwrap();
        assert!(std::fs::metadata(spool.path()).unwrap().len() <= 4096);
        let dropped = spool.dropped.load(Ordering::Relaxed);
        assert!(dropped > 0);
        let back = spool.take();
        assert_eq!(back.len() as u64 + dropped, 100);
        assert_eq!(back.last().unwrap().event_id.as_deref(), Some("e99"), "the newest are kept");
        assert!(spool.take().is_empty(), "claimed once");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
