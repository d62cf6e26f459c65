"""Generate garments from the command line.

    python -m garment_gen.generate model=garment_model.pt shape=coat_mask.png texture=stars.jpg out=coat.png
    python -m garment_gen.generate model=garment_model.pt shape=shapes/ texture=textures/ out=grid_out/

With folders, every (shape, texture) combination is generated; each image is
written (atomically) as ``<shape>__<texture>.png`` as soon as it is made, and a
labelled ``grid.png`` at the end shows shapes as rows and textures as columns.
An unusable file in a folder is skipped with one line; the run fails only when
nothing can be generated. Options and the output location are checked before
the model is loaded.
"""

from __future__ import annotations

import logging
import math
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw

from garment_gen.data.io import IMAGE_EXTENSIONS, visible_share
from garment_gen.errors import GarmentGenError
from garment_gen.inference import GarmentGenerator
from garment_gen.utils.images import save_png, to_uint8
from garment_gen.utils.oserrors import check_writable, disk_reason, is_disk_error

# Inputs with fewer visible (non-transparent) pixels than this share hold nothing to use.
MIN_VISIBLE_SHARE = 0.01
MAX_TRUNCATION = 2.0

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


class GridSheet:
    """A ``uint8`` shape x texture sheet filled tile by tile (see :func:`labelled_grid`).

    Only the sheet is held, not the generated tensors, so a big folder run needs
    ``(S + 1) x (T + 1)`` tiles of memory, once, in 8 bits.
    """

    def __init__(
        self,
        n_shapes: int,
        n_textures: int,
        resolution: int,
        pad: int = 2,
        width: int | None = None,
    ):
        self.r, self.pad = resolution, pad
        self.w = resolution if width is None else int(width)  # tiles are R x W (portrait: 3R/4)
        self.size, self.size_w = resolution + pad, self.w + pad
        self.sheet = np.full(
            ((n_shapes + 1) * self.size + pad, (n_textures + 1) * self.size_w + pad, 3),
            255,
            np.uint8,
        )

    def put(self, row: int, col: int, tile: np.ndarray) -> None:
        """Tile ``uint8 [R, W, 3]`` at sheet ``row``/``col`` (row 0: textures, col 0: shapes)."""
        y, x = self.pad + row * self.size, self.pad + col * self.size_w
        self.sheet[y : y + self.r, x : x + self.w] = tile

    def put_texture(self, j: int, texture: torch.Tensor, name: str, labels: bool = True) -> None:
        """Texture ``j``: float ``[3, R, R]`` in [-1, 1]."""
        tile = to_uint8(texture)
        self.put(0, j + 1, _label(tile, name) if labels else tile)

    def put_shape(self, i: int, shape: torch.Tensor, name: str, labels: bool = True) -> None:
        """Shape ``i``: mask float ``[1, R, R]`` in {0, 1}."""
        tile = to_uint8(shape * 2 - 1)
        self.put(i + 1, 0, _label(tile, name) if labels else tile)

    def put_image(self, i: int, j: int, image: torch.Tensor) -> None:
        """Generated image for shape ``i`` and texture ``j``: float ``[3, R, R]`` in [-1, 1]."""
        self.put(i + 1, j + 1, to_uint8(image))


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
    sheet = GridSheet(s, t, images.shape[-2], pad, width=images.shape[-1])
    for j in range(t):
        sheet.put_texture(j, textures[j], texture_names[j], labels)
    for i in range(s):
        sheet.put_shape(i, shapes[i], shape_names[i], labels)
        for j in range(t):
            sheet.put_image(i, j, images[i, j])
    return sheet.sheet


def iter_combinations(
    gen: GarmentGenerator,
    masks: torch.Tensor,
    texs: torch.Tensor,
    truncation: float = 1.0,
    seed: int | None = None,
    batch_size: int = 32,
    progress: bool = True,
) -> Iterator[tuple[int, int, torch.Tensor]]:
    """Every (shape, texture) pair, a batch at a time: yields ``(i, j, image [3, R, R])`` in [-1, 1].

    Args:
        masks: aligned shape masks ``[S, 1, R, R]`` in {0, 1}; texs: textures ``[T, 3, R, R]``.
        seed: None for the generator's fixed noise; an int seeds the batch that starts at
            pair ``k`` with ``seed + k``.
    """
    from tqdm import tqdm

    pairs = [(i, j) for i in range(len(masks)) for j in range(len(texs))]
    bar = tqdm(
        total=len(pairs),
        desc="generating",
        unit="img",
        disable=not progress or len(pairs) < 2 * batch_size,
    )
    try:
        for k in range(0, len(pairs), batch_size):
            chunk = pairs[k : k + batch_size]
            m = masks[[i for i, _ in chunk]]
            x = texs[[j for _, j in chunk]]
            imgs = gen.generate_tensors(m, x, truncation, None if seed is None else seed + k).cpu()
            for (i, j), img in zip(chunk, imgs, strict=True):
                yield i, j, img
            bar.update(len(chunk))
    finally:
        bar.close()


