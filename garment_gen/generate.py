"""Generate garments from the command line.

    python -m garment_gen.generate model=garment_model.pt shape=coat_mask.png texture=stars.jpg out=coat.png
    python -m garment_gen.generate model=garment_model.pt shape=shapes/ texture=textures/ out=grid_out/

With folders, every (shape, texture) combination is generated; each image is
written as ``<shape>__<texture>.png`` and a labelled ``grid.png`` shows shapes
as rows and textures as columns.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw

from garment_gen.data.io import IMAGE_EXTENSIONS
from garment_gen.errors import GarmentGenError
from garment_gen.inference import GarmentGenerator
from garment_gen.utils.images import save_png, to_uint8

log = logging.getLogger("garment_gen.generate")


def list_images(path: str | Path, what: str) -> list[Path]:
    """One file, or the image files of a folder (sorted); clear error when there are none."""
    p = Path(path).expanduser()
    if p.is_file():
        return [p]
    if p.is_dir():
        files = sorted(
            f for f in p.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS
        )
        if not files:
            raise GarmentGenError(
                f"{what}={path}: folder has no images ({', '.join(IMAGE_EXTENSIONS)})"
            )
        return files
    raise GarmentGenError(f"{what}={path}: no such file or folder")


def _label(tile: np.ndarray, text: str) -> np.ndarray:
    img = Image.fromarray(tile)
    draw = ImageDraw.Draw(img)
    h = max(10, tile.shape[0] // 6)
    draw.rectangle([0, tile.shape[0] - h, tile.shape[1], tile.shape[0]], fill=(0, 0, 0))
    draw.text((2, tile.shape[0] - h), text[: max(4, tile.shape[1] // 6)], fill=(255, 255, 255))
    return np.asarray(img)


def labelled_grid(
    shapes: torch.Tensor,
    textures: torch.Tensor,
    images: torch.Tensor,
    shape_names: list[str],
    texture_names: list[str],
    labels: bool = True,
    pad: int = 2,
) -> np.ndarray:
    """``uint8`` grid: top row = textures, left column = shape masks, cells = ``images[i, j]``.

    Args:
        shapes: ``[S, 1, R, R]`` in {0, 1}; textures: ``[T, 3, R, R]`` in [-1, 1];
        images: ``[S, T, 3, R, R]`` in [-1, 1].
    """
    s, t = images.shape[:2]
    r = images.shape[-1]
    size = r + pad
    sheet = np.full(((s + 1) * size + pad, (t + 1) * size + pad, 3), 255, np.uint8)

    def put(i: int, j: int, tile: np.ndarray) -> None:
        sheet[pad + i * size : pad + i * size + r, pad + j * size : pad + j * size + r] = tile

    for j in range(t):
        tile = to_uint8(textures[j])
        put(0, j + 1, _label(tile, texture_names[j]) if labels else tile)
    for i in range(s):
        tile = to_uint8(shapes[i] * 2 - 1)
        put(i + 1, 0, _label(tile, shape_names[i]) if labels else tile)
        for j in range(t):
            put(i + 1, j + 1, to_uint8(images[i, j]))
    return sheet


def generate_combinations(
    gen: GarmentGenerator,
    shapes: list[Any],
    textures: list[Any],
    truncation: float = 1.0,
    seed: int | None = None,
    batch_size: int = 32,
    progress: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every (shape, texture) pair -> ``(shape masks [S,1,R,R], textures [T,3,R,R], images [S,T,3,R,R])``."""
    from tqdm import tqdm

    masks = torch.cat([gen.shape_tensor(s) for s in shapes])
    texs = torch.cat([gen.texture_tensor(t) for t in textures])
    pairs = [(i, j) for i in range(len(shapes)) for j in range(len(textures))]
    out = torch.empty(len(shapes), len(textures), 3, gen.resolution, gen.resolution)
    bar = tqdm(
        total=len(pairs),
        desc="generating",
        unit="img",
        disable=not progress or len(pairs) < 2 * batch_size,
    )
    for k in range(0, len(pairs), batch_size):
        chunk = pairs[k : k + batch_size]
        m = masks[[i for i, _ in chunk]]
        x = texs[[j for _, j in chunk]]
        imgs = gen.generate_tensors(m, x, truncation, None if seed is None else seed + k).cpu()
        for (i, j), img in zip(chunk, imgs, strict=True):
            out[i, j] = img
        bar.update(len(chunk))
    bar.close()
    return masks.cpu(), texs.cpu(), out


