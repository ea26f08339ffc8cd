//! TypeScript (the cases run under the TSX grammar too: `typescriptreact` is a superset).

use super::{Cut, Kind::*, Table};

pub const TABLE: Table = Table {
    ids: &["typescript", "typescriptreact"],
    modes: &[
        ("interface Point {|}\n", "multi"),
        ("interface Point {\n  |\n}\n", "multi"),
        ("enum Color {\n  // none yet\n  |\n}\n", "multi"),
        ("namespace N {|}\n", "multi"),
        ("switch (k) {\n  default:|\n}\n", "multi"),
        ("function area(p: Point): number {\n  const a = 1;\n  |\n}\n", "single"),
        ("class A {\n  private x = 1;\n  |\n}\n", "single"),
        ("const n: num|ber = 1;\n", "skip"),
        ("const s: string = \"a|b\";\n", "skip"),
        ("const t = `id-${|x}`;\n", "single"),
        ("const t = `id-|${x}`;\n", "skip"),
        ("type A = number; // alias|\n", "skip"),
    ],
    finish: &[
        (
            BlockEnd,
            "class Stack<T> {\n  |\n}\n\nconst s = 1;\n",
            "private items: T[] = [];\n  push(x: T) {\n    this.items.push(x);\n  }\n}\n\nconst t = 2;\n",
            Some("private items: T[] = [];\n  push(x: T) {\n    this.items.push(x);\n  }"),
        ),
        (
            BlockEnd,
            "function f(): number {\n  |\n}\n",
            "const x = 1;\n  return x;\n}\n\nexport {};\n",
            Some("const x = 1;\n  return x;"),
        ),
        (BlockEnd, "interface P {\n  |\n}\n", "x: number;\n  y: number;\n}\n\ntype Q = P;\n", Some("x: number;\n  y: number;")),
        (Suffix, "const v: number[] = [|];\n", "1, 2];", Some("1, 2")),
        (Suffix, "log(|);\n", "`${a}`);", Some("`${a}`")),
        (Suffix, "function f(): void {\n  |\n  done();\n}\n", "start();\n  done();\n", Some("start();")),
        (SyntaxDelta, "let x: number = 1|\n", " + (2", None),
        (SyntaxDelta, "let x: number = 1|\n", " + 2;", Some(" + 2;")),
        (SyntaxDelta, "let x: number = |\n", "foo(", Some("foo(")),
    ],
    cuts: &[Cut {
        head: "import { readFile } from 'fs/promises';\nimport type { Config } from './config';\n\nexport class Loader {\n  async load(path: string): Promise<Config> {\n",
        line: "    const v{i}: number = {i} * 2;\n",
        tail: "    return |JSON.parse(path);\n  }\n}\n",
        want: "import { readFile } from 'fs/promises';\nimport type { Config } from './config';\nexport class Loader {\n  async load(path: string): Promise<Config> {\n    const v",
    }],
};
