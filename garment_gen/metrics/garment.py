"""Garment metrics shared by validation and the evaluator: masks of generated images, IoU,
colour histograms and their Hellinger distance, garment crops, and the paste baseline.

Images float ``[-1, 1]`` ``[B, 3, H, W]``; masks float ``{0, 1}`` ``[B, 1, H, W]``.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def _background(
    background: tuple[int, int, int], device: torch.device | str = "cpu"
) -> torch.Tensor:
    """``uint8`` RGB colour -> float ``[3, 1, 1]`` in ``[-1, 1]``."""
    return (
        torch.tensor(background, dtype=torch.float32, device=device).div(127.5).sub(1).view(3, 1, 1)
    )


def _bbox(mask: torch.Tensor) -> tuple[int, int, int, int] | None:
    """``(y0, y1, x0, x1)`` (end exclusive) of the nonzero pixels of a ``[H, W]`` mask, or None."""
    rows = torch.nonzero(mask.any(1)).flatten()
    cols = torch.nonzero(mask.any(0)).flatten()
    if rows.numel() == 0:
        return None
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def foreground(
    img: torch.Tensor, background: tuple[int, int, int], tolerance: int = 16
) -> torch.Tensor:
    """Pixels that differ from the background colour: images ``[B, 3, H, W]`` -> bool ``[B, H, W]``.

    ``tolerance`` is in 8-bit levels on the most different channel.
    """
    bg = _background(background, img.device)
    return (img - bg).abs().amax(1) > tolerance / 127.5


def paste_baseline(
    shape_mask: torch.Tensor,
    texture_img: torch.Tensor,
    background: tuple[int, int, int] = (255, 255, 255),
    tolerance: int = 16,
) -> torch.Tensor:
    """The trivial baseline: paste the texture's garment into the target shape.

    For each sample, the bounding box of the texture's garment pixels (those differing from the
    background by more than ``tolerance`` levels) is cropped, resized to the bounding box of the
    target mask and kept inside the mask; everything else is background.

    Args:
        shape_mask: float ``[B, 1, R, R]`` in ``{0, 1}``.
        texture_img: float ``[B, 3, R, R]`` in ``[-1, 1]``.
    Returns:
        float ``[B, 3, R, R]`` in ``[-1, 1]``.
    """
    bg = _background(background, texture_img.device)
    out = bg.expand_as(texture_img).clone()
    tex_fg = foreground(texture_img, background, tolerance)
    for i in range(texture_img.shape[0]):
        target = shape_mask[i, 0] > 0.5
        tb, mb = _bbox(tex_fg[i]), _bbox(target)
        if tb is None or mb is None:
            continue
        crop = texture_img[i : i + 1, :, tb[0] : tb[1], tb[2] : tb[3]]
        size = (mb[1] - mb[0], mb[3] - mb[2])
        if crop.shape[-2:] != size:
            crop = F.interpolate(
                crop, size=size, mode="bilinear", align_corners=False, antialias=True
            )
        region = out[i, :, mb[0] : mb[1], mb[2] : mb[3]]
        out[i, :, mb[0] : mb[1], mb[2] : mb[3]] = torch.where(
            target[mb[0] : mb[1], mb[2] : mb[3]], crop[0], region
        )
    return out.clamp(-1, 1)


def classical_garment_mask(
    img: torch.Tensor, background: tuple[int, int, int], tolerance: int = 16
) -> torch.Tensor:
    """Garment mask of images on a plain background: ``[B, 3, H, W]`` -> float ``[B, 1, H, W]`` ``{0, 1}``.

    Pixels differing from the background colour, cleaned with :func:`garment_gen.data.masks.clean_mask`
    (main blobs kept, holes filled: a white pattern inside the garment still counts as garment).
    """
    from garment_gen.data.masks import clean_mask

    fg = foreground(img, background, tolerance).to(torch.uint8).mul(255).cpu().numpy()
    masks = np.stack([clean_mask(m) for m in fg]) > 0
    return torch.from_numpy(masks).float()[:, None].to(img.device)


def segmenter_mask(segmenter: torch.nn.Module, img: torch.Tensor) -> torch.Tensor:
    """Garment mask from the bundled segmenter: images ``[B, 3, H, W]`` in ``[-1, 1]`` -> float ``[B, 1, H, W]``."""
    return (segmenter(img) > 0).float()


def iou(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-sample IoU of two ``[B, 1, H, W]`` masks (``> 0.5`` = garment) -> ``[B]``; 1 when both are empty."""
    p, t = pred.flatten(1) > 0.5, target.flatten(1) > 0.5
    inter = (p & t).sum(1).float()
    union = (p | t).sum(1).float()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))


def garment_crops(
    img: torch.Tensor, mask: torch.Tensor, background: tuple[int, int, int], size: int = 64
) -> torch.Tensor:
    """The garment of each image, background outside the mask, cropped to its bounding box,
    padded square with the background and resized: ``[B, 3, H, W]``, ``[B, 1, H, W]`` -> ``[B, 3, size, size]``.
    """
    bg = _background(background, img.device)
    out = []
    for i in range(img.shape[0]):
        m = mask[i, 0] > 0.5
        x = torch.where(m, img[i], bg)
        box = _bbox(m)
        if box is not None:
            x = x[:, box[0] : box[1], box[2] : box[3]]
        h, w = x.shape[-2:]
        s = max(h, w)
        canvas = bg.expand(3, s, s).clone()
        y0, x0 = (s - h) // 2, (s - w) // 2
        canvas[:, y0 : y0 + h, x0 : x0 + w] = x
        out.append(
            F.interpolate(
                canvas[None],
                size=(size, size),
                mode="bilinear",
                align_corners=False,
                antialias=True,
            )
        )
    return torch.cat(out)


def colour_histograms(img: torch.Tensor, mask: torch.Tensor, bins: int = 8) -> torch.Tensor:
    """Normalised 3D RGB histograms of the masked pixels: ``[B, 3, H, W]``, ``[B, 1, H, W]`` -> ``[B, bins**3]``.

    An empty mask gives a uniform histogram.
    """
    q = (
        img.add(1).mul(127.5).round().clamp(0, 255).long() * bins // 256
    )  # [B, 3, H, W] in [0, bins)
    idx = (q[:, 0] * bins + q[:, 1]) * bins + q[:, 2]  # [B, H, W]
    hists = []
    for i in range(img.shape[0]):
        sel = idx[i][mask[i, 0] > 0.5]
        h = torch.bincount(sel, minlength=bins**3).float()
        hists.append(h / h.sum() if h.sum() > 0 else torch.full_like(h, 1.0 / bins**3))
    return torch.stack(hists)


def hellinger(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Hellinger distance between rows of two ``[B, K]`` distributions -> ``[B]`` in ``[0, 1]``."""
    bc = (p * q).sqrt().sum(1)
    return (1 - bc).clamp(min=0).sqrt()
