#!/usr/bin/env python3
"""Score a model on the held-out FIM benchmark (eval/fim_{python,rust}.jsonl).

Metrics per language and kind (single-line / multi-line / mid-statement infilling; mid-statement
cases are scored as single-line ones):
  EM     exact match of the completion with the removed text (surrounding whitespace ignored)
  ES     edit similarity, 1 - Levenshtein(completion, reference) / max(len), in [0, 1]
  parse  share of completions that add no syntax error: tree-sitter error nodes (ERROR or
         MISSING) in prefix+completion+suffix are not more than in prefix+reference+suffix
         (prefix and suffix are clipped, so the reference itself may not parse cleanly)

Backends
  --backend hf --model DIR        transformers on the CPU, greedy, the Qwen FIM template
                                  <|fim_prefix|>{prefix}<|fim_suffix|>{suffix}<|fim_middle|>;
                                  stops at EOS / FIM tokens, single-line cases at the first newline;
                                  the prompt is clipped (prefix from the left, suffix from the
                                  right) to the model's context less max_new_tokens; mid-line
                                  prompts and token healing as the server does them, by the
                                  model directory's ghostline.json (or --mid-line-prompt,
                                  --token-healing)
  --backend server --url URL      ghostline-server HTTP API v1: POST /v1/completions with
                                  prompt=prefix, suffix=suffix, temperature 0, stream false,
                                  stop ["\\n"] for single-line cases; for a model without FIM
                                  (`fim: null` in GET /v1/models) the prefix alone, left to right
  --backend lsp --ghostline BIN   the language server's whole pipeline against the server at
                                  --url: `ghostline complete FILE:LINE:COL` on a file holding
                                  prefix + suffix (context, request, post-processing as an
                                  editor gets them); an empty answer counts as dropped

Prints a markdown table (with the share of empty answers: what the language server dropped, or
what the model gave nothing for); --out FILE writes the summary and per-case results as JSON.

  python3 evaluate.py --backend hf --model ../models/ghostline-tiny
  python3 evaluate.py --backend server --url http://127.0.0.1:8484 --limit 100
"""
import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
STOP_TOKENS = ["<|endoftext|>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>",
               "<|file_sep|>", "<|repo_name|>"]


# ---------------------------------------------------------------- metrics
def levenshtein(a, b):
    if len(a) < len(b):
        a, b = b, a
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def edit_similarity(a, b):
    if not a and not b:
        return 1.0
    return 1.0 - levenshtein(a, b) / max(len(a), len(b))


class SyntaxChecker:
    def __init__(self):
        from tree_sitter import Language, Parser
        import tree_sitter_python
        import tree_sitter_rust
        self.parsers = {"python": Parser(Language(tree_sitter_python.language())),
                        "rust": Parser(Language(tree_sitter_rust.language()))}

    def errors(self, lang, text):
        tree = self.parsers[lang].parse(text.encode())
        n, stack = 0, [tree.root_node]
        while stack:
            node = stack.pop()
            if node.is_error or node.is_missing:
                n += 1
            if node.has_error:
                stack.extend(node.children)
        return n


# ---------------------------------------------------------------- backends
def cursor_mid_line(prefix, suffix):
    """As ghostline-server decides it: code before the cursor on its line, only whitespace after."""
    return prefix.rsplit("\n", 1)[-1].strip() != "" and suffix.split("\n", 1)[0].strip() == ""


