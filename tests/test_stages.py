"""Stages segmenter and encoders, the garment model export, generation from Python and CLI."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from garment_gen.errors import GarmentGenError
from garment_gen.train import build, train
from tests.conftest import TINY_ENCODERS, TINY_SEGMENTER, compose_config


def val_series(run: Path, key: str) -> list[float]:
    with open(run / "csv" / "metrics.csv") as f:
        return [float(r[key]) for r in csv.DictReader(f) if r.get(key)]


# ------------------------------------------------------------------ segmenter


def test_segmenter_iou_improves_and_plugs_into_prepare(tmp_path):
    cfg = compose_config(
        [
            "stage=segmenter",
            *TINY_SEGMENTER,
            "trainer.max_steps=24",
            "trainer.val_check_interval=6",
            "trainer.check_val_every_n_epoch=null",
            "trainer.limit_val_batches=2",
            "model.optimizer.lr=0.003",
        ],
        tmp_path / "run",
        tmp_path,
    )
    train(cfg)
    ious = val_series(tmp_path / "run", "val/iou")
    assert len(ious) >= 3 and ious[-1] > ious[0], ious
    seg = tmp_path / "run" / "segmenter.pt"
    from garment_gen.networks.segmenter import load_segmenter

    model = load_segmenter(seg)
    assert not any(p.requires_grad for p in model.parameters()) and not model.training

    from garment_gen.prepare import PrepareConfig, prepare

    photos = Path(__file__).parent / "assets" / "photos"
    out = tmp_path / "prepared"
    prepare(
        PrepareConfig(
            input_dir=str(photos),
            output_dir=str(out),
            resolution=32,
            segmenter=str(seg),
            workers=1,
            min_area=0.01,
            max_area=0.99,
        )
    )
    with open(out / "manifest.csv") as f:
        rows = [r for r in csv.DictReader(f) if r["status"] == "ok"]
    assert rows and all(r["mask_source"] == "segmenter" for r in rows)


def test_load_segmenter_rejects_other_files(tmp_path, tiny_generator):
    from garment_gen.networks.segmenter import load_segmenter

    with pytest.raises(
        GarmentGenError, match="this is a pretrained generator.*expected a segmenter"
    ):
        load_segmenter(tiny_generator)


# ------------------------------------------------------------------ encoders


def encoders_cfg(tmp_path, generator, *extra):
    return compose_config(
        ["stage=encoders", *TINY_ENCODERS, f"model.generator={generator}", *extra],
        tmp_path / "run",
        tmp_path,
    )


def test_encoders_frozen_generator_and_loss_decreases(tmp_path, tiny_generator):
    cfg = encoders_cfg(
        tmp_path,
        tiny_generator,
        "trainer.max_steps=30",
        "trainer.val_check_interval=10",
        "trainer.check_val_every_n_epoch=null",
        "trainer.limit_val_batches=2",
        "loss.w_lpips=0.5",
        "model.optimizer.lr=0.002",
    )
    dm, module, trainer = build(cfg)
    g_before = {k: v.clone() for k, v in module.model.generator.state_dict().items()}
    assert not any(p.requires_grad for p in module.model.generator.parameters())
    trainer.fit(module, datamodule=dm)
    assert (
        not module.model.generator.training
    )  # kept in eval although Lightning put the module in train mode
    for k, v in module.model.generator.state_dict().items():
        assert torch.equal(v, g_before[k]), k
    assert all(p.grad is None for p in module.model.generator.parameters())
    firsts = val_series(tmp_path / "run", "val/first")
    assert len(firsts) >= 3 and firsts[-1] < firsts[0], firsts
    # Checkpoints hold what training changes, not the frozen networks.
    ckpt = torch.load(
        tmp_path / "run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True
    )
    assert not any(
        k.startswith(("model.generator.", "model.segmenter.", "loss_fn."))
        for k in ckpt["state_dict"]
    )


def test_threshold_stops_training(tmp_path, tiny_generator):
    cfg = encoders_cfg(
        tmp_path,
        tiny_generator,
        "trainer.max_steps=200",
        "trainer.val_check_interval=2",
        "trainer.check_val_every_n_epoch=null",
        "trainer.limit_val_batches=1",
        "loss.w_lpips=0",
        "loss.threshold_first=100.0",
    )
    metrics = train(cfg)
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert "early stopping" in saved["stop_reason"] and "threshold" in saved["stop_reason"].lower()
    assert metrics["val/first"] < 100.0
    with open(tmp_path / "run" / "csv" / "metrics.csv") as f:
        steps = [int(r["step"]) for r in csv.DictReader(f) if r.get("step")]
    assert max(steps) < 200


def test_shape_loss_needs_segmenter(tmp_path, tiny_generator):
    from garment_gen.errors import ConfigError

    cfg = encoders_cfg(tmp_path, tiny_generator, "loss.w_shape=0.5")
    with pytest.raises(ConfigError, match="needs a segmenter"):
        build(cfg)


def test_generator_resolution_must_match_data(tmp_path, tiny_generator):
    from garment_gen.errors import ConfigError

    cfg = encoders_cfg(tmp_path, tiny_generator, "data.resolution=32")
    with pytest.raises(ConfigError, match="data.resolution=64"):
        build(cfg)


# ------------------------------------------------------------------ inference


@pytest.fixture(scope="module")
def gen(tiny_garment_model):
    from garment_gen.inference import GarmentGenerator

    return GarmentGenerator.from_checkpoint(tiny_garment_model)


def test_generate_from_paths_arrays_pil_and_tensors(gen, sample_root):
    mask_path = next((sample_root / "masks").glob("*.png"))
    tex_path = Path(__file__).parent / "assets" / "photos" / "dress_06a00c0f.jpg"
    a = gen.generate(mask_path, tex_path, output="numpy")
    assert a.shape == (1, 64, 64, 3) and a.dtype == np.uint8
    mask_arr = np.asarray(Image.open(mask_path))
    b = gen.generate(mask_arr, Image.open(tex_path), output="numpy")
    assert np.array_equal(a, b)  # same input as path, array or PIL gives the same garment
    t = gen.generate(
        torch.from_numpy(mask_arr > 0).float()[None], Image.open(tex_path), output="tensor"
    )
    assert t.shape == (1, 3, 64, 64) and t.min() >= -1 and t.max() <= 1
    pils = gen.generate([mask_path, mask_path], [tex_path, tex_path])
    assert len(pils) == 2 and pils[0].size == (64, 64)


def test_shape_from_photo_and_texture_from_swatch(gen):
    photos = Path(__file__).parent / "assets" / "photos"
    m = gen.shape_tensor(photos / "pants_05814dc4.jpg")  # a photo: its mask is found
    assert m.shape == (1, 1, 64, 64) and 0.05 < m.mean() < 0.95
    swatch = np.tile(
        np.array([[[200, 30, 30]], [[30, 30, 200]]], np.uint8), (40, 80, 1)
    )  # stripes filling the frame
    x = gen.texture_tensor(swatch)
    assert x.shape == (1, 3, 64, 64)


def test_generation_bad_inputs(gen, tmp_path, tiny_generator):
    from garment_gen.inference import GarmentGenerator

    blank = tmp_path / "blank.png"
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(blank)
    with pytest.raises(GarmentGenError, match="no garment"):
        gen.shape_tensor(blank)
    with pytest.raises(GarmentGenError, match="empty file"):
        empty = tmp_path / "e.png"
        empty.write_bytes(b"")
        gen.shape_tensor(empty)
    with pytest.raises(GarmentGenError, match="pretrained generator"):
        GarmentGenerator.from_checkpoint(tiny_generator)
    with pytest.raises(GarmentGenError, match="not found"):
        GarmentGenerator.from_checkpoint(tmp_path / "nope.pt")


def test_generate_cli_grid_and_errors(tiny_garment_model, sample_root, tmp_path):
    shapes = tmp_path / "shapes"
    shapes.mkdir()
    for p in sorted((sample_root / "masks").glob("*.png"))[:2]:
        (shapes / p.name).write_bytes(p.read_bytes())
    textures = Path(__file__).parent / "assets" / "photos"
    cmd = [
        sys.executable,
        "-m",
        "garment_gen.generate",
        f"model={tiny_garment_model}",
        f"shape={shapes}",
        f"texture={textures}",
        f"out={tmp_path / 'out'}",
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    n_tex = len(list(textures.glob("*.jpg")))
    assert len(list((tmp_path / "out").glob("*__*.png"))) == 2 * n_tex
    grid = np.asarray(Image.open(tmp_path / "out" / "grid.png"))
    assert grid.shape[0] > 2 * 64 and grid.shape[1] > n_tex * 64
    res = subprocess.run(
        cmd[:4] + [f"shape={tmp_path / 'missing.png'}", f"texture={textures}"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert res.returncode == 2 and res.stderr.strip().splitlines()[-1].startswith("error: shape=")
