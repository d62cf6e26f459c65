"""Garment/background segmentation network (segmentation-models-pytorch).

Plain PyTorch: exported to ``segmenter.pt`` and loaded by :func:`load_segmenter` with the one
save contract of :mod:`garment_gen.networks.serialization`, without Lightning or Hydra.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class Segmenter(nn.Module):
    """Binary garment segmenter.

    ``forward(img)`` takes images float ``[-1, 1]`` ``[B, 3, H, W]`` (H, W multiples
    of 32 for most encoders) and returns logits ``[B, 1, H, W]``; garment > 0.
    """

    def __init__(
        self,
        arch: str = "Unet",
        encoder_name: str = "resnet18",
        encoder_weights: str | None = None,
        encoder_depth: int = 5,
        decoder_channels: list[int] | tuple[int, ...] = (256, 128, 64, 32, 16),
        resolution: int = 64,
    ):
        super().__init__()
        import segmentation_models_pytorch as smp

        self.kwargs: dict[str, Any] = dict(
            arch=arch,
            encoder_name=encoder_name,
            encoder_weights=None,  # exported weights already hold whatever was loaded
            encoder_depth=encoder_depth,
            decoder_channels=list(decoder_channels),
            resolution=resolution,
        )
        self.resolution = resolution
        self.net = smp.create_model(
            arch,
            encoder_name=encoder_name,
            encoder_weights=encoder_weights,
            encoder_depth=encoder_depth,
            decoder_channels=list(decoder_channels),
            in_channels=3,
            classes=1,
        )

    def get_config(self) -> dict[str, Any]:
        """Constructor kwargs that rebuild this segmenter (plain values)."""
        return dict(self.kwargs)

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        h, w = img.shape[-2:]
        multiple = 2 ** self.kwargs["encoder_depth"]
        ph, pw = (-h) % multiple, (-w) % multiple
        if ph or pw:
            img = F.pad(img, (0, pw, 0, ph), mode="replicate")
        logits = self.net(img)
        return logits[..., :h, :w]

    @torch.no_grad()
    def predict_mask(self, image: np.ndarray, threshold: float = 0.5) -> np.ndarray:
        """Segment one ``uint8`` RGB photo ``[H, W, 3]``; returns ``uint8`` ``{0, 255}`` ``[H, W]``."""
        device = next(self.parameters()).device
        h, w = image.shape[:2]
        x = (
            torch.from_numpy(np.array(image, copy=True))
            .permute(2, 0, 1)[None]
            .float()
            .div(127.5)
            .sub(1)
            .to(device)
        )
        size = self.resolution
        x_small = F.interpolate(
            x, size=(size, size), mode="bilinear", antialias=True, align_corners=False
        )
        prob = torch.sigmoid(self(x_small))
        prob = F.interpolate(prob, size=(h, w), mode="bilinear", align_corners=False)
        return ((prob[0, 0] > threshold).to(torch.uint8) * 255).cpu().numpy()


def export_segmenter(model: Segmenter, path: str | Path, extra: dict | None = None) -> Path:
    """Write ``segmenter.pt`` with the one save contract (``extra`` goes to its meta)."""
    from garment_gen.networks.serialization import save_model

    return save_model(model, path, meta=extra)


def load_segmenter(path: str | Path, map_location: str | torch.device = "cpu") -> Segmenter:
    """Load a ``segmenter.pt`` (any format version); frozen, in eval mode."""
    from garment_gen.networks.serialization import load_model

    return load_model(
        path,
        "segmenter",
        map_location,
        hint="export one with `python -m garment_gen.train stage=segmenter`",
    )[0]
