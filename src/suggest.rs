//! The keystroke path: documents and their trees, and `suggest`, which turns a cursor into
//! suggestions: trigger decision, typed-ahead cache, debounce, supersession, a shared streaming
//! fetch, post-processing. Both the LSP and `ghostline complete` drive it.
//!
//! Invariant: no lock is held across an await; every wait ends when a newer keystroke for the
//! same document arrives, or at the request deadline.

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use ghostline_api::ContextSnippet;
use lru::LruCache;
use serde_json::{json, Value};
use tokio::sync::watch;

use crate::cache::{remainders, Anchor, Entry, SuggestionCache};
use crate::client::{Api, ApiError, Fetch};
use crate::context::{self, ContextConfig};
use crate::document::{Document, Position, PositionEncoding};
use crate::postprocess;
use crate::settings::Settings;
use crate::snippets::{identifiers, SnippetIndex, WINDOW_LINES};
use crate::syntax::Syntax;
use crate::telemetry::{Outcome, Outcomes, Spool, Telemetry, SPOOL_MAX_BYTES};
use crate::trigger::{self, Mode};
use ghostline_api::TelemetryKind;

/// Recently closed documents kept for snippets.
const CLOSED_KEPT: usize = 16;
/// Documents larger than this get no syntax tree.
const MAX_PARSED_BYTES: usize = 8 << 20;
/// Documents larger than this give no snippets.
const MAX_SNIPPET_SOURCE_BYTES: usize = 2 << 20;
/// Suggestions kept for typed-ahead and revisits.
const CACHE_ENTRIES: usize = 256;

struct DocState {
    doc: Document,
    syntax: Option<Syntax>,
    path: String,
    /// Bumped on every change and every request: a waiter that sees it move is superseded.
    generation: watch::Sender<u64>,
}

/// How a suggestion was answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// From the cache of recent suggestions (typed-ahead or a revisited position).
    Cache,
    /// From a stream already in flight for an earlier keystroke.
    Reused,
    /// From a new request to the server.
    Fetched,
}

/// Suggestions at a cursor.
#[derive(Debug, Clone)]
pub struct Suggestion {
    pub id: String,
    /// (candidate index, text to insert at the cursor).
    pub items: Vec<(u32, String)>,
    pub position: Position,
    pub source: Source,
    pub mode: Mode,
}

/// Counters for logs and benchmarks.
#[derive(Default, Debug)]
pub struct Counters {
    pub requests: AtomicU64,
    pub fetches: AtomicU64,
    pub cache_hits: AtomicU64,
    pub reused: AtomicU64,
    pub superseded: AtomicU64,
    pub skipped: AtomicU64,
    pub errors: AtomicU64,
}

/// What a request asks for.
#[derive(Debug, Clone, Copy)]
pub struct Ask {
    /// The user asked explicitly (answered even mid-word; no debounce).
    pub invoked: bool,
    /// Candidates wanted.
    pub n: u32,
    /// Wait for the debounce interval first.
    pub debounce: bool,
}

/// What the user is told about the server, once per change of state.
#[derive(Debug, Clone, PartialEq)]
pub struct Notice {
    /// `ready`, `error`, `unauthorized` or `limited` (the `$/ghostline/status` state).
    pub state: &'static str,
    pub message: String,
    /// Show it to the user (`window/showMessage`), not just as a status.
    pub show: bool,
}

/// The server's state as requests see it.
#[derive(Debug, Clone, PartialEq)]
enum Health {
    Ok,
    /// Unreachable or failing: no request before `until`; the wait doubles up to 30 s.
    Down {
        until: Instant,
        backoff: Duration,
    },
    /// 401: nothing more until the settings change.
    Unauthorized,
    /// 429: nothing before `until` (Retry-After).
    Limited {
        until: Instant,
    },
}

