"""Image grids: tensors in ``[-1, 1]`` to PNG files and logger panels."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torchvision.utils import make_grid

from garment_gen.utils.atomic import atomic_path


def to_uint8(img: torch.Tensor) -> np.ndarray:
    """Float ``[3, H, W]`` or ``[1, H, W]`` in ``[-1, 1]`` -> ``uint8`` ``[H, W, 3]``."""
    img = img.detach().float().cpu()
    if img.shape[0] == 1:
        img = img.expand(3, -1, -1)
    return img.add(1).mul(127.5).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()


def grid(images: torch.Tensor, nrow: int = 8, padding: int = 2) -> np.ndarray:
    """Images ``[N, C, H, W]`` in ``[-1, 1]`` -> one ``uint8`` ``[H', W', 3]`` grid."""
    g = make_grid(
        images.detach().float().cpu().clamp(-1, 1), nrow=nrow, padding=padding, pad_value=1.0
    )
    return to_uint8(g)


def save_png(arr: np.ndarray, path: str | Path) -> Path:
    """Write ``uint8`` image atomically (temporary file + rename)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        Image.fromarray(arr).save(tmp, format="PNG")
    return path


def log_image(
    loggers: list[Any], key: str, arr: np.ndarray, step: int, caption: str | None = None
) -> None:
    """Send one ``uint8`` image to every logger that can show images (wandb, TensorBoard)."""
    for lg in loggers:
        if hasattr(lg, "log_image"):  # WandbLogger
            lg.log_image(key=key, images=[arr], step=step, caption=[caption] if caption else None)
        elif hasattr(getattr(lg, "experiment", None), "add_image"):  # TensorBoard
            lg.experiment.add_image(key, arr, step, dataformats="HWC")
