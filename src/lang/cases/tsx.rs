//! TSX (`typescriptreact`): JSX in TypeScript.

use super::{Cut, Kind::*, Table};

pub const TABLE: Table = Table {
    ids: &["typescriptreact"],
    modes: &[
        ("export function App() {\n  return <div className=\"a|b\" />;\n}\n", "skip"),
        ("export function App() {\n  |\n}\n", "multi"),
        ("const el = <p>Hello |</p>;\n", "single"),
        ("const el = <p>{/* note| */}</p>;\n", "skip"),
        ("const el = <p>{cou|nt}</p>;\n", "skip"),
        ("const el = <p>{`n: ${|x}`}</p>;\n", "single"),
        ("interface Props {|}\n", "multi"),
        ("const f = (p: Props) => {\n  const x = 1;\n  |\n};\n", "single"),
        ("const s = 'a|b';\n", "skip"),
        ("const el = (\n  <ul>\n    {items.map((i) => {\n      |\n    })}\n  </ul>\n);\n", "multi"),
    ],
    finish: &[
        (
            BlockEnd,
            "const List = () => (\n  <ul>\n    |\n  </ul>\n);\n",
            "<li>a</li>\n    <li>b</li>\n  </ul>\n);\n\nexport default List;\n",
            Some("<li>a</li>\n    <li>b</li>"),
        ),
        (
            BlockEnd,
            "function App() {\n  |\n}\n",
            "const [n, setN] = useState(0);\n  return <b>{n}</b>;\n}\n\nexport default App;\n",
            Some("const [n, setN] = useState(0);\n  return <b>{n}</b>;"),
        ),
        (Suffix, "const el = <Item key={|} />;\n", "id} />;", Some("id")),
        (Suffix, "const el = <p>{format(|)}</p>;\n", "n)}</p>;", Some("n")),
        (
            Suffix,
            "function App() {\n  |\n  return null;\n}\n",
            "useEffect(() => {}, []);\n  return null;\n",
            Some("useEffect(() => {}, []);"),
        ),
        (SyntaxDelta, "const el = <p>{n|}</p>;\n", " + (1", None),
        (SyntaxDelta, "const el = <p>{n|}</p>;\n", " + 1", Some(" + 1")),
        (SyntaxDelta, "const el = |\n", "<div>", Some("<div>")),
    ],
    cuts: &[Cut {
        head: "import { useState } from 'react';\nimport type { Item } from './types';\n\nexport function List({ items }: { items: Item[] }) {\n",
        line: "  const v{i} = items[{i}];\n",
        tail: "  return <ul>{|}</ul>;\n}\n",
        want: "import { useState } from 'react';\nimport type { Item } from './types';\nexport function List({ items }: { items: Item[] }) {\n  const v",
    }],
};
