//! Syntax trees kept up to date with incremental edits (`Tree::edit` plus a reparse that reuses
//! the unchanged parts), for the languages with a grammar; other languages are plain text.

use tree_sitter::{InputEdit, Language, Parser, Point, Tree};

use crate::document::{Document, TextEdit};

/// The grammar for an LSP language id, if ghostline has one.
pub fn language(id: &str) -> Option<Language> {
    match id {
        "rust" => Some(tree_sitter_rust::LANGUAGE.into()),
        "python" => Some(tree_sitter_python::LANGUAGE.into()),
        _ => None,
    }
}

/// A document's syntax tree and the parser that maintains it.
pub struct Syntax {
    parser: Parser,
    tree: Option<Tree>,
}

impl Syntax {
    /// A parser for `language_id`, or `None` for languages without a grammar.
    pub fn new(language_id: &str) -> Option<Self> {
        let mut parser = Parser::new();
        parser.set_language(&language(language_id)?).ok()?;
        Some(Syntax { parser, tree: None })
    }

    pub fn tree(&self) -> Option<&Tree> {
        self.tree.as_ref()
    }

    /// Parses the whole document from scratch.
    pub fn parse_full(&mut self, doc: &Document) {
        self.tree = self.parse_with(doc, None);
    }

    /// Tells the tree about an edit already applied to `doc`, then reparses incrementally.
    pub fn edit(&mut self, doc: &Document, e: &TextEdit) {
        let Some(mut old) = self.tree.take() else {
            self.parse_full(doc);
            return;
        };
        old.edit(&InputEdit {
            start_byte: e.start_byte,
            old_end_byte: e.old_end_byte,
            new_end_byte: e.new_end_byte,
            start_position: Point::new(e.start_point.0, e.start_point.1),
            old_end_position: Point::new(e.old_end_point.0, e.old_end_point.1),
            new_end_position: Point::new(e.new_end_point.0, e.new_end_point.1),
        });
        self.tree = self.parse_with(doc, Some(&old));
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::document::{Position, PositionEncoding::Utf16};

    fn full(doc: &Document) -> String {
        let mut s = Syntax::new(&doc.language).unwrap();
        s.parse_full(doc);
        s.tree().unwrap().root_node().to_sexp()
    }

    #[test]
    fn incremental_edits_give_the_tree_of_a_full_parse() {
        for (lang, text, edits) in [
            ("python", "def f(a):\n    return a\n", vec![((1, 11), (1, 12), "a + 1"), ((0, 0), (0, 0), "import os\n"), ((2, 4), (2, 10), "pass  # 😀")]),
            ("rust", "fn main() {\r\n    let x = 1;\r\n}\r\n", vec![((1, 12), (1, 13), "vec![1, 2]"), ((2, 0), (2, 0), "    x.len();\r\n"), ((0, 3), (0, 7), "run")]),
        ] {
            let mut doc = Document::new(text, 1, lang);
            let mut syn = Syntax::new(lang).unwrap();
            syn.parse_full(&doc);
            for ((l0, c0), (l1, c1), new) in edits {
                let e = doc.apply(Some((Position::new(l0, c0), Position::new(l1, c1))), new, Utf16);
                syn.edit(&doc, &e);
                assert_eq!(syn.tree().unwrap().root_node().to_sexp(), full(&doc), "{lang}: {}", doc.text());
            }
            assert!(!syn.tree().unwrap().root_node().has_error(), "{}", doc.text());
        }
    }

    #[test]
    fn unknown_languages_have_no_parser() {
        assert!(Syntax::new("cobol").is_none());
    }
}
