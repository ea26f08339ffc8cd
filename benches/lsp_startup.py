#!/usr/bin/env python3
"""The language server's binary size, start-up time and memory, for one or more builds.

    python3 benches/lsp_startup.py [--rounds N] BINARY [BINARY...]

For each binary, interleaved over N rounds (default 15): spawn it (LSP on stdio), time the
`initialize` round trip (start-up), read its RSS; then open one file of every language in
tests/fixtures/languages (and a Python and a Rust file), time until an inline request on each
has been answered (each is at a place where no server request is made: the middle of a word),
and read RSS and peak RSS again. Prints one JSON line per binary with medians.
"""

import json
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURES = os.path.join(HERE, "..", "tests", "fixtures", "languages")
FILES = [
    ("Observable.ts", "typescript"),
    ("HydrationBoundary.tsx", "typescriptreact"),
    ("grammar.js", "javascript"),
    ("singleflight.go", "go"),
    ("JPypeContext.java", "java"),
    ("demovfs.c", "c"),
    ("sais.hxx", "cpp"),
]
EXTRA = [
    ("sizes.py", "python", "import os\n\n\ndef total_size(paths):\n    return sum(os.path.getsize(p) for p in paths)\n"),
    ("words.rs", "rust", "use std::collections::HashMap;\n\nfn count(text: &str) -> usize {\n    text.len()\n}\n"),
]


class Lsp:
    def __init__(self, binary, url, cache):
        env = dict(os.environ, GHOSTLINE_SERVER_URL=url, GHOSTLINE_CACHE_DIR=cache, GHOSTLINE_LOG="ghostline=warn")
        self.p = subprocess.Popen([binary], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
        self.next = 0

    def send(self, msg):
        body = json.dumps(msg).encode()
        self.p.stdin.write(b"Content-Length: %d\r\n\r\n" % len(body) + body)
        self.p.stdin.flush()

    def read(self):
        length = 0
        while True:
            line = self.p.stdout.readline()
            if not line:
                raise RuntimeError("the language server exited")
            line = line.strip()
            if not line:
                break
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        return json.loads(self.p.stdout.read(length))

    def request(self, method, params):
        self.next += 1
        self.send({"jsonrpc": "2.0", "id": self.next, "method": method, "params": params})
        while True:
            m = self.read()
            if m.get("id") == self.next and "method" not in m:
                return m

    def notify(self, method, params):
        self.send({"jsonrpc": "2.0", "method": method, "params": params})

    def status(self, field):
        with open(f"/proc/{self.p.pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
        return 0.0

    def close(self):
        try:
            self.request("shutdown", None)
            self.notify("exit", None)
            self.p.wait(timeout=10)
        except Exception:
            self.p.kill()


def mid_word(text):
    """(line, byte column) of a place in the middle of a word."""
    for n, line in enumerate(text.split("\n")):
        m = re.search(rb"[A-Za-z_]{3}", line.encode())
        if m:
            return n, m.start() + 1
    return 0, 0


def one_round(binary, url, docs):
    cache = tempfile.mkdtemp(prefix="ghostline-startup-")
    t0 = time.perf_counter()
    lsp = Lsp(binary, url, cache)
    lsp.request("initialize", {"processId": None, "rootUri": None, "capabilities": {"general": {"positionEncodings": ["utf-8"]}}, "initializationOptions": {"debounceMs": 0}})
    start_ms = (time.perf_counter() - t0) * 1000
    lsp.notify("initialized", {})
    rss_start = lsp.status("VmRSS")
    t1 = time.perf_counter()
    for i, (name, lang, text) in enumerate(docs):
        uri = f"file:///project/{name}"
        lsp.notify("textDocument/didOpen", {"textDocument": {"uri": uri, "languageId": lang, "version": 1, "text": text}})
        line, col = mid_word(text)
        lsp.request("textDocument/inlineCompletion", {"textDocument": {"uri": uri}, "position": {"line": line, "character": col}, "context": {"triggerKind": 2}})
    open_ms = (time.perf_counter() - t1) * 1000
    rss_open, hwm = lsp.status("VmRSS"), lsp.status("VmHWM")
    lsp.close()
    return start_ms, rss_start, open_ms, rss_open, hwm


def main():
    args = sys.argv[1:]
    rounds = 15
    if args[:1] == ["--rounds"]:
        rounds, args = int(args[1]), args[2:]
    if not args:
        sys.exit(__doc__)
    docs = [(n, l, open(os.path.join(FIXTURES, n), encoding="utf-8").read()) for n, l in FILES] + EXTRA
    # A port nothing listens on: no request in this script reaches a server anyway.
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{s.getsockname()[1]}"
    s.close()
    results = {b: [] for b in args}
    for _ in range(rounds):
        for b in args:
            results[b].append(one_round(b, url, docs))
    for b in args:
        cols = list(zip(*results[b]))
        med = [statistics.median(c) for c in cols]
        print(json.dumps({
            "binary": b,
            "size_mib": round(os.path.getsize(b) / 2**20, 2),
            "rounds": rounds,
            "initialize_ms": round(med[0], 1),
            "rss_after_initialize_mib": round(med[1], 1),
            "open_all_languages_ms": round(med[2], 1),
            "rss_after_open_mib": round(med[3], 1),
            "peak_rss_mib": round(med[4], 1),
        }))


if __name__ == "__main__":
    main()
