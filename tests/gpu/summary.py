#!/usr/bin/env python3
"""The short table at the end of tests/gpu/run.sh, from the JSON files it wrote (and
summary.json beside them, for BENCHMARKS.md)."""
import json
import sys
from pathlib import Path


def get(path):
    try:
        return json.loads(Path(path).read_text())
    except Exception as e:  # a step that failed leaves no file
        return {"missing": str(e)}


def main(out: Path):
    parity, hfc, ours, hf, ttft = (get(out / f) for f in
                                   ["parity.json", "hf_check.json", "bench.json", "hf_bench.json", "ttft.json"])
    rows = []
    for m in parity.get("models", []):
        rows.append((f"parity {Path(m['model']).name}", "pass" if m["pass"] else "FAIL",
                     f"logits err {m['last_logits_worst_rel_err']:.2e}, greedy {m['greedy_equal']}, "
                     f"batched {m['batched_greedy_equal']}, sampling {m['sampling']['different']} differ"))
    if "pass" in hfc:
        rows.append(("vs transformers (1.5B shape)", "pass" if hfc["pass"] else "FAIL",
                     f"logits err {hfc['last_logits_worst_rel_err']:.2e}, greedy {hfc['greedy_agreeing_tokens']}"))
    hf_dec = {d["batch"]: d["tok_per_s"] for d in hf.get("decode", [])}
    for d in ours.get("decode", []):
        peer = hf_dec.get(d["batch"])
        ratio = f"{d['tok_per_s'] / peer:.1f}x HF" if peer else "HF n/a"
        rows.append((f"decode batch {d['batch']}", f"{d['tok_per_s']:.0f} tok/s", f"HF {peer or 0:.0f} tok/s, {ratio}"))
    if "batch1_fraction_of_floor" in ours and ours["batch1_fraction_of_floor"] is not None:
        rows.append(("batch 1 vs bandwidth floor", f"{100 * ours['batch1_fraction_of_floor']:.0f}%",
                     f"floor {ours['batch1_floor_tok_per_s']:.0f} tok/s = {ours['copy_bandwidth_bytes_per_s'] / 1e12:.2f} TB/s "
                     f"/ {ours['weight_bytes'] / 1e9:.2f} GB"))
    hf_pf = {p["prompt_tokens"]: p["tok_per_s"] for p in hf.get("prefill", [])}
    for p in ours.get("prefill", []):
        peer = hf_pf.get(p["prompt_tokens"])
        rows.append((f"prefill {p['prompt_tokens']}", f"{p['tok_per_s']:.0f} tok/s", f"HF {peer or 0:.0f} tok/s"))
    for t in ttft.get("ttft", []):
        s, c = t.get("server_ttft_ms") or {}, t.get("client_first_text_ms") or {}
        rows.append((f"TTFT {t['streams']} stream(s)", f"p50 {s.get('p50', 0):.1f} ms",
                     f"p90 {s.get('p90', 0):.1f} ms (server); client first text p50 {c.get('p50', 0):.1f} ms; "
                     f"errors {len(t['errors'])}"))
    (out / "summary.json").write_text(json.dumps({"device": ours.get("device"), "rows": rows}, indent=2))
    print(f"\n== ghostline CUDA backend on {ours.get('device', '?')}")
    w = max((len(r[0]) for r in rows), default=10)
    for a, b, c in rows:
        print(f"{a:<{w}}  {b:>14}  {c}")
    return 0 if all(r[1] != "FAIL" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
