//! The server link: the completion source for the current settings, the server's health as
//! requests see it (backoff while unreachable, 401 and 429 gating, a notice to the user once per
//! change of state) and what `GET /v1/models` says of the model (context length, FIM).
//!
//! Invariant: every wait here goes through the request's `Wait`, so a server that accepts the
//! connection and never answers costs a request its deadline and no more.

use std::sync::Arc;
use std::time::Duration;

use ghostline_api::ModelList;
use parking_lot::Mutex;
use tokio::sync::mpsc::UnboundedSender;
use tokio::time::Instant;

use crate::client::Api;
use crate::settings::Settings;
use crate::source::{ApiError, CompletionSource};
use crate::wait::{Wait, Waited};

/// What the user is told about the server, once per change of state.
#[derive(Debug, Clone, PartialEq)]
pub struct Notice {
    /// `ready`, `error`, `unauthorized` or `limited` (the `$/ghostline/status` state).
    pub state: &'static str,
    pub message: String,
    /// Show it to the user (`window/showMessage`), not just as a status.
    pub show: bool,
}

/// The server's state as requests see it.
#[derive(Debug, Clone, PartialEq)]
enum Health {
    Ok,
    /// Unreachable or failing: no request before `until`; the wait doubles up to 30 s.
    Down {
        until: Instant,
        backoff: Duration,
    },
    /// 401: nothing more until the settings change.
    Unauthorized,
    /// 429: nothing before `until` (Retry-After).
    Limited {
        until: Instant,
    },
}

/// Whether the model fills in the middle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fim {
    /// `fim` names a family: prompt and suffix.
    Yes,
    /// ghostline-server says `fim: null`: the prefix alone, left to right.
    No,
    /// Another server that does not say: FIM, until it refuses a suffix.
    Unknown,
}

/// What the client knows of the model it asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelFacts {
    pub context_length: Option<usize>,
    pub fim: Fim,
}

impl ModelFacts {
    pub const UNKNOWN: ModelFacts = ModelFacts { context_length: None, fim: Fim::Unknown };

    /// The facts of `model` (the first model when unnamed) in a `/v1/models` answer.
    pub fn from_list(list: &ModelList, model: Option<&str>) -> ModelFacts {
        let m = match model {
            Some(name) => list.data.iter().find(|m| m.id == name),
            None => list.data.first(),
        };
        let Some(m) = m else { return ModelFacts::UNKNOWN };
        // `context_length` is ghostline's extension: without it, `fim` is just absent.
        let fim = match (&m.fim, m.context_length) {
            (Some(_), _) => Fim::Yes,
            (None, Some(_)) => Fim::No,
            (None, None) => Fim::Unknown,
        };
        ModelFacts { context_length: m.context_length.map(|n| n as usize), fim }
    }
}

struct State {
    api: Arc<Api>,
    source: Arc<dyn CompletionSource>,
    health: Health,
    /// The model name the facts are for, and the facts.
    model: Option<(Option<String>, ModelFacts)>,
}

pub struct Link {
    /// A source that replaces the HTTP one (tests); settings changes keep it.
    fixed: Option<Arc<dyn CompletionSource>>,
    state: Mutex<State>,
    notices: Mutex<Option<UnboundedSender<Notice>>>,
}

impl Link {
    pub fn new(settings: &Settings, fixed: Option<Arc<dyn CompletionSource>>) -> Link {
        let api = Arc::new(Api::new(&settings.server_url, settings.api_key.clone()));
        let source = fixed.clone().unwrap_or_else(|| api.clone());
        Link {
            fixed,
            state: Mutex::new(State { api, source, health: Health::Ok, model: None }),
            notices: Mutex::new(None),
        }
    }

    /// A new server URL or key: a new client, a clean slate for health and model facts.
    pub fn reconfigure(&self, settings: &Settings) {
        let api = Arc::new(Api::new(&settings.server_url, settings.api_key.clone()));
        let source = self.fixed.clone().unwrap_or_else(|| api.clone());
        *self.state.lock() = State { api, source, health: Health::Ok, model: None };
    }

    /// The HTTP client for the current settings (telemetry posts through it).
    pub fn api(&self) -> Arc<Api> {
        self.state.lock().api.clone()
    }

    pub fn source(&self) -> Arc<dyn CompletionSource> {
        self.state.lock().source.clone()
    }

    /// Where notices about the server's state go (the LSP shows them).
    pub fn set_notices(&self, tx: UnboundedSender<Notice>) {
        *self.notices.lock() = Some(tx);
    }

    fn notify(&self, n: Notice) {
        if let Some(tx) = self.notices.lock().clone() {
            let _ = tx.send(n);
        }
    }

    /// Whether a request may go to the server now.
    pub fn may_ask(&self) -> bool {
        match &self.state.lock().health {
            Health::Ok => true,
            Health::Down { until, .. } | Health::Limited { until } => Instant::now() >= *until,
            Health::Unauthorized => false,
        }
    }

    /// Updates the server's state after a request and tells the user about changes, once.
    pub fn observe(&self, result: Result<(), &ApiError>) {
        let mut st = self.state.lock();
        let (next, notice) = next_health(&st.health, result, st.source.describe());
        st.health = next;
        drop(st);
        if let Some(n) = notice {
            self.notify(n);
        }
    }

