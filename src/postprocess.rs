//! What the user sees of a raw completion: cut to one line or to the end of the syntactic block
//! it started in, without text the suffix already has (a closing bracket the editor inserted, the
//! next line repeated), and dropped when it is empty or adds a syntax error that was not there.

use tree_sitter::{Node, Tree};

use crate::document::{Document, PositionEncoding};
use crate::lang::Role;
use crate::syntax::Syntax;
use crate::trigger::{is_closer, line_around, Mode};

/// How a raw completion becomes a suggestion: the line mode, and whether the model answered
/// left to right (a model without FIM saw the prefix alone).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    pub mode: Mode,
    pub left_to_right: bool,
}

impl Shape {
    pub fn fim(mode: Mode) -> Shape {
        Shape { mode, left_to_right: false }
    }

    /// Where a streamed text is complete enough (see `complete_at`).
    pub fn complete_at(&self, text: &str) -> Option<usize> {
        complete_at(self.mode, text)
    }
}

/// Cuts a streamed text at the point where `mode` needs no more of it; `None` while more is
/// needed. Single-line: the first line break after some content. Multi-line: the end of the
/// first finished line, after the first, indented less than the block's body.
pub fn complete_at(mode: Mode, text: &str) -> Option<usize> {
    match mode {
        Mode::Skip(_) => Some(0),
        Mode::SingleLine => {
            let content = text.find(|c: char| !c.is_whitespace())?;
            text[content..].find(['\n', '\r']).map(|i| content + i)
        }
        Mode::MultiLine { min_indent } => {
            let mut offset = 0;
            let mut seen_content = false;
            for line in text.split_inclusive('\n') {
                let finished = line.ends_with('\n');
                let body = line.trim_end();
                if finished && !body.is_empty() {
                    if seen_content && crate::trigger::indent_of(body) < min_indent {
                        return Some(offset + line.len());
                    }
                    seen_content = true;
                }
                offset += line.len();
            }
            None
        }
    }
}

/// Turns a raw completion at char index `cursor` of `doc` into the text to show, or `None`.
pub fn finish(doc: &Document, cursor: usize, syntax: Option<&Syntax>, shape: Shape, raw: &str) -> Option<String> {
    let mode = shape.mode;
    let mut raw = raw.replace("\r\n", "\n");
    let (before, after) = line_around(doc, cursor);
    if shape.left_to_right {
        raw = skip_restarted_line(&raw, &before, &after);
        raw = cut_repeated_suffix(&raw, doc, cursor, &before, &after);
    }
    let mut text = match mode {
        // One line means the rest of this line: nothing from a line break on.
        Mode::SingleLine => raw.split(['\n', '\r']).next().unwrap_or("").to_string(),
        _ => raw,
    };
    if matches!(mode, Mode::MultiLine { .. }) {
        if let Some(syn) = syntax {
            if let Some(end) = block_end(doc, cursor, syn, &text) {
                text.truncate(end);
            }
        }
        // A left-to-right answer was cut at the document's next line already, indentation
        // included; comparing trimmed lines again would take its own closing `}` for that one.
        if !shape.left_to_right {
            text = drop_repeated_suffix_lines(&text, doc, cursor);
        }
        // A completion that opens the body on the next line keeps its first line break.
        let keep = text.trim_end().to_string();
        text = keep;
    } else {
        text = text.trim_end().to_string();
    }
    text = strip_line_suffix(&text, &after);
    if before.trim().is_empty()
        && !matches!(mode, Mode::SingleLine)
        && text.starts_with('\n')
        && after.trim().is_empty()
    {
        // Cursor on a blank line: a leading newline would leave it blank.
        text = text.trim_start_matches('\n').to_string();
    }
    if text.trim().is_empty() {
        return None;
    }
    if let Some(syn) = syntax {
        if adds_syntax_error(doc, cursor, syn, &text) {
            return None;
        }
    }
    Some(text)
}

/// A left-to-right answer on a line that holds only indentation often ends that line and
/// starts the next one (`\n` + the same indentation + code): the cursor's line is the line the
/// code belongs on, so the line break and the indentation the line already has are skipped.
fn skip_restarted_line(text: &str, before: &str, after: &str) -> String {
    if !before.trim().is_empty() || !after.trim().is_empty() || !text.starts_with('\n') {
        return text.to_string();
    }
    let rest = text.trim_start_matches('\n');
    match rest.strip_prefix(before) {
        Some(code) if !code.starts_with([' ', '\t']) && !code.trim().is_empty() => code.to_string(),
        _ => text.to_string(),
    }
}

