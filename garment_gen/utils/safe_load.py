"""Reading and writing torch files safely: atomic writes, loads that never run pickled code.

No Lightning here: networks (``garment_gen.networks``) use it too.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch

from garment_gen.errors import GarmentGenError
from garment_gen.utils.atomic import atomic_path
from garment_gen.utils.oserrors import disk_reason, is_disk_error

__all__ = ["CheckpointFileError", "atomic_torch_save", "safe_torch_load"]


class CheckpointFileError(GarmentGenError):
    """A checkpoint (or export) file is missing, unreadable, unsafe or of another kind."""


def atomic_torch_save(obj: Any, path: str | Path) -> Path:
    """``torch.save`` to a temporary file in the same folder, fsync, then rename over ``path``.

    A full or read-only disk raises :class:`CheckpointFileError` naming the file (the previous
    file, if any, is intact).
    """
    path = Path(path)
    try:
        with atomic_path(path) as tmp:
            torch.save(obj, tmp)
    except (OSError, RuntimeError) as exc:
        if is_disk_error(exc):
            raise CheckpointFileError(f"{path}: cannot write: {disk_reason(exc)}") from None
        raise
    return path


def safe_torch_load(path: str | Path, map_location: Any = "cpu") -> Any:
    """``torch.load(path, weights_only=True)``: tensors and plain containers only, never code.

    Raises:
        CheckpointFileError: missing file, or a file that is damaged or holds anything else
            (the message names the file; nothing in it was executed).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointFileError(f"{path}: file not found")
    try:
        with warnings.catch_warnings():
            # torch warns about the pickle protocol of files it then refuses; the refusal is ours
            warnings.simplefilter("ignore", UserWarning)
            return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for damaged files
        text = str(exc)
        if "Weights only load failed" in text or "Unsupported global" in text:
            reason = "it holds pickled objects other than tensors, refused without running them"
        else:
            reason = f"damaged or not a PyTorch file ({exc.__class__.__name__})"
        raise CheckpointFileError(f"{path}: cannot be loaded safely: {reason}") from None
