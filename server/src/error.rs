//! Every error answer of the HTTP API, as one type: each way a request can fail is a variant,
//! and one `IntoResponse` turns it into the contract's `{"error": {...}}` body with its status
//! (and `Retry-After` / `WWW-Authenticate` where they apply).

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use ghostline_api::{ErrorBody, ErrorDetail};

use crate::prompt::PromptError;

/// Why a request was refused or failed.
#[derive(Debug, Clone, PartialEq)]
pub enum HttpError {
    /// A field (or the body as a whole, `param: None`) is not what the contract allows.
    Invalid {
        message: String,
        param: Option<String>,
    },
    /// The prompt does not fit the context and `truncate` was not asked for.
    ContextLengthExceeded {
        tokens: usize,
        budget: usize,
        context: usize,
    },
    /// The request names another model than the one served.
    ModelNotFound {
        asked: String,
        served: String,
    },
    BodyTooLarge {
        limit: usize,
    },
    /// The body did not arrive within `--body-timeout-secs`.
    BodyTimeout {
        secs: u64,
    },
    TooManyEvents {
        sent: usize,
        max: usize,
    },
    NoSuchEndpoint,
    /// No valid API key; the answer never says which.
    Unauthorized,
    /// A valid key that may not do this (the dashboard needs an admin key).
    Forbidden(&'static str),
    KeyStoreUnavailable,
    /// The key's rate bucket is empty for `retry_secs`.
    RateLimited {
        retry_secs: u64,
    },
    /// The key already has `cap` sequences queued or running.
    TooManyInFlight {
        cap: usize,
    },
    /// The scheduler's queue is full.
    Busy,
    ShuttingDown,
    /// The engine failed beyond recovery; this replica is going away.
    EngineFailed(String),
    TelemetryBacklogFull,
    TelemetryFailed(String),
    StatsUnavailable(String),
    /// The inference upstream cannot be reached, is overloaded or too slow, and nothing was
    /// produced yet.
    Unavailable(String),
    /// Inference failed or stopped early.
    Internal(String),
}

impl HttpError {
    /// A 400 naming the offending field.
    pub fn invalid(message: impl Into<String>, param: &str) -> HttpError {
        HttpError::Invalid { message: message.into(), param: Some(param.to_string()) }
    }

    /// A 400 about the body as a whole.
    pub fn invalid_body(message: impl Into<String>) -> HttpError {
        HttpError::Invalid { message: message.into(), param: None }
    }

