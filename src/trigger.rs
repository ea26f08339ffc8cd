//! When to ask, and for how much: no request in the middle of a word or inside a string or
//! comment (automatic triggers only), a multi-line suggestion at an empty block body or after a
//! block opener at the end of a line, a single line in the middle of a statement.

use serde::Deserialize;
use tree_sitter::{Node, Tree};

use crate::document::Document;
use crate::lang::{LangSpec, Role};

/// The `multiline` setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Multiline {
    #[default]
    Auto,
    Always,
    Never,
}

/// What to ask the server for at a cursor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Nothing: a completion cannot help here.
    Skip(&'static str),
    /// The rest of the current line.
    SingleLine,
    /// A block: reading stops once a finished line is indented less than `min_indent` columns.
    MultiLine { min_indent: usize },
}

pub fn is_word_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// Characters that close something the editor may have inserted on its own.
pub fn is_closer(c: char) -> bool {
    matches!(c, ')' | ']' | '}' | '"' | '\'' | '`' | ';' | ',' | ':' | '>')
}

/// Leading whitespace width of a line, a tab counting as 4 columns.
pub fn indent_of(line: &str) -> usize {
    line.chars().take_while(|c| *c == ' ' || *c == '\t').map(|c| if c == '\t' { 4 } else { 1 }).sum()
}

fn opens_block(language: &str, before: &str) -> bool {
    crate::lang::rules(language).opens_block(before)
}

const LINE_CAP: usize = 2000;

/// The line of `char_idx` split at it: (text before on the line, text after up to the end of
/// the line, without the terminator).
pub fn line_around(doc: &Document, char_idx: usize) -> (String, String) {
    let rope = doc.rope();
    let line = rope.char_to_line(char_idx);
    let start = rope.line_to_char(line);
    let end = rope.line_to_char((line + 1).min(rope.len_lines()));
    // At most LINE_CAP characters each side: a minified line must not be copied per keystroke.
    let before = rope.slice(start.max(char_idx.saturating_sub(LINE_CAP))..char_idx).to_string();
    let after: String =
        rope.slice(char_idx..end).chars().take(LINE_CAP).take_while(|c| *c != '\n' && *c != '\r').collect();
    (before, after)
}

/// Whether the byte offset is strictly inside a string or a comment (a line comment's end
/// counts as inside: typing there continues the comment). Code inside a string (a template
/// literal's `${...}`) is code: the innermost string, comment or code around the offset decides.
pub fn in_string_or_comment(spec: &LangSpec, tree: &Tree, doc: &Document, byte: usize) -> bool {
    let rope = doc.rope();
    let probes = [byte, byte.saturating_sub(1)];
    for probe in probes {
        let mut node = tree.root_node().descendant_for_byte_range(probe, probe);
        while let Some(n) = node {
            let (s, e) = (n.start_byte(), n.end_byte());
            if s < byte && byte < e && spec.is(n, Role::Code) {
                return false;
            }
            if s < byte && byte < e && spec.is(n, Role::String) {
                return true;
            }
            if s < byte && byte <= e && spec.is(n, Role::Comment) {
                let block_end = e >= 2 && e <= rope.len_bytes() && rope.byte(e - 1) == b'/' && rope.byte(e - 2) == b'*';
                if byte < e || !block_end {
                    return true;
                }
            }
            node = n.parent();
        }
    }
    false
}

/// The innermost block-like node around `byte`, and whether its body holds nothing but comments.
fn empty_block_at(spec: &LangSpec, tree: &Tree, byte: usize) -> bool {
    let mut node: Option<Node> = tree.root_node().descendant_for_byte_range(byte, byte);
    while let Some(n) = node {
        if n.start_byte() < byte && byte < n.end_byte() && spec.is(n, Role::Block) {
            let mut walk = n.walk();
            let row = n.start_position().row;
            let has_body =
                n.named_children(&mut walk).any(|c| c.start_position().row != row && !spec.is(c, Role::Comment));
            return !has_body;
        }
        node = n.parent();
    }
    false
}

