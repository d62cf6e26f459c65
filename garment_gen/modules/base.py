"""What every stage's LightningModule shares, and what ``train()`` may ask of it.

A stage module declares:

* ``stage_name``: the stage it trains (``pretrain``, ``segmenter``, ``encoders``); written into
  every checkpoint so ``ckpt_path=`` can refuse another stage's file up front;
* ``frozen_prefixes``: submodules rebuilt from files or packages (a frozen generator, the LPIPS
  and segmenter networks of a loss, the realism metric's VGG): they are left out of the
  checkpoints, and a checkpoint that still holds them (older files) loads anyway;
* ``stop_reason``: set when the module itself ends training (``max_kimg``), else None;
* ``stopping_threshold``: the monitored loss below which training stops, or None;
* :meth:`export`: write the stage's portable artefact into the run folder.

Checkpoints also carry every RNG state, restored on resume.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf

from garment_gen.utils.rng import capture_rng, restore_rng

CHECKPOINT_KEY = "garment_gen"


def plain(cfg: Any) -> Any:
    """A DictConfig as plain Python containers (resolved); anything else unchanged."""
    return OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg


class StageModule(pl.LightningModule):
    """Base of the stage LightningModules (see the module docstring)."""

    stage_name: ClassVar[str] = ""
    frozen_prefixes: ClassVar[tuple[str, ...]] = ()

    def __init__(self) -> None:
        super().__init__()
        self.stop_reason: str | None = None
        self.stopping_threshold: float | None = None

    # ------------------------------------------------------------------ what train() calls

    def export(self, output_dir: str | Path) -> Path | None:
        """Write the stage's artefact into ``output_dir``; returns its path (None: nothing)."""
        return None

    # ------------------------------------------------------------------ checkpoints

    def _is_frozen_key(self, key: str) -> bool:
        return key.startswith(self.frozen_prefixes) if self.frozen_prefixes else False

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        sd = super().state_dict(*args, **kwargs)
        for key in [k for k in sd if self._is_frozen_key(k)]:
            del sd[key]
        return sd

    def load_state_dict(self, state_dict: Any, strict: bool = True, assign: bool = False):
        # Frozen parts keep what they were built with; the file's copy (if any) is ignored.
        merged = {k: v for k, v in super().state_dict().items() if self._is_frozen_key(k)}
        merged.update({k: v for k, v in state_dict.items() if not self._is_frozen_key(k)})
        return super().load_state_dict(merged, strict=strict, assign=assign)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[CHECKPOINT_KEY] = {
            "stage": self.stage_name,
            "rng": capture_rng(),
            **self.checkpoint_extra(),
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        extra = checkpoint.get(CHECKPOINT_KEY, {})
        if "rng" in extra:
            restore_rng(extra["rng"])

    def checkpoint_extra(self) -> dict[str, Any]:
        """Plain values to record in each checkpoint beside the stage name (e.g. kimg)."""
        return {}
