//! The one interface between the HTTP side and whatever runs the model: a `Job` goes in, a
//! stream of `Event`s comes out. The local scheduler implements it; an inference upstream
//! (another server) can implement it the same way, and nothing above this trait knows which
//! runs.

use std::sync::Arc;
use std::time::Instant;

use ghostline_api::FinishReason;
use ghostline_engine::SamplingParams;

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