pub struct Core {
    docs: Mutex<HashMap<String, DocState>>,
    closed: Mutex<LruCache<String, (Document, String)>>,
    pub settings: RwLock<Settings>,
    pub encoding: RwLock<PositionEncoding>,
    cache: Mutex<SuggestionCache>,
    inflight: Mutex<HashMap<String, Arc<Fetch>>>,
    snippets: Mutex<SnippetIndex>,
    api: Arc<RwLock<Arc<Api>>>,
    /// The model's context length once known.
    context_length: Mutex<Option<usize>>,
    pub root: RwLock<Option<std::path::PathBuf>>,
    pub session: String,
    pub counters: Counters,
    health: Mutex<Health>,
    notices: Mutex<Option<tokio::sync::mpsc::UnboundedSender<Notice>>>,
    outcomes: Mutex<Outcomes>,
    telemetry: Mutex<Option<Arc<Telemetry>>>,
    /// The client reports shown suggestions itself (`didShowCompletion`).
    pub client_reports_shown: std::sync::atomic::AtomicBool,
    /// The editor's name, from `clientInfo`.
    pub editor: RwLock<Option<String>>,
}

fn session_id() -> String {
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    format!("lsp-{:x}-{:x}", std::process::id(), t)
}

impl Core {
    pub fn new(settings: Settings) -> Arc<Core> {
        let api = Arc::new(Api::new(&settings.server_url, settings.api_key.clone()));
        Arc::new(Core {
            docs: Mutex::new(HashMap::new()),
            closed: Mutex::new(LruCache::new(NonZeroUsize::new(CLOSED_KEPT).unwrap_or(NonZeroUsize::MIN))),
            settings: RwLock::new(settings),
            encoding: RwLock::new(PositionEncoding::Utf16),
            cache: Mutex::new(SuggestionCache::new(CACHE_ENTRIES)),
            inflight: Mutex::new(HashMap::new()),
            snippets: Mutex::new(SnippetIndex::default()),
            api: Arc::new(RwLock::new(api)),
            context_length: Mutex::new(None),
            root: RwLock::new(None),
            session: session_id(),
            counters: Counters::default(),
            health: Mutex::new(Health::Ok),
            notices: Mutex::new(None),
            outcomes: Mutex::new(Outcomes::default()),
            telemetry: Mutex::new(None),
            client_reports_shown: std::sync::atomic::AtomicBool::new(false),
            editor: RwLock::new(None),
        })
    }

    pub fn settings(&self) -> Settings {
        self.settings.read().map(|s| s.clone()).unwrap_or_default()
    }

    pub fn api(&self) -> Arc<Api> {
        current_api(&self.api)
    }

    /// Applies a settings object; returns warnings for fields it could not use.
    pub fn update_settings(&self, v: &Value) -> Vec<String> {
        let Ok(mut s) = self.settings.write() else { return vec![] };
        let before = (s.server_url.clone(), s.api_key.clone());
        let warnings = s.update(v);
        if before != (s.server_url.clone(), s.api_key.clone()) {
            if let Ok(mut api) = self.api.write() {
                *api = Arc::new(Api::new(&s.server_url, s.api_key.clone()));
            }
            if let Ok(mut c) = self.context_length.lock() {
                *c = None;
            }
            self.set_health(Health::Ok, None);
        }
        warnings
    }

    /// Where notices about the server's state go (the LSP shows them).
    pub fn set_notices(&self, tx: tokio::sync::mpsc::UnboundedSender<Notice>) {
        if let Ok(mut n) = self.notices.lock() {
            *n = Some(tx);
        }
    }

    fn notify(&self, n: Notice) {
        if let Some(tx) = self.notices.lock().ok().and_then(|t| t.clone()) {
            let _ = tx.send(n);
        }
    }

    fn set_health(&self, h: Health, notice: Option<Notice>) {
        if let Ok(mut cur) = self.health.lock() {
            *cur = h;
        }
        if let Some(n) = notice {
            self.notify(n);
        }
    }

    /// Whether a request may go to the server now.
    fn may_ask(&self) -> bool {
        let Ok(h) = self.health.lock() else { return true };
        match &*h {
            Health::Ok => true,
            Health::Down { until, .. } | Health::Limited { until } => Instant::now() >= *until,
            Health::Unauthorized => false,
        }
    }

