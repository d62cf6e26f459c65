"""Configs compose, the CLI fails clearly, and the pretrain stage trains, exports and resumes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import hydra
import pytest
import pytorch_lightning as pl
import torch
from omegaconf import open_dict

from garment_gen.train import build, train
from tests.conftest import sample_with_labels

TINY_PRETRAIN = [
    "stage=pretrain",
    "gan=stylegan2",
    "model=stylegan2_tiny",
    "debug=fast",
    "model.realism=null",
    "model.sample_every_n_batches=2",
    "data.batch_size=4",
    "trainer.enable_model_summary=false",
]


def run_train_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "garment_gen.train", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.parametrize("stage", ["pretrain", "encoders", "segmenter"])
def test_every_stage_composes(compose_cfg, stage):
    cfg = compose_cfg(
        [f"stage={stage}", "model.generator=x.pt"] if stage == "encoders" else [f"stage={stage}"]
    )
    assert cfg.stage_name == stage
    assert cfg.model._target_.startswith("garment_gen.modules.")
    assert {"data", "trainer", "logger", "callbacks", "paths", "loss"} <= set(cfg)
    dm = hydra.utils.instantiate(cfg.data, _recursive_=False)
    assert dm.resolution == 64


@pytest.mark.parametrize("trainer", ["cpu", "gpu", "ddp"])
def test_trainer_configs_compose(compose_cfg, trainer):
    cfg = compose_cfg(["stage=pretrain", f"trainer={trainer}"])
    assert cfg.trainer._target_ == "pytorch_lightning.Trainer"


def test_cli_unknown_stage_one_line(tmp_path):
    res = run_train_cli("stage=nope", cwd=tmp_path)
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert lines == ["error: unknown stage 'nope'; valid: encoders, pretrain, segmenter"]


def test_cli_missing_stage_one_line(tmp_path):
    res = run_train_cli(cwd=tmp_path)
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "stage is required" in lines[0] and "pretrain" in lines[0]


def test_cli_missing_required_value_one_line(tmp_path):
    res = run_train_cli("stage=encoders", f"paths.log_dir={tmp_path}", cwd=tmp_path)
    assert res.returncode == 2, res.stderr
    err = [ln for ln in res.stderr.strip().splitlines() if ln.startswith("error")]
    assert len(err) == 1 and "model.generator" in err[0]
    assert "Traceback" not in res.stderr


def test_cli_gan_on_another_stage_is_one_line(tmp_path):
    res = run_train_cli(
        "stage=encoders", "gan=projected", f"paths.log_dir={tmp_path}", cwd=tmp_path
    )
    assert res.returncode == 2 and "Traceback" not in res.stderr
    (line,) = [x for x in res.stderr.splitlines() if x.startswith("error:")]
    assert "gan=projected" in line and "stage=encoders" in line and "+gan" not in line


def test_cli_bad_data_root_one_line(tmp_path):
    res = run_train_cli(
        "stage=pretrain", f"data.root={tmp_path}", f"paths.log_dir={tmp_path}", cwd=tmp_path
    )
    assert res.returncode == 2
    assert "not a prepared dataset" in res.stderr and "Traceback" not in res.stderr


def test_pretrain_trains_exports_and_writes_run_folder(compose_cfg, tmp_path, monkeypatch):
    import garment_gen.train as train_mod

    tuned = []
    monkeypatch.setattr(train_mod, "keep_freed_memory", lambda: tuned.append(1) or True)
    cfg = compose_cfg(TINY_PRETRAIN)
    metrics = train(cfg)
    assert tuned == [1]  # a CPU run keeps freed memory for reuse (malloc_tune=true)
    out = Path(cfg.paths.output_dir)
    for name in ("generator.pt", "config_resolved.yaml", "run_info.json", "metrics.json"):
        assert (out / name).is_file(), name
    assert list((out / "samples").glob("*.png"))
    assert metrics["train/kimg"] > 0 and torch.isfinite(torch.tensor(metrics["train/d_loss"]))
    from garment_gen.networks.stylegan2 import load_generator

    g = load_generator(out / "generator.pt")
    img = g.synthesis(g.mapping(torch.randn(2, g.z_dim)), noise_mode="const")
    assert img.shape == (2, 3, 64, 64)


def _fit(cfg, ckpt_path=None):
    dm, module, trainer = build(cfg)
    trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path)
    return module, trainer


def _assert_resumed_exactly(module, trainer, ckpt) -> None:
    """The resumed module's tensors and Adam states are the checkpoint's, exactly."""
    for k, v in ckpt["state_dict"].items():
        assert torch.equal(module.state_dict()[k], v), k
    for opt, saved in zip(trainer.optimizers, ckpt["optimizer_states"], strict=True):
        st = opt.state_dict()["state"]
        assert st.keys() == saved["state"].keys()
        k0 = next(iter(st))
        assert torch.equal(st[k0]["exp_avg"], saved["state"][k0]["exp_avg"])


def test_pretrain_resume_restores_everything(compose_cfg, tmp_path):
    base = TINY_PRETRAIN + [
        "callbacks.model_checkpoint.every_n_batches=2",
        "trainer.max_steps=8",
    ]
    cfg = compose_cfg(base + ["model.augment.p_init=0.3"])
    first, trainer = _fit(cfg)
    ckpt_path = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    ckpt = torch.load(
        ckpt_path, map_location="cpu", weights_only=True
    )  # no pickled code in checkpoints
    assert int(ckpt["state_dict"]["nimg"]) == int(first.nimg) > 0
    assert "augment.p" in ckpt["state_dict"] and "G_ema.synthesis" in " ".join(ckpt["state_dict"])
    assert len(ckpt["optimizer_states"]) == 2 and "rng" in ckpt["garment_gen"]

    # Resuming with no steps left must reproduce the saved state exactly.
    same, trainer2 = _fit(cfg, ckpt_path=str(ckpt_path))
    _assert_resumed_exactly(same, trainer2, ckpt)

    # Resuming with more steps continues the image count and the EMA.
    with open_dict(cfg):
        cfg.trainer.max_steps = 16
    more, _ = _fit(cfg, ckpt_path=str(ckpt_path))
    assert int(more.nimg) > int(ckpt["state_dict"]["nimg"])
    assert int(more.batches) > int(ckpt["state_dict"]["batches"])
    assert not torch.equal(more.G_ema.state_dict()["w_avg"], ckpt["state_dict"]["G_ema.w_avg"])


@pytest.mark.parametrize("conditional", [False, True])
def test_projected_pretrain_resume_is_exact(compose_cfg, conditional):
    """gan=projected: the checkpoint holds the scale heads and Adam states, never the frozen
    ImageNet trunk; resuming with no steps left reproduces the saved state, more steps go on.
    model.conditional=true: the same for a class-conditional GAN over the sample's 8 classes."""
    base = TINY_PRETRAIN + [
        f"model.conditional={str(conditional).lower()}",
        "gan=projected",
        "model.discriminator.feature_size=32",
        "callbacks.model_checkpoint.every_n_batches=2",
        "trainer.max_steps=4",
        # the A/B's CPU-time budget (no probes here) resumes with the run
        "+callbacks.cpu_budget._target_=garment_gen.callbacks.CpuTimeBudget",
        "+callbacks.cpu_budget.probe_every=null",
    ]
    cfg = compose_cfg(base)
    first, _ = _fit(cfg)
    ckpt_path = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    keys = " ".join(ckpt["state_dict"])
    assert int(ckpt["state_dict"]["nimg"]) == int(first.nimg) > 0
    assert "D." in keys and "features" not in keys and "trunk" not in keys, keys[:500]
    assert ("G.class_embed.weight" in keys) == ("D.class_embed.weight" in keys) == conditional
    assert first.G.c_dim == (8 if conditional else 0)
    (budget_state,) = [v for k, v in ckpt["callbacks"].items() if "CpuTimeBudget" in k]
    assert budget_state["cpu_min"] > 0
    same, trainer2 = _fit(cfg, ckpt_path=str(ckpt_path))
    _assert_resumed_exactly(same, trainer2, ckpt)
    with open_dict(cfg):
        cfg.trainer.max_steps = 8
    more, trainer3 = _fit(cfg, ckpt_path=str(ckpt_path))
    assert int(more.nimg) > int(ckpt["state_dict"]["nimg"])
    (budget,) = [c for c in trainer3.callbacks if type(c).__name__ == "CpuTimeBudget"]
    assert budget.cpu_minutes() > budget_state["cpu_min"]  # counted on from the checkpoint


