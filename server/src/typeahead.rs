//! Typed-ahead reuse: when the user types the beginning of the suggestion they were shown, the
//! new prompt is the old prompt plus those characters, and the rest of the old completion is
//! still the answer. Deterministic (temperature 0, n = 1) completions are remembered here.

use std::collections::VecDeque;

use ghostline_api::FinishReason;

/// What must match besides the prompt: suffix, context and sampling settings, hashed.
pub type Key = u64;

struct Remembered {
    key: Key,
    prompt: String,
    text: String,
    finish: FinishReason,
}

/// A small most-recent-first list of completions.
pub struct TypeAhead {
    entries: VecDeque<Remembered>,
    capacity: usize,
}

impl TypeAhead {
    pub fn new(capacity: usize) -> Self {
        TypeAhead { entries: VecDeque::new(), capacity }
    }

    /// Remembers a finished completion.
    pub fn record(&mut self, key: Key, prompt: &str, text: &str, finish: FinishReason) {
        if self.capacity == 0 || text.is_empty() || finish == FinishReason::Cancelled {
            return;
        }
        self.entries.retain(|e| !(e.key == key && e.prompt == prompt));
        self.entries.push_front(Remembered { key, prompt: prompt.to_string(), text: text.to_string(), finish });
        self.entries.truncate(self.capacity);
    }

    /// The rest of an earlier completion when `prompt` is its prompt plus a non-empty start of
    /// its text.
    pub fn lookup(&self, key: Key, prompt: &str) -> Option<(String, FinishReason)> {
        for e in &self.entries {
            if e.key != key || prompt.len() <= e.prompt.len() || !prompt.starts_with(e.prompt.as_str()) {
                continue;
            }
            let typed = &prompt[e.prompt.len()..];
            if let Some(rest) = e.text.strip_prefix(typed) {
                if !rest.is_empty() {
                    return Some((rest.to_string(), e.finish));
                }
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typing_the_start_of_a_suggestion_reuses_the_rest() {
        let mut t = TypeAhead::new(4);
        t.record(1, "def add(a, b):\n    ", "return a + b", FinishReason::Stop);
        assert_eq!(t.lookup(1, "def add(a, b):\n    ret"), Some(("urn a + b".into(), FinishReason::Stop)));
        assert_eq!(t.lookup(1, "def add(a, b):\n    rex"), None, "typed something else");
        assert_eq!(t.lookup(2, "def add(a, b):\n    ret"), None, "other suffix or settings");
        assert_eq!(t.lookup(1, "def add(a, b):\n    "), None, "same prompt is not typed-ahead");
        assert_eq!(t.lookup(1, "def add(a, b):\n    return a + b"), None, "nothing left");
    }

    #[test]
    fn capacity_bounds_memory() {
        let mut t = TypeAhead::new(2);
        for i in 0..5 {
            t.record(0, &format!("p{i}"), "xyz", FinishReason::Stop);
        }
        assert_eq!(t.entries.len(), 2);
        assert!(t.lookup(0, "p4x").is_some() && t.lookup(0, "p0x").is_none());
    }
}