    /// Why the prompt of a request in a context of `context` tokens could not be built.
    pub fn from_prompt(e: PromptError, context: usize) -> HttpError {
        match e {
            PromptError::TooLong { tokens, budget } => HttpError::ContextLengthExceeded { tokens, budget, context },
            PromptError::Tokenize(m) => HttpError::invalid(format!("cannot tokenize the prompt: {m}"), "prompt"),
            PromptError::NoTemplate => HttpError::invalid(crate::validate::NO_FIM, "suffix"),
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            HttpError::Invalid { .. } | HttpError::ContextLengthExceeded { .. } => StatusCode::BAD_REQUEST,
            HttpError::ModelNotFound { .. } | HttpError::NoSuchEndpoint => StatusCode::NOT_FOUND,
            HttpError::BodyTooLarge { .. } | HttpError::TooManyEvents { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            HttpError::BodyTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            HttpError::Unauthorized => StatusCode::UNAUTHORIZED,
            HttpError::Forbidden(_) => StatusCode::FORBIDDEN,
            HttpError::RateLimited { .. } | HttpError::TooManyInFlight { .. } => StatusCode::TOO_MANY_REQUESTS,
            HttpError::KeyStoreUnavailable
            | HttpError::Busy
            | HttpError::ShuttingDown
            | HttpError::EngineFailed(_)
            | HttpError::TelemetryBacklogFull
            | HttpError::TelemetryFailed(_)
            | HttpError::StatsUnavailable(_)
            | HttpError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            HttpError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Seconds a client should wait before retrying, where a retry can succeed.
    pub fn retry_after(&self) -> Option<u64> {
        match self {
            HttpError::RateLimited { retry_secs } => Some((*retry_secs).max(1)),
            HttpError::TooManyInFlight { .. }
            | HttpError::KeyStoreUnavailable
            | HttpError::Busy
            | HttpError::ShuttingDown
            | HttpError::EngineFailed(_)
            | HttpError::TelemetryBacklogFull
            | HttpError::Unavailable(_) => Some(1),
            HttpError::TelemetryFailed(_) | HttpError::StatsUnavailable(_) => Some(5),
            _ => None,
        }
    }

    /// The contract's error body.
    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            error: ErrorDetail {
                kind: self.kind().into(),
                message: self.message(),
                param: self.param(),
                code: self.code().map(str::to_string),
            },
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            HttpError::Invalid { .. }
            | HttpError::ContextLengthExceeded { .. }
            | HttpError::TooManyEvents { .. }
            | HttpError::BodyTooLarge { .. }
            | HttpError::BodyTimeout { .. } => "invalid_request_error",
            HttpError::ModelNotFound { .. } | HttpError::NoSuchEndpoint => "not_found_error",
            HttpError::Unauthorized => "authentication_error",
            HttpError::Forbidden(_) => "permission_error",
            HttpError::RateLimited { .. } | HttpError::TooManyInFlight { .. } => "rate_limit_error",
            HttpError::KeyStoreUnavailable
            | HttpError::Busy
            | HttpError::ShuttingDown
            | HttpError::EngineFailed(_)
            | HttpError::TelemetryBacklogFull
            | HttpError::TelemetryFailed(_)
            | HttpError::StatsUnavailable(_)
            | HttpError::Unavailable(_) => "overloaded_error",
            HttpError::Internal(_) => "server_error",
        }
    }

    fn code(&self) -> Option<&'static str> {
        match self {
            HttpError::ContextLengthExceeded { .. } => Some("context_length_exceeded"),
            HttpError::ModelNotFound { .. } => Some("model_not_found"),
            HttpError::BodyTooLarge { .. } => Some("body_too_large"),
            HttpError::BodyTimeout { .. } => Some("body_timeout"),
            HttpError::EngineFailed(_) => Some("engine_failed"),
            HttpError::TooManyEvents { .. } => Some("too_many_events"),
            HttpError::Unauthorized => Some("invalid_api_key"),
            HttpError::Forbidden(_) => Some("admin_key_required"),
            HttpError::RateLimited { .. } => Some("rate_limit_exceeded"),
            HttpError::TooManyInFlight { .. } => Some("too_many_in_flight"),
            _ => None,
        }
    }

    fn param(&self) -> Option<String> {
        match self {
            HttpError::Invalid { param, .. } => param.clone(),
            HttpError::ContextLengthExceeded { .. } => Some("prompt".into()),
            HttpError::ModelNotFound { .. } => Some("model".into()),
            _ => None,
        }
    }