/// Decides what to ask for at char index `cursor`. `invoked` is an explicit request by the
/// user, which is answered even in the middle of a word or inside a string.
pub fn decide(
    doc: &Document,
    cursor: usize,
    syntax: Option<(&LangSpec, &Tree)>,
    setting: Multiline,
    invoked: bool,
) -> Mode {
    let (before, after) = line_around(doc, cursor);
    if !invoked {
        if after.chars().next().is_some_and(is_word_char) && before.chars().last().is_some_and(is_word_char) {
            return Mode::Skip("middle of a word");
        }
        if let Some((spec, tree)) = syntax {
            if in_string_or_comment(spec, tree, doc, doc.rope().char_to_byte(cursor)) {
                return Mode::Skip("inside a string or comment");
            }
        }
    }
    let indent = indent_of(&before);
    let rest_is_closers = after.trim().chars().all(is_closer);
    let after_opener = opens_block(&doc.language, &before) && rest_is_closers;
    let blank_line = before.trim().is_empty() && rest_is_closers;
    let multi = match setting {
        Multiline::Never => false,
        Multiline::Always => true,
        Multiline::Auto => {
            after_opener
                || (blank_line && previous_line_opens(doc, cursor))
                || (blank_line
                    && syntax.is_some_and(|(spec, tree)| empty_block_at(spec, tree, doc.rope().char_to_byte(cursor))))
        }
    };
    if !multi {
        return Mode::SingleLine;
    }
    // Body lines are deeper than an opener's line; on a blank line the body is at the cursor.
    let min_indent = if after_opener { indent + 1 } else { indent };
    Mode::MultiLine { min_indent }
}

fn previous_line_opens(doc: &Document, cursor: usize) -> bool {
    let rope = doc.rope();
    let mut line = rope.char_to_line(cursor);
    while line > 0 {
        line -= 1;
        let text = rope.line(line).to_string();
        if !text.trim().is_empty() {
            return opens_block(&doc.language, &text);
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode_at(text_with_caret: &str, lang: &str, setting: Multiline) -> Mode {
        let (doc, syn, cursor) = crate::syntax::parsed_at(text_with_caret, lang);
        decide(&doc, cursor, syn.as_ref().and_then(|s| s.parts()), setting, false)
    }

    #[test]
    fn line_modes_follow_the_syntax() {
        use Multiline::Auto;
        let cases: &[(&str, &str, &str)] = &[
            ("python", "def f(x):|\n", "multi"),
            ("python", "def f(x):\n    |\n", "multi"),
            ("python", "def f(x):\n    y = |\n", "single"),
            ("python", "def f(x):\n    y = 1\n    |\n", "single"),
            ("python", "def f(x):\n    retu|rn x\n", "skip"),
            ("python", "s = 'abc|def'\n", "skip"),
            ("python", "x = 1  # note|\n", "skip"),
            ("python", "x = f(|)\n", "single"),
            ("python", "s = f\"total: {|n}\"\n", "single"),
            ("python", "s = f\"total: |{n}\"\n", "skip"),
            ("rust", "fn main() {|}\n", "multi"),
            ("rust", "fn main() {\n    |\n}\n", "multi"),
            ("rust", "fn main() {\n    // todo\n    |\n}\n", "multi"),
            ("rust", "fn main() {\n    let x = 1;\n    |\n}\n", "single"),
            ("rust", "fn main() {\n    let s = \"a|b\";\n}\n", "skip"),
            ("rust", "/* one */|\n", "single"),
            ("rust", "// comment|\n", "skip"),
            ("text", "hello wor|\n", "single"),
            ("text", "section:|\n", "multi"),
        ];
        for (lang, text, want) in cases {
            let got = match mode_at(text, lang, Auto) {
                Mode::Skip(_) => "skip",
                Mode::SingleLine => "single",
                Mode::MultiLine { .. } => "multi",
            };
            assert_eq!(got, *want, "{lang}: {text:?}");
        }
    }

    #[test]
    fn the_setting_overrides_auto_but_never_the_skips() {
        assert_eq!(mode_at("def f(x):|\n", "python", Multiline::Never), Mode::SingleLine);
        assert_eq!(mode_at("    y = |\n", "python", Multiline::Always), Mode::MultiLine { min_indent: 4 });
        assert!(matches!(mode_at("s = 'a|b'\n", "python", Multiline::Always), Mode::Skip(_)));
        assert_eq!(mode_at("    if x:|\n", "python", Multiline::Auto), Mode::MultiLine { min_indent: 5 });
    }
}
