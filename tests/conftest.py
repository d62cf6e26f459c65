"""Shared fixtures: composed Hydra configs, synthetic garment photos, the bundled sample."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

ASSETS = Path(__file__).parent / "assets"


def tshirt_mask(h: int, w: int, scale: float = 1.0, offset: tuple[int, int] = (0, 0)) -> np.ndarray:
    """A T-shirt silhouette ``uint8`` ``{0, 255}`` ``[h, w]``."""
    s = min(h, w) * scale
    cx, cy = w / 2 + offset[0], h / 2 + offset[1]
    pts = np.array(
        [
            (-0.18, -0.40),
            (-0.40, -0.30),
            (-0.48, -0.10),
            (-0.32, -0.02),
            (-0.28, -0.12),
            (-0.28, 0.42),
            (0.28, 0.42),
            (0.28, -0.12),
            (0.32, -0.02),
            (0.48, -0.10),
            (0.40, -0.30),
            (0.18, -0.40),
            (0.08, -0.34),
            (-0.08, -0.34),
        ]
    )
    poly = np.round(np.stack([cx + pts[:, 0] * s, cy + pts[:, 1] * s], 1)).astype(np.int32)
    mask = np.zeros((h, w), np.uint8)
    cv2.fillPoly(mask, [poly], 255)
    return mask


def garment_photo(
    h: int = 240, w: int = 180, seed: int = 0, background: str = "plain", colour=None
) -> tuple[np.ndarray, np.ndarray]:
    """A synthetic photo of a striped T-shirt and its true mask.

    ``background``: ``plain`` (flat light grey) or ``wood`` (textured brown planks).
    """
    rng = np.random.default_rng(seed)
    mask = tshirt_mask(
        h,
        w,
        scale=rng.uniform(0.75, 0.9),
        offset=(int(rng.integers(-8, 9)), int(rng.integers(-8, 9))),
    )
    if background == "plain":
        bg = np.full((h, w, 3), 235, np.uint8)
    else:
        yy, xx = np.mgrid[0:h, 0:w]
        planks = ((xx // 30) % 2) * 25 + 10 * np.sin(yy / 7.0 + (xx // 30))
        bg = np.stack([150 + planks, 100 + planks * 0.7, 60 + planks * 0.4], -1)
        bg = np.clip(bg + rng.normal(0, 6, bg.shape), 0, 255).astype(np.uint8)
    colour = np.asarray(colour if colour is not None else rng.integers(0, 90, 3), np.float32)
    stripes = ((np.arange(h) // 9) % 2)[:, None, None] * np.array([30, 120, 200], np.float32)
    garment = np.clip(colour + stripes * 0.6, 0, 255).astype(np.uint8)
    garment = np.broadcast_to(garment, (h, w, 3))
    img = np.where(mask[..., None] > 0, garment, bg).astype(np.uint8)
    return img, mask


def write_photo_folder(
    root: Path, n_per_split: dict[str, int] | None = None, background: str = "plain"
) -> Path:
    """Synthetic photos under ``root/<split>/<label>/`` as JPEG; returns ``root``."""
    n_per_split = n_per_split or {"train": 4, "validation": 1, "test": 1}
    k = 0
    for split, n in n_per_split.items():
        for i in range(n):
            label = ("shirt", "tee")[i % 2]
            img, _ = garment_photo(seed=k, background=background)
            path = root / split / label / f"img{k:03d}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(path, quality=95)
            k += 1
    return root


def sample_with_labels(tmp_path: Path, label_of) -> Path:
    """A copy of the bundled sample whose manifest labels are ``label_of(row_index, label)``
    (the class of each photo: ``""`` for none)."""
    import csv

    from garment_gen import sample_dir

    root = tmp_path / "data"
    shutil.copytree(sample_dir(), root)
    with open(root / "manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    for i, row in enumerate(rows):
        row["label"] = label_of(i, row["label"])
    with open(root / "manifest.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return root


TINY_CLASSES = ["dress", "pants", "skirt"]


def tiny_conditional_generator(c_dim: int = 3, resolution: int = 32, **kw):
    """A small seeded StyleGAN2 generator over ``TINY_CLASSES[:c_dim]`` (c_dim 0: unconditional)."""
    import torch

    from garment_gen.networks.stylegan2 import Generator

    torch.manual_seed(0)
    return Generator(
        resolution,
        z_dim=16,
        w_dim=16,
        mapping_layers=2,
        channel_base=256,
        channel_max=16,
        c_dim=c_dim,
        class_names=TINY_CLASSES[:c_dim] if c_dim else None,
        **kw,
    )


def tree_digest(root: Path) -> dict[str, tuple[int, int]]:
    """``{relative path: (size, mtime_ns)}`` of every file, to prove a folder was not touched."""
    return {
        p.relative_to(root).as_posix(): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture
def photo_dir(tmp_path: Path) -> Path:
    return write_photo_folder(tmp_path / "photos")


@pytest.fixture(scope="session")
def sample_root() -> Path:
    from garment_gen import sample_dir

    root = sample_dir()
    assert (root / "manifest.csv").is_file(), f"bundled sample missing at {root}"
    return root


def compose_config(overrides: list[str], run_dir: Path, log_dir: Path):
    """Compose the training config like the CLI would, with Hydra's run folder set to ``run_dir``."""
    from garment_gen.pipeline import compose

    overrides = list(overrides)
    stage = next(o.split("=", 1)[1] for o in overrides if o.startswith("stage="))
    rest = [o for o in overrides if not o.startswith("stage=")]
    return compose(stage, rest, log_dir, run_dir)


