//! Syntax trees kept up to date with incremental edits (`Tree::edit` plus a reparse that reuses
//! the unchanged parts), for the languages with a grammar; other languages are plain text.
//!
//! Every parse has a budget of the parsing thread's CPU time ([`OPEN_BUDGET`], [`EDIT_BUDGET`];
//! wall-clock time where there is no thread clock): tree-sitter's error
//! recovery can take seconds on some text (400 KB of unterminated strings across lines took
//! 6 s per reparse; a keystroke at the top of a 28 KB file of ordinary Rust that leaves it
//! invalid, 260 ms), and a reparse runs under the documents' lock on the keystroke path. A parse
//! past its budget is stopped and makes no tree: the file is completed as plain text until a
//! reparse is quick again (see [`Syntax::reparse`]), or, where there is no tree to start from
//! (the parse of a whole text stopped), until it is reopened.

use std::time::{Duration, Instant};

use tree_sitter::{InputEdit, Language, ParseOptions, ParseState, Parser, Point, Tree};

use crate::document::{Document, TextEdit};
use crate::lang::LangSpec;

/// The grammar for an LSP language id, if ghostline has one.
pub fn language(id: &str) -> Option<Language> {
    crate::lang::spec(id).map(|s| s.language.clone())
}

/// The most a parse of a whole document (at open, or after the whole text was replaced) may
/// take; a 270 KB Rust file of ordinary code takes about 140 ms on a 2-core VM, 150 KB of
/// Python ending in 2,000 comment lines about 0.8 s.
pub const OPEN_BUDGET: Duration = Duration::from_secs(2);
/// The most an incremental reparse may take (one keystroke's change, or a suggestion tried in
/// the document); that file takes about 15 ms.
pub const EDIT_BUDGET: Duration = Duration::from_millis(100);

/// A parse stopped at its budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OverBudget(pub Duration);

impl std::fmt::Display for OverBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "parsing took over {} ms", self.0.as_millis())
    }
}

/// An edit as tree-sitter's `Tree::edit` takes it.
impl From<&TextEdit> for InputEdit {
    fn from(e: &TextEdit) -> InputEdit {
        InputEdit {
            start_byte: e.start_byte,
            old_end_byte: e.old_end_byte,
            new_end_byte: e.new_end_byte,
            start_position: Point::new(e.start_point.0, e.start_point.1),
            old_end_position: Point::new(e.old_end_point.0, e.old_end_point.1),
            new_end_position: Point::new(e.new_end_point.0, e.new_end_point.1),
        }
    }
}

/// A document's syntax tree and the parser that maintains it.
pub struct Syntax {
    pub spec: &'static LangSpec,
    parser: Parser,
    /// The tree of the current text.
    tree: Option<Tree>,
    /// Where the last reparses stopped at the budget: the last tree made, told about every edit
    /// since, which the next reparse starts from. Never shown to context building (its nodes
    /// were not parsed from the current text).
    stale: Option<Tree>,
    /// Reparses in a row stopped at the budget, and the edits still to be let pass before the
    /// next try (doubling with each stop, to [`MAX_SKIPPED`]).
    stops: u32,
    skip: u32,
}

/// Most edits let pass between two tries of a reparse that keeps stopping at the budget: text
/// that stays that slow costs one budget per 32 keystrokes.
const MAX_SKIPPED: u32 = 31;

impl Syntax {
    /// A parser for `language_id`, or `None` for languages without a grammar.
    pub fn new(language_id: &str) -> Option<Self> {
        let spec = crate::lang::spec(language_id)?;
        let mut parser = Parser::new();
        parser.set_language(&spec.language).ok()?;
        Some(Syntax { spec, parser, tree: None, stale: None, stops: 0, skip: 0 })
    }

    /// The tree of the current text (`None` where the last reparse stopped at its budget).
    pub fn tree(&self) -> Option<&Tree> {
        self.tree.as_ref()
    }

