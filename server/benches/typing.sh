#!/usr/bin/env bash
# Typing replay against ghostline-server: 1, 4 and 16 developers with prefix reuse on and off,
# then sequential vs concurrent throughput at 16 requests. Starts its own servers on loopback.
#   server/benches/typing.sh [MODEL_DIR] [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/../.."
model="${1:-server/models/ghostline-tiny}"
secs="${2:-20}"
files="server/src server/training"
cargo build --release -p ghostline-server >&2
bin=target/release/ghostline-server
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT
start() { # $1 port, $2 prefix-cache
  "$bin" serve --addr "127.0.0.1:$1" --model "$model" --prefix-cache "$2" --threads 2 >/dev/null 2>&1 &
  pids+=($!)
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$1/ready" >/dev/null && return; sleep 0.1; done
  echo "server on $1 did not start" >&2; exit 1
}
port_on=$((20000 + RANDOM % 20000)); port_off=$((port_on + 1))
echo "# cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores; model $model"
for devs in 1 4 16; do
  for mode in on off; do
    port=$port_on; pc=true
    [ "$mode" = off ] && { port=$port_off; pc=false; }
    # A fresh server per run, so no run inherits another's caches.
    start "$port" "$pc"
    printf 'prefix_reuse=%s ' "$mode"
    "$bin" bench --url "http://127.0.0.1:$port" --developers "$devs" --files $files --seconds "$secs"
    kill "${pids[-1]}"; wait "${pids[-1]}" 2>/dev/null || true; unset 'pids[-1]'
  done
done
# Prefix reuse off here: the sequential pass would otherwise warm the cache for the concurrent one.
start "$port_on" false
printf 'throughput '
"$bin" bench --url "http://127.0.0.1:$port_on" --files $files --throughput 16 --max-tokens 32
