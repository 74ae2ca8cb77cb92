# Sourced by the GPU scripts (gpu_session.sh, gpu_check.sh): one thread per process (many runs share the host),
# the interpreter and data they use, a clock, and a record of the machine and library versions.
set -u
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
PY=${PYTHON:-python3}
DATA=${DATA:-../shared/data/castelli_perovskites.csv.gz}
T0=$(date +%s)
el() { echo $(( $(date +%s) - T0 )); }
machine() {
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null
  echo "cores: $(nproc --all); commit $(git rev-parse --short HEAD 2>/dev/null)"
  $PY -c "import torch, lightning, torch_geometric, sys; print(sys.version.split()[0], torch.__version__, lightning.__version__, torch_geometric.__version__, torch.cuda.is_available())"
}
