#!/usr/bin/env python3
"""Convert a Hugging Face checkpoint to GGUF with llama.cpp's own converter, for benchmarks.

    python3 gguf_convert.py LLAMA_CPP_DIR CHECKPOINT_DIR OUT.gguf OUTTYPE   # OUTTYPE: f32 | bf16 | q8_0

llama.cpp's converter identifies a BPE tokenizer's pre-tokenizer by hashing how it splits a
test string, and refuses tokenizers it has not seen. ghostline's house tokenizer (and the
random benchmark checkpoints) use the Qwen2 split pattern, so the check is answered "qwen2",
and the vocabulary is read from tokenizer.json (there is no sentencepiece model).
Only speed is measured with these files; nothing here changes the weights or the graph.
"""
import sys
from pathlib import Path


def main():
    if len(sys.argv) != 5:
        sys.exit(__doc__)
    src, ckpt, out, outtype = sys.argv[1:]
    src = Path(src)
    sys.path.insert(0, str(src / "gguf-py"))
    sys.path.insert(0, str(src))
    import convert_hf_to_gguf as conv

    base = getattr(conv, "TextModel", None)
    if base is None:
        from conversion.base import TextModel as base
    base.get_vocab_base_pre = lambda self, tokenizer: "qwen2"
    # A tokenizer.json-only checkpoint: the BPE vocabulary, without probing for sentencepiece.
    try:
        from conversion.qwen import Qwen2Model
    except ImportError:
        Qwen2Model = conv.Qwen2Model
    Qwen2Model.set_vocab = lambda self: self._set_vocab_gpt2()
    sys.argv = ["convert_hf_to_gguf.py", ckpt, "--outfile", out, "--outtype", outtype]
    conv.main()


if __name__ == "__main__":
    main()