    /// Updates the server's state after a request and tells the user about changes, once.
    fn observe(&self, result: Result<(), &ApiError>) {
        let Ok(mut h) = self.health.lock() else { return };
        let url = self.api().base.clone();
        let (next, notice) = match (result, &*h) {
            (Ok(()), Health::Ok) => return,
            (Ok(()), _) => (Health::Ok, Some(Notice { state: "ready", message: format!("ghostline: connected to {url}"), show: false })),
            (Err(ApiError::Status { code: 401, message, .. }), _) => (
                Health::Unauthorized,
                Some(Notice {
                    state: "unauthorized",
                    message: format!("ghostline: {url} refused the API key ({message}). Set `apiKey` in the ghostline settings or GHOSTLINE_API_KEY; no more requests until then."),
                    show: true,
                }),
            ),
            (Err(ApiError::Status { code: 429, retry_after, .. }), prev) => {
                let wait = Duration::from_secs(retry_after.unwrap_or(1).clamp(1, 300));
                let first = !matches!(prev, Health::Limited { .. });
                (Health::Limited { until: Instant::now() + wait }, first.then(|| Notice { state: "limited", message: format!("ghostline: rate limited by {url}; waiting {} s", wait.as_secs()), show: false }))
            }
            (Err(e), prev) => {
                let backoff = match prev {
                    Health::Down { backoff, .. } => (*backoff * 2).min(Duration::from_secs(30)),
                    _ => Duration::from_millis(1000),
                };
                let first = !matches!(prev, Health::Down { .. });
                let notice = first.then(|| Notice { state: "error", message: format!("ghostline: {e}. Suggestions resume on their own when it is back."), show: true });
                (Health::Down { until: Instant::now() + backoff, backoff }, notice)
            }
        };
        *h = next;
        drop(h);
        if let Some(n) = notice {
            self.notify(n);
        }
    }

    /// Queues telemetry outcomes (nothing at all when telemetry is off).
    pub fn record(&self, outcomes: &[Outcome]) {
        if outcomes.is_empty() || !self.settings().telemetry {
            return;
        }
        let t = {
            let Ok(mut t) = self.telemetry.lock() else { return };
            if t.is_none() && tokio::runtime::Handle::try_current().is_ok() {
                let spool = crate::telemetry::cache_dir().map(|d| Arc::new(Spool::new(&d, SPOOL_MAX_BYTES)));
                let cell = self.api.clone();
                *t = Some(Telemetry::start(&self.session, spool, move || current_api(&cell)));
            }
            t.clone()
        };
        if let Some(t) = t {
            let editor = self.editor.read().ok().and_then(|e| e.clone());
            for o in outcomes {
                t.record(o, editor.as_deref());
            }
        }
    }

    /// Sends or spools what telemetry is queued (at shutdown).
    pub async fn close_telemetry(&self) {
        let t = self.telemetry.lock().ok().and_then(|mut t| t.take());
        if let Some(t) = t {
            t.close(Duration::from_secs(2)).await;
        }
    }

    /// The command on an accepted item ran.
    pub fn accepted(&self, id: &str, index: u32) {
        let o = self.outcomes.lock().ok().and_then(|mut o| o.accepted(id, index));
        self.record(&o.into_iter().collect::<Vec<_>>());
    }

    /// The editor reported a partial accept.
    pub fn partially_accepted(&self, id: &str, chars: usize) {
        let o = self.outcomes.lock().ok().and_then(|mut o| o.partially_accepted(id, chars));
        self.record(&o.into_iter().collect::<Vec<_>>());
    }

    /// The editor reported a suggestion shown.
    pub fn shown(&self, id: &str, index: u32, language: &str) {
        self.client_reports_shown.store(true, Ordering::Relaxed);
        self.record(&[Outcome {
            completion_id: id.into(),
            index,
            kind: TelemetryKind::Shown,
            accepted_chars: None,
            shown_ms: 0,
            language: language.into(),
        }]);
    }

    fn encoding(&self) -> PositionEncoding {
        self.encoding.read().map(|e| *e).unwrap_or(PositionEncoding::Utf16)
    }

