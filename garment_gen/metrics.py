"""Realism metric: Fréchet distance between feature statistics of real and generated images.

Two backends, and the name always says which one ran:

* ``fid``: torchmetrics' FrechetInceptionDistance with the standard Inception-v3
  features. Needs ``torch-fidelity`` and the Inception weights (downloaded once on
  a machine with internet).
* ``fd_vgg``: the same Fréchet distance on ImageNet VGG16 features (global
  average of conv5_3 after ReLU, 512-d), using the VGG16 weights we already need
  for LPIPS. **Not FID**: its values are on another scale and must not be
  compared with published FIDs.

``backend="auto"`` tries ``fid`` and falls back to ``fd_vgg`` with a warning.
"""

from __future__ import annotations

import logging
import warnings

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.image.fid import FrechetInceptionDistance

log = logging.getLogger(__name__)

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


class VGGFeatures(nn.Module):
    """ImageNet VGG16 conv trunk -> 512-d globally pooled conv5_3 features.

    Input: images float ``[B, 3, H, W]`` in ``[-1, 1]`` (or ``uint8`` in ``[0, 255]``);
    resized to ``size`` x ``size``. Output: ``[B, 512]`` float64-friendly features.
    Frozen and always in eval mode.
    """

    def __init__(self, size: int = 128):
        super().__init__()
        from torchvision.models import vgg16

        from garment_gen.losses.perceptual import load_backbone_state

        trunk = vgg16(weights=None).features
        state = {k.removeprefix("features."): v for k, v in load_backbone_state("vgg").items()}
        trunk.load_state_dict(state)
        self.trunk = trunk[:30]  # through conv5_3 + ReLU
        self.size = size
        self.num_features = 512
        self.register_buffer("mean", torch.tensor(_IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(_IMAGENET_STD).view(1, 3, 1, 1))
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> VGGFeatures:
        return super().train(False)

    @torch.no_grad()
    def forward(self, img: torch.Tensor) -> torch.Tensor:
        x = img.float() / 255.0 if img.dtype == torch.uint8 else (img.float() + 1) / 2
        x = F.interpolate(
            x, size=(self.size, self.size), mode="bilinear", antialias=True, align_corners=False
        )
        x = (x - self.mean) / self.std
        return self.trunk(x).mean(dim=(2, 3))


def _inception_available() -> bool:
    try:
        FrechetInceptionDistance(feature=2048)
        return True
    except Exception as exc:  # noqa: BLE001 - missing torch-fidelity, no weights, no network
        log.debug("Inception FID unavailable: %s", exc)
        return False


class RealismMetric(nn.Module):
    """Fréchet distance accumulator with a named backend.

    ``update(img, real)`` takes float images ``[B, 3, H, W]`` in ``[-1, 1]``;
    ``compute()`` returns the distance. ``name`` is ``"fid"`` or ``"fd_vgg"``.
    """

    def __init__(self, backend: str = "auto", size: int = 128):
        super().__init__()
        if backend not in ("auto", "fid", "fd_vgg"):
            raise ValueError(f"realism backend must be auto, fid or fd_vgg, got {backend!r}")
        if backend == "auto":
            backend = "fid" if _inception_available() else "fd_vgg"
            if backend == "fd_vgg":
                warnings.warn(
                    "Inception weights for FID are not available here; reporting FD-VGG "
                    "(Fréchet distance on VGG16 features), which is not comparable to FID.",
                    stacklevel=2,
                )
        self.name = backend
        if backend == "fid":
            self.fd = FrechetInceptionDistance(
                feature=2048, normalize=True, reset_real_features=True
            )
        else:
            self.fd = FrechetInceptionDistance(
                feature=VGGFeatures(size), normalize=True, reset_real_features=True
            )
        log.info("realism metric: %s", self.name)

    def update(self, img: torch.Tensor, real: bool) -> None:
        x = ((img.detach().float() + 1) / 2).clamp(0, 1)
        if self.name == "fd_vgg":
            # Our VGG module takes [-1, 1] floats; FrechetInceptionDistance passes images through.
            x = x * 2 - 1
        self.fd.update(x, real=real)

    def compute(self) -> torch.Tensor:
        return self.fd.compute()

    def reset(self) -> None:
        self.fd.reset()
