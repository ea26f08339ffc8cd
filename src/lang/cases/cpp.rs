//! C++.

use super::{Cut, Kind::*, Table};

pub const TABLE: Table = Table {
    ids: &["cpp"],
    modes: &[
        ("class A {|};\n", "multi"),
        ("namespace n {\n|\n}\n", "multi"),
        ("void f() {\n    // todo\n    |\n}\n", "multi"),
        ("class A {\npublic:|\n};\n", "multi"),
        ("auto f = [](int x) {|};\n", "multi"),
        ("template <typename T>\nstruct Box {\n    |\n};\n", "multi"),
        ("void f() {\n    auto x = 1;\n    |\n}\n", "single"),
        ("void f() {\n    g(|);\n}\n", "single"),
        ("std::vec|tor<int> v;\n", "skip"),
        ("auto s = R\"(raw |text)\";\n", "skip"),
        ("auto s = \"a|b\";\n", "skip"),
        ("int x = 1; // note|\n", "skip"),
    ],
    finish: &[
        (
            BlockEnd,
            "class Stack {\n    |\n};\n\nint main() {}\n",
            "std::vector<int> items;\n\npublic:\n    void push(int x) { items.push_back(x); }\n};\n\nint other() {}\n",
            Some("std::vector<int> items;\n\npublic:\n    void push(int x) { items.push_back(x); }"),
        ),
        (
            BlockEnd,
            "namespace store {\nint load() {\n    |\n}\n}\n",
            "return 1;\n}\n\nint save() { return 0; }\n",
            Some("return 1;"),
        ),
        (BlockEnd, "auto f = [](int x) {\n    |\n};\n", "return x * 2;\n};\n\nauto g = 1;\n", Some("return x * 2;")),
        (Suffix, "auto v = std::max(|);\n", "a, b);", Some("a, b")),
        (Suffix, "std::vector<int> xs{|};\n", "1, 2};", Some("1, 2")),
        (Suffix, "void f() {\n    |\n    done();\n}\n", "start();\n    done();\n", Some("start();")),
        (SyntaxDelta, "int x = 1|;\n", " + (2", None),
        (SyntaxDelta, "int x = 1|;\n", " + 2", Some(" + 2")),
        (SyntaxDelta, "auto x = |\n", "foo(", Some("foo(")),
    ],
    cuts: &[Cut {
        head: "#include <vector>\n#include \"store.hpp\"\n\nnamespace store {\nclass Loader {\npublic:\n    int load(const std::vector<int> &items) {\n",
        line: "        int v{i} = items[{i}] * 2;\n",
        tail: "        return |v0;\n    }\n};\n}\n",
        want: "#include <vector>\n#include \"store.hpp\"\nnamespace store {\nclass Loader {\n    int load(const std::vector<int> &items) {\n        int v",
    }],
};
