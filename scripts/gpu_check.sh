#!/usr/bin/env bash
# One prepared script for a lent GPU machine (about 8 minutes): CUDA tests, then the
# benchmark table at 256 px in bf16. Results go to ${OUT:-gpu_check_out}/.
#   bash scripts/gpu_check.sh            (creates .venv with `make install` if missing)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu_check_out}
mkdir -p "$OUT"
make install >/dev/null
PY=.venv/bin/python
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
timeout 240 $PY -m pytest -q -m gpu tests/test_gpu.py 2>&1 | tail -15 | tee "$OUT/pytest_gpu.txt" || true
# Pretrain step: the standard 256 px config (channel_base 16384), bf16, batch 32.
timeout 150 $PY bench/bench_stylegan2.py --device cuda --dtype bf16 --resolution 256 --batch 32 \
  --channel-base 16384 --channel-max 512 --steps 10 --warmup 3 --json "$OUT/bench_pretrain_256.json" | tee "$OUT/bench_pretrain_256.txt" || true
# Encoders step and batched generation on the same generator.
timeout 120 $PY bench/bench_encoders.py --device cuda --dtype bf16 --resolution 256 --batch 32 --gen-batch 256 \
  --channel-base 16384 --channel-max 512 --w-dim 512 --steps 10 --warmup 3 --json "$OUT/bench_encoders_256.json" | tee "$OUT/bench_encoders_256.txt" || true
echo "results in $OUT/"
