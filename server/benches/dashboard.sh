#!/usr/bin/env bash
# The dashboard on a big store: the page's own weight over the wire, and the time of
# GET /v1/dashboard on a SQLite store of EVENTS telemetry events (default 1,000,000) and a quarter
# as many completion records, spread over 30 days, for the ranges the page offers and with a
# filter. The rows are written straight into the database the server made (the browser test in
# server/tests/dashboard.rs fills its store through the API; a million events through the API
# would only time the ingest). Starts its own server on loopback.
#   server/benches/dashboard.sh [EVENTS] [REPS]
set -euo pipefail
cd "$(dirname "$0")/../.."
events="${1:-1000000}"
reps="${2:-5}"
model="server/models/ghostline-tiny"
cargo build --release -p ghostline-server >&2
bin="${CARGO_TARGET_DIR:-target}/release/ghostline-server"
dir=$(mktemp -d)
pid=
cleanup() {
  [ -n "$pid" ] && kill "$pid" 2>/dev/null
  rm -rf "$dir"
}
trap cleanup EXIT
port=$((20000 + RANDOM % 20000))
start() {
  "$bin" serve --addr "127.0.0.1:$port" --model "$model" --threads 2 --data-dir "$dir" >/dev/null 2>&1 &
  pid=$!
  for _ in $(seq 200); do curl -sf "http://127.0.0.1:$port/ready" >/dev/null && return; sleep 0.1; done
  echo "server on $port did not start" >&2
  exit 1
}
# The server makes (and migrates) the database; then it is filled while no server runs.
start
kill "$pid"
wait "$pid" 2>/dev/null || true
pid=
python3 - "$dir/ghostline.db" "$events" <<'PY'
import random, sqlite3, sys, time
db, n = sys.argv[1], int(sys.argv[2])
rng = random.Random(7)
now = int(time.time() * 1000)
span = 30 * 86_400_000
langs = ["python", "rust", "typescript", "go", "java", None]
editors = ["vscode", "nvim", "helix"]
keys = [f"dev{i}" for i in range(40)]
c = sqlite3.connect(db)
comps = n // 4
rows = []
for i in range(comps):
    t = now - rng.randrange(span)
    cache = rng.choices(["miss", "hit", "typeahead", "cancelled"], [70, 15, 10, 5])[0]
    ttft = rng.lognormvariate(4.5, 0.5) if cache in ("miss", "cancelled") else rng.uniform(0.5, 3)
    rows.append((f"c{i}", t, rng.choice(keys), rng.choice(langs), rng.choice(editors), "ghostline-tiny",
                 300, 200, 12, 1.0, ttft, ttft * 2.5, cache))
# Rows arrive in time order, as they do on a server.
rows.sort(key=lambda r: r[1])
c.executemany("INSERT INTO completions (id, created_ms, key_name, language, editor, model, prompt_tokens, "
              "cached_tokens, completion_tokens, queue_ms, ttft_ms, total_ms, cache) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)", rows)
ev = []
for i in range(n):
    r = rows[rng.randrange(comps)]
    kind = rng.choices(["shown", "accepted", "partially_accepted", "rejected"], [50, 15, 5, 30])[0]
    chars = rng.randrange(1, 200) if kind in ("accepted", "partially_accepted") else None
    # The language server sends language and editor and the server adds the key; 5% of the
    # events come bare (another client), so the dashboard takes their completion's.
    lang, editor, key = (None, None, None) if rng.random() < 0.05 else (r[3], r[4], r[2])
    ev.append((f"e{i}", r[0], 0, kind, chars, 150, r[1] + 500, editor, lang, key))
ev.sort(key=lambda e: e[6])
c.executemany("INSERT INTO telemetry_events (event_id, completion_id, choice_index, kind, accepted_chars, shown_ms, "
              "received_ms, editor, language, key_name) VALUES (?,?,?,?,?,?,?,?,?,?)", ev)
c.commit()
print(f"# store: {n} events, {comps} completions over 30 days", file=sys.stderr)
PY
start
base="http://127.0.0.1:$port"
echo "# cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores; $events events, $((events / 4)) completions; $reps reps; median (min-max)"
printf 'page: %s bytes (uncompressed; no other request)\n' "$(curl -s "$base/dashboard" | wc -c)"
printf '| query | JSON bytes | median s | min s | max s |\n| --- | ---: | ---: | ---: | ---: |\n'
for q in "range=1h" "range=24h" "range=7d" "range=30d" "range=30d&language=python" "range=30d&key=dev3"; do
  times=()
  for _ in $(seq "$reps"); do
    times+=("$(curl -s -o "$dir/out.json" -w '%{time_total}' "$base/v1/dashboard?$q")")
  done
  bytes=$(wc -c <"$dir/out.json")
  printf '%s\n' "${times[@]}" | sort -n | awk -v q="$q" -v b="$bytes" '{a[NR]=$1} END {printf "| `%s` | %d | %.3f | %.3f | %.3f |\n", q, b, a[int((NR+1)/2)], a[1], a[NR]}'
done
