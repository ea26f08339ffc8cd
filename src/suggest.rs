//! The keystroke path: `Core` turns a cursor into suggestions through four owners — the
//! documents (`documents`), the server link (`link`: source, health, model facts), the answers
//! that need no new request (`reuse`: cache and streams in flight) and telemetry (`telemetry`:
//! outcomes and their sender), with `pacer` timing automatic requests. `suggest` is the
//! sequence of decisions between them: trigger, cache, the wait before asking (adaptive or a
//! fixed debounce), in-flight reuse, health gate, request, wait, post-processing. Both the LSP
//! and `ghostline complete` drive it.
//!
//! Invariant: no lock is held across an await (each owner locks inside its own methods); every
//! wait ends when a newer keystroke for the same document arrives, or at the request deadline.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ghostline_api::CompletionRequest;
use parking_lot::RwLock;
use serde_json::Value;

use crate::cache::{Anchor, Entry};
use crate::context::{self, ContextConfig};
use crate::document::Position;
use crate::documents::{Documents, Snapshot};
pub use crate::link::Notice;
use crate::link::{Fim, Link, ModelFacts};
use crate::pacer::{Pacer, SkipUnlessSent};
use crate::postprocess::{self, Shape};
use crate::reuse::{Fetch, FetchState, Reuse};
use crate::settings::{Settings, Trigger};
use crate::source::{ApiError, CompletionSource};
use crate::telemetry::{Outcome, Recorder};
use crate::trigger::Mode;
use crate::wait::{Wait, Waited};

/// Suggestions kept for typed-ahead and revisits.
const CACHE_ENTRIES: usize = 256;

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

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// What a request asks for.
#[derive(Debug, Clone, Copy)]
pub struct Ask {
    /// The user asked explicitly (answered even mid-word; no debounce).
    pub invoked: bool,
    /// Candidates wanted.
    pub n: u32,
    /// An automatic request: wait first (`trigger`: adaptive, or the fixed `debounceMs`).
    pub debounce: bool,
}

/// Why a request ended without suggestions before its stream finished.
enum Stop {
    /// A newer keystroke took over; answered empty.
    Superseded,
    /// Not asked: the server is backed off, rate limited or refused the key.
    Gated,
    Failed(ApiError),
}

pub struct Core {
    pub documents: Documents,
    link: Arc<Link>,
    reuse: Reuse,
    pub pacer: Arc<Pacer>,
    pub telemetry: Recorder,
    settings: RwLock<Settings>,
    pub session: String,
    pub counters: Counters,
}

fn session_id() -> String {
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    format!("lsp-{:x}-{:x}", std::process::id(), t)
}

impl Core {
    /// A core that asks the ghostline-server of `settings` over HTTP.
    pub fn new(settings: Settings) -> Arc<Core> {
        Self::build(settings, None)
    }

    /// A core that asks `source` whatever the settings say (tests).
    pub fn with_source(settings: Settings, source: Arc<dyn CompletionSource>) -> Arc<Core> {
        Self::build(settings, Some(source))
    }

    fn build(settings: Settings, fixed: Option<Arc<dyn CompletionSource>>) -> Arc<Core> {
        let link = Arc::new(Link::new(&settings, fixed));
        let session = session_id();
        let for_telemetry = link.clone();
        Arc::new(Core {
            documents: Documents::default(),
            telemetry: Recorder::new(&session, move || for_telemetry.api()),
            link,
            reuse: Reuse::new(CACHE_ENTRIES),
            pacer: Arc::new(Pacer::default()),
            settings: RwLock::new(settings),
            session,
            counters: Counters::default(),
        })
    }

    pub fn settings(&self) -> Settings {
        self.settings.read().clone()
    }

    /// Applies a settings object; returns warnings for fields it could not use.
    pub fn update_settings(&self, v: &Value) -> Vec<String> {
        let (warnings, changed) = {
            let mut s = self.settings.write();
            let before = (s.server_url.clone(), s.api_key.clone());
            let warnings = s.update(v);
            let changed = before != (s.server_url.clone(), s.api_key.clone());
            (warnings, changed.then(|| s.clone()))
        };
        if let Some(s) = changed {
            self.link.reconfigure(&s);
        }
        warnings
    }

    /// Where notices about the server's state go (the LSP shows them).
    pub fn set_notices(&self, tx: tokio::sync::mpsc::UnboundedSender<Notice>) {
        self.link.set_notices(tx);
    }

