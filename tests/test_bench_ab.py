"""bench/ab_pretrain.py: the A/B harness builds resumable arm commands and reports probes."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def ab():
    spec = importlib.util.spec_from_file_location("ab_pretrain", REPO / "bench" / "ab_pretrain.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_shipped_spec_loads_and_arm_commands_resume(ab, tmp_path):
    spec = ab.load_spec(REPO / "bench" / "ab" / "projected_vs_stylegan2.yaml")
    assert (
        set(spec["arms"]) == {"stylegan2", "projected", "projected_nodiv"} and spec["minutes"] >= 40
    )
    cmd = ab.arm_command(spec, "projected", tmp_path / "data", tmp_path / "out")
    assert "gan=projected" in cmd and f"hydra.run.dir={tmp_path / 'out' / 'projected'}" in cmd
    assert "data.num_workers=0" in cmd and not any(c.startswith("ckpt_path=") for c in cmd)
    last = tmp_path / "out" / "projected" / "checkpoints" / "last.ckpt"
    last.parent.mkdir(parents=True)
    last.write_bytes(b"")
    assert f"ckpt_path={last}" in ab.arm_command(
        spec, "projected", tmp_path / "data", tmp_path / "out"
    )


def test_bad_spec_is_one_line(ab, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("minutes: 5\n")
    with pytest.raises(SystemExit, match="arms"):
        ab.load_spec(bad)


def _arm(out: Path, name: str, rows: list[tuple[float, float, float, float]]) -> None:
    probe = out / name / "probe"
    probe.mkdir(parents=True)
    lines = ["cpu_min,wall_min,kimg,fd_vgg,kid_vgg"]
    for cpu, kimg, fd, kid in rows:
        lines.append(f"{cpu},{cpu * 1.1},{kimg},{fd},{kid}")
        tile = np.full((40, 40, 3), int(fd) % 255, np.uint8)
        Image.fromarray(tile).save(probe / f"cpu{cpu:08.3f}min.png")
    (probe / "probe.csv").write_text("\n".join(lines) + "\n")


def test_report_tables_curves_and_grids(ab, tmp_path):
    _arm(tmp_path, "a", [(5.0, 1.5, 150.0, 0.5), (10.01, 3.0, 120.0, 0.4)])
    _arm(tmp_path, "b", [(5.02, 3.5, 90.0, 0.2), (9.98, 7.0, 60.0, 0.1)])
    text = ab.report(tmp_path, None).read_text()
    assert "| a | 150 | 120 |" in text and "| b | 90 | 60 |" in text  # fd_vgg at 5 and 10 min
    assert "b: 42.1 kimg/CPU-h" in text  # 7.0 kimg in 9.98 CPU-min
    assert (tmp_path / "curves.png").stat().st_size > 0
    grid = Image.open(tmp_path / "grid_10min.png")
    assert grid.width == 40 * 2 + 8 and grid.height == 40 + 18  # both arms side by side


@pytest.mark.parametrize("name", ["projected_vs_stylegan2", "conditional"])
def test_every_arm_of_the_shipped_specs_composes(ab, name, compose_cfg):
    """Each arm's overrides (with the spec's common ones) compose into a pretrain config, so a
    typo in a spec fails here and not after an hour of the other arms."""
    spec = ab.load_spec(REPO / "bench" / "ab" / f"{name}.yaml")
    for arm, overrides in spec["arms"].items():
        cfg = compose_cfg([*spec["common"], *overrides])
        assert cfg.stage_name == "pretrain", arm
        if "model.conditional=true" in overrides:
            assert cfg.model.conditional is True, arm
