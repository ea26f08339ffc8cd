#!/usr/bin/env python3
"""Build the held-out FIM benchmark from the held-out files (work/corpus/heldout.jsonl).

Cases are taken from function bodies (found with tree-sitter) of files that never
entered tokenizer or model training:

  single  one line of a function body removed; the prefix ends at the line's
          indentation, the middle is the rest of that line (no newline), the suffix
          starts with the newline;
  multi   2-4 consecutive lines of one function body removed, same borders;
  mid     the single-line cases again with the cursor inside the statement: the prefix
          also holds the start of the line up to a word border (after `=`, `(`, `[`, `,`,
          `.`, `:` or a space, with at least 3 visible characters on each side), the middle
          is the rest of the line, as when the developer has typed part of it.

Comment-only lines, blank lines and lines with fewer than 4 non-blank characters
(a lone `}` or `)`) are not chosen as the first/only removed line.  Prefixes are cut to
the last --max-prefix characters and suffixes to the first --max-suffix characters,
both at line borders.  Output: eval/fim_python.jsonl and eval/fim_rust.jsonl with
fields id, language, kind, prefix, suffix, middle, path.
"""
import argparse
import json
import random
from collections import defaultdict
from pathlib import Path

import tree_sitter_python
import tree_sitter_rust
from tree_sitter import Language, Parser

HERE = Path(__file__).resolve().parent
LANGS = {
    "python": (tree_sitter_python.language(), {"function_definition"}, "block", "#"),
    "rust": (tree_sitter_rust.language(), {"function_item"}, "block", "//"),
}


def body_line_ranges(text, lang):
    """Yield (first_line, last_line) 0-based inclusive ranges of lines inside function bodies."""
    language, fn_types, body_field_type, _ = LANGS[lang]
    parser = Parser(Language(language))
    tree = parser.parse(text.encode())
    out = []
    stack = [tree.root_node]
    while stack:
        n = stack.pop()
        if n.type in fn_types:
            body = n.child_by_field_name("body")
            if body is not None and body.end_point[0] > body.start_point[0]:
                if lang == "rust":  # lines strictly between `{` and `}`
                    a, b = body.start_point[0] + 1, body.end_point[0] - 1
                else:
                    a, b = body.start_point[0], body.end_point[0]
                    if a == n.start_point[0]:
                        a += 1
                if b >= a:
                    out.append((a, b))
        stack.extend(n.children)
    return out


def good_line(line, comment):
    s = line.strip()
    return len(s) >= 4 and not s.startswith(comment) and len(line) <= 200 and not s.startswith(('"""', "'''"))


def clip(prefix, suffix, max_prefix, max_suffix):
    if len(prefix) > max_prefix:
        cut = prefix[-max_prefix:]
        nl = cut.find("\n")
        prefix = cut[nl + 1:] if nl >= 0 else cut
    if len(suffix) > max_suffix:
        cut = suffix[:max_suffix]
        nl = cut.rfind("\n")
        suffix = cut[:nl + 1] if nl > 0 else cut
    return prefix, suffix


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default=str(HERE / "work"))
    ap.add_argument("--out", default=str(HERE / "eval"))
    ap.add_argument("--per-kind", type=int, default=300)
    ap.add_argument("--per-file", type=int, default=12, help="at most this many cases of one kind per file")
    ap.add_argument("--max-source-share", type=float, default=0.2,
                    help="at most this share of one kind's cases from one stdlib module or crate")
    ap.add_argument("--max-prefix", type=int, default=1500)
    ap.add_argument("--max-suffix", type=int, default=500)
    ap.add_argument("--seed", type=int, default=1234)
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    docs = defaultdict(list)
    for l in open(Path(args.work) / "corpus" / "heldout.jsonl"):
        d = json.loads(l)
        docs[d["lang"]].append(d)
    for lang in LANGS:
        comment = LANGS[lang][3]
        rng = random.Random(f"{args.seed}:{lang}")
        files = sorted(docs[lang], key=lambda d: d["path"])
        rng.shuffle(files)
        cases = {"single": [], "multi": []}
        prepared = []
        for d in files:
            text = d["text"]
            lines = text.splitlines(keepends=True)
            starts, pos = [], 0
            for l in lines:
                starts.append(pos)
                pos += len(l)
            ranges = body_line_ranges(text, lang)
            cand = sorted({i for a, b in ranges for i in range(a, b + 1) if good_line(lines[i], comment)})
            rng.shuffle(cand)
            prepared.append({"d": d, "lines": lines, "starts": starts, "ranges": ranges, "cand": cand})

        def make_case(p, i, kind, used):
            lines, starts, ranges, text = p["lines"], p["starts"], p["ranges"], p["d"]["text"]
            if kind == "single":
                j = i
            else:
                k = rng.choice([2, 3, 4])
                if not [(a, b) for a, b in ranges if a <= i and i + k - 1 <= b]:
                    return None
                j = i + k - 1
            if any(x in used for x in range(i - 2, j + 3)):
                return None
            line = lines[i]
            indent = len(line) - len(line.lstrip(" \t"))
            a = starts[i] + indent
            b = starts[j] + len(lines[j].rstrip("\r\n"))
            middle = text[a:b]
            if kind == "multi" and (middle.count("\n") < 1 or len(middle) > 400):
                return None
            prefix, suffix = clip(text[:a], text[b:], args.max_prefix, args.max_suffix)
            used.update(range(i, j + 1))
            return {"language": lang, "kind": kind, "prefix": prefix, "suffix": suffix,
                    "middle": middle, "path": p["d"]["path"]}

        cap = int(args.per_kind * args.max_source_share)
        for kind in ("single", "multi"):
            per_source = defaultdict(int)
            state = [{"pos": 0, "n": 0, "used": set()} for _ in prepared]
            progress = True
            while len(cases[kind]) < args.per_kind and progress:
                progress = False  # round robin: one case per file per round
                for p, st in zip(prepared, state):
                    if len(cases[kind]) >= args.per_kind:
                        break
                    src = p["d"]["source"]
                    if st["n"] >= args.per_file or per_source[src] >= cap:
                        continue
                    while st["pos"] < len(p["cand"]):
                        i = p["cand"][st["pos"]]
                        st["pos"] += 1
                        c = make_case(p, i, kind, st["used"])
                        if c:
                            cases[kind].append(c)
                            st["n"] += 1
                            per_source[src] += 1
                            progress = True
                            break
        # Mid-statement cases from the single-line ones, with an RNG of their own so that the
        # single and multi cases stay as they were.
        mrng = random.Random(f"{args.seed}:{lang}:mid")
        cases["mid"] = []
        for c in cases["single"]:
            m = c["middle"]
            cuts = [k + 1 for k, ch in enumerate(m[:-1]) if ch in "=([,.: "
                    and len(m[:k + 1].strip()) >= 3 and len(m[k + 1:].strip()) >= 3]
            if cuts:
                k = mrng.choice(cuts)
                cases["mid"].append({**c, "kind": "mid", "prefix": c["prefix"] + m[:k], "middle": m[k:]})
        with open(out / f"fim_{lang}.jsonl", "w") as f:
            for kind in ("single", "multi", "mid"):
                for n, c in enumerate(cases[kind]):
                    c = {"id": f"{lang}-{kind}-{n:04d}", **c}
                    f.write(json.dumps(c) + "\n")
        print(f"{lang}: single {len(cases['single'])}, multi {len(cases['multi'])}, mid {len(cases['mid'])}, "
              f"files used {len({c['path'] for k in cases for c in cases[k]})}")


if __name__ == "__main__":
    main()
