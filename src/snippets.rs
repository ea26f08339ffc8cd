//! Snippets from other documents: windows of lines ranked by the Jaccard similarity of their
//! identifier sets to the lines around the cursor, sent as the request's `context`.
//!
//! A document's windows are indexed once per version and reused until it changes, so a request
//! only scores hashed sets, never re-reads other files.

use std::collections::HashMap;

use ropey::Rope;

use crate::trigger::is_word_char;

/// Lines per window, and the step between window starts.
pub const WINDOW_LINES: usize = 20;
const STEP: usize = 10;

fn hash(word: &str) -> u64 {
    // FNV-1a: stable and fast for short identifiers.
    word.bytes().fold(0xcbf29ce484222325, |h, b| (h ^ b as u64).wrapping_mul(0x100000001b3))
}

/// The sorted, distinct hashes of the identifiers in `text` (words of two or more characters
/// that do not start with a digit).
pub fn identifiers(text: impl Iterator<Item = char>) -> Vec<u64> {
    let mut out = Vec::new();
    let mut word = String::new();
    for c in text.chain(std::iter::once(' ')) {
        if is_word_char(c) {
            word.push(c);
        } else if !word.is_empty() {
            if word.chars().count() >= 2 && !word.starts_with(|c: char| c.is_ascii_digit()) {
                out.push(hash(&word));
            }
            word.clear();
        }
    }
    out.sort_unstable();
    out.dedup();
    out
}

/// |a ∩ b| / |a ∪ b| of two sorted, distinct lists.
pub fn jaccard(a: &[u64], b: &[u64]) -> f32 {
    if a.is_empty() && b.is_empty() {
        return 0.0;
    }
    let (mut i, mut j, mut both) = (0, 0, 0usize);
    while i < a.len() && j < b.len() {
        match a[i].cmp(&b[j]) {
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
            std::cmp::Ordering::Equal => {
                both += 1;
                i += 1;
                j += 1;
            }
        }
    }
    both as f32 / (a.len() + b.len() - both) as f32
}

struct Indexed {
    version: i32,
    /// (first line, identifier set) per window.
    windows: Vec<(usize, Vec<u64>)>,
}

/// A snippet chosen for the prompt.
#[derive(Debug, Clone, PartialEq)]
pub struct Snippet {
    pub path: String,
    pub text: String,
    pub score: f32,
}

/// Per-document window indexes, keyed by URI.
#[derive(Default)]
pub struct SnippetIndex {
    docs: HashMap<String, Indexed>,
}

impl SnippetIndex {
    fn windows(&mut self, uri: &str, version: i32, rope: &Rope) -> &[(usize, Vec<u64>)] {
        let fresh = self.docs.get(uri).is_some_and(|d| d.version == version);
        if !fresh {
            let lines = rope.len_lines();
            let mut windows = Vec::new();
            let mut first = 0;
            loop {
                let end = (first + WINDOW_LINES).min(lines);
                let a = rope.line_to_char(first);
                let b = rope.line_to_char(end);
                windows.push((first, identifiers(rope.slice(a..b).chars())));
                if end >= lines {
                    break;
                }
                first += STEP;
            }
            self.docs.insert(uri.to_string(), Indexed { version, windows });
        }
        &self.docs[uri].windows
    }

    /// Forgets documents not in `keep`.
    pub fn retain(&mut self, keep: impl Fn(&str) -> bool) {
        self.docs.retain(|k, _| keep(k));
    }

    /// The best window of each candidate document, best first, within `budget_chars` in all.
    /// `candidates` are (uri, path to show, version, text); `query` the identifiers around
    /// the cursor.
    pub fn rank<'a>(
        &mut self,
        query: &[u64],
        candidates: impl Iterator<Item = (&'a str, &'a str, i32, &'a Rope)>,
        budget_chars: usize,
        min_score: f32,
    ) -> Vec<Snippet> {
        let mut best: Vec<(f32, String, &'a Rope, usize)> = Vec::new();
        for (uri, path, version, rope) in candidates {
            let top = self
                .windows(uri, version, rope)
                .iter()
                .map(|(first, ids)| (jaccard(query, ids), *first))
                .max_by(|a, b| a.0.total_cmp(&b.0));
            if let Some((score, first)) = top {
                if score >= min_score {
                    best.push((score, path.to_string(), rope, first));
                }
            }
        }
        best.sort_by(|a, b| b.0.total_cmp(&a.0));
        let mut out = Vec::new();
        let mut used = 0;
        for (score, path, rope, first) in best {
            let end = (first + WINDOW_LINES).min(rope.len_lines());
            let text = rope.slice(rope.line_to_char(first)..rope.line_to_char(end)).to_string();
            let cost = text.chars().count() + path.len() + 2;
            if used + cost > budget_chars {
                continue;
            }
            used += cost;
            out.push(Snippet { path, text, score });
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jaccard_of_identifier_sets() {
        let a = identifiers("let total = price * count; 42 x".chars());
        let b = identifiers("fn price(count: u32) -> u32 { total }".chars());
        assert_eq!(a.len(), 4); // let total price count
                                // {total, price, count} shared of {let, total, price, count, fn, u32}.
        assert!((jaccard(&a, &b) - 0.5).abs() < 1e-6, "{}", jaccard(&a, &b));
        assert_eq!(jaccard(&a, &a), 1.0);
        assert_eq!(jaccard(&[], &[]), 0.0);
    }

    #[test]
    fn the_most_similar_window_of_each_document_wins_within_budget() {
        let mut other = String::new();
        for i in 0..100 {
            other.push_str(&format!("unrelated_{i} = noise_{i}\n"));
        }
        other.push_str("def parse_header(buffer, offset):\n    magic = read_u32(buffer, offset)\n    return magic\n");
        let other = Rope::from_str(&other);
        let weak = Rope::from_str("print('hello')\n");
        let query = identifiers("header = parse_header(buffer, offset)\nmagic".chars());
        let mut idx = SnippetIndex::default();
        let got = idx.rank(
            &query,
            [("file:///a.py", "a.py", 1, &other), ("file:///b.py", "b.py", 1, &weak)].into_iter(),
            2000,
            0.05,
        );
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(got[0].path, "a.py");
        assert!(got[0].text.contains("def parse_header(buffer, offset):"));
        assert!(
            idx.rank(&query, [("file:///a.py", "a.py", 1, &other)].into_iter(), 10, 0.05).is_empty(),
            "over budget"
        );
    }
}