/// Cuts a left-to-right answer (the model saw no suffix) where it starts repeating the text
/// after the cursor: on the cursor's line where it runs into the rest of the line (`foo(|)`
/// answered `a, b)` and more keeps `a, b`), else before the first line that is the document's
/// next non-blank line, indentation included (the closing `}` or the next statement the
/// document already has).
fn cut_repeated_suffix(text: &str, doc: &Document, cursor: usize, before: &str, after: &str) -> String {
    let rest = after.trim();
    let first_end = text.find('\n').unwrap_or(text.len());
    if !rest.is_empty() {
        let first = text[..first_end].trim_end();
        if first.len() > rest.len() && first.ends_with(rest) {
            return first[..first.len() - rest.len()].to_string();
        }
        return text.to_string();
    }
    let rope = doc.rope();
    let line = rope.char_to_line(cursor);
    let next = (line + 1..rope.len_lines().min(line + 12))
        .filter(|&l| rope.line(l).len_chars() < 1000)
        .map(|l| rope.line(l).to_string())
        .find(|l| !l.trim().is_empty());
    let Some(next) = next else { return text.to_string() };
    let next = next.trim_end();
    let mut offset = 0;
    for (i, l) in text.split_inclusive('\n').enumerate() {
        // The first line continues the cursor's line; it repeats the next line only when the
        // cursor's line held nothing but indentation.
        let whole = if i == 0 { format!("{before}{l}") } else { l.to_string() };
        if (i > 0 || before.trim().is_empty()) && whole.trim_end() == next {
            return text[..offset].to_string();
        }
        offset += l.len();
    }
    text.to_string()
}

/// Removes the end of the completion that the rest of the line already holds (`)` after
/// `foo(a, b)`, `");` after a string call).
fn strip_line_suffix(text: &str, after: &str) -> String {
    let after = after.trim_end();
    let last_line_start = text.rfind('\n').map_or(0, |i| i + 1);
    for k in (1..=after.len()).rev() {
        if !after.is_char_boundary(k) {
            continue;
        }
        let piece = &after[..k];
        if piece.trim().is_empty() {
            break;
        }
        if text.len() >= piece.len() + last_line_start && text.ends_with(piece) {
            return text[..text.len() - piece.len()].to_string();
        }
    }
    text.to_string()
}

/// Drops trailing lines of a multi-line completion that repeat the first non-blank lines after
/// the cursor's line (the closing `}` the editor already shows, a repeated next statement).
fn drop_repeated_suffix_lines(text: &str, doc: &Document, cursor: usize) -> String {
    let rope = doc.rope();
    let line = rope.char_to_line(cursor);
    let next: Vec<String> = (line + 1..rope.len_lines().min(line + 12))
        .filter(|&l| rope.line(l).len_chars() < 1000)
        .map(|l| rope.line(l).to_string())
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.trim().to_string())
        .collect();
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    let content: Vec<usize> = (0..lines.len()).filter(|&i| !lines[i].trim().is_empty()).collect();
    // A line of closers alone (`}`) repeats a next line that begins with it (C's `};`).
    let repeats = |line: &str, next: &str| line == next || (line.chars().all(is_closer) && next.starts_with(line));
    // The largest m such that the completion's last m content lines equal the next m lines.
    for m in (1..=content.len().min(next.len())).rev() {
        let tail = &content[content.len() - m..];
        if tail.iter().zip(&next).all(|(&i, n)| repeats(lines[i].trim(), n)) {
            if tail[0] == 0 {
                return String::new();
            }
            return lines[..tail[0]].concat();
        }
    }
    text.to_string()
}

/// The document with `text` inserted at `cursor`, parsed incrementally from the current tree.
fn with_insert(doc: &Document, cursor: usize, syn: &Syntax, text: &str) -> Option<(Document, Tree)> {
    let mut d = doc.clone();
    let pos = d.position(cursor, PositionEncoding::Utf8);
    let edit = d.apply(Some((pos, pos)), text, PositionEncoding::Utf8);
    let mut s = syn.fork()?;
    s.edit(&d, &edit).ok()?;
    let tree = s.tree()?.clone();
    Some((d, tree))
}

/// Byte length within `text` at which the smallest block that starts before the cursor ends,
/// if it ends inside the completion.
fn block_end(doc: &Document, cursor: usize, syn: &Syntax, text: &str) -> Option<usize> {
    let (_, tree) = with_insert(doc, cursor, syn, text)?;
    let at = doc.rope().char_to_byte(cursor);
    let mut node = tree.root_node().descendant_for_byte_range(at, at);
    while let Some(n) = node {
        if n.start_byte() < at && n.end_byte() > at && syn.spec.is(n, Role::Block) {
            let end = n.end_byte() - at;
            return (end < text.len()).then_some(end);
        }
        node = n.parent();
    }
    None
}

