"""python -m garment_gen.sample: seeds -> garments from a generator.pt, one row per class."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from garment_gen.errors import GarmentGenError
from garment_gen.networks.stylegan2 import export_generator
from garment_gen.sample import parse_seeds, run, sample
from tests.conftest import TINY_CLASSES, tiny_conditional_generator

RES = 32
NAMES = TINY_CLASSES


def _export(tmp_path, c_dim: int):
    g = tiny_conditional_generator(c_dim, RES).eval()
    return export_generator(g, tmp_path / f"g{c_dim}.pt")


def test_parse_seeds():
    assert parse_seeds("0-3") == [0, 1, 2, 3] and parse_seeds(7) == [7]
    assert parse_seeds([1, "4-5"]) == [1, 4, 5] and parse_seeds("2,9") == [2, 9]
    for bad in ("5-2", "a", "", "-1", True):
        with pytest.raises(GarmentGenError, match="seeds="):
            parse_seeds(bad)


def test_conditional_sheet_has_a_row_per_class_and_seeds_are_reproducible(tmp_path):
    path = _export(tmp_path, 3)
    images, names = sample(path, "0-3")
    assert images.shape == (3, 4, 3, RES, RES) and names == NAMES
    assert not torch.allclose(images[0], images[1])  # another class, the same seeds
    again, _ = sample(path, [2, 3], classes="pants")
    assert torch.allclose(
        again[0], images[1, 2:], atol=1e-5
    )  # a seed gives the same garment every time
    two, names2 = sample(path, "0-1", classes=["skirt", "dress"])
    assert names2 == ["skirt", "dress"] and torch.allclose(two[1], images[0, :2], atol=1e-5)
    out = run(str(path), seeds="0-3", out=str(tmp_path / "s.png"))
    sheet = np.asarray(Image.open(out))
    assert sheet.shape == (2 + 3 * (RES + 2), 2 + 4 * (RES + 2), 3)
    assert not list(tmp_path.glob("*.tmp*"))


def test_unconditional_generator_draws_one_row(tmp_path):
    path = _export(tmp_path, 0)
    images, names = sample(path, "0-2")
    assert images.shape == (1, 3, 3, RES, RES) and names == [""]
    with pytest.raises(GarmentGenError, match="not class-conditional"):
        sample(path, "0-2", classes="dress")


def test_bad_options_are_one_line_before_drawing(tmp_path):
    path = _export(tmp_path, 3)
    with pytest.raises(GarmentGenError, match="class=coat: not a class.*dress, pants, skirt"):
        sample(path, "0", classes="coat")
    with pytest.raises(GarmentGenError, match="truncation=3"):
        sample(path, "0", truncation=3)
    with pytest.raises(GarmentGenError, match="out=.*expected a .png file"):
        run(str(path), out=str(tmp_path / "s.jpg"))
    with pytest.raises(GarmentGenError, match="unknown sample setting"):
        run(str(path), out=str(tmp_path / "s.png"), colour="red")
    res = subprocess.run(
        [sys.executable, "-m", "garment_gen.sample", f"generator={tmp_path / 'nope.pt'}"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert res.returncode == 2 and res.stderr.strip().splitlines() == [
        f"error: generator={tmp_path / 'nope.pt'}: no such file"
    ]
