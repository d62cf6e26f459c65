"""Lightning callbacks of our own (everything else comes from Lightning itself)."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import EarlyStopping, ModelCheckpoint

log = logging.getLogger(__name__)


class LossThresholdStopping(EarlyStopping):
    """Early stopping that ends training once the monitored validation loss falls below a threshold.

    The threshold is the LightningModule's ``stopping_threshold`` attribute (the
    encoders stage sets it from ``loss.threshold_first`` or ``loss.threshold_second``,
    whichever loss is active), so the number lives only in ``conf/loss``. Training
    continues while the loss is at or above it; ``patience`` checks without
    improvement also stop it (set it large to rely on the threshold alone).
    """

    def __init__(self, monitor: str = "val/objective", patience: int = 1_000_000, **kwargs):
        kwargs.setdefault("mode", "min")
        kwargs.setdefault("check_finite", True)
        kwargs.setdefault("check_on_train_epoch_end", False)  # judge on validation results only
        kwargs.setdefault("verbose", True)
        super().__init__(monitor=monitor, patience=patience, **kwargs)

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        threshold = getattr(pl_module, "stopping_threshold", None)
        self.stopping_threshold = None if threshold is None else float(threshold)
        if self.stopping_threshold is not None:
            log.info("training stops once %s < %g", self.monitor, self.stopping_threshold)


class BatchCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` whose cadence counts batches, not optimizer steps.

    Under manual optimisation (stage ``pretrain``) one batch makes 2 to 4 optimizer steps, so
    Lightning's ``every_n_train_steps`` skips most multiples (it saved steps 4, 8, 24, 28, 52,
    ...). ``every_n_batches`` saves after every n-th batch of the run (the count survives a
    resume); the other arguments are ``ModelCheckpoint``'s (``train_time_interval`` saves every
    so much wall clock, ``save_on_train_epoch_end`` at epoch ends).
    """

    def __init__(self, every_n_batches: int | None = None, **kwargs):
        if kwargs.get("every_n_train_steps"):
            raise ValueError("BatchCheckpoint counts batches: use every_n_batches")
        if every_n_batches is not None and (
            isinstance(every_n_batches, bool) or not isinstance(every_n_batches, int)
        ):
            raise ValueError(f"every_n_batches must be an int or null, got {every_n_batches!r}")
        super().__init__(**kwargs)
        self.every_n_batches = every_n_batches or 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._should_skip_saving_checkpoint(trainer):
            return
        n = self.every_n_batches
        due = n > 0 and (trainer.fit_loop.total_batch_idx + 1) % n == 0
        if self._train_time_interval is not None:
            now = time.monotonic()
            last = self._last_time_checked
            late = last is not None and now - last >= self._train_time_interval.total_seconds()
            if trainer.strategy.broadcast(late):  # every rank decides as rank 0 does
                self._last_time_checked = now
                due = True
        if not due:
            return
        candidates = self._monitor_candidates(trainer)
        # last.ckpt (what a resume needs) is written whether or not the monitored metric exists
        # yet; the top-k snapshot waits for it.
        if self.monitor is None or self.monitor in candidates:
            self._save_topk_checkpoint(trainer, candidates)
        self._save_last_checkpoint(trainer, candidates)

    def _save_topk_checkpoint(self, trainer, monitor_candidates) -> None:
        """The best-so-far snapshot needs its metric; a run that never logs it (``model.realism=
        null`` in pretrain) keeps only ``last.ckpt`` instead of failing at an epoch's end."""
        if self.monitor is not None and self.monitor not in monitor_candidates:
            if not getattr(self, "_said_no_monitor", False):
                log.info("no %s logged: only last.ckpt is kept", self.monitor)
                self._said_no_monitor = True
            return
        super()._save_topk_checkpoint(trainer, monitor_candidates)

    def on_train_end(self, trainer, pl_module) -> None:
        """``last.ckpt`` holds the state training ended with (step limit, time box, threshold),
        not the one of the last multiple of ``every_n_batches``."""
        if self.save_last and not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))


