#!/usr/bin/env bash
# What the gateway costs per request: response-cache hits and one-token misses, measured by the
# client and by the server's own ghostline_gateway_seconds (auth + limits + validation + cache
# lookup), in three set-ups: no keys; a key with rate limits; a key with limits and the cache in
# Redis (when redis-server is installed). Starts its own servers (and Redis) on loopback.
#   server/benches/gateway.sh [MODEL_DIR] [N]
set -euo pipefail
cd "$(dirname "$0")/../.."
model="${1:-server/models/ghostline-tiny}"
n="${2:-1000}"
cargo build --release -p ghostline-server >&2
bin="${CARGO_TARGET_DIR:-target}/release/ghostline-server"
pids=()
dirs=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for d in "${dirs[@]}"; do rm -rf "$d"; done
}
trap cleanup EXIT
port=$((20000 + RANDOM % 20000))
start() { # $1 data dir, then extra serve flags
  local dir=$1
  shift
  port=$((port + 1))
  "$bin" serve --addr "127.0.0.1:$port" --model "$model" --threads 2 --data-dir "$dir" "$@" >/dev/null 2>&1 &
  pids+=($!)
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/health" >/dev/null && return; sleep 0.1; done
  echo "server on $port did not start" >&2
  exit 1
}
echo "# cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores; model $model; $n requests each"

dir=$(mktemp -d); dirs+=("$dir")
start "$dir"
printf 'setup=no-keys '
"$bin" bench --url "http://127.0.0.1:$port" --gateway "$n"

dir=$(mktemp -d); dirs+=("$dir")
key=$("$bin" keys --data-dir "$dir" add bench --requests-per-minute 1000000 --tokens-per-minute 100000000 | tail -1)
start "$dir"
printf 'setup=key+limits '
"$bin" bench --url "http://127.0.0.1:$port" --gateway "$n" --key "$key"

if command -v redis-server >/dev/null; then
  rport=$((port + 100))
  redis-server --port "$rport" --bind 127.0.0.1 --save "" --appendonly no >/dev/null &
  pids+=($!)
  sleep 0.5
  start "$dir" --redis "redis://127.0.0.1:$rport"
  printf 'setup=key+limits+redis '
  "$bin" bench --url "http://127.0.0.1:$port" --gateway "$n" --key "$key"
fi
