#!/usr/bin/env python3
"""Turn the corpus into pre-tokenized training rows with fill-in-the-middle samples.

Each training file is either a plain left-to-right document (probability 1 - fim_rate)
or cut at line boundaries into chunks of 300-1600 characters, each turned into one
FIM sample (Bavarian et al. 2022; StarCoder; Qwen2.5-Coder):

  PSM  <|fim_prefix|>P<|fim_suffix|>S<|fim_middle|>M<|endoftext|>   (90 %)
  SPM  <|fim_suffix|>S<|fim_prefix|>P<|fim_middle|>M<|endoftext|>   (10 %)

The middle span M is chosen
  * line-level (60 %): from a point in a line (end of indentation, inside the line, or the
    line start) to the end of that line or of 1-3 following lines, the way an editor
    completes the rest of a line or a small block;
  * character-level (40 %): between two uniformly random characters of the chunk.
P, S and M are tokenized separately (as the server does with its FIM template), so span
borders are token borders.

Rows of seq_len+1 tokens are packed greedily: FIM samples are never split across rows
(a sample that does not fit starts the next row); the rest of a row is filled from the
stream of plain documents, whose remainder becomes plain rows.  Files are shuffled with the seed; each epoch draws fresh FIM spans.
Rows are shuffled and written as numpy uint16 shards (work/data/train_*.npy) plus a
validation shard from the held-out files (work/data/val.npy) for the loss curve.
"""
import argparse
import hashlib
import json
import random
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

HERE = Path(__file__).resolve().parent


def file_rng(seed, epoch, path):
    h = hashlib.sha256(f"{seed}:{epoch}:{path}".encode()).hexdigest()
    return random.Random(int(h[:16], 16))


def chunk_lines(text, rng, lo=300, hi=1600):
    lines = text.splitlines(keepends=True)
    chunks, cur, n, target = [], [], 0, rng.randint(lo, hi)
    for l in lines:
        if cur and n + len(l) > target:
            chunks.append("".join(cur))
            cur, n, target = [], 0, rng.randint(lo, hi)
        cur.append(l)
        n += len(l)
    if cur:
        chunks.append("".join(cur))
    return [c for c in chunks if c.strip()]


def is_word(c):
    return c.isalnum() or c == "_"


def word_border(chunk, pos):
    """The nearest position at or before `pos` that is not inside a word (an identifier,
    keyword or number), where an editor's cursor usually is when a completion is asked for."""
    while 0 < pos < len(chunk) and is_word(chunk[pos - 1]) and is_word(chunk[pos]):
        pos -= 1
    return pos


def choose_span(chunk, rng, word_rate=0.0, line_cols=None):
    """Return (start, end) character offsets of the middle.  With probability `word_rate` a
    start inside a line is moved back to a word border (no draw when it is 0, so data prepared
    without it is unchanged).  `line_cols` = (indent, zero, inside) weights makes every span a
    line-level one whose first line starts at its indentation, at column 0 or inside the line
    (None: 60 % line-level spans with weights 0.5 / 0.2 / 0.3, 40 % between random characters)."""
    snap = word_rate > 0 and rng.random() < word_rate
    if line_cols is not None or rng.random() < 0.6:
        lines = chunk.splitlines(keepends=True)
        starts, pos = [], 0
        for l in lines:
            starts.append(pos)
            pos += len(l)
        cand = [i for i, l in enumerate(lines) if l.strip()]
        if cand:
            i = rng.choice(cand)
            k = rng.choices([1, 2, 3, 4], weights=[0.55, 0.2, 0.15, 0.1])[0]
            j = min(len(lines) - 1, i + k - 1)
            line = lines[i]
            body = line.rstrip("\r\n")
            indent = len(body) - len(body.lstrip())
            if line_cols is not None:
                where = rng.choices(["indent", "zero", "inside"], weights=line_cols)[0]
                if where == "indent":
                    col = indent
                elif where == "zero":
                    col = 0
                else:
                    col = rng.randint(indent, len(body))
            else:
                u = rng.random()
                if u < 0.5:
                    col = indent
                elif u < 0.8:
                    col = rng.randint(indent, len(body))
                else:
                    col = 0
            start = starts[i] + col
            if snap:
                start = max(starts[i] + indent, word_border(chunk, start))
            end_line = lines[j]
            end = starts[j] + len(end_line.rstrip("\r\n"))
            if rng.random() < 0.2:
                end = starts[j] + len(end_line)
            return start, max(start, end)
    a, b = sorted(rng.randint(0, len(chunk)) for _ in range(2))
    if snap:
        a = word_border(chunk, a)
    return a, b


