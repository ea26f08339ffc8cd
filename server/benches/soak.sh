#!/usr/bin/env bash
# The soak and fault test (docs/reliability.md): DEVELOPERS simulated developers, each with its
# own API key, type for DURATION seconds against one ghostline-server in team mode (a real Redis
# and a real PostgreSQL, all on loopback) on the bundled model, with supersessions, clients that
# hang up mid-stream and telemetry posts; a real language server (`ghostline`, LSP over stdio)
# types beside them (`ghostline-server bench --soak-out`, server/src/bench/soak.rs). Meanwhile:
#   at 15 % of the run the server gets SIGKILL and is started again (same port, same data);
#   at 35 % Redis gets SIGKILL, and is started again (empty) at 50 %;
#   at 65 % PostgreSQL is stopped (pg_ctl stop -m fast), and started again at 75 %.
# Each fault is probed by one request of the script's own (a completion after the restart,
# with Redis down and with PostgreSQL down; a telemetry post with PostgreSQL down). Prints the
# report's table; report.json, table.txt, rss.csv, phases.log and the logs stay in OUT_DIR.
#   server/benches/soak.sh [OUT_DIR]
# DURATION=600 DEVELOPERS=64 THREADS=2 (engine threads) MODEL=server/models/ghostline-tiny
# GHOSTLINE_BIN / GHOSTLINE_LSP_BIN: the server / language server binaries (else a release build).
# Needs redis-server and PostgreSQL's server binaries (initdb, pg_ctl; run as the postgres user
# when this runs as root), curl.
set -euo pipefail
cd "$(dirname "$0")/../.."
dur="${DURATION:-600}"
devs="${DEVELOPERS:-64}"
threads="${THREADS:-2}"
model="${MODEL:-server/models/ghostline-tiny}"
out="${1:-$(mktemp -d)}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"
bin="${GHOSTLINE_BIN:-}"
lsp="${GHOSTLINE_LSP_BIN:-}"
if [ -z "$bin" ] || [ -z "$lsp" ]; then
  cargo build --release -p ghostline-server -p ghostline >&2
  tgt="${CARGO_TARGET_DIR:-target}"
  bin="${bin:-$tgt/release/ghostline-server}"
  lsp="${lsp:-$tgt/release/ghostline}"
fi
command -v redis-server >/dev/null || { echo "needs redis-server (Debian package redis-server)" >&2; exit 1; }
command -v curl >/dev/null || { echo "needs curl" >&2; exit 1; }
pgbin=""
IFS=: read -ra path_dirs <<<"$PATH"
for d in "${path_dirs[@]}"; do
  if [ -x "$d/pg_ctl" ] && [ -x "$d/initdb" ]; then pgbin="$d"; break; fi
done
if [ -z "$pgbin" ]; then
  pgbin="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1 || true)"
fi
[ -n "$pgbin" ] && [ -x "$pgbin/pg_ctl" ] || { echo "needs PostgreSQL (Debian package postgresql)" >&2; exit 1; }

tmp="$(mktemp -d)"
pgdir="$(mktemp -d)"
as_pg=()
if [ "$(id -u)" = 0 ]; then
  chown postgres:postgres "$pgdir"
  as_pg=(runuser -u postgres --)
fi
spid="" rpid="" bpid=""
cleanup() {
  for p in $bpid $spid $rpid; do
    kill "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
  done
  "${as_pg[@]}" "$pgbin/pg_ctl" -D "$pgdir/data" -m immediate stop >/dev/null 2>&1 || true
  rm -rf "$tmp" "$pgdir"
}
trap cleanup EXIT

# A free loopback port (nothing answers on it), below the kernel's ephemeral range so that no
# outgoing connection of another program holds it.
free_port() {
  local p
  while :; do
    p=$((10000 + RANDOM % 22000))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then echo "$p"; return; fi
  done
}
port="$(free_port)" rport="$(free_port)" pgport="$(free_port)"
url="http://127.0.0.1:$port"
pgurl="postgres://ghostline@127.0.0.1:$pgport/postgres"
: >"$out/phases.log"
now_ms() { date +%s%3N; }
mark() { echo "$(now_ms) $*" >>"$out/phases.log"; }

