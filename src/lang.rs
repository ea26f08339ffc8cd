//! Languages with a grammar: the tree-sitter language, the queries from `grammars/`, compiled
//! into the binary and loaded the first time a file of the language is opened, and the line
//! rules that are data per language (`Rules`). Languages without an entry here are completed as
//! plain text.

use std::sync::OnceLock;

use streaming_iterator::StreamingIterator;
use tree_sitter::{Language, Node, Query, QueryCursor};

/// One capture name of one query: which query, which capture index.
#[derive(Clone, Copy)]
struct Capture {
    query: usize,
    index: u32,
}

/// A language's grammar, its compiled queries and its line rules.
pub struct LangSpec {
    /// The first of the LSP language ids this grammar serves.
    pub id: &'static str,
    pub language: Language,
    pub rules: &'static Rules,
    queries: Vec<Query>,
    import: Capture,
    scope: Capture,
    block: Capture,
    string: Capture,
    comment: Capture,
    code: Option<Capture>,
    section: Option<Capture>,
}

/// What a node is, for the parts of ghostline that care.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// A statement that brings names into the file.
    Import,
    /// A node whose children are searched for imports too (a C include guard).
    Section,
    /// A definition whose header stays in the context window.
    Scope,
    /// A unit a multi-line completion may not run past.
    Block,
    /// A string literal.
    String,
    /// Code inside a string (a template literal's `${...}`, an f-string's `{...}`).
    Code,
    /// A comment.
    Comment,
}

/// What the line rules need of a language beyond its queries: which line ends open a block
/// whose body starts on the next line, and which lines are comments (they open nothing).
#[derive(Debug)]
pub struct Rules {
    pub openers: &'static [Opener],
    pub line_comments: &'static [&'static str],
}

/// A line that ends with `ends` (trailing spaces aside) opens a block, when it begins with one
/// of `starts` (leading spaces aside), or whatever it begins with when `starts` is empty.
#[derive(Debug)]
pub struct Opener {
    pub ends: &'static str,
    pub starts: &'static [&'static str],
}

impl Rules {
    /// Whether `line` (the text before the cursor, or a whole line) opens a block.
    pub fn opens_block(&self, line: &str) -> bool {
        let t = line.trim();
        if self.line_comments.iter().any(|c| t.starts_with(c)) {
            return false;
        }
        self.openers
            .iter()
            .any(|o| t.ends_with(o.ends) && (o.starts.is_empty() || o.starts.iter().any(|s| t.starts_with(s))))
    }
}

const fn any_line(ends: &'static str) -> Opener {
    Opener { ends, starts: &[] }
}

/// Plain text: a line ending in `{` or `:` opens a block.
pub static PLAIN: Rules = Rules { openers: &[any_line("{"), any_line(":")], line_comments: &[] };
static PYTHON: Rules = Rules { openers: &[any_line(":")], line_comments: &["#"] };
static RUST: Rules = Rules { openers: &[any_line("{")], line_comments: &["//"] };
/// `{`, and the labels of a `switch` (their statements follow on the next lines).
static C_LIKE: Rules = Rules {
    openers: &[any_line("{"), Opener { ends: ":", starts: &["case ", "case(", "default"] }],
    line_comments: &["//"],
};
/// C-like, and C++'s access specifiers (`public:`).
static CPP: Rules = Rules {
    openers: &[
        any_line("{"),
        Opener { ends: ":", starts: &["case ", "case(", "default", "public", "private", "protected"] },
    ],
    line_comments: &["//"],
};
/// C-like, and the parenthesised groups of `import (`, `const (`, `var (` and `type (`.
static GO: Rules = Rules {
    openers: &[
        any_line("{"),
        Opener { ends: ":", starts: &["case ", "default"] },
        Opener { ends: "(", starts: &["import", "const", "var", "type"] },
    ],
    line_comments: &["//"],
};

struct Source {
    /// LSP language ids, as editors send them.
    ids: &'static [&'static str],
    language: fn() -> Language,
    /// The texts of the `context`, `blocks` and `inert` queries, each the concatenation of its
    /// files (a language built on another one's grammar loads the shared file first).
    files: [&'static [&'static str]; 3],
    rules: &'static Rules,
}

macro_rules! scm {
    ($($dir:literal),+ / $file:literal) => {
        &[$(include_str!(concat!("../grammars/", $dir, "/", $file, ".scm"))),+]
    };
}

macro_rules! queries {
    ($($dir:literal),+) => {
        [scm!($($dir),+ / "context"), scm!($($dir),+ / "blocks"), scm!($($dir),+ / "inert")]
    };
}

const SOURCES: &[Source] = &[
    Source {
        ids: &["python"],
        language: || tree_sitter_python::LANGUAGE.into(),
        files: queries!("python"),
        rules: &PYTHON,
    },
    Source { ids: &["rust"], language: || tree_sitter_rust::LANGUAGE.into(), files: queries!("rust"), rules: &RUST },
    Source {
        ids: &["javascript", "javascriptreact"],
        language: || tree_sitter_javascript::LANGUAGE.into(),
        files: [scm!("javascript" / "context"), scm!("javascript", "jsx" / "blocks"), scm!("javascript" / "inert")],
        rules: &C_LIKE,
    },
    Source {
        ids: &["typescript"],
        language: || tree_sitter_typescript::LANGUAGE_TYPESCRIPT.into(),
        files: [
            scm!("javascript", "typescript" / "context"),
            scm!("javascript", "typescript" / "blocks"),
            scm!("javascript" / "inert"),
        ],
        rules: &C_LIKE,
    },
    Source {
        ids: &["typescriptreact"],
        language: || tree_sitter_typescript::LANGUAGE_TSX.into(),
        files: [
            scm!("javascript", "typescript" / "context"),
            scm!("javascript", "typescript", "jsx" / "blocks"),
            scm!("javascript" / "inert"),
        ],
        rules: &C_LIKE,
    },
    Source { ids: &["go"], language: || tree_sitter_go::LANGUAGE.into(), files: queries!("go"), rules: &GO },
    Source { ids: &["java"], language: || tree_sitter_java::LANGUAGE.into(), files: queries!("java"), rules: &C_LIKE },
    Source { ids: &["c"], language: || tree_sitter_c::LANGUAGE.into(), files: queries!("c"), rules: &C_LIKE },
    Source { ids: &["cpp"], language: || tree_sitter_cpp::LANGUAGE.into(), files: queries!("c", "cpp"), rules: &CPP },
];