    /// What `/v1/models` says of `model`, asked once per settings (within `wait`'s bounds).
    /// A server without the endpoint, or with an answer that is not a model list, gives
    /// unknown facts; an unreachable or refusing server is the request's error.
    pub async fn model(&self, model: Option<&str>, wait: &mut Wait) -> Waited<Result<ModelFacts, ApiError>> {
        let source = {
            let st = self.state.lock();
            if let Some((name, facts)) = &st.model {
                if name.as_deref() == model {
                    return Waited::Done(Ok(*facts));
                }
            }
            st.source.clone()
        };
        let facts = match wait.run(source.models()).await {
            Waited::Done(Ok(list)) => ModelFacts::from_list(&list, model),
            Waited::Done(Err(ApiError::Protocol(_))) => ModelFacts::UNKNOWN,
            Waited::Done(Err(ApiError::Status { code, .. })) if code != 401 && code != 429 && code < 500 => {
                ModelFacts::UNKNOWN
            }
            Waited::Done(Err(e)) => return Waited::Done(Err(e)),
            Waited::Superseded => return Waited::Superseded,
            Waited::Deadline => return Waited::Deadline,
        };
        self.learn(model, facts);
        Waited::Done(Ok(facts))
    }

    /// Remembers facts about `model` (discovered, or learnt from a refusal).
    pub fn learn(&self, model: Option<&str>, facts: ModelFacts) {
        self.state.lock().model = Some((model.map(str::to_string), facts));
    }
}

/// The health after `result`, and the notice to give (only when the state changes).
fn next_health(prev: &Health, result: Result<(), &ApiError>, url: &str) -> (Health, Option<Notice>) {
    match (result, prev) {
        (Ok(()), Health::Ok) => (Health::Ok, None),
        (Ok(()), _) => {
            (Health::Ok, Some(Notice { state: "ready", message: format!("ghostline: connected to {url}"), show: false }))
        }
        (Err(ApiError::Status { code: 401, message, .. }), _) => (
            Health::Unauthorized,
            Some(Notice {
                state: "unauthorized",
                message: format!(
                    "ghostline: {url} refused the API key ({message}). Set `apiKey` in the ghostline settings or GHOSTLINE_API_KEY; no more requests until then."
                ),
                show: true,
            }),
        ),
        (Err(ApiError::Status { code: 429, retry_after, .. }), prev) => {
            let wait = Duration::from_secs(retry_after.unwrap_or(1).clamp(1, 300));
            let first = !matches!(prev, Health::Limited { .. });
            let notice = first.then(|| Notice {
                state: "limited",
                message: format!("ghostline: rate limited by {url}; waiting {} s", wait.as_secs()),
                show: false,
            });
            (Health::Limited { until: Instant::now() + wait }, notice)
        }
        (Err(e), prev) => {
            let backoff = match prev {
                Health::Down { backoff, .. } => (*backoff * 2).min(Duration::from_secs(30)),
                _ => Duration::from_millis(1000),
            };
            let first = !matches!(prev, Health::Down { .. });
            let notice = first.then(|| Notice {
                state: "error",
                message: format!("ghostline: {e}. Suggestions resume on their own when it is back."),
                show: true,
            });
            (Health::Down { until: Instant::now() + backoff, backoff }, notice)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ghostline_api::ModelInfo;

    fn info(id: &str, context_length: Option<u32>, fim: Option<&str>) -> ModelInfo {
        ModelInfo {
            id: id.into(),
            object: "model".into(),
            created: 0,
            owned_by: String::new(),
            context_length,
            fim: fim.map(str::to_string),
        }
    }

    #[test]
    fn model_facts_come_from_the_named_or_first_model() {
        let list = ModelList {
            object: "list".into(),
            data: vec![info("coder", Some(32768), Some("qwen")), info("chat", Some(8192), None)],
        };
        assert_eq!(ModelFacts::from_list(&list, None), ModelFacts { context_length: Some(32768), fim: Fim::Yes });
        assert_eq!(ModelFacts::from_list(&list, Some("chat")), ModelFacts { context_length: Some(8192), fim: Fim::No });
        assert_eq!(ModelFacts::from_list(&list, Some("other")), ModelFacts::UNKNOWN);
        let foreign = ModelList { object: "list".into(), data: vec![info("gpt", None, None)] };
        assert_eq!(ModelFacts::from_list(&foreign, None), ModelFacts::UNKNOWN, "another server says nothing of FIM");
    }

    #[test]
    fn health_changes_give_one_notice_each() {
        let down = ApiError::Unreachable("refused".into());
        let (h, n) = next_health(&Health::Ok, Err(&down), "u");
        assert_eq!(n.map(|n| (n.state, n.show)), Some(("error", true)));
        let Health::Down { backoff, .. } = h.clone() else { panic!("{h:?}") };
        assert_eq!(backoff, Duration::from_secs(1));
        let (h, n) = next_health(&h, Err(&down), "u");
        assert!(n.is_none(), "told once");
        assert!(matches!(h, Health::Down { backoff, .. } if backoff == Duration::from_secs(2)));
        let (h, n) = next_health(&h, Ok(()), "u");
        assert_eq!((h.clone(), n.map(|n| n.state)), (Health::Ok, Some("ready")));
        assert_eq!(next_health(&h, Ok(()), "u").1, None);
        let limited = ApiError::Status { code: 429, message: "slow".into(), param: None, retry_after: Some(5) };
        let (h, n) = next_health(&h, Err(&limited), "u");
        assert_eq!(n.map(|n| (n.state, n.show)), Some(("limited", false)));
        assert!(next_health(&h, Err(&limited), "u").1.is_none());
        let unauth = ApiError::Status { code: 401, message: "bad key".into(), param: None, retry_after: None };
        let (h, n) = next_health(&h, Err(&unauth), "u");
        assert_eq!(h, Health::Unauthorized);
        assert!(n.unwrap().message.contains("apiKey"));
    }
}
