#!/usr/bin/env bash
# Prepares, on a CPU machine with the project's .venv, what the GPU check carries to a bare GPU box (no network;
# CUDA torch, NumPy, SciPy, scikit-learn and pandas only): .gpucheck/ with
#   whl/      the pure-Python and CPython 3.12 wheels the check needs beyond those, at requirements.lock's versions,
#             and deepspeed built here (DS_BUILD_OPS=0: its ops are JIT-built on the box if ever needed)
#   shards/   10 generated SHHS-format nights of 4 h, preprocessed (relative paths: the folder moves as it is)
#   mamba/    the mamba-ssm sdist (requirements-gpu.lock), compiled on the box by cluster/gpu/check.sh
# About 40 MB, under the device tool's 64 MiB per call. .gpucheck/ is kept out of git (.git/info/exclude), and it
# travels with `carry: [".gpucheck"]`; cluster/gpu/check.sh is the one command the box runs.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=.gpucheck
PY=.venv/bin/python
pin() { grep -i "^$1==" requirements.lock requirements-gpu.lock | head -1 | cut -d: -f2; }

grep -qx "/$OUT/" .git/info/exclude 2>/dev/null || echo "/$OUT/" >> .git/info/exclude
rm -rf "$OUT" && mkdir -p "$OUT/whl" "$OUT/mamba"

# deepspeed's and the loader's needs, and einops for mamba-ssm's Python side
WHEELS=(webdataset braceexpand hjson pydantic pydantic_core annotated-types typing-inspection typing_extensions
        py-cpuinfo msgpack psutil ninja einops)
$PY -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp --abi cp312 \
    --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
    -d "$OUT/whl" $(for w in "${WHEELS[@]}"; do pin "$w"; done)
DS_BUILD_OPS=0 .venv/bin/pip wheel --quiet --no-deps --no-build-isolation -w "$OUT/whl" "$(pin deepspeed)"
# pip download would run mamba-ssm's setup.py, which needs a CUDA torch: fetch the sdist from the index, checked
# against the sha256 the index gives
MAMBA=$(pin mamba-ssm); MAMBA_FILE="mamba_ssm-${MAMBA#*==}.tar.gz"
URL=$(curl -fsS https://pypi.org/simple/mamba-ssm/ | grep -o "https://[^\"]*/$MAMBA_FILE#sha256=[0-9a-f]*" | head -1)
curl -fsSL -o "$OUT/mamba/$MAMBA_FILE" "${URL%#*}"
echo "${URL#*sha256=}  $OUT/mamba/$MAMBA_FILE" | sha256sum --check --quiet

.venv/bin/distsleep synth --out "$OUT/gen" --n-records 10 --hours 4 --seed 2026 --quiet
.venv/bin/distsleep preprocess --root "$OUT/gen" --out "$OUT/shards" --quiet
rm -rf "$OUT/gen"
du -sh "$OUT"
