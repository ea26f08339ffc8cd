//! The syntax-aware rules on every language with a grammar, driven by one table per language
//! (`cases/<language>.rs`, caret-marked fixtures: `|` is the cursor): what to ask for at a
//! cursor, a multi-line suggestion cut at the end of its block, the end of a suggestion that
//! the document already has dropped, a suggestion that adds a syntax error dropped, and the
//! imports and enclosing headers put back when the window cuts them off.

use crate::context::{build, ContextConfig};
use crate::postprocess::{finish, Shape};
use crate::syntax::parsed_at;
use crate::trigger::{decide, Mode, Multiline};

mod c;
mod cpp;
mod go;
mod java;
mod javascript;
mod tsx;
mod typescript;

/// What a `finish` case checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A multi-line suggestion (line mode `always`) ends with the block it began in.
    BlockEnd,
    /// The end of the suggestion that the rest of the line or the next lines hold is dropped.
    Suffix,
    /// A suggestion that puts a syntax error on a line that had none is dropped; one on a line
    /// that is already broken is kept.
    SyntaxDelta,
}

pub struct Table {
    /// The language ids the table runs under (ids that share a grammar's rules).
    pub ids: &'static [&'static str],
    /// (text, `skip` | `single` | `multi`): the automatic trigger's decision.
    pub modes: &'static [(&'static str, &'static str)],
    /// (what it checks, text, the model's raw completion, the suggestion shown).
    pub finish: &'static [(Kind, &'static str, &'static str, Option<&'static str>)],
    /// A long file cut by the window.
    pub cuts: &'static [Cut],
}

/// `head`, then `line` 3,000 times (`{i}` numbered), then `tail` with the cursor: the window
/// cannot hold it all, and its prefix must begin with `want`.
pub struct Cut {
    pub head: &'static str,
    pub line: &'static str,
    pub tail: &'static str,
    pub want: &'static str,
}

const TABLES: &[&Table] =
    &[&javascript::TABLE, &typescript::TABLE, &tsx::TABLE, &go::TABLE, &java::TABLE, &c::TABLE, &cpp::TABLE];

fn mode_name(m: Mode) -> &'static str {
    match m {
        Mode::Skip(_) => "skip",
        Mode::SingleLine => "single",
        Mode::MultiLine { .. } => "multi",
    }
}

#[test]
fn trigger_decisions_follow_each_grammar() {
    for t in TABLES {
        for id in t.ids {
            for (text, want) in t.modes {
                let (doc, syn, cursor) = parsed_at(text, id);
                assert!(syn.is_some(), "{id} has a grammar");
                let got = decide(&doc, cursor, syn.as_ref().and_then(|s| s.parts()), Multiline::Auto, false);
                assert_eq!(mode_name(got), *want, "{id}: {text:?} ({got:?})");
            }
        }
    }
}

#[test]
fn suggestions_are_cut_to_their_block_and_checked_against_each_grammar() {
    for t in TABLES {
        for id in t.ids {
            for (kind, text, raw, want) in t.finish {
                let (doc, syn, cursor) = parsed_at(text, id);
                let setting = if *kind == Kind::BlockEnd { Multiline::Always } else { Multiline::Auto };
                let mode = decide(&doc, cursor, syn.as_ref().and_then(|s| s.parts()), setting, true);
                let got = finish(&doc, cursor, syn.as_ref(), Shape::fim(mode), raw);
                assert_eq!(got.as_deref(), *want, "{id} {kind:?} ({mode:?}): {text:?} + {raw:?}");
            }
        }
    }
}

#[test]
fn a_cut_window_keeps_imports_and_headers_in_each_language() {
    for t in TABLES {
        for id in t.ids {
            for c in t.cuts {
                let mut text = c.head.to_string();
                for i in 0..3000 {
                    text.push_str(&c.line.replace("{i}", &i.to_string()));
                }
                text.push_str(c.tail);
                let (doc, syn, cursor) = parsed_at(&text, id);
                let syn = syn.unwrap();
                assert!(!syn.tree().unwrap().root_node().has_error(), "{id}: the fixture parses");
                let cfg = ContextConfig::default();
                let w = build(&doc, cursor, syn.parts(), &cfg);
                assert!(w.prefix.len() + w.suffix.len() <= cfg.budget_chars(), "{id}: over budget");
                let head = w.prefix.get(..c.want.len() + 40).unwrap_or(&w.prefix);
                assert!(w.prefix.starts_with(c.want), "{id}: {head:?}");
            }
        }
    }
}

/// Each language has at least as many cases of each kind as Python's tests in trigger.rs,
/// postprocess.rs and context.rs.
#[test]
fn every_language_has_as_many_cases_as_python() {
    let mut covered: Vec<&str> = Vec::new();
    for t in TABLES {
        let n = |k: Kind| t.finish.iter().filter(|c| c.0 == k).count();
        assert!(t.modes.len() >= 8, "{:?}: {} trigger cases", t.ids, t.modes.len());
        for w in ["skip", "single", "multi"] {
            assert!(t.modes.iter().filter(|m| m.1 == w).count() >= 2, "{:?}: {w}", t.ids);
        }
        assert!(n(Kind::BlockEnd) >= 2 && n(Kind::Suffix) >= 3 && n(Kind::SyntaxDelta) >= 3, "{:?}", t.ids);
        assert!(!t.cuts.is_empty(), "{:?}", t.ids);
        covered.extend(t.ids);
    }
    for id in super::ids().filter(|id| !["python", "rust"].contains(id)) {
        assert!(covered.contains(&id), "{id} has no table");
    }
}
