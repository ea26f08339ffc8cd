#!/usr/bin/env bash
# Engine throughput against HF transformers on the same checkpoint, in one run.
#   server/engine/benches/compare.sh [CHECKPOINT_DIR] [THREADS]
# Without a checkpoint, a random Qwen2 of the house model's shape is made in a temp dir
# (SHAPE env: extra flags for make_fixtures.py --random-checkpoint).
set -euo pipefail
cd "$(dirname "$0")/../../.."
threads="${2:-2}"
dir="${1:-}"
if [ -z "$dir" ]; then
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' EXIT
  dir="$tmp/random-qwen2"
  python3 server/engine/tests/make_fixtures.py --random-checkpoint "$dir" \
    ${SHAPE:---hidden 256 --intermediate 768 --layers 4 --heads 4 --kv-heads 2 --vocab 8192} >&2
fi
cargo build --release -p ghostline-engine --bench throughput >&2
bin="$(ls -t target/release/deps/throughput-* | grep -v '\.d$' | head -1)"
echo "# cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), threads $threads"
RAYON_NUM_THREADS="$threads" "$bin" --model "$dir" "${@:3}"
python3 server/engine/benches/hf_peer.py --model "$dir" --threads "$threads" 2>/dev/null