def update_manifest(meta, manifest_path):
    """Record the tokenized sizes in the data manifest next to the model."""
    if not manifest_path.exists():
        return
    m = json.loads(manifest_path.read_text())
    ep = meta["per_epoch"]
    m["tokenized"] = {
        "tokenizer_vocab": meta["vocab_size"], "epochs_prepared": meta["epochs"],
        "fim_rate": meta["fim_rate"], "spm_rate": meta["spm_rate"],
        "kept_share": {"stdlib_test_package": meta["py_test_keep"], "rust_files": meta["rust_keep"]},
        "tokens_python": sum(e.get("doc_tokens_python", 0) for e in ep),
        "tokens_rust": sum(e.get("doc_tokens_rust", 0) for e in ep),
        "fim_samples": sum(e["fim_samples"] for e in ep),
        "plain_documents": sum(e["plain_docs"] for e in ep),
        "packed_rows": meta["rows"], "packed_tokens": meta["tokens"], "seq_len": meta["seq_len"],
        "validation_rows_from_heldout": meta["val_rows"],
    }
    manifest_path.write_text(json.dumps(m, indent=1) + "\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default=str(HERE / "work"))
    ap.add_argument("--tokenizer", default=None, help="default: WORK/tokenizer/tokenizer.json")
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--fim-rate", type=float, default=0.6)
    ap.add_argument("--spm-rate", type=float, default=0.1)
    ap.add_argument("--epochs", type=int, default=1, help="passes over the corpus, fresh FIM spans each")
    ap.add_argument("--py-test-keep", type=float, default=0.5,
                    help="share of the stdlib regression-test package kept (it is half of the stdlib)")
    ap.add_argument("--rust-keep", type=float, default=0.5, help="share of Rust files kept (balances the languages)")
    ap.add_argument("--val-rows", type=int, default=64)
    ap.add_argument("--shard-rows", type=int, default=4096)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--chunk-chars", default="300,1600",
                    help="MIN,MAX characters of the chunks a FIM file is cut into (one sample each); "
                         "shorter chunks give more prefix-to-middle hand-offs per token")
    ap.add_argument("--out", default=None, help="default: WORK/data")
    ap.add_argument("--word-border", type=float, default=0.0,
                    help="share of FIM spans whose start inside a line is moved back to a word border")
    ap.add_argument("--line-cols", default=None,
                    help="INDENT,ZERO,INSIDE: every middle a line-level span whose first line starts at its "
                         "indentation, at column 0 or inside the line with these weights (default: the mixed "
                         "spans of the shipped data)")
    ap.add_argument("--manifest", default=str(HERE.parent / "models" / "ghostline-tiny" / "DATA_MANIFEST.json"),
                    help="data manifest to record the token counts in (a path that does not exist: none)")
    args = ap.parse_args()
    work = Path(args.work)
    tok = Tokenizer.from_file(args.tokenizer or str(work / "tokenizer" / "tokenizer.json"))
    sp = {t: tok.token_to_id(t) for t in ["<|endoftext|>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>"]}
    EOS, PRE, MID, SUF = sp["<|endoftext|>"], sp["<|fim_prefix|>"], sp["<|fim_middle|>"], sp["<|fim_suffix|>"]
    assert tok.get_vocab_size() <= 65535
    T1 = args.seq_len + 1
    out = Path(args.out) if args.out else work / "data"
    chunk_lo, chunk_hi = (int(v) for v in args.chunk_chars.split(","))
    if not 0 < chunk_lo <= chunk_hi:
        raise SystemExit(f"--chunk-chars {args.chunk_chars}: want MIN,MAX with 0 < MIN <= MAX")
    line_cols = None
    if args.line_cols:
        try:
            line_cols = [float(v) for v in args.line_cols.split(",")]
        except ValueError:
            line_cols = []
        if len(line_cols) != 3 or min(line_cols) < 0 or sum(line_cols) <= 0:
            raise SystemExit(f"--line-cols {args.line_cols}: want three non-negative weights INDENT,ZERO,INSIDE")
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.npy"):
        old.unlink()

    def load(name):
        return [json.loads(l) for l in open(work / "corpus" / name)]

    def build_rows(docs, epoch, seed, keep=True):
        rng = random.Random(f"{seed}:{epoch}")
        sel = []
        for d in docs:
            r = file_rng(seed, epoch, d["path"]).random()
            if keep:
                if d["path"].startswith("stdlib/test/") and r > args.py_test_keep:
                    continue
                if d["lang"] == "rust" and r > args.rust_keep:
                    continue
            sel.append(d)
        rng.shuffle(sel)
        # 1) build text pieces
        items = []  # (kind, pieces) ; kind 'plain' -> [text], 'psm'/'spm' -> [P, S, M]
        for d in sel:
            frng = file_rng(seed, epoch, "fim:" + d["path"])
            if frng.random() >= args.fim_rate:
                items.append(("plain", [d["text"]], d["lang"]))
                continue
            for c in chunk_lines(d["text"], frng, chunk_lo, chunk_hi):
                a, b = choose_span(c, frng, args.word_border, line_cols)
                kind = "spm" if frng.random() < args.spm_rate else "psm"
                items.append((kind, [c[:a], c[b:], c[a:b]], d["lang"]))
        # 2) tokenize in batches
        flat = [p for _, ps, _ in items for p in ps]
        ids = []
        B = 20000
        for i in range(0, len(flat), B):
            ids.extend(e.ids for e in tok.encode_batch(flat[i:i + B], add_special_tokens=False))
        # 3) pack: FIM samples whole, plain documents as the filler stream
        rows, cur = [], []
        stats = {"fim_samples": 0, "fim_dropped": 0, "plain_docs": 0, "tokens": 0, "fim_tokens": 0}
        plain = []
        fims = []
        k = 0
        for kind, ps, lang in items:
            parts = ids[k:k + len(ps)]
            k += len(ps)
            lk = f"doc_tokens_{lang}"
            if kind == "plain":
                seq = parts[0] + [EOS]
                stats["plain_docs"] += 1
                stats[lk] = stats.get(lk, 0) + len(seq)
                plain.extend(seq)
                continue
            P, S, M = parts
            if kind == "psm":
                seq = [PRE] + P + [SUF] + S + [MID] + M + [EOS]
            else:
                seq = [SUF] + S + [PRE] + P + [MID] + M + [EOS]
            if len(seq) > T1:
                stats["fim_dropped"] += 1
                continue
            stats["fim_samples"] += 1
            stats["fim_tokens"] += len(seq)
            stats[lk] = stats.get(lk, 0) + len(seq)
            fims.append(seq)
        p = 0

        def fill(row):
            nonlocal p
            need = T1 - len(row)
            take = plain[p:p + need]
            p += len(take)
            row = row + take
            return row + [EOS] * (T1 - len(row))

        for seq in fims:
            if len(seq) > T1 - len(cur):
                rows.append(fill(cur))
                cur = []
            cur.extend(seq)
        if cur:
            rows.append(fill(cur))
        while len(plain) - p >= T1:
            rows.append(plain[p:p + T1])
            p += T1
        stats["tokens"] = len(rows) * T1
        return rows, stats

    train_docs = load("train.jsonl")
    all_rows, all_stats = [], []
    for ep in range(args.epochs):
        rows, st = build_rows(train_docs, ep, args.seed)
        all_rows.extend(rows)
        all_stats.append(st)
        print(f"epoch {ep}: {st}", flush=True)
    arr = np.asarray(all_rows, dtype=np.uint16)
    perm = np.random.default_rng(args.seed).permutation(len(arr))
    arr = arr[perm]
    shards = []
    for i in range(0, len(arr), args.shard_rows):
        name = f"train_{i // args.shard_rows:05d}.npy"
        np.save(out / name, arr[i:i + args.shard_rows])
        shards.append(name)
    held = load("heldout.jsonl")
    vrows, vst = build_rows(held, 0, args.seed + 1, keep=False)
    vrows = np.asarray(vrows, dtype=np.uint16)
    vrows = vrows[np.random.default_rng(args.seed).permutation(len(vrows))[:args.val_rows]]
    np.save(out / "val.npy", vrows)
    # language mix of the kept documents (bytes)
    meta = {"seq_len": args.seq_len, "rows": int(len(arr)), "tokens": int(arr.size), "shards": shards,
            "val_rows": int(len(vrows)), "epochs": args.epochs, "fim_rate": args.fim_rate, "chunk_chars": [chunk_lo, chunk_hi], "word_border": args.word_border, "line_cols": line_cols,
            "spm_rate": args.spm_rate, "seed": args.seed, "py_test_keep": args.py_test_keep,
            "rust_keep": args.rust_keep, "per_epoch": all_stats, "vocab_size": tok.get_vocab_size()}
    (out / "meta.json").write_text(json.dumps(meta, indent=1))
    update_manifest(meta, Path(args.manifest))
    print(json.dumps({k: v for k, v in meta.items() if k != "shards"}, indent=1))


if __name__ == "__main__":
    main()
