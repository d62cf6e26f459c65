"""Data preparation and loading under faults: concurrent runs, bad segmenter, full disk, Ctrl-C,
odd photos and masks, a prepared dataset changed after the fact."""

from __future__ import annotations

import csv
import errno
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from garment_gen import prepare as prep
from garment_gen.errors import GarmentGenError
from garment_gen.prepare import PrepareConfig, prepare
from tests.conftest import garment_photo, tree_digest, write_photo_folder

REPO = Path(__file__).resolve().parents[1]


def cfg(inp: Path, out: Path, **kw) -> PrepareConfig:
    return PrepareConfig(
        input_dir=str(inp),
        output_dir=str(out),
        resolution=kw.pop("resolution", 32),
        workers=kw.pop("workers", 1),
        **kw,
    )


def cli(*args: str, cwd: Path, timeout: float = 60, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "garment_gen.prepare", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        **kw,
    )


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.strip()]


def ok_ids(out: Path) -> list[str]:
    with open(out / "manifest.csv", newline="") as f:
        return [r["id"] for r in csv.DictReader(f) if r["status"] == "ok"]


def assert_consistent(out: Path) -> None:
    """Every manifest row has its three files, and no file lacks a row."""
    ids = set(ok_ids(out))
    for sub in ("images", "masks", "photos"):
        assert {p.stem for p in (out / sub).glob("*.png")} == ids, sub


def leftovers(out: Path) -> list[Path]:
    return sorted(out.parent.glob(f".{out.name}.*"))


# ----------------------------------------------------------------- 1. two prepares, one output


def test_second_concurrent_prepare_is_refused_and_dataset_stays_whole(
    photo_dir: Path, tmp_path: Path, monkeypatch
):
    out = tmp_path / "out"
    second: dict[str, object] = {}
    real = prep.prepare_one

    def first_photo_starts_a_rival(task):
        if not second:  # a real second prepare, started while the first is writing
            live = list(tmp_path.glob(".out.tmp-*"))
            second["res"] = cli(f"input_dir={photo_dir}", f"output_dir={out}", cwd=tmp_path)
            second["live_tmp_kept"] = all(p.is_dir() for p in live) and bool(live)
        return real(task)

    monkeypatch.setattr(prep, "prepare_one", first_photo_starts_a_rival)
    stats = prepare(cfg(photo_dir, out))
    res = second["res"]
    assert res.returncode == 2, res.stderr
    lines = error_lines(res.stderr)
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert "another prepare is writing" in lines[0] and str(out) in lines[0]
    assert second["live_tmp_kept"]  # the rival did not delete the live temporary folder
    assert stats["prepared"] == 6
    assert_consistent(out)
    assert leftovers(out) == []  # lock file and temporary folder gone


def test_leftovers_are_removed_only_when_no_prepare_holds_the_lock(photo_dir: Path, tmp_path):
    out = tmp_path / "out"
    stale = tmp_path / ".out.tmp-999999"
    (stale / "images").mkdir(parents=True)
    with prep.OutputLock(out):  # another run holds the output
        with pytest.raises(GarmentGenError, match="another prepare is writing"):
            prepare(cfg(photo_dir, out))
        assert stale.is_dir()
    prepare(cfg(photo_dir, out))
    assert not stale.exists() and leftovers(out) == []
    assert_consistent(out)


def test_up_to_date_check_rebuilds_when_a_listed_file_is_gone(photo_dir: Path, tmp_path):
    out = tmp_path / "out"
    prepare(cfg(photo_dir, out))
    victim = out / "masks" / f"{ok_ids(out)[0]}.png"
    victim.unlink()
    prepare(cfg(photo_dir, out))
    assert victim.is_file()
    assert_consistent(out)


# ----------------------------------------------------------------- 2. an unloadable segmenter


def test_garbage_segmenter_with_workers_fails_fast_in_one_line(photo_dir: Path, tmp_path):
    seg = tmp_path / "segmenter.pt"
    seg.write_bytes(b"this is not a checkpoint")
    out = tmp_path / "out"
    res = cli(
        f"input_dir={photo_dir}",
        f"output_dir={out}",
        f"segmenter={seg}",
        "workers=2",
        "resolution=32",
        cwd=tmp_path,
    )
    assert res.returncode == 2, res.stderr
    lines = error_lines(res.stderr)
    assert len(lines) == 1 and lines[0].startswith(f"error: segmenter={seg}: ")
    assert not out.exists() and leftovers(out) == []


