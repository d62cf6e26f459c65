"""Training entry point for every stage.

    python -m garment_gen.train stage=pretrain
    python -m garment_gen.train stage=encoders model.generator=PATH/generator.pt loss.w_lpips=0.8
    python -m garment_gen.train -m stage=encoders loss.w_lpips=0.5,1.0     # sweep

:func:`train` is a plain function (tests and sweeps call it); ``main`` only wraps it
with Hydra and turns user mistakes into one-line errors.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from garment_gen import conf_dir
from garment_gen.cli import _user_cause, check_group_choice, group_values, hydra_main, user_errors
from garment_gen.errors import ConfigError
from garment_gen.modules.base import StageModule
from garment_gen.utils.atomic import write_json_atomic
from garment_gen.utils.checkpoint import (
    AtomicCheckpointIO,
    check_resume_checkpoint,
    remove_stale_temporaries,
)
from garment_gen.utils.config_checks import TRAIN_SCHEMA, check_values
from garment_gen.utils.cpu_malloc import keep_freed_memory
from garment_gen.utils.oserrors import check_writable
from garment_gen.utils.quiet import quiet_frameworks
from garment_gen.utils.run_info import write_run_info

log = logging.getLogger("garment_gen.train")


def _instantiate_dict(section: DictConfig | None) -> list[Any]:
    """Instantiate every entry of a ``name: {_target_: ...}`` mapping (callbacks, loggers)."""
    if not section:
        return []
    return [
        hydra.utils.instantiate(v)
        for v in section.values()
        if isinstance(v, DictConfig) and "_target_" in v
    ]


def _float_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    out = {}
    for k, v in metrics.items():
        try:
            out[k] = float(v.item() if isinstance(v, torch.Tensor) else v)
        except (TypeError, ValueError, RuntimeError):
            continue
    return out


def resolve_latest(value: str, log_dir: str | Path, stage: str, filename: str) -> str:
    """``latest`` -> the newest ``<log_dir>/<stage>/runs/*/<filename>``; other values unchanged."""
    if value != "latest":
        return value
    found = sorted(
        Path(log_dir).glob(f"{stage}/runs/*/{filename}"), key=lambda p: p.stat().st_mtime
    )
    if not found:
        raise ConfigError(
            f"no {filename} found under {Path(log_dir) / stage / 'runs'}; "
            f"run `python -m garment_gen.train stage={stage}` first or give the file's path"
        )
    log.info("latest %s: %s", filename, found[-1])
    return str(found[-1])


def _latest(stage: str, filename: str, *, _root_: DictConfig) -> str:
    """OmegaConf resolver ``${latest:STAGE,FILE}``: the newest ``FILE`` of ``STAGE``'s runs."""
    return resolve_latest("latest", _root_.paths.log_dir, stage, filename)


OmegaConf.register_new_resolver("latest", _latest, replace=True)

WANDB_TAG_LIMIT = 64  # characters W&B accepts in one tag


def _wandb_tags(overrides: list[str]) -> list[str]:
    """OmegaConf resolver ``${wandb_tags:...}``: the command-line overrides as W&B tags, each cut
    to the 64 characters W&B allows (a long path would otherwise stop the run)."""
    return [o if len(o) <= WANDB_TAG_LIMIT else o[: WANDB_TAG_LIMIT - 3] + "..." for o in overrides]


OmegaConf.register_new_resolver("wandb_tags", _wandb_tags, replace=True)
# What ``latest`` stands for where a stage needs another stage's export.
LATEST = {
    "model.generator": "${latest:pretrain,generator.pt}",
    "loss.segmenter": "${latest:segmenter,segmenter.pt}",
}


def _resolve_artefacts(cfg: DictConfig) -> None:
    """``model.generator=latest`` / ``loss.segmenter=latest`` -> the ``${latest:...}`` resolver."""
    with open_dict(cfg):
        for key, interpolation in LATEST.items():
            if OmegaConf.select(cfg, key, default=None) == "latest":
                OmegaConf.update(cfg, key, interpolation)
                OmegaConf.update(cfg, key, OmegaConf.select(cfg, key))  # resolve now, once
                log.info("latest %s: %s", key, OmegaConf.select(cfg, key))


