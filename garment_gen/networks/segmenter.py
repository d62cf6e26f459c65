"""Garment/background segmentation network (segmentation-models-pytorch).

Plain PyTorch: built by :func:`build_segmenter`, exported to ``segmenter.pt``
(weights + the kwargs that rebuild it, loadable with ``weights_only=True``)
and loaded by :func:`load_segmenter` without Lightning or Hydra.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from garment_gen.errors import GarmentGenError
from garment_gen.utils.atomic import atomic_path

FORMAT = "garment_gen.segmenter/1"


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
    """Write ``segmenter.pt`` atomically (temporary file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": FORMAT,
        "kwargs": model.kwargs,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "extra": extra or {},
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return path


def load_segmenter(path: str | Path, map_location: str | torch.device = "cpu") -> Segmenter:
    """Load a ``segmenter.pt`` written by :func:`export_segmenter`; frozen, in eval mode."""
    path = Path(path)
    if not path.is_file():
        raise GarmentGenError(f"{path}: segmenter checkpoint not found")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001
        raise GarmentGenError(
            f"{path}: not a readable segmenter checkpoint ({exc.__class__.__name__})"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise GarmentGenError(
            f"{path}: not a garment_gen segmenter export (expected format {FORMAT}); "
            "export one with `python -m garment_gen.train stage=segmenter`"
        )
    model = Segmenter(**payload["kwargs"])
    model.load_state_dict(payload["state_dict"])
    model.requires_grad_(False).eval()
    return model.to(map_location)
