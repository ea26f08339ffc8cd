//! The settings object of the LSP contract: `initializationOptions` is the object, and
//! `workspace/didChangeConfiguration` carries it as `settings.ghostline`. Each field is read on
//! its own, so one bad value is reported and ignored without losing the others.

use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::Value;

use crate::trigger::Multiline;

pub const DEFAULT_SERVER_URL: &str = "http://127.0.0.1:8484";

/// The `trigger` setting: how long an automatic request waits after a keystroke.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Trigger {
    /// From the typist's rhythm, the server's pace and the cursor's context (`pacing`).
    #[default]
    Adaptive,
    /// A fixed `debounceMs`.
    Debounce,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub server_url: String,
    pub api_key: Option<String>,
    pub trigger: Trigger,
    /// The fixed wait of `Trigger::Debounce`.
    pub debounce_ms: u64,
    pub max_tokens: u32,
    pub multiline: Multiline,
    pub telemetry: bool,
    pub enable: bool,
    /// Longest wait for a suggestion before answering empty.
    pub request_timeout_ms: u64,
    /// Prompt budget for prefix and suffix, in tokens (capped by the model's context).
    pub context_tokens: usize,
    /// Budget for snippets of other files, in tokens.
    pub snippet_tokens: usize,
    /// Model name to ask for; the server's default when unset.
    pub model: Option<String>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            server_url: DEFAULT_SERVER_URL.into(),
            api_key: None,
            trigger: Trigger::Adaptive,
            debounce_ms: 75,
            max_tokens: 64,
            multiline: Multiline::Auto,
            telemetry: true,
            enable: true,
            request_timeout_ms: 2000,
            context_tokens: 1500,
            snippet_tokens: 400,
            model: None,
        }
    }
}

fn take<T: DeserializeOwned>(
    obj: &serde_json::Map<String, Value>,
    key: &str,
    slot: &mut T,
    warnings: &mut Vec<String>,
) {
    if let Some(v) = obj.get(key) {
        if v.is_null() {
            return;
        }
        match serde_json::from_value::<T>(v.clone()) {
            Ok(x) => *slot = x,
            Err(e) => warnings.push(format!("ghostline: ignoring setting `{key}` = {v}: {e}")),
        }
    }
}

impl Settings {
    /// Defaults, then the environment (`GHOSTLINE_SERVER_URL`, `GHOSTLINE_API_KEY`).
    pub fn from_env() -> Settings {
        let mut s = Settings::default();
        if let Ok(url) = std::env::var("GHOSTLINE_SERVER_URL") {
            if !url.trim().is_empty() {
                s.server_url = url.trim().to_string();
            }
        }
        if let Ok(key) = std::env::var("GHOSTLINE_API_KEY") {
            if !key.trim().is_empty() {
                s.api_key = Some(key.trim().to_string());
            }
        }
        s
    }

    /// Applies the fields present in `v`; returns a warning per field it could not use.
    pub fn update(&mut self, v: &Value) -> Vec<String> {
        let mut w = Vec::new();
        let Some(obj) = v.as_object() else {
            if !v.is_null() {
                w.push(format!("ghostline: settings must be an object, got {v}"));
            }
            return w;
        };
        take(obj, "serverUrl", &mut self.server_url, &mut w);
        let mut key: Option<String> = self.api_key.clone();
        take(obj, "apiKey", &mut key, &mut w);
        self.api_key = key.filter(|k| !k.trim().is_empty());
        take(obj, "debounceMs", &mut self.debounce_ms, &mut w);
        // `debounceMs` set without `trigger` asks for that fixed wait, as before `trigger` was.
        let debounce_set = obj.get("debounceMs").is_some_and(|v| v.is_u64());
        if debounce_set && obj.get("trigger").is_none_or(|v| v.is_null()) {
            self.trigger = Trigger::Debounce;
        }
        take(obj, "trigger", &mut self.trigger, &mut w);
        take(obj, "maxTokens", &mut self.max_tokens, &mut w);
        take(obj, "multiline", &mut self.multiline, &mut w);
        take(obj, "telemetry", &mut self.telemetry, &mut w);
        take(obj, "enable", &mut self.enable, &mut w);
        take(obj, "requestTimeoutMs", &mut self.request_timeout_ms, &mut w);
        take(obj, "contextTokens", &mut self.context_tokens, &mut w);
        take(obj, "snippetTokens", &mut self.snippet_tokens, &mut w);
        take(obj, "model", &mut self.model, &mut w);
        if !(self.server_url.starts_with("http://") || self.server_url.starts_with("https://")) {
            w.push(format!(
                "ghostline: serverUrl must start with http:// or https://, got {:?}; using {DEFAULT_SERVER_URL}",
                self.server_url
            ));
            self.server_url = DEFAULT_SERVER_URL.into();
        }
        self.server_url = self.server_url.trim_end_matches('/').to_string();
        self.debounce_ms = self.debounce_ms.min(2000);
        self.max_tokens = self.max_tokens.clamp(1, 1024);
        self.request_timeout_ms = self.request_timeout_ms.clamp(100, 60_000);
        self.context_tokens = self.context_tokens.clamp(64, 32_768);
        w
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn fields_apply_one_by_one_and_bad_ones_are_reported() {
        let mut s = Settings::default();
        let w = s.update(&json!({"serverUrl": "http://127.0.0.1:9/", "debounceMs": "fast", "multiline": "never", "maxTokens": 5000, "apiKey": "k", "unknown": 1}));
        assert_eq!(s.server_url, "http://127.0.0.1:9");
        assert_eq!(s.multiline, Multiline::Never);
        assert_eq!(s.max_tokens, 1024);
        assert_eq!(s.api_key.as_deref(), Some("k"));
        assert_eq!(s.debounce_ms, 75);
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].contains("debounceMs"));
        let w = s.update(&json!({"serverUrl": "ftp://x", "multiline": "sometimes"}));
        assert_eq!((s.server_url.as_str(), w.len()), (DEFAULT_SERVER_URL, 2));
        assert_eq!(s.update(&json!(null)).len(), 0);
        assert_eq!(s.update(&json!([1])).len(), 1);
    }

    #[test]
    fn debounce_ms_alone_means_a_fixed_debounce_and_trigger_wins() {
        let mut s = Settings::default();
        assert_eq!(s.trigger, Trigger::Adaptive);
        s.update(&json!({"serverUrl": "http://127.0.0.1:9"}));
        assert_eq!(s.trigger, Trigger::Adaptive, "other settings leave it");
        s.update(&json!({"debounceMs": 30}));
        assert_eq!((s.trigger, s.debounce_ms), (Trigger::Debounce, 30));
        s.update(&json!({"trigger": "adaptive", "debounceMs": 40}));
        assert_eq!((s.trigger, s.debounce_ms), (Trigger::Adaptive, 40));
        s.update(&json!({"trigger": "debounce"}));
        assert_eq!(s.trigger, Trigger::Debounce);
        // A bad value is reported and changes nothing.
        let w = s.update(&json!({"trigger": "sometimes", "debounceMs": "fast"}));
        assert_eq!((s.trigger, w.len()), (Trigger::Debounce, 2));
        let mut s = Settings::default();
        s.update(&json!({"debounceMs": "fast"}));
        assert_eq!(s.trigger, Trigger::Adaptive, "an unusable debounceMs asks for nothing");
    }
}