    fn path_for(&self, uri: &str) -> String {
        let path = uri.strip_prefix("file://").map(percent_decode).unwrap_or_else(|| uri.to_string());
        if let Ok(Some(root)) = self.root.read().map(|r| r.clone()) {
            if let Ok(rel) = std::path::Path::new(&path).strip_prefix(&root) {
                return rel.to_string_lossy().into_owned();
            }
        }
        path
    }

    pub fn open(&self, uri: &str, language: &str, version: i32, text: &str) {
        let doc = Document::new(text, version, language);
        // Very large files are completed as plain text: a tree would cost seconds and much memory.
        let mut syntax = if text.len() <= MAX_PARSED_BYTES { Syntax::new(language) } else { None };
        if let Some(s) = syntax.as_mut() {
            s.parse_full(&doc);
        }
        let path = self.path_for(uri);
        if let Ok(mut docs) = self.docs.lock() {
            docs.insert(uri.to_string(), DocState { doc, syntax, path, generation: watch::channel(0).0 });
        }
        if let Ok(mut closed) = self.closed.lock() {
            closed.pop(uri);
        }
    }

    /// Applies `contentChanges` in order. Returns false for an unknown document.
    pub fn change(&self, uri: &str, version: i32, changes: &[(Option<(Position, Position)>, String)]) -> bool {
        let enc = self.encoding();
        let Ok(mut docs) = self.docs.lock() else { return false };
        let Some(st) = docs.get_mut(uri) else { return false };
        let mut last_end = None;
        let mut inserted = 0;
        for (range, text) in changes {
            inserted = text.chars().count();
            let edit = st.doc.apply(*range, text, enc);
            match st.syntax.as_mut() {
                Some(s) if range.is_some() => s.edit(&st.doc, &edit),
                Some(s) => s.parse_full(&st.doc),
                None => {}
            }
            last_end = Some(st.doc.rope().byte_to_char(edit.new_end_byte));
        }
        st.doc.version = version;
        st.generation.send_modify(|g| *g += 1);
        let decided = match (last_end, self.outcomes.lock()) {
            (Some(end), Ok(mut o)) => o.edited(uri, st.doc.rope(), end, inserted),
            _ => vec![],
        };
        // A stream in flight stays only while the text typed since it still matches it.
        if let Ok(mut inflight) = self.inflight.lock() {
            if let Some(f) = inflight.get(uri) {
                let keep = last_end.is_some_and(|end| fetch_serves(f, uri, st.doc.rope(), end).is_some());
                if !keep {
                    inflight.remove(uri);
                }
            }
        }
        drop(docs);
        self.record(&decided);
        true
    }

    pub fn close(&self, uri: &str) {
        let st = self.docs.lock().ok().and_then(|mut d| d.remove(uri));
        if let Some(st) = st {
            st.generation.send_modify(|g| *g += 1);
            if let Ok(mut closed) = self.closed.lock() {
                closed.put(uri.to_string(), (st.doc, st.path));
            }
        }
        if let Ok(mut c) = self.cache.lock() {
            c.forget(uri);
        }
        if let Ok(mut f) = self.inflight.lock() {
            f.remove(uri);
        }
        let decided = self.outcomes.lock().map(|mut o| o.close_doc(uri)).unwrap_or_default();
        self.record(&decided);
    }

    pub fn document_text(&self, uri: &str) -> Option<String> {
        self.docs.lock().ok()?.get(uri).map(|s| s.doc.text())
    }

    /// The text of `pos`'s line before it.
    pub fn document_text_before(&self, uri: &str, pos: Position) -> Option<String> {
        let enc = self.encoding();
        let docs = self.docs.lock().ok()?;
        let d = &docs.get(uri)?.doc;
        let c = d.char_index(pos, enc);
        Some(trigger::line_around(d, c).0)
    }

    /// The length of `s` in the negotiated position units.
    pub fn units(&self, s: &str) -> u32 {
        match self.encoding() {
            PositionEncoding::Utf8 => s.len() as u32,
            PositionEncoding::Utf16 => s.encode_utf16().count() as u32,
        }
    }

    pub fn language_of(&self, uri: &str) -> Option<String> {
        self.docs.lock().ok()?.get(uri).map(|s| s.doc.language.clone())
    }

