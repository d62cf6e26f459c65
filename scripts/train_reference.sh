#!/usr/bin/env bash
# The reference model in one prepared command: `python -m garment_gen.reference` with the
# experiment conf/experiment/reference.yaml (pretrain -> segmenter -> encoders within a
# wall-clock budget, 120 minutes on 2 CPU cores by default), then the float16 garment model,
# test metrics beside the mean-garment and paste baselines, grids and a model card.
#
#   bash scripts/train_reference.sh [pipeline.minutes=120] [pipeline.out=DIR] [OVERRIDE ...]
#
# Run it again after a stop: it resumes from the checkpoints in pipeline.work. Make the
# dataset first, 64 px:
#   python -m garment_gen.prepare input_dir=../shared/datasets/clothing-cc0-small/images \
#       output_dir=ref_data resolution=64
# What lands in pipeline.out (default outputs/reference/model) is what ships: copy it to
# garment_gen/assets/models/reference/ (each file is checked to be < 16 MiB).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
if [ "$PY" = .venv/bin/python ]; then
  make install >/dev/null
fi
exec "$PY" -m garment_gen.reference pipeline.data=ref_data "$@"
