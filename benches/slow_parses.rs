//! What one keystroke costs in files that tree-sitter parses slowly, with the parse budget
//! (`syntax::OPEN_BUDGET`, `syntax::EDIT_BUDGET`) against the same parses run to the end in the
//! same run. For each text: opening it through `Documents` and one keystroke's `didChange`
//! (the time the documents' lock is held, which every completion of every file waits on), and
//! whether the file kept its tree; then the unbounded parse of the same text and the unbounded
//! incremental reparse after the same keystroke.
//!
//! Run: `cargo bench --bench slow_parses` (SLOW_PARSES_SIZES: comma-separated repetitions,
//! default `10000,100000`).

use std::time::{Duration, Instant};

use ghostline::document::{Document, Position, PositionEncoding};
use ghostline::documents::Documents;
use tree_sitter::{Parser, Tree};

fn parse(parser: &mut Parser, text: &str, old: Option<&Tree>) -> (Option<Tree>, Duration) {
    let t = Instant::now();
    let tree = parser.parse(text, old);
    (tree, t.elapsed())
}

fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1e3)
}

fn main() {
    let sizes: Vec<usize> = std::env::var("SLOW_PARSES_SIZES")
        .ok()
        .map(|s| s.split(',').filter_map(|x| x.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![10_000, 100_000]);
    let texts: &[(&str, &str, &str)] = &[
        ("ordinary code", "rust", "fn f(x: u32) -> u32 {\n    let y = [x, 2];\n    y[0] + 1\n}\n"),
        ("unterminated strings", "rust", "\"a{\n"),
        ("open parens", "rust", "(((("),
        ("closing braces", "rust", "}}}}"),
        ("open parens", "python", "(((("),
    ];
    println!("| text | lang | bytes | open, budget (ms) | keystroke, budget (ms) | tree kept | open, unbounded (ms) | keystroke, unbounded (ms) |");
    println!("| --- | --- | ---: | ---: | ---: | --- | ---: | ---: |");
    for &(name, lang, piece) in texts {
        for &n in &sizes {
            let text = piece.repeat(n);
            let uri = format!("file:///bench/{n}.{lang}");
            let docs = Documents::default();
            let t = Instant::now();
            docs.open(&uri, lang, 1, &text);
            let open = t.elapsed();
            let at = Position::new(0, 2);
            let t = Instant::now();
            docs.change(&uri, 2, &[(Some((at, at)), "x".into())]);
            let key = t.elapsed();
            // A snapshot has a syntax only with a current tree.
            let kept =
                docs.snapshot(&uri, at, ghostline::trigger::Multiline::Auto, true).is_some_and(|s| s.syntax.is_some());

            let mut parser = Parser::new();
            let language = ghostline::syntax::language(lang).expect("a grammar");
            parser.set_language(&language).expect("the grammar loads");
            let (tree, full) = parse(&mut parser, &text, None);
            let mut doc = Document::new(&text, 1, lang);
            let edit = doc.apply(Some((at, at)), "x", PositionEncoding::Utf16);
            let mut tree = tree.expect("an unbounded parse makes a tree");
            tree.edit(&(&edit).into());
            let (_, re) = parse(&mut parser, &doc.text(), Some(&tree));
            println!(
                "| {name} | {lang} | {} | {} | {} | {} | {} | {} |",
                text.len(),
                ms(open),
                ms(key),
                if kept { "yes" } else { "no" },
                ms(full),
                ms(re)
            );
        }
    }
}