def test_interrupted_checkpoint_save_keeps_previous(tmp_path, monkeypatch):
    from garment_gen.utils import checkpoint as ck

    path = tmp_path / "last.ckpt"
    ck.atomic_torch_save({"step": 1, "w": torch.ones(3)}, path)
    real_save = torch.save

    def dying_save(obj, f, *a, **kw):
        real_save({"partial": True}, f)  # some bytes reach the temporary file...
        raise KeyboardInterrupt  # ...then the process is killed mid-write

    monkeypatch.setattr("torch.save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        ck.atomic_torch_save({"step": 2, "w": torch.zeros(3)}, path)
    monkeypatch.setattr("torch.save", real_save)
    restored = torch.load(path, weights_only=True)
    assert restored["step"] == 1 and torch.equal(restored["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no temporary file left


def test_malloc_tune_only_for_cpu_runs_that_ask(compose_cfg, monkeypatch):
    import garment_gen.train as train_mod

    calls = []
    monkeypatch.setattr(train_mod, "keep_freed_memory", lambda: calls.append(1) or True)
    cpu = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False)
    assert train_mod.tune_cpu_malloc(compose_cfg(["stage=pretrain"]), cpu) is True
    off = compose_cfg(["stage=pretrain", "malloc_tune=false"])
    assert train_mod.tune_cpu_malloc(off, cpu) is False
    assert calls == [1]


def test_latest_picks_the_newest_export_and_says_when_there_is_none(compose_cfg, tmp_path):
    import os

    from garment_gen.errors import ConfigError
    from garment_gen.train import _resolve_artefacts

    cfg = compose_cfg(["stage=encoders", "model.generator=latest", "loss.segmenter=latest"])
    with pytest.raises(Exception) as err:
        _resolve_artefacts(cfg)
    from garment_gen.cli import _user_cause

    assert isinstance(_user_cause(err.value), ConfigError) and "no generator.pt" in str(err.value)
    old, new = (tmp_path / "pretrain/runs" / d / "generator.pt" for d in ("a", "b"))
    for i, f in enumerate((old, new)):
        f.parent.mkdir(parents=True)
        f.write_bytes(b"x")
        os.utime(f, (1000 + i, 1000 + i))
    seg = tmp_path / "segmenter/runs/c/segmenter.pt"
    seg.parent.mkdir(parents=True)
    seg.write_bytes(b"x")
    cfg = compose_cfg(["stage=encoders", "model.generator=latest", "loss.segmenter=latest"])
    _resolve_artefacts(cfg)
    assert cfg.model.generator == str(new) and cfg.loss.segmenter == str(seg)


def test_cpu_time_budget_probes_then_stops(compose_cfg):
    """The A/B callback stops a run at its CPU-minute budget and probes realism on the way:
    one row per probe in probe.csv (kimg growing), a sample grid per probe, no second probe of
    an unchanged generator at the end. One thread: on a loaded machine several threads'
    spin-waits inflate the CPU time of a step past the whole budget."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _budget_probes_then_stop(compose_cfg)
    finally:
        torch.set_num_threads(threads)


def _budget_probes_then_stop(compose_cfg):
    cfg = compose_cfg(
        TINY_PRETRAIN
        + [
            "trainer.max_steps=400",  # a ceiling; the budget ends the run first
            "+callbacks.cpu_budget._target_=garment_gen.callbacks.CpuTimeBudget",
            "+callbacks.cpu_budget.minutes=0.1",
            "+callbacks.cpu_budget.probe_every=0.03",
            "+callbacks.cpu_budget.n_probe=8",
        ]
    )
    module, trainer = _fit(cfg)
    assert "CPU-time budget" in module.stop_reason
    (budget,) = [c for c in trainer.callbacks if type(c).__name__ == "CpuTimeBudget"]
    assert 0.1 <= budget.cpu_minutes() < 0.6
    probe = Path(cfg.paths.output_dir) / "probe"
    lines = (probe / "probe.csv").read_text().splitlines()
    assert lines[0] == "cpu_min,wall_min,kimg,fd_vgg,kid_vgg"
    rows = [
        dict(zip(lines[0].split(","), map(float, r.split(",")), strict=True)) for r in lines[1:]
    ]
    assert len(rows) >= 2
    kimgs = [r["kimg"] for r in rows]
    assert kimgs == sorted(kimgs) and len(set(kimgs)) == len(kimgs)  # no duplicate final probe
    assert all(r["fd_vgg"] > 0 and r["kid_vgg"] == r["kid_vgg"] for r in rows)
    assert len(list(probe.glob("cpu*min.png"))) == len(rows)


def test_collapse_guard_exports_the_best_snapshot(compose_cfg, tmp_path):
    """With a kept best-realism snapshot better than the last validation, generator.pt is that
    snapshot's G_ema and generator_last.pt the final one; otherwise generator.pt is the last."""
    from types import SimpleNamespace

    from garment_gen.networks.stylegan2 import load_generator

    cfg = compose_cfg(TINY_PRETRAIN)
    _, module, _ = build(cfg)
    best_state = {f"G_ema.{k}": v + 0.5 for k, v in module.G_ema.state_dict().items()}
    ckpt = tmp_path / "best_fd.ckpt"
    torch.save({"state_dict": best_state}, ckpt)
    cb = SimpleNamespace(
        monitor="val/fd", best_model_path=str(ckpt), best_model_score=torch.tensor(30.0)
    )
    fake_trainer = SimpleNamespace(
        callback_metrics={"val/fd": torch.tensor(50.0)}, checkpoint_callbacks=[cb]
    )
    module._trainer = fake_trainer
    out = tmp_path / "export"
    out.mkdir()
    module.export(out)
    best, last = load_generator(out / "generator.pt"), load_generator(out / "generator_last.pt")
    for k, v in module.G_ema.state_dict().items():
        assert torch.equal(best.state_dict()[k], best_state[f"G_ema.{k}"]), k
        assert torch.equal(last.state_dict()[k], v), k

    # the last is at least as good: it is what generator.pt holds, and no generator_last.pt
    fake_trainer.callback_metrics["val/fd"] = torch.tensor(20.0)
    out2 = tmp_path / "export2"
    out2.mkdir()
    module.export(out2)
    assert not (out2 / "generator_last.pt").exists()
    g = load_generator(out2 / "generator.pt")
    assert all(torch.equal(g.state_dict()[k], v) for k, v in module.G_ema.state_dict().items())


def test_cli_conditional_on_partly_labelled_data_is_one_line(tmp_path):
    root = sample_with_labels(tmp_path, lambda i, label: "" if i < 3 else label)
    res = run_train_cli(
        *TINY_PRETRAIN, "model.conditional=true", f"data.root={root}",
        f"paths.log_dir={tmp_path}", cwd=tmp_path,
    )  # fmt: skip
    assert res.returncode == 2 and "Traceback" not in res.stderr
    (line,) = [x for x in res.stderr.splitlines() if x.startswith("error:")]
    assert (
        "model.conditional=true: 3 photo(s)" in line and "model.conditional=auto or false" in line
    )
    res = run_train_cli(
        *TINY_PRETRAIN, "model.conditional=maybe", f"paths.log_dir={tmp_path}", cwd=tmp_path
    )
    (line,) = [x for x in res.stderr.splitlines() if x.startswith("error:")]
    assert res.returncode == 2 and "model.conditional=maybe: expected true, false or auto" in line


def test_conditional_auto_follows_the_data(compose_cfg, tmp_path):
    """auto: conditional over the sample's 8 classes; unconditional when some photos have none."""
    _, module, _ = build(compose_cfg(TINY_PRETRAIN + ["model.conditional=auto"]))
    assert module.G.c_dim == 8 and module.G.class_names[0] == "dress"
    root = sample_with_labels(tmp_path, lambda i, label: "" if i < 3 else label)
    cfg = compose_cfg(TINY_PRETRAIN + ["model.conditional=auto", f"data.root={root}"])
    assert build(cfg)[1].G.c_dim == 0


def test_conditional_on_one_class_trains_unconditionally(compose_cfg, tmp_path):
    root = sample_with_labels(tmp_path, lambda i, label: "dress")
    cfg = compose_cfg(TINY_PRETRAIN + ["model.conditional=true", f"data.root={root}"])
    _, module, _ = build(cfg)
    assert module.G.c_dim == 0 and module.D.get_config().get("c_dim", 0) == 0
    assert module.fixed_c is None
