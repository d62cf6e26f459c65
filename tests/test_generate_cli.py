"""``garment_gen.generate`` under bad options, bad inputs and unwritable outputs.

A tiny untrained garment model (random weights, 32 px) stands in for a trained one: these
tests are about what the command does with its inputs and outputs, not image quality.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from garment_gen import generate as gen_mod
from garment_gen.errors import GarmentGenError
from garment_gen.generate import run
from tests.conftest import garment_photo, tshirt_mask

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    from garment_gen.inference import save_garment_model
    from garment_gen.networks.encoders import GarmentEncoders
    from garment_gen.networks.stylegan2 import Generator

    torch.manual_seed(0)
    g = Generator(32, z_dim=32, w_dim=32, mapping_layers=2, channel_base=256, channel_max=32)
    enc = GarmentEncoders(g.num_ws, 32, 32, num_layers=4, base_channels=8, max_channels=32)
    path = tmp_path_factory.mktemp("model") / "garment_model.pt"
    return save_garment_model(path, g, enc, data={"resolution": 32})


@pytest.fixture
def inputs(tmp_path: Path) -> tuple[Path, Path]:
    """``shapes/`` with two masks and ``textures/`` with two garment photos."""
    shapes, textures = tmp_path / "shapes", tmp_path / "textures"
    shapes.mkdir()
    textures.mkdir()
    for k in range(2):
        Image.fromarray(tshirt_mask(96, 80, scale=0.8 + 0.05 * k)).save(shapes / f"s{k}.png")
        Image.fromarray(garment_photo(120, 90, seed=k)[0]).save(textures / f"t{k}.png")
    return shapes, textures


def one(folder: Path) -> str:
    return str(sorted(folder.iterdir())[0])


# ----------------------------------------------------------------- options


def test_bad_options_are_one_line_naming_the_key_before_the_model_loads(inputs, tmp_path):
    shapes, textures = inputs
    cases = {
        "batch_size": (0, "batch_size=0: must be a whole number, 1 or more"),
        "truncation": ("abc", "truncation=abc: must be a number from 0 to 2"),
        "seed": (1.5, "seed=1.5: must be a whole number"),
        "labels": ("maybe", "labels=maybe: must be true or false"),
    }
    for key, (value, expected) in cases.items():
        with pytest.raises(GarmentGenError) as e:  # the model does not exist: checked first
            run(str(tmp_path / "missing.pt"), one(shapes), one(textures), **{key: value})
        assert str(e.value).startswith(expected)


def test_cli_bad_option_is_one_error_line(inputs, tmp_path):
    shapes, textures = inputs
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "garment_gen.generate",
            f"model={tmp_path / 'missing.pt'}",
            f"shape={one(shapes)}",
            f"texture={one(textures)}",
            "truncation=abc",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert res.returncode == 2
    assert [line for line in res.stderr.splitlines() if line.strip()] == [
        "error: truncation=abc: must be a number from 0 to 2 "
        "(1 = off; below 1 pulls styles toward the average garment)"
    ]


# ----------------------------------------------------------------- inputs


def test_fully_transparent_texture_is_refused(tiny_model, inputs, tmp_path):
    shapes, _ = inputs
    clear = tmp_path / "clear.png"
    Image.new("RGBA", (64, 64), (10, 200, 30, 0)).save(clear)
    with pytest.raises(GarmentGenError, match="texture is fully transparent"):
        run(str(tiny_model), one(shapes), str(clear), out=str(tmp_path / "o.png"))
    assert not (tmp_path / "o.png").exists()


def test_folder_run_skips_bad_inputs_and_fails_only_when_nothing_is_left(
    tiny_model, inputs, tmp_path, caplog
):
    shapes, textures = inputs
    (textures / "broken.jpg").write_text("not an image")
    Image.new("RGBA", (40, 40), (0, 0, 0, 0)).save(textures / "clear.png")
    out = tmp_path / "out"
    with caplog.at_level("WARNING", logger="garment_gen.generate"):
        res = run(str(tiny_model), str(shapes), str(textures), out=str(out))
    assert sorted(Path(p).name for p in res["images"]) == [
        "s0__t0.png",
        "s0__t1.png",
        "s1__t0.png",
        "s1__t1.png",
    ]
    assert (out / "grid.png").is_file()
    assert sorted(Path(x["path"]).name for x in res["skipped"]) == ["broken.jpg", "clear.png"]
    skip_lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("skipped")]
    assert len(skip_lines) == 3  # one per bad file, and the summary
    assert any("broken.jpg" in m and "clear.png" in m for m in skip_lines)

    bad = tmp_path / "all_bad"
    bad.mkdir()
    (bad / "x.png").write_text("nope")
    with pytest.raises(GarmentGenError, match=r"texture=.*all_bad: none of its images"):
        run(str(tiny_model), str(shapes), str(bad), out=str(tmp_path / "out2"))


# ----------------------------------------------------------------- outputs


def test_each_result_is_written_as_it_is_made(tiny_model, inputs, tmp_path, monkeypatch):
    shapes, textures = inputs
    real = gen_mod.GarmentGenerator.generate_tensors
    calls = {"n": 0}

    def stopped_on_the_third_batch(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(self, *a, **k)

    monkeypatch.setattr(gen_mod.GarmentGenerator, "generate_tensors", stopped_on_the_third_batch)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        run(str(tiny_model), str(shapes), str(textures), out=str(out), batch_size=1)
    done = sorted(p.name for p in out.iterdir())
    assert done == ["s0__t0.png", "s0__t1.png"]  # complete files, no temporaries
    assert np.asarray(Image.open(out / "s0__t0.png")).shape == (32, 32, 3)


def test_unwritable_out_is_one_line_before_any_compute(inputs, tmp_path):
    shapes, textures = inputs
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(GarmentGenError, match=r"^out=.*a_file.*a file is in the way"):
        run(str(tmp_path / "missing.pt"), str(shapes), str(textures), out=str(blocker / "x"))


def test_full_disk_while_writing_is_one_line(tiny_model, inputs, tmp_path, monkeypatch):
    shapes, textures = inputs
    real = gen_mod.save_png
    calls = {"n": 0}

    def fills_up(arr, path):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real(arr, path)

    monkeypatch.setattr(gen_mod, "save_png", fills_up)
    with pytest.raises(GarmentGenError) as e:
        run(str(tiny_model), str(shapes), str(textures), out=str(tmp_path / "out"))
    msg = str(e.value)
    assert "no space left on device while writing s0__t1.png" in msg and "\n" not in msg
    assert "1 images written before" in msg
