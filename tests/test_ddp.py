"""Every stage trains under a 2-process DDP run on CPU (gloo), exporting once from rank 0."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

DDP = [
    "trainer.accelerator=cpu",
    "trainer.devices=2",
    "trainer.strategy=ddp_find_unused_parameters_true",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "data.num_workers=0",
]


def run(tmp_path: Path, *args: str) -> Path:
    res = subprocess.run(
        [sys.executable, "-m", "garment_gen.train", *args, *DDP, f"paths.log_dir={tmp_path}"],
        capture_output=True,
        text=True,
        timeout=400,
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    stage = args[0].split("=")[1]
    runs = sorted((tmp_path / stage / "runs").iterdir())
    assert len(runs) == 1, runs  # both ranks write into one run folder
    return runs[0]


@pytest.mark.slow
def test_pretrain_then_encoders_under_ddp(tmp_path):
    pre = run(
        tmp_path,
        "stage=pretrain",
        "gan=stylegan2",
        "model=stylegan2_tiny",
        "debug=fast",
        "data.batch_size=4",
        "trainer.max_steps=14",
        "trainer.val_check_interval=2",
        "trainer.check_val_every_n_epoch=null",
        "trainer.limit_val_batches=1",
    )
    metrics = json.loads((pre / "metrics.json").read_text())
    batches = metrics["train/kimg"] * 1000 / (4 * 2)
    assert abs(batches - round(batches)) < 1e-3 and batches >= 3  # images counted over both ranks
    assert metrics["val/fd_vgg"] > 0  # realism metric synchronised, no hang at validation
    assert (pre / "generator.pt").is_file() and list((pre / "samples").glob("*.png"))
    enc = run(
        tmp_path,
        "stage=encoders",
        f"model.generator={pre / 'generator.pt'}",
        "debug=fast",
        "model.encoders.base_channels=8",
        "model.encoders.max_channels=32",
        "trainer.max_steps=6",
        "trainer.val_check_interval=3",
        "trainer.check_val_every_n_epoch=null",
        "trainer.limit_val_batches=1",
    )
    assert (enc / "garment_model.pt").is_file()
    assert "val/first" in json.loads((enc / "metrics.json").read_text())


@pytest.mark.slow
def test_segmenter_under_ddp(tmp_path):
    seg = run(
        tmp_path,
        "stage=segmenter",
        "debug=fast",
        "model.net.encoder_depth=3",
        "model.net.decoder_channels=[32,16,8]",
        "trainer.limit_val_batches=1",
    )
    assert (seg / "segmenter.pt").is_file()