def test_worker_initializer_failure_stops_the_run(photo_dir: Path, tmp_path):
    """A worker that cannot start reports once; the pool never respawns it for ever."""
    script = textwrap.dedent(
        f"""
        import cv2
        from garment_gen import prepare as prep
        from garment_gen.errors import GarmentGenError

        def boom(n):
            raise RuntimeError("cannot start")

        cv2.setNumThreads = boom  # forked workers inherit it; only _init_worker calls it
        c = prep.PrepareConfig(input_dir={str(photo_dir)!r}, output_dir={str(tmp_path / "out")!r},
                               resolution=32, workers=2)
        try:
            prep.prepare(c)
        except GarmentGenError as exc:
            print("refused:", exc)
        """
    )
    res = subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "refused: RuntimeError: cannot start" in res.stdout, res.stdout + res.stderr
    assert leftovers(tmp_path / "out") == []


# ----------------------------------------------------------------- 3. a full disk


def failing_writer(monkeypatch, at_call: int, err: int) -> None:
    real = prep.save_png_atomic
    calls = {"n": 0}

    def writer(arr, path):
        calls["n"] += 1
        if calls["n"] == at_call:
            raise OSError(err, os.strerror(err), str(path))
        return real(arr, path)

    monkeypatch.setattr(prep, "save_png_atomic", writer)


@pytest.mark.parametrize("workers", [1, 2])
def test_full_disk_stops_the_run_and_keeps_the_previous_dataset(
    photo_dir: Path, tmp_path: Path, monkeypatch, workers: int
):
    out = tmp_path / "out"
    prepare(cfg(photo_dir, out))
    before = tree_digest(out)
    failing_writer(monkeypatch, at_call=5, err=errno.ENOSPC)  # second photo's mask
    with pytest.raises(GarmentGenError) as e:
        prepare(cfg(photo_dir, out, resolution=64, overwrite=True, workers=workers))
    msg = str(e.value)
    assert msg.startswith(f"{out}: no space left on device while writing ") and "\n" not in msg
    assert tree_digest(out) == before
    assert leftovers(out) == []


def test_unwritable_file_name_skips_that_photo_without_orphan_files(
    photo_dir: Path, tmp_path: Path, monkeypatch
):
    out = tmp_path / "out"
    failing_writer(monkeypatch, at_call=2, err=errno.ENAMETOOLONG)  # first photo's mask
    stats = prepare(cfg(photo_dir, out))
    assert stats["prepared"] == 5 and stats["skipped_by_reason"] == {"write_error": 1}
    assert_consistent(out)  # its image was removed with it: no pair without a manifest row


# ----------------------------------------------------------------- 5. odd inputs, Ctrl-C


def test_corrupt_mask_file_is_named_not_its_photo(tmp_path: Path):
    photos, masks = tmp_path / "photos", tmp_path / "masks"
    photos.mkdir()
    masks.mkdir()
    for name in ("a", "b"):
        img, mask = garment_photo(seed=ord(name))
        Image.fromarray(img).save(photos / f"{name}.png")
        Image.fromarray(mask).save(masks / f"{name}.png")
    good = (masks / "a.png").read_bytes()
    (masks / "a.png").write_bytes(good[: len(good) // 2])
    out = tmp_path / "out"
    stats = prepare(cfg(photos, out, mask_dir=str(masks)))
    with open(out / "manifest.csv", newline="") as f:
        row = next(r for r in csv.DictReader(f) if r["source_path"] == "a.png")
    assert row["status"] == "skipped" and row["reason"].startswith(f"{masks / 'a.png'}: ")
    assert "mask" in row["reason"] and stats["skipped_by_reason"] == {"bad_mask": 1}


def test_thin_photo_is_skipped_with_a_clear_reason(tmp_path: Path):
    inp = write_photo_folder(tmp_path / "in", {"train": 1})
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (12, 4000, 3), dtype=np.uint8)).save(inp / "thin.png")
    out = tmp_path / "out"
    prepare(cfg(inp, out))
    with open(out / "manifest.csv", newline="") as f:
        row = next(r for r in csv.DictReader(f) if r["source_path"] == "thin.png")
    assert row["reason"].startswith("image too thin: 4000x12 px")


def test_16bit_photo_is_prepared(tmp_path: Path):
    inp = tmp_path / "in"
    inp.mkdir()
    img, _ = garment_photo(seed=3)
    Image.fromarray(img.mean(2).astype(np.uint16) * 257).save(inp / "grey16.png")
    assert Image.open(inp / "grey16.png").mode == "I;16"
    stats = prepare(cfg(inp, tmp_path / "out"))
    assert stats["prepared"] == 1


