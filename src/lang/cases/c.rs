//! C.

use super::{Cut, Kind::*, Table};

pub const TABLE: Table = Table {
    ids: &["c"],
    modes: &[
        ("int main(void) {|}\n", "multi"),
        ("int main(void) {\n    |\n}\n", "multi"),
        ("int main(void) {\n    /* todo */\n    |\n}\n", "multi"),
        ("struct point {|};\n", "multi"),
        ("void f(int k) {\n    switch (k) {\n    case 1:|\n    }\n}\n", "multi"),
        ("int main(void) {\n    int x = 1;\n    |\n}\n", "single"),
        ("/* one */|\n", "single"),
        ("int main(void) {\n    ret|urn 0;\n}\n", "skip"),
        ("const char *s = \"ab|c\";\n", "skip"),
        ("char c = 'x|';\n", "skip"),
        ("#include <|stdio.h>\n", "skip"),
        ("int x = 1; // note|\n", "skip"),
    ],
    finish: &[
        (
            BlockEnd,
            "int f(void) {\n    |\n}\n\nint g(void) { return 0; }\n",
            "int x = 1;\n    return x;\n}\n\nint h(void) { return 1; }\n",
            Some("int x = 1;\n    return x;"),
        ),
        (
            BlockEnd,
            "struct point {\n    |\n};\n",
            "int x;\n    int y;\n};\n\nstruct line { int a; };\n",
            Some("int x;\n    int y;"),
        ),
        (
            BlockEnd,
            "void f(int k) {\n    switch (k) {\n    case 1:\n        |\n    case 2:\n        b();\n    }\n}\n",
            "a();\n        break;\n    case 3:\n        c();\n",
            Some("a();\n        break;"),
        ),
        (Suffix, "int v = compute(|);\n", "a, b);", Some("a, b")),
        (Suffix, "int xs[] = {|};\n", "1, 2};", Some("1, 2")),
        (Suffix, "void f(void) {\n    |\n    done();\n}\n", "start();\n    done();\n", Some("start();")),
        (SyntaxDelta, "int x = 1|;\n", " + (2", None),
        (SyntaxDelta, "int x = 1|;\n", " + 2", Some(" + 2")),
        (SyntaxDelta, "int x = |\n", "foo(", Some("foo(")),
    ],
    cuts: &[Cut {
        head: "#ifndef STORE_H\n#define STORE_H\n#include <stdio.h>\n#include \"store.h\"\n\nint load(const int *items) {\n",
        line: "    int v{i} = items[{i}] * 2;\n",
        tail: "    return |v0;\n}\n#endif\n",
        want: "#include <stdio.h>\n#include \"store.h\"\nint load(const int *items) {\n    int v",
    }],
};
