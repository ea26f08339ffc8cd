#!/usr/bin/env python3
"""The peer of benches/throughput.rs: the same measurements with HF transformers on the CPU.

    python3 server/engine/benches/hf_peer.py --model DIR [--prompt 512] [--decode 64] [--batches 1,8] [--threads 2]

Greedy decode with transformers' KV cache (past_key_values), f32 compute, best of --reps.
"""
import argparse
import json
import resource
import time

import torch
from transformers import AutoModelForCausalLM


def toks(n, vocab, seed):
    return [((i * 7919 + seed * 104729 + 13) % (vocab - 1)) + 1 for i in range(n)]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--prompt", type=int, default=512)
    ap.add_argument("--decode", type=int, default=64)
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    model = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32)
    model.eval()
    vocab = model.config.vocab_size
    with torch.inference_mode():
        ids = torch.tensor([toks(a.prompt, vocab, 0)])
        best = float("inf")
        for _ in range(a.reps):
            t = time.perf_counter()
            model(ids, use_cache=True, logits_to_keep=1)
            best = min(best, time.perf_counter() - t)
        print(json.dumps({"engine": "hf-transformers", "phase": "prefill", "batch": 1, "tokens": a.prompt,
                          "seconds": round(best, 4), "tok_per_s": round(a.prompt / best, 1)}))
        for b in [int(x) for x in a.batches.split(",")]:
            best = float("inf")
            for _ in range(a.reps):
                ids = torch.tensor([toks(128, vocab, i + 1) for i in range(b)])
                out = model(ids, use_cache=True, logits_to_keep=1)
                past = out.past_key_values
                nxt = out.logits[:, -1].argmax(-1, keepdim=True)
                t = time.perf_counter()
                for _ in range(a.decode):
                    out = model(nxt, past_key_values=past, use_cache=True)
                    past = out.past_key_values
                    nxt = out.logits[:, -1].argmax(-1, keepdim=True)
                best = min(best, time.perf_counter() - t)
            print(json.dumps({"engine": "hf-transformers", "phase": "decode", "batch": b, "tokens": b * a.decode,
                              "seconds": round(best, 4), "tok_per_s": round(b * a.decode / best, 1)}))
    print(json.dumps({"engine": "hf-transformers", "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}))


if __name__ == "__main__":
    main()
