//! The telemetry ingest: client events and the server's record of each completion it served.
//!
//! Everything goes through one bounded queue to one writer thread, which drains whatever has
//! arrived and commits it in a single transaction (group commit); a client's `202` is sent only
//! after its events' transaction committed, so an acknowledged event survives `kill -9`. A full
//! backlog refuses new batches (503) without touching queued ones. Events are deduplicated by
//! their `event_id` (or, without one, by a digest of their fields), so a retried batch is
//! stored once. The completion record never holds code unless `--store-completion-text` asks.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ghostline_api::{TelemetryEvent, TelemetryKind};
use sha2::{Digest, Sha256};
use tokio::sync::oneshot;

use crate::store::{DbTarget, Store, Val};

/// One served completion, as recorded.
#[derive(Debug, Clone, Default)]
pub struct CompletionRecord {
    pub id: String,
    pub key_name: Option<String>,
    pub language: Option<String>,
    pub editor: Option<String>,
    pub model: String,
    pub prompt_tokens: u64,
    pub cached_tokens: u64,
    pub completion_tokens: u64,
    pub queue_ms: f64,
    pub ttft_ms: f64,
    pub total_ms: f64,
    pub cache: &'static str,
    pub finish_reason: Option<&'static str>,
    /// Only with `--store-completion-text`.
    pub prompt: Option<String>,
    pub completion: Option<String>,
}

/// A client event with what the server adds.
#[derive(Debug, Clone)]
pub struct EventRecord {
    pub event: TelemetryEvent,
    pub key_name: Option<String>,
}

pub fn kind_name(k: TelemetryKind) -> &'static str {
    match k {
        TelemetryKind::Shown => "shown",
        TelemetryKind::Accepted => "accepted",
        TelemetryKind::PartiallyAccepted => "partially_accepted",
        TelemetryKind::Rejected => "rejected",
    }
}

/// The id an event is deduplicated on.
fn event_id(e: &TelemetryEvent) -> String {
    if let Some(id) = &e.event_id {
        return id.clone();
    }
    let mut h = Sha256::new();
    let fields = (
        &e.completion_id,
        e.choice_index,
        kind_name(e.kind),
        e.accepted_chars,
        e.shown_ms,
        e.client_ts,
        &e.editor,
        &e.language,
    );
    h.update(format!("{fields:?}").as_bytes());
    let d: String = h.finalize().iter().take(16).map(|b| format!("{b:02x}")).collect();
    format!("derived-{d}")
}

pub fn unix_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// Writes one group of events and completions in one transaction.
pub fn write_batch(store: &mut Store, events: &[EventRecord], completions: &[CompletionRecord]) -> anyhow::Result<()> {
    let now = unix_ms();
    store.transaction(|s| {
        for r in events {
            let e = &r.event;
            s.exec(
                "INSERT INTO telemetry_events (event_id, completion_id, choice_index, kind, accepted_chars, shown_ms, client_ts, editor, language, key_name, received_ms) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11) ON CONFLICT (event_id) DO NOTHING",
                &[
                    Val::Text(Some(event_id(e))),
                    Val::Text(Some(e.completion_id.clone())),
                    Val::Int(Some(e.choice_index as i64)),
                    Val::Text(Some(kind_name(e.kind).into())),
                    Val::Int(e.accepted_chars.map(i64::from)),
                    Val::Int(e.shown_ms.map(|v| v.min(i64::MAX as u64) as i64)),
                    Val::Int(e.client_ts.map(|v| v.min(i64::MAX as u64) as i64)),
                    Val::Text(e.editor.clone()),
                    Val::Text(e.language.clone()),
                    Val::Text(r.key_name.clone()),
                    Val::Int(Some(now)),
                ],
            )?;
        }
        for c in completions {
            s.exec(
                "INSERT INTO completions (id, created_ms, key_name, language, editor, model, prompt_tokens, cached_tokens, completion_tokens, \
                 queue_ms, ttft_ms, total_ms, cache, finish_reason, prompt, completion) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16) ON CONFLICT (id) DO NOTHING",
                &[
                    Val::Text(Some(c.id.clone())),
                    Val::Int(Some(now)),
                    Val::Text(c.key_name.clone()),
                    Val::Text(c.language.clone()),
                    Val::Text(c.editor.clone()),
                    Val::Text(Some(c.model.clone())),
                    Val::Int(Some(c.prompt_tokens as i64)),
                    Val::Int(Some(c.cached_tokens as i64)),
                    Val::Int(Some(c.completion_tokens as i64)),
                    Val::Real(Some(c.queue_ms)),
                    Val::Real(Some(c.ttft_ms)),
                    Val::Real(Some(c.total_ms)),
                    Val::Text(Some(c.cache.into())),
                    Val::Text(c.finish_reason.map(str::to_string)),
                    Val::Text(c.prompt.clone()),
                    Val::Text(c.completion.clone()),
                ],
            )?;
        }
        Ok(())
    })
}

enum Queued {
    Events(Vec<EventRecord>, oneshot::Sender<Result<(), String>>),
    Completion(Box<CompletionRecord>),
}

/// Why a batch was not stored.
#[derive(Debug, PartialEq)]
pub enum IngestError {
    /// The backlog is full; retry later.
    Busy,
    /// The database refused or is unreachable.
    Failed(String),
}

