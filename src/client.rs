//! The HTTP side: `Api`, the `CompletionSource` of a ghostline-server (or another
//! OpenAI-compatible server): completions streamed over SSE, read only as far as the suggestion
//! needs, `GET /v1/models`, and the JSON posts telemetry makes.
//!
//! Stream chunks are read leniently: a suggestion depends on the choices' text and end alone,
//! so a chunk without `id`, `object`, `created` or `model` (as several servers send) is read.

use std::time::Duration;

use eventsource_stream::Eventsource;
use futures_util::future::BoxFuture;
use futures_util::{FutureExt, StreamExt};
use ghostline_api::{CompletionRequest, ErrorBody, ModelList};
use serde::{Deserialize, Serialize};

use crate::source::{ApiError, CompletionSource, KeepReading, Streamed};

/// A client for one server URL and key.
pub struct Api {
    http: reqwest::Client,
    pub base: String,
    key: Option<String>,
}

/// The fields of a `ghostline_api::CompletionChunk` that a suggestion depends on; every other
/// field may be missing.
#[derive(Debug, Deserialize)]
struct ChunkView {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    choices: Vec<ChoiceView>,
}

#[derive(Debug, Deserialize)]
struct ChoiceView {
    #[serde(default)]
    index: u32,
    #[serde(default)]
    text: String,
    /// Any reason at all (`stop`, `length`, `eos`, ...) ends the choice.
    #[serde(default)]
    finish_reason: Option<serde_json::Value>,
}

/// One SSE data payload: the end marker or a chunk.
#[derive(Debug)]
enum Event {
    Done,
    Chunk(ChunkView),
}

fn parse_event(data: &str) -> Result<Event, ApiError> {
    if data.trim() == "[DONE]" {
        return Ok(Event::Done);
    }
    serde_json::from_str(data)
        .map(Event::Chunk)
        .map_err(|e| ApiError::Protocol(format!("{e}: {}", data.chars().take(120).collect::<String>())))
}

use ghostline_api::{affinity, AFFINITY_HEADER};

