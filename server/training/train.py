#!/usr/bin/env python3
"""Train ghostline-tiny (Qwen2 architecture) on the pre-tokenized FIM shards.

Deterministic given --seed (data order is fixed by the shards, the row order of later
epochs by the seed; no dropout), resumable (--resume, or automatically from
RUN_DIR/ckpt.pt), logs loss, lr and tokens/s to RUN_DIR/train.log, saves a checkpoint
every --ckpt-every steps (atomically), and exports the final weights to
server/models/ghostline-tiny in the HF layout when it finishes (export.py).

  python3 train.py --device cpu            # the shipped model: 2 threads, ~5 M params
  python3 train.py --device cuda           # a larger config for a GPU
  python3 train.py --device cpu --init-from ../models/ghostline-tiny --total-tokens 16000000
                                           # continue training an exported model (fresh optimizer)

--first-weight W weights the loss of the first token of each FIM middle (the hand-off from the
prefix), and every checkpoint logs how often that token is the greedy choice on the
validation rows (first_middle_top1).

AdamW (0.9, 0.95), weight decay 0.1 on matrices, linear warmup then cosine decay to
10 % of the peak, gradient clipping at 1.0.
"""
import argparse
import json
import math
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent

# Model and run presets.  head_dim 64 and grouped-query attention like Qwen2.5-Coder.
PRESETS = {
    "cpu": dict(model=dict(hidden_size=256, intermediate_size=768, num_hidden_layers=4,
                           num_attention_heads=4, num_key_value_heads=2),
                batch_size=8, lr=2e-3, total_tokens=4_500_000, ckpt_every=50, threads=2),
    "cuda": dict(model=dict(hidden_size=512, intermediate_size=1536, num_hidden_layers=8,
                            num_attention_heads=8, num_key_value_heads=2),
                 batch_size=64, lr=1e-3, total_tokens=400_000_000, ckpt_every=500, threads=None),
}


def model_config(preset, vocab_size, seq_len, eos_id):
    from transformers import Qwen2Config
    m = PRESETS[preset]["model"]
    return dict(
        vocab_size=vocab_size, hidden_size=m["hidden_size"], intermediate_size=m["intermediate_size"],
        num_hidden_layers=m["num_hidden_layers"], num_attention_heads=m["num_attention_heads"],
        num_key_value_heads=m["num_key_value_heads"], head_dim=64, hidden_act="silu",
        max_position_embeddings=seq_len, rope_theta=10000.0, rms_norm_eps=1e-6,
        tie_word_embeddings=True, use_sliding_window=False, sliding_window=None, max_window_layers=0,
        attention_dropout=0.0, initializer_range=0.02, bos_token_id=None, eos_token_id=eos_id,
        pad_token_id=eos_id, use_cache=True, torch_dtype="bfloat16", architectures=["Qwen2ForCausalLM"],
        model_type="qwen2",
    )


class Data:
    def __init__(self, data_dir, seed):
        meta = json.loads((data_dir / "meta.json").read_text())
        self.shards = [np.load(data_dir / s, mmap_mode="r") for s in meta["shards"]]
        self.sizes = [len(s) for s in self.shards]
        self.offsets = np.cumsum([0] + self.sizes)
        self.n = int(self.offsets[-1])
        self.seed = seed
        self.meta = meta
        self.val = np.load(data_dir / "val.npy")
        self._perm_epoch, self._perm = None, None

    def row(self, i):
        epoch, j = divmod(i, self.n)
        if epoch > 0:  # later epochs: a seeded permutation of the rows
            if self._perm_epoch != epoch:
                self._perm = np.random.default_rng(self.seed + epoch).permutation(self.n)
                self._perm_epoch = epoch
            j = int(self._perm[j])
        s = int(np.searchsorted(self.offsets, j, side="right") - 1)
        return self.shards[s][j - self.offsets[s]]

    def batch(self, step, bs, offset=0):
        rows = np.stack([self.row(offset + step * bs + k) for k in range(bs)]).astype(np.int64)
        return torch.from_numpy(rows)