    /// Queues telemetry outcomes (nothing at all when telemetry is off).
    pub fn record(&self, outcomes: &[Outcome]) {
        self.telemetry.record(self.settings.read().telemetry, outcomes);
    }

    /// Sends or spools what telemetry is queued (at shutdown).
    pub async fn close_telemetry(&self) {
        self.telemetry.close().await;
    }

    /// The command on an accepted item ran.
    pub fn accepted(&self, id: &str, index: u32) {
        self.record(&self.telemetry.accepted(id, index));
    }

    /// The editor reported a partial accept.
    pub fn partially_accepted(&self, id: &str, chars: usize) {
        self.record(&self.telemetry.partially_accepted(id, chars));
    }

    /// The editor reported a suggestion shown.
    pub fn shown(&self, id: &str, index: u32, language: &str) {
        self.record(&self.telemetry.client_shown(id, index, language));
    }

    pub fn open(&self, uri: &str, language: &str, version: i32, text: &str) {
        self.documents.open(uri, language, version, text);
    }

    /// Applies `contentChanges` in order. Returns false for an unknown document.
    pub fn change(&self, uri: &str, version: i32, changes: &[(Option<(Position, Position)>, String)]) -> bool {
        let Some(e) = self.documents.change(uri, version, changes) else { return false };
        let decided = match e.last_end {
            Some(end) => self.telemetry.edited(uri, &e.rope, end, e.inserted),
            None => vec![],
        };
        self.reuse.edited(uri, &e.rope, e.last_end);
        if let Some(end) = e.last_end {
            self.pacer.key(uri, &e.rope, end);
        }
        self.record(&decided);
        true
    }

    pub fn close(&self, uri: &str) {
        self.documents.close(uri);
        self.reuse.forget(uri);
        self.pacer.forget(uri);
        self.record(&self.telemetry.closed(uri));
    }

    pub fn document_text(&self, uri: &str) -> Option<String> {
        self.documents.text(uri)
    }

    /// Suggestions at `pos` of `uri`; `Ok(None)` when there is nothing to show (skipped,
    /// superseded, empty, or the server is not asked for now), `Err` when the server could not
    /// give one.
    pub async fn suggest(&self, uri: &str, pos: Position, ask: Ask) -> Result<Option<Suggestion>, ApiError> {
        bump(&self.counters.requests);
        let settings = self.settings();
        if !settings.enable {
            self.pacer.stats.skipped("disabled");
            return Ok(None);
        }
        let Some(snap) = self.documents.snapshot(uri, pos, settings.multiline, ask.invoked) else { return Ok(None) };
        tracing::debug!("suggest {uri} {}:{} {:?} invoked={}", pos.line, pos.character, snap.mode, ask.invoked);
        if let Mode::Skip(why) = snap.mode {
            bump(&self.counters.skipped);
            self.pacer.stats.skipped(why);
            return Ok(None);
        }
        if let Some(s) = self.cached(&snap) {
            return Ok(Some(s));
        }
        let mut wait = Wait::new(snap.generation.clone());
        let mut early = None;
        if ask.debounce {
            let (ms, why) = match settings.trigger {
                Trigger::Debounce => (settings.debounce_ms, "debounce"),
                Trigger::Adaptive => {
                    let plan = self.pacer.plan(uri, snap.doc.rope(), snap.cursor);
                    early = Some(plan.early);
                    (plan.wait_ms, "typing")
                }
            };
            let skip = SkipUnlessSent::new(&self.pacer.stats, why);
            if ms > 0 && !wait.pause(Duration::from_millis(ms)).await {
                bump(&self.counters.superseded);
                return Ok(None);
            }
            skip.disarm();
        }
        wait.start_deadline(Duration::from_millis(settings.request_timeout_ms));
        let (fetch, typed, source) = match self.reuse.serving(uri, snap.doc.rope(), snap.cursor) {
            Some((f, typed)) => {
                bump(&self.counters.reused);
                (f, typed, Source::Reused)
            }
            None => match self.fetch(&snap, ask, &settings, &mut wait).await {
                Ok(f) => {
                    match early {
                        Some(true) => bump(&self.pacer.stats.sent_early),
                        Some(false) => bump(&self.pacer.stats.sent_overdue),
                        None => {}
                    }
                    (f, String::new(), Source::Fetched)
                }
                Err(stop) => return self.stopped(stop),
            },
        };
        let (fetch, state) = match self.finished(&snap, &fetch, &settings, &mut wait).await {
            Ok(s) => (fetch, s),
            // A server that does not say whether the model does FIM refused the suffix: the
            // model completes left to right, now and from now on.
            Err(Stop::Failed(e)) if fetch.fim && refuses_suffix(&e) => {
                tracing::info!("{e}; asking left to right from now on");
                let facts = self.link.without_fim(settings.model.as_deref());
                let fetch = self.start(&snap, ask, &settings, &facts);
                match self.finished(&snap, &fetch, &settings, &mut wait).await {
                    Ok(s) => (fetch, s),
                    Err(stop) => return self.stopped(stop),
                }
            }
            Err(stop) => return self.stopped(stop),
        };
        Ok(self.present(&snap, &fetch, &state, &typed, source))
    }