    fn message(&self) -> String {
        match self {
            HttpError::Invalid { message, .. } => message.clone(),
            HttpError::ContextLengthExceeded { tokens, budget, context } => format!(
                "the prompt is {tokens} tokens but only {budget} fit in the context ({context} tokens minus \
                 max_tokens); shorten it or send \"truncate\": true"
            ),
            HttpError::ModelNotFound { asked, served } => {
                format!("model \"{asked}\" is not served here (this server serves \"{served}\")")
            }
            HttpError::BodyTooLarge { limit } => format!("the request body is larger than {limit} bytes"),
            HttpError::BodyTimeout { secs } => {
                format!("the request body did not arrive within {secs} s of its headers; send it whole")
            }
            HttpError::TooManyEvents { sent, max } => format!("{sent} events in one batch; send at most {max}"),
            HttpError::NoSuchEndpoint => "no such endpoint".into(),
            HttpError::Unauthorized => "a valid API key is required: send the header Authorization: Bearer KEY".into(),
            HttpError::Forbidden(m) => (*m).into(),
            HttpError::KeyStoreUnavailable => "the key store cannot be read; retry shortly".into(),
            HttpError::RateLimited { .. } => {
                "this key's rate limit is reached; retry after the time in Retry-After".into()
            }
            HttpError::TooManyInFlight { cap } => {
                format!("this key already has {cap} sequences queued or running; wait for one to finish")
            }
            HttpError::Busy => "the server is busy; retry shortly".into(),
            HttpError::ShuttingDown => "the server is shutting down; retry on another replica".into(),
            HttpError::EngineFailed(m) => {
                format!("the engine failed and this server is stopping ({m}); retry on another replica")
            }
            HttpError::TelemetryBacklogFull => {
                "the telemetry backlog is full; nothing of this batch was stored, retry it later".into()
            }
            HttpError::TelemetryFailed(m) => format!("{m}; nothing of this batch was acknowledged, retry it later"),
            HttpError::StatsUnavailable(m) => format!("the telemetry store cannot be read: {m}"),
            HttpError::Unavailable(m) => format!("inference is unavailable: {m}; retry shortly"),
            HttpError::Internal(m) => m.clone(),
        }
    }
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        let mut r = (self.status(), Json(self.body())).into_response();
        if let Some(s) = self.retry_after() {
            r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        if self == HttpError::Unauthorized {
            r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if matches!(self, HttpError::BodyTooLarge { .. } | HttpError::BodyTimeout { .. }) {
            // The rest of the body is not read, so the connection cannot carry another request.
            r.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Status, headers and body of every variant, as a client sees them.
    #[test]
    fn every_error_answer() {
        let all = [
            HttpError::invalid("max_tokens must be between 1 and 512", "max_tokens"),
            HttpError::invalid_body("the request body is empty; send a JSON object with at least \"prompt\""),
            HttpError::ContextLengthExceeded { tokens: 900, budget: 504, context: 512 },
            HttpError::ModelNotFound { asked: "gpt-17".into(), served: "ghostline-tiny".into() },
            HttpError::BodyTooLarge { limit: 4096 },
            HttpError::BodyTimeout { secs: 10 },
            HttpError::TooManyEvents { sent: 1001, max: 1000 },
            HttpError::NoSuchEndpoint,
            HttpError::Unauthorized,
            HttpError::Forbidden(crate::dashboard::ADMIN_ONLY),
            HttpError::KeyStoreUnavailable,
            HttpError::RateLimited { retry_secs: 0 },
            HttpError::TooManyInFlight { cap: 16 },
            HttpError::Busy,
            HttpError::ShuttingDown,
            HttpError::EngineFailed("the engine thread panicked 3 times in a row".into()),
            HttpError::TelemetryBacklogFull,
            HttpError::TelemetryFailed("the telemetry store failed: disk full".into()),
            HttpError::StatsUnavailable("no such table".into()),
            HttpError::Unavailable("the upstream cannot be reached: connection refused".into()),
            HttpError::Internal("inference failed: out of memory".into()),
        ];
        let answers: Vec<String> = all
            .into_iter()
            .map(|e| {
                let r = e.into_response();
                let status = r.status().as_u16();
                let headers: Vec<String> = [header::RETRY_AFTER, header::WWW_AUTHENTICATE]
                    .iter()
                    .filter_map(|h| Some(format!("{h}: {}", r.headers().get(h)?.to_str().ok()?)))
                    .collect();
                let body = r.into_body();
                let bytes = futures_util::FutureExt::now_or_never(axum::body::to_bytes(body, 1 << 16))
                    .and_then(Result::ok)
                    .unwrap_or_default();
                format!("{status} {headers:?} {}", String::from_utf8_lossy(&bytes))
            })
            .collect();
        insta::assert_snapshot!(answers.join("\n"));
    }
}