/// The handle HTTP handlers use.
pub struct Ingest {
    tx: mpsc::Sender<Queued>,
    /// Events and completion records queued, not yet committed.
    backlog: Arc<AtomicUsize>,
    capacity: usize,
}

impl Ingest {
    /// Starts the writer thread on its own connection.
    pub fn start(target: DbTarget, store: Store, capacity: usize) -> Ingest {
        let (tx, rx) = mpsc::channel();
        let backlog = Arc::new(AtomicUsize::new(0));
        let b = backlog.clone();
        let spawned =
            std::thread::Builder::new().name("ghostline-telemetry".into()).spawn(move || writer(target, store, rx, b));
        if let Err(e) = spawned {
            tracing::error!("starting the telemetry writer: {e}");
        }
        Ingest { tx, backlog, capacity }
    }

    fn reserve(&self, n: usize) -> bool {
        self.backlog
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |b| (b + n <= self.capacity).then_some(b + n))
            .is_ok()
    }

    /// Stores events; returns once they are committed.
    pub async fn submit(&self, events: Vec<EventRecord>) -> Result<(), IngestError> {
        let n = events.len();
        if n == 0 {
            return Ok(());
        }
        if !self.reserve(n) {
            metrics::counter!("ghostline_telemetry_refused_total").increment(n as u64);
            return Err(IngestError::Busy);
        }
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Queued::Events(events, tx)).is_err() {
            self.backlog.fetch_sub(n, Ordering::AcqRel);
            return Err(IngestError::Failed("the telemetry writer has stopped".into()));
        }
        match rx.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(IngestError::Failed(e)),
            Err(_) => Err(IngestError::Failed("the telemetry writer has stopped".into())),
        }
    }

    /// Queues the record of a served completion; dropped (and counted) when the backlog is full.
    pub fn record(&self, c: CompletionRecord) {
        if !self.reserve(1) || self.tx.send(Queued::Completion(Box::new(c))).is_err() {
            metrics::counter!("ghostline_completion_records_dropped_total").increment(1);
        }
    }
}

/// Largest group one transaction takes.
const MAX_GROUP: usize = 5000;

fn writer(target: DbTarget, store: Store, rx: mpsc::Receiver<Queued>, backlog: Arc<AtomicUsize>) {
    let mut store = Some(store);
    while let Ok(first) = rx.recv() {
        let mut jobs = vec![first];
        let mut size = 0;
        while size < MAX_GROUP {
            match rx.try_recv() {
                Ok(j) => {
                    size += match &j {
                        Queued::Events(e, _) => e.len(),
                        Queued::Completion(_) => 1,
                    };
                    jobs.push(j);
                }
                Err(_) => break,
            }
        }
        let mut events = Vec::new();
        let mut completions = Vec::new();
        let mut replies = Vec::new();
        for j in jobs {
            match j {
                Queued::Events(e, reply) => {
                    events.extend(e);
                    replies.push(reply);
                }
                Queued::Completion(c) => completions.push(*c),
            }
        }
        let n = events.len() + completions.len();
        let t0 = std::time::Instant::now();
        let mut result = Err(anyhow::anyhow!("no connection"));
        // One retry on a fresh connection (a restarted Postgres, say).
        for attempt in 0..2 {
            if store.is_none() || attempt > 0 {
                store = Store::open(&target).map_err(|e| tracing::warn!("reopening {}: {e:#}", target.describe())).ok();
            }
            if let Some(s) = store.as_mut() {
                result = write_batch(s, &events, &completions);
                if result.is_ok() {
                    break;
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        backlog.fetch_sub(n, Ordering::AcqRel);
        metrics::histogram!("ghostline_telemetry_commit_seconds").record(t0.elapsed().as_secs_f64());
        let reply = match result {
            Ok(()) => {
                metrics::counter!("ghostline_telemetry_events_total").increment(events.len() as u64);
                Ok(())
            }
            Err(e) => {
                metrics::counter!("ghostline_database_errors_total", "op" => "telemetry").increment(1);
                tracing::error!("storing telemetry in {}: {e:#}", target.describe());
                Err(format!("the telemetry store failed: {e}"))
            }
        };
        for r in replies {
            let _ = r.send(reply.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(id: Option<&str>, kind: TelemetryKind) -> EventRecord {
        EventRecord {
            event: TelemetryEvent {
                event_id: id.map(str::to_string),
                completion_id: "cmpl-1".into(),
                choice_index: 0,
                kind,
                accepted_chars: None,
                shown_ms: Some(10),
                client_ts: Some(1),
                editor: None,
                language: None,
            },
            key_name: None,
        }
    }

    #[test]
    fn retried_events_are_stored_once() {
        let dir = std::env::temp_dir().join(format!("ghostline-tel-{}", std::process::id()));
        let target = DbTarget::Sqlite(dir.join("g.db"));
        let mut s = Store::open(&target).unwrap();
        let batch = vec![ev(Some("e1"), TelemetryKind::Shown), ev(None, TelemetryKind::Accepted)];
        write_batch(&mut s, &batch, &[]).unwrap();
        write_batch(&mut s, &batch, &[]).unwrap();
        let n = s.query("SELECT COUNT(*) FROM telemetry_events", &[]).unwrap();
        assert_eq!(n[0][0].int(), Some(2));
        std::fs::remove_dir_all(dir).ok();
    }
}
