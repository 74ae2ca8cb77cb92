#!/bin/bash
# Issue 23 on a GPU, in one short call: K `matbench` members in one process on Matbench fold 0.
#   1. bench/members_speed.py on the GPU: the model loop (forward, loss, backward, fused AdamW) of K = 1, 8, 16
#      members stacked against K separate models, with the equality check first;
#   2. bench/members_train.py --stacked-only: `cgcnn-lab train --members 16` end to end for EPOCHS epochs, reported
#      as seconds per member-epoch (the target: <= 0.25 s; one run alone: 3.41 s per epoch on an H200).
#
#   EPOCHS=3 OUT=runs/gpu-members bash bench/gpu_members.sh
source "$(dirname "$0")/gpu_common.sh"
EPOCHS=${EPOCHS:-3}
OUT=${OUT:-runs/gpu-members}
mkdir -p "$OUT"
machine | tee "$OUT/env.txt"
DATA="$DATA" $PY bench/members_speed.py --device cuda --threads 1 --members 1 8 16 --rounds 3 --no-vmap --no-profile \
  > "$OUT/members_speed.md" 2>&1
echo "model loop done at $(el) s"
$PY bench/members_train.py --data "$DATA" --accelerator gpu --threads 1 --members 16 --epochs "$EPOCHS" --stacked-only \
  > "$OUT/members_train.md" 2>&1
echo "end to end done at $(el) s"
tail -n 8 "$OUT/members_speed.md" "$OUT/members_train.md"
