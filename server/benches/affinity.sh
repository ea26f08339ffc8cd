#!/usr/bin/env bash
# Three ghostline-server replicas behind real nginx on loopback, sharing one Redis: the shipped
# deploy/nginx/ghostline.conf (consistent hash on X-Ghostline-Affinity) against the same file with
# the hash line removed (round-robin), under 16 and 64 simulated developers typing
# (`ghostline-server bench`, which sends the language server's affinity header). Reports, per
# set-up, the bench's TTFT and cached-token share and each replica's /metrics
# (ghostline_cached_tokens_total / ghostline_prompt_tokens_total, ghostline_cache_hits_total,
# ghostline_requests_total for completions). Fresh replicas and an empty Redis for every run.
#   server/benches/affinity.sh [MODEL_DIR] [SECONDS]
# DEVELOPERS="16 64", THREADS=1 (engine threads per replica), GHOSTLINE_BIN=PATH to skip the build.
set -euo pipefail
cd "$(dirname "$0")/../.."
model="${1:-server/models/ghostline-tiny}"
secs="${2:-20}"
files="server/src server/training"
threads="${THREADS:-1}"
bin="${GHOSTLINE_BIN:-}"
if [ -z "$bin" ]; then
  cargo build --release -p ghostline-server >&2
  bin="${CARGO_TARGET_DIR:-target}/release/ghostline-server"
fi
nginx="$(command -v nginx || echo /usr/sbin/nginx)"
[ -x "$nginx" ] || { echo "needs nginx (Debian package nginx)" >&2; exit 1; }
command -v redis-server >/dev/null || { echo "needs redis-server" >&2; exit 1; }
pids=()
tmp=$(mktemp -d)
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT
base=$((20000 + RANDOM % 20000))
rport=$base lb=$((base + 1)) ports=($((base + 2)) $((base + 3)) $((base + 4)))
redis-server --port "$rport" --bind 127.0.0.1 --save "" --appendonly no >/dev/null &
pids+=($!)
for _ in $(seq 50); do redis-cli -p "$rport" ping >/dev/null 2>&1 && break; sleep 0.1; done

wait_ready() { # $1 url
  for _ in $(seq 200); do curl -sf "$1/ready" >/dev/null && return; sleep 0.1; done
  echo "$1 did not become ready" >&2
  exit 1
}

# The shipped nginx file with loopback replicas and listen address; $1 = hash | rr.
nginx_conf() {
  local mode=$1 d="$tmp/nginx-$1"
  mkdir -p "$d"
  local servers=""
  for p in "${ports[@]}"; do servers+="    server 127.0.0.1:$p max_fails=1 fail_timeout=5s;\n"; done
  awk -v servers="$servers" -v lb="$lb" -v mode="$mode" '
    /^[ \t]*server 10\.0\.0\./ { if (!placed) { printf "%s", servers; placed = 1 } next }
    /^[ \t]*listen / { print "    listen 127.0.0.1:" lb ";"; next }
    mode == "rr" && /^[ \t]*hash \$http_x_ghostline_affinity/ { next }
    { print }' deploy/nginx/ghostline.conf >"$d/ghostline.conf"
  if [ "$mode" = hash ]; then grep -q 'hash $http_x_ghostline_affinity consistent' "$d/ghostline.conf"; fi
  cat >"$d/nginx.conf" <<EOF
daemon off;
master_process off;
error_log $d/error.log;
pid $d/nginx.pid;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path $d/body;
  proxy_temp_path $d/proxy;
  fastcgi_temp_path $d/fastcgi;
  uwsgi_temp_path $d/uwsgi;
  scgi_temp_path $d/scgi;
  include $d/ghostline.conf;
}
EOF
  echo "$d"
}

# Sum of a metric's samples (all label sets, or those matching $3) in a replica's /metrics.
metric() { # $1 port, $2 name, $3 optional label filter
  curl -sf "http://127.0.0.1:$1/metrics" | awk -v n="$2" -v f="${3:-}" '
    ($1 == n || index($1, n "{") == 1) && (f == "" || index($1, f) > 0) { s += $2 } END { printf "%d", s }'
}

echo "# cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores; model $model; 3 replicas x $threads engine thread(s); ${secs}s per run; load before: $(cut -d' ' -f1-3 /proc/loadavg)"
for devs in ${DEVELOPERS:-16 64}; do
  for mode in hash rr; do
    redis-cli -p "$rport" flushall >/dev/null
    rep=()
    for i in 0 1 2; do
      dir="$tmp/data-$mode-$devs-$i"
      mkdir -p "$dir"
      "$bin" serve --addr "127.0.0.1:${ports[$i]}" --model "$model" --threads "$threads" --data-dir "$dir" \
        --redis "redis://127.0.0.1:$rport" >/dev/null 2>&1 &
      pids+=($!)
      rep+=($!)
    done
    for p in "${ports[@]}"; do wait_ready "http://127.0.0.1:$p"; done
    d=$(nginx_conf "$mode")
    "$nginx" -p "$d" -c "$d/nginx.conf" &
    pids+=($!)
    ngx=$!
    wait_ready "http://127.0.0.1:$lb"
    out=$("$bin" bench --url "http://127.0.0.1:$lb" --developers "$devs" --files $files --seconds "$secs")
    per=""
    tp=0 tc=0
    for p in "${ports[@]}"; do
      pr=$(metric "$p" ghostline_prompt_tokens_total)
      ca=$(metric "$p" ghostline_cached_tokens_total)
      rh=$(metric "$p" ghostline_cache_hits_total 'kind="response"')
      th=$(metric "$p" ghostline_cache_hits_total 'kind="typeahead"')
      rq=$(metric "$p" ghostline_requests_total 'endpoint="/v1/completions"')
      tp=$((tp + pr)) tc=$((tc + ca))
      per+="{\"port\":$p,\"completion_requests\":$rq,\"prompt_tokens\":$pr,\"cached_tokens\":$ca,\"response_cache_hits\":$rh,\"typeahead_hits\":$th},"
    done
    share=$(awk -v c="$tc" -v p="$tp" 'BEGIN { if (p > 0) printf "%.3f", c / p; else print 0 }')
    echo "balancer=$mode developers=$devs replicas_cached_token_share=$share replicas=[${per%,}] bench=$out"
    kill "$ngx" "${rep[@]}" 2>/dev/null || true
    wait "$ngx" "${rep[@]}" 2>/dev/null || true
  done
done
