//! The open documents (and the recently closed ones, for snippets): text, syntax tree, path
//! and the generation counter that supersedes waiting requests; snapshots for requests; the
//! snippets of other documents for a cursor.
//!
//! Invariant: the lock is held only to copy or edit (ropes and trees are cheap to clone), never
//! across an await, and it cannot poison: a panic in one handler leaves the documents usable.

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::path::PathBuf;

use ghostline_api::ContextSnippet;
use lru::LruCache;
use parking_lot::{Mutex, RwLock};
use ropey::Rope;
use tokio::sync::watch;

use crate::document::{Document, Position, PositionEncoding};
use crate::snippets::{identifiers, SnippetIndex, WINDOW_LINES};
use crate::syntax::{OverBudget, Syntax};
use crate::trigger::{self, Mode, Multiline};

/// Recently closed documents kept for snippets.
const CLOSED_KEPT: usize = 16;
/// Documents larger than this get no syntax tree (nor do those whose parse runs past its budget:
/// see [`crate::syntax`]).
const MAX_PARSED_BYTES: usize = 8 << 20;
/// Documents larger than this give no snippets.
const MAX_SNIPPET_SOURCE_BYTES: usize = 2 << 20;

/// A document whose parse of its whole text ran past the budget is completed as plain text until
/// it is reopened: trying again on keystrokes would cost that budget (2 s) on each.
fn plain_text_from_now(path: &str, over: OverBudget) {
    tracing::info!("{path}: {over}; completing it as plain text until it is reopened");
}

pub(crate) struct DocState {
    doc: Document,
    syntax: Option<Syntax>,
    path: String,
    /// Bumped on every change and every request: a waiter that sees it move is superseded.
    generation: watch::Sender<u64>,
}

/// A document as one request sees it, with its trigger decision.
pub struct Snapshot {
    pub uri: String,
    pub doc: Document,
    pub syntax: Option<Syntax>,
    pub path: String,
    pub cursor: usize,
    pub mode: Mode,
    /// Moves when a newer keystroke or request for the document arrives.
    pub generation: watch::Receiver<u64>,
}

/// What an edit left: the text after it and where the last change ended.
pub struct Edited {
    pub rope: Rope,
    /// Char index of the end of the last inserted text.
    pub last_end: Option<usize>,
    /// Characters the last change inserted.
    pub inserted: usize,
}

pub struct Documents {
    pub(crate) docs: Mutex<HashMap<String, DocState>>,
    closed: Mutex<LruCache<String, (Document, String)>>,
    snippets: Mutex<SnippetIndex>,
    root: RwLock<Option<PathBuf>>,
    encoding: RwLock<PositionEncoding>,
}

impl Default for Documents {
    fn default() -> Self {
        Documents {
            docs: Mutex::new(HashMap::new()),
            closed: Mutex::new(LruCache::new(NonZeroUsize::new(CLOSED_KEPT).unwrap_or(NonZeroUsize::MIN))),
            snippets: Mutex::new(SnippetIndex::default()),
            root: RwLock::new(None),
            encoding: RwLock::new(PositionEncoding::Utf16),
        }
    }
}

impl Documents {
    pub fn set_encoding(&self, e: PositionEncoding) {
        *self.encoding.write() = e;
    }

    pub fn encoding(&self) -> PositionEncoding {
        *self.encoding.read()
    }

    /// The workspace root that paths sent to the server are relative to.
    pub fn set_root(&self, root: Option<PathBuf>) {
        *self.root.write() = root;
    }

    fn path_for(&self, uri: &str) -> String {
        let path = uri.strip_prefix("file://").map(percent_decode).unwrap_or_else(|| uri.to_string());
        if let Some(root) = self.root.read().as_ref() {
            if let Ok(rel) = std::path::Path::new(&path).strip_prefix(root) {
                return rel.to_string_lossy().into_owned();
            }
        }
        path
    }

    pub fn open(&self, uri: &str, language: &str, version: i32, text: &str) {
        let doc = Document::new(text, version, language);
        // Very large files are completed as plain text: a tree would cost seconds and much memory.
        let mut syntax = if text.len() <= MAX_PARSED_BYTES { Syntax::new(language) } else { None };
        let path = self.path_for(uri);
        if let Some(Err(over)) = syntax.as_mut().map(|s| s.parse_full(&doc)) {
            syntax = None;
            plain_text_from_now(&path, over);
        }
        let old =
            self.docs.lock().insert(uri.to_string(), DocState { doc, syntax, path, generation: watch::channel(0).0 });
        // Reopened: waiters on the old text are superseded.
        if let Some(old) = old {
            old.generation.send_modify(|g| *g += 1);
        }
        self.closed.lock().pop(uri);
    }

