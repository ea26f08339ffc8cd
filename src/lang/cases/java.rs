//! Java.

use super::{Cut, Kind::*, Table};

pub const TABLE: Table = Table {
    ids: &["java"],
    modes: &[
        ("class A {|}\n", "multi"),
        ("class A {\n  void f() {\n    |\n  }\n}\n", "multi"),
        ("class A {\n  void f() {\n    // todo\n    |\n  }\n}\n", "multi"),
        ("class A {\n  void f(int k) {\n    switch (k) {\n      case 1:|\n    }\n  }\n}\n", "multi"),
        ("class A {\n  void f() {\n    int x = 1;\n    |\n  }\n}\n", "single"),
        ("class A {\n  /** doc */|\n}\n", "single"),
        ("class A {\n  void f() {\n    g(|);\n  }\n}\n", "single"),
        ("class A {\n  Str|ing s;\n}\n", "skip"),
        ("class A {\n  String s = \"a|b\";\n}\n", "skip"),
        ("class A {\n  String s = \"\"\"\n    text |\n    \"\"\";\n}\n", "skip"),
        ("class A {\n  char c = 'x|';\n}\n", "skip"),
        ("class A {\n  int x; // note|\n}\n", "skip"),
    ],
    finish: &[
        (
            BlockEnd,
            "class A {\n  int f() {\n    |\n  }\n\n  int g() { return 0; }\n}\n",
            "int x = 1;\n    return x;\n  }\n\n  int h() { return 1; }\n",
            Some("int x = 1;\n    return x;"),
        ),
        (
            BlockEnd,
            "class A {\n  |\n}\n",
            "private int n;\n\n  int get() {\n    return n;\n  }\n}\n\nclass B {}\n",
            Some("private int n;\n\n  int get() {\n    return n;\n  }"),
        ),
        (BlockEnd, "enum Color {\n  |\n}\n", "RED, GREEN;\n}\n\nclass X {}\n", Some("RED, GREEN;")),
        (Suffix, "class A {\n  int v = compute(|);\n}\n", "a, b);", Some("a, b")),
        (Suffix, "class A {\n  int[] xs = {|};\n}\n", "1, 2};", Some("1, 2")),
        (Suffix, "class A {\n  void f() {\n    |\n    done();\n  }\n}\n", "start();\n    done();\n", Some("start();")),
        (SyntaxDelta, "class A {\n  int x = 1|;\n}\n", " + (2", None),
        (SyntaxDelta, "class A {\n  int x = 1|;\n}\n", " + 2", Some(" + 2")),
        (SyntaxDelta, "class A {\n  int x = |\n}\n", "foo(", Some("foo(")),
    ],
    cuts: &[Cut {
        head: "package org.example;\n\nimport java.util.List;\nimport java.util.Map;\n\npublic class Big {\n  public int run(int[] items) {\n",
        line: "    int v{i} = items[{i}] * 2;\n",
        tail: "    return |v0;\n  }\n}\n",
        want: "package org.example;\nimport java.util.List;\nimport java.util.Map;\npublic class Big {\n  public int run(int[] items) {\n    int v",
    }],
};
