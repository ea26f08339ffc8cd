#!/usr/bin/env python3
"""Export a ghostline-tiny training checkpoint to the HF layout and verify it.

Writes config.json, model.safetensors (bf16, tied embeddings), generation_config.json,
tokenizer.json, tokenizer_config.json and special_tokens_map.json into --out
(default: server/models/ghostline-tiny), then reloads the directory with
transformers' AutoModelForCausalLM + AutoTokenizer, checks that every weight reloads bit for
bit, and reports how its greedy FIM completions compare with the fp32 weights.

Usage: python3 export.py [--ckpt work/run/ckpt.pt] [--out ../models/ghostline-tiny]
"""
import argparse
import json
import shutil
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE.parent / "models" / "ghostline-tiny"

PROBES = [
    ("python", "def fibonacci(n):\n    if n < 2:\n        return n\n    return ", "\n"),
    ("python", "import os\n\n\ndef read_lines(path):\n    with open(path) as f:\n        ", "\n"),
    ("python", "class Stack:\n    def __init__(self):\n        self.items = []\n\n    def push(self, item):\n        ",
     "\n\n    def pop(self):\n        return self.items.pop()\n"),
    ("rust", "fn main() {\n    let args: Vec<String> = std::env::args().collect();\n    ", "\n}\n"),
    ("rust", "impl Point {\n    pub fn new(x: f64, y: f64) -> Self {\n        ", "\n    }\n}\n"),
    ("rust", "use std::collections::HashMap;\n\nfn count_words(text: &str) -> HashMap<String, usize> {\n    let mut map = ",
     "\n    map\n}\n"),
]


def fim_prompt(prefix, suffix):
    return f"<|fim_prefix|>{prefix}<|fim_suffix|>{suffix}<|fim_middle|>"


@torch.no_grad()
def greedy(model, tok, prompt, max_new_tokens=32):
    stop = {tok.convert_tokens_to_ids(t) for t in
            ["<|endoftext|>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>", "<|file_sep|>"]}
    ids = tok(prompt, return_tensors="pt", add_special_tokens=False).input_ids
    out = []
    past = None
    x = ids
    for _ in range(max_new_tokens):
        o = model(input_ids=x, past_key_values=past, use_cache=True)
        past = o.past_key_values
        nxt = int(o.logits[0, -1].float().argmax())
        if nxt in stop:
            break
        out.append(nxt)
        x = torch.tensor([[nxt]])
    return tok.decode(out)


def write_tokenizer_files(tok_dir: Path, out: Path, model_max_length: int):
    for name in ["tokenizer.json", "special_tokens_map.json"]:
        shutil.copy(tok_dir / name, out / name)
    cfg = json.loads((tok_dir / "tokenizer_config.json").read_text())
    cfg["model_max_length"] = model_max_length
    (out / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2) + "\n")


