//! The HTTP side: completions streamed from ghostline-server over SSE, read only as far as the
//! suggestion needs, and shared by every request that can use them.
//!
//! A `Fetch` owns one stream in a task. Requests hold it through an `Arc`; when the last holder
//! lets go the task is aborted, the connection closes, and the server frees the sequence.

use std::sync::Arc;
use std::time::Duration;

use eventsource_stream::Eventsource;
use futures_util::StreamExt;
use ghostline_api::{CompletionChunk, ErrorBody};
use serde_json::Value;
use tokio::sync::watch;

use crate::cache::Anchor;
use crate::postprocess::complete_at;
use crate::trigger::Mode;

/// Why a completion could not be had.
#[derive(Debug, Clone, PartialEq)]
pub enum ApiError {
    /// No connection (server down, wrong URL) or it broke.
    Unreachable(String),
    /// The server answered with an error status.
    Status { code: u16, message: String, retry_after: Option<u64> },
    /// The server answered something that is not the protocol.
    Protocol(String),
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ApiError::Unreachable(m) => write!(f, "cannot reach ghostline-server: {m}"),
            ApiError::Status { code, message, .. } => write!(f, "ghostline-server answered {code}: {message}"),
            ApiError::Protocol(m) => write!(f, "unexpected answer from ghostline-server: {m}"),
        }
    }
}

/// A client for one server URL and key.
pub struct Api {
    http: reqwest::Client,
    pub base: String,
    key: Option<String>,
}

/// The end of a stream.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    pub id: String,
    pub texts: Vec<String>,
    /// Whether reading stopped because the suggestion was complete, not at the stream's end.
    pub stopped_early: bool,
}

fn error_message(status: reqwest::StatusCode, body: &str) -> String {
    match serde_json::from_str::<ErrorBody>(body) {
        Ok(e) => e.error.message,
        Err(_) => format!("{} {}", status.as_u16(), body.chars().take(200).collect::<String>()),
    }
}

impl Api {
    pub fn new(base: &str, key: Option<String>) -> Api {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_millis(1500))
            .tcp_nodelay(true)
            .pool_idle_timeout(Duration::from_secs(60))
            .build()
            .unwrap_or_default();
        Api { http, base: base.trim_end_matches('/').to_string(), key }
    }

    fn post(&self, path: &str) -> reqwest::RequestBuilder {
        let b = self.http.post(format!("{}{path}", self.base));
        match &self.key {
            Some(k) => b.bearer_auth(k),
            None => b,
        }
    }

    async fn check(resp: Result<reqwest::Response, reqwest::Error>) -> Result<reqwest::Response, ApiError> {
        let resp = resp.map_err(|e| ApiError::Unreachable(e.to_string()))?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let code = resp.status();
        let retry_after = resp.headers().get("retry-after").and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok());
        let body = resp.text().await.unwrap_or_default();
        Err(ApiError::Status { code: code.as_u16(), message: error_message(code, &body), retry_after })
    }

    /// The model's context length in tokens (`GET /v1/models`), for sizing the prompt.
    pub async fn context_length(&self, model: Option<&str>) -> Result<usize, ApiError> {
        let mut b = self.http.get(format!("{}/v1/models", self.base));
        if let Some(k) = &self.key {
            b = b.bearer_auth(k);
        }
        let resp = Self::check(b.send().await).await?;
        let v: Value = resp.json().await.map_err(|e| ApiError::Protocol(e.to_string()))?;
        let models = v["data"].as_array().ok_or_else(|| ApiError::Protocol("no data in /v1/models".into()))?;
        let m = match model {
            Some(name) => models.iter().find(|m| m["id"] == name),
            None => models.first(),
        };
        m.and_then(|m| m["context_length"].as_u64())
            .map(|n| n as usize)
            .ok_or_else(|| ApiError::Protocol("no context_length in /v1/models".into()))
    }

    /// Posts JSON to `path` and returns the status and body.
    pub async fn post_json(&self, path: &str, body: &Value, timeout: Duration) -> Result<(u16, String), ApiError> {
        let resp = self
            .post(path)
            .timeout(timeout)
            .json(body)
            .send()
            .await
            .map_err(|e| ApiError::Unreachable(e.to_string()))?;
        let code = resp.status().as_u16();
        Ok((code, resp.text().await.unwrap_or_default()))
    }

    /// Streams a completion. `keep_reading(texts, finished)` sees the text so far per choice
    /// after every chunk; returning false ends the stream (dropping the connection).
    pub async fn stream(
        &self,
        body: &Value,
        mut keep_reading: impl FnMut(&[String], &[bool]) -> bool,
    ) -> Result<Outcome, ApiError> {
        let resp = Self::check(self.post("/v1/completions").json(body).send().await).await?;
        let n = body["n"].as_u64().unwrap_or(1).clamp(1, 16) as usize;
        let mut texts = vec![String::new(); n];
        let mut finished = vec![false; n];
        let mut id = String::new();
        let mut events = resp.bytes_stream().eventsource();
        while let Some(ev) = events.next().await {
            let ev = ev.map_err(|e| ApiError::Unreachable(e.to_string()))?;
            if ev.data.trim() == "[DONE]" {
                return Ok(Outcome { id, texts, stopped_early: false });
            }
            let chunk: CompletionChunk = serde_json::from_str(&ev.data)
                .map_err(|e| ApiError::Protocol(format!("{e}: {}", ev.data.chars().take(120).collect::<String>())))?;
            if id.is_empty() {
                id = chunk.id.clone();
            }
            for c in &chunk.choices {
                let i = c.index as usize;
                if i < n {
                    texts[i].push_str(&c.text);
                    finished[i] |= c.finish_reason.is_some();
                }
            }
            if !keep_reading(&texts, &finished) {
                return Ok(Outcome { id, texts, stopped_early: true });
            }
        }
        Err(ApiError::Unreachable("the stream ended before [DONE]".into()))
    }
}

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
    pub mode: Mode,
    pub rx: watch::Receiver<FetchState>,
    _task: AbortOnDrop,
}

impl Fetch {
    /// Starts streaming `body`; reading stops once every choice is complete for `mode`.
    pub fn start(api: Arc<Api>, body: Value, anchor: Anchor, mode: Mode) -> Arc<Fetch> {
        let (tx, rx) = watch::channel(FetchState::default());
        let task = tokio::spawn(async move {
            let result = api
                .stream(&body, |texts, finished| {
                    tx.send_modify(|s| s.texts = texts.to_vec());
                    // A server that never stops is cut off; the text is judged as it stands.
                    if texts.iter().any(|t| t.len() > MAX_TEXT_BYTES) {
                        return false;
                    }
                    !texts.iter().zip(finished).all(|(t, f)| *f || complete_at(mode, t).is_some())
                })
                .await;
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
        Arc::new(Fetch { anchor, mode, rx, _task: AbortOnDrop(task) })
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
}
