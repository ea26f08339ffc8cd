//! Context assembly time on a 10,000-line file (target: under 2 ms at p99).
//!
//! cargo bench -p ghostline --bench context
//!
//! Builds a Python file of 10,000 lines (500 functions of 20 lines, imports on top), parses it,
//! then times `context::build` at 2,000 cursor positions spread over the file.

use std::time::Instant;

use ghostline::context::{build, ContextConfig};
use ghostline::document::Document;
use ghostline::syntax::Syntax;

fn main() {
    let mut text = String::from("import os\nimport sys\nfrom collections import defaultdict\n");
    let mut f = 0;
    while text.lines().count() < 10_000 {
        text.push_str(&format!("\n\ndef handler_{f}(request, items):\n    total = 0\n"));
        for i in 0..16 {
            text.push_str(&format!("    total += items[{i}] * request.weight_{i}\n"));
        }
        text.push_str("    return total\n");
        f += 1;
    }
    let doc = Document::new(&text, 1, "python");
    let mut syn = Syntax::new("python").expect("python grammar");
    let t = Instant::now();
    syn.parse_full(&doc);
    let parse_ms = t.elapsed().as_secs_f64() * 1000.0;
    let cfg = ContextConfig::default();
    let n = doc.rope().len_chars();
    let mut times = Vec::new();
    let mut sink = 0usize;
    for k in 0..2000 {
        let cursor = (k * 7919 * 13) % n;
        let t = Instant::now();
        let w = build(&doc, cursor, syn.parts(), &cfg);
        times.push(t.elapsed().as_secs_f64() * 1e6);
        sink += w.prefix.len() + w.suffix.len();
    }
    times.sort_by(f64::total_cmp);
    let p = |q: f64| times[((times.len() - 1) as f64 * q) as usize];
    println!(
        "{{\"lines\":{},\"full_parse_ms\":{parse_ms:.2},\"context_us\":{{\"p50\":{:.1},\"p90\":{:.1},\"p99\":{:.1},\"max\":{:.1}}},\"bytes_out\":{sink}}}",
        text.lines().count(),
        p(0.5),
        p(0.9),
        p(0.99),
        times[times.len() - 1]
    );
}
