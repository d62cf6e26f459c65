#!/usr/bin/env bash
# The reference model in one prepared command (a GPU machine; runs on a CPU too, slowly):
# pretrain -> segmenter -> encoders within a wall-clock budget (default 9 minutes), then the
# float16 garment model, test metrics beside the paste baseline, grids and a model card.
#
#   bash scripts/train_reference.sh [--data ref_data] [--out DIR] [--minutes 9] [...]
#
# Every option goes to `python -m garment_gen.reference` (see its --help); given ones replace
# the defaults below. Make the dataset first, 64 px:
#   python -m garment_gen.prepare input_dir=../shared/datasets/clothing-cc0-small/images \
#       output_dir=ref_data resolution=64
# What lands in the output folder (default ${OUT:-outputs/reference}/model) is what ships:
# copy it to garment_gen/assets/models/reference/ (each file is checked to be < 16 MiB).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
if [ "$PY" = .venv/bin/python ]; then
  make install >/dev/null
fi
exec "$PY" -m garment_gen.reference --data ref_data --out "${OUT:-outputs/reference}/model" "$@"
