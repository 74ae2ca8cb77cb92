#!/usr/bin/env bash
# Fine-tuning the published CGCNN models vs training from scratch (same architecture, same split, 3 seeds).
#   bash bench/finetune.sh [OUT_DIR]      (about 40 minutes on 2 CPU cores)
# Results: OUT_DIR/finetune-mp/summary.md and OUT_DIR/finetune-course/summary.md (recorded in BENCHMARKS.md).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-runs/bench}
shared=../shared
pretrained=$shared/pretrained/cgcnn-original
atom_init=$shared/data/homework/perovskite_energy/atom_init.json   # the original element encoding

# Materials Project perovskites, formation energy per atom: scratch vs formation-energy-per-atom.pth.tar
.venv/bin/cgcnn-lab compare $shared/data/mp_perovskites.csv.gz --target e_form_per_atom --unit eV/atom \
    --atom-init $atom_init --n-conv 4 --h-fea-len 32 --epochs 100 --seeds 3 --parallel 2 --no-progress \
    --grid init_from=scratch,$pretrained/formation-energy-per-atom.pth.tar --out "$out/finetune-mp"

# Course perovskites per atom: scratch vs final-energy-per-atom.pth.tar, with and without element references
.venv/bin/cgcnn-lab compare $shared/data/homework/perovskite_energy --per-atom --unit eV \
    --n-conv 4 --h-fea-len 32 --epochs 100 --seeds 3 --parallel 2 --no-progress \
    --grid init_from=scratch,$pretrained/final-energy-per-atom.pth.tar --grid element_ref=on,off \
    --out "$out/finetune-course"

# Course perovskites, fine-tuning that starts from the checkpoint's predictions (kept output scale, element references
# fitted to its errors; commit 335757a) at a fine-tuning learning rate
.venv/bin/cgcnn-lab compare $shared/data/homework/perovskite_energy --per-atom --unit eV \
    --n-conv 4 --h-fea-len 32 --epochs 100 --lr 5e-4 --seeds 3 --parallel 2 --no-progress \
    --grid init_from=$pretrained/final-energy-per-atom.pth.tar --out "$out/finetune-course-continued"

# The same from the formation-energy model: total energy per atom = formation energy per atom + Σ_i c_i μ_i, so with
# element references it is continued too (commit 21f15b6), and its learning rate
.venv/bin/cgcnn-lab compare $shared/data/homework/perovskite_energy --per-atom --unit eV \
    --n-conv 4 --h-fea-len 32 --epochs 100 --seeds 3 --parallel 2 --no-progress \
    --init-from $pretrained/formation-energy-per-atom.pth.tar --grid lr=1e-4,2.5e-4,5e-4 \
    --out "$out/finetune-course-formation"