def lr_at(step, total, warmup, peak, floor=0.1):
    if step < warmup:
        return peak * (step + 1) / warmup
    p = min(1.0, (step - warmup) / max(1, total - warmup))
    return peak * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * p)))


def middle_weights(x, fim_ids, first_w, middle_w):
    """Per-target loss weights for FIM rows: `first_w` for the target after each <|fim_middle|>
    (the first token of the middle, the one that must continue the prefix), `middle_w` for the
    rest of the middle and its end of text, 1 elsewhere.  fim_ids = (prefix, suffix, middle, eos)."""
    pre, suf, mid, eos = fim_ids
    pos = torch.arange(x.size(1), device=x.device).expand_as(x)
    special = (x == pre) | (x == suf) | (x == mid) | (x == eos)
    last = torch.where(special, pos, torch.full_like(pos, -1)).cummax(dim=1).values
    in_middle = (last >= 0) & (torch.gather(x, 1, last.clamp(min=0)) == mid)
    w = torch.ones(x.shape, dtype=torch.float32, device=x.device)
    w[in_middle] = middle_w
    w[x == mid] = first_w
    return w


def loss_fn(model, rows, dev, autocast, weights=None, first_hits=None):
    """Mean cross-entropy of the next-token targets; with `weights` = (fim_ids, first_w,
    middle_w) a weighted mean (middle_weights).  With `first_hits` = (fim_ids, list) it appends
    (greedy hits, count) of the first middle token of each FIM sample to the list."""
    rows = rows.to(dev)
    x, y = rows[:, :-1], rows[:, 1:]
    with torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=autocast):
        logits = model(input_ids=x, use_cache=False).logits
    ce = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), y.reshape(-1), reduction="none")
    if first_hits is not None:
        at = x == first_hits[0][2]
        first_hits[1].append((int((logits.argmax(-1)[at] == y[at]).sum()), int(at.sum())))
    if weights is None:
        return ce.mean()
    w = middle_weights(x, *weights).reshape(-1)
    return (ce * w).sum() / w.sum()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    ap.add_argument("--preset", default=None, help="cpu | cuda (default: from --device)")
    ap.add_argument("--work", default=str(HERE / "work"))
    ap.add_argument("--run-dir", default=None, help="default: WORK/run (cpu) or WORK/run-cuda")
    ap.add_argument("--export-dir", default=str(HERE.parent / "models" / "ghostline-tiny"))
    ap.add_argument("--no-export", action="store_true")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--total-tokens", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--lr", type=float, default=None)
    ap.add_argument("--warmup-frac", type=float, default=0.05)
    ap.add_argument("--ckpt-every", type=int, default=None)
    ap.add_argument("--log-every", type=int, default=5)
    ap.add_argument("--max-steps", type=int, default=None, help="stop after this many steps (for timing runs)")
    ap.add_argument("--fresh", action="store_true", help="ignore an existing checkpoint in the run dir")
    ap.add_argument("--init-from", default=None,
                    help="start from the weights of an exported model directory (same shape and tokenizer) "
                         "instead of random ones; the optimizer and the schedule start fresh")
    ap.add_argument("--first-weight", type=float, default=1.0,
                    help="loss weight of the first middle token of each FIM sample (the hand-off from the "
                         "prefix to the middle); 1 = plain mean")
    ap.add_argument("--middle-weight", type=float, default=1.0,
                    help="loss weight of the other middle tokens and the end of the middle; 1 = plain mean")
    ap.add_argument("--data", default=None, help="pre-tokenized shards (default: WORK/data)")
    ap.add_argument("--row-offset", type=int, default=0,
                    help="start at this row of the data (e.g. the rows an earlier stage did not reach)")
    ap.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto",
                    help="bf16: autocast the forward pass to bf16 (fp32 master weights and optimizer); "
                         "auto: bf16 on CUDA and on CPUs with native bf16 dot products, else fp32")
    args = ap.parse_args()

    from transformers import Qwen2Config, Qwen2ForCausalLM

    dev = torch.device(args.device)
    preset = args.preset or ("cuda" if dev.type == "cuda" else "cpu")
    P = PRESETS[preset]
    bs = args.batch_size or P["batch_size"]
    peak = args.lr or P["lr"]
    ckpt_every = args.ckpt_every or P["ckpt_every"]
    threads = P["threads"]
    if threads:
        torch.set_num_threads(threads)
    work = Path(args.work)
    run = Path(args.run_dir) if args.run_dir else work / ("run" if preset == "cpu" else "run-cuda")
    run.mkdir(parents=True, exist_ok=True)
    logf = open(run / "train.log", "a", buffering=1)

    def log(msg):
        line = f"{time.strftime('%Y-%m-%d %H:%M:%S')} {msg}"
        print(line, flush=True)
        logf.write(line + "\n")

    data = Data(Path(args.data) if args.data else work / "data", args.seed)
    seq_len = data.meta["seq_len"]
    tok_cfg = json.loads((work / "tokenizer" / "tokenizer.json").read_text())
    added = {t["content"]: t["id"] for t in tok_cfg["added_tokens"]}
    eos_id = added["<|endoftext|>"]
    fim_ids = tuple(added[t] for t in ("<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>", "<|endoftext|>"))
    weights = None if args.first_weight == args.middle_weight == 1.0 else (fim_ids, args.first_weight, args.middle_weight)
    total_tokens = args.total_tokens or P["total_tokens"]
    tokens_per_step = bs * seq_len
    total_steps = max(1, total_tokens // tokens_per_step)
    warmup = max(10, int(args.warmup_frac * total_steps))

    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    mcfg = model_config(preset, data.meta["vocab_size"], seq_len, eos_id)
    model = Qwen2ForCausalLM(Qwen2Config(**mcfg))
    init_from = None
    if args.init_from:
        from safetensors.torch import load_file
        src = Path(args.init_from)
        missing = [f for f in ("config.json", "tokenizer.json", "model.safetensors") if not (src / f).is_file()]
        if missing:
            raise SystemExit(f"--init-from {src}: not an exported model directory (missing {', '.join(missing)})")
        src_cfg = json.loads((src / "config.json").read_text())
        for k in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                  "num_attention_heads", "num_key_value_heads"):
            if src_cfg.get(k) != mcfg[k]:
                raise SystemExit(f"--init-from {src}: {k} is {src_cfg.get(k)}, this preset has {mcfg[k]}")
        src_tok = json.loads((src / "tokenizer.json").read_text())
        if src_tok["model"]["vocab"] != tok_cfg["model"]["vocab"]:
            raise SystemExit(f"--init-from {src}: its tokenizer differs from {work / 'tokenizer'}")
        sd = {k: v.float() for k, v in load_file(str(src / "model.safetensors")).items()}
        if "lm_head.weight" not in sd:
            sd["lm_head.weight"] = sd["model.embed_tokens.weight"]
        missing, unexpected = model.load_state_dict(sd, strict=False)
        if [k for k in missing if k != "lm_head.weight"] or unexpected:
            raise SystemExit(f"--init-from {src}: missing {missing}, unexpected {unexpected}")
        model.tie_weights()
        init_from = {"dir": src.name, "training_meta": json.loads((src / "training_meta.json").read_text())
                     if (src / "training_meta.json").exists() else None}
    model.to(dev)
    n_params = sum(p.numel() for p in model.parameters())
    n_embed = model.model.embed_tokens.weight.numel()
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=peak, betas=(0.9, 0.95), eps=1e-8, fused=False)
    step, tokens_seen, elapsed = 0, 0, 0.0
    ck_path = run / "ckpt.pt"
    if ck_path.exists() and not args.fresh:
        ck = torch.load(ck_path, map_location="cpu", weights_only=False)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["opt"])
        step, tokens_seen, elapsed = ck["step"], ck["tokens_seen"], ck.get("elapsed", 0.0)
        torch.set_rng_state(ck["torch_rng"])
        log(f"resumed from {ck_path.name} at step {step} ({tokens_seen} tokens)")
    if args.precision == "auto":
        autocast = dev.type == "cuda" or (dev.type == "cpu" and torch.backends.mkldnn.is_available()
                                          and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    else:
        autocast = args.precision == "bf16"
    meta = {"preset": preset, "seed": args.seed, "batch_size": bs, "seq_len": seq_len, "peak_lr": peak,
            "warmup_steps": warmup, "total_steps": total_steps, "params": n_params,
            "non_embedding_params": n_params - n_embed, "device": str(dev), "threads": threads,
            "data_rows": data.n, "data_tokens": data.n * (seq_len + 1),
            "precision": "bf16 autocast" if autocast else "fp32", "init_from": init_from,
            "first_weight": args.first_weight, "middle_weight": args.middle_weight, "row_offset": args.row_offset}
    log(f"config {json.dumps(meta)}")

    def save():
        tmp = run / "ckpt.pt.tmp"
        torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "step": step,
                    "tokens_seen": tokens_seen, "elapsed": elapsed, "torch_rng": torch.get_rng_state(),
                    "model_config": mcfg, "meta": dict(meta, elapsed_s=elapsed)}, tmp)
        os.replace(tmp, ck_path)

    @torch.no_grad()
    def val_loss(hits=None):
        """Unweighted validation loss; `hits` collects first-middle-token greedy hits."""
        model.eval()
        ls = []
        for i in range(0, len(data.val), bs):
            ls.append(loss_fn(model, torch.from_numpy(data.val[i:i + bs].astype(np.int64)), dev, autocast,
                              first_hits=None if hits is None else (fim_ids, hits)).item())
        model.train()
        return sum(ls) / len(ls)

    def val_report():
        hits = []
        v = val_loss(hits)
        h, n = sum(a for a, _ in hits), sum(b for _, b in hits)
        return f"val_loss {v:.4f} first_middle_top1 {h}/{n}"

    if init_from and step == 0:
        log(f"initialised from {args.init_from}: {val_report()}")
    model.train()
    t_last, tok_last = time.time(), 0
    stop_at = total_steps if args.max_steps is None else min(total_steps, step + args.max_steps)
    while step < stop_at:
        lr = lr_at(step, total_steps, warmup, peak)
        for g in opt.param_groups:
            g["lr"] = lr
        t0 = time.time()
        loss = loss_fn(model, data.batch(step, bs, args.row_offset), dev, autocast, weights)
        loss.backward()
        gn = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        step += 1
        tokens_seen += tokens_per_step
        tok_last += tokens_per_step
        elapsed += time.time() - t0
        if step % args.log_every == 0 or step == stop_at:
            now = time.time()
            tps = tok_last / (now - t_last)
            eta = (total_steps - step) * tokens_per_step / max(tps, 1e-9)
            log(f"step {step}/{total_steps} loss {loss.item():.4f} lr {lr:.2e} gnorm {gn:.2f} "
                f"tok/s {tps:.0f} tokens {tokens_seen} elapsed {elapsed / 60:.1f}m eta {eta / 60:.1f}m")
            t_last, tok_last = now, 0
        if step % ckpt_every == 0 or step == stop_at:
            save()
            log(f"checkpoint step {step} {val_report()}")
            t_last, tok_last = time.time(), 0
    if step >= total_steps and not args.no_export:
        from export import export
        meta.update({"step": step, "tokens_seen": tokens_seen, "train_time_s": round(elapsed),
                     "final_val_loss": round(val_loss(), 4), "val_rows": len(data.val)})
        rep = export(model, work / "tokenizer", args.export_dir, meta, log=log)
        (run / "export_report.json").write_text(json.dumps(rep, indent=1))
        log("done")


if __name__ == "__main__":
    main()
