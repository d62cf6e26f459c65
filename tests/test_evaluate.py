"""Evaluation: metrics.json layout and ranges, the paste baseline, determinism, one-line CLI errors.

The tiny garment model these tests score (and ``tests/test_export.py`` exports) is trained
once per session by :func:`build_tiny_garment_model`.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from garment_gen.evaluate import (
    METHODS,
    TABLE,
    cross_pairs,
    evaluate,
    format_table,
    hellinger,
    iou,
    paste_baseline,
)

# Cheap evaluation settings shared by the tests that compare runs.
FAST_EVAL = dict(
    max_samples=4, num_pairs=4, batch_size=4, realism="fd_vgg", realism_size=32, speed_images=4
)


@pytest.fixture(scope="session")
def tiny_model(tiny_chain) -> dict[str, Path]:
    return tiny_chain


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "garment_gen.evaluate", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )


def run_main_in_process(main, prog: str, *args: str) -> tuple[int, str, str]:
    """Run a Hydra entry point in this process (no second torch import): ``(exit code, stdout, stderr)``.

    Hydra configures logging for the job; the root logger is restored afterwards so that
    later tests do not log into this run's captured stdout.
    """
    from hydra.core.global_hydra import GlobalHydra

    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    argv, out, err = sys.argv, io.StringIO(), io.StringIO()
    sys.argv = [prog, *args]
    code = 0
    try:
        GlobalHydra.instance().clear()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            main()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    finally:
        sys.argv = argv
        GlobalHydra.instance().clear()
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def cli_report(tiny_model, tmp_path_factory) -> tuple[dict, str, Path]:
    """One run of the command line (in this process): ``(metrics.json, stdout, out folder)``."""
    from garment_gen.evaluate import main

    out = tmp_path_factory.mktemp("eval_cli")
    args = [f"{k}={v}" for k, v in FAST_EVAL.items()]
    code, stdout, stderr = run_main_in_process(
        main,
        "garment_gen.evaluate",
        f"model={tiny_model['garment_model']}",
        "split=test",
        f"out={out}",
        *args,
    )
    assert code == 0, stderr[-3000:]
    return json.loads((out / "metrics.json").read_text()), stdout, out


def test_metrics_json_layout_and_ranges(cli_report, tiny_model):
    report, stdout, out = cli_report
    assert set(METHODS) <= set(report)
    assert report["realism_backend"] == "fd_vgg"
    assert report["split"] == "test" and report["n"] == 4 and report["num_pairs"] == 4
    assert report["device"] == "cpu" and report["model_file"] == str(
        tiny_model["garment_model"].resolve()
    )
    assert Path(report["dataset"]).is_dir()
    model, base = report["model"], report["paste_baseline"]
    assert set(model) == set(base) == {key for key, _, _ in TABLE}
    mean, upper = report["mean_garment"], report["upper_bound"]
    assert set(mean) == set(upper) == set(model)
    for row in (model, base, mean, upper):
        for key in ("iou_segmenter", "iou_classical", "cross_iou_segmenter", "cross_iou_classical"):
            assert 0.0 <= row[key] <= 1.0, (
                key
            )  # the tiny model bundles a segmenter: never None here
        assert math.isfinite(row["psnr"]) and 0 < row["psnr"] <= 100
        assert 0.0 <= row["l2"] <= 4.0 and -1.0 <= row["ssim"] <= 1.0 and row["lpips"] >= 0.0
        assert 0.0 <= row["cross_hist_hellinger"] <= 1.0 and row["cross_lpips_crop"] >= 0.0
        assert math.isfinite(row["realism"]) and row["realism"] >= 0.0
        assert math.isfinite(row["realism_kid"])
        assert row["cross_dists_crop"] is None or 0.0 <= row["cross_dists_crop"] <= 1.0
    assert model["images_per_second"] > 0 and base["images_per_second"] is None
    assert mean["images_per_second"] is None and upper["images_per_second"] is None
    # The table names both methods and the realism backend; the grids were written.
    assert "paste baseline" in stdout and "FD-VGG" in stdout and "speed" in stdout
    assert "mean garment" in stdout and "upper bound" in stdout and "KID-VGG" in stdout
    for name in ("reconstructions.png", "cross.png"):
        assert (out / name).stat().st_size > 0


def test_same_seed_gives_same_metrics(cli_report, tiny_model, tmp_path):
    first, _, _ = cli_report
    again = evaluate(tiny_model["garment_model"], split="test", out=tmp_path, **FAST_EVAL)
    for method in METHODS:
        for key, value in first[method].items():
            if key == "images_per_second":
                continue  # a timing, not a metric of the images
            if value is None:
                assert again[method][key] is None, (method, key)
                continue
            assert again[method][key] == pytest.approx(value, rel=1e-6, abs=1e-9), (method, key)
    assert (
        json.loads((tmp_path / "metrics.json").read_text())["model"]["l2"] == again["model"]["l2"]
    )


def test_full_textures_make_the_paste_baseline_exact(tiny_model):
    """Pasting the unoccluded garment into its own mask must give back the image (baseline sanity)."""
    from garment_gen.inference import GarmentGenerator

    gen = GarmentGenerator.from_checkpoint(tiny_model["garment_model"])
    report = evaluate(
        gen,
        split="test",
        textures="full",
        max_samples=4,
        num_pairs=2,
        realism="none",
        speed_images=4,
    )
    base = report["paste_baseline"]
    assert base["l2"] < 1e-4 and base["psnr"] > 40 and base["ssim"] > 0.99 and base["lpips"] < 0.01
    assert base["iou_classical"] > 0.95
    assert report["realism_backend"] is None and base["realism"] is None
    assert "out" not in report  # a loaded model and no out: nothing written
    assert "realism (off)" in format_table(report)


def test_mean_garment_baseline_paints_the_average_garment_inside_the_mask():
    from garment_gen.evaluate import mean_garment, paint_inside

    class _Two:
        def __len__(self):
            return 2

        def __getitem__(self, k):
            img = torch.full((3, 4, 4), -1.0 if k == 0 else 0.5)
            mask = torch.zeros(1, 4, 4)
            mask[:, : 2 + k] = 1  # rows 0-1 covered by both, row 2 by the second only
            return {"image": img, "mask": mask}

    avg = mean_garment(_Two(), (255, 255, 255))
    assert torch.allclose(avg[:, 0], torch.full((3, 4), -0.25))  # mean of both
    assert torch.allclose(avg[:, 2], torch.full((3, 4), 0.5))  # only the second covers it
    # uncovered pixels: the mean garment colour over all garment pixels
    assert torch.allclose(avg[:, 3], torch.full((3, 4), (-1 * 8 + 0.5 * 12) / 20))
    target = torch.zeros(1, 1, 4, 4)
    target[..., 1:3, 1:3] = 1
    out = paint_inside(target, avg, (255, 255, 255))
    assert torch.equal(out[0, :, 0, 0], torch.ones(3)) and torch.allclose(
        out[0, :, 1, 1], avg[:, 1, 1]
    )


def test_paste_baseline_fits_texture_into_target_box():
    bg = torch.ones(1, 3, 32, 32)
    texture = bg.clone()
    texture[:, :, 4:12, 4:12] = torch.tensor([-1.0, 0.0, 0.5]).view(
        1, 3, 1, 1
    )  # an 8x8 red-ish square
    mask = torch.zeros(1, 1, 32, 32)
    mask[:, :, 10:26, 8:24] = 1  # a 16x16 target
    out = paste_baseline(mask, texture)
    inside = out[0][:, mask[0, 0] > 0]
    assert torch.allclose(inside, torch.tensor([-1.0, 0.0, 0.5]).view(3, 1), atol=1e-5)
    assert torch.equal(out[0][:, mask[0, 0] == 0], torch.ones(3, int((mask == 0).sum())))
    # No garment in the texture: background everywhere.
    assert torch.equal(paste_baseline(mask, bg), bg)


def test_metric_helpers():
    a = torch.zeros(2, 1, 8, 8)
    a[:, :, 2:6, 2:6] = 1
    b = torch.zeros(2, 1, 8, 8)
    b[0, :, 2:6, 2:4] = 1
    assert torch.allclose(iou(a, a), torch.ones(2))
    assert torch.allclose(iou(b, a), torch.tensor([0.5, 0.0]))
    p = torch.tensor([[0.5, 0.5, 0.0], [1.0, 0.0, 0.0]])
    q = torch.tensor([[0.5, 0.5, 0.0], [0.0, 0.0, 1.0]])
    assert torch.allclose(hellinger(p, q), torch.tensor([0.0, 1.0]), atol=1e-6)
    pairs = cross_pairs(5, 20, seed=3)
    assert len(pairs) == 20 and all(i != j and 0 <= i < 5 and 0 <= j < 5 for i, j in pairs)
    assert pairs == cross_pairs(5, 20, seed=3) and pairs != cross_pairs(5, 20, seed=4)
    assert cross_pairs(1, 10, seed=0) == []


def test_cli_missing_model_one_line(tmp_path):
    res = run_cli(f"model={tmp_path / 'nope.pt'}", cwd=tmp_path)
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [
        f"error: {tmp_path / 'nope.pt'}: model file not found"
    ]


def test_cli_generator_instead_of_garment_model_one_line(tiny_model, tmp_path):
    res = run_cli(f"model={tiny_model['generator']}", cwd=tmp_path)
    assert res.returncode == 2, res.stderr[-2000:]
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "pretrained generator" in lines[0]
    assert "stage=encoders" in lines[0]


def test_missing_dataset_and_bad_options_are_user_errors(tiny_model, tmp_path):
    from garment_gen.errors import GarmentGenError

    with pytest.raises(GarmentGenError, match="not a prepared dataset"):
        evaluate(tiny_model["garment_model"], root=tmp_path / "nowhere", out=tmp_path)
    with pytest.raises(GarmentGenError, match="realism=inception"):
        evaluate(tiny_model["garment_model"], realism="inception", out=tmp_path)
    assert not (tmp_path / "metrics.json").exists()
