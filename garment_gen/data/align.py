"""Aligning a garment photo: crop to the garment, composite, pad to square, resize.

The same function serves data preparation and generation, so a user's shape or
texture photo is aligned exactly as the training data was.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


@dataclass
class Aligned:
    """One aligned sample, all ``uint8`` at ``resolution`` x ``resolution``.

    Attributes:
        image: RGB ``[R, R, 3]``, garment composited on the plain background.
        mask: ``[R, R]`` in ``{0, 255}``.
        photo: RGB ``[R, R, 3]``, the same crop of the original photo (its real
            background kept), for training a segmenter that works on raw photos.
    """

    image: np.ndarray
    mask: np.ndarray
    photo: np.ndarray


def _resize(arr: np.ndarray, size: int) -> np.ndarray:
    h = arr.shape[0]
    interp = cv2.INTER_AREA if h > size else cv2.INTER_CUBIC
    return cv2.resize(arr, (size, size), interpolation=interp)


def align_garment(
    image: np.ndarray,
    mask: np.ndarray,
    resolution: int,
    margin: float = 0.06,
    background: tuple[int, int, int] = (255, 255, 255),
) -> Aligned:
    """Crop to the mask's bounding box plus ``margin``, composite on ``background``, square, resize.

    The garment's longer side always spans ``1 / (1 + 2 * margin)`` of the output,
    which scale-normalises garments photographed at different distances.

    Args:
        image: ``uint8`` RGB ``[H, W, 3]``.
        mask: ``uint8`` ``[H, W]``, nonzero = garment; must not be empty.
        resolution: output side in pixels.
        margin: share of the garment's longer side added on each side.
        background: RGB fill colour.
    """
    if mask.shape != image.shape[:2]:
        raise ValueError(f"mask shape {mask.shape} != image shape {image.shape[:2]}")
    ys, xs = np.nonzero(mask)
    if ys.size == 0:
        raise ValueError("empty mask")
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    side = int(np.ceil(max(y1 - y0, x1 - x0) * (1 + 2 * margin)))
    cy, cx = (y0 + y1) / 2.0, (x0 + x1) / 2.0
    top, left = int(round(cy - side / 2.0)), int(round(cx - side / 2.0))
    h, w = mask.shape
    pad_t, pad_l = max(0, -top), max(0, -left)
    pad_b, pad_r = max(0, top + side - h), max(0, left + side - w)

    alpha = (mask > 0).astype(np.float32)[..., None]
    bg = np.asarray(background, np.float32)
    comp = (image.astype(np.float32) * alpha + bg * (1 - alpha)).round().astype(np.uint8)

    def crop(arr: np.ndarray, mode: int, value) -> np.ndarray:
        if pad_t or pad_b or pad_l or pad_r:
            arr = cv2.copyMakeBorder(arr, pad_t, pad_b, pad_l, pad_r, mode, value=value)
        t, l_ = top + pad_t, left + pad_l
        return arr[t : t + side, l_ : l_ + side]

    comp_sq = crop(comp, cv2.BORDER_CONSTANT, tuple(int(c) for c in background))
    photo_sq = crop(image, cv2.BORDER_REFLECT_101, 0)
    mask_sq = crop((mask > 0).astype(np.uint8) * 255, cv2.BORDER_CONSTANT, 0)

    mask_r = _resize(mask_sq.astype(np.float32), resolution)
    mask_r = ((mask_r >= 127.5).astype(np.uint8)) * 255
    img_r = _resize(comp_sq, resolution)
    # Snap the background exactly to its colour outside the (resized) garment so
    # resampling ringing never leaves a faint halo the GAN would learn.
    img_r[mask_r == 0] = np.asarray(background, np.uint8)
    return Aligned(image=img_r, mask=mask_r, photo=_resize(photo_sq, resolution))
