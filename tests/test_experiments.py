"""Sweeps, cluster and search configs, reproducibility, offline wandb logging."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import compose_config

TINY = [
    "stage=pretrain",
    "gan=stylegan2",
    "model=stylegan2_tiny",
    "debug=fast",
    "model.realism=null",
    "trainer.enable_model_summary=false",
]


def test_optuna_search_composes(tmp_path):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from garment_gen import conf_dir

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        cfg = compose(
            "config",
            overrides=["stage=encoders", "model.generator=x.pt", "hparams_search=encoders_optuna"],
            return_hydra_config=True,
        )
    GlobalHydra.instance().clear()
    assert cfg.hydra.sweeper._target_.endswith("OptunaSweeper")
    assert cfg.optimized_metric == "val/lpips"
    assert set(cfg.hydra.sweeper.params) == {"loss.w_l2", "loss.w_lpips", "loss.threshold_first"}


def test_pretrain_defaults_to_the_projected_discriminator_and_stylegan2_stays_selectable(tmp_path):
    """The discriminator that wins the equal-CPU A/B is stage=pretrain's default; gan=stylegan2
    swaps D, augmentation and loss back as one choice, and the other stages have no gan group."""
    default = compose_config(["stage=pretrain"], tmp_path / "a", tmp_path)
    assert default.model.discriminator._target_.endswith("ProjectedDiscriminator")
    assert default.loss.r1_gamma == 0 and default.loss.reuse_fakes is True
    sg2 = compose_config(["stage=pretrain", "gan=stylegan2"], tmp_path / "b", tmp_path)
    assert sg2.model.discriminator._target_.endswith("stylegan2.Discriminator")
    assert sg2.loss.r1_gamma > 0 and sg2.model.augment != default.model.augment
    enc = compose_config(["stage=encoders"], tmp_path / "c", tmp_path)
    assert "discriminator" not in enc.model


def test_slurm_cluster_composes_and_trainer_follows_launcher(tmp_path):
    cfg = compose_config(
        [
            "stage=pretrain",
            "cluster=slurm",
            "trainer=ddp",
            "hydra.launcher.nodes=2",
            "hydra.launcher.gpus_per_node=4",
        ],
        tmp_path / "run",
        tmp_path,
    )
    from hydra.core.hydra_config import HydraConfig

    launcher = HydraConfig.get().launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert cfg.trainer.num_nodes == 2 and cfg.trainer.devices == 4
    assert launcher.tasks_per_node == 4


def test_multirun_sweep_runs_every_combination(tmp_path):
    cmd = [
        sys.executable,
        "-m",
        "garment_gen.train",
        "-m",
        *TINY,
        f"paths.log_dir={tmp_path}",
        "data.batch_size=4",
        "loss.r1_gamma=0.05,0.2",
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    jobs = sorted((tmp_path / "pretrain" / "multiruns").glob("*/*/metrics.json"))
    assert len(jobs) == 2
    gammas = []
    for job in jobs:
        cfg_text = (job.parent / "config_resolved.yaml").read_text()
        gammas.append(
            [ln for ln in cfg_text.splitlines() if "r1_gamma" in ln][0].split(":")[1].strip()
        )
        assert json.loads(job.read_text())["stop_reason"].startswith("reached max_steps")
    assert sorted(gammas) == ["0.05", "0.2"]


def first_losses(run: Path, key: str = "train/d_loss") -> list[float]:
    with open(run / "csv" / "metrics.csv") as f:
        return [float(r[key]) for r in csv.DictReader(f) if r.get(key)]


def test_same_seed_same_first_losses(tmp_path):
    from garment_gen.train import train

    runs = []
    for name in ("a", "b"):
        cfg = compose_config(TINY + ["data.batch_size=4", "seed=7"], tmp_path / name, tmp_path)
        train(cfg)
        runs.append(first_losses(tmp_path / name))
    assert runs[0] and runs[0] == runs[1]
    info = json.loads((tmp_path / "a" / "run_info.json").read_text())
    assert info["seed"] == 7 and info["versions"]["torch"] and "git_commit" in info


def test_wandb_offline_run_holds_keys_and_images(tmp_path, monkeypatch):
    from garment_gen.train import train

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    cfg = compose_config(
        TINY + ["logger=wandb", "data.batch_size=4", "model.sample_every_n_batches=1"],
        tmp_path / "run",
        tmp_path,
    )
    train(cfg)
    import wandb

    wandb.finish()
    runs = list((tmp_path / "run").rglob("offline-run-*")) + list(tmp_path.rglob("offline-run-*"))
    assert runs, os.listdir(tmp_path / "run")
    run = runs[0]
    # wandb's offline run file is a binary log of protobuf records; logged keys and the
    # config are stored as plain UTF-8 strings in it, images as files under media/.
    data = next(run.glob("run-*.wandb")).read_bytes()
    for key in (
        b"train/d_loss",
        b"train/g_loss",
        b"train/kimg",
        b"r1_gamma",
        b"stage_name",
        b"git_commit",
    ):
        assert key in data, key
    assert list(run.rglob("media/images/**/*.png"))  # the fixed-latent sample grid
    # the overrides became tags, the long path ones cut to W&B's 64 characters
    from garment_gen.train import _wandb_tags

    tags = _wandb_tags(
        list(cfg.hydra.overrides.task) if "hydra" in cfg else [f"paths.log_dir={tmp_path}" * 3]
    )
    assert tags and all(len(t) <= 64 for t in tags) and any(t.endswith("...") for t in tags)


def test_wandb_without_key_or_offline_says_both_ways_out(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB")}
    env["HOME"] = str(tmp_path)  # no ~/.netrc with a key
    env["NETRC"] = str(tmp_path / "none")
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "garment_gen.train",
            *TINY,
            "logger=wandb",
            f"paths.log_dir={tmp_path}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
        env=env,
    )
    assert res.returncode == 2
    err = res.stderr.strip().splitlines()[-1]
    assert "wandb login" in err and "WANDB_MODE=offline" in err


def test_optuna_search_runs_trials_and_reports_the_best(tmp_path, tiny_generator):
    """hparams_search=encoders_optuna runs for real: each trial trains, returns val/lpips,
    and the sweeper's result names the best trial's value."""
    import yaml

    from tests.conftest import TINY_ENCODERS

    cmd = [
        sys.executable,
        "-m",
        "garment_gen.train",
        "stage=encoders",
        "hparams_search=encoders_optuna",
        "hydra.sweeper.n_trials=3",
        "hydra.sweeper.sampler.n_startup_trials=2",
        *TINY_ENCODERS,
        f"model.generator={tiny_generator}",
        "trainer.max_steps=2",
        "trainer.limit_val_batches=1",
        f"paths.log_dir={tmp_path}",
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    sweep_dirs = list((tmp_path / "encoders" / "multiruns").glob("*"))
    assert len(sweep_dirs) == 1
    jobs = sorted(sweep_dirs[0].glob("*/metrics.json"))
    assert len(jobs) == 3
    values, w_lpips = [], set()
    for job in jobs:
        metrics = json.loads(job.read_text())
        values.append(metrics["val/lpips"])
        cfg_text = (job.parent / "config_resolved.yaml").read_text()
        w_lpips.add([ln for ln in cfg_text.splitlines() if "w_lpips:" in ln][0])
    assert len(w_lpips) == 3  # the sampler proposed different weights
    result = yaml.safe_load((sweep_dirs[0] / "optimization_results.yaml").read_text())
    assert result["best_value"] == min(values)
    assert set(result["best_params"]) == {"loss.w_l2", "loss.w_lpips", "loss.threshold_first"}


def test_unknown_optimized_metric_is_a_clear_error(tmp_path):
    import pytest

    from garment_gen.errors import ConfigError
    from garment_gen.train import train

    cfg = compose_config(
        TINY + ["data.batch_size=4", "optimized_metric=val/nope"], tmp_path / "run", tmp_path
    )
    with pytest.raises(ConfigError, match="optimized_metric=val/nope was not logged"):
        train(cfg)
