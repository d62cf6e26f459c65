"""Prepared-dataset reader yielding ``{image, mask, texture, photo, id}`` triples."""

from __future__ import annotations

import csv
import json
import zlib
from dataclasses import asdict
from pathlib import Path
from typing import Any

import albumentations as A
import cv2
import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from garment_gen.data.aspect import DEFAULT_ASPECT, frame_size
from garment_gen.data.occlusion import TextureConfig, make_texture
from garment_gen.errors import GarmentGenError

SPLITS = ("train", "validation", "test")
REPREPARE = "the dataset changed after prepare; re-run garment_gen.prepare to rebuild it"


class SampleReadError(GarmentGenError):
    """A prepared sample file cannot be read.

    A DataLoader worker re-raises an exception in the main process as
    ``type(exc)("Caught X in DataLoader worker process 0. Original Traceback ...")``; this
    class takes its own one-line message back out of that text, so the command line still
    prints one ``error:`` line naming the file.
    """

    def __init__(self, message: str):
        super().__init__(self._original(str(message)))

    @classmethod
    def _original(cls, message: str) -> str:
        if not message.startswith("Caught ") or "Original Traceback" not in message:
            return message
        marker = f"{cls.__name__}: "
        for line in reversed(message.strip().splitlines()):
            if marker in line:
                return line.split(marker, 1)[1].strip()
        return message.strip().splitlines()[-1]


def read_dataset_meta(root: str | Path) -> dict[str, Any]:
    """Read ``dataset.json`` of a prepared dataset, with a clear error when it is not one."""
    root = Path(root)
    meta_path = root / "dataset.json"
    if not (root / "manifest.csv").is_file() or not meta_path.is_file():
        raise GarmentGenError(
            f"data.root={root}: not a prepared dataset (no manifest.csv / dataset.json); "
            "make one with `python -m garment_gen.prepare input_dir=PHOTOS output_dir=OUT`"
        )
    try:
        return json.loads(meta_path.read_text())
    except ValueError as exc:
        raise GarmentGenError(f"{meta_path}: unreadable dataset metadata ({exc})") from None


def dataset_aspect(meta: dict[str, Any], root: str | Path) -> str:
    """The frame aspect of a prepared dataset (``"1:1"`` when ``dataset.json`` predates aspects).

    Raises:
        GarmentGenError: an aspect this version cannot read, naming the file.
    """
    aspect = meta.get("aspect", DEFAULT_ASPECT)
    try:
        frame_size(int(meta["resolution"]), aspect)
    except ValueError as exc:
        raise GarmentGenError(
            f"{Path(root) / 'dataset.json'}: aspect={aspect}: {exc}; {REPREPARE}"
        ) from None
    return aspect