    fn stopped(&self, stop: Stop) -> Result<Option<Suggestion>, ApiError> {
        match stop {
            Stop::Superseded => {
                bump(&self.counters.superseded);
                Ok(None)
            }
            Stop::Gated => {
                self.pacer.stats.skipped("server not asked");
                Ok(None)
            }
            Stop::Failed(e) => {
                bump(&self.counters.errors);
                self.link.observe(Err(&e));
                Err(e)
            }
        }
    }

    /// The typed-ahead or revisit answer, if the cache has one.
    fn cached(&self, snap: &Snapshot) -> Option<Suggestion> {
        let hit = self.reuse.cached(&snap.uri, snap.doc.rope(), snap.cursor)?;
        bump(&self.counters.cache_hits);
        bump(&self.pacer.stats.shown);
        self.track_shown(snap, &hit.id, &hit.items[0].1, false);
        let position = snap.doc.position(snap.cursor, self.documents.encoding());
        Some(Suggestion { id: hit.id, items: hit.items, position, source: Source::Cache, mode: snap.mode })
    }

    /// Starts a new stream for the snapshot (after the health gate and model discovery).
    async fn fetch(&self, snap: &Snapshot, ask: Ask, s: &Settings, wait: &mut Wait) -> Result<Arc<Fetch>, Stop> {
        if !self.link.may_ask() {
            return Err(Stop::Gated);
        }
        let facts = match self.link.model(s.model.as_deref(), wait).await {
            Waited::Done(Ok(f)) => f,
            Waited::Done(Err(e)) => return Err(Stop::Failed(e)),
            Waited::Superseded => return Err(Stop::Superseded),
            Waited::Deadline => return Err(Stop::Failed(deadline_error(s))),
        };
        Ok(self.start(snap, ask, s, &facts))
    }

    fn start(&self, snap: &Snapshot, ask: Ask, s: &Settings, facts: &ModelFacts) -> Arc<Fetch> {
        let (req, shape) = self.request(snap, ask, s, facts);
        let anchor = Anchor::new(&snap.uri, snap.doc.rope(), snap.cursor);
        let f = Fetch::start(self.link.source(), req, anchor, shape, &self.pacer);
        bump(&self.counters.fetches);
        bump(&self.pacer.stats.sent);
        self.reuse.started(&snap.uri, &f);
        f
    }

    /// Waits for the stream to end within the request's bounds.
    async fn finished(
        &self,
        snap: &Snapshot,
        fetch: &Arc<Fetch>,
        s: &Settings,
        wait: &mut Wait,
    ) -> Result<FetchState, Stop> {
        let state = match wait.run(fetch.finished()).await {
            Waited::Done(state) => state,
            Waited::Superseded => return Err(Stop::Superseded),
            Waited::Deadline => {
                self.reuse.release(&snap.uri, fetch);
                return Err(Stop::Failed(deadline_error(s)));
            }
        };
        self.reuse.release(&snap.uri, fetch);
        match state.error {
            Some(e) => Err(Stop::Failed(e)),
            None => {
                self.link.observe(Ok(()));
                Ok(state)
            }
        }
    }

