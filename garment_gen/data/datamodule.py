"""GarmentDataModule: the one LightningDataModule every stage trains on."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from torch.utils.data import DataLoader

from garment_gen import sample_dir
from garment_gen.data.aspect import frame_size
from garment_gen.data.dataset import (
    GarmentDataset,
    dataset_aspect,
    dataset_classes,
    read_dataset_meta,
    read_manifest,
)
from garment_gen.data.occlusion import TextureConfig
from garment_gen.errors import GarmentGenError

log = logging.getLogger(__name__)


class GarmentDataModule(pl.LightningDataModule):
    """Prepared dataset -> train/validation/test loaders of ``{image, mask, texture, photo, label, id}``.

    Args:
        root: a folder written by ``garment_gen.prepare``; ``None`` uses the bundled sample.
        resolution: output height; ``None`` keeps the dataset's own resolution
            (a different value resizes on load, the width following the dataset's aspect).
        batch_size: training batch size (per device under DDP).
        val_batch_size: validation/test batch size (defaults to ``batch_size``).
        num_workers: loader worker processes.
        texture: texture-making settings (:class:`TextureConfig` fields).
        flip: random horizontal flips of image, mask and texture together (training only).
        texture_affine: small random shift/scale/rotation of the texture (training and,
            seeded per sample, validation), so encoders cannot copy pixel positions.
        cache: keep decoded samples in memory.
        seed: seeds the fixed validation/test textures.

    Attributes:
        aspect: the dataset's frame aspect, ``"1:1"`` or ``"3:4"`` (``dataset.json``; a
            dataset prepared before aspects existed is ``"1:1"``).
        resolution, height, width: the frame the batches have: ``[N, C, height, width]``,
            ``height == resolution``.
        classes: the sorted class names (the ``label`` column of ``manifest.csv``, the folder
            each photo was prepared from), numbered alike in every split; a batch's ``label``
            indexes them (-1: none). ``unlabeled``: how many usable photos have no label.
    """

    def __init__(
        self,
        root: str | Path | None = None,
        resolution: int | None = None,
        batch_size: int = 16,
        val_batch_size: int | None = None,
        num_workers: int = 2,
        texture: dict[str, Any] | TextureConfig | None = None,
        flip: bool = True,
        texture_affine: bool = True,
        cache: bool = True,
        pin_memory: bool = False,
        persistent_workers: bool = True,
        seed: int = 0,
    ):
        super().__init__()
        self.root = Path(root) if root else sample_dir()
        meta = read_dataset_meta(self.root)
        self.aspect = dataset_aspect(meta, self.root)
        self.resolution = int(resolution or meta["resolution"])
        if self.resolution < 8 or self.resolution & (self.resolution - 1):
            raise GarmentGenError(f"data.resolution={self.resolution}: must be a power of two")
        self.height, self.width = frame_size(self.resolution, self.aspect)
        self.classes = dataset_classes(self.root)
        self.unlabeled = sum(1 for r in read_manifest(self.root) if not r.get("label"))
        self.batch_size = batch_size
        self.val_batch_size = val_batch_size or batch_size
        self.num_workers = num_workers
        if isinstance(texture, TextureConfig):
            self.texture = texture
        else:
            try:
                self.texture = TextureConfig(**dict(texture or {}))
            except (TypeError, ValueError) as exc:
                raise GarmentGenError(f"data.texture: {exc}") from None
        self.flip = flip
        self.texture_affine = texture_affine
        self.cache = cache
        self.pin_memory = pin_memory
        self.persistent_workers = persistent_workers and num_workers > 0
        self.seed = seed
        self.datasets: dict[str, GarmentDataset] = {}

    def _dataset(self, split: str) -> GarmentDataset:
        if split not in self.datasets:
            ds = GarmentDataset(
                self.root,
                split,
                resolution=self.resolution,
                augment=(split == "train"),
                texture=self.texture,
                flip=self.flip,
                texture_affine=self.texture_affine,
                cache=self.cache,
                seed=self.seed,
                classes=self.classes,
            )
            if len(ds) == 0:
                raise GarmentGenError(f"data.root={self.root}: the '{split}' split is empty")
            self.datasets[split] = ds
        return self.datasets[split]

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit"):
            self._dataset("train")
            self._dataset("validation")
        if stage in (None, "validate"):
            self._dataset("validation")
        if stage in (None, "test", "predict"):
            self._dataset("test")

    def _loader(self, split: str, shuffle: bool, batch_size: int) -> DataLoader:
        ds = self._dataset(split)
        return DataLoader(
            ds,
            batch_size=batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers,
            drop_last=shuffle and len(ds) >= batch_size,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", True, self.batch_size)

    def val_dataloader(self) -> DataLoader:
        return self._loader("validation", False, self.val_batch_size)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", False, self.val_batch_size)
