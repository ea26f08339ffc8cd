//! What the model sees: the prefix and suffix windows around the cursor, sized in estimated
//! tokens and cut at line boundaries, plus the lines a cut would lose that matter most — the
//! file's imports and the header of the enclosing function, class or impl.
//!
//! Invariant: pure; no IO, no network, no allocation proportional to the file beyond the
//! windows themselves.

use tree_sitter::{Node, Tree};

use crate::document::Document;
use crate::lang::{LangSpec, Role};

/// Window sizes.
#[derive(Debug, Clone)]
pub struct ContextConfig {
    /// Prompt tokens for prefix + suffix.
    pub budget_tokens: usize,
    /// Share of the budget the prefix may take when the suffix does not need its part.
    pub prefix_share: f32,
    /// Characters per token of the house tokenizer on code (measured: about 3.7).
    pub chars_per_token: f32,
}

impl ContextConfig {
    /// `tokens` in estimated characters.
    pub fn chars(&self, tokens: usize) -> usize {
        (tokens as f32 * self.chars_per_token) as usize
    }

    /// The prompt budget in estimated characters.
    pub fn budget_chars(&self) -> usize {
        self.chars(self.budget_tokens)
    }
}

impl Default for ContextConfig {
    fn default() -> Self {
        ContextConfig { budget_tokens: 1500, prefix_share: 0.75, chars_per_token: 3.7 }
    }
}

/// The text sent as `prompt` and `suffix`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    pub prefix: String,
    pub suffix: String,
}

/// Builds the windows for a cursor at char index `cursor`.
pub fn build(doc: &Document, cursor: usize, syntax: Option<(&LangSpec, &Tree)>, cfg: &ContextConfig) -> Window {
    let rope = doc.rope();
    let cursor = cursor.min(rope.len_chars());
    let budget_chars = cfg.budget_chars();
    let prefix_chars = (budget_chars as f32 * cfg.prefix_share) as usize;
    let cur_line = rope.char_to_line(cursor);

    // Suffix: whole lines after the cursor up to its share; the prefix gets what it leaves.
    let mut suffix_end = rope.line_to_char((cur_line + 1).min(rope.len_lines()));
    let suffix_limit = cursor + (budget_chars - prefix_chars);
    let mut line = cur_line + 1;
    while line < rope.len_lines() {
        let next = rope.line_to_char((line + 1).min(rope.len_lines()));
        if next > suffix_limit {
            break;
        }
        suffix_end = next;
        line += 1;
    }
    // A line longer than the budget (minified code) is cut inside the line.
    suffix_end = suffix_end.max(cursor).min(cursor + (budget_chars - prefix_chars));
    let prefix_budget = budget_chars.saturating_sub(suffix_end - cursor);

    // Prefix: whole lines before the cursor's line, back to the budget.
    let mut start_line = cur_line;
    while start_line > 0 {
        let s = rope.line_to_char(start_line - 1);
        if cursor - s > prefix_budget {
            break;
        }
        start_line -= 1;
    }
    let start = rope.line_to_char(start_line).max(cursor.saturating_sub(prefix_budget));
    let mut prefix = rope.slice(start..cursor).to_string();
    let suffix = rope.slice(cursor..suffix_end).to_string();

    if start_line > 0 {
        if let Some((spec, tree)) = syntax {
            let mut extra = String::new();
            let start_byte = rope.char_to_byte(start);
            // Imports that the window cut off.
            let root = tree.root_node();
            imports_before(doc, spec, root, start_byte, &mut extra);
            // Headers of enclosing scopes that begin before the window, outermost first; one
            // line once (`const f = async () => {` starts two scopes).
            let cursor_byte = rope.char_to_byte(cursor);
            let mut headers: Vec<(usize, String)> = Vec::new();
            let mut node = root.descendant_for_byte_range(cursor_byte, cursor_byte);
            while let Some(n) = node {
                let row = n.start_position().row;
                if n.start_byte() < start_byte
                    && headers.last().is_none_or(|(r, _)| *r != row)
                    && spec.is(n, Role::Scope)
                {
                    headers.push((row, first_line(doc, n)));
                }
                node = n.parent();
            }
            for (_, h) in headers.iter().rev() {
                extra.push_str(h);
            }
            // Keep the total within budget: the extra lines displace the far end of the window.
            if !extra.is_empty() {
                let room = prefix_budget.saturating_sub(extra.chars().count());
                let mut cut = prefix.chars().count().saturating_sub(room);
                let chars: Vec<(usize, char)> = prefix.char_indices().collect();
                while cut < chars.len() && cut > 0 && chars[cut - 1].1 != '\n' {
                    cut += 1;
                }
                let at = chars.get(cut).map_or(prefix.len(), |&(i, _)| i);
                prefix = format!("{extra}{}", &prefix[at..]);
            }
        }
    }
    Window { prefix, suffix }
}

