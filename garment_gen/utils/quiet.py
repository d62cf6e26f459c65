"""Silence the framework chatter a user would otherwise learn to ignore on every run.

Only messages known to be noise for garment_gen are dropped; every other warning still shows:

* Lightning's tip to install LitLogger (printed on every ``Trainer``);
* "Found N module(s) in eval mode at the start of training": the frozen generator, segmenter,
  LPIPS and ImageNet feature networks are in eval mode on purpose;
* the ``LeafSpec`` deprecation that Lightning itself triggers inside torch's pytree.
"""

from __future__ import annotations

import logging
import warnings

_NOISE = (
    r".*isinstance\(treespec, LeafSpec\)` is deprecated.*",
    r"Found \d+ module\(s\) in eval mode at the start of training.*",
)


class _DropTips(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "litlogger" not in record.getMessage().lower()


def quiet_frameworks() -> None:
    """Install the filters (idempotent)."""
    for pattern in _NOISE:
        warnings.filterwarnings("ignore", message=pattern)
    for name in ("pytorch_lightning.utilities.rank_zero", "lightning_fabric.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropTips) for f in logger.filters):
            logger.addFilter(_DropTips())
