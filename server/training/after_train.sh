#!/bin/sh
# Wait for a training run to end, then evaluate the exported model and fill in the model card.
#   nohup sh after_train.sh PID > work/after_train.log 2>&1 &
# PID is the train.py process (train.py itself exports to ../models/ghostline-tiny at the end).
set -e
cd "$(dirname "$0")"
pid="$1"
if [ -n "$pid" ]; then
    while kill -0 "$pid" 2>/dev/null; do sleep 60; done
fi
if ! grep -q " done$" work/run/train.log; then
    echo "training did not finish (no 'done' in work/run/train.log); not evaluating" >&2
    exit 1
fi
python3 report.py
nice -n 5 python3 evaluate.py --backend hf --model ../models/ghostline-tiny --out work/eval_hf.json | tee work/eval_hf.md
python3 report.py --eval work/eval_hf.json
