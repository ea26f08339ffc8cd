#!/usr/bin/env python3
"""Train the ghostline-tiny byte-level BPE tokenizer (HF `tokenizers`).

Qwen2-style: the Qwen2 pre-tokenizer split regex + byte-level alphabet, no BOS,
eos = <|endoftext|>, and the Qwen2.5-Coder special tokens (FIM and repo-level)
as added special tokens so each one is a single id.  Trained on the training
split only (work/corpus/train.jsonl); held-out files never reach it.

Writes tokenizer.json, tokenizer_config.json and generation_config.json to --out
(default: work/tokenizer; train.py's export copies them next to the weights).
"""
import argparse
import json
import random
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

HERE = Path(__file__).resolve().parent

SPECIAL_TOKENS = ["<|endoftext|>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>",
                  "<|fim_pad|>", "<|file_sep|>", "<|repo_name|>"]
# The split pattern of the Qwen2 tokenizer (GPT-4 style, digits one by one).
QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
               r"\s*[\r\n]+|\s+(?!\S)|\s+")
MODEL_MAX_LENGTH = 2048


def build_tokenizer():
    tok = Tokenizer(models.BPE(byte_fallback=False, unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False, trim_offsets=False),
    ])
    tok.decoder = decoders.ByteLevel(add_prefix_space=False, use_regex=False, trim_offsets=False)
    return tok


def write_configs(out: Path, tok: Tokenizer):
    added = {}
    for t in SPECIAL_TOKENS:
        added[str(tok.token_to_id(t))] = {"content": t, "lstrip": False, "normalized": False,
                                          "rstrip": False, "single_word": False, "special": True}
    cfg = {
        "add_bos_token": False,
        "add_prefix_space": False,
        "added_tokens_decoder": added,
        "additional_special_tokens": SPECIAL_TOKENS[1:],
        "bos_token": None,
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|endoftext|>",
        "errors": "replace",
        "model_max_length": MODEL_MAX_LENGTH,
        "pad_token": "<|endoftext|>",
        "split_special_tokens": False,
        "tokenizer_class": "PreTrainedTokenizerFast",
        "unk_token": None,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    (out / "special_tokens_map.json").write_text(json.dumps({
        "additional_special_tokens": SPECIAL_TOKENS[1:], "eos_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>"}, indent=2) + "\n")
    eos = tok.token_to_id("<|endoftext|>")
    gen = {"bos_token_id": None, "eos_token_id": eos, "pad_token_id": eos, "do_sample": False,
           "max_new_tokens": 64}
    (out / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default=str(HERE / "work"))
    ap.add_argument("--out", default=None)
    ap.add_argument("--vocab-size", type=int, default=8192)
    ap.add_argument("--sample-bytes", type=int, default=25_000_000,
                    help="train on a seeded random sample of this many bytes of the training split")
    ap.add_argument("--seed", type=int, default=1234)
    args = ap.parse_args()
    work = Path(args.work)
    out = Path(args.out) if args.out else work / "tokenizer"
    out.mkdir(parents=True, exist_ok=True)

    docs = [json.loads(l)["text"] for l in open(work / "corpus" / "train.jsonl")]
    random.Random(args.seed).shuffle(docs)
    sample, n = [], 0
    for d in docs:
        if n >= args.sample_bytes:
            break
        sample.append(d)
        n += len(d)

    tok = build_tokenizer()
    trainer = trainers.BpeTrainer(
        vocab_size=args.vocab_size - len(SPECIAL_TOKENS), min_frequency=2, show_progress=False,
        special_tokens=[], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), max_token_length=24)
    tok.train_from_iterator(sample, trainer=trainer, length=len(sample))
    # special tokens go after the BPE vocabulary (ids vocab-7 .. vocab-1), as in Qwen2
    tok.add_special_tokens(SPECIAL_TOKENS)
    tok.save(str(out / "tokenizer.json"))
    write_configs(out, tok)

    # round-trip and compression check
    chars = toks = 0
    for d in sample[:300]:
        ids = tok.encode(d).ids
        assert tok.decode(ids, skip_special_tokens=False) == d
        chars += len(d)
        toks += len(ids)
    assert tok.encode("<|fim_prefix|>x<|fim_suffix|>").ids[0] == tok.token_to_id("<|fim_prefix|>")
    print(json.dumps({"vocab_size": tok.get_vocab_size(), "sample_bytes": n,
                      "chars_per_token": round(chars / toks, 3),
                      "special_ids": {t: tok.token_to_id(t) for t in SPECIAL_TOKENS}}))


if __name__ == "__main__":
    main()
