#!/usr/bin/env bash
# ghostline's engine against llama.cpp on the same checkpoint, same threads, in one run.
#
#   server/engine/benches/llama_cpp.sh [CHECKPOINT_DIR | FILE.gguf] [THREADS]
#
# Without a checkpoint, a random Qwen2 of the house model's shape is made in a temp dir; SHAPE
# (extra flags for make_fixtures.py --random-checkpoint) picks another, e.g. about 4x:
#   SHAPE="--hidden 384 --intermediate 1024 --layers 8 --heads 6 --kv-heads 2 --vocab 16384"
#
# llama.cpp comes from the source distribution of the llama-cpp-python package (pip fetches it
# from PyPI; version LLAMA_CPP_PYTHON, default below): its vendored llama.cpp is built with
# cmake into a cache folder once, with GGML_NATIVE=OFF and the instruction sets this CPU lists
# in /proc/cpuinfo turned on one by one (GGML_NATIVE=ON dies with an illegal instruction on
# VMs that advertise AMX), AMX off. Set LLAMA_CPP_DIR to a llama.cpp source tree with a
# build/bin to skip the download and build.
#
# A checkpoint directory is turned into GGUF files in f32, bf16 and q8_0 by llama.cpp's own
# convert_hf_to_gguf.py, and ghostline runs the directory with --weights f32, bf16, q8. A
# .gguf file is run by both engines as it is (ghostline computes on its blocks as stored),
# then converted: llama-quantize --allow-requantize makes its Q8_0 and BF16 versions, against
# ghostline's --weights q8 and bf16 on the original file (both from the same dequantized
# weights).
#
# Measured, each with THREADS threads (default 2):
#   - prefill of one prompt of 128, 512 and 1500 tokens, tokens/s (llama-bench -p; ghostline's
#     throughput bench, time to the last position's logits);
#   - decode of 32 tokens at batch 1 (llama-bench -n), and at batch 8 and 32 after 128-token
#     prompts (llama-batched-bench -npl; ghostline: one batched forward per step);
#   - peak RSS of each process (/usr/bin/time -f %M): llama-bench against a ghostline run doing
#     the same work (prefills and batch-1 decode), and llama-batched-bench against ghostline's
#     run of everything;
#   (both engines keep the KV cache in f16, their defaults; KV=f32 runs ghostline's reference);
#   - ghostline's latency figures (--latency): cold 1500-token prompt, warm prompt with 8 new
#     tokens after a cached 1500-token prefix, 32 decode steps.
# REPS repeats each (default 5); min / median / max per figure. Results: one JSON line per
# figure in $OUT_DIR/results.jsonl (default a temp dir), then a markdown table on stdout.
set -euo pipefail
cd "$(dirname "$0")/../../.."
repo="$PWD"
threads="${2:-2}"
reps="${REPS:-5}"
ver="${LLAMA_CPP_PYTHON:-0.3.36}"
cache="${GHOSTLINE_BENCH_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ghostline-bench}"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
out="${OUT_DIR:-$tmp}"
mkdir -p "$out"
results="$out/results.jsonl"
: > "$results"

# --- llama.cpp -------------------------------------------------------------------------------
src="${LLAMA_CPP_DIR:-}"
if [ -z "$src" ]; then
  src="$cache/llama_cpp_python-$ver/vendor/llama.cpp"
  if [ ! -x "$src/build/bin/llama-batched-bench" ] || [ ! -x "$src/build/bin/llama-quantize" ]; then
    mkdir -p "$cache"
    if [ ! -d "$cache/llama_cpp_python-$ver" ]; then
      python3 -m pip download --no-deps --no-binary llama-cpp-python -d "$cache" "llama-cpp-python==$ver" >&2
      tar -xzf "$cache/llama_cpp_python-$ver.tar.gz" -C "$cache"
    fi
    command -v cmake >/dev/null || { echo "cmake is needed to build llama.cpp (apt-get install cmake)" >&2; exit 1; }
    # The CPU's own instruction sets, from /proc/cpuinfo (not GGML_NATIVE: see above).
    flag() { if grep -m1 '^flags' /proc/cpuinfo | grep -qw "$1"; then echo ON; else echo OFF; fi; }
    isa=(-DGGML_AVX="$(flag avx)" -DGGML_AVX2="$(flag avx2)" -DGGML_FMA="$(flag fma)" -DGGML_F16C="$(flag f16c)"
      -DGGML_BMI2="$(flag bmi2)" -DGGML_AVX512="$(flag avx512f)" -DGGML_AVX512_VBMI="$(flag avx512vbmi)"
      -DGGML_AVX512_VNNI="$(flag avx512_vnni)" -DGGML_AVX512_BF16="$(flag avx512_bf16)"
      -DGGML_AVX_VNNI="$(flag avx_vnni)" -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF)
    echo "llama.cpp build flags: ${isa[*]}" >&2
    cmake -S "$src" -B "$src/build" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=OFF "${isa[@]}" -DLLAMA_CURL=OFF \
      -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_OPENSSL=OFF >&2
    cmake --build "$src/build" -j "$(nproc)" --target llama-bench llama-batched-bench llama-quantize >&2
  fi