    async fn context_length(&self) -> Option<usize> {
        if let Some(n) = self.context_length.lock().ok().and_then(|c| *c) {
            return Some(n);
        }
        let model = self.settings().model;
        let n = self.api().context_length(model.as_deref()).await.ok()?;
        if let Ok(mut c) = self.context_length.lock() {
            *c = Some(n);
        }
        Some(n)
    }

    /// Suggestions at `pos` of `uri`; `Ok(None)` when there is nothing to show (skipped,
    /// superseded, empty), `Err` when the server could not give one.
    pub async fn suggest(&self, uri: &str, pos: Position, ask: Ask) -> Result<Option<Suggestion>, ApiError> {
        self.counters.requests.fetch_add(1, Ordering::Relaxed);
        let settings = self.settings();
        if !settings.enable {
            return Ok(None);
        }
        let enc = self.encoding();
        // Snapshot the document (ropes and trees are cheap to clone) and take a generation.
        let (doc, syntax, path, mut generation, mode, cursor) = {
            let Ok(docs) = self.docs.lock() else { return Ok(None) };
            let Some(st) = docs.get(uri) else { return Ok(None) };
            let cursor = st.doc.char_index(pos, enc);
            let mode = trigger::decide(
                &st.doc,
                cursor,
                st.syntax.as_ref().and_then(|s| s.parts()),
                settings.multiline,
                ask.invoked,
            );
            let mut rx = st.generation.subscribe();
            st.generation.send_modify(|g| *g += 1);
            rx.borrow_and_update();
            (st.doc.clone(), st.syntax.as_ref().and_then(|s| s.fork()), st.path.clone(), rx, mode, cursor)
        };
        tracing::debug!("suggest {uri} {}:{} {mode:?} invoked={}", pos.line, pos.character, ask.invoked);
        if let Mode::Skip(_) = mode {
            self.counters.skipped.fetch_add(1, Ordering::Relaxed);
            return Ok(None);
        }
        let position = doc.position(cursor, enc);
        if let Some(hit) = self.cache.lock().ok().and_then(|mut c| c.lookup(uri, doc.rope(), cursor)) {
            self.counters.cache_hits.fetch_add(1, Ordering::Relaxed);
            self.track_shown(uri, doc.rope(), cursor, &hit.id, &hit.items[0].1, &doc.language, false);
            return Ok(Some(Suggestion { id: hit.id, items: hit.items, position, source: Source::Cache, mode }));
        }
        if ask.debounce && settings.debounce_ms > 0 {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(settings.debounce_ms)) => {}
                _ = generation.changed() => {
                    self.counters.superseded.fetch_add(1, Ordering::Relaxed);
                    return Ok(None);
                }
            }
        }
        let reuse =
            self.inflight.lock().ok().and_then(|f| {
                f.get(uri).and_then(|f| fetch_serves(f, uri, doc.rope(), cursor).map(|t| (f.clone(), t)))
            });
        let (fetch, typed, source) = match reuse {
            Some((f, typed)) => {
                self.counters.reused.fetch_add(1, Ordering::Relaxed);
                (f, typed, Source::Reused)
            }
            None => {
                if !self.may_ask() {
                    return Ok(None);
                }
                let body = self.request_body(&doc, cursor, syntax.as_ref(), &path, uri, mode, ask, &settings).await;
                let f = Fetch::start(self.api(), body, Anchor::new(uri, doc.rope(), cursor), mode);
                self.counters.fetches.fetch_add(1, Ordering::Relaxed);
                if let Ok(mut inflight) = self.inflight.lock() {
                    inflight.insert(uri.to_string(), f.clone());
                }
                (f, String::new(), Source::Fetched)
            }
        };
        let deadline = Duration::from_millis(settings.request_timeout_ms);
        let state = tokio::select! {
            r = tokio::time::timeout(deadline, fetch.finished()) => match r {
                Ok(s) => s,
                Err(_) => {
                    self.drop_fetch(uri, &fetch);
                    self.counters.errors.fetch_add(1, Ordering::Relaxed);
                    let e = ApiError::Unreachable(format!("no answer within {} ms", settings.request_timeout_ms));
                    self.observe(Err(&e));
                    return Err(e);
                }
            },
            _ = generation.changed() => {
                self.counters.superseded.fetch_add(1, Ordering::Relaxed);
                return Ok(None);
            }
        };
        self.drop_fetch(uri, &fetch);
        if let Some(e) = state.error {
            self.counters.errors.fetch_add(1, Ordering::Relaxed);
            self.observe(Err(&e));
            return Err(e);
        }
        self.observe(Ok(()));
        let mut items: Vec<String> = Vec::new();
        for raw in &state.texts {
            let Some(rest) = raw.strip_prefix(typed.as_str()) else { continue };
            if let Some(t) = postprocess::finish(&doc, cursor, syntax.as_ref(), fetch.mode, rest) {
                if !items.contains(&t) {
                    items.push(t);
                }
            }
        }
        tracing::debug!("{} raw, {} shown for {uri}: {:?}", state.texts.len(), items.len(), state.texts);
        if items.is_empty() {
            return Ok(None);
        }
        if let Ok(mut c) = self.cache.lock() {
            c.insert(Entry {
                anchor: Anchor::new(uri, doc.rope(), cursor),
                id: state.id.clone(),
                items: items.clone(),
            });
        }
        let items: Vec<(u32, String)> = items.into_iter().enumerate().map(|(i, t)| (i as u32, t)).collect();
        self.track_shown(uri, doc.rope(), cursor, &state.id, &items[0].1, &doc.language, true);
        Ok(Some(Suggestion { id: state.id, items, position, source, mode: fetch.mode }))
    }

    /// A suggestion goes on screen: earlier ones of the document are decided, and (unless the
    /// client reports it itself) a `shown` event is queued for a new completion.
    #[allow(clippy::too_many_arguments)]
    fn track_shown(
        &self,
        uri: &str,
        rope: &ropey::Rope,
        cursor: usize,
        id: &str,
        text: &str,
        language: &str,
        new: bool,
    ) {
        let mut out = self
            .outcomes
            .lock()
            .map(|mut o| o.shown(Anchor::new(uri, rope, cursor), id, 0, text, language))
            .unwrap_or_default();
        if new && !self.client_reports_shown.load(Ordering::Relaxed) {
            out.push(Outcome {
                completion_id: id.into(),
                index: 0,
                kind: TelemetryKind::Shown,
                accepted_chars: None,
                shown_ms: 0,
                language: language.into(),
            });
        }
        self.record(&out);
    }

    /// Forgets a finished or abandoned fetch (if it is still the document's current one).
    fn drop_fetch(&self, uri: &str, fetch: &Arc<Fetch>) {
        if let Ok(mut inflight) = self.inflight.lock() {
            if inflight.get(uri).is_some_and(|f| Arc::ptr_eq(f, fetch))
                && (fetch.rx.borrow().done || Arc::strong_count(fetch) <= 2)
            {
                inflight.remove(uri);
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn request_body(
        &self,
        doc: &Document,
        cursor: usize,
        syntax: Option<&Syntax>,
        path: &str,
        uri: &str,
        mode: Mode,
        ask: Ask,
        s: &Settings,
    ) -> Value {
        let max_tokens = match mode {
            Mode::SingleLine => s.max_tokens.min(48),
            _ => s.max_tokens,
        };
        // Fit prompt and snippets to the model's context when it is known.
        let mut total = s.context_tokens + s.snippet_tokens;
        if let Some(ctx) = self.context_length().await {
            total = total.min(ctx.saturating_sub(max_tokens as usize + 8)).max(32);
        }
        let snippet_tokens = s.snippet_tokens.min(total / 5);
        let cfg = ContextConfig { budget_tokens: total - snippet_tokens, ..ContextConfig::default() };
        let window = context::build(doc, cursor, syntax.and_then(|s| s.parts()), &cfg);
        let snippets = self.snippets_for(uri, doc, cursor, cfg.chars(snippet_tokens));
        let n = ask.n.clamp(1, 8);
        let mut body = json!({
            "prompt": window.prefix,
            "suffix": window.suffix,
            "max_tokens": max_tokens,
            "temperature": if n > 1 { 0.6 } else { 0.0 },
            "top_p": if n > 1 { 0.95 } else { 1.0 },
            "n": n,
            // Sampled candidates are reproducible for the same prompt.
            "seed": 7,
            "stream": true,
            "user": self.session,
            "language": doc.language,
            "path": path,
            "truncate": true,
        });
        if mode == Mode::SingleLine {
            body["stop"] = json!(["\n"]);
        }
        if !snippets.is_empty() {
            body["context"] = serde_json::to_value(snippets).unwrap_or(Value::Null);
        }
        if let Some(m) = &s.model {
            body["model"] = json!(m);
        }
        // The server records the editor with the completion, for /v1/stats by editor.
        if let Some(e) = self.editor.read().ok().and_then(|e| e.clone()) {
            body["editor"] = json!(e);
        }
        body
    }

    fn snippets_for(&self, uri: &str, doc: &Document, cursor: usize, budget_chars: usize) -> Vec<ContextSnippet> {
        if budget_chars < 64 {
            return vec![];
        }
        let rope = doc.rope();
        let line = rope.char_to_line(cursor);
        let first = line.saturating_sub(WINDOW_LINES);
        let query = identifiers(rope.slice(rope.line_to_char(first)..cursor).chars());
        if query.is_empty() {
            return vec![];
        }
        // Snapshot the other documents (cheap rope clones), then rank without the doc lock.
        let mut others: Vec<(String, String, i32, ropey::Rope)> = Vec::new();
        if let Ok(docs) = self.docs.lock() {
            others.extend(
                docs.iter()
                    .filter(|(u, s)| u.as_str() != uri && s.doc.len_bytes() <= MAX_SNIPPET_SOURCE_BYTES)
                    .map(|(u, s)| (u.clone(), s.path.clone(), s.doc.version, s.doc.rope().clone())),
            );
        }
        if let Ok(closed) = self.closed.lock() {
            others.extend(
                closed
                    .iter()
                    .filter(|(_, (d, _))| d.len_bytes() <= MAX_SNIPPET_SOURCE_BYTES)
                    .map(|(u, (d, p))| (u.clone(), p.clone(), d.version, d.rope().clone())),
            );
        }
        let Ok(mut index) = self.snippets.lock() else { return vec![] };
        index.retain(|u| others.iter().any(|o| o.0 == u));
        index
            .rank(&query, others.iter().map(|(u, p, v, r)| (u.as_str(), p.as_str(), *v, r)), budget_chars, 0.1)
            .into_iter()
            .map(|s| ContextSnippet { path: s.path, text: s.text })
            .collect()
    }
}

/// The client for the current settings (a poisoned lock still holds a usable client).
fn current_api(cell: &RwLock<Arc<Api>>) -> Arc<Api> {
    cell.read().map(|a| a.clone()).unwrap_or_else(|e| e.into_inner().clone())
}

/// The text typed since `f`'s anchor when the stream can still answer at `cursor`: the text
/// matches, and what was typed is the start of what has streamed so far.
fn fetch_serves(f: &Fetch, uri: &str, rope: &ropey::Rope, cursor: usize) -> Option<String> {
    let typed = f.anchor.typed_since(uri, rope, cursor)?;
    let state = f.rx.borrow();
    if state.error.is_some() {
        return None;
    }
    if typed.is_empty() || !remainders(&state.texts, &typed).is_empty() {
        return Some(typed);
    }
    None
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = |c: u8| (c as char).to_digit(16);
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn telemetry_off_starts_nothing_and_on_starts_the_sender() {
        let core = Core::new(Settings { telemetry: false, ..Settings::default() });
        let o = Outcome {
            completion_id: "cmpl-1".into(),
            index: 0,
            kind: TelemetryKind::Shown,
            accepted_chars: None,
            shown_ms: 0,
            language: "python".into(),
        };
        core.record(std::slice::from_ref(&o));
        assert!(core.telemetry.lock().unwrap().is_none(), "telemetry: false must neither queue nor spool");
        core.update_settings(&serde_json::json!({"telemetry": true}));
        core.record(&[o]);
        assert!(core.telemetry.lock().unwrap().is_some());
    }
}
