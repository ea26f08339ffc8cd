//! Syntax trees kept up to date with incremental edits (`Tree::edit` plus a reparse that reuses
//! the unchanged parts), for the languages with a grammar; other languages are plain text.

use tree_sitter::{InputEdit, Language, Parser, Point, Tree};

use crate::document::{Document, TextEdit};
use crate::lang::LangSpec;

/// The grammar for an LSP language id, if ghostline has one.
pub fn language(id: &str) -> Option<Language> {
    crate::lang::spec(id).map(|s| s.language.clone())
}

/// A document's syntax tree and the parser that maintains it.
pub struct Syntax {
    pub spec: &'static LangSpec,
    parser: Parser,
    tree: Option<Tree>,
}

impl Syntax {
    /// A parser for `language_id`, or `None` for languages without a grammar.
    pub fn new(language_id: &str) -> Option<Self> {
        let spec = crate::lang::spec(language_id)?;
        let mut parser = Parser::new();
        parser.set_language(&spec.language).ok()?;
        Some(Syntax { spec, parser, tree: None })
    }

    pub fn tree(&self) -> Option<&Tree> {
        self.tree.as_ref()
    }

    /// A separate parser over a copy of the current tree (trees are cheap to clone), for trying
    /// an edit without touching the document's own tree.
    pub fn fork(&self) -> Option<Syntax> {
        let mut s = Syntax::new(self.spec.id)?;
        s.tree = self.tree.clone();
        Some(s)
    }

    /// The language's spec with the current tree, as context building wants them.
    pub fn parts(&self) -> Option<(&'static LangSpec, &Tree)> {
        Some((self.spec, self.tree.as_ref()?))
    }

    /// Parses the whole document from scratch.
    pub fn parse_full(&mut self, doc: &Document) {
        self.tree = self.parse_with(doc, None);
    }

    /// Tells the tree about an edit already applied to `doc`, then reparses incrementally.
    pub fn edit(&mut self, doc: &Document, e: &TextEdit) {
        self.note_edit(e);
        self.reparse(doc);
    }

    /// Tells the tree about an edit (one of several of a change, applied in order), without
    /// reparsing: [`Syntax::reparse`] once after the last one parses them all together.
    pub fn note_edit(&mut self, e: &TextEdit) {
        if let Some(tree) = self.tree.as_mut() {
            tree.edit(&InputEdit {
                start_byte: e.start_byte,
                old_end_byte: e.old_end_byte,
                new_end_byte: e.new_end_byte,
                start_position: Point::new(e.start_point.0, e.start_point.1),
                old_end_position: Point::new(e.old_end_point.0, e.old_end_point.1),
                new_end_position: Point::new(e.new_end_point.0, e.new_end_point.1),
            });
        }
    }

    /// Forgets the tree (the whole text was replaced): the next reparse starts from scratch.
    pub fn forget_tree(&mut self) {
        self.tree = None;
    }

    /// Reparses `doc`: incrementally from the edited tree, or from scratch when there is none.
    pub fn reparse(&mut self, doc: &Document) {
        let old = self.tree.take();
        self.tree = self.parse_with(doc, old.as_ref());
    }

    fn parse_with(&mut self, doc: &Document, old: Option<&Tree>) -> Option<Tree> {
        let rope = doc.rope();
        // Feed the parser straight from the rope's chunks: no copy of the text.
        self.parser.parse_with_options(
            &mut |byte: usize, _| -> &[u8] {
                if byte >= rope.len_bytes() {
                    return &[];
                }
                let (chunk, start, _, _) = rope.chunk_at_byte(byte);
                &chunk.as_bytes()[byte - start..]
            },
            old,
            None,
        )
    }
}

/// A parsed document from text with one `|` marking the cursor: (document, syntax, cursor char).
#[cfg(test)]
pub fn parsed_at(text_with_caret: &str, lang: &str) -> (Document, Option<Syntax>, usize) {
    let at = text_with_caret.find('|').expect("a | marks the cursor");
    let doc = Document::new(&text_with_caret.replacen('|', "", 1), 1, lang);
    let mut syn = Syntax::new(lang);
    if let Some(s) = syn.as_mut() {
        s.parse_full(&doc);
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
        s.parse_full(doc);
        s.tree().unwrap().clone()
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
            syn.parse_full(&doc);
            for ((l0, c0), (l1, c1), new) in edits {
                let e = doc.apply(Some((Position::new(l0, c0), Position::new(l1, c1))), new, Utf16);
                syn.edit(&doc, &e);
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
            syn.parse_full(&doc);
            for (l0, c0, l1, c1, new) in edits {
                let (a, b) = (Position::new(l0, c0), Position::new(l1, c1));
                let (ia, ib) = (doc.char_index(a, Utf16), doc.char_index(b, Utf16));
                let (lo, hi) = (ia.min(ib), ia.max(ib));
                model.splice(lo..hi, new.chars());
                let e = doc.apply(Some((a, b)), &new, Utf16);
                syn.edit(&doc, &e);
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
            syn.parse_full(&doc);
            for (l0, c0, l1, c1, new) in edits {
                let e = doc.apply(Some((Position::new(l0, c0), Position::new(l1, c1))), &new, Utf16);
                syn.note_edit(&e);
            }
            syn.reparse(&doc);
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
