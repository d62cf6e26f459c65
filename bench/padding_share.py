"""How much of a square vs a 3:4 portrait frame is garment, and how much is wasted background.

    python bench/padding_share.py [PHOTOS] [--limit 300] [--resolution 64] [--workers 2]

Each photo under ``PHOTOS`` (default ``../shared/datasets/clothing-cc0-small``, when it exists)
gets the mask ``garment_gen.prepare`` would give it without a mask file or segmenter (the
classical bootstrap, ``garment_gen.data.masks.classical_mask``, at prepare's GrabCut size, with
prepare's area check), and is aligned both ways with prepare's default margin. Printed: the
mean share of the frame that is garment (mask area / frame area, the ``garment_share`` that
prepare reports) and the mean share that is background, overall and per label (the photo's
folder). ``--limit N`` takes N photos spread evenly over the sorted list. Photos are only read.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import cv2
import numpy as np

from garment_gen.data.align import align_garment
from garment_gen.data.io import IMAGE_EXTENSIONS, load_rgb
from garment_gen.data.masks import MaskCheck, classical_mask
from garment_gen.errors import BadInputError
from garment_gen.prepare import SPLIT_ALIASES, PrepareConfig

ASPECTS = ("1:1", "3:4")
DEFAULT_PHOTOS = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "clothing-cc0-small"


def photos_under(root: Path, limit: int | None) -> list[Path]:
    files = sorted(
        p
        for p in root.rglob("*")
        if p.is_file()
        and p.suffix.lower() in IMAGE_EXTENSIONS
        and not any(part.startswith(".") for part in p.relative_to(root).parts)
    )
    if limit is not None and len(files) > limit:
        files = [files[i] for i in np.linspace(0, len(files) - 1, limit).round().astype(int)]
    return files


def label_of(path: Path, root: Path) -> str:
    parts = path.relative_to(root).parts[:-1]
    labels = [p for p in parts if p.lower() not in SPLIT_ALIASES and p != "images"]
    return labels[-1] if labels else "(none)"


def measure(args: tuple[Path, int]) -> dict[str, float] | str:
    """``{aspect: garment share}`` of one photo, or the reason it is skipped (as prepare would)."""
    path, resolution = args
    cv2.setNumThreads(1)
    cfg = PrepareConfig()
    try:
        image = load_rgb(path, max_pixels=cfg.max_pixels, background=cfg.background)
        work_size = cfg.grabcut_size or min(320, max(128, 2 * resolution))  # as prepare
        mask, source = classical_mask(
            image, work_size=work_size, area_range=(cfg.min_area, cfg.max_area)
        )
        MaskCheck(cfg.min_area, cfg.max_area)(mask, path, source)
    except BadInputError as exc:
        return exc.reason
    return {
        aspect: float(
            (
                align_garment(image, mask, resolution, cfg.margin, cfg.background, aspect).mask > 0
            ).mean()
        )
        for aspect in ASPECTS
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("photos", nargs="?", type=Path, default=None, help="folder of garment photos")
    ap.add_argument("--limit", type=int, default=None, help="at most this many photos")
    ap.add_argument("--resolution", type=int, default=64, help="frame height in pixels")
    ap.add_argument("--workers", type=int, default=1, help="processes")
    a = ap.parse_args(argv)
    root = a.photos
    if root is None:
        if not DEFAULT_PHOTOS.is_dir():
            ap.error(f"no photo folder given and the default {DEFAULT_PHOTOS} does not exist")
        root = DEFAULT_PHOTOS
    if not root.is_dir():
        ap.error(f"{root}: not a folder")
    if a.limit is not None and a.limit < 1:
        ap.error("--limit must be 1 or more")
    if a.resolution < 8 or a.resolution & (a.resolution - 1):
        ap.error("--resolution must be a power of two, 8 or more")
    files = photos_under(root, a.limit)
    if not files:
        ap.error(f"{root}: no photos found")

    t0 = time.perf_counter()
    jobs = [(f, a.resolution) for f in files]
    if a.workers > 1:
        with ProcessPoolExecutor(min(a.workers, os.cpu_count() or 1)) as pool:
            results = list(pool.map(measure, jobs, chunksize=8))
    else:
        results = [measure(j) for j in jobs]
    seconds = time.perf_counter() - t0

    shares: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    skipped = 0
    for f, r in zip(files, results, strict=True):
        if isinstance(r, str):
            skipped += 1
            continue
        for group in ("(all)", label_of(f, root)):
            for aspect, s in r.items():
                shares[group][aspect].append(s)
    n = len(shares["(all)"]["1:1"])
    print(
        f"{root}: {n} photos aligned at {a.resolution} px high, {skipped} skipped "
        f"(no plausible mask), {seconds:.0f} s"
    )
    if not n:
        return 1
    print(
        f"{'label':<12} {'n':>5}  {'square garment':>14} {'background':>10}  "
        f"{'3:4 garment':>11} {'background':>10}"
    )
    for group in ["(all)", *sorted(g for g in shares if g != "(all)")]:
        sq, pt = np.mean(shares[group]["1:1"]), np.mean(shares[group]["3:4"])
        print(
            f"{group:<12} {len(shares[group]['1:1']):>5}  {sq:>14.1%} {1 - sq:>10.1%}  "
            f"{pt:>11.1%} {1 - pt:>10.1%}"
        )
    sq_px, pt_px = a.resolution * a.resolution, a.resolution * (a.resolution * 3 // 4)
    sq, pt = np.mean(shares["(all)"]["1:1"]), np.mean(shares["(all)"]["3:4"])
    print(
        f"garment pixels per frame: square {sq * sq_px:.0f} of {sq_px}, "
        f"3:4 {pt * pt_px:.0f} of {pt_px}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