# start_redis [first]: Redis on $rport. The first start may move to another port when the
# chosen one was taken meanwhile; a restart keeps the port the server was given.
start_redis() {
  local try
  for try in 1 2 3 4 5; do
    redis-server --port "$rport" --bind 127.0.0.1 --save "" --appendonly no --dir "$tmp" >>"$out/redis.log" 2>&1 &
    rpid=$!
    for _ in $(seq 300); do
      (exec 3<>"/dev/tcp/127.0.0.1/$rport") 2>/dev/null && return
      kill -0 "$rpid" 2>/dev/null || break
      sleep 0.1
    done
    if kill -0 "$rpid" 2>/dev/null; then break; fi
    wait "$rpid" 2>/dev/null || true
    [ "${1:-}" = first ] || break
    echo "redis-server on port $rport exited (try $try); trying another port" >>"$out/redis.log"
    rport="$(free_port)"
  done
  echo "redis-server did not start on port $rport; its log ($out/redis.log) ends:" >&2
  tail -n 20 "$out/redis.log" >&2
  exit 1
}
pg_ctl() { "${as_pg[@]}" "$pgbin/pg_ctl" -D "$pgdir/data" "$@" >>"$out/pg_ctl.log" 2>&1; }
start_pg() { pg_ctl -o "-p $pgport -c listen_addresses=127.0.0.1 -k $pgdir" -l "$pgdir/log" -w start; }
start_server() {
  GHOSTLINE_LOG="${GHOSTLINE_LOG:-warn}" "$bin" serve --addr "127.0.0.1:$port" --model "$model" \
    --threads "$threads" --data-dir "$tmp/data" --database "$pgurl" --redis "redis://127.0.0.1:$rport" \
    >>"$out/server.log" 2>&1 &
  spid=$!
  echo "$spid" >"$out/server.pid"
  for _ in $(seq 600); do curl -sf "$url/ready" >/dev/null 2>&1 && return; sleep 0.1; done
  echo "the server did not become ready; see $out/server.log" >&2
  exit 1
}
# probe NAME PATH BODY: one request of the script's own; its status goes to the phases log.
probe() {
  local code
  code=$(curl -s -o "$out/probe-$1.json" -w '%{http_code}' -m 60 -H "Authorization: Bearer $key0" \
    -H 'content-type: application/json' -d "$3" "$url$2") || true
  mark "probe_$1" "${code:-000}"
}
# Sleeps until PERCENT % of the run has passed.
at() {
  local left=$((t0 + dur * 10 * $1 - $(now_ms)))
  if [ "$left" -gt 0 ]; then sleep "$(awk -v l="$left" 'BEGIN { printf "%.3f", l / 1000 }')"; fi
}

start_redis first
"${as_pg[@]}" "$pgbin/initdb" -D "$pgdir/data" -A trust -U ghostline --no-sync --no-instructions >>"$out/pg_ctl.log" 2>&1
start_pg
: >"$tmp/keys"
for i in $(seq 0 $((devs - 1))); do
  "$bin" keys --data-dir "$tmp/data" --database "$pgurl" add "dev$i" | tail -n1 >>"$tmp/keys"
done
key0="$(head -n1 "$tmp/keys")"
start_server

load_before="$(cut -d' ' -f1-3 /proc/loadavg)"
cpu="$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores"
t0="$(now_ms)"
"$bin" bench --url "$url" --developers "$devs" --seconds "$dur" --files server/src server/training \
  --soak-out "$out" --keys-file "$tmp/keys" --lsp "$lsp" --server-pid-file "$out/server.pid" \
  --phases "$out/phases.log" --check-database "$pgurl" >"$out/bench.out" 2>"$out/bench.err" &
bpid=$!

at 15
mark server_killed
{ kill -9 "$spid" && wait "$spid"; } 2>/dev/null || true
start_server
mark server_ready
probe completion_after_restart /v1/completions '{"prompt": "def after_restart(x):\n", "max_tokens": 4, "temperature": 0}'

at 35
{ kill -9 "$rpid" && wait "$rpid"; } 2>/dev/null || true
mark redis_down
probe completion_while_redis_down /v1/completions '{"prompt": "def while_redis_is_down(x):\n", "max_tokens": 4, "temperature": 0}'
at 50
start_redis
mark redis_up

at 65
pg_ctl -m fast -w stop
mark postgres_down
probe completion_while_postgres_down /v1/completions '{"prompt": "def while_postgres_is_down(x):\n", "max_tokens": 4, "temperature": 0}'
probe telemetry_while_postgres_down /v1/telemetry '{"events": [{"event_id": "probe-pg-down", "completion_id": "probe", "choice_index": 0, "kind": "shown"}]}'
at 75
start_pg
mark postgres_up

status=0
wait "$bpid" || status=$?
bpid=""
load_after="$(cut -d' ' -f1-3 /proc/loadavg)"
{
  echo "# command: DURATION=$dur DEVELOPERS=$devs THREADS=$threads server/benches/soak.sh; model $model"
  echo "# cpu: $cpu; load average before: $load_before, after: $load_after"
} | tee "$out/machine.txt"
cat "$out/bench.out"
if [ "$status" != 0 ]; then
  echo "the soak's bench failed ($status):" >&2
  tail -n 20 "$out/bench.err" >&2
  exit "$status"
fi
kill -0 "$spid" 2>/dev/null || { echo "the server is no longer running; see $out/server.log" >&2; exit 1; }
