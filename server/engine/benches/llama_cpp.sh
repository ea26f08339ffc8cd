#!/usr/bin/env bash
# ghostline's engine against llama.cpp on the same checkpoint, same threads, in one run.
#
#   server/engine/benches/llama_cpp.sh [CHECKPOINT_DIR] [THREADS]
#
# Without a checkpoint, a random Qwen2 of the house model's shape is made in a temp dir; SHAPE
# (extra flags for make_fixtures.py --random-checkpoint) picks another, e.g. about 4x:
#   SHAPE="--hidden 384 --intermediate 1024 --layers 8 --heads 6 --kv-heads 2 --vocab 16384"
#
# llama.cpp comes from the source distribution of the llama-cpp-python package (pip fetches it
# from PyPI; version LLAMA_CPP_PYTHON, default below): its vendored llama.cpp is built with
# cmake (native CPU flags) into a cache folder once, and its own convert_hf_to_gguf.py turns
# the checkpoint into GGUF files in f32, bf16 and q8_0. Set LLAMA_CPP_DIR to a llama.cpp source
# tree with a build/bin to skip the download and build.
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
  if [ ! -x "$src/build/bin/llama-batched-bench" ]; then
    mkdir -p "$cache"
    if [ ! -d "$cache/llama_cpp_python-$ver" ]; then
      python3 -m pip download --no-deps --no-binary llama-cpp-python -d "$cache" "llama-cpp-python==$ver" >&2
      tar -xzf "$cache/llama_cpp_python-$ver.tar.gz" -C "$cache"
    fi
    command -v cmake >/dev/null || { echo "cmake is needed to build llama.cpp (apt-get install cmake)" >&2; exit 1; }
    cmake -S "$src" -B "$src/build" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DLLAMA_CURL=OFF \
      -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_OPENSSL=OFF >&2
    cmake --build "$src/build" -j "$(nproc)" --target llama-bench llama-batched-bench >&2
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
for t in f32 bf16 q8_0; do
  python3 server/engine/benches/gguf_convert.py "$src" "$dir" "$tmp/model-$t.gguf" "$t" >"$tmp/convert-$t.log" 2>&1 \
    || { cat "$tmp/convert-$t.log" >&2; exit 1; }
done

# --- ghostline -------------------------------------------------------------------------------
cargo build --release -p ghostline-engine --bench throughput >&2
gl="$(ls -t target/release/deps/throughput-* | grep -v '\.d$' | head -1)"

echo "# cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores," \
  "flags: $(grep -m1 -o -w -E 'avx512f|avx512_vnni|avx512_bf16|avx2|fma' /proc/cpuinfo | sort -u | xargs)," \
  "threads $threads, reps $reps" | tee "$out/machine.txt"

rss() { # rss NAME CMD... : runs CMD, keeps its stdout, appends its peak RSS as a JSON line
  local name="$1"; shift
  /usr/bin/time -f '%M' -o "$tmp/rss" "$@"
  echo "{\"engine\":\"$name\",\"peak_rss_mib\":$(( $(cat "$tmp/rss") / 1024 ))}" >> "$results"
}

for fmt in f32 bf16 q8; do
  gfmt="$fmt"; [ "$fmt" = q8 ] && gfmt=q8_0
  # llama.cpp: prefill at each length and batch-1 decode.
  rss "llama.cpp-$gfmt" "$bin/llama-bench" -m "$tmp/model-$gfmt.gguf" -t "$threads" -r "$reps" \
    -p 128,512,1500 -n 32 -o json > "$tmp/lb-$fmt.json" 2>"$tmp/lb-$fmt.err" || { cat "$tmp/lb-$fmt.err" >&2; exit 1; }
  # llama.cpp: batched decode, `reps` times (it runs each configuration once; the first run's
  # peak RSS is kept).
  for r in $(seq "$reps"); do
    bb=("$bin/llama-batched-bench" -m "$tmp/model-$gfmt.gguf" -t "$threads" -c 8192 -b 2048 -ub 512
      -npp 128 -ntg 32 -npl 8,32 --output-format jsonl)
    if [ "$r" = 1 ]; then bb=(rss "llama.cpp-$gfmt-batched" "${bb[@]}"); fi
    "${bb[@]}" 2>&1 | grep '^{"n_kv_max' >> "$tmp/lbb-$fmt.jsonl" || true
  done
  # ghostline: everything (its peak RSS is that of the batched work too), then once more doing
  # only what llama-bench does, for a peak RSS of the same work.
  rss "ghostline-$fmt-batched" env GHOSTLINE_THREADS="$threads" RAYON_NUM_THREADS="$threads" "$gl" --model "$dir" \
    --weights "$fmt" --kv "${KV:-f16}" --prompts 128,512,1500 --decode 32 --batches 1,8,32 --reps "$reps" --latency \
    2>/dev/null >> "$results"
  rss "ghostline-$fmt" env GHOSTLINE_THREADS="$threads" RAYON_NUM_THREADS="$threads" "$gl" --model "$dir" \
    --weights "$fmt" --kv "${KV:-f16}" --prompts 128,512,1500 --decode 32 --batches 1 --reps 1 >/dev/null 2>&1
  python3 - "$tmp/lb-$fmt.json" "$tmp/lbb-$fmt.jsonl" "$gfmt" >> "$results" <<'EOF'
