//! JavaScript, with JSX (one grammar serves `javascript` and `javascriptreact`).

use super::{Cut, Kind::*, Table};

pub const TABLE: Table = Table {
    ids: &["javascript", "javascriptreact"],
    modes: &[
        ("function f(x) {|}\n", "multi"),
        ("function f(x) {\n  |\n}\n", "multi"),
        ("function f(x) {\n  // todo\n  |\n}\n", "multi"),
        ("const o = {\n  |\n};\n", "multi"),
        ("switch (k) {\n  case 1:|\n}\n", "multi"),
        ("function f(x) {\n  const y = 1;\n  |\n}\n", "single"),
        ("function f(x) {\n  retu|rn x;\n}\n", "skip"),
        ("const s = 'abc|def';\n", "skip"),
        ("const s = `total: |`;\n", "skip"),
        ("const s = `total: ${|n}`;\n", "single"),
        ("const re = /ab|c/;\n", "skip"),
        ("let x = 1; // note|\n", "skip"),
        ("/* one */|\n", "single"),
        ("x = f(|);\n", "single"),
        ("const App = () => <div className=\"a|b\" />;\n", "skip"),
        ("const App = () => <p>Hello |</p>;\n", "single"),
    ],
    finish: &[
        (
            BlockEnd,
            "function f() {\n  |\n}\n\nfunction g() {}\n",
            "const x = 1;\n  return x;\n}\n\nfunction h() {}\n",
            Some("const x = 1;\n  return x;"),
        ),
        (BlockEnd, "if (ok) {|\n", "\n  run();\n}\nmore();\n", Some("\n  run();\n}")),
        (
            BlockEnd,
            "switch (k) {\n  case 1:\n    |\n  case 2:\n    b();\n}\n",
            "a();\n    break;\n  case 3:\n    c();\n",
            Some("a();\n    break;"),
        ),
        (
            BlockEnd,
            "const List = () => (\n  <ul>\n    |\n  </ul>\n);\n",
            "<li>a</li>\n    <li>b</li>\n  </ul>\n);\n\nexport default List;\n",
            Some("<li>a</li>\n    <li>b</li>"),
        ),
        (Suffix, "const v = compute(|);\n", "a, b);", Some("a, b")),
        (Suffix, "const xs = [|];\n", "1, 2];\nconst y = 3;", Some("1, 2")),
        (Suffix, "function f() {\n  |\n  done();\n}\n", "start();\n  done();\n", Some("start();")),
        (SyntaxDelta, "const x = 1|\n", " + (2", None),
        (SyntaxDelta, "const x = 1|\n", " + 2;", Some(" + 2;")),
        (SyntaxDelta, "const x = |\n", "foo(", Some("foo(")),
        (SyntaxDelta, "if (a) {\n  |\n}\n", "b());", None),
    ],
    cuts: &[Cut {
        head: "import fs from 'fs';\nimport { join } from 'path';\n\nexport class Big {\n  method(items) {\n",
        line: "    const v{i} = items[{i}] * 2;\n",
        tail: "    return |v0;\n  }\n}\n",
        want: "import fs from 'fs';\nimport { join } from 'path';\nexport class Big {\n  method(items) {\n    const v",
    }],
};
