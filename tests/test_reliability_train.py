"""Training survives what real runs meet: a kill after validation, bad checkpoints, bad values,
unwritable outputs, a full disk, and checkpoints that try to run code."""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

TINY = [
    "stage=pretrain",
    "gan=stylegan2",
    "model=stylegan2_tiny",
    "data.batch_size=4",
    "data.num_workers=0",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "logger=csv",
    "loss.pl_weight=0",  # G makes exactly one optimizer step per batch: counts are checkable
]


def _run(args: list[str], cwd: Path, env: dict | None = None, timeout: int = 300):
    return subprocess.run(
        [sys.executable, "-m", "garment_gen.train", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def _error_lines(res: subprocess.CompletedProcess) -> list[str]:
    return [ln for ln in res.stderr.strip().splitlines() if ln.strip()]


def _adam_steps(ckpt: dict) -> list[int]:
    return [int(next(iter(o["state"].values()))["step"]) for o in ckpt["optimizer_states"]]


@pytest.mark.slow
def test_sigkill_after_validation_then_resume_continues_everything(tmp_path):
    """A real ``python -m garment_gen.train`` is killed (SIGKILL) after it has validated (the
    realism metric exists) and written a checkpoint; the resumed run continues the image count,
    EMA, augmentation state and optimizer state from that checkpoint."""
    run1 = tmp_path / "R1"
    args = TINY + [
        f"paths.log_dir={tmp_path}",
        f"hydra.run.dir={run1}",
        "trainer.val_check_interval=4",
        "trainer.limit_val_batches=2",
        "callbacks.model_checkpoint.every_n_batches=4",
        "model.augment.p_init=0.2",
        "model.augment.speed_kimg=0.5",
    ]
    proc = subprocess.Popen(
        [sys.executable, "-m", "garment_gen.train", *args],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    ckdir = run1 / "checkpoints"
    last = ckdir / "last.ckpt"
    deadline = time.time() + 240
    try:
        while time.time() < deadline:
            best = list(ckdir.glob("best_fd_*.ckpt"))  # written only once val/fd exists
            if best and last.is_file() and last.stat().st_mtime > best[0].stat().st_mtime + 0.5:
                break
            if proc.poll() is not None:
                pytest.fail(f"training ended early: {proc.stderr.read()[-2000:]}")
            time.sleep(0.2)
        else:
            pytest.fail("no checkpoint after a validation within 240 s")
        time.sleep(0.5)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    ckpt = torch.load(last, map_location="cpu", weights_only=True)
    sd = ckpt["state_dict"]
    assert not any(k.startswith("realism.") for k in sd), "the realism VGG must not be saved"
    assert "val/fd" in str(ckpt["callbacks"]), "this checkpoint was written after a validation"
    nimg1, calls1, p1 = int(sd["nimg"]), int(sd["augment.calls"]), float(sd["augment.p"])
    steps1 = _adam_steps(ckpt)

    extra_batches = 3
    run2 = tmp_path / "R2"
    res = _run(
        args[:-3]
        + [
            f"hydra.run.dir={run2}",
            f"ckpt_path={last}",
            f"model.max_kimg={(nimg1 + 4 * extra_batches) / 1000}",
            "model.augment.p_init=0.2",
            "model.augment.speed_kimg=0.5",
            "trainer.val_check_interval=4",
            "trainer.limit_val_batches=2",
        ],
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    after = torch.load(run2 / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    sd2 = after["state_dict"]
    assert int(sd2["nimg"]) == nimg1 + 4 * extra_batches
    assert int(sd2["augment.calls"]) == calls1 + extra_batches
    assert abs(float(sd2["augment.p"]) - p1) <= 4 * 4 / 500 + 1e-6  # at most one ADA update
    g1, d1 = steps1
    g2, d2 = _adam_steps(after)
    assert g2 == g1 + extra_batches and d2 >= d1 + extra_batches
    # EMA continued from the checkpoint's, not from a fresh network.
    from garment_gen.networks.stylegan2 import Generator

    ema1 = {k[6:]: v for k, v in sd.items() if k.startswith("G_ema.")}
    ema2 = {k[6:]: v for k, v in sd2.items() if k.startswith("G_ema.")}
    fresh = Generator(64, z_dim=32, w_dim=32, mapping_layers=2, channel_base=256, channel_max=32)
    key = "synthesis.b4.conv1.weight"
    key = (
        key
        if key in ema1
        else next(k for k in ema1 if k.startswith("synthesis.") and k.endswith("weight"))
    )
    moved = (ema2[key] - ema1[key]).norm()
    assert moved < 0.5 * (ema1[key] - fresh.state_dict()[key]).norm()


def test_resume_from_other_files_is_one_line(tmp_path, tiny_generator):
    """``ckpt_path=`` given a truncated file, a generator.pt, another stage's checkpoint or a
    missing file: one ``error:`` line naming the file, before any training."""
    good = tmp_path / "seg.ckpt"
    torch.save(
        {
            "state_dict": {"net.w": torch.zeros(1)},
            "pytorch-lightning_version": "2.6",
            "garment_gen": {"stage": "segmenter"},
        },
        good,
    )
    truncated = tmp_path / "trunc.ckpt"
    truncated.write_bytes(good.read_bytes()[:40])
    cases = {
        "missing": (tmp_path / "nope.ckpt", "not found"),
        "truncated": (truncated, "damaged"),
        "generator": (tiny_generator, "exported model"),
        "other stage": (good, "stage segmenter"),
    }
    for name, (path, expect) in cases.items():
        res = _run(TINY + [f"paths.log_dir={tmp_path}", f"ckpt_path={path}"], cwd=tmp_path)
        lines = _error_lines(res)
        assert res.returncode == 2, (name, res.stderr[-1500:])
        assert len(lines) == 1 and lines[0].startswith("error:"), (name, lines)
        assert str(path) in lines[0] and expect in lines[0], (name, lines)


class _Evil:
    def __reduce__(self):
        return (os.system, (f"touch {MARKER}",))


MARKER = Path("/tmp") / f"garment_gen_pwned_{os.getpid()}"


def test_malicious_checkpoint_never_runs_even_when_torch_is_told_to_trust(tmp_path):
    """With ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1`` a checkpoint that would run ``os.system``
    is refused with one line, and the command never ran."""
    MARKER.unlink(missing_ok=True)
    evil = tmp_path / "evil.ckpt"
    with open(evil, "wb") as f:
        pickle.dump({"state_dict": {}, "pytorch-lightning_version": "2.6", "x": _Evil()}, f)
    res = _run(
        TINY + [f"paths.log_dir={tmp_path}", f"ckpt_path={evil}"],
        cwd=tmp_path,
        env={"TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"},
    )
    assert not MARKER.exists(), "the checkpoint's code ran"
    lines = _error_lines(res)
    assert res.returncode == 2 and len(lines) == 1 and "refused" in lines[0], lines
    # the checkpoint IO itself pins weights_only, whatever the environment says
    from garment_gen.utils.checkpoint import AtomicCheckpointIO, CheckpointFileError

    os.environ["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] = "1"
    try:
        with pytest.raises(CheckpointFileError):
            AtomicCheckpointIO().load_checkpoint(evil)
    finally:
        del os.environ["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"]
    assert not MARKER.exists()


@pytest.mark.parametrize(
    "override, key",
    [
        ("data.batch_size=abc", "data.batch_size"),
        ("data.batch_size=0", "data.batch_size"),
        ("trainer.max_steps=abc", "trainer.max_steps"),
        ("trainer.max_time=soon", "trainer.max_time"),
        ("model.max_kimg=lots", "model.max_kimg"),
    ],
)
def test_bad_values_are_one_line_naming_the_key(compose_cfg, override, key):
    from garment_gen.errors import ConfigError
    from garment_gen.train import check_config

    cfg = compose_cfg(["stage=pretrain", override])
    with pytest.raises(ConfigError) as err:
        check_config(cfg)
    assert str(err.value).startswith(key) and "\n" not in str(err.value)


def test_bad_value_on_the_command_line(tmp_path):
    res = _run(TINY + [f"paths.log_dir={tmp_path}", "data.batch_size=abc"], cwd=tmp_path)
    assert res.returncode == 2 and _error_lines(res) == [
        "error: data.batch_size='abc': expected an integer"
    ]


def test_unwritable_output_is_one_line_before_any_work(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    res = _run(TINY + [f"paths.log_dir={tmp_path}", f"hydra.run.dir={blocker}/run"], cwd=tmp_path)
    lines = _error_lines(res)
    assert res.returncode == 2 and len(lines) == 1 and str(blocker) in lines[0], res.stderr[-2000:]


def test_full_disk_while_checkpointing_is_one_clear_error(tmp_path, monkeypatch):
    """torch.save on a full disk ends as 'unexpected pos'; the user sees the file and the cause."""
    import errno

    from garment_gen.utils import checkpoint as ck

    def full(obj, f, *a, **kw):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("torch.save", full)
    with pytest.raises(ck.CheckpointFileError, match="no space left on device"):
        ck.atomic_torch_save({"a": 1}, tmp_path / "last.ckpt")
    assert list(tmp_path.iterdir()) == []

    def torn(obj, f, *a, **kw):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 640")

    monkeypatch.setattr("torch.save", torn)
    with pytest.raises(ck.CheckpointFileError, match="last.ckpt: cannot write"):
        ck.atomic_torch_save({"a": 1}, tmp_path / "last.ckpt")


def test_stale_temporaries_of_a_killed_writer_are_removed(tmp_path):
    """SIGKILL during a checkpoint save leaves ``.last.ckpt.<pid>.<rand>.tmp``; the next run
    removes it when its writer is dead, and keeps a live writer's."""
    from garment_gen.utils.atomic import atomic_path, remove_stale_temporaries

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".last.ckpt.{dead.pid}.abcd.tmp"
    stale.write_bytes(b"x" * 100)
    live = tmp_path / f".last.ckpt.{os.getppid()}.efgh.tmp"
    live.write_bytes(b"y")
    with atomic_path(tmp_path / "last.ckpt") as tmp:
        assert f".{os.getpid()}." in tmp.name  # the writer's pid is in the name
        tmp.write_bytes(b"z")
    assert remove_stale_temporaries(tmp_path) == [stale]
    assert live.exists() and not stale.exists() and (tmp_path / "last.ckpt").read_bytes() == b"z"


def test_checkpoints_are_written_every_n_batches_under_manual_optimisation(compose_cfg):
    """Lightning's every_n_train_steps saved steps 4, 8, 24, 28, 52, ... (2-4 optimizer steps a
    batch); BatchCheckpoint saves after every n-th batch."""
    from garment_gen.train import train

    cfg = compose_cfg(
        TINY
        + [
            "trainer.max_steps=-1",
            "model.max_kimg=0.048",  # 12 batches of 4
            "callbacks.model_checkpoint.every_n_batches=3",
            "callbacks.model_checkpoint.monitor=null",
            "callbacks.model_checkpoint.save_top_k=-1",
            "callbacks.model_checkpoint.filename=b_\\{step\\}",
            "callbacks.model_checkpoint.save_on_train_epoch_end=false",
            "trainer.limit_val_batches=0",
            "model.realism=null",
        ]
    )
    train(cfg)
    saved = sorted(
        int(torch.load(p, map_location="cpu", weights_only=True)["state_dict"]["batches"])
        for p in (Path(cfg.paths.output_dir) / "checkpoints").glob("b*.ckpt")
    )
    assert saved == [3, 6, 9, 12]