    /// Whether no tree is left to reparse from: a parse from scratch stopped at its budget.
    pub fn lost(&self) -> bool {
        self.tree.is_none() && self.stale.is_none()
    }

    /// Reparses in a row that stopped at the budget (0 while the tree is current).
    pub fn stops(&self) -> u32 {
        self.stops
    }

    /// A separate parser over a copy of the current tree (trees are cheap to clone), for trying
    /// an edit without touching the document's own tree; `None` without a current tree (a
    /// fork would have to parse the whole text).
    pub fn fork(&self) -> Option<Syntax> {
        let tree = self.tree.clone()?;
        let mut s = Syntax::new(self.spec.id)?;
        s.tree = Some(tree);
        Some(s)
    }

    /// The language's spec with the current tree, as context building wants them.
    pub fn parts(&self) -> Option<(&'static LangSpec, &Tree)> {
        Some((self.spec, self.tree.as_ref()?))
    }

    /// Parses the whole document from scratch, within [`OPEN_BUDGET`] (no tree when it ran
    /// over).
    pub fn parse_full(&mut self, doc: &Document) -> Result<(), OverBudget> {
        self.forget_tree();
        self.parse_in(doc, None, OPEN_BUDGET)
    }

    /// Tells the tree about an edit already applied to `doc`, then reparses incrementally (see
    /// [`Syntax::reparse`]).
    pub fn edit(&mut self, doc: &Document, e: &TextEdit) -> Result<(), OverBudget> {
        self.note_edit(e);
        self.reparse(doc)
    }

    /// Tells the tree about an edit (one of several of a change, applied in order), without
    /// reparsing: [`Syntax::reparse`] once after the last one parses them all together.
    pub fn note_edit(&mut self, e: &TextEdit) {
        if let Some(tree) = self.tree.as_mut().or(self.stale.as_mut()) {
            tree.edit(&e.into());
        }
    }

    /// Forgets the tree (the whole text was replaced): the next reparse starts from scratch.
    pub fn forget_tree(&mut self) {
        (self.tree, self.stale, self.stops, self.skip) = (None, None, 0, 0);
    }

    /// Reparses `doc` incrementally from the edited tree within [`EDIT_BUDGET`], or from scratch
    /// within [`OPEN_BUDGET`] when there is none. A reparse that stops at its budget leaves no
    /// current tree; the edited one is kept to start the next from, and while they keep
    /// stopping, the tries are spaced out (after the 1st, 2nd, 4th, … edit, at most 32 apart).
    /// Typing that makes the text quick to parse again brings the tree back at the next try.
    pub fn reparse(&mut self, doc: &Document) -> Result<(), OverBudget> {
        let old = self.tree.take().or_else(|| self.stale.take());
        let Some(old) = old else {
            return self.parse_in(doc, None, OPEN_BUDGET);
        };
        if self.skip > 0 {
            self.skip -= 1;
            self.stale = Some(old);
            return Err(OverBudget(EDIT_BUDGET));
        }
        match self.parse_in(doc, Some(&old), EDIT_BUDGET) {
            Ok(()) => {
                (self.stops, self.skip) = (0, 0);
                Ok(())
            }
            Err(over) => {
                self.stale = Some(old);
                self.stops += 1;
                self.skip = ((1u32 << (self.stops - 1).min(5)) - 1).min(MAX_SKIPPED);
                Err(over)
            }
        }
    }

    fn parse_in(&mut self, doc: &Document, old: Option<&Tree>, budget: Duration) -> Result<(), OverBudget> {
        self.tree = self.parse_with(doc, old, budget);
        match self.tree {
            Some(_) => Ok(()),
            None => Err(OverBudget(budget)),
        }
    }

