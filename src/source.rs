//! Where completions come from, as the keystroke path sees it: `CompletionSource`, which the
//! HTTP client (`client::Api`) implements against ghostline-server, and `script::Script`, a
//! source that answers from a script so the keystroke logic is tested without HTTP.
//!
//! Invariant: requests and model lists are `ghostline_api` types end to end; a source never
//! panics on what a server sends, it answers an `ApiError`.

use futures_util::future::BoxFuture;
use ghostline_api::{CompletionRequest, ModelList};

/// Why a completion could not be had.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ApiError {
    /// No connection (server down, wrong URL), it broke, or no answer within the deadline.
    #[error("cannot reach ghostline-server: {0}")]
    Unreachable(String),
    /// The server answered with an error status; `param` names the request field it refused.
    #[error("ghostline-server answered {code}: {message}")]
    Status { code: u16, message: String, param: Option<String>, retry_after: Option<u64> },
    /// The server answered something that is not the protocol.
    #[error("unexpected answer from ghostline-server: {0}")]
    Protocol(String),
}

/// The end of a stream: the completion id and the text of every choice.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Streamed {
    pub id: String,
    pub texts: Vec<String>,
    /// Whether reading stopped because the suggestion was complete, not at the stream's end.
    pub stopped_early: bool,
}

/// Sees the text so far per choice and whether each choice finished, after every chunk;
/// returning false ends the stream (the source lets the connection go).
pub type KeepReading<'a> = &'a mut (dyn FnMut(&[String], &[bool]) -> bool + Send);

/// A completion server as the keystroke path uses it.
pub trait CompletionSource: Send + Sync {
    /// Where it is, for the user's messages (the server URL).
    fn describe(&self) -> &str;
    /// `GET /v1/models`.
    fn models(&self) -> BoxFuture<'_, Result<ModelList, ApiError>>;
    /// `POST /v1/completions`, streamed; `req.n` choices.
    fn stream<'a>(
        &'a self,
        req: &'a CompletionRequest,
        keep_reading: KeepReading<'a>,
    ) -> BoxFuture<'a, Result<Streamed, ApiError>>;
}

/// A scripted source for tests of the keystroke logic: each completion request takes the next
/// reply of the script and is recorded; `/v1/models` answers as set.
#[cfg(test)]
pub mod script {
    use std::collections::VecDeque;
    use std::sync::Arc;

    use futures_util::FutureExt;
    use parking_lot::Mutex;
    use tokio::sync::Notify;

    use super::*;

    /// One scripted answer to a completion request.
    #[derive(Debug, Clone)]
    pub enum Reply {
        /// Each choice's whole text in one chunk, finished.
        Texts(Vec<&'static str>),
        /// Choice 0 streams these chunks, then the stream waits for `Script::release`.
        Held(Vec<&'static str>),
        /// The request fails.
        Fail(ApiError),
        /// No answer at all (a server that accepted the connection and went quiet).
        Hang,
    }

    /// How `/v1/models` answers.
    #[derive(Debug, Clone)]
    pub enum Models {
        List(ModelList),
        Fail(ApiError),
        Hang,
    }

    pub struct Script {
        replies: Mutex<VecDeque<Reply>>,
        models: Mutex<Models>,
        pub requests: Mutex<Vec<CompletionRequest>>,
        pub model_calls: Mutex<u32>,
        release: Notify,
    }

    /// A model list of one model, as ghostline-server gives it.
    pub fn one_model(context_length: u32, fim: Option<&str>) -> ModelList {
        ModelList {
            object: "list".into(),
            data: vec![ghostline_api::ModelInfo {
                id: "m".into(),
                object: "model".into(),
                created: 0,
                owned_by: "test".into(),
                context_length: Some(context_length),
                fim: fim.map(str::to_string),
            }],
        }
    }

    impl Script {
        pub fn new(replies: Vec<Reply>) -> Arc<Script> {
            Arc::new(Script {
                replies: Mutex::new(replies.into()),
                models: Mutex::new(Models::List(one_model(4096, Some("qwen")))),
                requests: Mutex::new(vec![]),
                model_calls: Mutex::new(0),
                release: Notify::new(),
            })
        }

        pub fn set_models(&self, m: Models) {
            *self.models.lock() = m;
        }

        pub fn push(&self, r: Reply) {
            self.replies.lock().push_back(r);
        }

        /// Lets every held stream finish.
        pub fn release(&self) {
            self.release.notify_waiters();
        }

        pub fn sent(&self) -> Vec<CompletionRequest> {
            self.requests.lock().clone()
        }
    }

    impl CompletionSource for Script {
        fn describe(&self) -> &str {
            "script"
        }

        fn models(&self) -> BoxFuture<'_, Result<ModelList, ApiError>> {
            *self.model_calls.lock() += 1;
            let m = self.models.lock().clone();
            async move {
                match m {
                    Models::List(l) => Ok(l),
                    Models::Fail(e) => Err(e),
                    Models::Hang => futures_util::future::pending().await,
                }
            }
            .boxed()
        }

        fn stream<'a>(
            &'a self,
            req: &'a CompletionRequest,
            keep_reading: KeepReading<'a>,
        ) -> BoxFuture<'a, Result<Streamed, ApiError>> {
            self.requests.lock().push(req.clone());
            let reply = self.replies.lock().pop_front();
            let n = req.n.unwrap_or(1).clamp(1, 16) as usize;
            async move {
                let id = format!("cmpl-script-{}", self.requests.lock().len());
                let mut texts = vec![String::new(); n];
                match reply {
                    None => Err(ApiError::Unreachable("the script has no more replies".into())),
                    Some(Reply::Fail(e)) => Err(e),
                    Some(Reply::Hang) => futures_util::future::pending().await,
                    Some(Reply::Texts(t)) => {
                        for (slot, t) in texts.iter_mut().zip(t) {
                            slot.push_str(t);
                        }
                        let stopped_early = !keep_reading(&texts, &vec![true; n]);
                        Ok(Streamed { id, texts, stopped_early })
                    }
                    Some(Reply::Held(chunks)) => {
                        // Registered before the first chunk, so a release after it is not lost.
                        let released = self.release.notified();
                        tokio::pin!(released);
                        released.as_mut().enable();
                        for c in chunks {
                            texts[0].push_str(c);
                            if !keep_reading(&texts, &vec![false; n]) {
                                return Ok(Streamed { id, texts, stopped_early: true });
                            }
                            tokio::task::yield_now().await;
                        }
                        released.await;
                        Ok(Streamed { id, texts, stopped_early: false })
                    }
                }
            }
            .boxed()
        }
    }
}
