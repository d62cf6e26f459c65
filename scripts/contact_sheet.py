"""Contact sheet of a prepared dataset, for checking masks by eye.

    python scripts/contact_sheet.py DATASET OUT.png [--n 64] [--cols 8] [--split train] [--seed 0]

Each tile shows the photo crop with the mask outline in red, the aligned image,
and, with --textures, one texture view made the way training makes them.
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from garment_gen.data.dataset import GarmentDataset, read_manifest


def tile(ds: GarmentDataset, index: int, textures: bool) -> np.ndarray:
    image, mask, photo = ds.load(index)
    outlined = photo.copy()
    contours, _ = cv2.findContours(
        (mask > 0).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE
    )
    cv2.drawContours(outlined, contours, -1, (255, 0, 0), max(1, image.shape[0] // 64))
    parts = [outlined, image]
    if textures:
        tex = ds[index]["texture"].permute(1, 2, 0).add(1).mul(127.5).clamp(0, 255).byte().numpy()
        parts.append(tex)
    return np.concatenate(parts, axis=1)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("dataset")
    ap.add_argument("out")
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--cols", type=int, default=8)
    ap.add_argument("--split", default="train")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--textures", action="store_true")
    args = ap.parse_args()
    ds = GarmentDataset(args.dataset, args.split, augment=False)
    rows = read_manifest(args.dataset, args.split)
    idx = list(range(len(rows)))
    random.Random(args.seed).shuffle(idx)
    tiles = [tile(ds, i, args.textures) for i in idx[: args.n]]
    pad = 2
    th, tw = tiles[0].shape[:2]
    n_rows = (len(tiles) + args.cols - 1) // args.cols
    sheet = np.full((n_rows * (th + pad), args.cols * (tw + pad), 3), 40, np.uint8)
    for k, t in enumerate(tiles):
        r, c = divmod(k, args.cols)
        sheet[r * (th + pad) : r * (th + pad) + th, c * (tw + pad) : c * (tw + pad) + tw] = t
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(sheet).save(args.out)
    print(f"wrote {args.out} ({len(tiles)} samples from {args.split})")


if __name__ == "__main__":
    main()
