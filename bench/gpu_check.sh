#!/bin/bash
# GPU check of the training precisions on Matbench fold 0: the `matbench` preset in 32-true, bf16-mixed and
# 16-mixed and the `best` preset in 32-true and 16-mixed, five processes sharing the GPU for EPOCHS epochs each
# (a short cosine schedule: the runs are compared with each other, not with the leaderboard). Then, per run:
# every batch-norm running statistic finite, and the test predictions Lightning made on the GPU against
# `cgcnn-lab predict` of the same checkpoint on the CPU.
#
#   EPOCHS=30 OUT=runs/gpu-check bash bench/gpu_check.sh
#
# Env: DATA (Castelli csv), ATOM_INIT (element table json, for machines without pymatgen: with a graph cache in
# CGCNN_LAB_CACHE nothing else needs it), PYTHON, ACC (gpu), EPOCHS, OUT. Writes $OUT/gpu_check.md and $OUT/results.tgz.
source "$(dirname "$0")/gpu_common.sh"
EPOCHS=${EPOCHS:-30}
OUT=${OUT:-runs/gpu-check}
mkdir -p "$OUT/logs"
machine | tee "$OUT/env.txt"
MB="$PY bench/matbench_perovskites.py --data $DATA --accelerator ${ACC:-gpu} --folds 0 --epochs $EPOCHS"
PIDS=""
for run in matbench:32-true matbench:bf16-mixed matbench:16-mixed best:32-true best:16-mixed; do
  preset=${run%%:*} precision=${run#*:}
  $MB --preset "$preset" --out "$OUT/$precision" --precision "$precision" ${ATOM_INIT:+--atom-init $ATOM_INIT} \
    > "$OUT/logs/$preset-$precision.log" 2>&1 & PIDS="$PIDS $!"
done
wait $PIDS
echo "runs ended at $(el) s"
$PY - "$OUT" "$DATA" "${ATOM_INIT:-}" <<'PY' | tee "$OUT/gpu_check.md"
import subprocess, sys
from pathlib import Path
import numpy as np, pandas as pd, torch
from cgcnn_lab.inference import load_trained

out, data, atom_init = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
print("| preset | precision | test MAE (eV/cell), GPU | s/epoch | running stats finite | CPU predict vs GPU test, max abs diff |")
print("|---|---|---|---|---|---|")
for run in sorted(out.glob("*/*-fold0-seed0")):
    precision = run.parent.name
    if not (run / "metrics.json").exists():
        print(f"| {run.name} | {precision} | did not finish (see logs) | | | |"); continue
    model = load_trained(run).model
    finite = all(torch.isfinite(b).all().item() for name, b in model.named_buffers() if "running" in name)
    seconds = pd.read_csv(run / "metrics.csv")["seconds"].dropna()
    gpu = pd.read_csv(run / "test_results.csv", dtype={"id": str}).set_index("id")
    cmd = [sys.executable, "-m", "cgcnn_lab.cli", "predict", str(run), data, "--out", str(run / "cpu_predictions.csv")]
    subprocess.run(cmd + (["--atom-init", atom_init] if atom_init else []), check=True, capture_output=True)
    cpu = pd.read_csv(run / "cpu_predictions.csv", dtype={"id": str}).set_index("id").loc[gpu.index]
    diff = np.abs(cpu["prediction"].to_numpy() - gpu["prediction"].to_numpy()).max()
    mae = np.abs(gpu["prediction"] - gpu["target"]).mean()
    print(f"| {run.name.split('-')[0]} | {precision} | {mae:.4f} | {seconds.diff().median():.2f} | {finite} | {diff:.2e} |")
PY
tar czf "$OUT/results.tgz" --exclude='*.ckpt' --exclude='cpu_predictions.csv' "$OUT"/*/ 2>/dev/null
echo "total $(el) s"
