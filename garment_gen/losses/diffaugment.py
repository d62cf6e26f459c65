"""DiffAugment (Zhao et al. 2020, "Differentiable Augmentation for Data-Efficient GAN Training").

Written for this project from the paper's description. The same random, differentiable
transforms go before the discriminator on reals and fakes alike (each call draws its own
parameters per sample, from the same distribution), so D never sees un-augmented images and
gradients reach G through them. Every transform always fires (no probability, unlike ADA's
:mod:`garment_gen.losses.augment`):

* ``color``: brightness ``+ U(-0.5, 0.5)``; saturation: the deviation from the per-pixel channel
  mean times ``U(0, 2)``; contrast: the deviation from the image mean times ``U(0.5, 1.5)``.
* ``translation``: integer shift of up to ``translation_ratio`` (1/8) of the side in each axis,
  zero padding.
* ``cutout``: a square of ``cutout_ratio`` (1/2) of the side, centred anywhere in the image
  (clipped at the border), set to zero.

Images are float NCHW in ``[-1, 1]`` (colour needs 3 channels). Randomness comes from the torch
RNG of the images' device, or from ``generator``. Pure elementwise / gather ops: fast on CPU.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["DEFAULT_POLICY", "DiffAugment", "diff_augment", "parse_policy"]

DEFAULT_POLICY = "color,translation,cutout"
_TRANSFORMS = ("color", "translation", "cutout")


def parse_policy(policy: str) -> tuple[str, ...]:
    """``"color,translation,cutout"`` -> the transform names in order (empty string: none).

    Raises:
        ValueError: an unknown transform name.
    """
    names = tuple(p.strip() for p in policy.split(",") if p.strip())
    unknown = [n for n in names if n not in _TRANSFORMS]
    if unknown:
        raise ValueError(f"unknown DiffAugment transform(s) {unknown}; choose from {_TRANSFORMS}")
    return names


def _uniform(x: torch.Tensor, lo: float, hi: float, generator: torch.Generator | None):
    """``[B, 1, 1, 1]`` uniform draws in ``[lo, hi)`` of ``x``'s dtype and device."""
    u = torch.rand(x.shape[0], 1, 1, 1, device=x.device, generator=generator, dtype=x.dtype)
    return u * (hi - lo) + lo


def _color(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    if x.shape[1] != 3:
        raise ValueError(f"colour augmentation needs 3 channels, got {x.shape[1]}")
    x = x + _uniform(x, -0.5, 0.5, generator)
    mean = x.mean(dim=1, keepdim=True)
    x = (x - mean) * _uniform(x, 0.0, 2.0, generator) + mean
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * _uniform(x, 0.5, 1.5, generator) + mean


def _randint(n: int, lo: int, hi: int, x: torch.Tensor, generator: torch.Generator | None):
    """``[n]`` integers in ``[lo, hi]`` on ``x``'s device."""
    return torch.randint(lo, hi + 1, (n,), device=x.device, generator=generator)


def _translation(x: torch.Tensor, ratio: float, generator: torch.Generator | None) -> torch.Tensor:
    b, c, h, w = x.shape
    max_dy, max_dx = int(h * ratio + 0.5), int(w * ratio + 0.5)
    if max_dy == 0 and max_dx == 0:
        return x
    dy = _randint(b, -max_dy, max_dy, x, generator)
    dx = _randint(b, -max_dx, max_dx, x, generator)
    # out[y, x] = in[y - dy, x - dx] where that is inside the image, else 0: gather from a
    # zero-padded copy (index 0 and the last index of each axis are the padding)
    pad = F.pad(x, (1, 1, 1, 1))
    ys = torch.arange(h, device=x.device).unsqueeze(0) - dy.unsqueeze(1)  # [B, H]
    xs = torch.arange(w, device=x.device).unsqueeze(0) - dx.unsqueeze(1)  # [B, W]
    ys = torch.where((ys >= 0) & (ys < h), ys + 1, 0)
    xs = torch.where((xs >= 0) & (xs < w), xs + 1, 0)
    rows = pad.gather(2, ys.view(b, 1, h, 1).expand(b, c, h, w + 2))
    return rows.gather(3, xs.view(b, 1, 1, w).expand(b, c, h, w))


def _cutout(x: torch.Tensor, ratio: float, generator: torch.Generator | None) -> torch.Tensor:
    b, _, h, w = x.shape
    size_y, size_x = int(h * ratio + 0.5), int(w * ratio + 0.5)
    if size_y == 0 or size_x == 0:
        return x
    top = _randint(b, 0, h - 1, x, generator).view(b, 1, 1) - size_y // 2
    left = _randint(b, 0, w - 1, x, generator).view(b, 1, 1) - size_x // 2
    yy = torch.arange(h, device=x.device).view(1, h, 1)
    xx = torch.arange(w, device=x.device).view(1, 1, w)
    hole = (yy >= top) & (yy < top + size_y) & (xx >= left) & (xx < left + size_x)
    return x * (~hole).unsqueeze(1).to(x.dtype)


def diff_augment(
    x: torch.Tensor,
    policy: str = DEFAULT_POLICY,
    translation_ratio: float = 0.125,
    cutout_ratio: float = 0.5,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Apply the DiffAugment transforms named in ``policy`` to ``x``, each sample independently.

    Args:
        x: images ``[B, C, H, W]`` float in ``[-1, 1]`` (``C = 3`` for ``color``).
        policy: comma-separated transforms, applied in this order; ``""`` returns ``x``.
        translation_ratio: largest shift as a share of the side.
        cutout_ratio: side of the cut-out square as a share of the image side.
        generator: RNG for the transform parameters (default: the global torch RNG of ``x``'s
            device).

    Returns:
        ``[B, C, H, W]``, differentiable with respect to ``x`` (values may leave ``[-1, 1]``:
        colour changes are not clipped, as in the paper).
    """
    if x.ndim != 4:
        raise ValueError(f"x must be [B, C, H, W], got {list(x.shape)}")
    for name in parse_policy(policy):
        if name == "color":
            x = _color(x, generator)
        elif name == "translation":
            x = _translation(x, translation_ratio, generator)
        else:
            x = _cutout(x, cutout_ratio, generator)
    return x


class DiffAugment(nn.Module):
    """:func:`diff_augment` as a module (no state), for ``hydra.utils.instantiate``.

    ``forward(x [B, C, H, W] in [-1, 1]) -> [B, C, H, W]``; apply it to reals and fakes alike.
    """

    def __init__(
        self,
        policy: str = DEFAULT_POLICY,
        translation_ratio: float = 0.125,
        cutout_ratio: float = 0.5,
    ) -> None:
        super().__init__()
        parse_policy(policy)  # fail at construction, not in the first training step
        self.policy = policy
        self.translation_ratio = float(translation_ratio)
        self.cutout_ratio = float(cutout_ratio)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return diff_augment(x, self.policy, self.translation_ratio, self.cutout_ratio)

    def extra_repr(self) -> str:
        return (
            f"policy={self.policy!r}, translation_ratio={self.translation_ratio}, "
            f"cutout_ratio={self.cutout_ratio}"
        )
