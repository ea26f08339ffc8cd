#!/usr/bin/env python3
"""Writes tests/fixtures/ggml-blocks: tensors of every ggml type the engine computes on, as raw
bytes in ggml's layout (`<name>.bin`), with gguf-py's dequantization of them (`<name>.f32`,
little-endian f32) and their shapes (`index.json`), for `tests/ggml_blocks.rs`.

Random blocks (scales in a sane range, every other byte random) for Q4_0, Q4_1, Q8_0, Q4_K,
Q5_K, Q6_K, F16, BF16, F32; with `--gguf FILE`, also the first rows of one tensor of each of
the file's quantized types (real blocks). In `converted/`, random Q5_0 and Q5_1 blocks, the
types the engine converts to q8 at load. Needs the `gguf` and `numpy` packages.

    python3 server/engine/tests/make_ggml_blocks.py [--gguf SmolLM2-135M-Instruct.Q4_1.gguf]
"""

import argparse
import json
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType as T
from gguf import GGUFReader
from gguf.quants import dequantize

OUT = Path(__file__).parent / "fixtures" / "ggml-blocks"
# Types the engine converts at load (to q8) instead of computing on: the same files, in their
# own directory and index.
CONVERTED_OUT = OUT / "converted"

# Block layouts: bytes per block, weights per block, offsets of the f16 scale fields.
LAYOUT = {
    T.Q4_0: (18, 32, [0]),
    T.Q4_1: (20, 32, [0, 2]),
    T.Q8_0: (34, 32, [0]),
    T.Q4_K: (144, 256, [0, 2]),
    T.Q5_K: (176, 256, [0, 2]),
    T.Q6_K: (210, 256, [208]),
}
CONVERTED = {
    T.Q5_0: (22, 32, [0]),
    T.Q5_1: (24, 32, [0, 2]),
}


def random_blocks(rng, qtype, rows, cols):
    size, per, scales = {**LAYOUT, **CONVERTED}[qtype]
    raw = rng.integers(0, 256, size=(rows * cols // per, size), dtype=np.uint8)
    for off in scales:
        # Q4_0's scale (ggml's quantizer makes it negative as often as not) and Q4_1's minimum
        # may be negative; the k-quants' super-block scales are positive.
        lo = -0.5 if qtype in (T.Q4_0, T.Q8_0, T.Q5_0) or (qtype in (T.Q4_1, T.Q5_1) and off == 2) else 0.001
        val = rng.uniform(lo, 0.05 if per == 256 else 0.5, size=raw.shape[0]).astype(np.float16)
        raw[:, off : off + 2] = val.view(np.uint8).reshape(-1, 2)
    return raw.reshape(rows, -1)


def floats(rng, qtype, rows, cols):
    v = rng.uniform(-2, 2, size=(rows, cols)).astype(np.float32)
    if qtype == T.F32:
        return v.view(np.uint8), v
    if qtype == T.F16:
        h = v.astype(np.float16)
        return h.view(np.uint8), h.astype(np.float32)
    bits = (v.view(np.uint32) >> 16).astype(np.uint16)  # truncated: any bit pattern is a bf16
    return bits.view(np.uint8), (bits.astype(np.uint32) << 16).view(np.float32)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gguf", type=Path)
    args = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(21)
    index = []

    def put(name, qtype, rows, cols, raw, ref):
        (OUT / f"{name}.bin").write_bytes(np.ascontiguousarray(raw).tobytes())
        (OUT / f"{name}.f32").write_bytes(np.ascontiguousarray(ref, dtype="<f4").tobytes())
        index.append({"name": name, "type": int(qtype), "rows": rows, "cols": cols})

    for qtype in LAYOUT:
        rows, cols = 5, 512
        raw = random_blocks(rng, qtype, rows, cols)
        put(f"random-{qtype.name.lower()}", qtype, rows, cols, raw, dequantize(raw, qtype))
    for qtype in [T.F32, T.F16, T.BF16]:
        raw, ref = floats(rng, qtype, 3, 40)
        put(f"random-{qtype.name.lower()}", qtype, 3, 40, raw, ref)
    if args.gguf:
        seen = set()
        for t in GGUFReader(args.gguf).tensors:
            if t.tensor_type in LAYOUT and t.tensor_type not in seen and len(t.shape) == 2:
                seen.add(t.tensor_type)
                cols = int(t.shape[0])
                raw = np.asarray(t.data).reshape(int(t.shape[1]), -1)[:4]
                put(f"smollm2-{t.name}", t.tensor_type, 4, cols, raw, dequantize(raw, t.tensor_type))
    (OUT / "index.json").write_text(json.dumps(index, indent=1) + "\n")

    CONVERTED_OUT.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(22)
    converted = []
    for qtype in CONVERTED:
        rows, cols = 5, 512
        raw = random_blocks(rng, qtype, rows, cols)
        name = f"random-{qtype.name.lower()}"
        (CONVERTED_OUT / f"{name}.bin").write_bytes(np.ascontiguousarray(raw).tobytes())
        (CONVERTED_OUT / f"{name}.f32").write_bytes(np.ascontiguousarray(dequantize(raw, qtype), dtype="<f4").tobytes())
        converted.append({"name": name, "type": int(qtype), "rows": rows, "cols": cols})
    (CONVERTED_OUT / "index.json").write_text(json.dumps(converted, indent=1) + "\n")


if __name__ == "__main__":
    main()