def test_ctrl_c_stops_workers_quietly_and_cleans_up(tmp_path: Path):
    inp = write_photo_folder(tmp_path / "in", {"train": 16}, background="wood")
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "garment_gen.prepare",
            f"input_dir={inp}",
            f"output_dir={out}",
            "resolution=32",
            "workers=2",
            "grabcut_size=320",  # slow enough to be caught mid-run
        ],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, like a terminal's foreground job
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    deadline = time.time() + 60
    while not list(tmp_path.glob(".out.tmp-*/images/*.png")) and time.time() < deadline:
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C reaches the parent and every worker
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr
    lines = error_lines(stderr)
    assert len(lines) == 1 and lines[0].startswith("error: interrupted")
    assert not out.exists() and leftovers(out) == []


# ----------------------------------------------------------------- 7. settings checked first


def test_bad_setting_and_unwritable_output_are_one_line_before_any_work(
    photo_dir: Path, tmp_path: Path, monkeypatch
):
    res = cli(
        f"input_dir={photo_dir}", f"output_dir={tmp_path / 'o'}", "resolution=abc", cwd=tmp_path
    )
    assert res.returncode == 2
    # the type is the schema's (PrepareConfig, refused while Hydra composes), the range ours
    assert error_lines(res.stderr) == [
        "error: resolution=abc: Value 'abc' of type 'str' could not be converted to Integer"
    ]
    res = cli(
        f"input_dir={photo_dir}", f"output_dir={tmp_path / 'o'}", "resolution=100", cwd=tmp_path
    )
    assert res.returncode == 2
    assert error_lines(res.stderr) == [
        "error: resolution=100: must be a power of two (e.g. 64, 128, 256)"
    ]
    blocker = tmp_path / "a_file"
    blocker.write_text("x")

    def no_scan(*a, **k):
        raise AssertionError("inputs were scanned before the output was checked")

    monkeypatch.setattr(prep, "scan_inputs", no_scan)
    with pytest.raises(GarmentGenError, match=r"output_dir=.*a_file/out: cannot create"):
        prepare(cfg(photo_dir, blocker / "out"))
    real_open = os.open

    def read_only(path, *a, **k):
        if str(path).endswith(".lock"):
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real_open(path, *a, **k)

    monkeypatch.setattr(prep.os, "open", read_only)
    with pytest.raises(GarmentGenError, match="cannot write in .*: read-only file system"):
        prepare(cfg(photo_dir, tmp_path / "ro" / "out"))


# ----------------------------------------------------------------- a dataset changed after prepare


@pytest.fixture
def sample_copy(sample_root: Path, tmp_path: Path) -> Path:
    root = tmp_path / "data"
    shutil.copytree(sample_root, root)
    return root


def test_missing_prepared_file_is_named_at_setup(sample_copy: Path):
    from garment_gen.data.dataset import GarmentDataset, read_manifest

    sid = read_manifest(sample_copy, "train")[5]["id"]
    (sample_copy / "images" / f"{sid}.png").unlink()
    with pytest.raises(GarmentGenError) as e:  # what GarmentDataModule.setup builds
        GarmentDataset(sample_copy, "train")
    msg = str(e.value)
    assert msg.startswith(f"{sample_copy / 'images' / sid}.png: listed in ") and "\n" not in msg


def test_corrupt_prepared_file_ends_in_one_error_line_from_a_loader_worker(
    sample_copy: Path, capsys
):
    from torch.utils.data import DataLoader

    from garment_gen.cli import user_errors
    from garment_gen.data.dataset import GarmentDataset, read_manifest

    sid = read_manifest(sample_copy, "validation")[0]["id"]
    bad = sample_copy / "images" / f"{sid}.png"
    bad.write_bytes(bad.read_bytes()[:40])
    ds = GarmentDataset(sample_copy, "validation")

    @user_errors
    def fit():
        for _ in DataLoader(ds, batch_size=4, num_workers=1):
            pass

    with pytest.raises(SystemExit) as e:
        fit()
    assert e.value.code == 2
    lines = error_lines(capsys.readouterr().err)
    assert len(lines) == 1 and lines[0].startswith(f"error: {bad}: cannot read prepared sample")
    assert "DataLoader worker" not in lines[0]