class CpuTimeBudget(pl.Callback):
    """Stop a GAN run after ``minutes`` of this process's CPU time, and probe it on the way.

    CPU time (all threads of the process; use ``data.num_workers=0`` so data loading is
    counted too) is what an A/B on a shared machine can hold equal: wall clock is not, when
    other jobs run beside it. Every ``probe_every`` CPU-minutes (and at the end) the probe
    draws ``n_probe`` images from ``G_ema``, scores them against the validation split with
    :class:`~garment_gen.metrics.RealismMetric` (FD-VGG and KID-VGG: a network the
    discriminator does not look through), saves the sample grid as
    ``probe/cpu<minutes>min.png`` and appends a row to ``probe/probe.csv`` (CPU minutes, wall
    minutes, kimg, fd_vgg, kid_vgg). The probe's own CPU time is not counted against the budget.

    The minutes used so far and the next probe are in the checkpoint: a run resumed with
    ``ckpt_path=`` goes on counting from where it stopped (the CPU time between the last
    checkpoint and the stop is lost, as the training steps of that time are).
    """

    def __init__(
        self,
        minutes: float | None = None,
        probe_every: float | None = 5.0,
        n_probe: int = 256,
        probe_size: int = 64,
        seed: int = 123,
    ):
        super().__init__()
        self.minutes = minutes
        self.probe_every = probe_every
        self.n_probe = int(n_probe)
        self.probe_size = int(probe_size)
        self.seed = int(seed)
        self._start_cpu = 0.0
        self._start_wall = 0.0
        self._excluded = 0.0
        self._used_before = 0.0  # CPU-minutes of the run before it was resumed
        self._wall_before = 0.0
        self._next_probe = probe_every
        self._last_kimg = -1.0  # no second probe of the same generator when training ends
        self._metric = None
        self._reals: torch.Tensor | None = None

    def cpu_minutes(self) -> float:
        """CPU-minutes of training so far (resumes included, probes excluded)."""
        return self._used_before + (time.process_time() - self._start_cpu - self._excluded) / 60

    def wall_minutes(self) -> float:
        return self._wall_before + (time.monotonic() - self._start_wall) / 60

    def state_dict(self) -> dict[str, float | None]:
        return {
            "cpu_min": self.cpu_minutes(),
            "wall_min": self.wall_minutes(),
            "next_probe": self._next_probe,
            "last_kimg": self._last_kimg,
        }

    def load_state_dict(self, state: dict[str, float | None]) -> None:
        self._used_before = float(state["cpu_min"])
        self._wall_before = float(state["wall_min"])
        self._next_probe = state["next_probe"]
        self._last_kimg = float(state.get("last_kimg", -1.0))

    def on_train_start(self, trainer, pl_module) -> None:
        self._start_cpu = time.process_time()
        self._start_wall = time.monotonic()
        self._excluded = 0.0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        used = self.cpu_minutes()
        pl_module.log("train/cpu_min", used, on_step=True, on_epoch=False, batch_size=1)
        if self._next_probe is not None and used >= self._next_probe:
            self.probe(trainer, pl_module, used)
            while self._next_probe <= used:
                self._next_probe += self.probe_every
        if self.minutes is not None and used >= self.minutes:
            pl_module.stop_reason = f"reached the CPU-time budget ({self.minutes:g} CPU-minutes)"
            trainer.should_stop = True

    def on_train_end(self, trainer, pl_module) -> None:
        used = self.cpu_minutes()
        kimg = float(getattr(pl_module, "kimg", 0.0))
        if self.probe_every is not None and kimg != self._last_kimg:
            self.probe(trainer, pl_module, used, log_metrics=False)

    @torch.no_grad()
    def probe(
        self, trainer, pl_module, used: float, log_metrics: bool = True
    ) -> dict[str, float] | None:
        if not trainer.is_global_zero or not hasattr(pl_module, "G_ema"):
            return None
        from garment_gen.metrics import RealismMetric
        from garment_gen.utils.images import grid, save_png

        t0 = time.process_time()
        self._last_kimg = float(getattr(pl_module, "kimg", 0.0))
        if self._metric is None:
            self._metric = RealismMetric("fd_vgg", size=self.probe_size)
            dm = trainer.datamodule
            reals = [b["image"] for b in dm.val_dataloader()]
            self._reals = torch.cat(reals)
        metric = self._metric
        metric.reset()
        metric.update(self._reals, real=True)
        g = torch.Generator().manual_seed(self.seed)
        z = torch.randn(self.n_probe, pl_module.G.z_dim, generator=g)
        fakes = torch.cat([pl_module.generate(c).clamp(-1, 1).cpu() for c in z.split(64)])
        metric.update(fakes, real=False)
        values = {k: float(v) for k, v in metric.compute_all().items()}
        row = {
            "cpu_min": round(used, 3),
            "wall_min": round(self.wall_minutes(), 3),
            "kimg": round(float(getattr(pl_module, "kimg", 0.0)), 3),
            **{k: round(v, 5) for k, v in values.items()},
        }
        out = Path(trainer.default_root_dir) / "probe"
        save_png(grid(fakes[:64], nrow=8), out / f"cpu{row['cpu_min']:08.3f}min.png")
        table = out / "probe.csv"
        new = not table.exists()
        with open(table, "a") as f:
            if new:
                f.write(",".join(row) + "\n")
            f.write(",".join(str(v) for v in row.values()) + "\n")
        for k, v in values.items() if log_metrics else ():
            pl_module.log(f"probe/{k}", v, on_step=True, on_epoch=False, batch_size=1)
        log.info("probe at %.1f CPU-min: %s", used, row)
        self._excluded += time.process_time() - t0
        return row
