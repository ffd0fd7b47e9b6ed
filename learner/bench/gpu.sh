#!/usr/bin/env bash
# GPU benchmarks: the step cost and the end-to-end learner on CUDA; a short table at the end.
#
#   bash learner/bench/gpu.sh            # from the repository root, on a machine with a GPU
#
# Step cost: GMF and NeuMF, BCE / IDL / IDL+IG, batch sizes up to 262,144 (where the GPU
# saturates: the step time stops being flat in the batch size), tables of 10,000 and
# 1,000,000 users. End to end: offline passes of the shipped KuaiRand log (no Kafka; the
# Kafka clients' ceilings are CPU-bound and measured by `dwell bench --suites kafka`).
set -euo pipefail
cd "$(dirname "$0")/../.."
[ -x .venv/bin/dwell ] || make install
PY=.venv/bin/python
if ! $PY -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
  echo "no CUDA GPU visible to torch: nothing to measure here" >&2
  exit 2
fi
OUT=${OUT:-/tmp/dwell-gpu}
mkdir -p "$OUT"
$PY -c 'import torch; print("GPU:", torch.cuda.get_device_name(0))' | tee "$OUT/gpu.txt"
.venv/bin/dwell bench --suites steps --device cuda --models gmf,neumf \
    --batch-sizes 1024,8192,65536,262144 --table-sizes 10000,1000000 --repeats 20 \
    | tee "$OUT/steps.md"
$PY - <<'PY' | tee "$OUT/end_to_end.md"
import orjson
from learner.bench.peer import KUAIRAND, run_dwell
from producers.readers import order_by_time, read_log

raw = [orjson.dumps(e) for e in order_by_time(read_log(KUAIRAND).events)] * 5
print("| setup | train batch | events/s | AUC |\n| --- | --- | --- | --- |")
for model in ("gmf", "neumf"):
    for batch in (1024, 8192):
        r = run_dwell(model, {"model": model, "loss": "idl", "meta": "ig", "num_neg": 1,
                              "train_batch": batch, "lr": 0.05, "device": "cuda"},
                      raw, batch=batch)
        print(f"| {model} IDL+IG | {batch} | {r.events_per_s:,.0f} | {r.auc:.4f} |")
PY
echo
echo "== summary =="
cat "$OUT/gpu.txt"
grep -E '^\| (gmf|neumf) \|' "$OUT/steps.md" | grep -E 'idl\+ig|bce' || true
cat "$OUT/end_to_end.md"
