//! Answers without a new server request: the cache of recent suggestions (typed-ahead and
//! revisits) and the streams in flight, one per document, that a later keystroke can still use.
//!
//! A `Fetch` owns one stream in a task. Requests hold it through an `Arc`; when the last holder
//! lets go the task is aborted, the connection closes, and the server frees the sequence.

use std::collections::HashMap;
use std::sync::Arc;

use ghostline_api::CompletionRequest;
use parking_lot::Mutex;
use ropey::Rope;
use tokio::sync::watch;

use crate::cache::{remainders, Anchor, Entry, Hit, SuggestionCache};
use crate::pacer::{bump, Pacer};
use crate::postprocess::Shape;
use crate::source::{ApiError, CompletionSource};

/// Longest completion text read from a stream.
const MAX_TEXT_BYTES: usize = 64 << 10;

/// What a fetch has so far.
#[derive(Debug, Clone, Default)]
pub struct FetchState {
    pub id: String,
    pub texts: Vec<String>,
    pub done: bool,
    pub error: Option<ApiError>,
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// One streaming completion in flight, shared by the requests that can use it.
pub struct Fetch {
    pub anchor: Anchor,
    /// How its text becomes a suggestion.
    pub shape: Shape,
    /// Whether the request carried a suffix (fill-in-the-middle).
    pub fim: bool,
    pub rx: watch::Receiver<FetchState>,
    pacer: Arc<Pacer>,
    _task: AbortOnDrop,
}

impl Drop for Fetch {
    fn drop(&mut self) {
        // Let go before its end: a newer keystroke took over and the server frees it.
        if !self.rx.borrow().done {
            bump(&self.pacer.stats.superseded);
        }
    }
}

impl Fetch {
    /// Starts streaming `req`; reading stops once every choice is complete for `shape`. The
    /// time to the first line goes to `pacer`.
    pub fn start(
        source: Arc<dyn CompletionSource>,
        req: CompletionRequest,
        anchor: Anchor,
        shape: Shape,
        pacer: &Arc<Pacer>,
    ) -> Arc<Fetch> {
        let (tx, rx) = watch::channel(FetchState::default());
        let fim = req.suffix.is_some();
        let sent = tokio::time::Instant::now();
        let timed = pacer.clone();
        let task = tokio::spawn(async move {
            let mut first_line = false;
            let mut keep_reading = |texts: &[String], finished: &[bool]| {
                tx.send_modify(|s| s.texts = texts.to_vec());
                let line_done = texts.first().is_some_and(|t| shape.complete_at(t).is_some())
                    || finished.first().is_some_and(|f| *f);
                if line_done && !first_line {
                    first_line = true;
                    timed.first_line(sent.elapsed());
                }
                // A server that never stops is cut off; the text is judged as it stands.
                if texts.iter().any(|t| t.len() > MAX_TEXT_BYTES) {
                    return false;
                }
                !texts.iter().zip(finished).all(|(t, f)| *f || shape.complete_at(t).is_some())
            };
            let result = source.stream(&req, &mut keep_reading).await;
            tx.send_modify(|s| {
                s.done = true;
                match result {
                    Ok(o) => {
                        s.id = o.id;
                        s.texts = o.texts;
                    }
                    Err(e) => s.error = Some(e),
                }
            });
        });
        Arc::new(Fetch { anchor, shape, fim, rx, pacer: pacer.clone(), _task: AbortOnDrop(task) })
    }

    /// Waits for the end of the fetch.
    pub async fn finished(&self) -> FetchState {
        let mut rx = self.rx.clone();
        let state = match rx.wait_for(|s| s.done).await {
            Ok(s) => s.clone(),
            Err(_) => FetchState {
                done: true,
                error: Some(ApiError::Unreachable("the fetch was dropped".into())),
                ..Default::default()
            },
        };
        state
    }

    /// The text typed since the anchor when the stream can still answer at `cursor`: the text
    /// matches, and what was typed is the start of what has streamed so far.
    pub fn serves(&self, uri: &str, rope: &Rope, cursor: usize) -> Option<String> {
        let typed = self.anchor.typed_since(uri, rope, cursor)?;
        let state = self.rx.borrow();
        if state.error.is_some() {
            return None;
        }
        if typed.is_empty() || !remainders(&state.texts, &typed).is_empty() {
            return Some(typed);
        }
        None
    }
}

/// The suggestion cache and the streams in flight.
pub struct Reuse {
    cache: Mutex<SuggestionCache>,
    inflight: Mutex<HashMap<String, Arc<Fetch>>>,
}

impl Reuse {
    pub fn new(entries: usize) -> Reuse {
        Reuse { cache: Mutex::new(SuggestionCache::new(entries)), inflight: Mutex::new(HashMap::new()) }
    }

    /// A cached suggestion that the text at `cursor` continues.
    pub fn cached(&self, uri: &str, rope: &Rope, cursor: usize) -> Option<Hit> {
        self.cache.lock().lookup(uri, rope, cursor)
    }

    pub fn remember(&self, entry: Entry) {
        self.cache.lock().insert(entry);
    }

    /// The document's stream in flight, if it can answer at `cursor`, with the text typed since.
    pub fn serving(&self, uri: &str, rope: &Rope, cursor: usize) -> Option<(Arc<Fetch>, String)> {
        let inflight = self.inflight.lock();
        let f = inflight.get(uri)?;
        f.serves(uri, rope, cursor).map(|typed| (f.clone(), typed))
    }

    /// `fetch` is now the document's stream in flight.
    pub fn started(&self, uri: &str, fetch: &Arc<Fetch>) {
        self.inflight.lock().insert(uri.to_string(), fetch.clone());
    }

    /// The document changed: its stream stays only while the text typed since still matches it.
    pub fn edited(&self, uri: &str, rope: &Rope, last_end: Option<usize>) {
        let mut inflight = self.inflight.lock();
        if let Some(f) = inflight.get(uri) {
            if last_end.is_none_or(|end| f.serves(uri, rope, end).is_none()) {
                inflight.remove(uri);
            }
        }
    }

    /// Forgets a finished or abandoned fetch (if it is still the document's current one and
    /// nobody else waits on it).
    pub fn release(&self, uri: &str, fetch: &Arc<Fetch>) {
        let mut inflight = self.inflight.lock();
        if inflight.get(uri).is_some_and(|f| Arc::ptr_eq(f, fetch))
            && (fetch.rx.borrow().done || Arc::strong_count(fetch) <= 2)
        {
            inflight.remove(uri);
        }
    }

    /// The document closed.
    pub fn forget(&self, uri: &str) {
        self.cache.lock().forget(uri);
        self.inflight.lock().remove(uri);
    }

    pub fn in_flight(&self, uri: &str) -> bool {
        self.inflight.lock().contains_key(uri)
    }
}
