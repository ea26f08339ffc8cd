#!/usr/bin/env python3
"""transformers' side of the GPU checks (tests/gpu/run.sh), on the GPU machine's torch.

  hf.py make DIR TOKENIZER_DIR      random-weight checkpoint with the shape of Qwen2.5-Coder-1.5B (bf16)
  hf.py reference DIR OUT.json      last-position logits and greedy tokens, computed in f32
  hf.py bench DIR OUT.json [--batches 1,8,32,64] [--prompt 128] [--gen 64] [--prefill 512,2048]
"""
import argparse
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, Qwen2Config, Qwen2ForCausalLM

# Qwen2.5-Coder-1.5B's config.json, less the vocabulary's token ids (the tokenizer is the
# house model's, whose ids all fall inside this vocabulary).
QWEN_1_5B = dict(
    hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
    num_key_value_heads=2, vocab_size=151936, max_position_embeddings=32768, rope_theta=1000000.0,
    rms_norm_eps=1e-6, tie_word_embeddings=True, hidden_act="silu", use_sliding_window=False,
)


def make(out: Path, tokenizer_dir: Path):
    torch.manual_seed(0)
    cfg = Qwen2Config(**QWEN_1_5B)
    with torch.device("cuda"):
        model = Qwen2ForCausalLM(cfg).to(torch.bfloat16)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True, max_shard_size="8GB")
    for f in ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"]:
        if (tokenizer_dir / f).exists():
            shutil.copy(tokenizer_dir / f, out / f)
    house = json.loads((tokenizer_dir / "config.json").read_text())
    c = json.loads((out / "config.json").read_text())
    # Pin the fields the engine reads whatever this transformers version writes.
    c.update(QWEN_1_5B)
    c["model_type"] = "qwen2"
    c["head_dim"] = 128
    c["eos_token_id"] = house.get("eos_token_id")
    c["bos_token_id"] = house.get("bos_token_id")
    c["torch_dtype"] = "bfloat16"
    c.pop("rope_scaling", None)
    (out / "config.json").write_text(json.dumps(c, indent=2))
    print(f"made {out}: {sum(p.numel() for p in model.parameters()) / 1e9:.2f}B parameters")


def load(dir: Path, dtype):
    m = AutoModelForCausalLM.from_pretrained(dir, dtype=dtype, attn_implementation="sdpa").to("cuda").eval()
    return m


def reference(dir: Path, out: Path):
    model = load(dir, torch.float32)
    g = torch.Generator().manual_seed(1)
    vocab = 8192  # ids the house tokenizer can produce
    cases = []
    for n in [5, 17, 64, 200, 700]:
        ids = torch.randint(0, vocab, (1, n), generator=g)
        with torch.no_grad():
            logits = model(ids.cuda()).logits[0, -1].float().cpu()
            gen = model.generate(ids.cuda(), max_new_tokens=16, min_new_tokens=16, do_sample=False,
                                 pad_token_id=0, eos_token_id=None)
        cases.append({"input_ids": ids[0].tolist(), "last_logits": logits.tolist(),
                      "greedy": gen[0, n:].tolist()})
    out.write_text(json.dumps({"model": str(dir), "dtype": "float32", "cases": cases}))
    print(f"reference for {len(cases)} prompts written to {out}")


def timed(fn, reps=3):
    fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def bench(dir: Path, out: Path, batches, prompt, gen, prefills):
    model = load(dir, torch.bfloat16)
    vocab = model.config.vocab_size
    g = torch.Generator().manual_seed(2)
    decode = []
    for b in batches:
        ids = torch.randint(0, vocab, (b, prompt), generator=g).cuda()
        mask = torch.ones_like(ids)

        def run(n):
            with torch.no_grad():
                model.generate(ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                               pad_token_id=0, eos_token_id=None)

        t_full = timed(lambda: run(gen), reps=2)
        t_first = timed(lambda: run(1), reps=2)
        secs = max(t_full - t_first, 1e-9)
        decode.append({"batch": b, "prompt_tokens": prompt, "decode_tokens": gen, "seconds": secs,
                       "tok_per_s": b * (gen - 1) / secs})
        print(f"hf decode batch {b}: {decode[-1]['tok_per_s']:.0f} tok/s", flush=True)
    prefill = []
    for n in prefills:
        ids = torch.randint(0, vocab, (1, n), generator=g).cuda()

        def fwd():
            with torch.no_grad():
                model(ids, logits_to_keep=1)

        secs = timed(fwd)
        prefill.append({"prompt_tokens": n, "seconds": secs, "tok_per_s": n / secs})
    out.write_text(json.dumps({"model": str(dir), "device": torch.cuda.get_device_name(),
                               "torch": torch.__version__, "transformers": __import__("transformers").__version__,
                               "decode": decode, "prefill": prefill}, indent=2))


def ints(s):
    return [int(x) for x in s.split(",")]


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("make")
    m.add_argument("dir", type=Path)
    m.add_argument("tokenizer_dir", type=Path)
    r = sub.add_parser("reference")
    r.add_argument("dir", type=Path)
    r.add_argument("out", type=Path)
    b = sub.add_parser("bench")
    b.add_argument("dir", type=Path)
    b.add_argument("out", type=Path)
    b.add_argument("--batches", type=ints, default=[1, 8, 32, 64])
    b.add_argument("--prompt", type=int, default=128)
    b.add_argument("--gen", type=int, default=64)
    b.add_argument("--prefill", type=ints, default=[512, 2048])
    a = ap.parse_args()
    if a.cmd == "make":
        make(a.dir, a.tokenizer_dir)
    elif a.cmd == "reference":
        reference(a.dir, a.out)
    else:
        bench(a.dir, a.out, a.batches, a.prompt, a.gen, a.prefill)


if __name__ == "__main__":
    sys.exit(main())