    /// Post-processes the streamed texts into the suggestion shown (and cached), or nothing.
    fn present(
        &self,
        snap: &Snapshot,
        fetch: &Fetch,
        state: &FetchState,
        typed: &str,
        source: Source,
    ) -> Option<Suggestion> {
        let mut items: Vec<String> = Vec::new();
        for raw in &state.texts {
            let Some(rest) = raw.strip_prefix(typed) else { continue };
            if let Some(t) = postprocess::finish(&snap.doc, snap.cursor, snap.syntax.as_ref(), fetch.shape, rest) {
                if !items.contains(&t) {
                    items.push(t);
                }
            }
        }
        tracing::debug!("{} raw, {} shown for {}: {:?}", state.texts.len(), items.len(), snap.uri, state.texts);
        if items.is_empty() {
            return None;
        }
        self.reuse.remember(Entry {
            anchor: Anchor::new(&snap.uri, snap.doc.rope(), snap.cursor),
            id: state.id.clone(),
            items: items.clone(),
        });
        let items: Vec<(u32, String)> = items.into_iter().enumerate().map(|(i, t)| (i as u32, t)).collect();
        bump(&self.pacer.stats.shown);
        self.track_shown(snap, &state.id, &items[0].1, true);
        let position = snap.doc.position(snap.cursor, self.documents.encoding());
        Some(Suggestion { id: state.id.clone(), items, position, source, mode: fetch.shape.mode })
    }

    /// A suggestion goes on screen (see `Recorder::on_screen`).
    fn track_shown(&self, snap: &Snapshot, id: &str, text: &str, new: bool) {
        let anchor = Anchor::new(&snap.uri, snap.doc.rope(), snap.cursor);
        self.record(&self.telemetry.on_screen(anchor, id, text, &snap.doc.language, new));
    }

    /// The request for the snapshot, sized to the model's context, and how its answer is shaped.
    fn request(&self, snap: &Snapshot, ask: Ask, s: &Settings, facts: &ModelFacts) -> (CompletionRequest, Shape) {
        let mode = snap.mode;
        let max_tokens = match mode {
            Mode::SingleLine => s.max_tokens.min(48),
            _ => s.max_tokens,
        };
        // Fit prompt and snippets to the model's context when it is known.
        let mut total = s.context_tokens + s.snippet_tokens;
        if let Some(ctx) = facts.context_length {
            total = total.min(ctx.saturating_sub(max_tokens as usize + 8)).max(32);
        }
        let snippet_tokens = s.snippet_tokens.min(total / 5);
        // A model without FIM gets the prefix alone (the whole budget); its answer is cut at
        // the suffix here.
        let left_to_right = facts.fim == Fim::No;
        let mut cfg = ContextConfig { budget_tokens: total - snippet_tokens, ..ContextConfig::default() };
        if left_to_right {
            cfg.prefix_share = 1.0;
        }
        let window = context::build(&snap.doc, snap.cursor, snap.syntax.as_ref().and_then(|s| s.parts()), &cfg);
        let snippets = self.documents.snippets_for(&snap.uri, &snap.doc, snap.cursor, cfg.chars(snippet_tokens));
        let n = ask.n.clamp(1, 8);
        let shape = Shape { mode, left_to_right };
        // One line is asked for by stopping at its end. A left-to-right model left on a line of
        // indentation alone often ends that line first and writes the code on the next one
        // (`\n` + indentation + code), which post-processing puts back on the cursor's line:
        // there the stop would end the answer before it starts.
        let (before, after) = crate::trigger::line_around(&snap.doc, snap.cursor);
        let restarts_line = left_to_right && before.trim().is_empty() && after.trim().is_empty();
        let stop = (mode == Mode::SingleLine && !restarts_line).then(|| vec!["\n".to_string()]);
        let req = CompletionRequest {
            model: s.model.clone(),
            prompt: window.prefix,
            suffix: (!left_to_right).then_some(window.suffix),
            max_tokens: Some(max_tokens),
            temperature: Some(if n > 1 { 0.6 } else { 0.0 }),
            top_p: Some(if n > 1 { 0.95 } else { 1.0 }),
            top_k: None,
            // Sampled candidates are reproducible for the same prompt.
            seed: Some(7),
            n: Some(n),
            stop,
            stream: Some(true),
            user: Some(self.session.clone()),
            language: Some(snap.doc.language.clone()),
            path: Some(snap.path.clone()),
            context: (!snippets.is_empty()).then_some(snippets),
            truncate: Some(true),
            // The server records the editor with the completion, for /v1/stats by editor.
            editor: self.telemetry.editor(),
        };
        (req, shape)
    }
}

/// A 400 for the request's `suffix`: the model has no fill-in-the-middle.
fn refuses_suffix(e: &ApiError) -> bool {
    matches!(e, ApiError::Status { code: 400, param: Some(p), .. } if p == "suffix")
}

fn deadline_error(s: &Settings) -> ApiError {
    ApiError::Unreachable(format!("no answer within {} ms", s.request_timeout_ms))
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod trigger_tests;
