//! Go.

use super::{Cut, Kind::*, Table};

pub const TABLE: Table = Table {
    ids: &["go"],
    modes: &[
        ("func main() {|}\n", "multi"),
        ("func main() {\n\t|\n}\n", "multi"),
        ("func main() {\n\t// todo\n\t|\n}\n", "multi"),
        ("import (|)\n", "multi"),
        ("func f(k int) {\n\tswitch k {\n\tcase 1:|\n\t}\n}\n", "multi"),
        ("func main() {\n\tx := 1\n\t|\n}\n", "single"),
        ("func f() {\n\tg(|)\n}\n", "single"),
        ("func main() {\n\tfm|t.Println()\n}\n", "skip"),
        ("var s = \"ab|c\"\n", "skip"),
        ("var s = `raw |text`\n", "skip"),
        ("var r = 'x|'\n", "skip"),
        ("var x = 1 // note|\n", "skip"),
    ],
    finish: &[
        (
            BlockEnd,
            "func f() int {\n\t|\n}\n\nfunc g() {}\n",
            "x := 1\n\treturn x\n}\n\nfunc h() {}\n",
            Some("x := 1\n\treturn x"),
        ),
        (
            BlockEnd,
            "type T struct {\n\t|\n}\n",
            "Name string\n\tAge  int\n}\n\nfunc (t T) Hi() {}\n",
            Some("Name string\n\tAge  int"),
        ),
        (
            BlockEnd,
            "func f(k int) {\n\tswitch k {\n\tcase 1:\n\t\t|\n\tcase 2:\n\t\tb()\n\t}\n}\n",
            "a()\n\tcase 3:\n\t\tc()\n",
            Some("a()"),
        ),
        (Suffix, "func f() {\n\tv := compute(|)\n}\n", "a, b)", Some("a, b")),
        (Suffix, "var xs = []int{|}\n", "1, 2}", Some("1, 2")),
        (Suffix, "func f() {\n\t|\n\tdone()\n}\n", "start()\n\tdone()\n", Some("start()")),
        (SyntaxDelta, "var x = 1|\n", " + (2", None),
        (SyntaxDelta, "var x = 1|\n", " + 2", Some(" + 2")),
        (SyntaxDelta, "var x = |\n", "foo(", Some("foo(")),
    ],
    cuts: &[Cut {
        head: "package store\n\nimport (\n\t\"fmt\"\n\t\"strings\"\n)\n\nfunc (s *Store) Load(items []int) int {\n",
        line: "\tv{i} := items[{i}] * 2\n",
        tail: "\treturn |v0\n}\n",
        want: "package store\nimport (\n\t\"fmt\"\n\t\"strings\"\n)\nfunc (s *Store) Load(items []int) int {\n\tv",
    }],
};
