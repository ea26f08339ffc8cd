#!/usr/bin/env bash
# The CUDA backend's checks and benchmarks, in one call on a GPU machine (H100 / H200, CUDA 13,
# driver 580, PyTorch + transformers installed, no Rust toolchain, no network).
#
# 1. Build here, on the development machine (no GPU needed), and keep the binaries out of git:
#      cargo build --release --locked -p ghostline-server -p ghostline-engine \
#          --features ghostline-server/cuda,ghostline-engine/cuda --bins
#      mkdir -p .gpu-bin
#      cp "${CARGO_TARGET_DIR:-target}"/release/{ghostline-server,ghostline-gpu} .gpu-bin/
#      strip .gpu-bin/*
#      grep -qx '/.gpu-bin/' .git/info/exclude || echo '/.gpu-bin/' >> .git/info/exclude
#    (the working tree plus .gpu-bin must stay under 64 MiB: du -sh .gpu-bin)
# 2. Run it with the device tool, in one call:
#      run(command="bash tests/gpu/run.sh", carry=[".gpu-bin"], timeout_s=570)
#    Results come back under $OUT: parity.json, hf_check.json, bench.json, hf_bench.json,
#    ttft.json, summary.json, log.txt (7 files); the table at the end of the output is
#    summary.json's, for BENCHMARKS.md.
#
# Steps: (1) CUDA against CPU on the house model and the engine's fixtures (greedy equal, last
# logits within 1e-2, device sampling against the host sampler); (2) a random-weight checkpoint
# with the shape of Qwen2.5-Coder-1.5B made with transformers, ghostline against transformers
# (f32 reference) on it; (3) decode tok/s at batch 1/8/32/64, prefill tok/s at 512/2048 tokens,
# against transformers' generate on the same GPU in this run and against the bandwidth floor;
# time to first token through ghostline-server with 1 and 32 concurrent streams.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/ghostline-gpu-out}
BIN=${GHOSTLINE_GPU_BIN:-.gpu-bin}
WORK=${GHOSTLINE_GPU_WORK:-/tmp/ghostline-gpu}
mkdir -p "$OUT" "$WORK"
exec > >(tee "$OUT/log.txt") 2>&1
export PYTHONUNBUFFERED=1
log() { printf '\n== %s (%ss)\n' "$*" "$SECONDS"; }
status=0

for b in ghostline-gpu ghostline-server; do
  [ -x "$BIN/$b" ] || { echo "missing $BIN/$b: build it first (see the top of this script)"; exit 2; }
done

# cudarc loads libcuda, libnvrtc and libcublas by name: put the CUDA 13 libraries on the path.
libdirs=$(find /usr/local /usr/lib /opt -xdev \( -name 'libnvrtc.so.13*' -o -name 'libcublas.so.13*' \
  -o -name 'libcuda.so.1' \) 2>/dev/null | xargs -r -n1 dirname | sort -u | paste -sd: -)
export LD_LIBRARY_PATH="${libdirs}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
log "machine"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv || true
echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
python3 -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)'

log "1. CUDA against CPU: house model and fixtures"
timeout 150 "$BIN/ghostline-gpu" parity server/models/ghostline-tiny server/engine/tests/fixtures/* \
  > "$OUT/parity.json" || status=1
python3 -c "import json; d=json.load(open('$OUT/parity.json')); print('parity pass:', d['pass'])" || status=1

log "2. random-weight Qwen2.5-Coder-1.5B shape: make it, transformers' reference, ghostline against it"
Q="$WORK/qwen1.5b-random"
if [ ! -f "$Q/config.json" ]; then
  timeout 120 python3 tests/gpu/hf.py make "$Q" server/models/ghostline-tiny || status=1
fi
timeout 120 python3 tests/gpu/hf.py reference "$Q" "$WORK/expected.json" || status=1
timeout 90 "$BIN/ghostline-gpu" hf "$Q" "$WORK/expected.json" > "$OUT/hf_check.json" || status=1
python3 -c "import json; d=json.load(open('$OUT/hf_check.json')); print('vs transformers pass:', d['pass'], d['last_logits_worst_rel_err'], d['greedy_agreeing_tokens'])" || status=1

log "3a. ghostline decode / prefill throughput"
timeout 120 "$BIN/ghostline-gpu" bench "$Q" --batches 1,8,32,64 --prompt 128 --gen 64 --prefill 512,2048 \
  > "$OUT/bench.json" || status=1
log "3b. transformers on the same checkpoint and GPU"
timeout 150 python3 tests/gpu/hf.py bench "$Q" "$OUT/hf_bench.json" --batches 1,8,32,64 --prompt 128 --gen 64 \
  --prefill 512,2048 || status=1

log "3c. time to first token through ghostline-server"
PORT=18484
"$BIN/ghostline-server" serve --model "$Q" --device cuda --addr 127.0.0.1:$PORT --data-dir "$WORK/server" \
  --cache-mb 0 --typeahead-entries 0 --kv-memory-mb 8192 > "$WORK/server.log" 2>&1 &
SERVER=$!
for _ in $(seq 1 120); do
  curl -sf "http://127.0.0.1:$PORT/ready" >/dev/null 2>&1 && break
  kill -0 $SERVER 2>/dev/null || break
  sleep 1
done
if curl -sf "http://127.0.0.1:$PORT/ready" >/dev/null 2>&1; then
  timeout 120 python3 tests/gpu/ttft.py "http://127.0.0.1:$PORT" "$OUT/ttft.json" --streams 1,32 || status=1
else
  echo "the server did not become ready:"; tail -20 "$WORK/server.log"; status=1
fi
kill $SERVER 2>/dev/null; wait $SERVER 2>/dev/null
tail -5 "$WORK/server.log"

log "summary"
python3 tests/gpu/summary.py "$OUT" || status=1
exit $status
