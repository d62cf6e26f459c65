"""Realism metrics: Fréchet distance and KID between features of real and generated images.

Two backends, and the name always says which one ran:

* ``fid``: torchmetrics' FrechetInceptionDistance with the standard Inception-v3
  features. Needs ``torch-fidelity`` and the Inception weights (downloaded once on
  a machine with internet).
* ``fd_vgg``: the same Fréchet distance on ImageNet VGG16 features (global average of
  conv5_3 after ReLU, 512-d), using the VGG16 weights we already need for LPIPS, with
  ``kid_vgg`` (the unbiased kernel distance) on the same features. **Not FID**: its values are on another scale and must not be
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


def frechet_distance(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """Fréchet distance between Gaussians fitted to two feature sets ``[N, D]`` and ``[M, D]``.

    ``|mu_r - mu_f|^2 + tr(S_r) + tr(S_f) - 2 tr((S_r S_f)^(1/2))``, the trace of the square
    root taken from the eigenvalues of ``S_r S_f`` (float64). NaN when either set has fewer
    than 2 samples or non-finite features.
    """
    if min(len(real), len(fake)) < 2:  # no covariance from one sample: undefined, not a crash
        return torch.tensor(float("nan"))
    real, fake = real.double(), fake.double()
    mu_r, mu_f = real.mean(0), fake.mean(0)
    cov_r, cov_f = torch.cov(real.T), torch.cov(fake.T)
    prod = cov_r @ cov_f
    if not torch.isfinite(prod).all():  # LAPACK's eigensolver can crash the process on NaN
        return torch.tensor(float("nan"))
    eig = torch.linalg.eigvals(prod)
    tr_sqrt = eig.sqrt().real.sum()
    return ((mu_r - mu_f).square().sum() + cov_r.trace() + cov_f.trace() - 2 * tr_sqrt).float()


def kid(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """Kernel Inception-style distance: unbiased MMD^2 with the cubic polynomial kernel.

    ``k(x, y) = (x . y / D + 1)^3`` on feature sets ``[N, D]`` and ``[M, D]`` (Binkowski et
    al. 2018), all samples at once (no subsets: unbiased at small N, unlike FD).
    """
    x, y = real.double(), fake.double()
    d = x.shape[1]
    kxx = (x @ x.T / d + 1) ** 3
    kyy = (y @ y.T / d + 1) ** 3
    kxy = (x @ y.T / d + 1) ** 3
    n, m = x.shape[0], y.shape[0]
    if n < 2 or m < 2:
        raise ValueError(f"KID needs at least 2 samples of each set, got {n} and {m}")
    sxx = (kxx.sum() - kxx.diagonal().sum()) / (n * (n - 1))
    syy = (kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1))
    return (sxx + syy - 2 * kxy.mean()).float()


def _gather(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` over every DDP rank (unchanged in a single process)."""
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    parts: list[torch.Tensor | None] = [None] * dist.get_world_size()
    dist.all_gather_object(parts, x)
    return torch.cat([p for p in parts if p is not None])


class RealismMetric(nn.Module):
    """Realism of generated images against real ones, on a named backbone.

    ``update(img, real)`` takes float images ``[B, 3, H, W]`` in ``[-1, 1]``; ``compute()``
    returns the Fréchet distance, :meth:`compute_all` every figure by name. ``name`` is
    ``"fid"`` (torchmetrics' Inception FID, when its weights are present) or ``"fd_vgg"``
    (ImageNet VGG16 features, with ``kid_vgg`` beside it). The backbone is not the one a
    projected discriminator looks through (EfficientNet), so the generator cannot game it.
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
            self.features = VGGFeatures(size)
        self._feats: dict[bool, list[torch.Tensor]] = {True: [], False: []}
        log.info("realism metric: %s", self.name)

    def update(self, img: torch.Tensor, real: bool) -> None:
        if self.name == "fid":
            self.fd.update(((img.detach().float() + 1) / 2).clamp(0, 1), real=real)
        else:
            self._feats[bool(real)].append(self.features(img.detach().clamp(-1, 1)).cpu())

    def compute_all(self) -> dict[str, torch.Tensor]:
        """``{"fid": ...}`` or ``{"fd_vgg": ..., "kid_vgg": ...}``."""
        if self.name == "fid":
            return {"fid": self.fd.compute()}
        real, fake = (_gather(torch.cat(self._feats[k])) for k in (True, False))
        if min(len(real), len(fake)) < 2:
            log.warning(
                "realism metrics need at least 2 images of each set, got %d and %d: NaN",
                len(real),
                len(fake),
            )
            nan = torch.tensor(float("nan"))
            return {"fd_vgg": nan, "kid_vgg": nan}
        return {"fd_vgg": frechet_distance(real, fake), "kid_vgg": kid(real, fake)}

    def compute(self) -> torch.Tensor:
        return self.compute_all()[self.name]

    def reset(self) -> None:
        if self.name == "fid":
            self.fd.reset()
        self._feats = {True: [], False: []}