    /// Applies `contentChanges` in order; `None` for an unknown document.
    pub fn change(
        &self,
        uri: &str,
        version: i32,
        changes: &[(Option<(Position, Position)>, String)],
    ) -> Option<Edited> {
        let enc = self.encoding();
        let mut docs = self.docs.lock();
        let st = docs.get_mut(uri)?;
        let mut last_end = None;
        let mut inserted = 0;
        for (range, text) in changes {
            inserted = text.chars().count();
            let edit = st.doc.apply(*range, text, enc);
            // Every edit of the change goes to the tree first, then one reparse takes them all.
            match st.syntax.as_mut() {
                Some(s) if range.is_some() => s.note_edit(&edit),
                Some(s) => s.forget_tree(),
                None => {}
            }
            last_end = Some(st.doc.rope().byte_to_char(edit.new_end_byte));
        }
        if st.doc.rope().len_bytes() > MAX_PARSED_BYTES {
            st.syntax = None;
        }
        if let Some(s) = st.syntax.as_mut() {
            match s.reparse(&st.doc) {
                Err(over) if s.lost() => {
                    st.syntax = None;
                    plain_text_from_now(&st.path, over);
                }
                Err(over) if s.stops() == 1 => {
                    tracing::debug!("{}: {over}; plain text until a reparse is quick again", st.path)
                }
                _ => {}
            }
        }
        st.doc.version = version;
        st.generation.send_modify(|g| *g += 1);
        Some(Edited { rope: st.doc.rope().clone(), last_end, inserted })
    }

    /// Closes a document (kept for snippets); false when it was not open.
    pub fn close(&self, uri: &str) -> bool {
        let Some(st) = self.docs.lock().remove(uri) else { return false };
        st.generation.send_modify(|g| *g += 1);
        self.closed.lock().put(uri.to_string(), (st.doc, st.path));
        true
    }

    /// Snapshots the document for a request at `pos` and supersedes earlier waiters.
    pub fn snapshot(&self, uri: &str, pos: Position, multiline: Multiline, invoked: bool) -> Option<Snapshot> {
        let enc = self.encoding();
        let docs = self.docs.lock();
        let st = docs.get(uri)?;
        let cursor = st.doc.char_index(pos, enc);
        let mode = trigger::decide(&st.doc, cursor, st.syntax.as_ref().and_then(|s| s.parts()), multiline, invoked);
        let mut generation = st.generation.subscribe();
        st.generation.send_modify(|g| *g += 1);
        generation.borrow_and_update();
        Some(Snapshot {
            uri: uri.to_string(),
            doc: st.doc.clone(),
            syntax: st.syntax.as_ref().and_then(|s| s.fork()),
            path: st.path.clone(),
            cursor,
            mode,
            generation,
        })
    }

    pub fn text(&self, uri: &str) -> Option<String> {
        self.docs.lock().get(uri).map(|s| s.doc.text())
    }

    /// The text of `pos`'s line before it.
    pub fn text_before(&self, uri: &str, pos: Position) -> Option<String> {
        let enc = self.encoding();
        let docs = self.docs.lock();
        let d = &docs.get(uri)?.doc;
        let c = d.char_index(pos, enc);
        Some(trigger::line_around(d, c).0)
    }

    pub fn language_of(&self, uri: &str) -> Option<String> {
        self.docs.lock().get(uri).map(|s| s.doc.language.clone())
    }

    /// The length of `s` in the negotiated position units.
    pub fn units(&self, s: &str) -> u32 {
        match self.encoding() {
            PositionEncoding::Utf8 => s.len() as u32,
            PositionEncoding::Utf16 => s.encode_utf16().count() as u32,
        }
    }

    /// Windows of other open or recently closed documents that share the most identifiers with
    /// the lines before `cursor`, within `budget_chars`.
    pub fn snippets_for(&self, uri: &str, doc: &Document, cursor: usize, budget_chars: usize) -> Vec<ContextSnippet> {
        if budget_chars < 64 {
            return vec![];
        }
        let rope = doc.rope();
        let line = rope.char_to_line(cursor);
        let first = line.saturating_sub(WINDOW_LINES);
        let query = identifiers(rope.slice(rope.line_to_char(first)..cursor).chars());
        if query.is_empty() {
            return vec![];
        }
        // Snapshot the other documents (cheap rope clones), then rank without the doc lock.
        let mut others: Vec<(String, String, i32, Rope)> = Vec::new();
        others.extend(
            self.docs
                .lock()
                .iter()
                .filter(|(u, s)| u.as_str() != uri && s.doc.len_bytes() <= MAX_SNIPPET_SOURCE_BYTES)
                .map(|(u, s)| (u.clone(), s.path.clone(), s.doc.version, s.doc.rope().clone())),
        );
        others.extend(
            self.closed
                .lock()
                .iter()
                .filter(|(_, (d, _))| d.len_bytes() <= MAX_SNIPPET_SOURCE_BYTES)
                .map(|(u, (d, p))| (u.clone(), p.clone(), d.version, d.rope().clone())),
        );
        let mut index = self.snippets.lock();
        index.retain(|u| others.iter().any(|o| o.0 == u));
        index
            .rank(&query, others.iter().map(|(u, p, v, r)| (u.as_str(), p.as_str(), *v, r)), budget_chars, 0.1)
            .into_iter()
            .map(|s| ContextSnippet { path: s.path, text: s.text })
            .collect()
    }
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = |c: u8| (c as char).to_digit(16);
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_decoded_and_relative_to_the_root() {
        let d = Documents::default();
        d.set_root(Some(PathBuf::from("/ws")));
        assert_eq!(d.path_for("file:///ws/src/a%20b.py"), "src/a b.py");
        assert_eq!(d.path_for("file:///elsewhere/x.rs"), "/elsewhere/x.rs");
        assert_eq!(d.path_for("untitled:1"), "untitled:1");
    }

