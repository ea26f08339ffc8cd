#!/usr/bin/env python3
"""Fetch the Rust part of the ghostline-tiny corpus from crates.io.

Writes a throwaway Cargo project into a temporary directory that depends on a
list of popular crates, runs `cargo fetch` with the normal CARGO_HOME (so the
sources land in the usual registry cache, ~/.cargo/registry/src), then asks
`cargo metadata` for the exact resolved package set (name, version, licence,
manifest path) and writes it to work/crates.json.

The lock file is kept in the repository (crates.lock next to this script) so a
re-run resolves to the same versions.  Delete it to pick up newer releases.

Usage: python3 fetch_crates.py [--work work]
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent

# Popular, permissively licensed crates.  Transitive dependencies come along;
# the corpus builder filters every package by its own `license` field.
CRATES = {
    "serde": '{ version = "1", features = ["derive", "rc"] }',
    "serde_json": '"1"',
    "tokio": '{ version = "1", features = ["full"] }',
    "regex": '"1"',
    "rand": '"0.9"',
    "clap": '{ version = "4", features = ["derive"] }',
    "anyhow": '"1"',
    "thiserror": '"2"',
    "itertools": '"0.14"',
    "bytes": '"1"',
    "hashbrown": '"0.15"',
    "syn": '{ version = "2", features = ["full", "visit", "visit-mut", "fold", "extra-traits"] }',
    "quote": '"1"',
    "proc-macro2": '"1"',
    "log": '"0.4"',
    "memchr": '"2"',
    "smallvec": '"1"',
    "indexmap": '"2"',
    "once_cell": '"1"',
    "futures": '"0.3"',
    "hyper": '{ version = "1", features = ["full"] }',
    "http": '"1"',
    "tracing": '"0.1"',
    "tracing-subscriber": '{ version = "0.3", features = ["env-filter", "json"] }',
    "crossbeam": '"0.8"',
    "rayon": '"1"',
    "parking_lot": '"0.12"',
    "chrono": '"0.4"',
    "uuid": '{ version = "1", features = ["v4", "serde"] }',
    "base64": '"0.22"',
    "url": '"2"',
    "semver": '"1"',
    "toml": '"0.8"',
    "walkdir": '"2"',
    "tempfile": '"3"',
    "num-traits": '"0.2"',
    "bitflags": '"2"',
    "either": '"1"',
    "arrayvec": '"0.7"',
    "heck": '"0.5"',
    "unicode-segmentation": '"1"',
    "dashmap": '"6"',
    "lru": '"0.12"',
    "ropey": '"1"',
    "axum": '"0.8"',
    "tower": '{ version = "0.5", features = ["full"] }',
    "async-trait": '"0.1"',
    "pin-project-lite": '"0.2"',
    "nom": '"7"',
    "petgraph": '"0.7"',
    "half": '"2"',
    "memmap2": '"0.9"',
    "criterion": '"0.5"',
    "proptest": '"1"',
    "ryu": '"1"',
    "itoa": '"1"',
    "byteorder": '"1"',
    "glob": '"0.3"',
    "similar": '"2"',
    "serde_yaml": '"0.9"',
    "csv": '"1"',
    "flate2": '"1"',
    "sha2": '"0.10"',
    "hex": '"0.4"',
    "ahash": '"0.8"',
    "slab": '"0.4"',
    "humantime": '"2"',
    "env_logger": '"0.11"',
    "ignore": '"0.4"',
    "aho-corasick": '"1"',
    "bstr": '"1"',
    "textwrap": '"0.16"',
    "unicode-width": '"0.2"',
}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default=str(HERE / "work"))
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    lock = HERE / "crates.lock"
    with tempfile.TemporaryDirectory(prefix="ghostline-corpus-") as tmp:
        proj = Path(tmp) / "corpus"
        (proj / "src").mkdir(parents=True)
        (proj / "src" / "lib.rs").write_text("")
        deps = "\n".join(f'{k} = {v}' for k, v in sorted(CRATES.items()))
        (proj / "Cargo.toml").write_text(
            '[package]\nname = "ghostline-corpus"\nversion = "0.0.0"\nedition = "2021"\npublish = false\n\n'
            f"[dependencies]\n{deps}\n\n[workspace]\n")
        if lock.exists():
            shutil.copy(lock, proj / "Cargo.lock")
        env = dict(os.environ)
        env.setdefault("CARGO_HOME", str(Path.home() / ".cargo"))
        subprocess.run(["cargo", "fetch"], cwd=proj, env=env, check=True)
        meta = subprocess.run(["cargo", "metadata", "--format-version", "1"], cwd=proj, env=env,
                              check=True, capture_output=True, text=True).stdout
        if not lock.exists():
            shutil.copy(proj / "Cargo.lock", lock)
    meta = json.loads(meta)
    pkgs = []
    for p in meta["packages"]:
        if p["name"] == "ghostline-corpus":
            continue
        pkgs.append({"name": p["name"], "version": p["version"], "license": p.get("license"),
                     "license_file": p.get("license_file"),
                     "dir": str(Path(p["manifest_path"]).parent)})
    pkgs.sort(key=lambda p: (p["name"], p["version"]))
    (work / "crates.json").write_text(json.dumps(pkgs, indent=1))
    print(f"{len(pkgs)} packages -> {work / 'crates.json'}", file=sys.stderr)


if __name__ == "__main__":
    main()