def generate_combinations(
    gen: GarmentGenerator,
    shapes: list[Any],
    textures: list[Any],
    truncation: float = 1.0,
    seed: int | None = None,
    batch_size: int = 32,
    progress: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every (shape, texture) pair -> ``(shape masks [S,1,R,R], textures [T,3,R,R], images [S,T,3,R,R])``.

    Holds every result in memory; :func:`run` writes them one by one instead.
    """
    masks = torch.cat([gen.shape_tensor(s) for s in shapes]).cpu()
    texs = torch.cat([gen.texture_tensor(t) for t in textures]).cpu()
    out = torch.empty(len(shapes), len(textures), 3, gen.height, gen.width)
    for i, j, img in iter_combinations(gen, masks, texs, truncation, seed, batch_size, progress):
        out[i, j] = img
    return masks, texs, out


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


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def check_options(truncation: Any, seed: Any, device: Any, batch_size: Any, labels: Any) -> None:
    """Reject an option of the wrong type or range before any work, naming the key.

    Raises:
        GarmentGenError: ``<key>=<value>: must be ...``.
    """
    if not _is_int(batch_size) or batch_size < 1:
        raise GarmentGenError(f"batch_size={batch_size}: must be a whole number, 1 or more")
    if (
        not isinstance(truncation, (int, float))
        or isinstance(truncation, bool)
        or not math.isfinite(truncation)
        or not 0 <= truncation <= MAX_TRUNCATION
    ):
        raise GarmentGenError(
            f"truncation={truncation}: must be a number from 0 to {MAX_TRUNCATION:g} "
            "(1 = off; below 1 pulls styles toward the average garment)"
        )
    if seed is not None and not _is_int(seed):
        raise GarmentGenError(f"seed={seed}: must be a whole number, or null for fixed noise")
    if not isinstance(labels, bool):
        raise GarmentGenError(f"labels={labels}: must be true or false")
    if not isinstance(device, str) or not device:
        raise GarmentGenError(f"device={device}: must be cpu, cuda or cuda:N")


def _check_visible(path: Path, kind: str) -> None:
    share = visible_share(path)
    if share < MIN_VISIBLE_SHARE:
        raise GarmentGenError(
            f"{path}: {kind} is fully transparent ({share:.1%} of its pixels visible); "
            f"nothing to take a {kind} from"
        )


def encode_inputs(
    gen: GarmentGenerator, files: list[Path], kind: str, skip_bad: bool
) -> tuple[torch.Tensor | None, list[Path], list[dict[str, str]]]:
    """Align every ``shape`` or ``texture`` file: ``(tensors [N, C, R, R] or None, kept, skipped)``.

    With ``skip_bad`` an unusable file is logged in one line and left out; otherwise its error
    is raised.
    """
    tensors, kept, skipped = [], [], []
    encode = gen.shape_tensor if kind == "shape" else gen.texture_tensor
    for f in files:
        try:
            _check_visible(f, kind)
            tensors.append(encode(f).cpu())
        except Exception as exc:  # noqa: BLE001 - one odd file must not stop a folder run
            reason = (
                str(exc)
                if isinstance(exc, GarmentGenError)
                else f"{f}: unexpected error: {exc.__class__.__name__}: {exc}"
            )
            if not skip_bad:
                raise GarmentGenError(reason) from None
            log.warning("skipped %s %s", kind, reason)
            skipped.append({"kind": kind, "path": str(f), "reason": reason})
            continue
        kept.append(f)
    return (torch.cat(tensors) if tensors else None), kept, skipped


def _output_folder(out: str, single: bool) -> tuple[Path, bool]:
    """``(folder written into, True when out is one .png file)``; proven writable now."""
    out_path = Path(out).expanduser()
    suffix = out_path.suffix.lower()
    if single and suffix in IMAGE_EXTENSIONS and suffix != ".png":
        raise GarmentGenError(f"out={out}: results are PNG images; give a name ending in .png")
    one_file = single and suffix == ".png"
    if one_file and out_path.is_dir():
        raise GarmentGenError(f"out={out}: is a folder; give a file name ending in .png")
    folder = out_path.parent if one_file else out_path
    check_writable(folder, "out")
    return folder, one_file


def _save(arr: np.ndarray, path: Path, n_written: int) -> str:
    """Write one PNG atomically; a full or read-only disk is one error line, not a traceback."""
    try:
        return str(save_png(arr, path))
    except OSError as exc:
        reason = disk_reason(exc) if is_disk_error(exc) else f"{exc.__class__.__name__}: {exc}"
        raise GarmentGenError(
            f"out={path.parent}: {reason} while writing {path.name}; the run was stopped "
            f"({n_written} images written before it are complete)"
        ) from None


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
    """Generate one pair or every combination; returns ``{"images": [...], "grid": path or None,
    "skipped": [{kind, path, reason}, ...]}``.

    ``model`` is a ``garment_model.pt`` path or ``pretrained:NAME`` for a model shipped with
    the package (:func:`garment_gen.inference.available_pretrained`). With a folder of shapes
    or textures, unusable files there are skipped (one log line each); each image is written
    as soon as it is made.

    Raises:
        GarmentGenError: a bad option, input or model, an output location that cannot be
            written, or nothing could be generated.
    """
    check_options(truncation, seed, device, batch_size, labels)
    model, shape, texture, out = str(model), str(shape), str(texture), str(out)
    shape_files = list_images(shape, "shape")
    texture_files = list_images(texture, "texture")
    single = len(shape_files) == 1 and len(texture_files) == 1
    out_dir, one_file = _output_folder(out, single)
    gen = GarmentGenerator.from_checkpoint(model, device=device)

    masks, shape_files, skipped = encode_inputs(gen, shape_files, "shape", Path(shape).is_dir())
    texs, texture_files, skipped_tex = encode_inputs(
        gen, texture_files, "texture", Path(texture).is_dir()
    )
    skipped += skipped_tex
    for kind, tensors, given in (("shape", masks, shape), ("texture", texs, texture)):
        if tensors is None:
            raise GarmentGenError(
                f"{kind}={given}: none of its images could be used (see the lines above); "
                "nothing was generated"
            )
    pairs = iter_combinations(gen, masks, texs, float(truncation), seed, batch_size)
    if one_file:
        _, _, img = next(pairs)
        path = _save(to_uint8(img), Path(out).expanduser(), 0)
        log.info("wrote %s", path)
        return {"images": [path], "grid": None, "skipped": skipped}

    sheet = GridSheet(len(shape_files), len(texture_files), gen.height, width=gen.width)
    for j, tf in enumerate(texture_files):
        sheet.put_texture(j, texs[j], tf.stem, labels)
    for i, sf in enumerate(shape_files):
        sheet.put_shape(i, masks[i], sf.stem, labels)
    written = []
    for i, j, img in pairs:
        name = f"{shape_files[i].stem}__{texture_files[j].stem}.png"
        written.append(_save(to_uint8(img), out_dir / name, len(written)))
        sheet.put_image(i, j, img)
    grid_path = _save(sheet.sheet, out_dir / "grid.png", len(written))
    log.info(
        "wrote %d images (%d shapes x %d textures) and %s",
        len(written),
        len(shape_files),
        len(texture_files),
        grid_path,
    )
    if skipped:
        log.warning(
            "skipped %d unusable input(s): %s",
            len(skipped),
            ", ".join(Path(x["path"]).name for x in skipped),
        )
    return {"images": written, "grid": grid_path, "skipped": skipped}


def main() -> None:
    """Entry point for ``python -m garment_gen.generate``."""

    from garment_gen import conf_dir
    from garment_gen.cli import hydra_main, user_errors

    @user_errors
    def _app(cfg) -> None:
        from omegaconf import OmegaConf

        d = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
        d.pop("hydra", None)
        try:
            run(**d)
        except KeyboardInterrupt:
            print(
                f"error: interrupted; the images already in out={d.get('out')} are complete",
                file=sys.stderr,
            )
            raise SystemExit(130) from None

    hydra_main(conf_dir() / "cli", "generate", _app)


if __name__ == "__main__":
    main()