fi
bin="$src/build/bin"

# --- checkpoint ------------------------------------------------------------------------------
dir="${1:-}"
if [ -z "$dir" ]; then
  dir="$tmp/random-qwen2"
  python3 server/engine/tests/make_fixtures.py --random-checkpoint "$dir" \
    ${SHAPE:---hidden 256 --intermediate 768 --layers 4 --heads 4 --kv-heads 2 --vocab 8192} >&2
fi
# Cases: "ghostline's --weights:llama.cpp's GGUF file:label" (stored: the file's blocks as they are).
export LD_LIBRARY_PATH="$bin${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
cases=()
if [ -f "$dir" ]; then
  for t in Q8_0 BF16; do
    "$bin/llama-quantize" --allow-requantize "$dir" "$tmp/model-$t.gguf" "$t" >"$tmp/quantize-$t.log" 2>&1 \
      || { cat "$tmp/quantize-$t.log" >&2; exit 1; }
  done
  cases=("stored:$dir:as-stored" "q8:$tmp/model-Q8_0.gguf:q8" "bf16:$tmp/model-BF16.gguf:bf16")
else
  for t in f32 bf16 q8_0; do
    python3 server/engine/benches/gguf_convert.py "$src" "$dir" "$tmp/model-$t.gguf" "$t" >"$tmp/convert-$t.log" 2>&1 \
      || { cat "$tmp/convert-$t.log" >&2; exit 1; }
  done
  cases=("f32:$tmp/model-f32.gguf:f32" "bf16:$tmp/model-bf16.gguf:bf16" "q8:$tmp/model-q8_0.gguf:q8")
fi

# --- ghostline -------------------------------------------------------------------------------
cargo build --release -p ghostline-engine --bench throughput >&2
gl="$(ls -t "${CARGO_TARGET_DIR:-target}"/release/deps/throughput-* | grep -v '\.d$' | head -1)"

echo "# cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores," \
  "flags: $(grep -m1 -o -w -E 'avx512f|avx512_vnni|avx512_bf16|avx2|fma' /proc/cpuinfo | sort -u | xargs)," \
  "threads $threads, reps $reps" | tee "$out/machine.txt"

rss() { # rss NAME CMD... : runs CMD, keeps its stdout, appends its peak RSS as a JSON line
  local name="$1"; shift
  /usr/bin/time -f '%M' -o "$tmp/rss" "$@"
  echo "{\"engine\":\"$name\",\"peak_rss_mib\":$(( $(cat "$tmp/rss") / 1024 ))}" >> "$results"
}

for case in "${cases[@]}"; do
  IFS=: read -r weights gguf label <<<"$case"
  wargs=(--weights "$weights")
  # llama.cpp: prefill at each length and batch-1 decode.
  rss "llama.cpp-$label" "$bin/llama-bench" -m "$gguf" -t "$threads" -r "$reps" \
    -p 128,512,1500 -n 32 -o json > "$tmp/lb-$label.json" 2>"$tmp/lb-$label.err" || { cat "$tmp/lb-$label.err" >&2; exit 1; }
  # llama.cpp: batched decode, `reps` times (it runs each configuration once; the first run's
  # peak RSS is kept).
  for r in $(seq "$reps"); do
    bb=("$bin/llama-batched-bench" -m "$gguf" -t "$threads" -c 8192 -b 2048 -ub 512
      -npp 128 -ntg 32 -npl 1,8,32 --output-format jsonl)
    if [ "$r" = 1 ]; then bb=(rss "llama.cpp-$label-batched" "${bb[@]}"); fi
    "${bb[@]}" 2>&1 | grep '^{"n_kv_max' >> "$tmp/lbb-$label.jsonl" || true
  done
  # ghostline: everything (its peak RSS is that of the batched work too), then once more doing
  # only what llama-bench does, for a peak RSS of the same work. Each line gets its case.
  rss "ghostline-$label-batched" env GHOSTLINE_THREADS="$threads" "$gl" --model "$dir" \
    "${wargs[@]}" --kv "${KV:-f16}" --prompts 128,512,1500 --decode 32 --batches 1,8,32 --reps "$reps" --latency \
    2>/dev/null | sed "s/^{/{\"case\":\"$label\",/" >> "$results"
  rss "ghostline-$label" env GHOSTLINE_THREADS="$threads" "$gl" --model "$dir" \
    "${wargs[@]}" --kv "${KV:-f16}" --prompts 128,512,1500 --decode 32 --batches 1 --reps 1 >/dev/null 2>&1
  python3 - "$tmp/lb-$label.json" "$tmp/lbb-$label.jsonl" "$label" >> "$results" <<'EOF'
