"""Run training stages in-process under a wall-clock time box (``make demo``, the reference model).

:func:`run_stage` composes a stage's config like ``python -m garment_gen.train`` would, with
``trainer.max_time`` set to the stage's box, and runs it. :class:`TimeBudget` splits one total
budget over several stages by fractions, computed from the time actually left when each stage
starts, so a stage that overran (setup, export and validation lie outside Lightning's timer)
shortens the later ones instead of pushing the whole run past its limit.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from garment_gen import conf_dir

log = logging.getLogger("garment_gen.timebox")


def hms(seconds: float) -> str:
    """Seconds -> Lightning's ``DD:HH:MM:SS`` ``max_time`` string (at least one second)."""
    seconds = max(1, int(seconds))
    return f"00:{seconds // 3600:02d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def compose_stage(
    stage: str, overrides: list[str], log_dir: Path, run_dir: Path | None = None
) -> DictConfig:
    """The training config of ``stage`` with ``overrides``, as the command line would compose it.

    With ``run_dir`` Hydra's runtime folder is set to it (what :func:`run_stage` needs to train);
    without, nothing global is set and ``paths.output_dir`` stays unresolved (enough to read
    the model, data and trainer settings).
    """
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
            cfg = compose(
                "config",
                overrides=[f"stage={stage}", f"paths.log_dir={log_dir}", *overrides],
                return_hydra_config=run_dir is not None,
            )
    finally:
        GlobalHydra.instance().clear()
    if run_dir is not None:
        with open_dict(cfg):
            cfg.hydra.runtime.output_dir = str(run_dir)
            cfg.hydra.job.num = 0
        HydraConfig.instance().set_config(cfg)
        with open_dict(cfg):
            del cfg["hydra"]
    return cfg


def run_stage(stage: str, overrides: list[str], log_dir: Path, seconds: float) -> Path:
    """Compose and run one training stage like the CLI would; returns its run folder.

    ``seconds`` becomes ``trainer.max_time``; the run folder is
    ``<log_dir>/<stage>/runs/<date>/`` with the stage's export and ``metrics.json``.
    """
    from garment_gen.train import train

    run_dir = log_dir / stage / "runs" / time.strftime("%Y-%m-%d_%H-%M-%S")
    cfg = compose_stage(stage, [f"trainer.max_time={hms(seconds)}", *overrides], log_dir, run_dir)
    t0 = time.time()
    log.info("== stage %s (time box %.0f s)", stage, seconds)
    metrics = train(cfg)
    log.info(
        "== stage %s done in %.0f s: %s",
        stage,
        time.time() - t0,
        ", ".join(f"{k}={v:.4g}" for k, v in metrics.items() if k.startswith("val/")),
    )
    return run_dir


class TimeBudget:
    """Split ``seconds`` of wall clock over named stages by fractions of what is left.

    ``fractions`` maps each stage (in run order) to its share of the whole budget; whatever
    they leave below 1 is the reserve for the work after the last stage (evaluation, export).
    When a stage starts, its box is the time left, less the overhead expected for every stage
    still to run, times its share of the fractions still to come (reserve included). The
    expected overhead is the largest measured so far: a stage's wall time beyond its box
    (config, data set-up, export, the last step finishing).
    """

    def __init__(self, seconds: float, fractions: dict[str, float], min_box: float = 1.0):
        total = sum(fractions.values())
        if not fractions or any(f <= 0 for f in fractions.values()) or total > 1 + 1e-9:
            raise ValueError(
                f"stage fractions must be positive and sum to at most 1, got {fractions}"
            )
        self.seconds = float(seconds)
        self.fractions = dict(fractions)
        self.reserve = max(0.0, 1.0 - total)
        self.min_box = min_box
        self.start = time.monotonic()
        self.overhead = 0.0
        self._todo = list(fractions)

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def left(self) -> float:
        return self.seconds - self.elapsed()

    def box(self, stage: str) -> float:
        """The time box of ``stage``, which must be the next one not yet run."""
        if not self._todo or self._todo[0] != stage:
            raise ValueError(f"stage {stage!r} is not the next one of {self._todo}")
        share = self.fractions[stage] / (sum(self.fractions[s] for s in self._todo) + self.reserve)
        return max(self.min_box, (self.left() - self.overhead * len(self._todo)) * share)

    def done(self, stage: str, box: float, wall: float) -> None:
        """Record that ``stage`` took ``wall`` seconds for a box of ``box``."""
        self._todo.remove(stage)
        self.overhead = max(self.overhead, wall - box)
