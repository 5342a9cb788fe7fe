#!/usr/bin/env bash
# The GPU check, on a bare GPU box (CUDA torch, no network, no Ray/MLflow/DeepSpeed), from the repository root with
# .gpucheck/ made by cluster/gpu/prepare.sh:   bash cluster/gpu/check.sh [RESULTS_DIR]   (default $OUT, else
# gpucheck-results). About 7 minutes on an H200; every figure lands in RESULTS_DIR as it is measured:
#   device.txt        GPU, driver, torch and CUDA versions
#   engine_check.json s per 1,000 steps at paper size, B = 32, L = 21 (bf16, fp32, each with --compile), the plain
#                     loop, loader batches/s with 1 and 4 workers, checkpoint round trip, losses, peak GPU memory,
#                     evaluate/predict scoring on GPU vs CPU (python -m distsleep.bench.engine check)
#   mamba.txt         mamba-ssm's kernel vs distsleep's PyTorch selective scan (python -m distsleep.models.mamba cuda),
#                     when the kernel builds on this box (cluster/gpu/build_mamba.py, in the background meanwhile)
set -uo pipefail
cd "$(dirname "$0")/../.."
RESULTS=$(realpath -m "${1:-${OUT:-gpucheck-results}}")
CHECK_TIMEOUT=${CHECK_TIMEOUT:-450}   # the device tool's call limit is 600 s; leaves room for set-up and Mamba
# A dry run on a CPU machine with the project's .venv: PYTHON=.venv/bin/python WHEELS=0 SIZE=small STEPS=3 NO_COMPILE=1
SIZE=${SIZE:-paper} STEPS=${STEPS:-100} WARMUP=${WARMUP:-20} PYTHON=${PYTHON:-python3}
mkdir -p "$RESULTS"
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1
SITE=$(mktemp -d)
if [ "${WHEELS:-1}" = 1 ]; then
  $PYTHON -m pip install --quiet --no-index --no-deps --target "$SITE" .gpucheck/whl/*.whl || exit 1
fi
export PYTHONPATH="$SITE:$PWD"

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1
  $PYTHON -c "import torch; print('torch', torch.__version__, 'CUDA', torch.version.cuda, 'available', torch.cuda.is_available())"
  command -v nvcc >/dev/null && nvcc --version | tail -1 || echo "no nvcc: the Mamba kernel cannot be built"; } \
  | tee "$RESULTS/device.txt"

MAMBA_PID=
if command -v nvcc >/dev/null && ls .gpucheck/mamba/*.tar.gz >/dev/null 2>&1; then
  MAX_JOBS=8 timeout $((CHECK_TIMEOUT + 60)) $PYTHON cluster/gpu/build_mamba.py .gpucheck/mamba/*.tar.gz "$SITE" \
    > "$RESULTS/mamba_build.log" 2>&1 &
  MAMBA_PID=$!
fi

COMPILE=--compile; [ "${NO_COMPILE:-0}" = 1 ] && COMPILE=
timeout "$CHECK_TIMEOUT" $PYTHON -m distsleep.bench.engine check --shards .gpucheck/shards/manifest.json \
  --out "$RESULTS" --size "$SIZE" --steps "$STEPS" --warmup "$WARMUP" $COMPILE 2>&1 | tee "$RESULTS/check.log"
STATUS=${PIPESTATUS[0]}

if [ -n "$MAMBA_PID" ]; then
  if wait "$MAMBA_PID"; then
    timeout 120 $PYTHON -m distsleep.models.mamba cuda 2>&1 | tee "$RESULTS/mamba.txt"
  else
    echo "the Mamba kernel did not build: tail of $RESULTS/mamba_build.log" | tee "$RESULTS/mamba.txt"
    tail -20 "$RESULTS/mamba_build.log" | tee -a "$RESULTS/mamba.txt"
  fi
fi
echo "check exit status $STATUS; results in $RESULTS"
exit "$STATUS"