/// Appends the lines of the imports among `parent`'s children that begin before `start_byte`,
/// looking inside `@section` children too (an include guard holds a header's `#include`s).
fn imports_before(doc: &Document, spec: &LangSpec, parent: Node, start_byte: usize, out: &mut String) {
    let mut walk = parent.walk();
    for child in parent.children(&mut walk) {
        if child.start_byte() >= start_byte {
            break;
        }
        if spec.is(child, Role::Import) {
            out.push_str(&node_lines(doc, child));
        } else if spec.is(child, Role::Section) {
            imports_before(doc, spec, child, start_byte, out);
        }
    }
}

/// Whole lines `first..=last` of the document, ending in a newline.
fn lines(doc: &Document, first: usize, last: usize) -> String {
    let rope = doc.rope();
    let a = rope.line_to_char(first);
    let b = rope.line_to_char((last + 1).min(rope.len_lines()));
    let mut s = rope.slice(a..b).to_string();
    if !s.ends_with('\n') {
        s.push('\n');
    }
    s
}

/// The lines a node spans; a node that ends at the start of a line (C's `#include` takes its
/// line break) does not take that line.
fn node_lines(doc: &Document, n: Node) -> String {
    let (start, end) = (n.start_position(), n.end_position());
    let last = if end.column == 0 && end.row > start.row { end.row - 1 } else { end.row };
    lines(doc, start.row, last)
}

fn first_line(doc: &Document, n: Node) -> String {
    lines(doc, n.start_position().row, n.start_position().row)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::syntax::Syntax;

    fn parsed(text: &str, lang: &str) -> (Document, Syntax) {
        let doc = Document::new(text, 1, lang);
        let mut s = Syntax::new(lang).unwrap();
        s.parse_full(&doc).unwrap();
        (doc, s)
    }

    #[test]
    fn small_files_are_sent_whole() {
        let text = "import os\n\ndef f(x):\n    return x\n";
        let (doc, syn) = parsed(text, "python");
        let cursor = text.find("return").unwrap();
        let w = build(&doc, cursor, syn.parts(), &ContextConfig::default());
        assert_eq!(w.prefix, &text[..cursor]);
        assert_eq!(w.suffix, &text[cursor..]);
    }

    #[test]
    fn a_cut_window_keeps_imports_and_the_enclosing_header_within_budget() {
        let mut text = String::from("import os\nfrom sys import argv\n\nclass Big:\n    def method(self, items):\n");
        for i in 0..3000 {
            text.push_str(&format!("        value_{i} = items[{i}] * 2\n"));
        }
        text.push_str("        return value_0\n");
        for i in 0..2000 {
            text.push_str(&format!("# trailing line {i}\n"));
        }
        let (doc, syn) = parsed(&text, "python");
        let cursor = text.find("return value_0").unwrap() + "return ".len();
        let cfg = ContextConfig::default();
        let w = build(&doc, cursor, syn.parts(), &cfg);
        let budget = cfg.budget_chars();
        assert!(w.prefix.len() + w.suffix.len() <= budget, "{}", w.prefix.len() + w.suffix.len());
        assert!(
            w.prefix.starts_with(
                "import os\nfrom sys import argv\nclass Big:\n    def method(self, items):\n        value_"
            ),
            "{}",
            &w.prefix[..200]
        );
        assert!(w.prefix.ends_with("        return "));
        assert!(w.suffix.starts_with("value_0\n# trailing line 0\n"));
        assert!(w.suffix.ends_with('\n'));
    }

    #[test]
    fn a_minified_line_is_cut_inside_the_line() {
        let line = "a=1;".repeat(250_000);
        // A megabyte of statements on one line takes tree-sitter-rust over 2 s, past the parse
        // budget: such a file is plain text.
        let doc = Document::new(&format!("{line}\n"), 1, "rust");
        let cfg = ContextConfig::default();
        let w = build(&doc, 500_000, None, &cfg);
        let budget = cfg.budget_chars();
        assert!(
            w.prefix.len() + w.suffix.len() <= budget && w.prefix.len() > budget / 2,
            "{} {}",
            w.prefix.len(),
            w.suffix.len()
        );
    }

    #[test]
    fn rust_keeps_use_lines_and_the_impl_and_fn_headers() {
        let mut text = String::from("use std::fmt;\n\nimpl Thing {\n    fn run(&self) -> u32 {\n");
        for i in 0..2000 {
            text.push_str(&format!("        let v{i} = {i};\n"));
        }
        text.push_str("        v0\n    }\n}\n");
        let (doc, syn) = parsed(&text, "rust");
        let cursor = text.find("        v0\n").unwrap() + 8;
        let w = build(&doc, cursor, syn.parts(), &ContextConfig::default());
        assert!(
            w.prefix.starts_with("use std::fmt;\nimpl Thing {\n    fn run(&self) -> u32 {\n        let v"),
            "{}",
            &w.prefix[..120]
        );
    }
}
