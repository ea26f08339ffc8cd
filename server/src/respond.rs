//! Turns a completion's events (from inference or a cache) into the answer: SSE chunks as text
//! arrives, or one JSON body at the end. Streamed text is held back by the word or the line
//! until the output filters vouch for it (`filters::Outgoing`); the end goes to the ticket.

use std::convert::Infallible;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::stream::{self, Stream, StreamExt};
use ghostline_api::{CacheOutcome, Choice, CompletionChunk, FinishReason, PromptTokensDetails, Timings, Usage};

use crate::error::HttpError;
use crate::filters::Outgoing;
use crate::gateway::Ticket;
use crate::inference::{Event, Summary};

/// The fixed fields of one answer.
pub struct Reply {
    pub model: String,
    pub id: String,
    pub created: u64,
    pub streaming: bool,
    pub n: usize,
}

impl Reply {
    pub fn new(model: &str, streaming: bool, n: usize) -> Reply {
        Reply { model: model.to_string(), id: completion_id(), created: unix_now(), streaming, n }
    }
}

pub fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn completion_id() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = DefaultHasher::new();
    COUNTER.fetch_add(1, Ordering::Relaxed).hash(&mut h);
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos()).hash(&mut h);
    std::process::id().hash(&mut h);
    let a = h.finish();
    a.hash(&mut h);
    format!("cmpl-{:016x}{:08x}", a, h.finish() as u32)
}

fn final_fields(summary: &Summary) -> (Usage, Timings) {
    (
        Usage {
            prompt_tokens: summary.prompt_tokens as u32,
            completion_tokens: summary.completion_tokens as u32,
            total_tokens: (summary.prompt_tokens + summary.completion_tokens) as u32,
            prompt_tokens_details: PromptTokensDetails { cached_tokens: summary.cached_tokens as u32 },
        },
        Timings {
            queue_ms: round3(summary.queue_ms),
            prefill_ms: round3(summary.prefill_ms),
            ttft_ms: round3(summary.ttft_ms),
            total_ms: round3(summary.total_ms),
        },
    )
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// The last chunk: usage, cache outcome and timings.
fn final_chunk(mut c: CompletionChunk, summary: &Summary, cache: CacheOutcome) -> CompletionChunk {
    let (usage, timings) = final_fields(summary);
    c.usage = Some(usage);
    c.cache = Some(cache);
    c.timings = Some(timings);
    c
}

/// Candidate 0's text and finish, unless it was filtered out.
fn first(outs: &[Outgoing]) -> Option<(String, FinishReason)> {
    let o = outs.first().filter(|o| !o.blocked)?;
    Some((o.sent.clone(), o.finish?))
}

/// Hands the end of a completion to the ticket; the finish reasons per candidate.
fn finish(ticket: &mut Ticket, outs: &[Outgoing], summary: &Summary, cache: CacheOutcome) -> Vec<Option<FinishReason>> {
    let f = first(outs);
    let finishes: Vec<_> = outs.iter().map(Outgoing::finish_reason).collect();
    ticket.finish(f.as_ref().map(|(t, r)| (t.as_str(), *r)), &finishes, summary, cache);
    finishes
}

pub async fn respond<S>(reply: Reply, cache: CacheOutcome, events: S, ticket: Ticket) -> Response
where
    S: Stream<Item = Event> + Send + Unpin + 'static,
{
    let Reply { model, id, created, streaming, n } = reply;
    let chunk = move |choices: Vec<Choice>| CompletionChunk {
        id: id.clone(),
        object: "text_completion".into(),
        created,
        model: model.clone(),
        choices,
        usage: None,
        cache: None,
        timings: None,
    };
    let mut ticket = ticket;
    let mut outs: Vec<Outgoing> = (0..n).map(|_| Outgoing::default()).collect();
    if !streaming {
        let mut events = events;
        while let Some(ev) = events.next().await {
            match ev {
                Event::Text { index, text } => outs[index as usize].held.push_str(&text),
                Event::Done { index, finish } => outs[index as usize].finish = Some(finish),
                Event::Error(m) => return HttpError::Internal(m).into_response(),
                Event::Unavailable(m) => return HttpError::Unavailable(m).into_response(),
                Event::Finished(summary) => {
                    for o in outs.iter_mut() {
                        o.flush(&|t| ticket.blocked(t).is_some());
                    }
                    finish(&mut ticket, &outs, &summary, cache);
                    let choices = outs
                        .into_iter()
                        .enumerate()
                        .map(|(i, o)| Choice { index: i as u32, finish_reason: o.finish_reason(), text: o.sent })
                        .collect();
                    return Json(final_chunk(chunk(choices), &summary, cache)).into_response();
                }
            }
        }
        return HttpError::Internal("the engine stopped before the completion finished".into()).into_response();
    }

    let hold = ticket.hold();
    struct St<S> {
        events: S,
        outs: Vec<Outgoing>,
        done: bool,
        ticket: Ticket,
    }
    let state = St { events, outs, done: false, ticket };
    let body = stream::unfold((state, chunk), move |(mut s, chunk)| async move {
        if s.done {
            return None;
        }
        loop {
            let Some(ev) = s.events.next().await else {
                s.done = true;
                return Some((vec![SseEvent::default().data("[DONE]")], (s, chunk)));
            };
            match ev {
                Event::Text { index, text } => {
                    let ticket = &s.ticket;
                    if let Some(text) = s.outs[index as usize].push(&|t| ticket.blocked(t).is_some(), &text, hold) {
                        let c = chunk(vec![Choice { index, text, finish_reason: None }]);
                        return Some((vec![sse_json(&c)], (s, chunk)));
                    }
                }
                Event::Done { index, finish } => s.outs[index as usize].finish = Some(finish),
                Event::Error(m) | Event::Unavailable(m) => {
                    s.done = true;
                    let e = HttpError::Internal(m).body();
                    let ev = SseEvent::default().data(serde_json::to_string(&e).unwrap_or_default());
                    return Some((vec![ev, SseEvent::default().data("[DONE]")], (s, chunk)));
                }
                Event::Finished(summary) => {
                    s.done = true;
                    let mut out = Vec::new();
                    for i in 0..s.outs.len() {
                        let ticket = &s.ticket;
                        if let Some(text) = s.outs[i].flush(&|t| ticket.blocked(t).is_some()) {
                            out.push(sse_json(&chunk(vec![Choice { index: i as u32, text, finish_reason: None }])));
                        }
                    }
                    let finishes = finish(&mut s.ticket, &s.outs, &summary, cache);
                    let choices = finishes
                        .iter()
                        .enumerate()
                        .map(|(i, f)| Choice { index: i as u32, text: String::new(), finish_reason: *f })
                        .collect();
                    out.push(sse_json(&final_chunk(chunk(choices), &summary, cache)));
                    out.push(SseEvent::default().data("[DONE]"));
                    return Some((out, (s, chunk)));
                }
            }
        }
    })
    .flat_map(|evs| stream::iter(evs.into_iter().map(Ok::<_, Infallible>)));
    Sse::new(body).into_response()
}

fn sse_json(c: &CompletionChunk) -> SseEvent {
    SseEvent::default().data(serde_json::to_string(c).unwrap_or_default())
}