# The smoke experiment, cut to a few optimizer steps per stage: the chain every test that needs
# trained networks shares (one run per session).
TINY_CHAIN = [
    "++pipeline.stages.pretrain.set.trainer.max_steps=8",
    "++pipeline.stages.segmenter.set.trainer.max_steps=6",
    "++pipeline.stages.encoders.set.trainer.max_steps=4",
    "pipeline.minutes=30",
    "pipeline.evaluate=null",
    "pipeline.grid=false",
]


def build_tiny_garment_model(log_dir: Path) -> dict[str, Path]:
    """Run the smoke pipeline (pretrain -> segmenter -> encoders, a few steps each) once under
    ``log_dir``; returns the paths of ``garment_model``, ``generator`` and ``segmenter``. A second
    call with the same ``log_dir`` finds the pipeline state and trains nothing."""
    from garment_gen.pipeline import compose_pipeline, run_pipeline

    p = compose_pipeline("smoke", [f"pipeline.out={log_dir}", *TINY_CHAIN])
    runs = {k: Path(v) for k, v in run_pipeline(p)["runs"].items()}
    paths = {
        "generator": runs["pretrain"] / "generator.pt",
        "segmenter": runs["segmenter"] / "segmenter.pt",
        "garment_model": runs["encoders"] / "garment_model.pt",
    }
    missing = [str(p) for p in paths.values() if not p.is_file()]
    assert not missing, f"tiny model fixture did not produce {missing}"
    return paths


@pytest.fixture(scope="session")
def tiny_chain(tmp_path_factory) -> dict[str, Path]:
    """The session's tiny trained networks (see :func:`build_tiny_garment_model`)."""
    return build_tiny_garment_model(tmp_path_factory.getbasetemp() / "tiny_garment_model")


@pytest.fixture
def compose_cfg(tmp_path: Path):
    """Compose the training config like the CLI would, with outputs under ``tmp_path``."""
    return lambda overrides: compose_config(overrides, tmp_path / "run", tmp_path)


# Small, fast settings shared by the stage tests.
TINY_SEGMENTER = [
    "model.net.encoder_depth=3",
    "model.net.decoder_channels=[32,16,8]",
    "data.batch_size=8",
    "data.num_workers=0",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
]
TINY_ENCODERS = [
    "model.encoders.base_channels=8",
    "model.encoders.max_channels=32",
    "data.batch_size=8",
    "data.num_workers=0",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
]


@pytest.fixture(scope="session")
def tiny_generator(tiny_chain) -> Path:
    """``generator.pt`` of a tiny StyleGAN2 after a few CPU steps on the bundled sample."""
    return tiny_chain["generator"]


@pytest.fixture(scope="session")
def tiny_segmenter(tiny_chain) -> Path:
    """``segmenter.pt`` of a small U-Net after a few CPU steps on the bundled sample."""
    return tiny_chain["segmenter"]


@pytest.fixture(scope="session")
def tiny_garment_model(tiny_chain) -> Path:
    """``garment_model.pt``: tiny encoders (feature injection, cross pairs) fitted a few steps on
    the tiny generator, with the segmenter."""
    return tiny_chain["garment_model"]


@pytest.fixture(scope="session")
def portrait_data(tmp_path_factory, sample_root) -> Path:
    """A 3:4 dataset of 40 of the bundled sample's garments (their photos and masks)."""
    from garment_gen.prepare import PrepareConfig, prepare

    base = tmp_path_factory.mktemp("portrait")
    photos, masks = base / "photos", base / "masks"
    photos.mkdir()
    masks.mkdir()
    for f in sorted((sample_root / "photos").glob("*.png"))[:40]:
        shutil.copy(f, photos / f.name)
        shutil.copy(sample_root / "masks" / f.name, masks / f.name)
    out = base / "data34"
    prepare(
        PrepareConfig(
            input_dir=str(photos),
            output_dir=str(out),
            resolution=64,
            mask_dir=str(masks),
            aspect="3:4",
            val_fraction=0.2,
            test_fraction=0.25,
            workers=1,
        )
    )
    return out
