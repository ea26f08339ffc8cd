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
            // Below ghostline-server's default header timeout (10 s), which closes idle
            // keep-alive connections: the client lets go first, so no request meets a closing one.
            .pool_idle_timeout(Duration::from_secs(8))
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
        let mut progress = Progress::new(req.n.unwrap_or(1).clamp(1, 16) as usize);
        let mut events = std::pin::pin!(without_bom(resp.bytes_stream()).eventsource());
        while let Some(ev) = events.next().await {
            let ev = ev.map_err(|e| ApiError::Unreachable(e.to_string()))?;
            if progress.take(&ev.data)? {
                return Ok(progress.into_streamed(false));
            }
            if !keep_reading(&progress.texts, &progress.finished) {
                return Ok(progress.into_streamed(true));
            }
        }
        Err(ApiError::Unreachable("the stream ended before [DONE]".into()))
    }
}

const BOM: &[u8] = b"\xef\xbb\xbf";

/// The body with its leading byte-order marks taken off. eventsource-stream 0.2 strips one by
/// slicing one byte off the first text, which panics on the three-byte UTF-8 mark (found by
/// the fuzz test below), so it must never see one.
fn without_bom<S, B, E>(body: S) -> impl futures_util::Stream<Item = Result<Vec<u8>, E>>
where
    S: futures_util::Stream<Item = Result<B, E>>,
    B: AsRef<[u8]>,
{
    let state = (Box::pin(body), Vec::new(), false);
    futures_util::stream::unfold(state, |(mut body, mut head, started)| async move {
        loop {
            match body.next().await {
                Some(Ok(chunk)) if started => return Some((Ok(chunk.as_ref().to_vec()), (body, head, true))),
                Some(Ok(chunk)) => {
                    head.extend_from_slice(chunk.as_ref());
                    while head.starts_with(BOM) {
                        head.drain(..BOM.len());
                    }
                    // Wait while what came so far could still be the start of a mark.
                    if !head.is_empty() && !BOM.starts_with(&head) {
                        return Some((Ok(std::mem::take(&mut head)), (body, head, true)));
                    }
                }
                Some(Err(e)) => return Some((Err(e), (body, head, started))),
                None if !head.is_empty() => return Some((Ok(std::mem::take(&mut head)), (body, head, true))),
                None => return None,
            }
        }
    })
}

/// What a stream has said so far: the completion id and each choice's text and end.
struct Progress {
    id: String,
    texts: Vec<String>,
    finished: Vec<bool>,
}

impl Progress {
    fn new(n: usize) -> Progress {
        Progress { id: String::new(), texts: vec![String::new(); n], finished: vec![false; n] }
    }

    /// Takes one SSE data payload; true at the end marker. Choices past `n` are ignored.
    fn take(&mut self, data: &str) -> Result<bool, ApiError> {
        let chunk = match parse_event(data)? {
            Event::Done => return Ok(true),
            Event::Chunk(c) => c,
        };
        if self.id.is_empty() {
            self.id = chunk.id.unwrap_or_default();
        }
        for c in chunk.choices {
            let i = c.index as usize;
            if i < self.texts.len() {
                self.texts[i].push_str(&c.text);
                self.finished[i] |= c.finish_reason.is_some_and(|r| !r.is_null());
            }
        }
        Ok(false)
    }

    fn into_streamed(self, stopped_early: bool) -> Streamed {
        Streamed { id: self.id, texts: self.texts, stopped_early }
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

    /// The SSE side of the stream, fuzzed: a response body cut into network reads at random
    /// places, through the SSE parser and the chunk reader, never panics; the texts only grow.
    #[test]
    fn fuzz_sse_streams() {
        let good = concat!(
            "data: {\"id\":\"cmpl-1\",\"object\":\"text_completion\",\"created\":1,\"model\":\"m\",\"choices\":[{\"index\":0,\"text\":\"len(\",\"finish_reason\":null}]}\n\n",
            "data: {\"choices\":[{\"index\":1,\"text\":\"p)\\n\\u00e9\\ud83d\\ude00\",\"finish_reason\":\"stop\"}]}\r\n\r\n",
            ": keep-alive\n\nevent: message\nid: 7\nretry: 10\ndata: {\"choices\":[],\n",
            "data: \"usage\":{}}\n\ndata: [DONE]\n\n"
        );
        let seeds: &[&[u8]] =
            &[good.as_bytes(), b"data: [DONE]\n\n", b"data: {not json\n\n", b"\xef\xbb\xbfdata: {}\r\r"];
        let words: &[&[u8]] = &[
            b"data: ",
            b"data:",
            b"\n\n",
            b"\r\n",
            b"\r",
            b"[DONE]",
            b"\"choices\":",
            b"\"index\":",
            b"\"text\":",
            b"\"finish_reason\":",
            b"4294967295",
            b"null",
            b"event: ",
            b"id: ",
            b"retry: ",
            b": ",
            b"\xf0\x9f",
            b"\xff",
        ];
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        ghostline_fuzz::run("sse_stream", seeds, words, 3_000, |body| {
            // The first byte chooses where the body is cut into reads.
            let (cut, body) = body.split_first().map_or((1, body), |(c, b)| (*c as usize + 1, b));
            let reads: Vec<Result<Vec<u8>, std::io::Error>> = body.chunks(cut).map(|c| Ok(c.to_vec())).collect();
            rt.block_on(async {
                let mut events = std::pin::pin!(without_bom(futures_util::stream::iter(reads)).eventsource());
                let mut p = Progress::new(2);
                while let Some(ev) = events.next().await {
                    let Ok(ev) = ev else { return };
                    let before: Vec<usize> = p.texts.iter().map(String::len).collect();
                    match p.take(&ev.data) {
                        Ok(true) | Err(_) => return,
                        Ok(false) => {}
                    }
                    assert!(p.texts.iter().zip(before).all(|(t, b)| t.len() >= b));
                }
            });
        });
    }
}