import json, sys
lb, lbb, fmt = sys.argv[1], sys.argv[2], sys.argv[3]
name = f"llama.cpp-{fmt}"
def line(phase, batch, tokens, rates):
    rates = sorted(rates)
    print(json.dumps({"engine": name, "weights": fmt, "phase": phase, "batch": batch, "tokens": tokens,
                      "tok_per_s_min": round(rates[0], 1), "tok_per_s": round(rates[len(rates) // 2], 1),
                      "tok_per_s_max": round(rates[-1], 1)}))
for r in json.load(open(lb)):
    rates = r.get("samples_ts") or [r["avg_ts"]]
    if r["n_prompt"] > 0 and r["n_gen"] == 0:
        line("prefill", 1, r["n_prompt"], rates)
    elif r["n_gen"] > 0 and r["n_prompt"] == 0:
        line("decode", 1, r["n_gen"], rates)
by = {}
for l in open(lbb):
    r = json.loads(l)
    by.setdefault(r["pl"], []).append(r["speed_tg"])
for pl, rates in sorted(by.items()):
    line("decode", pl, pl * 32, rates)
EOF
done

python3 - "$results" <<'EOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
def get(engine, phase, batch=None, tokens=None):
    for r in rows:
        if r.get("engine") == engine and r.get("phase") == phase and (batch is None or r.get("batch") == batch) \
                and (tokens is None or r.get("tokens") == tokens):
            return r
def rss(engine):
    for r in rows:
        if r.get("engine") == engine and "peak_rss_mib" in r and "weights" not in r:
            return r["peak_rss_mib"]
cases = [("prefill", 1, 128), ("prefill", 1, 512), ("prefill", 1, 1500), ("decode", 1, None), ("decode", 8, None),
         ("decode", 32, None)]
print("| measurement | format | ghostline tok/s (min / median / max) | llama.cpp tok/s (min / median / max) | ratio (medians) |")
print("| --- | --- | --- | --- | ---: |")
fmt3 = lambda r: f"{r['tok_per_s_min']:,.0f} / **{r['tok_per_s']:,.0f}** / {r['tok_per_s_max']:,.0f}" if r else "n/a"
for phase, batch, tokens in cases:
    label = f"prefill {tokens} tok" if phase == "prefill" else f"decode 32 tok, batch {batch}"
    for g, l in [("f32", "f32"), ("bf16", "bf16"), ("q8", "q8_0")]:
        a = next((r for r in rows if r.get("engine") == "ghostline" and r.get("weights") == g and r.get("phase") == phase
                  and r.get("batch") == batch and (tokens is None or r.get("tokens") == tokens)), None)
        b = get(f"llama.cpp-{l}", phase, batch, tokens if phase == "prefill" else None)
        ratio = f"{a['tok_per_s'] / b['tok_per_s']:.2f}x" if a and b else "n/a"
        print(f"| {label} | {g} | {fmt3(a)} | {fmt3(b)} | {ratio} |")
print()
fmts = [("f32", "f32"), ("bf16", "bf16"), ("q8", "q8_0")]
print("| peak RSS, MiB | " + " | ".join(f"{g}: ghostline {rss('ghostline-' + g)} / llama.cpp {rss('llama.cpp-' + l)}"
                                        for g, l in fmts) + " |")
print("| same, with batches 8 and 32 (llama.cpp: llama-batched-bench) | "
      + " | ".join(f"{g}: ghostline {rss('ghostline-' + g + '-batched')} / llama.cpp {rss('llama.cpp-' + l + '-batched')}"
                   for g, l in fmts) + " |")
print()
for r in rows:
    if r.get("engine") == "ghostline" and "ms" in r:
        print(f"- ghostline {r['weights']} {r['phase']}: {r['ms_min']:.1f} / **{r['ms']:.1f}** / {r['ms_max']:.1f} ms")
EOF
echo "results: $results" >&2
