"""Lightning callbacks of our own (everything else comes from Lightning itself)."""

from __future__ import annotations

import logging
import time

import pytorch_lightning as pl
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
