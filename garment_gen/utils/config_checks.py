"""Type and range checks of the config values users most often set on the command line.

Hydra reads ``data.batch_size=abc`` as the string ``"abc"``; without a check it surfaces as a
traceback from deep inside a library, or only after minutes of set-up. :func:`check_values`
gives one line naming the key, the expected type and the value, before anything is built.
"""

from __future__ import annotations

import math
from typing import Any

from omegaconf import DictConfig, OmegaConf

from garment_gen.errors import ConfigError

# key -> (expected, minimum, may be null). "int" / "number" / "bool" / "int_or_fraction".
TRAIN_SCHEMA: dict[str, tuple[str, float | None, bool]] = {
    "seed": ("int", None, True),
    "data.batch_size": ("int", 1, False),
    "data.val_batch_size": ("int", 1, True),
    "data.num_workers": ("int", 0, False),
    "data.resolution": ("int", 8, True),
    "trainer.max_steps": ("int", -1, False),
    "trainer.max_epochs": ("int", -1, True),
    "trainer.devices": ("int", -1, True),
    "trainer.num_nodes": ("int", 1, False),
    "trainer.log_every_n_steps": ("int", 1, False),
    "trainer.check_val_every_n_epoch": ("int", 1, True),
    "trainer.limit_val_batches": ("int_or_fraction", 0, True),
    "trainer.limit_train_batches": ("int_or_fraction", 0, True),
    "trainer.val_check_interval": ("int_or_fraction", 0, True),
    "model.max_kimg": ("number", 0, True),
    "model.ema_kimg": ("number", 0, True),
    "model.sample_every_n_batches": ("int", 0, True),
    "model.n_samples": ("int", 1, True),
    "callbacks.model_checkpoint.every_n_batches": ("int", 1, True),
}


def _kind_ok(value: Any, kind: str) -> bool:
    if isinstance(value, bool):
        return kind == "bool"
    if kind == "int":
        return isinstance(value, int)
    if kind in ("number", "int_or_fraction"):
        return isinstance(value, (int, float)) and math.isfinite(value)
    if kind == "bool":
        return False
    raise ValueError(kind)


_EXPECTED = {
    "int": "an integer",
    "number": "a number",
    "bool": "true or false",
    "int_or_fraction": "an integer count or a fraction in [0, 1]",
}


def check_values(cfg: DictConfig, schema: dict[str, tuple[str, float | None, bool]]) -> None:
    """Raise :class:`ConfigError` (one line) for the first value of ``schema`` that is wrong.

    Keys absent from ``cfg`` are not checked (a stage without ``model.max_kimg``, say).
    """
    for key, (kind, minimum, nullable) in schema.items():
        node = OmegaConf.select(cfg, key, default="__absent__", throw_on_missing=False)
        if isinstance(node, str) and node == "__absent__":
            continue
        if node is None:
            if nullable:
                continue
            raise ConfigError(f"{key}: expected {_EXPECTED[kind]}, got null")
        if not _kind_ok(node, kind):
            raise ConfigError(f"{key}={node!r}: expected {_EXPECTED[kind]}")
        if minimum is not None and node < minimum:
            raise ConfigError(f"{key}={node!r}: must be >= {minimum:g}")
        if kind == "int_or_fraction" and isinstance(node, float) and node > 1:
            raise ConfigError(
                f"{key}={node!r}: a fraction must be in [0, 1]; give a count as an int"
            )