def export(model, tok_dir, out, meta=None, log=print):
    """model: a Qwen2ForCausalLM (any dtype/device). Returns the verification report."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model = model.to("cpu").float().eval()
    bf = type(model)(model.config)
    bf.load_state_dict(model.state_dict())
    bf = bf.to(torch.bfloat16).eval()
    bf.config.torch_dtype = torch.bfloat16
    bf.config.use_cache = True
    bf.save_pretrained(out, safe_serialization=True)
    # transformers 5 writes `rope_parameters` / `dtype`; older readers (transformers 4.x, the
    # project's Rust engine) look for the classic Qwen2 keys, so write both spellings.
    cj = json.loads((out / "config.json").read_text())
    cj.setdefault("rope_theta", (cj.get("rope_parameters") or {}).get("rope_theta", 10000.0))
    cj.setdefault("torch_dtype", "bfloat16")
    (out / "config.json").write_text(json.dumps(cj, indent=2, sort_keys=True) + "\n")
    write_tokenizer_files(Path(tok_dir), out, model.config.max_position_embeddings)
    gen = json.loads((Path(tok_dir) / "generation_config.json").read_text())
    GenerationConfig(**gen).save_pretrained(out)
    if meta is not None:
        (out / "training_meta.json").write_text(json.dumps(meta, indent=1) + "\n")

    # ---- verify: reload with the Auto classes and compare greedy text
    tok = AutoTokenizer.from_pretrained(out)
    assert tok.bos_token is None and tok.eos_token == "<|endoftext|>"
    assert len(tok("<|fim_prefix|>", add_special_tokens=False).input_ids) == 1
    re = AutoModelForCausalLM.from_pretrained(out, dtype=torch.bfloat16).eval()
    assert re.config.model_type == "qwen2"
    n_same_bf16 = n_same_fp32 = 0
    report = []
    for lang, p, s in PROBES:
        prompt = fim_prompt(p, s)
        t_re = greedy(re, tok, prompt)
        t_bf = greedy(bf, tok, prompt)
        t_fp = greedy(model, tok, prompt)
        n_same_bf16 += t_re == t_bf
        n_same_fp32 += t_re == t_fp
        report.append({"lang": lang, "prefix_tail": p[-40:], "reloaded": t_re, "fp32": t_fp})
        log(f"probe[{lang}] ...{p[-30:]!r} -> {t_re!r}" + ("" if t_re == t_fp else f"   (fp32: {t_fp!r})"))
    ids = tok(fim_prompt(PROBES[0][1], PROBES[0][2]), return_tensors="pt", add_special_tokens=False).input_ids
    with torch.no_grad():
        d = (re(ids).logits.float() - model(ids).logits.float()).abs().max().item()
    size = sum(f.stat().st_size for f in out.iterdir() if f.is_file() and f.suffix != ".md")
    log(f"export -> {out}: {size / 1e6:.2f} MB; greedy identical to in-memory bf16 on "
        f"{n_same_bf16}/{len(PROBES)}, to fp32 on {n_same_fp32}/{len(PROBES)}; max |logit diff| bf16 vs fp32 {d:.3f}")
    # The hard check is on the stored weights: every tensor must reload bit for bit. Greedy text
    # is reported only: bf16 compute in different attention kernels can flip near-ties.
    sd_re, sd_bf = re.state_dict(), bf.state_dict()
    bad = [k for k, v in sd_bf.items()
           if k in sd_re and not torch.equal(sd_re[k], v)]
    missing = [k for k in sd_bf if k not in sd_re and k != "lm_head.weight"]
    if bad or missing:
        raise SystemExit(f"export verification failed: tensors differ after reload: {(bad + missing)[:5]}")
    return {"probes": report, "same_as_bf16": n_same_bf16, "same_as_fp32": n_same_fp32,
            "max_logit_diff_fp32": d, "bytes": size}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ckpt", default=str(HERE / "work" / "run" / "ckpt.pt"))
    ap.add_argument("--tokenizer-dir", default=str(HERE / "work" / "tokenizer"))
    ap.add_argument("--out", default=str(DEFAULT_OUT))
    ap.add_argument("--val", default=str(HERE / "work" / "data" / "val.npy"),
                    help="validation rows for the final_val_loss in training_meta.json (skipped if missing)")
    args = ap.parse_args()
    from transformers import Qwen2Config, Qwen2ForCausalLM
    torch.set_num_threads(2)
    ck = torch.load(args.ckpt, map_location="cpu", weights_only=False)
    model = Qwen2ForCausalLM(Qwen2Config(**ck["model_config"]))
    model.load_state_dict(ck["model"])
    meta = ck.get("meta", {})
    meta.update({"step": ck["step"], "tokens_seen": ck["tokens_seen"], "train_time_s": round(ck.get("elapsed", 0))})
    val = Path(args.val)
    if val.exists():
        # The validation loss of the exported checkpoint, in fp32, with train.py's loss.
        import numpy as np
        from train import loss_fn
        rows = torch.from_numpy(np.load(val).astype(np.int64))
        model.eval()
        with torch.no_grad():
            ls = [loss_fn(model, b, torch.device("cpu"), False).item() for b in rows.split(8)]
        meta["final_val_loss"] = round(sum(ls) / len(ls), 4)
        meta["val_rows"] = len(rows)
    rep = export(model, args.tokenizer_dir, args.out, meta)
    json.dump(rep, sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main()