fn error_message(status: reqwest::StatusCode, body: &str) -> (String, Option<String>) {
    match serde_json::from_str::<ErrorBody>(body) {
        Ok(e) => (e.error.message, e.error.param),
        Err(_) => (format!("{} {}", status.as_u16(), body.chars().take(200).collect::<String>()), None),
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

    fn authed(&self, b: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
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
        let (message, param) = error_message(code, &body);
        Err(ApiError::Status { code: code.as_u16(), message, param, retry_after })
    }

    /// Posts JSON to `path` and returns the status and body.
    pub async fn post_json(
        &self,
        path: &str,
        body: &impl Serialize,
        timeout: Duration,
    ) -> Result<(u16, String), ApiError> {
        let resp = self
            .authed(self.http.post(format!("{}{path}", self.base)))
            .timeout(timeout)
            .json(body)
            .send()
            .await
            .map_err(|e| ApiError::Unreachable(e.to_string()))?;
        let code = resp.status().as_u16();
        Ok((code, resp.text().await.unwrap_or_default()))
    }

    async fn list_models(&self) -> Result<ModelList, ApiError> {
        let resp = Self::check(self.authed(self.http.get(format!("{}/v1/models", self.base))).send().await).await?;
        let body = resp.text().await.map_err(|e| ApiError::Unreachable(e.to_string()))?;
        serde_json::from_str(&body).map_err(|e| ApiError::Protocol(format!("/v1/models: {e}")))
    }

    async fn stream_completion(
        &self,
        req: &CompletionRequest,
        keep_reading: KeepReading<'_>,
    ) -> Result<Streamed, ApiError> {
        let mut post = self.authed(self.http.post(format!("{}/v1/completions", self.base))).json(req);
        if let Some(a) = affinity(req.user.as_deref().or(self.key.as_deref()), req.path.as_deref()) {
            post = post.header(AFFINITY_HEADER, a);
        }
        let resp = Self::check(post.send().await).await?;
        let n = req.n.unwrap_or(1).clamp(1, 16) as usize;
        let mut texts = vec![String::new(); n];
        let mut finished = vec![false; n];
        let mut id = String::new();
        let mut events = resp.bytes_stream().eventsource();
        while let Some(ev) = events.next().await {
            let ev = ev.map_err(|e| ApiError::Unreachable(e.to_string()))?;
            let chunk = match parse_event(&ev.data)? {
                Event::Done => return Ok(Streamed { id, texts, stopped_early: false }),
                Event::Chunk(c) => c,
            };
            if id.is_empty() {
                id = chunk.id.unwrap_or_default();
            }
            for c in chunk.choices {
                let i = c.index as usize;
                if i < n {
                    texts[i].push_str(&c.text);
                    finished[i] |= c.finish_reason.is_some_and(|r| !r.is_null());
                }
            }
            if !keep_reading(&texts, &finished) {
                return Ok(Streamed { id, texts, stopped_early: true });
            }
        }
        Err(ApiError::Unreachable("the stream ended before [DONE]".into()))
    }
}

impl CompletionSource for Api {
    fn describe(&self) -> &str {
        &self.base
    }

    fn models(&self) -> BoxFuture<'_, Result<ModelList, ApiError>> {
        self.list_models().boxed()
    }

    fn stream<'a>(
        &'a self,
        req: &'a CompletionRequest,
        keep_reading: KeepReading<'a>,
    ) -> BoxFuture<'a, Result<Streamed, ApiError>> {
        self.stream_completion(req, keep_reading).boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ghostline_api::{Choice, CompletionChunk, FinishReason};

    fn chunk(data: &str) -> ChunkView {
        match parse_event(data) {
            Ok(Event::Chunk(c)) => c,
            other => panic!("{data}: {other:?}"),
        }
    }

    #[test]
    fn a_chunk_as_ghostline_server_sends_it_is_read() {
        let c = CompletionChunk {
            id: "cmpl-1".into(),
            object: "text_completion".into(),
            created: 1764201600,
            model: "ghostline-tiny".into(),
            choices: vec![Choice { index: 1, text: "x + 1".into(), finish_reason: Some(FinishReason::Stop) }],
            usage: None,
            cache: None,
            timings: None,
        };
        let v = chunk(&serde_json::to_string(&c).unwrap());
        assert_eq!(v.id.as_deref(), Some("cmpl-1"));
        assert_eq!((v.choices[0].index, v.choices[0].text.as_str()), (1, "x + 1"));
        assert!(v.choices[0].finish_reason.is_some());
    }

    #[test]
    fn chunks_from_servers_that_omit_optional_fields_are_read() {
        // llama.cpp's server: no `created` in some versions, `finish_reason` null mid-stream.
        let v = chunk(
            r#"{"id":"cmpl-a","object":"text_completion","model":"m","choices":[{"index":0,"text":"foo","finish_reason":null}]}"#,
        );
        assert_eq!(v.choices[0].text, "foo");
        assert!(v.choices[0].finish_reason.as_ref().is_none_or(|r| r.is_null()));
        // No id, object, created or model at all; extra fields (logprobs) ignored.
        let v = chunk(r#"{"choices":[{"index":0,"text":"bar","logprobs":null,"finish_reason":"eos"}]}"#);
        assert_eq!((v.id, v.choices[0].text.as_str()), (None, "bar"));
        // A choice without index (one choice) and a final chunk with usage and no choices.
        assert_eq!(chunk(r#"{"choices":[{"text":"baz"}]}"#).choices[0].index, 0);
        assert!(chunk(r#"{"id":"x","choices":[],"usage":{"prompt_tokens":1}}"#).choices.is_empty());
        assert!(matches!(parse_event(" [DONE] "), Ok(Event::Done)));
        // Not JSON, or choices of the wrong type: a protocol error, never a panic.
        assert!(matches!(parse_event("{not json"), Err(ApiError::Protocol(_))));
        assert!(matches!(parse_event(r#"{"choices":"x"}"#), Err(ApiError::Protocol(_))));
    }
}
