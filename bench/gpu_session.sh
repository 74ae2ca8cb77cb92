#!/bin/bash
# Matbench on a lent GPU with a fixed amount of device time: the five folds of the `matbench` preset and two seeds
# of `best` on fold 0, seven processes sharing the GPU (one process alone leaves it idle: each step is a few hundred
# tiny kernels, so a run is bound by Python and kernel launches; see BENCHMARKS.md). A 3-epoch calibration with
# the same seven processes measures the seconds per epoch, and the real runs get as many epochs (up to the
# presets') as finish before DEADLINE seconds. Results: `bench/matbench_perovskites.py --report $OUT/runs`.
#
#   DEADLINE=520 OUT=runs/gpu bash bench/gpu_session.sh
#
# Env: DATA (Castelli csv), ATOM_INIT (element table json, for machines without pymatgen: with a graph cache in
# CGCNN_LAB_CACHE nothing else needs it), PYTHON, ACC (gpu), DEADLINE (s), OUT. Checkpoints are not archived.
source "$(dirname "$0")/gpu_common.sh"
DEADLINE=${DEADLINE:-520}
OUT=${OUT:-runs/gpu-session}
R=$OUT/logs; mkdir -p "$R"
machine
MB="$PY bench/matbench_perovskites.py --data $DATA --accelerator ${ACC:-gpu} ${ATOM_INIT:+--atom-init $ATOM_INIT}"

launch() {  # $1 = out dir, $2 = matbench epochs, $3 = best epochs
  PIDS=""
  for f in 0 1 2 3 4; do
    $MB --folds $f --preset matbench --epochs "$2" --out "$1" > "$R/$(basename "$1")_mb$f.log" 2>&1 & PIDS="$PIDS $!"
  done
  for s in 0 1; do
    $MB --folds 0 --seeds $s --preset best --epochs "$3" --out "$1" > "$R/$(basename "$1")_best$s.log" 2>&1 & PIDS="$PIDS $!"
  done
}

launch "$OUT/calib" 3 3; wait
echo "calibration done at $(el) s"
$PY - "$(el)" "$DEADLINE" "$OUT/calib" > "$R/epochs.txt" 2> "$R/plan.log" <<'PY'
import sys
from pathlib import Path
import pandas as pd
from cgcnn_lab.training.presets import PRESETS
now, deadline, calib = int(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])
per_epoch = {}
for f in calib.glob("*/metrics.csv"):
    s = pd.read_csv(f)["seconds"]
    preset = f.parent.name.split("-")[0]
    per_epoch[preset] = max(per_epoch.get(preset, 0.0), (s.iloc[-1] - s.iloc[0]) / (len(s) - 1))
left = deadline - now - 45  # start-up, test and report of the real runs
epochs = {p: max(1, min(PRESETS[p].values["epochs"], int(left / (per_epoch[p] * 1.08)))) for p in ("matbench", "best")}
print(f"s/epoch with 7 processes: {per_epoch}; {left} s left -> epochs {epochs}", file=sys.stderr)
print(epochs["matbench"], epochs["best"])
PY
read -r EMB EBEST < "$R/epochs.txt"
cat "$R/plan.log"
launch "$OUT/runs" "$EMB" "$EBEST"
archive() { tar czf "$OUT/results.tgz" --exclude='*.ckpt' "$OUT/runs" "$OUT/calib" "$R" 2>/dev/null; }
while [ -n "$(for p in $PIDS; do kill -0 "$p" 2>/dev/null && echo x; done)" ]; do
  sleep 15
  archive  # what is finished survives a device that is taken back
  if [ "$(el)" -gt "$DEADLINE" ]; then echo "watchdog: stopping at $(el) s"; kill $PIDS 2>/dev/null; sleep 3; break; fi
done
echo "runs ended at $(el) s"
$PY bench/matbench_perovskites.py --report "$OUT/runs" | tee "$OUT/matbench_report.md"
archive
echo "total $(el) s"
