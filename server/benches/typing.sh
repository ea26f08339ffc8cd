#!/usr/bin/env bash
# Typing replay against ghostline-server: 1, 4 and 16 developers with prefix reuse on and off,
# then sequential vs concurrent throughput at 16 requests. Starts its own servers on loopback.
#   server/benches/typing.sh [MODEL_DIR] [SECONDS]
# DEVELOPERS="1 4" picks the loads; GHOSTLINE_BIN=PATH serves with another build (an older
# commit's, to compare in one run) instead of building this one.
set -euo pipefail
cd "$(dirname "$0")/../.."
model="${1:-server/models/ghostline-tiny}"
secs="${2:-20}"
files="server/src server/training"
bin="${GHOSTLINE_BIN:-}"
if [ -z "$bin" ]; then
  cargo build --release -p ghostline-server >&2
  bin="${CARGO_TARGET_DIR:-target}/release/ghostline-server"
fi
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT
start() { # $1 port, $2 prefix-cache, then extra serve flags
  local port=$1 pc=$2
  shift 2
  "$bin" serve --addr "127.0.0.1:$port" --model "$model" --prefix-cache "$pc" --threads 2 "$@" >/dev/null 2>&1 &
  pids+=($!)
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/ready" >/dev/null && return; sleep 0.1; done
  echo "server on $port did not start" >&2; exit 1
}
port_on=$((20000 + RANDOM % 20000)); port_off=$((port_on + 1))
echo "# cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores; model $model"
for devs in ${DEVELOPERS:-1 4 16}; do
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
# Prefix reuse and the response cache off here: the sequential pass would otherwise warm them
# for the concurrent one.
nocache=()
"$bin" serve --help | grep -q -- --cache-mb && nocache=(--cache-mb 0)
start "$port_on" false "${nocache[@]}"
printf 'throughput '
"$bin" bench --url "http://127.0.0.1:$port_on" --files $files --throughput 16 --max-tokens 32
