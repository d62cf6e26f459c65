"""GarmentDataModule on the bundled sample: triples, ranges, determinism, loaders."""

from __future__ import annotations

import torch

from garment_gen.data.datamodule import GarmentDataModule
from garment_gen.data.dataset import GarmentDataset


def test_bundled_sample_has_every_split_and_class(sample_root):
    import csv

    with open(sample_root / "manifest.csv") as f:
        rows = [r for r in csv.DictReader(f) if r["status"] == "ok"]
    assert len(rows) >= 300
    assert {r["split"] for r in rows} == {"train", "validation", "test"}
    assert len({r["label"] for r in rows}) == 8


def test_item_keys_dtypes_ranges(sample_root):
    ds = GarmentDataset(sample_root, "train", augment=True)
    item = ds[0]
    assert set(item) == {"image", "mask", "texture", "photo", "label", "id"}
    assert ds.classes[item["label"]] == ds.rows[0]["label"]
    for key in ("image", "texture", "photo"):
        t = item[key]
        assert t.shape == (3, 64, 64) and t.dtype == torch.float32
        assert t.min() >= -1 and t.max() <= 1
    mask = item["mask"]
    assert mask.shape == (1, 64, 64) and set(mask.unique().tolist()) <= {0.0, 1.0}
    assert 0.05 < mask.mean() < 0.95
    # The image is the garment on white: outside the mask it is exactly background.
    assert torch.all(item["image"][:, mask[0] == 0] == 1.0)


def test_flip_applies_to_image_and_mask_together(sample_root):
    ds = GarmentDataset(sample_root, "train", augment=True)
    for _ in range(6):  # flips are random: check consistency on several draws
        item = ds[3]
        assert torch.all(item["image"][:, item["mask"][0] == 0] == 1.0)


def test_validation_textures_are_deterministic_and_train_ones_vary(sample_root):
    val = GarmentDataset(sample_root, "validation", augment=False)
    a, b = val[1], val[1]
    assert torch.equal(a["texture"], b["texture"]) and torch.equal(a["image"], b["image"])
    train = GarmentDataset(sample_root, "train", augment=True)
    textures = [train[2]["texture"] for _ in range(4)]
    assert any(not torch.equal(textures[0], t) for t in textures[1:])


def test_textures_differ_from_originals(sample_root):
    ds = GarmentDataset(sample_root, "validation", augment=False)
    diffs = [(ds[i]["texture"] - ds[i]["image"]).abs().mean().item() for i in range(len(ds))]
    assert sum(d > 0.01 for d in diffs) >= 0.7 * len(ds)


def test_datamodule_loaders_with_workers(sample_root):
    dm = GarmentDataModule(batch_size=8, num_workers=2)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (8, 3, 64, 64) and batch["mask"].shape == (8, 1, 64, 64)
    assert len(batch["id"]) == 8
    val = next(iter(dm.val_dataloader()))
    assert val["texture"].shape[1:] == (3, 64, 64)
    dm.setup("test")
    assert len(dm.test_dataloader().dataset) == 32


def test_datamodule_resizes_to_requested_resolution(sample_root):
    dm = GarmentDataModule(resolution=32, batch_size=4, num_workers=0)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (4, 3, 32, 32)
    assert set(batch["mask"].unique().tolist()) <= {0.0, 1.0}


def test_not_a_dataset_error(tmp_path):
    import pytest

    from garment_gen.errors import GarmentGenError

    with pytest.raises(GarmentGenError, match="not a prepared dataset"):
        GarmentDataModule(root=tmp_path)
