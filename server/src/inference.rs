//! The one interface between the HTTP side and whatever runs the model: a `Job` goes in, a
//! stream of `Event`s comes out. The local scheduler (`scheduler`) and an inference upstream
//! (`upstream`) implement it, and nothing above this trait knows which runs. `Output` is how
//! generated tokens become a candidate's streamed text for an implementation that does not
//! run the engine's own loop.

use std::sync::Arc;
use std::time::Instant;

use ghostline_api::FinishReason;
use ghostline_engine::{SamplingParams, StopMatcher, StreamDecoder, Tokenizer};

/// One completion to run, already templated into token ids.
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    pub prompt: Vec<u32>,
    pub n: usize,
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    pub stop: Vec<String>,
    pub stop_ids: Vec<u32>,
    /// The tokens the first generated token must be one of, if limited.
    pub first_tokens: Option<Arc<[u32]>>,
    /// Text each candidate's output begins with that is not streamed (the client has it).
    pub lead: String,
    /// (user, path): a newer job with the same key cancels this one.
    pub supersede_key: Option<(String, String)>,
    pub submitted: Instant,
}

/// What happens to a job, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Text {
        index: u32,
        text: String,
    },
    /// One candidate ended.
    Done {
        index: u32,
        finish: FinishReason,
    },
    /// All candidates ended; always the last event.
    Finished(Summary),
    /// The job failed (nothing more follows).
    Error(String),
    /// What runs the model cannot be reached or is overloaded, and nothing was produced:
    /// worth retrying (503 with `Retry-After`). Nothing more follows.
    Unavailable(String),
}

/// Usage and timings of a finished job.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Summary {
    pub prompt_tokens: usize,
    pub cached_tokens: usize,
    pub completion_tokens: usize,
    pub queue_ms: f64,
    pub prefill_ms: f64,
    pub ttft_ms: f64,
    pub total_ms: f64,
}

/// Why a job was refused.
#[derive(Debug, Clone, PartialEq)]
pub enum SubmitError {
    QueueFull,
    Stopped,
}

/// A job's events; dropping it cancels the job.
pub type Events = tokio::sync::mpsc::UnboundedReceiver<Event>;

/// Runs completions.
pub trait Inference: Send + Sync {
    fn submit(&self, job: Job) -> Result<Events, SubmitError>;
}

/// One candidate's output on its way out: generated tokens (or text) through the streaming
/// decoder, the lead cut off (text the client already has), stop ids and stop strings, and
/// `max_tokens`, in the order the local scheduler applies them.
pub struct Output<'a> {
    tok: &'a Tokenizer,
    decoder: StreamDecoder,
    lead_left: String,
    stops: StopMatcher,
    stop_ids: &'a [u32],
    max_tokens: usize,
    generated: usize,
    /// How the producer said the candidate ended, once it said so.
    pub upstream_finish: Option<FinishReason>,
}

impl<'a> Output<'a> {
    pub fn new(job: &'a Job, tok: &'a Tokenizer) -> Output<'a> {
        Output {
            tok,
            decoder: StreamDecoder::new(&job.prompt),
            lead_left: job.lead.clone(),
            stops: StopMatcher::new(&job.stop),
            stop_ids: &job.stop_ids,
            max_tokens: job.max_tokens,
            generated: 0,
            upstream_finish: None,
        }
    }

    /// Tokens generated so far (a stop id is not counted).
    pub fn generated(&self) -> usize {
        self.generated
    }

    /// Takes the next token: the text to stream, and the finish when the candidate ends here.
    pub fn token(&mut self, id: u32) -> (String, Option<FinishReason>) {
        if self.stop_ids.contains(&id) {
            let (tail, _) = self.stops.finish_with(&self.decoder.flush(self.tok).unwrap_or_default());
            return (tail, Some(FinishReason::Stop));
        }
        self.generated += 1;
        let piece = self.decoder.push(self.tok, id).unwrap_or_default();
        let at_limit = self.generated >= self.max_tokens;
        let (mut text, mut hit) = self.piece(piece);
        if !hit && at_limit {
            let (tail, hit_in_tail) = self.stops.finish_with(&self.decoder.flush(self.tok).unwrap_or_default());
            text.push_str(&tail);
            hit = hit_in_tail;
        }
        let finish = if hit { Some(FinishReason::Stop) } else { at_limit.then_some(FinishReason::Length) };
        (text, finish)
    }

    /// Takes the next piece of generated text, from a producer that sends text and ends the
    /// candidate itself at `max_tokens`.
    pub fn text(&mut self, piece: &str) -> (String, Option<FinishReason>) {
        self.generated += 1;
        let (text, hit) = self.piece(piece.to_string());
        (text, hit.then_some(FinishReason::Stop))
    }

    /// The producer ended the candidate: the text still held back.
    pub fn end(&mut self) -> String {
        let (tail, _) = self.stops.finish_with(&self.decoder.flush(self.tok).unwrap_or_default());
        tail
    }

    fn piece(&mut self, mut piece: String) -> (String, bool) {
        if !self.lead_left.is_empty() {
            piece = crate::scheduler::cut_lead(&mut self.lead_left, piece);
        }
        self.stops.push(&piece)
    }
}
