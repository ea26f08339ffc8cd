#!/usr/bin/env python3
"""Make the engine's exactness fixtures: tiny random Llama and Qwen2 checkpoints plus the logits
and greedy continuations that Hugging Face transformers computes for them on the CPU.

    python3 server/engine/tests/make_fixtures.py            # rewrites server/engine/tests/fixtures/
    python3 server/engine/tests/make_fixtures.py --random-checkpoint DIR --hidden 384 ...
                                                            # a random checkpoint for benchmarks

The Rust tests (server/engine/tests/hf_parity.rs) read the fixtures and need no Python.
Requires: torch, transformers, tokenizers, safetensors.
"""
import argparse
import json
import os
import shutil
import sys

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURES = os.path.join(HERE, "fixtures")

# Text for the tiny tokenizers: code-like, with some non-ASCII so byte fallback is exercised.
CORPUS = [
    "def add(a, b):\n    return a + b\n",
    "fn main() {\n    let x = vec![1, 2, 3];\n    println!(\"{:?}\", x);\n}\n",
    "class Point:\n    def __init__(self, x, y):\n        self.x = x\n        self.y = y\n",
    "import os\nimport sys\n\nfor name in os.listdir('.'):\n    print(name)\n",
    "impl Display for Point {\n    fn fmt(&self, f: &mut Formatter) -> Result { write!(f, \"({}, {})\", self.x, self.y) }\n}\n",
    "# café naïve – 数据 🚀 emoji\nresult = [x * 2 for x in range(10) if x % 3 == 0]\n",
    "while True:\n    line = input()\n    if not line:\n        break\n",
] * 20

PROMPTS = [
    "def add(a, b):\n",
    "fn main() {\n    let",
    "class Point:\n    def __init__(self",
    "# café 数据 🚀\n",
    "x",
    "for name in os.listdir('.'):\n    print(name)\nwhile True:\n    line = input()\n    if not line:\n",
]

QWEN_SPECIALS = ["<|endoftext|>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>",
                 "<|file_sep|>", "<|repo_name|>"]


def train_tokenizer(style, vocab_size):
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<s>", "</s>"] if style == "llama" else QWEN_SPECIALS
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(CORPUS, trainer)
    if style == "llama":
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                           special_tokens=[("<s>", tok.token_to_id("<s>"))])
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    return tok


def save_tokenizer(tok, style, out):
    tok.save(os.path.join(out, "tokenizer.json"))
    if style == "llama":
        cfg = {"bos_token": "<s>", "eos_token": "</s>", "add_bos_token": True, "add_eos_token": False,
               "tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": 512}
    else:
        cfg = {"bos_token": None, "eos_token": "<|endoftext|>", "pad_token": "<|fim_pad|>",
               "additional_special_tokens": QWEN_SPECIALS[1:], "tokenizer_class": "PreTrainedTokenizerFast",
               "model_max_length": 512}
    with open(os.path.join(out, "tokenizer_config.json"), "w") as f:
        json.dump(cfg, f, indent=2)


def randomize(model, seed, scale):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(scale * torch.randn(p.shape, generator=g))


def save_model(model, out, dtype):
    model.to(dtype).save_pretrained(out, safe_serialization=True)
    model.to(torch.float32)


def greedy(model, ids, n):
    """Greedy continuation by full recompute each step: what transformers computes, no cache."""
    out = []
    cur = torch.tensor([ids])
    for _ in range(n):
        with torch.no_grad():
            logits = model(cur).logits[0, -1]
        nxt = int(torch.argmax(logits))
        out.append(nxt)
        cur = torch.cat([cur, torch.tensor([[nxt]])], dim=1)
    return out