fn has_error_in(node: Node, a: usize, b: usize) -> bool {
    if node.end_byte() < a || node.start_byte() > b || !(node.has_error() || node.is_missing()) {
        return false;
    }
    if node.is_error() || node.is_missing() {
        return true;
    }
    let mut walk = node.walk();
    let found = node.children(&mut walk).any(|c| has_error_in(c, a, b));
    found
}

/// Whether inserting `text` puts a syntax error on the lines it touches where there was none.
fn adds_syntax_error(doc: &Document, cursor: usize, syn: &Syntax, text: &str) -> bool {
    let Some(old) = syn.tree() else { return false };
    let rope = doc.rope();
    let line = rope.char_to_line(cursor);
    let a = rope.line_to_byte(line);
    let b = rope.line_to_byte((line + 1).min(rope.len_lines()));
    if has_error_in(old.root_node(), a, b) {
        return false;
    }
    let Some((_, tree)) = with_insert(doc, cursor, syn, text) else { return false };
    has_error_in(tree.root_node(), a, b + text.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(text_with_caret: &str, lang: &str, mode: Mode, raw: &str) -> Option<String> {
        let (doc, syn, cursor) = crate::syntax::parsed_at(text_with_caret, lang);
        finish(&doc, cursor, syn.as_ref(), Shape::fim(mode), raw)
    }

    const MULTI4: Mode = Mode::MultiLine { min_indent: 4 };

    #[test]
    fn single_line_stops_at_the_line_end_and_drops_what_the_line_has() {
        let s = Mode::SingleLine;
        assert_eq!(run("x = |\n", "python", s, "compute(a, b)\nprint(x)\n").as_deref(), Some("compute(a, b)"));
        assert_eq!(run("x = compute(|)\n", "python", s, "a, b)\n").as_deref(), Some("a, b"));
        assert_eq!(run("let v = vec![|];\n", "rust", s, "1, 2];").as_deref(), Some("1, 2"));
        assert_eq!(run("x = |\n", "python", s, "   \n\n"), None);
        assert_eq!(run("x = |\n", "python", s, "\n    y = 2\n"), None, "nothing for this line");
        assert_eq!(complete_at(s, "  \n  foo"), None);
        assert_eq!(complete_at(s, "foo(1)\nbar"), Some(6));
    }

    #[test]
    fn multi_line_ends_with_the_block_it_started_in() {
        let py = "def f(x):\n    |\n\ndef g():\n    pass\n";
        assert_eq!(
            run(py, "python", MULTI4, "y = x + 1\n    return y\n\ndef h():\n    pass\n").as_deref(),
            Some("y = x + 1\n    return y")
        );
        let py_opener = "class A:|\n";
        let got = run(
            py_opener,
            "python",
            Mode::MultiLine { min_indent: 1 },
            "\n    def run(self):\n        return 1\n\nx = A()\n",
        );
        assert_eq!(got.as_deref(), Some("\n    def run(self):\n        return 1"));
        let rs = "fn f() -> u32 {\n    |\n}\n";
        assert_eq!(
            run(rs, "rust", MULTI4, "let x = 1;\n    x + 1\n}\n\nfn g() {}\n").as_deref(),
            Some("let x = 1;\n    x + 1")
        );
    }

    #[test]
    fn repeated_next_lines_and_new_syntax_errors_are_dropped() {
        let rs = "fn f() {\n    |\n    done();\n}\n";
        assert_eq!(run(rs, "rust", MULTI4, "start();\n    done();\n").as_deref(), Some("start();"));
        // Valid before; the completion would leave an unclosed bracket.
        assert_eq!(run("x = 1|\n", "python", Mode::SingleLine, " + (2"), None);
        assert_eq!(run("x = 1|\n", "python", Mode::SingleLine, " + 2").as_deref(), Some(" + 2"));
        // Already broken before: kept, the user is mid-statement.
        assert_eq!(run("x = |\n", "python", Mode::SingleLine, "foo(").as_deref(), Some("foo("));
    }

    proptest::proptest! {
        #[test]
        fn any_text_cursor_and_completion_is_handled_without_panic(
            text in "[a-z(){}:;'\"\n =é😀\r\t]{0,60}", at in 0usize..80, raw in "[a-z(){}:;'\"\n =é😀\t]{0,40}", lang in 0usize..10, m in 0usize..3,
        ) {
            let lang = ["python", "rust", "text", "javascript", "typescript", "typescriptreact", "go", "java", "c", "cpp"][lang];
            let doc = Document::new(&text, 1, lang);
            let mut syn = Syntax::new(lang);
            if let Some(s) = syn.as_mut() {
                s.parse_full(&doc).unwrap();
            }
            let cursor = at.min(doc.rope().len_chars());
            let mode = [Mode::SingleLine, MULTI4, Mode::MultiLine { min_indent: 0 }][m];
            let _ = crate::trigger::decide(&doc, cursor, syn.as_ref().and_then(|s| s.parts()), crate::trigger::Multiline::Auto, at % 2 == 0);
            if let Some(out) = finish(&doc, cursor, syn.as_ref(), Shape::fim(mode), &raw) {
                proptest::prop_assert!(!out.trim().is_empty());
            }
        }
    }

    fn left_to_right(text_with_caret: &str, lang: &str, mode: Mode, raw: &str) -> Option<String> {
        let (doc, syn, cursor) = crate::syntax::parsed_at(text_with_caret, lang);
        finish(&doc, cursor, syn.as_ref(), Shape { mode, left_to_right: true }, raw)
    }

    #[test]
    fn a_left_to_right_answer_that_restarts_an_indented_blank_line_goes_on_that_line() {
        let py = "def f(self, conn):\n    # keep the connection\n    |\n    self.cache = {}\n";
        assert_eq!(
            left_to_right(py, "python", Mode::SingleLine, "\n    self.conn = conn\n    self.cache = {}\n").as_deref(),
            Some("self.conn = conn")
        );
        // Deeper indentation on the next line is a new block, not this line: left as it was.
        assert_eq!(left_to_right(py, "python", Mode::SingleLine, "\n        x = 1\n"), None);
    }

    #[test]
    fn a_left_to_right_answer_is_cut_where_it_repeats_the_rest_of_the_line() {
        let s = Mode::SingleLine;
        assert_eq!(left_to_right("x = compute(|)\n", "python", s, "a, b)\nprint(x)\n").as_deref(), Some("a, b"));
        assert_eq!(left_to_right("x = f(|, 2)\n", "python", s, "1, 2)").as_deref(), Some("1"));
        assert_eq!(left_to_right("let v = vec![|];\n", "rust", s, "1, 2];\nlet w = 3;").as_deref(), Some("1, 2"));
        // Not running into the rest of the line: the line as answered, if it parses.
        assert_eq!(left_to_right("print(|)\n", "python", s, "x + 1, end=\"\")").as_deref(), Some("x + 1, end=\"\""));
        assert_eq!(left_to_right("x = f(|)\n", "python", s, ")"), None, "only the rest of the line");
    }

    #[test]
    fn a_left_to_right_answer_is_cut_before_the_next_line_of_the_document() {
        let py = "def f(x):\n    y = |\n    return y\n";
        assert_eq!(
            left_to_right(py, "python", Mode::SingleLine, "x + 1\n    return y\n\nprint(f(2))\n").as_deref(),
            Some("x + 1")
        );
        let py = "def f(x):\n    |\n    return y\n";
        assert_eq!(
            left_to_right(py, "python", MULTI4, "y = x + 1\n    y *= 2\n    return y\n\ndef g():\n").as_deref(),
            Some("y = x + 1\n    y *= 2")
        );
        // The answer is the next line itself: nothing new.
        assert_eq!(left_to_right(py, "python", MULTI4, "return y\n\ndef g():\n"), None);
        // A `}` of the answer's own block is not the document's: indentation decides.
        let rs = "fn f(a: bool) {\n    |\n}\n";
        assert_eq!(
            left_to_right(rs, "rust", MULTI4, "if a {\n        b();\n    }\n}\n\nfn g() {}\n").as_deref(),
            Some("if a {\n        b();\n    }")
        );
        let rs = "fn count(text: &str) -> usize {\n    let mut n = 0;\n    for w in text.split(' ') {\n        |\n    }\n    n\n}\n";
        assert_eq!(
            left_to_right(rs, "rust", MULTI4, "n += w.len();\n    }\n    n\n}\n").as_deref(),
            Some("n += w.len();")
        );
    }

    #[test]
    fn multi_line_reading_stops_at_a_dedent() {
        assert_eq!(complete_at(MULTI4, "a = 1\n    b = 2\n"), None);
        let t = "a = 1\n    b = 2\ndef g():\n";
        assert_eq!(complete_at(MULTI4, t), Some(t.len()));
        let t = "\n    x()\n}\n";
        assert_eq!(complete_at(Mode::MultiLine { min_indent: 1 }, t), Some(t.len()));
    }
}