    #[test]
    fn a_panic_while_the_documents_are_locked_leaves_them_usable() {
        let d = Documents::default();
        d.open("file:///a.py", "python", 1, "x = 1\n");
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _held = d.docs.lock();
            panic!("a bug in a handler");
        }));
        assert!(r.is_err());
        assert!(d.change("file:///a.py", 2, &[(None, "y = 2\n".into())]).is_some());
        assert_eq!(d.text("file:///a.py").as_deref(), Some("y = 2\n"));
        assert!(d.snapshot("file:///a.py", Position::new(0, 4), Multiline::Auto, true).is_some());
    }

    fn has_tree(d: &Documents, uri: &str) -> bool {
        d.docs.lock()[uri].syntax.as_ref().is_some_and(|s| s.tree().is_some())
    }

    /// Lines of unterminated strings and braces send tree-sitter's error recovery into seconds
    /// per parse (about 6 s for 400 KB of Rust); inside one block comment they parse at once.
    fn slow_rust(lines: usize) -> String {
        "\"a{\n".repeat(lines)
    }

    /// A file whose parse runs past the budget is opened, and edited, as plain text: each
    /// keystroke costs the budget once at most, not seconds.
    #[test]
    fn a_file_that_parses_too_slowly_is_completed_as_plain_text() {
        let d = Documents::default();
        let uri = "file:///slow.rs";
        let text = slow_rust(100_000);
        let t = std::time::Instant::now();
        d.open(uri, "rust", 1, &text);
        assert!(!has_tree(&d, uri), "parsed in {:?}", t.elapsed());
        assert!(d.change(uri, 2, &[(Some((Position::new(0, 1), Position::new(0, 1))), "b".into())]).is_some());
        assert!(d.text(uri).is_some_and(|t| t.starts_with("\"ba{\n\"a{")));
        let snap = d.snapshot(uri, Position::new(3, 2), Multiline::Auto, true).unwrap();
        assert!(snap.syntax.is_none());
    }

    /// The same text arriving by edits: a keystroke that opens the comment's text to the parser
    /// makes a reparse past the edit budget, and leaves no tree; the keystroke that closes it
    /// again brings the tree back. While the text stays slow, reparses are tried after the 1st,
    /// 2nd, 4th, … keystroke only.
    #[test]
    fn an_edit_whose_reparse_runs_past_the_budget_leaves_plain_text_until_it_is_quick_again() {
        let d = Documents::default();
        let uri = "file:///grows.rs";
        let commented = format!("/*\n{}*/\nfn main() {{}}\n", slow_rust(100_000));
        d.open(uri, "rust", 1, &commented);
        assert!(has_tree(&d, uri), "a comment parses within the budget");
        let (start, two) = (Position::new(0, 0), Position::new(0, 2));
        let stops = || d.docs.lock()[uri].syntax.as_ref().map(|s| s.stops());
        let t = std::time::Instant::now();
        d.change(uri, 2, &[(Some((start, two)), String::new())]).unwrap();
        assert!(!has_tree(&d, uri), "reparsed in {:?}", t.elapsed());
        assert_eq!(stops(), Some(1));
        let snap = d.snapshot(uri, start, Multiline::Auto, true).unwrap();
        assert!(snap.syntax.is_none(), "a request gets no syntax to parse the whole text with");
        d.change(uri, 3, &[(Some((start, start)), "/*".into())]).unwrap();
        assert!(has_tree(&d, uri), "quick again");
        assert_eq!(d.text(uri).as_deref(), Some(commented.as_str()));

        d.change(uri, 4, &[(Some((start, two)), String::new())]).unwrap();
        let end = Position::new(100_000, 0);
        let mut seen = vec![];
        for v in 5..16 {
            d.change(uri, v, &[(Some((end, end)), "x".into())]).unwrap();
            seen.push(stops().unwrap());
        }
        // Tries at the 1st, 3rd and 7th keystroke after the first stop.
        assert_eq!(seen, [2, 2, 3, 3, 3, 3, 4, 4, 4, 4, 4]);
        assert!(!has_tree(&d, uri));
        d.change(uri, 16, &[(Some((start, start)), "/*".into())]).unwrap();
        let mut v = 17;
        while !has_tree(&d, uri) {
            assert!(v < 17 + 8, "the tree is back within 8 keystrokes");
            d.change(uri, v, &[(Some((end, end)), "y".into())]).unwrap();
            v += 1;
        }
        assert_eq!(stops(), Some(0));

        d.open(uri, "rust", v, "fn main() {}\n");
        assert!(has_tree(&d, uri));
        d.change(uri, v + 1, &[(Some((Position::new(0, 11), Position::new(0, 11))), " let x = 1; ".into())]).unwrap();
        assert!(has_tree(&d, uri));
    }
}
