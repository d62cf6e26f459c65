#!/usr/bin/env bash
# One prepared script for a lent GPU machine (about 8 minutes): CUDA tests, then the
# benchmark table at 256 px in bf16. Results go to ${OUT:-gpu_check_out}/.
#   bash scripts/gpu_check.sh            (creates .venv with `make install` if missing)
# On a GPU machine without network (its image has torch but not hydra & co.), carry the kit
# of scripts/device_kit.sh and run with the image's python:
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
#       --target /tmp/site .device_kit/whl/*.whl && \
#   export PYTHONPATH=/tmp/site:$PWD/.device_kit/site:$PWD && PY=python3 bash scripts/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu_check_out}
mkdir -p "$OUT"
PY=${PY:-.venv/bin/python}
if [ "$PY" = .venv/bin/python ]; then
  make install >/dev/null
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
timeout 240 $PY -m pytest -q -m gpu tests/test_gpu.py 2>&1 | tail -15 | tee "$OUT/pytest_gpu.txt" || true
# The benchmark table at 256 px, standard config (channel_base 16384, w_dim 512), bf16, batch 32.
timeout 300 $PY bench/run_all.py --device cuda --dtype bf16 --resolution 256 --batch 32 \
  --channel-base 16384 --channel-max 512 --w-dim 512 --json "$OUT/bench_256_bf16.json" | tee "$OUT/bench_256_bf16.txt" || true
echo "results in $OUT/"
