"""Data preparation end to end: outputs, bad inputs, atomicity, idempotence, CLI errors."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from garment_gen import prepare as prep
from garment_gen.errors import GarmentGenError
from garment_gen.prepare import PrepareConfig, prepare
from tests.conftest import garment_photo, tree_digest, write_photo_folder


def rows(out: Path) -> list[dict[str, str]]:
    with open(out / "manifest.csv", newline="") as f:
        return list(csv.DictReader(f))


def cfg(inp: Path, out: Path, **kw) -> PrepareConfig:
    return PrepareConfig(
        input_dir=str(inp),
        output_dir=str(out),
        resolution=kw.pop("resolution", 32),
        workers=1,
        **kw,
    )


def test_prepare_outputs_and_manifest(photo_dir: Path, tmp_path: Path):
    out = tmp_path / "out"
    stats = prepare(cfg(photo_dir, out))
    assert stats["prepared"] == 6 and stats["skipped"] == 0
    r = rows(out)
    assert set(r[0]) >= {
        "id",
        "source_path",
        "sha256",
        "split",
        "label",
        "mask_source",
        "mask_area",
        "status",
        "reason",
    }
    assert {x["split"] for x in r} == {"train", "validation", "test"}  # source splits kept
    assert {x["label"] for x in r} == {"shirt", "tee"}
    assert all(x["mask_source"] == "plain_background" for x in r)
    for x in r:
        img = np.asarray(Image.open(out / "images" / f"{x['id']}.png"))
        mask = np.asarray(Image.open(out / "masks" / f"{x['id']}.png"))
        assert img.shape == (32, 32, 3) and mask.shape == (32, 32) and mask.dtype == np.uint8
        assert set(np.unique(mask)) <= {0, 255}
        assert (out / "photos" / f"{x['id']}.png").is_file()
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["resolution"] == 32 and meta["stats"]["prepared"] == 6


def test_seeded_split_without_split_folders(tmp_path: Path):
    inp = tmp_path / "flat"
    inp.mkdir()
    for k in range(30):
        img, _ = garment_photo(seed=k)
        Image.fromarray(img).save(inp / f"p{k}.png")
    out = tmp_path / "out"
    prepare(cfg(inp, out, val_fraction=0.2, test_fraction=0.2, seed=1))
    splits = [x["split"] for x in rows(out)]
    assert {"train", "validation", "test"} <= set(splits)
    again = tmp_path / "out2"
    prepare(cfg(inp, again, val_fraction=0.2, test_fraction=0.2, seed=1))
    assert splits == [x["split"] for x in rows(again)]  # same seed, same split


def test_bad_inputs_are_reported_and_run_continues(photo_dir: Path, tmp_path: Path):
    bad = photo_dir / "train" / "bad"
    bad.mkdir()
    (bad / "zero.jpg").write_bytes(b"")
    (bad / "text.jpg").write_text("not an image")
    good = next((photo_dir / "train" / "shirt").glob("*.jpg")).read_bytes()
    (bad / "trunc.jpg").write_bytes(good[: len(good) // 3])
    Image.new("1", (7000, 7000)).save(bad / "bomb.png")
    Image.fromarray(np.full((100, 80, 3), 128, np.uint8)).save(bad / "blank.png")  # nothing to find
    (photo_dir / "readme.txt").write_text("hello")
    before = tree_digest(photo_dir)
    out = tmp_path / "out"
    stats = prepare(cfg(photo_dir, out, max_pixels=20_000_000))
    assert stats["prepared"] == 6
    reasons = {x["source_path"]: x["reason"] for x in rows(out) if x["status"] == "skipped"}
    assert "empty file" in reasons["train/bad/zero.jpg"]
    assert "not a readable image" in reasons["train/bad/text.jpg"]
    assert "truncated" in reasons["train/bad/trunc.jpg"]
    assert "over the limit" in reasons["train/bad/bomb.png"]
    assert "no garment detected" in reasons["train/bad/blank.png"]
    assert "not an image file" in reasons["readme.txt"]
    report = (out / "report.txt").read_text()
    assert "train/bad/zero.jpg: empty file" in report
    assert tree_digest(photo_dir) == before  # inputs never modified


def test_mask_dir_used_and_bad_masks_skipped(photo_dir: Path, tmp_path: Path):
    masks = tmp_path / "masks"
    masks.mkdir()
    files = sorted(photo_dir.rglob("*.jpg"))
    for i, f in enumerate(files):
        h, w = np.asarray(Image.open(f)).shape[:2]
        if i == 0:
            m = np.zeros((h + 5, w), np.uint8)  # wrong size
        elif i == 1:
            m = np.tile(np.linspace(0, 255, w).astype(np.uint8), (h, 1))  # grey ramp
        else:
            _, m = garment_photo(h, w, seed=i)
        Image.fromarray(m).save(masks / f"{f.stem}.png")
    out = tmp_path / "out"
    stats = prepare(cfg(photo_dir, out, mask_dir=str(masks)))
    r = {x["source_path"]: x for x in rows(out)}
    rel0, rel1 = (f.relative_to(photo_dir).as_posix() for f in files[:2])
    assert "but its image is" in r[rel0]["reason"]
    assert "not binary" in r[rel1]["reason"]
    assert stats["prepared"] == len(files) - 2
    assert all(x["mask_source"] == "file" for x in r.values() if x["status"] == "ok")


def test_rerun_is_idempotent(photo_dir: Path, tmp_path: Path):
    out = tmp_path / "out"
    prepare(cfg(photo_dir, out))
    before = tree_digest(out)
    prepare(cfg(photo_dir, out))
    assert tree_digest(out) == before


def test_output_with_different_dataset_is_protected(photo_dir: Path, tmp_path: Path):
    out = tmp_path / "out"
    prepare(cfg(photo_dir, out))
    before = tree_digest(out)
    with pytest.raises(GarmentGenError, match="different prepared dataset"):
        prepare(cfg(photo_dir, out, resolution=64))
    assert tree_digest(out) == before
    prepare(cfg(photo_dir, out, resolution=64, overwrite=True))
    assert json.loads((out / "dataset.json").read_text())["resolution"] == 64


def test_foreign_output_folder_refused(photo_dir: Path, tmp_path: Path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("precious")
    with pytest.raises(GarmentGenError, match="not a garment_gen dataset"):
        prepare(cfg(photo_dir, out, overwrite=True))
    assert (out / "thesis.tex").read_text() == "precious"


def test_interrupted_run_leaves_previous_dataset(photo_dir: Path, tmp_path: Path, monkeypatch):
    out = tmp_path / "out"
    prepare(cfg(photo_dir, out))
    before = tree_digest(out)
    calls = {"n": 0}
    real = prep.prepare_one

    def dying(task):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(task)

    monkeypatch.setattr(prep, "prepare_one", dying)
    with pytest.raises(KeyboardInterrupt):
        prepare(cfg(photo_dir, out, resolution=64, overwrite=True))
    assert tree_digest(out) == before
    assert not list(tmp_path.glob(".out.tmp-*"))  # no half-written folder left behind


def test_empty_input_folder(tmp_path: Path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(GarmentGenError, match="no image files found"):
        prepare(cfg(tmp_path / "empty", tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_output_inside_input_refused(photo_dir: Path):
    with pytest.raises(GarmentGenError, match="inside input_dir"):
        prepare(cfg(photo_dir, photo_dir / "prepared"))


def test_parallel_workers_match_serial(tmp_path: Path):
    inp = write_photo_folder(tmp_path / "in", {"train": 6})
    a, b = tmp_path / "a", tmp_path / "b"
    prepare(cfg(inp, a))
    c = cfg(inp, b)
    c.workers = 2
    prepare(c)
    for x in rows(a):
        assert (a / "images" / f"{x['id']}.png").read_bytes() == (
            b / "images" / f"{x['id']}.png"
        ).read_bytes()


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "garment_gen.prepare", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_cli_prepares_and_reports_errors_in_one_line(photo_dir: Path, tmp_path: Path):
    res = run_cli(
        f"input_dir={photo_dir}", f"output_dir={tmp_path / 'o'}", "resolution=32", cwd=tmp_path
    )
    assert res.returncode == 0, res.stderr
    assert "prepared 6 images" in res.stdout + res.stderr
    res = run_cli(f"output_dir={tmp_path / 'o2'}", cwd=tmp_path)
    assert res.returncode == 2
    err = res.stderr.strip().splitlines()
    assert len(err) == 1 and "input_dir is required" in err[0]
    res = run_cli(f"input_dir={tmp_path / 'nope'}", f"output_dir={tmp_path / 'o3'}", cwd=tmp_path)
    assert res.returncode == 2 and "not a folder" in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "outputs").exists()  # prepare leaves no Hydra run folder behind