def _instantiate(cfg: DictConfig, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate`` that lets our own user errors through unwrapped."""
    try:
        return hydra.utils.instantiate(cfg, **kwargs)
    except Exception as exc:
        cause = _user_cause(exc)
        if cause is not None and cause is not exc:
            raise cause from None
        raise


def check_wandb(cfg: DictConfig) -> None:
    """Fail early, with the two ways out, when wandb would need an account that is not set up."""
    section = cfg.get("logger") or {}
    uses_wandb = any(
        isinstance(v, DictConfig)
        and str(v.get("_target_", "")).endswith("WandbLogger")
        and not v.get("offline", False)
        for v in section.values()
    )
    if not uses_wandb or os.environ.get("WANDB_MODE", "").lower() in (
        "offline",
        "disabled",
        "dryrun",
    ):
        return
    if os.environ.get("WANDB_API_KEY"):
        return
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    if netrc.is_file() and "api.wandb.ai" in netrc.read_text(errors="ignore"):
        return
    raise ConfigError(
        "logger=wandb needs a W&B account: run `wandb login` (or set WANDB_API_KEY), "
        "or log locally with WANDB_MODE=offline (sync later with `wandb sync`)"
    )


def build(cfg: DictConfig) -> tuple[pl.LightningDataModule, pl.LightningModule, pl.Trainer]:
    """Instantiate datamodule, LightningModule and Trainer from a composed config.

    The datamodule comes first: the module is built for the data's resolution,
    passed in code rather than copied between configs.
    """
    _resolve_artefacts(cfg)
    check_wandb(cfg)
    datamodule = _instantiate(cfg.data, _recursive_=False)
    extra: dict[str, Any] = {}
    if "conditional" in cfg.model:  # a stage that can train class-conditionally: the data's classes
        extra["classes"] = check_classes(cfg, datamodule)
    module = _instantiate(
        cfg.model,
        resolution=datamodule.resolution,
        aspect=getattr(datamodule, "aspect", "1:1"),
        loss=cfg.get("loss"),
        _recursive_=False,
        **extra,
    )
    callbacks = _instantiate_dict(cfg.get("callbacks"))
    loggers = _instantiate_dict(cfg.get("logger"))
    if not loggers:  # logger=none: drop callbacks that only feed loggers
        callbacks = [cb for cb in callbacks if not isinstance(cb, pl.callbacks.LearningRateMonitor)]
    trainer = hydra.utils.instantiate(
        cfg.trainer, callbacks=callbacks, logger=loggers or False, plugins=[AtomicCheckpointIO()]
    )
    return datamodule, module, trainer


def check_classes(cfg: DictConfig, datamodule: Any) -> list[str]:
    """The data's class names for ``model.conditional`` (``true``, ``false`` or ``auto``).

    ``true`` on data that is only partly labelled is one :class:`ConfigError` line (an unlabelled
    photo has no class to draw); ``auto`` then trains unconditionally (empty list), saying why.
    Any other value is one line too."""
    mode = cfg.model.get("conditional")
    if mode not in (True, False, "auto"):
        raise ConfigError(f"model.conditional={mode}: expected true, false or auto")
    classes = list(getattr(datamodule, "classes", []))
    unlabeled = int(getattr(datamodule, "unlabeled", 0))
    if mode is False or len(classes) < 2 or not unlabeled:
        return classes
    if mode == "auto":
        log.info(
            "model.conditional=auto: %d photo(s) of %s have no class; training unconditionally",
            unlabeled, datamodule.root,
        )  # fmt: skip
        return []
    raise ConfigError(
        f"model.conditional=true: {unlabeled} photo(s) of data.root={datamodule.root} have no "
        f"class (manifest.csv label; classes are the folders photos are prepared from: "
        f"{', '.join(classes)}); put them in a class folder and prepare again, or set "
        "model.conditional=auto or false"
    )


def tune_cpu_malloc(cfg: DictConfig, trainer: pl.Trainer) -> bool:
    """CPU runs keep freed memory for reuse (``malloc_tune``, see :mod:`garment_gen.utils.cpu_malloc`):
    otherwise every big tensor page-faults in again each step. True when it took effect."""
    if not cfg.get("malloc_tune", True) or not isinstance(
        trainer.accelerator, pl.accelerators.CPUAccelerator
    ):
        return False
    done = keep_freed_memory()
    if done:
        log.info("CPU run: glibc malloc keeps freed memory for reuse (malloc_tune=true)")
    return done


def check_config(cfg: DictConfig) -> None:
    """Everything that can be checked before building anything: required values, types and
    ranges of the common settings, the run folder is writable, and ``ckpt_path`` is a
    checkpoint of this stage that loads safely. Each problem is one :class:`ConfigError` line."""
    missing = sorted(k for k in OmegaConf.missing_keys(cfg) if not k.startswith("hydra"))
    if missing:
        raise ConfigError(
            f"missing required value(s): {', '.join(missing)}; set them on the command line, e.g. {missing[0]}=..."
        )
    if "pipeline" in cfg:
        name = cfg.pipeline.get("name", "?")
        raise ConfigError(
            f"experiment={name} chains every stage: run python -m garment_gen.pipeline experiment={name}"
        )
    check_values(cfg, TRAIN_SCHEMA)
    max_time = OmegaConf.select(cfg, "trainer.max_time")
    if isinstance(max_time, str) and not _is_duration(max_time):
        raise ConfigError(f"trainer.max_time={max_time!r}: expected DD:HH:MM:SS, e.g. 00:02:00:00")
    check_writable(cfg.paths.output_dir, "paths.output_dir")
    ckpt_path = cfg.get("ckpt_path")
    if ckpt_path:
        check_resume_checkpoint(ckpt_path, cfg.stage_name)
        remove_stale_temporaries(Path(ckpt_path).parent)


def _is_duration(text: str) -> bool:
    parts = text.split(":")
    return len(parts) == 4 and all(p.isdigit() for p in parts)


def train(cfg: DictConfig) -> dict[str, float]:
    """Run one stage as configured; returns the final metrics (floats).

    The metric named by ``cfg.monitor`` (the stage's validation loss or score) is
    also returned under the key ``"objective"`` for sweepers.
    """
    check_config(cfg)
    quiet_frameworks()
    if cfg.get("seed") is not None:
        pl.seed_everything(cfg.seed, workers=True)
    output_dir = Path(cfg.paths.output_dir)
    datamodule, module, trainer = build(cfg)
    if not isinstance(module, StageModule):
        raise ConfigError(
            f"model._target_: {type(module).__name__} is not a garment_gen stage module"
        )
    tune_cpu_malloc(cfg, trainer)
    if trainer.is_global_zero:
        info = write_run_info(cfg, output_dir)
        resolved = OmegaConf.to_container(cfg, resolve=True)
        for lg in trainer.loggers:
            lg.log_hyperparams(
                {"config": resolved, "run_info": {k: info[k] for k in ("git_commit", "versions")}}
            )
    ckpt_path = cfg.get("ckpt_path")
    metrics: dict[str, float] = {}
    if cfg.get("validate_first", False):
        # A baseline of the monitored metrics before any training (e.g. FD at kimg 0).
        first = trainer.validate(module, datamodule=datamodule, verbose=False)
        metrics.update(
            {f"initial/{k}": v for k, v in _float_metrics(first[0] if first else {}).items()}
        )
    if cfg.get("train", True):
        t_fit = time.perf_counter()
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
        fit_seconds = time.perf_counter() - t_fit
        metrics.update(_float_metrics(trainer.callback_metrics))
        stop_reason = module.stop_reason or _stop_reason(trainer)
        log.info("training ended: %s", stop_reason)
        metrics_note = {
            "stop_reason": stop_reason,
            # Training loop time (Lightning's timer when max_time is set, else all of fit) and
            # optimizer steps: throughput without the set-up and export around them.
            "train_seconds": round(_train_seconds(trainer, fit_seconds), 3),
            "global_step": int(trainer.global_step),
        }
    else:
        metrics_note = {}
    if cfg.get("export", True):
        if trainer.is_global_zero:
            path = module.export(output_dir)
            if path is not None:
                log.info("exported %s", path)
        trainer.strategy.barrier()
    if cfg.get("test", False):
        trainer.test(module, datamodule=datamodule)
        metrics.update(_float_metrics(trainer.callback_metrics))
    optimized = cfg.get("optimized_metric")
    if optimized and optimized not in metrics and cfg.get("train", True):
        # A sweeper needs the metric even when the run stopped before its first validation
        # (short trials, max_steps below the validation interval): validate the final model.
        log.info("%s was not computed during training; validating the final model", optimized)
        final = trainer.validate(module, datamodule=datamodule, verbose=False)
        metrics.update(_float_metrics(final[0] if final else {}))
        if optimized not in metrics:
            raise ConfigError(
                f"optimized_metric={optimized} was not logged by stage {cfg.stage_name!r}; "
                f"it logs: {', '.join(sorted(k for k in metrics if '/' in k)) or 'nothing'}"
            )
    monitor = optimized or cfg.get("monitor")
    if monitor and monitor in metrics:
        metrics["objective"] = metrics[monitor]
    if trainer.is_global_zero:
        write_json_atomic(output_dir / "metrics.json", {**metrics, **metrics_note})
    return metrics


def _train_seconds(trainer: pl.Trainer, fallback: float) -> float:
    for cb in trainer.callbacks:
        if isinstance(cb, pl.callbacks.Timer) and cb.time_elapsed("train") > 0:
            return float(cb.time_elapsed("train"))
    return fallback


def _stop_reason(trainer: pl.Trainer) -> str:
    for cb in trainer.callbacks:
        if (
            isinstance(cb, pl.callbacks.Timer)
            and cb.time_remaining() is not None
            and cb.time_remaining() <= 0
        ):
            return f"reached the time limit (trainer.max_time, {cb.time_elapsed():.0f} s)"
    for cb in trainer.callbacks:
        reason = getattr(cb, "stopping_reason_message", None)
        if reason:
            return f"early stopping: {reason}"
    if trainer.max_steps and trainer.max_steps > 0 and trainer.global_step >= trainer.max_steps:
        return f"reached max_steps={trainer.max_steps}"
    if trainer.interrupted:
        return "interrupted"
    return f"finished after epoch {trainer.current_epoch}"


def _objective(metrics: dict[str, float]) -> float | None:
    value = metrics.get("objective")
    return None if value is None or math.isnan(value) else value


def check_run_folder(argv: list[str], conf: Path) -> None:
    """Hydra makes the run folder before our code runs; a folder that cannot be made would end
    in Hydra's traceback. Compose the config first and check that its nearest existing folder
    is a writable folder (one ``error:`` line and exit 2 otherwise)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    if any(a.startswith("-") for a in argv):  # --help, --cfg, -m: leave them to Hydra
        return
    try:
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
            cfg = compose("config", overrides=argv, return_hydra_config=True)
        run_dir = Path(str(OmegaConf.select(cfg, "hydra.run.dir")))
    except Exception:  # noqa: BLE001 - any composition problem is reported by Hydra itself
        return
    finally:
        GlobalHydra.instance().clear()
    folder = run_dir
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    problem = None
    if not folder.is_dir():
        problem = f"{folder} is a file, not a folder"
    elif not os.access(folder, os.W_OK | os.X_OK):
        problem = f"{folder} is not writable"
    if problem:
        print(f"error: run folder {run_dir}: cannot be created: {problem}", file=sys.stderr)
        raise SystemExit(2)


def check_gan_stage(argv: list[str]) -> None:
    """``gan=`` chooses stage=pretrain's discriminator: on another stage it is one clear line
    (Hydra would say the override has no match and suggest ``+gan=``, which breaks the stage)."""
    gan = group_values(argv, "gan")
    items = {i.strip() for v in group_values(argv, "stage") for i in v.split(",")}
    if gan and items and items != {"pretrain"}:
        other = ", ".join(sorted(items - {"pretrain"}))
        print(
            f"error: gan={gan[0]} chooses stage=pretrain's discriminator; stage={other} has none "
            "(drop it, or run stage=pretrain)",
            file=sys.stderr,
        )
        raise SystemExit(2)


def main() -> None:
    """``python -m garment_gen.train stage=...``: validate the stage, compose, train."""
    conf = conf_dir()
    argv = sys.argv[1:]
    if not any(
        a in ("-h", "--help", "--hydra-help", "--info", "--cfg", "-c") or a.startswith("--info")
        for a in argv
    ):
        check_group_choice(argv, conf, "stage", required=True)
    for group in (
        "trainer",
        "logger",
        "data",
        "debug",
        "experiment",
        "cluster",
        "hparams_search",
        "gan",
    ):
        check_group_choice(argv, conf, group, required=False)
    check_gan_stage(argv)

    check_run_folder(argv, conf)

    @user_errors
    def _app(cfg: DictConfig) -> float | None:
        return _objective(train(cfg))

    hydra_main(conf, "config", _app)


if __name__ == "__main__":
    main()
