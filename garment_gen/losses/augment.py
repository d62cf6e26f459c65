"""Differentiable augmentation for the discriminator, with ADA's adaptive probability.

Both real and generated images go through the same random, differentiable
transforms before D (so gradients reach G through them). Each transform fires
per sample with probability ``p``; :class:`AdaptiveAugment` raises ``p`` when D
overfits (the mean sign of its logits on reals exceeds ``target``) and lowers it
otherwise, as in StyleGAN2-ADA. Images are float NCHW in ``[-1, 1]``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _gate(x: torch.Tensor, p: float) -> torch.Tensor:
    """Per-sample 0/1 gate ``[B, 1, 1, 1]`` that is 1 with probability ``p``."""
    return (torch.rand(x.shape[0], 1, 1, 1, device=x.device) < p).to(x.dtype)


def augment(
    x: torch.Tensor,
    p: float,
    xflip: bool = True,
    translate: float = 0.125,
    color: bool = True,
    cutout: float = 0.5,
) -> torch.Tensor:
    """Apply random flips, integer translation, colour changes and cutout, each with probability ``p``.

    Args:
        x: images ``[B, C, H, W]`` in ``[-1, 1]``.
        p: per-sample probability of each transform (0 returns ``x`` unchanged).
        translate: maximum shift as a share of the image side (reflect padding).
        cutout: side of the cut-out square as a share of the image side.
    """
    if p <= 0:
        return x
    b, c, h, w = x.shape
    dev = x.device
    if xflip:
        g = _gate(x, p)
        x = g * x.flip(3) + (1 - g) * x
    if translate > 0:
        g = _gate(x, p).view(b)
        sx = (
            torch.randint(-int(translate * w), int(translate * w) + 1, (b,), device=dev) * g
        ).long()
        sy = (
            torch.randint(-int(translate * h), int(translate * h) + 1, (b,), device=dev) * g
        ).long()
        pad = max(int(translate * h), int(translate * w), 1)
        xp = F.pad(x, (pad, pad, pad, pad), mode="reflect")
        ys = (torch.arange(h, device=dev)[None, :] + pad - sy[:, None]).clamp(0, h + 2 * pad - 1)
        xs = (torch.arange(w, device=dev)[None, :] + pad - sx[:, None]).clamp(0, w + 2 * pad - 1)
        idx_y = ys[:, None, :, None].expand(b, c, h, w + 2 * pad)
        x = xp.gather(2, idx_y)
        idx_x = xs[:, None, None, :].expand(b, c, h, w)
        x = x.gather(3, idx_x)
    if color and c == 3:
        g = _gate(x, p)
        x = x + g * (torch.rand(b, 1, 1, 1, device=dev, dtype=x.dtype) - 0.5) * 0.4  # brightness
        mean = x.mean(dim=1, keepdim=True)
        g = _gate(x, p)
        sat = 1 + g * (torch.rand(b, 1, 1, 1, device=dev, dtype=x.dtype) * 2 - 1) * 0.5
        x = (x - mean) * sat + mean  # saturation
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        g = _gate(x, p)
        con = 1 + g * (torch.rand(b, 1, 1, 1, device=dev, dtype=x.dtype) - 0.5)
        x = (x - mean) * con + mean  # contrast
    if cutout > 0:
        g = _gate(x, p)
        ch, cw = max(1, int(h * cutout / 2)), max(1, int(w * cutout / 2))
        cy = torch.randint(0, h, (b, 1, 1), device=dev)
        cx = torch.randint(0, w, (b, 1, 1), device=dev)
        yy = torch.arange(h, device=dev).view(1, h, 1)
        xx = torch.arange(w, device=dev).view(1, 1, w)
        hole = ((yy - cy).abs() < ch) & ((xx - cx).abs() < cw)
        keep = 1 - g * hole[:, None].to(x.dtype)
        x = x * keep
    return x


class AdaptiveAugment(nn.Module):
    """Augmentation probability ``p`` tuned from D's overfitting heuristic ``r_t = E[sign(D(real))]``.

    Args:
        target: desired ``r_t`` (0.6 in StyleGAN2-ADA); ``None`` keeps ``p`` fixed.
        p_init: starting probability.
        speed_kimg: thousands of images over which ``p`` can move from 0 to 1.
        interval: update ``p`` every this many calls to :meth:`accumulate`.
        p_max: upper bound on ``p``.

    ``p`` and the accumulators are buffers, so checkpoints restore them and DDP
    ranks share them (sync with :meth:`sync` before an update).
    """

    def __init__(
        self,
        target: float | None = 0.6,
        p_init: float = 0.0,
        speed_kimg: float = 100.0,
        interval: int = 4,
        p_max: float = 0.8,
        **transform_kwargs,
    ):
        super().__init__()
        self.target = target
        self.speed_kimg = speed_kimg
        self.interval = interval
        self.p_max = p_max
        self.transform_kwargs = transform_kwargs
        self.register_buffer("p", torch.tensor(float(p_init)))
        self.register_buffer("sign_sum", torch.zeros(()))
        self.register_buffer("count", torch.zeros(()))
        self.register_buffer("calls", torch.zeros((), dtype=torch.long))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return augment(x, float(self.p), **self.transform_kwargs)

    @torch.no_grad()
    def accumulate(self, real_logits: torch.Tensor, batch_images: int) -> float | None:
        """Record D's logits on (augmented) reals; every ``interval`` calls update ``p``.

        Returns the ``r_t`` used for an update, or None when no update happened.
        """
        if self.target is None:
            return None
        self.sign_sum += real_logits.detach().sign().sum().float()
        self.count += real_logits.numel()
        self.calls += 1
        if int(self.calls) % self.interval:
            return None
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(self.sign_sum)
            torch.distributed.all_reduce(self.count)
            world = torch.distributed.get_world_size()
        else:
            world = 1
        rt = float(self.sign_sum / self.count.clamp(min=1))
        step = batch_images * world * self.interval / (self.speed_kimg * 1000)
        new_p = float(self.p) + (step if rt > self.target else -step)
        self.p.fill_(min(max(new_p, 0.0), self.p_max))
        self.sign_sum.zero_()
        self.count.zero_()
        return rt
