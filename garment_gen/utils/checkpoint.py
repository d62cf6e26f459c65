"""Checkpoint files: atomic writes, loads that never run pickled code, and up-front checks.

* :class:`AtomicCheckpointIO` (Lightning's checkpoint IO): every ``.ckpt`` is written to a
  temporary file beside it and renamed, and is always read with ``torch.load(weights_only=True)``
  (explicitly, so ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1`` cannot turn a resume into code
  execution).
* :func:`check_resume_checkpoint`: what ``ckpt_path=`` is given is checked before any training
  (exists, loads safely, is a Lightning checkpoint of this stage), with one line naming the
  file and what it is.
* :func:`remove_stale_temporaries`: temporary files left by a writer that was killed.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from pytorch_lightning.plugins.io import TorchCheckpointIO

from garment_gen.utils.atomic import remove_stale_temporaries
from garment_gen.utils.safe_load import CheckpointFileError, atomic_torch_save, safe_torch_load

__all__ = [
    "AtomicCheckpointIO",
    "CheckpointFileError",
    "atomic_torch_save",
    "check_resume_checkpoint",
    "remove_stale_temporaries",
    "safe_torch_load",
]

log = logging.getLogger(__name__)


def checkpoint_stage(ckpt: dict[str, Any]) -> str | None:
    """The stage a Lightning checkpoint of ours was written by (also for files before the stage
    was recorded, from the keys of its state)."""
    stage = (ckpt.get("garment_gen") or {}).get("stage")
    if stage:
        return str(stage)
    keys = list((ckpt.get("state_dict") or {}).keys())
    if any(k.startswith("G_ema.") for k in keys):
        return "pretrain"
    if any(k.startswith("encoders.") for k in keys):
        return "encoders"
    if any(k.startswith("net.") for k in keys):
        return "segmenter"
    return None


def check_resume_checkpoint(path: str | Path, stage: str) -> dict[str, Any]:
    """Check a ``ckpt_path=`` file before training: exists, loads safely, is this stage's.

    Returns the loaded checkpoint. Raises :class:`CheckpointFileError` with one line naming
    the file and what it is (an export such as ``generator.pt``, another stage's checkpoint, a
    damaged file).
    """
    ckpt = safe_torch_load(path)
    if not isinstance(ckpt, dict):
        raise CheckpointFileError(f"ckpt_path={path}: not a Lightning checkpoint")
    fmt = ckpt.get("format") or ckpt.get("kind")
    if fmt:
        raise CheckpointFileError(
            f"ckpt_path={path}: this is an exported model ({fmt}), not a training checkpoint; "
            "resume from <run>/checkpoints/last.ckpt"
            + (
                ", or fit the encoders on it with model.generator=PATH"
                if "generator" in str(fmt)
                else ""
            )
        )
    if "state_dict" not in ckpt or "pytorch-lightning_version" not in ckpt:
        raise CheckpointFileError(f"ckpt_path={path}: not a Lightning checkpoint")
    found = checkpoint_stage(ckpt)
    if found != stage:
        raise CheckpointFileError(
            f"ckpt_path={path}: a checkpoint of stage {found or 'unknown'}, "
            f"not of stage {stage}; resume it with stage={found}"
            if found
            else f"ckpt_path={path}: not a garment_gen checkpoint of stage {stage}"
        )
    return ckpt


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoint IO: atomic writes, ``weights_only=True`` reads."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None
    ) -> None:
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO does not take storage_options")
        atomic_torch_save(checkpoint, path)

    def load_checkpoint(
        self, path: str | Path, map_location: Any = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        return safe_torch_load(path, map_location=map_location or "cpu")

    def remove_checkpoint(self, path: str | Path) -> None:
        if os.path.exists(path):
            super().remove_checkpoint(path)