def make(name, arch, style, cfg_kwargs, dtype, seed, vocab=384, scale=0.15):
    out = os.path.join(FIXTURES, name)
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    torch.manual_seed(seed)
    tok = train_tokenizer(style, vocab)
    save_tokenizer(tok, style, out)
    specials = {"<s>": tok.token_to_id("<s>"), "</s>": tok.token_to_id("</s>"),
                "<|endoftext|>": tok.token_to_id("<|endoftext|>")}
    common = dict(vocab_size=tok.get_vocab_size(), max_position_embeddings=512, rms_norm_eps=1e-5)
    if style == "llama":
        common.update(bos_token_id=specials["<s>"], eos_token_id=specials["</s>"])
    else:
        common.update(bos_token_id=None, eos_token_id=specials["<|endoftext|>"])
    common.update(cfg_kwargs)
    if arch == "llama":
        config = LlamaConfig(**common)
        model = LlamaForCausalLM(config)
    else:
        config = Qwen2Config(**common)
        model = Qwen2ForCausalLM(config)
    model.eval()
    randomize(model, seed, scale)
    save_model(model, out, dtype)
    # Reload exactly as a user would, computing in f32 from the stored (possibly 16-bit) weights.
    ref = (LlamaForCausalLM if arch == "llama" else Qwen2ForCausalLM).from_pretrained(out, dtype=torch.float32)
    ref.eval()
    hf_tok = PreTrainedTokenizerFast.from_pretrained(out)
    cases = []
    for p in PROMPTS:
        ids = hf_tok(p)["input_ids"]
        with torch.no_grad():
            logits = ref(torch.tensor([ids])).logits[0]
        cont = greedy(ref, ids, 12)
        cases.append({
            "prompt": p,
            "input_ids": ids,
            "last_logits": [float(x) for x in logits[-1]],
            "greedy": cont,
            "greedy_text": hf_tok.decode(cont, skip_special_tokens=True),
        })
    meta = {"name": name, "arch": arch, "dtype": str(dtype).replace("torch.", ""),
            "transformers": __import__("transformers").__version__, "torch": torch.__version__, "cases": cases}
    with open(os.path.join(out, "expected.json"), "w") as f:
        json.dump(meta, f)
    print(f"{name}: {sum(p.numel() for p in ref.parameters())} params, dtype {dtype}, vocab {common['vocab_size']}")


def make_all():
    os.makedirs(FIXTURES, exist_ok=True)
    # GQA, untied embeddings, llama3 rope scaling, f32 storage, BOS from the post-processor.
    make("llama-gqa-f32", "llama", "llama",
         dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, tie_word_embeddings=False, rope_theta=500000.0,
              rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                            "high_freq_factor": 4.0, "original_max_position_embeddings": 64}),
         torch.float32, seed=1)
    # Odd geometry: head_dim 24 != hidden/heads, MQA, attention and MLP biases, tied, linear rope, f16.
    make("llama-bias-f16", "llama", "llama",
         dict(hidden_size=48, head_dim=24, intermediate_size=80, num_hidden_layers=3, num_attention_heads=4,
              num_key_value_heads=1, attention_bias=True, mlp_bias=True, tie_word_embeddings=True,
              rope_scaling={"rope_type": "linear", "factor": 2.0}),
         torch.float16, seed=2)
    # Qwen2: qkv bias, GQA, tied embeddings, bf16 storage, FIM special tokens.
    make("qwen2-tied-bf16", "qwen2", "qwen",
         dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, tie_word_embeddings=True, rope_theta=1000000.0),
         torch.bfloat16, seed=3)
    # Qwen2: plain multi-head attention, untied, f32.
    make("qwen2-mha-f32", "qwen2", "qwen",
         dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
              num_key_value_heads=2, tie_word_embeddings=False),
         torch.float32, seed=4)


def make_random_checkpoint(args):
    """A random Qwen2 checkpoint of a chosen shape, with a tokenizer, for speed benchmarks."""
    out = args.random_checkpoint
    os.makedirs(out, exist_ok=True)
    if args.tokenizer_from:
        for f in ("tokenizer.json", "tokenizer_config.json"):
            shutil.copy(os.path.join(args.tokenizer_from, f), out)
        vocab = Tokenizer.from_file(os.path.join(out, "tokenizer.json")).get_vocab_size()
    else:
        tok = train_tokenizer("qwen", 1000)
        save_tokenizer(tok, "qwen", out)
        vocab = args.vocab
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=max(vocab, args.vocab), hidden_size=args.hidden,
                         intermediate_size=args.intermediate, num_hidden_layers=args.layers,
                         num_attention_heads=args.heads, num_key_value_heads=args.kv_heads,
                         tie_word_embeddings=True, max_position_embeddings=4096, eos_token_id=0)
    model = Qwen2ForCausalLM(config)
    model.eval()
    randomize(model, 0, 0.05)
    dtype = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}[args.dtype]
    save_model(model, out, dtype)
    print(f"{out}: {sum(p.numel() for p in model.parameters())} params")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--random-checkpoint", metavar="DIR")
    ap.add_argument("--tokenizer-from", metavar="DIR")
    ap.add_argument("--hidden", type=int, default=384)
    ap.add_argument("--intermediate", type=int, default=1024)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--heads", type=int, default=6)
    ap.add_argument("--kv-heads", type=int, default=2)
    ap.add_argument("--vocab", type=int, default=16384)
    ap.add_argument("--dtype", default="f32", choices=["f32", "bf16", "f16"])
    a = ap.parse_args()
    torch.set_num_threads(1)
    if a.random_checkpoint:
        make_random_checkpoint(a)
    else:
        make_all()
    sys.exit(0)