def read_manifest(root: str | Path, split: str | None = None) -> list[dict[str, str]]:
    """Rows of ``manifest.csv`` with status ``ok`` (optionally only one split)."""
    with open(Path(root) / "manifest.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get("status") == "ok"]
    if split is not None:
        rows = [r for r in rows if r["split"] == split]
    return rows


def dataset_classes(root: str | Path) -> list[str]:
    """The sorted class names (``label`` column of ``manifest.csv``: the folder each photo was
    prepared from) over every split's usable rows; empty labels are not a class."""
    return sorted({r.get("label") or "" for r in read_manifest(root)} - {""})


def stable_seed(*parts: Any) -> int:
    """A seed that is the same in every process and run for the same parts."""
    return zlib.crc32("\0".join(str(p) for p in parts).encode())


def to_tensor_image(arr: np.ndarray) -> torch.Tensor:
    """``uint8`` ``[H, W, 3]`` -> float ``[3, H, W]`` in ``[-1, 1]``."""
    if not arr.flags.writeable or not arr.flags.c_contiguous:
        arr = np.array(arr, copy=True, order="C")
    return torch.from_numpy(arr).permute(2, 0, 1).float().div_(127.5).sub_(1.0)


def to_tensor_mask(arr: np.ndarray) -> torch.Tensor:
    """``uint8`` ``[H, W]`` ``{0, 255}`` -> float ``[1, H, W]`` in ``{0, 1}``."""
    return torch.from_numpy((arr > 127).astype(np.float32))[None]


class GarmentDataset(Dataset):
    """One split of a prepared dataset.

    Each item is a dict (``H`` = ``resolution``, ``W`` = ``H`` for a square dataset and
    ``3 / 4 * H`` for a portrait one, ``aspect`` in ``dataset.json``):
        ``image``: float ``[3, H, W]`` in ``[-1, 1]``, the aligned garment;
        ``mask``: float ``[1, H, W]`` in ``{0, 1}``, its shape;
        ``texture``: float ``[3, H, W]`` in ``[-1, 1]``, the garment occluded/cropped;
        ``photo``: float ``[3, H, W]``, the same crop with its real background;
        ``label``: int, the index of the photo's class (its ``label`` in ``manifest.csv``, the
        folder it was prepared from) in ``classes``; -1 when it has none;
        ``id``: str.

    ``resolution`` other than the dataset's own resizes on load (height = ``resolution``,
    width from the aspect).

    With ``augment=True`` (training) flips and textures are random; otherwise
    each sample's texture is fixed by its id and ``seed``, so validation metrics
    compare across runs.

    ``classes`` (default: :func:`dataset_classes` of the whole dataset, so that every split
    numbers them alike) are the class names in index order.
    """

    def __init__(
        self,
        root: str | Path,
        split: str,
        resolution: int | None = None,
        augment: bool = False,
        texture: TextureConfig | None = None,
        flip: bool = True,
        texture_affine: bool = True,
        cache: bool = True,
        seed: int = 0,
        classes: list[str] | None = None,
    ):
        if split not in SPLITS:
            raise GarmentGenError(f"split={split}: must be one of {', '.join(SPLITS)}")
        self.root = Path(root)
        self.meta = read_dataset_meta(self.root)
        self.rows = read_manifest(self.root, split)
        self.split = split
        self.classes = list(dataset_classes(self.root) if classes is None else classes)
        index = {name: i for i, name in enumerate(self.classes)}
        self.labels = [index.get(r.get("label") or "", -1) for r in self.rows]
        self._check_files()
        self.native_resolution = int(self.meta["resolution"])
        self.aspect = dataset_aspect(self.meta, self.root)
        self.resolution = int(resolution or self.native_resolution)
        try:
            self.height, self.width = frame_size(self.resolution, self.aspect)
        except ValueError as exc:
            raise GarmentGenError(f"resolution={self.resolution}: {exc}") from None
        self.background = tuple(int(c) for c in self.meta.get("background", (255, 255, 255)))
        self.augment = augment
        self.texture_cfg = texture or TextureConfig()
        self.seed = seed
        self.cache = cache
        self._cache: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        self.joint = A.Compose(
            [A.HorizontalFlip(p=0.5 if (flip and augment) else 0.0)],
            additional_targets={"photo": "image"},
        )
        self.texture_tf = A.Compose(
            [
                A.Affine(
                    scale=(0.9, 1.1),
                    translate_percent=(-0.06, 0.06),
                    rotate=(-8, 8),
                    border_mode=cv2.BORDER_CONSTANT,
                    fill=self.background,
                    p=0.5 if texture_affine else 0.0,
                )
            ]
        )

    def __len__(self) -> int:
        return len(self.rows)

    def _check_files(self) -> None:
        """Every image and mask the manifest lists exists (``stat`` only, cheap at setup).

        Raises:
            GarmentGenError: names the first missing file and how many are missing.
        """
        missing = [
            path
            for row in self.rows
            for path in (
                self.root / "images" / f"{row['id']}.png",
                self.root / "masks" / f"{row['id']}.png",
            )
            if not path.is_file()
        ]
        if missing:
            more = f" (and {len(missing) - 1} more files)" if len(missing) > 1 else ""
            raise GarmentGenError(
                f"{missing[0]}: listed in {self.root / 'manifest.csv'} but missing{more}; "
                + REPREPARE
            )

    def _read(self, sub: str, sample_id: str, gray: bool) -> np.ndarray:
        path = self.root / sub / f"{sample_id}.png"
        try:
            with Image.open(path) as im:
                arr = np.asarray(im.convert("L" if gray else "RGB"))
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
            reason = " ".join(str(exc).split()) or exc.__class__.__name__
            raise SampleReadError(
                f"{path}: cannot read prepared sample ({reason}); {REPREPARE}"
            ) from None
        if arr.shape[:2] != (self.height, self.width):
            interp = cv2.INTER_AREA if arr.shape[0] > self.height else cv2.INTER_CUBIC
            arr = cv2.resize(arr, (self.width, self.height), interpolation=interp)
            if gray:
                arr = ((arr > 127).astype(np.uint8)) * 255
        return arr

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Raw ``uint8`` (image ``[H,W,3]``, mask ``[H,W]``, photo ``[H,W,3]``) of one sample."""
        if index in self._cache:
            return self._cache[index]
        sid = self.rows[index]["id"]
        image, mask = self._read("images", sid, False), self._read("masks", sid, True)
        photo_path = self.root / "photos" / f"{sid}.png"
        photo = self._read("photos", sid, False) if photo_path.exists() else image
        item = (image, mask, photo)
        if self.cache:
            self._cache[index] = item
        return item

    def __getitem__(self, index: int) -> dict[str, Any]:
        row = self.rows[index]
        image, mask, photo = self.load(index)
        if self.augment:
            seed = int(torch.randint(0, 2**31 - 1, ()).item())
        else:
            seed = stable_seed(self.seed, row["id"])
        rng = np.random.default_rng(seed)
        self.joint.set_random_seed(int(rng.integers(2**31 - 1)))
        out = self.joint(image=image, mask=mask, photo=photo)
        image, mask, photo = out["image"], out["mask"], out["photo"]
        texture = make_texture(image, mask, rng, self.texture_cfg, self.background)
        self.texture_tf.set_random_seed(int(rng.integers(2**31 - 1)))
        texture = self.texture_tf(image=texture)["image"]
        return {
            "image": to_tensor_image(image),
            "mask": to_tensor_mask(mask),
            "texture": to_tensor_image(texture),
            "photo": to_tensor_image(photo),
            "label": self.labels[index],
            "id": row["id"],
        }

    def describe(self) -> dict[str, Any]:
        return {
            "root": str(self.root),
            "split": self.split,
            "size": len(self),
            "resolution": self.resolution,
            "aspect": self.aspect,
            "height": self.height,
            "width": self.width,
            "texture": asdict(self.texture_cfg),
        }
