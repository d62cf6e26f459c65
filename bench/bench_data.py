"""Data-loading throughput: {image, mask, texture} triples per second from GarmentDataModule.

    python bench/bench_data.py [--root DATASET] [--resolution 64 256] [--workers 2] [--batch 32] [--batches 40]

Each resolution reads the dataset at ``root`` (a folder from garment_gen.prepare;
default: the bundled 64 px sample) and resizes on load when the dataset's own
resolution differs, so pass a dataset prepared at the largest resolution you
measure. Texture making (occlusion, crops, affine) runs in the workers, as in training.
The first pass (decoding PNGs into the in-memory cache) is reported separately.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch

from garment_gen.data.datamodule import GarmentDataModule


def measure(
    root: str | None, resolution: int | None, workers: int, batch: int, batches: int
) -> dict:
    dm = GarmentDataModule(
        root=root,
        resolution=resolution,
        batch_size=batch,
        num_workers=workers,
        persistent_workers=workers > 0,
    )
    dm.setup("fit")
    loader = dm.train_dataloader()
    it = iter(loader)
    t0 = time.perf_counter()
    n = 0
    for _ in range(min(batches, len(loader))):
        b = next(it)
        n += b["image"].shape[0]
    first = n / (time.perf_counter() - t0)
    # Steady state: later epochs (workers' caches warm).
    n, t0 = 0, time.perf_counter()
    while n < batches * batch:
        for b in loader:
            n += b["image"].shape[0]
            if n >= batches * batch:
                break
    steady = n / (time.perf_counter() - t0)
    return {
        "resolution": dm.resolution,
        "workers": workers,
        "batch": batch,
        "first_epoch_triples_per_s": round(first, 1),
        "triples_per_s": round(steady, 1),
        "dataset_size": len(dm.datasets["train"]),
    }


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--root", default=None)
    ap.add_argument("--resolution", type=int, nargs="+", default=[64])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--batches", type=int, default=40)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    rows = [measure(args.root, r, args.workers, args.batch, args.batches) for r in args.resolution]
    print(
        f"{'res':>5} {'workers':>7} {'batch':>5} {'first epoch/s':>14} {'triples/s':>10}  (cpu cores: {os.cpu_count()})"
    )
    for r in rows:
        print(
            f"{r['resolution']:>5} {r['workers']:>7} {r['batch']:>5} {r['first_epoch_triples_per_s']:>14} {r['triples_per_s']:>10}"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
