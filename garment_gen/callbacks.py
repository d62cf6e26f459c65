"""Lightning callbacks of our own (everything else comes from Lightning itself)."""

from __future__ import annotations

import logging

import pytorch_lightning as pl
from pytorch_lightning.callbacks import EarlyStopping

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
