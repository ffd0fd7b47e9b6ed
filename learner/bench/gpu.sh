#!/usr/bin/env bash
# GPU benchmarks: the step cost and the end-to-end learner on CUDA; a short table at the end.
#
#   bash learner/bench/gpu.sh            # from the repository root, on a machine with a GPU
#
# 1. Step cost: GMF and NeuMF, BCE / IDL / IDL+IG, batch sizes from the learner's default
#    train batch (64) up to 262,144 (where the GPU saturates: the step time stops being flat
#    in the batch size), tables of 10,000 and 1,000,000 users.
# 2. Offline end to end: a prequential pass of the shipped KuaiRand log (5 times, ids made
#    distinct per repeat as in the Kafka suite) through the learner on CUDA, no Kafka, at
#    train batches 1,024 and 8,192.
# 3. Kafka end to end on CUDA (when a `java` is found): `dwell bench --suites kafka --device
#    cuda --kafka-set train_batch=1024`, the learner daemon draining a real broker (a train
#    batch of 64, the CPU default, leaves a GPU idle between kernel launches).
# 4. Kafka end to end on the CPU with the learner pinned to 2 cores and the broker on the
#    machine's other cores (when it has at least 6 and `taskset` is there): the issue's
#    2-core targets without the broker taking the learner's cores.
#
# Environment:
#   PYTHON        interpreter with dwell's dependencies (default: .venv/bin/python, made by
#                 `make install` when missing)
#   DEVICE        torch device (default cuda; cpu runs the script's logic on a machine
#                 without a GPU, to check it)
#   STEP_BATCHES  step-cost batch sizes (default 64,1024,8192,65536,262144)
#   STEP_TABLES   step-cost user counts (default 10000,1000000)
#   E2E_REPEAT    KuaiRand log passes in the offline run (default 5)
#   SECTIONS      which of the four to run (default "1 2 3 4")
#   GPU_KAFKA_SET --kafka-set of the Kafka run on the device (default train_batch=1024)
#   KAFKA_REPEAT  the KuaiRand log this many times in the Kafka topic (default 3; 0: skip 3-4)
#   OUT           where the tables go (default /tmp/dwell-gpu)
#   JAVA, DWELL_CACHE  as for `dwell broker` (deploy/kafka/kafka.sh)
set -euo pipefail
cd "$(dirname "$0")/../.."
if [ -z "${PYTHON:-}" ]; then
  [ -x .venv/bin/python ] || make install
  PYTHON=.venv/bin/python
fi
DEVICE=${DEVICE:-cuda}
OUT=${OUT:-/tmp/dwell-gpu}
KAFKA_REPEAT=${KAFKA_REPEAT:-3}
DWELL=("$PYTHON" -m learner.cli)
if [ "$DEVICE" != cpu ] &&
   ! "$PYTHON" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
  echo "no CUDA GPU visible to torch: nothing to measure here (DEVICE=cpu checks the script)" >&2
  exit 2
fi
mkdir -p "$OUT"
"$PYTHON" -c 'import torch; print("GPU:", torch.cuda.get_device_name(0)
              if torch.cuda.is_available() else "none")' | tee "$OUT/gpu.txt"

# the checks that need a GPU (skipped on the CPU): a resumed learner draws the same new rows
"$PYTHON" -m pytest -q -p no:cacheprovider tests/unit/test_devices.py tests/unit/test_checkpoint.py \
    | tee "$OUT/gpu_tests.txt"

SECTIONS=" ${SECTIONS:-1 2 3 4} "
if [[ $SECTIONS == *" 1 "* ]]; then
  echo "== 1. step cost ==" >&2
  "${DWELL[@]}" bench --suites steps --device "$DEVICE" --models gmf,neumf \
      --batch-sizes "${STEP_BATCHES:-64,1024,8192,65536,262144}" \
      --table-sizes "${STEP_TABLES:-10000,1000000}" --repeats 20 | tee "$OUT/steps.md"
fi

if [[ $SECTIONS == *" 2 "* ]]; then
echo "== 2. offline end to end ==" >&2
DEVICE=$DEVICE E2E_REPEAT=${E2E_REPEAT:-5} "$PYTHON" - <<'PY' | tee "$OUT/end_to_end.md"
import os

import orjson

from learner.bench.kafka import bench_events
from learner.bench.peer import run_dwell

raw = [orjson.dumps(e) for e in bench_events(int(os.environ["E2E_REPEAT"]))]
print(f"{len(raw):,} events (the KuaiRand log {os.environ['E2E_REPEAT']} times, ids distinct "
      f"per repeat), device {os.environ['DEVICE']}\n")
print("| setup | train batch | events/s | AUC |\n| --- | --- | --- | --- |")
for model in ("gmf", "neumf"):
    for batch in (1024, 8192):
        r = run_dwell(model, {"model": model, "loss": "idl", "meta": "ig", "num_neg": 1,
                              "train_batch": batch, "lr": 0.05,
                              "device": os.environ["DEVICE"]}, raw, batch=batch)
        print(f"| {model} IDL+IG | {batch} | {r.events_per_s:,.0f} | {r.auc:.4f} |")
PY
fi

JAVA_BIN=${JAVA:-$(command -v java || true)}
if [ "$KAFKA_REPEAT" -gt 0 ] && [ -n "$JAVA_BIN" ]; then
  if [[ $SECTIONS == *" 3 "* ]]; then
    echo "== 3. Kafka end to end, learner on $DEVICE ==" >&2
    "${DWELL[@]}" bench --suites kafka --device "$DEVICE" --kafka-repeat "$KAFKA_REPEAT" \
        --kafka-set "${GPU_KAFKA_SET:-train_batch=1024}" | tee "$OUT/kafka_device.md"
  fi
  cores=$(nproc)
  if [[ $SECTIONS != *" 4 "* ]]; then
    :
  elif [ "$cores" -ge 6 ] && command -v taskset >/dev/null; then
    echo "== 4. Kafka end to end, learner on 2 CPU cores, broker on $((cores - 2)) others ==" >&2
    wrapper=$(mktemp -d)/java
    printf '#!/bin/sh\nexec taskset -c 2-%d %q "$@"\n' "$((cores - 1))" "$JAVA_BIN" >"$wrapper"
    chmod +x "$wrapper"
    JAVA=$wrapper taskset -c 0,1 "${DWELL[@]}" bench --suites kafka --device cpu \
        --kafka-repeat "$KAFKA_REPEAT" | tee "$OUT/kafka_pinned.md"
  else
    echo "$cores cores or no taskset: the pinned 2-core Kafka run skipped" >&2
  fi
else
  echo "no java (or KAFKA_REPEAT=0): Kafka runs skipped" >&2
fi

echo
echo "== summary =="
cat "$OUT/gpu.txt"
[ -f "$OUT/steps.md" ] &&
  { grep -E '^\| (gmf|neumf) \|' "$OUT/steps.md" | grep -E '\| (bce|idl\+ig) \|' || true; }
[ -f "$OUT/end_to_end.md" ] && cat "$OUT/end_to_end.md"
for f in kafka_device kafka_pinned; do
  [ -f "$OUT/$f.md" ] && { echo "-- $f"; grep -E '^\| (consume|GMF|NeuMF|latency)' "$OUT/$f.md"; }
done
exit 0