fn compile(src: &Source) -> Result<LangSpec, String> {
    let id = src.ids[0];
    let language = (src.language)();
    let mut queries = Vec::new();
    for (i, texts) in src.files.iter().enumerate() {
        let text = texts.join("\n");
        let q = Query::new(&language, &text).map_err(|e| format!("grammars/{id}: query {i}: {e}"))?;
        queries.push(q);
    }
    let find = |name: &str| -> Option<Capture> {
        queries
            .iter()
            .enumerate()
            .find_map(|(qi, q)| q.capture_index_for_name(name).map(|index| Capture { query: qi, index }))
    };
    let need = |name: &str| find(name).ok_or_else(|| format!("grammars/{id}: no @{name} capture"));
    Ok(LangSpec {
        id,
        rules: src.rules,
        import: need("import")?,
        scope: need("scope")?,
        block: need("block")?,
        string: need("string")?,
        comment: need("comment")?,
        code: find("code"),
        section: find("section"),
        language,
        queries,
    })
}

fn source_index(id: &str) -> Option<usize> {
    SOURCES.iter().position(|s| s.ids.contains(&id))
}

/// The spec for an LSP language id (`python`, `typescriptreact`), if ghostline has a grammar
/// for it. Each grammar's queries are compiled the first time one of its ids is asked for; a
/// query that does not compile is logged once and the language is completed as plain text.
pub fn spec(id: &str) -> Option<&'static LangSpec> {
    static LANGS: [OnceLock<Option<LangSpec>>; SOURCES.len()] = [const { OnceLock::new() }; SOURCES.len()];
    let i = source_index(id)?;
    LANGS[i]
        .get_or_init(|| match compile(&SOURCES[i]) {
            Ok(spec) => Some(spec),
            Err(e) => {
                tracing::error!("{e}; {id} is completed as plain text");
                None
            }
        })
        .as_ref()
}

/// The line rules for an LSP language id; `PLAIN` for languages without a grammar. Needs no
/// grammar loaded.
pub fn rules(id: &str) -> &'static Rules {
    source_index(id).map_or(&PLAIN, |i| SOURCES[i].rules)
}

/// Every language id with a grammar.
pub fn ids() -> impl Iterator<Item = &'static str> {
    SOURCES.iter().flat_map(|s| s.ids.iter().copied())
}

/// Compiles every grammar's queries at once (the unit tests check them all this way).
pub fn check_all() -> Result<(), String> {
    SOURCES.iter().try_for_each(|s| compile(s).map(|_| ()))
}

impl LangSpec {
    fn capture(&self, role: Role) -> Option<Capture> {
        match role {
            Role::Import => Some(self.import),
            Role::Section => self.section,
            Role::Scope => Some(self.scope),
            Role::Block => Some(self.block),
            Role::String => Some(self.string),
            Role::Code => self.code,
            Role::Comment => Some(self.comment),
        }
    }

    /// Whether a pattern capturing `role` matches at `node` itself (not its descendants).
    pub fn is(&self, node: Node, role: Role) -> bool {
        let Some(c) = self.capture(role) else { return false };
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
mod cases;

#[cfg(test)]
mod tests {
    use super::*;
    use tree_sitter::Parser;

    #[test]
    fn every_grammar_compiles_with_all_captures() {
        check_all().unwrap();
        for id in ids() {
            let s = spec(id).unwrap_or_else(|| panic!("{id}"));
            assert!(std::ptr::eq(s.rules, rules(id)), "{id}");
        }
        assert_eq!(ids().count(), 10);
        assert!(spec("cobol").is_none() && std::ptr::eq(rules("cobol"), &PLAIN));
        // One grammar, one spec, whichever of its ids asks.
        assert!(std::ptr::eq(spec("javascript").unwrap(), spec("javascriptreact").unwrap()));
        assert!(!std::ptr::eq(spec("typescript").unwrap(), spec("typescriptreact").unwrap()));
    }

    #[test]
    fn block_openers_are_data_per_language() {
        let cases: &[(&str, &str, bool)] = &[
            ("python", "    if x:", true),
            ("python", "    # note:", false),
            ("python", "fn main() {", false),
            ("rust", "fn main() {", true),
            ("rust", "    // see {", false),
            ("rust", "    x:", false),
            ("go", "import (", true),
            ("go", "\tconst (", true),
            ("go", "\tfoo(", false),
            ("go", "\tcase 1, 2:", true),
            ("go", "\tdefault:", true),
            ("c", "    case FOO:", true),
            ("c", "    x = y ? a :", false),
            ("c", "int main(void) {", true),
            ("cpp", "public:", true),
            ("cpp", "  protected:", true),
            ("java", "      case 1:", true),
            ("java", "    label:", false),
            ("typescript", "  default:", true),
            ("javascript", "const o = {  ", true),
            ("javascript", "// {", false),
            ("plaintext", "section:", true),
            ("plaintext", "a {", true),
        ];
        for (id, line, want) in cases {
            assert_eq!(rules(id).opens_block(line), *want, "{id}: {line:?}");
        }
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