    fn parse_with(&mut self, doc: &Document, old: Option<&Tree>, budget: Duration) -> Option<Tree> {
        let rope = doc.rope();
        let clock = Stopwatch::start();
        // Asked every 100 parse operations: true stops the parse.
        let mut over = |_: &ParseState| clock.elapsed() > budget;
        // Feed the parser straight from the rope's chunks: no copy of the text.
        let tree = self.parser.parse_with_options(
            &mut |byte: usize, _| -> &[u8] {
                if byte >= rope.len_bytes() {
                    return &[];
                }
                let (chunk, start, _, _) = rope.chunk_at_byte(byte);
                &chunk.as_bytes()[byte - start..]
            },
            old,
            Some(ParseOptions::new().progress_callback(&mut over)),
        );
        if tree.is_none() {
            // A stopped parse would otherwise resume where it stopped, on whatever text comes next.
            self.parser.reset();
        }
        tree
    }
}

/// Time spent by the calling thread: its CPU time, so that a budget counts the parse's own work
/// and not the time other programs take the cores from it (a test run, a build); wall-clock
/// time where the platform has no thread clock.
struct Stopwatch {
    cpu: Option<Duration>,
    wall: Instant,
}

impl Stopwatch {
    fn start() -> Self {
        Stopwatch { cpu: thread_cpu_time(), wall: Instant::now() }
    }

    fn elapsed(&self) -> Duration {
        match (self.cpu, thread_cpu_time()) {
            (Some(a), Some(b)) => b.saturating_sub(a),
            _ => self.wall.elapsed(),
        }
    }
}

#[cfg(unix)]
fn thread_cpu_time() -> Option<Duration> {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime only writes the timespec it is given.
    let ok = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) } == 0;
    ok.then(|| Duration::new(ts.tv_sec.max(0) as u64, ts.tv_nsec.clamp(0, 999_999_999) as u32))
}

#[cfg(not(unix))]
fn thread_cpu_time() -> Option<Duration> {
    None
}

