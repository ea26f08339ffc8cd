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
        # The chain of stages, oldest first: each exported model records the one it started from.
        stages = [m]
        while (stages[0].get("init_from") or {}).get("training_meta"):
            stages.insert(0, stages[0]["init_from"]["training_meta"])
        val_row = (f"| final validation loss | {m['final_val_loss']:.3f} nats/token "
                   f"({m.get('val_rows', 64)} packed rows from the held-out files) |\n" if "final_val_loss" in m else "")

        def run(x):
            w = ""
            if x.get("first_weight", 1.0) != 1.0 or x.get("middle_weight", 1.0) != 1.0:
                w = (f", loss weight {x['first_weight']:g} on the first token of each middle"
                     + (f" and {x['middle_weight']:g} on the rest of it" if x.get("middle_weight", 1.0) != 1.0 else ""))
            return (
                f"AdamW (beta 0.9/0.95, weight decay 0.1), peak learning rate {x['peak_lr']:g}, "
                f"{x['warmup_steps']} warmup steps then cosine decay to 10 %, batch {x['batch_size']} x "
                f"{x['seq_len']} tokens, {x['step']:,} steps = {x['tokens_seen'] / 1e6:.2f} M tokens, seed {x['seed']}, "
                f"{x.get('precision', 'fp32')} on the {x['device'].upper()} with {x['threads']} threads{w}")

        if len(stages) > 1:
            total = sum(x["tokens_seen"] for x in stages)
            parts = []
            for i, x in enumerate(stages, 1):
                how = ("from random weights" if i == 1 else
                       f"from stage {i - 1}'s exported weights (`train.py --init-from`, fresh optimizer and schedule)")
                vl = x.get("final_val_loss")
                parts.append(
                    f"Stage {i}, {how}, on {x['data_tokens'] / 1e6:.1f} M prepared tokens: {run(x)}; "
                    f"{x.get('train_time_s', 0) / 60:.0f} minutes"
                    + (f", final validation loss {vl:.3f} on that stage's validation rows" if vl is not None else "")
                    + ".")
            times = "; ".join(f"stage {i}: {x.get('train_time_s', 0) / 60:.0f} minutes"
                              for i, x in enumerate(stages, 1))
            body = (
                f"{len(stages)} stages, {total / 1e6:.2f} M tokens in all. Commands in "
                f"`server/training/README.md`.\n\n" + "\n\n".join(f"- {t}" for t in parts) + "\n\n"
                f"| | |\n| --- | --- |\n| hardware | {args.hardware} |\n"
                f"| training time | {times} (last stage average {tps:.0f} tokens/s) |\n"
                + val_row)
        else:
            body = (
                f"{run(m)} (`python3 train.py --device {m['device'].split(':')[0]}`).\n\n"
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
