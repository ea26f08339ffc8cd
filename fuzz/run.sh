#!/usr/bin/env bash
# Long fuzz runs of every target: ITERS mutated inputs each (default 10 million), seeded by the
# clock unless GHOSTLINE_FUZZ_SEED is set; prints each target's count and inputs/s. An input
# that panics is saved under GHOSTLINE_FUZZ_CRASHES (default: a temp dir) and named; once
# fixed, copy it into fuzz/corpus/<target>/ so that tests/run replays it.
#   fuzz/run.sh [ITERS] [FILTER]     e.g. fuzz/run.sh 1000000 gguf
set -euo pipefail
cd "$(dirname "$0")/.."
export GHOSTLINE_FUZZ_ITERS="${1:-10000000}"
export GHOSTLINE_FUZZ_SEED="${GHOSTLINE_FUZZ_SEED:-$(date +%s)}"
filter="${2:-}"
echo "# cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores; $GHOSTLINE_FUZZ_ITERS inputs per target, seed $GHOSTLINE_FUZZ_SEED"
run() { # cargo test arguments, then the test name
  local name=${*: -1}
  if [[ -z "$filter" || "$name" == *"$filter"* ]]; then
    cargo test --profile test "$@" --exact --nocapture 2>&1 | grep -oE 'fuzz [a-z_]+: .*|panicked.*|FAILED.*' || true
  fi
}
run -p ghostline-server --bin ghostline-server -- fuzz::fuzz_completion_requests
run -p ghostline-server --bin ghostline-server -- fuzz::fuzz_telemetry_batches
run -p ghostline-engine --lib -- fuzz::fuzz_safetensors_headers
run -p ghostline-engine --lib -- fuzz::fuzz_gguf_headers
run -p ghostline --lib -- client::tests::fuzz_sse_streams
run -p ghostline --test fuzz_documents -- fuzz_document_edits
run -p ghostline --test fuzz_documents -- fuzz_document_text_edits
run -p ghostline --lib -- lsp::fuzz::fuzz_lsp_messages
