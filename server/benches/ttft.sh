#!/usr/bin/env bash
# Time to first token through the server, against llama.cpp's llama-server on the very same GGUF
# file, same threads, in one run: a cold prompt of about 1,500 tokens (new to both servers), and a
# warm one (the same prompt with about 8 new tokens at its end, so the prefix cache serves the
# rest). Both servers stream from their OpenAI-style /v1/completions on loopback; the client
# measures from sending the request to the first streamed text. Rounds alternate between the
# servers, one request at a time.
#
#   server/benches/ttft.sh MODEL [THREADS] [ROUNDS]
#
# MODEL is what ghostline-server serves (a .gguf file or a checkpoint directory); llama-server
# serves LLAMA_MODEL, default MODEL itself when it is a .gguf file (for a directory, give the
# same weights converted to GGUF, e.g. by server/engine/benches/gguf_convert.py). PROMPT_TOKENS
# (default 1480) and NEW_TOKENS (default 8) size the prompts, by llama.cpp's count; a model with
# a short context (the house model's is 512) needs fewer. Both servers run their defaults.
#
# GHOSTLINE_BIN=PATH serves another ghostline-server build; LLAMA_SERVER=PATH (default
# $GHOSTLINE_LLAMA_SERVER, as tests/run exports it) is llama.cpp's server. Prints the machine and
# min / median / max per server and case; OUT_DIR keeps results.json.
set -euo pipefail
cd "$(dirname "$0")/../.."
model="${1:?usage: server/benches/ttft.sh MODEL [THREADS] [ROUNDS]}"
gguf="${LLAMA_MODEL:-$model}"
[ -f "$gguf" ] || { echo "llama-server needs a GGUF file: set LLAMA_MODEL" >&2; exit 1; }
threads="${2:-2}"
rounds="${3:-5}"
llama="${LLAMA_SERVER:-${GHOSTLINE_LLAMA_SERVER:-}}"
[ -x "$llama" ] || { echo "needs llama.cpp's llama-server: set LLAMA_SERVER (tests/run builds one)" >&2; exit 1; }
bin="${GHOSTLINE_BIN:-}"
if [ -z "$bin" ]; then
  cargo build --release -p ghostline-server >&2
  bin="${CARGO_TARGET_DIR:-target}/release/ghostline-server"
fi
tmp=$(mktemp -d)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null; wait 2>/dev/null; rm -rf "$tmp"' EXIT
base=$((20000 + RANDOM % 20000))
gport=$base lport=$((base + 1))
export LD_LIBRARY_PATH="$(dirname "$(readlink -f "$llama")")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
# Both with room for a few 1,500-token prompts and their defaults otherwise (f16 KV cache, the
# prompt cache on); one slot for llama-server, as one request runs at a time here.
"$bin" serve --model "$model" --addr "127.0.0.1:$gport" --threads "$threads" \
  --data-dir "$tmp/data" >"$tmp/ghostline.log" 2>&1 &
pids+=($!)
"$llama" -m "$gguf" --host 127.0.0.1 --port "$lport" -t "$threads" -tb "$threads" -c 8192 -np 1 \
  >"$tmp/llama.log" 2>&1 &
pids+=($!)
for url in "http://127.0.0.1:$gport/ready" "http://127.0.0.1:$lport/health"; do
  for _ in $(seq 600); do curl -sf "$url" >/dev/null && break; sleep 0.2; done
  curl -sf "$url" >/dev/null || { echo "a server did not start:" >&2; tail -5 "$tmp"/*.log >&2; exit 1; }
done
echo "# cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores, threads $threads," \
  "rounds $rounds, load $(cut -d' ' -f1-3 /proc/loadavg)"
# The server's "model loaded" line (its log is coloured): the weight format and the kernels.
sed 's/\x1b\[[0-9;]*m//g' "$tmp/ghostline.log" | grep -m1 -o 'device=.* params_m=' |
  sed 's/ params_m=$//; s/^/# ghostline-server: /' || true
python3 - "$gport" "$lport" "$rounds" "${OUT_DIR:-}" "${PROMPT_TOKENS:-1480}" "${NEW_TOKENS:-8}" <<'PY'
import json, os, statistics, sys, time, urllib.request
gport, lport, rounds, out = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
n_prompt, n_new = int(sys.argv[5]), int(sys.argv[6])
servers = {"ghostline": f"http://127.0.0.1:{gport}", "llama.cpp": f"http://127.0.0.1:{lport}"}

def post(url, body):
    req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    return urllib.request.urlopen(req, timeout=300)

def tokenize(text):
    with post(servers["llama.cpp"] + "/tokenize", {"content": text}) as r:
        return json.load(r)["tokens"]

def detokenize(ids):
    with post(servers["llama.cpp"] + "/detokenize", {"tokens": ids}) as r:
        return json.load(r)["content"]

def ttft(base, prompt):
    """Seconds from sending to the first streamed text, and that text."""
    t0 = time.perf_counter()
    body = {"prompt": prompt, "max_tokens": 8, "temperature": 0, "stream": True}
    with post(base + "/v1/completions", body) as r:
        for line in r:
            line = line.strip()
            if not line.startswith(b"data:") or line == b"data: [DONE]":
                continue
            text = json.loads(line[5:])["choices"][0].get("text", "")
            if text:
                dt = time.perf_counter() - t0
                for _ in r:  # let the stream end before the next request
                    pass
                return dt, text
    raise SystemExit(f"{base}: the stream ended without text")

# Real source text, PROMPT_TOKENS tokens by llama.cpp's tokenizer of the same file, the same for
# both servers; each round starts with a line of its own so that no earlier prompt is a prefix.
src = "".join(open(p, encoding="utf-8").read() for p in ["server/src/http.rs", "server/src/gateway.rs"])
ids = tokenize(src)
base_text = detokenize(ids[:n_prompt])
tail = detokenize(ids[n_prompt:n_prompt + n_new])
results = {name: {"cold": [], "warm": []} for name in servers}
lengths = {}
for r in range(rounds + 1):  # round 0 warms both servers up and is not counted
    for name, base in (servers.items() if r % 2 else reversed(list(servers.items()))):
        prompt = f"// round {r} of the time-to-first-token bench, {name}\n" + base_text
        lengths.setdefault("cold", len(tokenize(prompt)))
        lengths.setdefault("warm", len(tokenize(prompt + tail)))
        cold, _ = ttft(base, prompt)
        warm, _ = ttft(base, prompt + tail)
        if r:
            results[name]["cold"].append(cold * 1000)
            results[name]["warm"].append(warm * 1000)
print(f"prompt tokens (llama.cpp's count): cold {lengths['cold']}, warm {lengths['warm']}")
print("| server | cold prompt TTFT ms (min / median / max) | warm prompt TTFT ms (min / median / max) |")
print("| --- | ---: | ---: |")
for name, res in results.items():
    cells = [f"{min(v):.0f} / **{statistics.median(v):.0f}** / {max(v):.0f}" for v in (res["cold"], res["warm"])]
    print(f"| {name} | {cells[0]} | {cells[1]} |")
g, l = results["ghostline"], results["llama.cpp"]
print("ratio (llama.cpp median / ghostline median): cold "
      f"{statistics.median(l['cold']) / statistics.median(g['cold']):.2f}x, warm "
      f"{statistics.median(l['warm']) / statistics.median(g['warm']):.2f}x")
if out:
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump({"lengths": lengths, "ms": results}, f, indent=1)
PY