import json, sys
lb, lbb, label = sys.argv[1], sys.argv[2], sys.argv[3]
def line(phase, batch, tokens, rates, source):
    rates = sorted(rates)
    print(json.dumps({"case": label, "engine": "llama.cpp", "source": source, "phase": phase, "batch": batch,
                      "tokens": tokens, "tok_per_s_min": round(rates[0], 1), "tok_per_s": round(rates[len(rates) // 2], 1),
                      "tok_per_s_max": round(rates[-1], 1)}))
for r in json.load(open(lb)):
    rates = r.get("samples_ts") or [r["avg_ts"]]
    if r["n_prompt"] > 0 and r["n_gen"] == 0:
        line("prefill", 1, r["n_prompt"], rates, "llama-bench")
    elif r["n_gen"] > 0 and r["n_prompt"] == 0:
        line("decode", 1, r["n_gen"], rates, "llama-bench")
by = {}
for l in open(lbb):
    r = json.loads(l)
    by.setdefault(r["pl"], []).append(r["speed_tg"])
for pl, rates in sorted(by.items()):
    line("decode", pl, pl * 32, rates, "llama-batched-bench")
EOF
done

python3 - "$results" "${cases[@]}" <<'EOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
labels = [c.rsplit(":", 1)[1] for c in sys.argv[2:]]
def get(case, engine, phase, batch, tokens, source=None):
    for r in rows:
        if (r.get("case") == case and r.get("engine") == engine and r.get("phase") == phase and r.get("batch") == batch
                and (tokens is None or r.get("tokens") == tokens) and (source is None or r.get("source") == source)):
            return r
def rss(engine):
    for r in rows:
        if r.get("engine") == engine and "peak_rss_mib" in r and "case" not in r:
            return r["peak_rss_mib"]
cases = [("prefill", 1, 128), ("prefill", 1, 512), ("prefill", 1, 1500), ("decode", 1, None), ("decode", 8, None),
         ("decode", 32, None)]
print("| measurement | case | ghostline tok/s (min / median / max) | llama.cpp tok/s (min / median / max) | ratio (medians) |")
print("| --- | --- | --- | --- | ---: |")
fmt3 = lambda r: f"{r['tok_per_s_min']:,.1f} / **{r['tok_per_s']:,.1f}** / {r['tok_per_s_max']:,.1f}" if r else "n/a"
ratio = lambda a, b: f"{a['tok_per_s'] / b['tok_per_s']:.2f}x" if a and b else "n/a"
for phase, batch, tokens in cases:
    label = f"prefill {tokens} tok" if phase == "prefill" else f"decode 32 tok, batch {batch}"
    for c in labels:
        a = get(c, "ghostline", phase, batch, tokens)
        # Batch-1 decode: llama-bench's figure, then llama-batched-bench's.
        src = "llama-bench" if (phase, batch) == ("decode", 1) else None
        b = get(c, "llama.cpp", phase, batch, tokens if phase == "prefill" else None, src)
        print(f"| {label} | {c} | {fmt3(a)} | {fmt3(b)} | {ratio(a, b)} |")
        if (phase, batch) == ("decode", 1):
            bb = get(c, "llama.cpp", phase, 1, None, "llama-batched-bench")
            print(f"| {label} (llama-batched-bench) | {c} | | {fmt3(bb)} | {ratio(a, bb)} |")
print()
print("| peak RSS, MiB | " + " | ".join(f"{c}: ghostline {rss('ghostline-' + c)} / llama.cpp {rss('llama.cpp-' + c)}"
                                        for c in labels) + " |")
print("| same, with batches 8 and 32 (llama.cpp: llama-batched-bench) | "
      + " | ".join(f"{c}: ghostline {rss('ghostline-' + c + '-batched')} / llama.cpp {rss('llama.cpp-' + c + '-batched')}"
                   for c in labels) + " |")
print()
for r in rows:
    if r.get("engine") == "ghostline" and "ms" in r:
        print(f"- ghostline {r['case']} {r['phase']}: {r['ms_min']:.1f} / **{r['ms']:.1f}** / {r['ms_max']:.1f} ms")
EOF
echo "results: $results" >&2
