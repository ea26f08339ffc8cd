//! Languages with a grammar: the tree-sitter language and the queries from `grammars/<id>/`,
//! compiled into the binary and checked at start-up. Languages without an entry here are
//! completed as plain text.

use std::sync::OnceLock;

use streaming_iterator::StreamingIterator;
use tree_sitter::{Language, Node, Query, QueryCursor};

/// One capture name of one query: which query, which capture index.
#[derive(Clone, Copy)]
struct Capture {
    query: usize,
    index: u32,
}

/// A language's grammar and its compiled queries.
pub struct LangSpec {
    pub id: &'static str,
    pub language: Language,
    queries: Vec<Query>,
    import: Capture,
    scope: Capture,
    block: Capture,
    string: Capture,
    comment: Capture,
}

/// What a node is, for the parts of ghostline that care.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// A statement that brings names into the file.
    Import,
    /// A definition whose header stays in the context window.
    Scope,
    /// A unit a multi-line completion may not run past.
    Block,
    /// A string literal.
    String,
    /// A comment.
    Comment,
}

struct Source {
    id: &'static str,
    language: fn() -> Language,
    files: [&'static str; 3],
}

const SOURCES: &[Source] = &[
    Source {
        id: "python",
        language: || tree_sitter_python::LANGUAGE.into(),
        files: [
            include_str!("../grammars/python/context.scm"),
            include_str!("../grammars/python/blocks.scm"),
            include_str!("../grammars/python/inert.scm"),
        ],
    },
    Source {
        id: "rust",
        language: || tree_sitter_rust::LANGUAGE.into(),
        files: [
            include_str!("../grammars/rust/context.scm"),
            include_str!("../grammars/rust/blocks.scm"),
            include_str!("../grammars/rust/inert.scm"),
        ],
    },
];

fn compile(src: &Source) -> Result<LangSpec, String> {
    let language = (src.language)();
    let mut queries = Vec::new();
    for (i, text) in src.files.iter().enumerate() {
        let q = Query::new(&language, text).map_err(|e| format!("grammars/{}: query {i}: {e}", src.id))?;
        queries.push(q);
    }
    let find = |name: &str| -> Result<Capture, String> {
        queries
            .iter()
            .enumerate()
            .find_map(|(qi, q)| q.capture_index_for_name(name).map(|index| Capture { query: qi, index }))
            .ok_or_else(|| format!("grammars/{}: no @{name} capture", src.id))
    };
    Ok(LangSpec {
        id: src.id,
        import: find("import")?,
        scope: find("scope")?,
        block: find("block")?,
        string: find("string")?,
        comment: find("comment")?,
        language,
        queries,
    })
}

fn all() -> &'static [LangSpec] {
    static LANGS: OnceLock<Vec<LangSpec>> = OnceLock::new();
    LANGS.get_or_init(|| {
        SOURCES
            .iter()
            .filter_map(|s| match compile(s) {
                Ok(spec) => Some(spec),
                Err(e) => {
                    tracing::error!("{e}; {} is completed as plain text", s.id);
                    None
                }
            })
            .collect()
    })
}

/// The spec for an LSP language id (`python`, `rust`), if ghostline has a grammar for it.
pub fn spec(id: &str) -> Option<&'static LangSpec> {
    all().iter().find(|s| s.id == id)
}

/// Checks every grammar's queries; start-up calls this so a broken query is reported at once.
pub fn check_all() -> Result<(), String> {
    SOURCES.iter().try_for_each(|s| compile(s).map(|_| ()))
}

impl LangSpec {
    fn capture(&self, role: Role) -> Capture {
        match role {
            Role::Import => self.import,
            Role::Scope => self.scope,
            Role::Block => self.block,
            Role::String => self.string,
            Role::Comment => self.comment,
        }
    }

    /// Whether a pattern capturing `role` matches at `node` itself (not its descendants).
    pub fn is(&self, node: Node, role: Role) -> bool {
        let c = self.capture(role);
        let mut cursor = QueryCursor::new();
        cursor.set_max_start_depth(Some(0));
        let empty: &[u8] = &[];
        let mut matches = cursor.matches(&self.queries[c.query], node, empty);
        while let Some(m) = matches.next() {
            if m.captures.iter().any(|cap| cap.index == c.index && cap.node.id() == node.id()) {
                return true;
            }
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tree_sitter::Parser;

    #[test]
    fn every_grammar_compiles_with_all_captures() {
        check_all().unwrap();
        assert!(spec("python").is_some() && spec("rust").is_some() && spec("cobol").is_none());
    }

    #[test]
    fn roles_match_the_node_itself() {
        let py = spec("python").unwrap();
        let mut p = Parser::new();
        p.set_language(&py.language).unwrap();
        let t = p.parse("import os\ndef f():\n    return 'x'  # c\n", None).unwrap();
        let root = t.root_node();
        assert!(py.is(root.child(0).unwrap(), Role::Import));
        let f = root.child(1).unwrap();
        assert!(py.is(f, Role::Scope) && py.is(f, Role::Block) && !py.is(f, Role::Import));
        assert!(!py.is(root, Role::Scope), "the module is not a scope");
        let quote = root.descendant_for_byte_range(30, 30).unwrap();
        assert!(!py.is(quote, Role::String), "{}", quote.kind());
        assert!(py.is(quote.parent().unwrap(), Role::String));
    }
}
