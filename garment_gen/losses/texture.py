"""Texture terms for pairs without ground truth (shape of garment A, texture of garment B).

No photo of "B's fabric made into A's garment" exists, so the output is compared with B by
statistics that do not depend on where things are:

* :func:`soft_colour_histogram`: a differentiable joint RGB histogram of the garment pixels
  (linear-kernel soft binning, ``bins`` per channel), the same statistic the evaluator's
  ``cross_hist_hellinger`` measures with hard bins;
* :func:`histogram_distance`: ``1 - Bhattacharyya coefficient`` (the square of the Hellinger
  distance), 0 for equal histograms, 1 for disjoint ones;
* :func:`masked_moments_distance`: mean and standard deviation of each colour channel inside
  the masks (cheap, smooth gradient where the histograms do not overlap yet).

Images float ``[-1, 1]`` ``[B, 3, H, W]``; masks float ``{0, 1}`` (or soft) ``[B, 1, H, W]``.
"""

from __future__ import annotations

import torch


def _soft_bins(x: torch.Tensor, bins: int) -> torch.Tensor:
    """``x`` in ``[-1, 1]`` ``[B, P]`` -> linear-kernel weights ``[B, P, bins]`` (rows sum to 1)."""
    pos = (x.clamp(-1, 1) + 1) / 2 * (bins - 1)  # bin centres at 0 .. bins-1
    centres = torch.arange(bins, device=x.device, dtype=x.dtype)
    return (1 - (pos.unsqueeze(-1) - centres).abs()).clamp(min=0)


def soft_colour_histogram(img: torch.Tensor, mask: torch.Tensor, bins: int = 8) -> torch.Tensor:
    """Normalised joint RGB histograms of the pixels under ``mask``: ``[B, bins, bins, bins]``."""
    b = img.shape[0]
    w = mask.reshape(b, -1).to(img.dtype)  # [B, P]
    r, g, bl = (_soft_bins(img[:, c].reshape(b, -1), bins) for c in range(3))
    rg = (r.unsqueeze(-1) * g.unsqueeze(-2)).reshape(b, -1, bins * bins)  # [B, P, bins^2]
    hist = torch.bmm((rg * w.unsqueeze(-1)).transpose(1, 2), bl)  # [B, bins^2, bins]
    hist = hist.reshape(b, bins, bins, bins)
    return hist / hist.flatten(1).sum(1).clamp(min=1e-6).view(b, 1, 1, 1)


def histogram_distance(p: torch.Tensor, q: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """``1 - sum(sqrt(p * q))`` per sample ``[B]`` for normalised histograms of the same shape."""
    bc = (p * q + eps).sqrt().flatten(1).sum(1) - eps**0.5 * p[0].numel()
    return (1 - bc).clamp(min=0)


def masked_moments_distance(
    a: torch.Tensor, mask_a: torch.Tensor, b: torch.Tensor, mask_b: torch.Tensor
) -> torch.Tensor:
    """L1 between the per-channel mean and std of ``a`` under ``mask_a`` and ``b`` under ``mask_b``; ``[B]``."""

    def moments(x: torch.Tensor, m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        m = m.to(x.dtype)
        n = m.sum((2, 3)).clamp(min=1)
        mean = (x * m).sum((2, 3)) / n
        var = ((x - mean[..., None, None]).square() * m).sum((2, 3)) / n
        return mean, (var + 1e-6).sqrt()

    ma, sa = moments(a, mask_a)
    mb, sb = moments(b, mask_b)
    return (ma - mb).abs().mean(1) + (sa - sb).abs().mean(1)


def cross_texture_loss(
    fake_img: torch.Tensor,
    shape_mask: torch.Tensor,
    texture_source: torch.Tensor,
    texture_mask: torch.Tensor,
    bins: int = 8,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Colour-statistics distance between the output's garment (inside ``shape_mask``) and the
    texture source's garment (inside ``texture_mask``); returns ``(batch mean, terms)``."""
    hist = histogram_distance(
        soft_colour_histogram(fake_img, shape_mask, bins),
        soft_colour_histogram(texture_source, texture_mask, bins),
    )
    moments = masked_moments_distance(fake_img, shape_mask, texture_source, texture_mask)
    total = (hist + moments).mean()
    return total, {"cross_hist": hist.mean().detach(), "cross_moments": moments.mean().detach()}
