#!/usr/bin/env python3
"""Time to first token through a running ghostline-server, with 1 and N concurrent streams.

  ttft.py URL OUT.json [--streams 1,32] [--source-dir server/src]

Each request is a FIM completion (prompt and suffix cut from this repository's sources at a
different place, so neither the response cache nor the prefix cache answers it), streamed.
Reports the client's time to the first streamed text and the server's own `timings.ttft_ms`.
"""
import argparse
import http.client
import json
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlparse


def one(url, body):
    u = urlparse(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=120)
    t0 = time.perf_counter()
    conn.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"})
    resp = conn.getresponse()
    if resp.status != 200:
        return {"error": f"{resp.status} {resp.read()[:200]!r}"}
    first = None
    last = None
    for raw in resp:
        line = raw.decode().strip()
        if not line.startswith("data: "):
            continue
        data = line[6:]
        if data == "[DONE]":
            break
        chunk = json.loads(data)
        if first is None and any(c.get("text") for c in chunk.get("choices", [])):
            first = time.perf_counter() - t0
        last = chunk
    total = time.perf_counter() - t0
    conn.close()
    timings = (last or {}).get("timings", {})
    return {"client_first_text_ms": None if first is None else first * 1000, "total_ms": total * 1000,
            "server_ttft_ms": timings.get("ttft_ms"), "prompt_tokens": (last or {}).get("usage", {}).get("prompt_tokens")}


def bodies(source_dir: Path, n: int, offset: int):
    text = "\n".join(p.read_text(errors="replace") for p in sorted(source_dir.glob("*.rs")))
    out = []
    for i in range(n):
        at = (len(text) // (n + 1)) * (i + 1) + offset * 131
        out.append({"prompt": text[max(0, at - 1800):at], "suffix": text[at:at + 400], "max_tokens": 16,
                    "temperature": 0.0, "stream": True, "user": f"bench-{offset}-{i}", "path": f"f{i}.rs"})
    return out


def stats(rs, key):
    v = sorted(r[key] for r in rs if r.get(key) is not None)
    if not v:
        return None
    return {"p50": statistics.median(v), "p90": v[min(len(v) - 1, int(0.9 * len(v)))], "n": len(v)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("url")
    ap.add_argument("out", type=Path)
    ap.add_argument("--streams", default="1,32")
    ap.add_argument("--source-dir", type=Path, default=Path("server/src"))
    a = ap.parse_args()
    one(a.url, bodies(a.source_dir, 1, 999)[0])  # warm-up
    report = []
    for k, s in enumerate(int(x) for x in a.streams.split(",")):
        rounds = 8 if s == 1 else 2
        results = []
        for r in range(rounds):
            bs = bodies(a.source_dir, s, offset=k * 100 + r)
            with ThreadPoolExecutor(max_workers=s) as ex:
                results += list(ex.map(lambda b: one(a.url, b), bs))
        errors = [r["error"] for r in results if "error" in r]
        ok = [r for r in results if "error" not in r]
        report.append({"streams": s, "requests": len(results), "errors": errors[:3],
                       "client_first_text_ms": stats(ok, "client_first_text_ms"),
                       "server_ttft_ms": stats(ok, "server_ttft_ms"),
                       "prompt_tokens": stats(ok, "prompt_tokens")})
        print(json.dumps(report[-1]), flush=True)
    a.out.write_text(json.dumps({"url": a.url, "ttft": report}, indent=2))


if __name__ == "__main__":
    sys.exit(main())
