"""Reconstruction losses of the encoder stage: pixel L2, LPIPS and a segmenter-based shape term.

``first = w_l2 * l2 + w_lpips * lpips`` compares the generated garment with the original photo;
``second = first + w_shape * shape`` adds the L1 distance between the frozen segmenter's soft
mask of the generated image and the input shape mask, so the generated garment keeps the
requested silhouette. A weight of 0 turns its term off and skips building its network.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from garment_gen.errors import ConfigError
from garment_gen.losses.perceptual import LPIPSLoss

__all__ = ["LossConfigError", "ReconstructionLoss", "l2_loss", "shape_l1_loss"]


class LossConfigError(ConfigError, ValueError):
    """A loss weight or a network the loss needs is invalid or missing."""


def l2_loss(fake_img: torch.Tensor, real_img: torch.Tensor) -> torch.Tensor:
    """Mean squared error over all pixels and channels of two same-shape images; a scalar."""
    if fake_img.shape != real_img.shape:
        raise ValueError(f"image shapes differ: {list(fake_img.shape)} vs {list(real_img.shape)}")
    return F.mse_loss(fake_img, real_img)


def shape_l1_loss(seg_logits: torch.Tensor, shape_mask: torch.Tensor) -> torch.Tensor:
    """Mean L1 distance between ``sigmoid(seg_logits)`` and a mask; a scalar in [0, 1].

    ``seg_logits`` ``[B, 1, H, W]`` (garment > 0); ``shape_mask`` float {0, 1} ``[B, 1, H, W]``.
    """
    if seg_logits.shape != shape_mask.shape:
        raise ValueError(
            f"segmenter logits {list(seg_logits.shape)} do not match the mask "
            f"{list(shape_mask.shape)}"
        )
    return (torch.sigmoid(seg_logits) - shape_mask.to(seg_logits.dtype)).abs().mean()


def _check_weight(name: str, value: float) -> float:
    value = float(value)
    if not (math.isfinite(value) and value >= 0):
        raise LossConfigError(f"{name} must be a finite number >= 0, got {value!r}")
    return value


class ReconstructionLoss(nn.Module):
    """Weighted reconstruction loss of a generated garment image; returns ``(total, terms)``.

    ``forward(generated, original, mask)`` takes images float [-1, 1] ``[B, 3, H, W]`` and the
    input shape mask float {0, 1} ``[B, 1, H, W]`` (only needed when the shape term is on).
    ``terms`` holds detached scalars for logging: ``l2`` (always; it is free), ``lpips`` (batch
    mean, when ``w_lpips > 0``), ``first``, and when ``w_shape > 0`` also ``shape`` and
    ``second``. ``total`` carries the gradient: ``second`` if the shape term is on, else
    ``first``.

    The segmenter (``segmenter(img [B, 3, H, W] in [-1, 1]) -> logits [B, 1, H, W]``) and LPIPS
    are frozen for real: ``requires_grad=False`` and kept in eval mode when ``.train()`` is
    called. Gradients still flow through them to ``generated``. Freezing changes the passed
    segmenter in place.

    Args:
        w_l2: weight of the pixel MSE.
        w_lpips: weight of LPIPS; 0 builds no LPIPS network.
        w_shape: weight of the segmenter shape term; 0 needs (and keeps) no segmenter.
        lpips_net: LPIPS trunk, 'alex' or 'vgg'.
        segmenter: frozen garment segmenter, required when ``w_shape > 0``.

    Raises:
        LossConfigError (a ValueError): a negative or non-finite weight, all weights 0, or
            ``w_shape > 0`` without a segmenter.
    """

    def __init__(
        self,
        w_l2: float = 1.0,
        w_lpips: float = 0.8,
        w_shape: float = 0.0,
        lpips_net: str = "alex",
        segmenter: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.w_l2 = _check_weight("w_l2", w_l2)
        self.w_lpips = _check_weight("w_lpips", w_lpips)
        self.w_shape = _check_weight("w_shape", w_shape)
        if self.w_l2 == self.w_lpips == self.w_shape == 0:
            raise LossConfigError("all reconstruction loss weights are 0: nothing to train on")
        if self.w_shape > 0 and segmenter is None:
            raise LossConfigError(
                f"w_shape={self.w_shape} needs a segmenter (a trained segmenter.pt), got None; "
                "pass one or set w_shape=0"
            )
        self.lpips = LPIPSLoss(net=lpips_net) if self.w_lpips > 0 else None
        self.segmenter = segmenter if self.w_shape > 0 else None
        if self.segmenter is not None:
            self.segmenter.requires_grad_(False)
            self.segmenter.eval()

    @property
    def uses_shape(self) -> bool:
        """Whether the segmenter shape term (and so the ``second`` total) is on."""
        return self.segmenter is not None

    def train(self, mode: bool = True) -> ReconstructionLoss:
        super().train(mode)
        if self.segmenter is not None:
            self.segmenter.eval()  # BatchNorm statistics of a frozen network must not move
        return self

    def forward(
        self,
        generated: torch.Tensor,
        original: torch.Tensor,
        mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``(total, terms)`` for ``generated`` vs ``original`` [-1, 1] ``[B, 3, H, W]`` and ``mask`` {0, 1} ``[B, 1, H, W]``."""
        if generated.ndim != 4 or generated.shape[1] != 3:
            raise ValueError(f"generated must be [B, 3, H, W], got {list(generated.shape)}")
        terms: dict[str, torch.Tensor] = {}

        l2 = l2_loss(generated, original)
        terms["l2"] = l2.detach()
        first = self.w_l2 * l2
        if self.lpips is not None:
            lpips = self.lpips(generated, original).mean()
            terms["lpips"] = lpips.detach()
            first = first + self.w_lpips * lpips
        terms["first"] = first.detach()
        if self.segmenter is None:
            return first, terms

        if mask is None:
            raise ValueError("the shape term (w_shape > 0) needs the input mask, got None")
        shape = shape_l1_loss(self.segmenter(generated), mask)
        second = first + self.w_shape * shape
        terms["shape"] = shape.detach()
        terms["second"] = second.detach()
        return second, terms

    def extra_repr(self) -> str:
        return f"w_l2={self.w_l2}, w_lpips={self.w_lpips}, w_shape={self.w_shape}"