/// A parsed document from text with one `|` marking the cursor: (document, syntax, cursor char).
#[cfg(test)]
pub fn parsed_at(text_with_caret: &str, lang: &str) -> (Document, Option<Syntax>, usize) {
    let at = text_with_caret.find('|').expect("a | marks the cursor");
    let doc = Document::new(&text_with_caret.replacen('|', "", 1), 1, lang);
    let mut syn = Syntax::new(lang);
    if let Some(s) = syn.as_mut() {
        s.parse_full(&doc).unwrap();
    }
    let cursor = doc.rope().byte_to_char(at);
    (doc, syn, cursor)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::document::{Position, PositionEncoding::Utf16};

    /// The tree of a parse of the whole document from scratch.
    fn full(doc: &Document) -> Tree {
        let mut s = Syntax::new(&doc.language).unwrap();
        s.parse_full(doc).unwrap();
        s.tree().unwrap().clone()
    }

    /// A parse past its budget stops with no tree, and the same parser then parses another
    /// text from its start (a stopped parse would otherwise resume on the new text).
    #[test]
    fn a_parse_past_its_budget_stops_and_the_parser_starts_afresh() {
        let slow = Document::new(&"\"a{\n".repeat(100_000), 1, "rust");
        let mut s = Syntax::new("rust").unwrap();
        assert_eq!(s.parse_full(&slow), Err(OverBudget(OPEN_BUDGET)));
        assert!(s.tree().is_none());
        let small = Document::new("fn main() {}\n", 1, "rust");
        s.parse_full(&small).unwrap();
        let root = s.tree().unwrap().root_node();
        assert_eq!((root.end_byte(), root.has_error()), (13, false));
        assert_eq!(root.to_sexp(), full(&small).root_node().to_sexp());
    }

    /// After a reparse stopped at its budget, the next starts from the stopped one's edited
    /// tree, and the tree it makes is that of a full parse.
    #[test]
    fn a_tree_brought_back_after_a_stop_is_the_tree_of_a_full_parse() {
        let text = format!("/*\n{}*/\nfn main() {{ let x = 1; }}\n", "\"a{\n".repeat(100_000));
        let mut doc = Document::new(&text, 1, "rust");
        let mut s = Syntax::new("rust").unwrap();
        s.parse_full(&doc).unwrap();
        let (a, b) = (Position::new(0, 0), Position::new(0, 2));
        let e = doc.apply(Some((a, b)), "", Utf16);
        assert_eq!(s.edit(&doc, &e), Err(OverBudget(EDIT_BUDGET)));
        assert!(s.tree().is_none() && !s.lost());
        let e = doc.apply(Some((a, a)), "/*", Utf16);
        assert_eq!(s.edit(&doc, &e), Ok(()));
        let end = Position::new(100_002, 17);
        let e = doc.apply(Some((end, end)), "let y = x; ", Utf16);
        assert_eq!(s.edit(&doc, &e), Ok(()));
        assert_eq!(s.tree().unwrap().root_node().to_sexp(), full(&doc).root_node().to_sexp());
        assert!(s.tree().unwrap().root_node().to_sexp().contains("let_declaration"));
    }

    #[test]
    fn incremental_edits_give_the_tree_of_a_full_parse() {
        for (lang, text, edits) in [
            (
                "python",
                "def f(a):\n    return a\n",
                vec![((1, 11), (1, 12), "a + 1"), ((0, 0), (0, 0), "import os\n"), ((2, 4), (2, 10), "pass  # 😀")],
            ),
            (
                "rust",
                "fn main() {\r\n    let x = 1;\r\n}\r\n",
                vec![((1, 12), (1, 13), "vec![1, 2]"), ((2, 0), (2, 0), "    x.len();\r\n"), ((0, 3), (0, 7), "run")],
            ),
        ] {
            let mut doc = Document::new(text, 1, lang);
            let mut syn = Syntax::new(lang).unwrap();
            syn.parse_full(&doc).unwrap();
            for ((l0, c0), (l1, c1), new) in edits {
                let e = doc.apply(Some((Position::new(l0, c0), Position::new(l1, c1))), new, Utf16);
                syn.edit(&doc, &e).unwrap();
                assert_eq!(
                    syn.tree().unwrap().root_node().to_sexp(),
                    full(&doc).root_node().to_sexp(),
                    "{lang}: {}",
                    doc.text()
                );
            }
            assert!(!syn.tree().unwrap().root_node().has_error(), "{}", doc.text());
        }
    }

    const SEEDS: [(&str, &str); 5] = [
        ("python", "def f(a):\n    return a  # é\n\nclass C:\n    x = '😀'\n"),
        ("rust", "fn main() {\r\n    let s = \"😀\";\r\n}\r\n// end\r\n"),
        ("typescriptreact", "const f = (a: number) => <p>{`${a} 😀`}</p>;\n// é\n"),
        ("go", "package m\n\nfunc f() {\r\n\ts := `é`\r\n}\r\n"),
        ("cpp", "#include <x>\nint f() {\n    return R\"(😀)\"[0]; // é\n}\n"),
    ];

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(128))]
        /// Random edit sequences (positions in UTF-16 units, clamped as LSP clamps them) give the
        /// text of applying them to a string and the tree of a parse from scratch.
        #[test]
        fn random_edits_match_a_full_reparse(
            lang in 0usize..5,
            edits in proptest::collection::vec((0u32..8, 0u32..30, 0u32..8, 0u32..30, "[a-z_(){}:;=\\n\r 😀é\"#/]{0,12}"), 1..12),
        ) {
            let (lang, seed) = SEEDS[lang];
            let mut doc = Document::new(seed, 1, lang);
            let mut model: Vec<char> = seed.chars().collect();
            let mut syn = Syntax::new(lang).unwrap();
            syn.parse_full(&doc).unwrap();
            for (l0, c0, l1, c1, new) in edits {
                let (a, b) = (Position::new(l0, c0), Position::new(l1, c1));
                let (ia, ib) = (doc.char_index(a, Utf16), doc.char_index(b, Utf16));
                let (lo, hi) = (ia.min(ib), ia.max(ib));
                model.splice(lo..hi, new.chars());
                let e = doc.apply(Some((a, b)), &new, Utf16);
                syn.edit(&doc, &e).unwrap();
                let text = doc.text();
                proptest::prop_assert_eq!(&text, &model.iter().collect::<String>());
                agrees_with_a_fresh_parse(&syn, &doc)?;
            }
        }

        /// The edits of one change told to the tree one after another and reparsed once (as
        /// `Documents::change` does) give the same as reparsing after each.
        #[test]
        fn edits_reparsed_together_match_a_full_reparse(
            lang in 0usize..5,
            edits in proptest::collection::vec((0u32..8, 0u32..30, 0u32..8, 0u32..30, "[a-z_(){}:;=\n\r 😀é\"#/]{0,12}"), 1..6),
        ) {
            let (lang, seed) = SEEDS[lang];
            let mut doc = Document::new(seed, 1, lang);
            let mut syn = Syntax::new(lang).unwrap();
            syn.parse_full(&doc).unwrap();
            for (l0, c0, l1, c1, new) in edits {
                let e = doc.apply(Some((Position::new(l0, c0), Position::new(l1, c1))), &new, Utf16);
                syn.note_edit(&e);
            }
            syn.reparse(&doc).unwrap();
            agrees_with_a_fresh_parse(&syn, &doc)?;
        }
    }

    fn agrees_with_a_fresh_parse(syn: &Syntax, doc: &Document) -> Result<(), proptest::test_runner::TestCaseError> {
        let text = doc.text();
        let tree = syn.tree().unwrap();
        // Every node's points agree with its bytes in the new text: what a wrong edit (bytes or
        // points) would break.
        positions_match_the_text(tree, &text).map_err(proptest::test_runner::TestCaseError::fail)?;
        // Where the text parses cleanly the incremental tree is the fresh one. Where it has
        // syntax errors, tree-sitter's error recovery may settle differently with an old tree
        // than from scratch (tree-sitter/tree-sitter#4001, #1645), so only the error itself
        // must show in both.
        let fresh = full(doc);
        let fresh = fresh.root_node();
        if fresh.has_error() {
            proptest::prop_assert!(tree.root_node().has_error(), "{}", text);
        } else {
            proptest::prop_assert_eq!(tree.root_node().to_sexp(), fresh.to_sexp());
        }
        Ok(())
    }

    /// Checks that each node's start and end points are the row and column (bytes after the
    /// last `\n`) of its start and end bytes in `text`.
    fn positions_match_the_text(tree: &Tree, text: &str) -> Result<(), String> {
        let point = |b: usize| {
            let before = &text.as_bytes()[..b.min(text.len())];
            let row = before.iter().filter(|&&c| c == b'\n').count();
            let col = b - before.iter().rposition(|&c| c == b'\n').map_or(0, |i| i + 1);
            Point::new(row, col)
        };
        let mut cursor = tree.walk();
        loop {
            let n = cursor.node();
            for (b, p) in [(n.start_byte(), n.start_position()), (n.end_byte(), n.end_position())] {
                if b > text.len() || point(b) != p {
                    return Err(format!("{} at byte {b}: point {p:?}, the text says {:?}", n.kind(), point(b)));
                }
            }
            if cursor.goto_first_child() || cursor.goto_next_sibling() {
                continue;
            }
            loop {
                if !cursor.goto_parent() {
                    return Ok(());
                }
                if cursor.goto_next_sibling() {
                    break;
                }
            }
        }
    }

    #[test]
    fn unknown_languages_have_no_parser() {
        assert!(Syntax::new("cobol").is_none());
    }
}
