#!/usr/bin/env python3
"""Write the measured training facts and evaluation table into the model card.

Reads MODEL_DIR/training_meta.json (written by the export) and an evaluate.py --out JSON,
and replaces the sections between <!-- train:begin/end --> and <!-- eval:begin/end -->
of MODEL_DIR/MODEL_CARD.md.  Only numbers from those files are written.

  python3 report.py --eval work/eval_hf.json
"""
import argparse
import json
import re
from pathlib import Path

HERE = Path(__file__).resolve().parent


def replace(text, tag, body):
    pat = re.compile(rf"(<!-- {tag}:begin -->\n).*?(\n<!-- {tag}:end -->)", re.S)
    assert pat.search(text), f"marker {tag} missing"
    return pat.sub(lambda m: m.group(1) + body.strip() + m.group(2), text)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-dir", default=str(HERE.parent / "models" / "ghostline-tiny"))
    ap.add_argument("--eval", help="JSON written by evaluate.py --out")
    ap.add_argument("--hardware", default="2 CPU cores (x86-64, AVX2), shared with other build jobs")
    args = ap.parse_args()
    md = Path(args.model_dir)
    card = (md / "MODEL_CARD.md").read_text()
    meta_p = md / "training_meta.json"
    if meta_p.exists():
        m = json.loads(meta_p.read_text())
        secs = m.get("train_time_s", m.get("elapsed_s", 0))
        tps = m["tokens_seen"] / max(1, secs)
        prec = m.get("precision", "fp32")
        prev = (m.get("init_from") or {}).get("training_meta")
        val_row = (f"| final validation loss | {m['final_val_loss']:.3f} nats/token "
                   f"(64 packed rows from the held-out files) |\n" if "final_val_loss" in m else "")
        run = (
            f"AdamW (beta 0.9/0.95, weight decay 0.1), peak learning rate {m['peak_lr']:g}, "
            f"{m['warmup_steps']} warmup steps then cosine decay to 10 %, batch {m['batch_size']} x "
            f"{m['seq_len']} tokens, {m['step']:,} steps = {m['tokens_seen'] / 1e6:.2f} M tokens, seed {m['seed']}, "
            f"{prec} on the {m['device'].upper()} with {m['threads']} threads")
        if prev:
            total = prev["tokens_seen"] + m["tokens_seen"]
            psecs = prev.get("train_time_s", 0)
            body = (
                f"Two stages, {total / 1e6:.2f} M tokens in all. Stage 2 started from the weights of "
                f"stage 1's exported model (`train.py --init-from`, fresh optimizer and schedule) on "
                f"{m['data_tokens'] / 1e6:.1f} M newly prepared tokens: {run}. Stage 1: "
                f"{prev['tokens_seen'] / 1e6:.2f} M tokens, {prev['step']:,} steps of batch {prev['batch_size']} x "
                f"{prev['seq_len']}, peak learning rate {prev['peak_lr']:g}, {prev.get('precision', 'fp32')} "
                f"on the CPU, {psecs / 60:.0f} minutes, final validation loss {prev.get('final_val_loss', float('nan')):.3f} "
                f"on its own validation rows. Commands in `server/training/README.md`.\n\n"
                f"| | |\n| --- | --- |\n| hardware | {args.hardware} |\n"
                f"| training time | stage 2: {secs / 60:.0f} minutes of step time (average {tps:.0f} tokens/s); "
                f"stage 1: {psecs / 60:.0f} minutes |\n"
                + val_row)
        else:
            body = (
                f"{run} (`python3 train.py --device {m['device'].split(':')[0]}`).\n\n"
                f"| | |\n| --- | --- |\n| hardware | {args.hardware} |\n"
                f"| training time | {secs / 60:.0f} minutes of step time "
                f"(average {tps:.0f} tokens/s) |\n"
                + val_row)
        card = replace(card, "train", body)
    if args.eval:
        ev = json.loads(Path(args.eval).read_text())
        rows = ["| language | kind | cases | exact match | edit similarity | parses |",
                "| --- | --- | ---: | ---: | ---: | ---: |"]
        for r in ev["summary"]:
            rows.append(f"| {r['language']} | {r['kind']} | {r['n']} | {100 * r['exact_match']:.1f} % | "
                        f"{r['edit_similarity']:.3f} | {100 * r['parse_rate']:.1f} % |")
        card = replace(card, "eval", "\n".join(rows) + f"\n\nBackend: `{ev['backend']}`.")
    (md / "MODEL_CARD.md").write_text(card)
    print(f"updated {md / 'MODEL_CARD.md'}")


if __name__ == "__main__":
    main()