class HFBackend:
    """transformers, prompting as ghostline-server does: the model directory's ghostline.json
    (or --mid-line-prompt / --token-healing) decides how mid-line cursors are prompted and
    whether the prompt's last token is healed."""

    def __init__(self, model_dir, threads, max_context=None, mid_line=None, healing=None):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
        self.torch = torch
        torch.set_num_threads(threads)
        self.tok = AutoTokenizer.from_pretrained(model_dir)
        # bf16 weights are upcast: CPUs without bf16 units run fp32 faster
        self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
        self.ctx = max_context or self.model.config.max_position_embeddings
        ids = self.tok.convert_tokens_to_ids
        self.pre, self.suf, self.mid = ids("<|fim_prefix|>"), ids("<|fim_suffix|>"), ids("<|fim_middle|>")
        self.stop = {ids(t) for t in STOP_TOKENS}
        serving = Path(model_dir) / "ghostline.json"
        serving = json.loads(serving.read_text()) if serving.exists() else {}
        self.mid_line = mid_line or serving.get("mid_line_prompt", "fim")
        self.healing = serving.get("token_healing", False) if healing is None else healing
        self.texts = self._token_texts() if self.healing else None
        self.name = f"hf:{Path(model_dir).name}"

    def _token_texts(self):
        """Per token id its text as it reads after other text (None for special tokens and
        tokens that are not whole characters), as the server's HealIndex builds it."""
        special = set(self.tok.all_special_ids) | {self.tok.convert_tokens_to_ids(t) for t in STOP_TOKENS}
        anchor = self.tok("a", add_special_tokens=False).input_ids
        anchor = anchor[0] if len(anchor) == 1 else None
        base = self.tok.decode([anchor]) if anchor is not None else ""
        texts = []
        for i in range(len(self.tok)):
            t = None
            if i not in special:
                d = self.tok.decode([anchor, i] if anchor is not None else [i])
                if d.startswith(base):
                    d = d[len(base):]
                    if d and "\ufffd" not in d:
                        t = d
            texts.append(t)
        return texts

    def _heal(self, prefix, ids):
        """Takes the prompt's last token off when the cursor is inside a line; returns its text
        and the ids allowed first (those whose text begins with it)."""
        if not self.healing or len(ids) < 2 or prefix.rsplit("\n", 1)[-1].strip() == "":
            return None
        last = ids[-1]
        text = self.texts[last] if last < len(self.texts) else None
        if not text or not prefix.endswith(text):
            return None
        allowed = [i for i, t in enumerate(self.texts) if t is not None and t.startswith(text)]
        if last not in allowed:
            return None
        if all(c in " \t" for c in text):
            allowed = [i for i in allowed if self.texts[i][len(text):][:1].strip() != ""]
            if not allowed:
                return None
        ids.pop()
        return text, allowed

    def complete(self, prefix, suffix, single_line, max_new_tokens, lang=None):
        torch = self.torch
        enc = lambda s: self.tok(s, add_special_tokens=False).input_ids
        room = self.ctx - max_new_tokens
        if suffix is not None and self.mid_line == "plain" and cursor_mid_line(prefix, suffix):
            suffix, single_line = None, True
        if suffix is None:
            # Plain left-to-right: the prefix's last `room` tokens.
            ids = enc(prefix)[-room:]
            heal = self._heal(prefix, ids)
        else:
            p, s = enc(prefix), enc(suffix)
            # Same trimming as ghostline-server's `truncate`: the suffix keeps up to a third of the
            # room (more when the prefix is short), the prefix the rest, nearest the cursor.
            room -= 3
            s_keep = min(max(min(len(s), room // 3), room - len(p)), len(s))
            p_keep = min(room - s_keep, len(p))
            s = s[:s_keep]
            p = p[len(p) - p_keep:]
            heal = self._heal(prefix, p)
            ids = [self.pre] + p + [self.suf] + s + [self.mid]
        out, past = [], None
        x = torch.tensor([ids])
        text = ""
        with torch.no_grad():
            for _ in range(max_new_tokens):
                o = self.model(input_ids=x, past_key_values=past, use_cache=True)
                past = o.past_key_values
                logits = o.logits[0, -1]
                if heal and not out:
                    allowed = torch.tensor(heal[1])
                    nxt = int(allowed[int(logits[allowed].argmax())])
                else:
                    nxt = int(logits.argmax())
                if nxt in self.stop:
                    break
                out.append(nxt)
                text = self.tok.decode(out)
                if heal:
                    text = text[len(heal[0]):]
                if single_line and "\n" in text:
                    break
                x = torch.tensor([[nxt]])
        if single_line:
            text = text.split("\n", 1)[0]
        return text


class ServerBackend:
    """ghostline-server HTTP API v1 (docs/api.md: POST /v1/completions). A model without FIM
    tokens (`fim: null` in GET /v1/models) gets the prefix alone, as the server refuses a suffix
    for it."""

    def __init__(self, url, model=None, api_key=None, timeout=60):
        self.base = url.rstrip("/")
        self.url = self.base + "/v1/completions"
        self.model = model
        self.api_key = api_key
        self.timeout = timeout
        models = self._get("/v1/models")["data"]
        info = next((m for m in models if m["id"] == model), models[0]) if models else {}
        self.fim = info.get("fim")
        self.name = f"server:{url} ({info.get('id', '?')}, fim: {self.fim or 'none: prefix only'})"

    def _headers(self):
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        return headers

    def _get(self, path):
        req = urllib.request.Request(self.base + path, headers=self._headers())
        with urllib.request.urlopen(req, timeout=self.timeout) as r:
            return json.loads(r.read())

    def complete(self, prefix, suffix, single_line, max_new_tokens, lang=None):
        body = {"prompt": prefix, "max_tokens": max_new_tokens, "temperature": 0.0,
                "top_p": 1.0, "n": 1, "stream": False, "truncate": True}
        if suffix is not None and self.fim:
            body["suffix"] = suffix
        if single_line:
            body["stop"] = ["\n"]
        if self.model:
            body["model"] = self.model
        req = urllib.request.Request(self.url, data=json.dumps(body).encode(), headers=self._headers(), method="POST")
        for attempt in range(5):
            try:
                with urllib.request.urlopen(req, timeout=self.timeout) as r:
                    resp = json.loads(r.read())
                break
            except urllib.error.HTTPError as e:
                if e.code in (429, 503) and attempt < 4:
                    time.sleep(float(e.headers.get("Retry-After") or 1))
                    continue
                raise RuntimeError(f"HTTP {e.code}: {e.read()[:300]!r}") from e
        text = resp["choices"][0]["text"]
        if single_line:
            text = text.split("\n", 1)[0]
        return text


class LspBackend:
    """The language server's whole pipeline: `ghostline complete FILE:LINE:COL` on a file that
    holds prefix + suffix, against the ghostline-server at `url`. The language server decides
    single- or multi-line itself (as in an editor), builds the prompt with its context window,
    and post-processes the answer (line / block end, suffix overlap, syntax check); an answer
    it drops comes back empty."""

    EXT = {"python": ".py", "rust": ".rs"}

    def __init__(self, ghostline, url, api_key=None, timeout=60):
        import tempfile
        self.bin = ghostline
        self.env = dict(os.environ, GHOSTLINE_SERVER_URL=url.rstrip("/"))
        if api_key:
            self.env["GHOSTLINE_API_KEY"] = api_key
        self.timeout = timeout
        self.dir = tempfile.mkdtemp(prefix="ghostline-eval-")
        self.name = f"lsp:{Path(ghostline).name} -> {url}"

    def complete(self, prefix, suffix, single_line, max_new_tokens, lang=None):
        import subprocess
        path = Path(self.dir) / f"case{self.EXT.get(lang, '.txt')}"
        path.write_text(prefix + (suffix or ""))
        line = prefix.count("\n") + 1
        col = len(prefix.rsplit("\n", 1)[-1]) + 1
        r = subprocess.run([self.bin, "complete", f"{path}:{line}:{col}", "--max-tokens", str(max_new_tokens)],
                           env=self.env, capture_output=True, text=True, timeout=self.timeout)
        if r.returncode == 1:
            return ""
        if r.returncode != 0:
            raise RuntimeError(f"ghostline complete exited {r.returncode}: {r.stderr[-300:]}")
        # `println!` adds one newline after the suggestion.
        return r.stdout[:-1] if r.stdout.endswith("\n") else r.stdout


# ---------------------------------------------------------------- main
def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backend", choices=["hf", "server", "lsp"], required=True)
    ap.add_argument("--ghostline", default="ghostline", help="lsp: the language server binary")
    ap.add_argument("--model", help="hf: model directory; server: optional `model` field")
    ap.add_argument("--url", default="http://127.0.0.1:8484")
    ap.add_argument("--api-key", default=os.environ.get("GHOSTLINE_API_KEY"))
    ap.add_argument("--data", default=str(HERE / "eval"))
    ap.add_argument("--languages", default="python,rust")
    ap.add_argument("--kinds", default="single,multi,mid")
    ap.add_argument("--limit", type=int, default=None, help="first N cases per language and kind")
    ap.add_argument("--max-new-tokens", type=int, default=48, help="single-line cases")
    ap.add_argument("--max-new-tokens-multi", type=int, default=96, help="multi-line cases")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--mid-line-prompt", choices=["fim", "plain"], default=None,
                    help="hf: as the server's option (default: the model directory's ghostline.json, else fim)")
    ap.add_argument("--token-healing", choices=["true", "false"], default=None,
                    help="hf: as the server's option (default: the model directory's ghostline.json, else false)")
    ap.add_argument("--plain-kinds", default="",
                    help="kinds sent as plain left-to-right prompts (the prefix alone, no suffix)")
    ap.add_argument("--out", help="write summary + per-case results as JSON")
    args = ap.parse_args()

    if args.backend == "hf":
        if not args.model:
            ap.error("--backend hf needs --model DIR")
        backend = HFBackend(args.model, args.threads, mid_line=args.mid_line_prompt,
                            healing=None if args.token_healing is None else args.token_healing == "true")
    elif args.backend == "lsp":
        backend = LspBackend(args.ghostline, args.url, args.api_key)
    else:
        backend = ServerBackend(args.url, args.model, args.api_key)
    checker = SyntaxChecker()
    langs = args.languages.split(",")
    kinds = args.kinds.split(",")
    plain_kinds = set(filter(None, args.plain_kinds.split(",")))
    results, summary = [], []
    for lang in langs:
        cases = [json.loads(l) for l in open(Path(args.data) / f"fim_{lang}.jsonl")]
        for kind in kinds:
            sel = [c for c in cases if c["kind"] == kind][:args.limit]
            if not sel:
                continue
            em = es = ok = empty = 0
            lat = []
            for c in sel:
                single = kind in ("single", "mid")
                t0 = time.time()
                comp = backend.complete(c["prefix"], None if kind in plain_kinds else c["suffix"], single,
                                        args.max_new_tokens if single else args.max_new_tokens_multi, lang=lang)
                lat.append(time.time() - t0)
                ref = c["middle"]
                e = comp.strip() == ref.strip()
                s = edit_similarity(comp.strip(), ref.strip())
                err_ref = checker.errors(lang, c["prefix"] + ref + c["suffix"])
                err_c = checker.errors(lang, c["prefix"] + comp + c["suffix"])
                p = err_c <= err_ref
                em += e
                es += s
                empty += comp.strip() == ""
                ok += p
                results.append({"id": c["id"], "completion": comp, "exact": e, "edit_sim": round(s, 4),
                                "parses": p, "latency_s": round(lat[-1], 3)})
            n = len(sel)
            lat.sort()
            summary.append({"language": lang, "kind": kind, "n": n, "exact_match": em / n,
                            "edit_similarity": es / n, "parse_rate": ok / n, "empty": empty / n,
                            "latency_p50_ms": 1000 * lat[n // 2]})
            print(f"{lang}/{kind}: n={n} EM={em / n:.3f} ES={es / n:.3f} parse={ok / n:.3f} empty={empty / n:.3f}",
                  file=sys.stderr)

    print(f"\nbackend: {backend.name}\n")
    print("| language | kind | n | exact match | edit similarity | parses | empty | p50 latency (ms) |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in summary:
        print(f"| {r['language']} | {r['kind']} | {r['n']} | {100 * r['exact_match']:.1f}% | "
              f"{r['edit_similarity']:.3f} | {100 * r['parse_rate']:.1f}% | {100 * r['empty']:.1f}% | "
              f"{r['latency_p50_ms']:.0f} |")
    if args.out:
        Path(args.out).write_text(json.dumps({"backend": backend.name, "summary": summary, "cases": results},
                                             indent=1) + "\n")


if __name__ == "__main__":
    main()