def split_grid(
    gen: GarmentGenerator,
    root: str | Path,
    split: str = "test",
    n_shapes: int = 4,
    n_textures: int = 5,
    labels: bool = True,
) -> np.ndarray:
    """Shape x texture grid of a prepared dataset's garments (see :func:`labelled_grid`).

    Shapes are the masks of ``n_shapes`` garments spread over the first 32 of the split;
    textures are the images of ``n_textures`` others (the same picks for every model, so
    grids of two models compare cell by cell). Returns ``uint8`` ``[H, W, 3]``.
    """
    from garment_gen.data.dataset import read_manifest

    root = Path(root)
    rows = read_manifest(root, split)
    if not rows:
        raise GarmentGenError(f"split={split}: no samples in {root} (see its manifest.csv)")
    pool = rows[:32]
    shape_rows = pool[:: max(1, len(pool) // n_shapes)][:n_shapes]
    texture_rows = pool[min(3, len(pool) - 1) :: max(1, len(pool) // n_textures)][:n_textures]
    masks, texs, imgs = generate_combinations(
        gen,
        [root / "masks" / f"{r['id']}.png" for r in shape_rows],
        [root / "images" / f"{r['id']}.png" for r in texture_rows],
        progress=False,
    )
    return labelled_grid(
        masks,
        texs,
        imgs,
        [r["label"] for r in shape_rows],
        [r["label"] for r in texture_rows],
        labels,
    )


def run(
    model: str,
    shape: str,
    texture: str,
    out: str = "generated",
    truncation: float = 1.0,
    seed: int | None = None,
    device: str = "cpu",
    batch_size: int = 32,
    labels: bool = True,
) -> dict[str, Any]:
    """Generate one pair or every combination; returns ``{"images": [...], "grid": path or None}``.

    ``model`` is a ``garment_model.pt`` path or ``pretrained:NAME`` for a model shipped with
    the package (:func:`garment_gen.inference.available_pretrained`).
    """
    shape_files = list_images(shape, "shape")
    texture_files = list_images(texture, "texture")
    gen = GarmentGenerator.from_checkpoint(model, device=device)
    masks, texs, imgs = generate_combinations(
        gen, shape_files, texture_files, truncation, seed, batch_size
    )
    out_path = Path(out)
    single = len(shape_files) == 1 and len(texture_files) == 1
    if single and out_path.suffix.lower() == ".png":
        save_png(to_uint8(imgs[0, 0]), out_path)
        log.info("wrote %s", out_path)
        return {"images": [str(out_path)], "grid": None}
    written = []
    for i, sf in enumerate(shape_files):
        for j, tf in enumerate(texture_files):
            written.append(
                str(save_png(to_uint8(imgs[i, j]), out_path / f"{sf.stem}__{tf.stem}.png"))
            )
    sheet = labelled_grid(
        masks, texs, imgs, [f.stem for f in shape_files], [f.stem for f in texture_files], labels
    )
    grid_path = save_png(sheet, out_path / "grid.png")
    log.info("wrote %d images and %s", len(written), grid_path)
    return {"images": written, "grid": str(grid_path)}


def main() -> None:
    """Entry point for ``python -m garment_gen.generate``."""
    import hydra

    from garment_gen import conf_dir
    from garment_gen.cli import user_errors

    @hydra.main(version_base="1.3", config_path=str(conf_dir() / "cli"), config_name="generate")
    @user_errors
    def _app(cfg) -> None:
        from omegaconf import OmegaConf

        d = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
        d.pop("hydra", None)
        run(**d)

    _app()


if __name__ == "__main__":
    main()
