//! Recent suggestions by document and position. When the user types the start of a visible
//! suggestion, the rest is answered at once; when they move back to a position that was
//! answered, the answer is reused. The same test decides whether an in-flight stream can serve
//! a newer request.

use lru::LruCache;
use ropey::Rope;
use std::num::NonZeroUsize;

/// Characters on each side of the cursor that must be unchanged for a reuse.
const GUARD_CHARS: usize = 200;

/// Where a suggestion was asked for: the cursor and the text around it at that moment.
#[derive(Debug, Clone)]
pub struct Anchor {
    pub uri: String,
    pub cursor: usize,
    before: String,
    after: String,
}

impl Anchor {
    pub fn new(uri: &str, rope: &Rope, cursor: usize) -> Anchor {
        let cursor = cursor.min(rope.len_chars());
        let a = cursor.saturating_sub(GUARD_CHARS);
        let b = (cursor + GUARD_CHARS).min(rope.len_chars());
        Anchor {
            uri: uri.to_string(),
            cursor,
            before: rope.slice(a..cursor).to_string(),
            after: rope.slice(cursor..b).to_string(),
        }
    }

    /// The text typed since the anchor, if the document at `cursor` is the anchor's document
    /// with only that text inserted at the anchor.
    pub fn typed_since(&self, uri: &str, rope: &Rope, cursor: usize) -> Option<String> {
        if uri != self.uri || cursor < self.cursor || cursor > rope.len_chars() {
            return None;
        }
        let before_start = self.cursor.checked_sub(self.before.chars().count())?;
        if rope.slice(before_start..self.cursor) != self.before.as_str() {
            return None;
        }
        let after_end = cursor + self.after.chars().count();
        if after_end > rope.len_chars() || rope.slice(cursor..after_end) != self.after.as_str() {
            return None;
        }
        Some(rope.slice(self.cursor..cursor).to_string())
    }
}

/// A served answer.
#[derive(Debug, Clone)]
pub struct Entry {
    pub anchor: Anchor,
    pub id: String,
    /// The suggestions as shown, by candidate index.
    pub items: Vec<String>,
}

/// What a cache hit gives: the rest of each suggestion still ahead of the cursor, with its
/// candidate index, and the completion id.
#[derive(Debug, Clone, PartialEq)]
pub struct Hit {
    pub id: String,
    pub items: Vec<(u32, String)>,
    /// Characters the user typed since it was served.
    pub typed: usize,
}

/// The remainders of `items` after `typed`, for those that start with it and go on.
pub fn remainders(items: &[String], typed: &str) -> Vec<(u32, String)> {
    items
        .iter()
        .enumerate()
        .filter(|(_, s)| s.len() > typed.len() && s.starts_with(typed) && !s[typed.len()..].trim().is_empty())
        .map(|(i, s)| (i as u32, s[typed.len()..].to_string()))
        .collect()
}

pub struct SuggestionCache {
    entries: LruCache<u64, Entry>,
    next: u64,
}

impl SuggestionCache {
    pub fn new(capacity: usize) -> Self {
        SuggestionCache {
            entries: LruCache::new(NonZeroUsize::new(capacity.max(1)).unwrap_or(NonZeroUsize::MIN)),
            next: 0,
        }
    }

    pub fn insert(&mut self, entry: Entry) {
        // One entry per anchor position and document: a newer answer replaces the older.
        let same = self
            .entries
            .iter()
            .find(|(_, e)| e.anchor.uri == entry.anchor.uri && e.anchor.cursor == entry.anchor.cursor)
            .map(|(k, _)| *k);
        if let Some(k) = same {
            self.entries.pop(&k);
        }
        self.next += 1;
        self.entries.put(self.next, entry);
    }

    /// The freshest entry that the current text continues.
    pub fn lookup(&mut self, uri: &str, rope: &Rope, cursor: usize) -> Option<Hit> {
        let mut found = None;
        for (k, e) in self.entries.iter() {
            if let Some(typed) = e.anchor.typed_since(uri, rope, cursor) {
                let items = remainders(&e.items, &typed);
                if !items.is_empty() {
                    found = Some((*k, Hit { id: e.id.clone(), items, typed: typed.chars().count() }));
                    break;
                }
            }
        }
        let (k, hit) = found?;
        self.entries.promote(&k);
        Some(hit)
    }

    /// Drops a document's entries (closed).
    pub fn forget(&mut self, uri: &str) {
        let keys: Vec<u64> = self.entries.iter().filter(|(_, e)| e.anchor.uri == uri).map(|(k, _)| *k).collect();
        for k in keys {
            self.entries.pop(&k);
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(uri: &str, rope: &Rope, cursor: usize, items: &[&str]) -> Entry {
        Entry {
            anchor: Anchor::new(uri, rope, cursor),
            id: "cmpl-1".into(),
            items: items.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn typing_the_start_of_a_suggestion_answers_with_the_rest() {
        let mut c = SuggestionCache::new(8);
        let r0 = Rope::from_str("def f(x):\n    return \n\nprint(f(1))\n");
        let at = 21;
        c.insert(entry("u", &r0, at, &["x + 1", "None"]));
        let mut r1 = r0.clone();
        r1.insert(at, "x ");
        let hit = c.lookup("u", &r1, at + 2).unwrap();
        assert_eq!(hit.items, vec![(0, "+ 1".to_string())]);
        assert_eq!(hit.typed, 2);
        // Back at the original position: the whole answer again.
        assert_eq!(c.lookup("u", &r0, at).unwrap().items.len(), 2);
        // Typed something else, typed all of it, other document, edited after the cursor: miss.
        let mut r2 = r0.clone();
        r2.insert(at, "y");
        assert!(c.lookup("u", &r2, at + 1).is_none());
        let mut r3 = r0.clone();
        r3.insert(at, "x + 1");
        assert!(c.lookup("u", &r3, at + 5).is_none());
        assert!(c.lookup("v", &r0, at).is_none());
        let mut r4 = r0.clone();
        r4.remove(at + 4..at + 5);
        assert!(c.lookup("u", &r4, at).is_none());
        c.forget("u");
        assert!(c.is_empty());
    }

    #[test]
    fn the_cache_is_bounded() {
        let mut c = SuggestionCache::new(2);
        let r = Rope::from_str("abc\n");
        for i in 0..4 {
            c.insert(entry("u", &r, i, &["zz"]));
        }
        assert_eq!(c.len(), 2);
        assert!(c.lookup("u", &r, 0).is_none() && c.lookup("u", &r, 3).is_some());
    }
}
