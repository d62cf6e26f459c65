"""Aligning a garment photo: crop to the garment, composite, pad to the frame, resize.

The frame is square (``aspect="1:1"``) or portrait (``aspect="3:4"``,
:mod:`garment_gen.data.aspect`); ``resolution`` is always its height.

The same function serves data preparation and generation, so a user's shape or
texture photo is aligned exactly as the training data was.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from garment_gen.data.aspect import DEFAULT_ASPECT, frame_size, parse_aspect


@dataclass
class Aligned:
    """One aligned sample, all ``uint8``, ``H`` x ``W`` = :func:`frame_size` of the aspect.

    ``H`` is the resolution; ``W`` is ``H`` for ``"1:1"`` and ``3 / 4 * H`` for ``"3:4"``
    (e.g. ``[64, 48]``).

    Attributes:
        image: RGB ``[H, W, 3]``, garment composited on the plain background.
        mask: ``[H, W]`` in ``{0, 255}``.
        photo: RGB ``[H, W, 3]``, the same crop of the original photo (its real
            background kept), for training a segmenter that works on raw photos.
    """

    image: np.ndarray
    mask: np.ndarray
    photo: np.ndarray


def _resize(arr: np.ndarray, height: int, width: int) -> np.ndarray:
    interp = cv2.INTER_AREA if arr.shape[0] > height else cv2.INTER_CUBIC
    return cv2.resize(arr, (width, height), interpolation=interp)


def _crop_size(
    box_h: int, box_w: int, margin: float, aspect_wh: tuple[int, int]
) -> tuple[int, int]:
    """``(height, width)`` of the crop around a ``box_h`` x ``box_w`` garment box.

    The box gets ``margin`` x its longer side on each side, then grows to the frame's
    aspect (only one of its sides grows).
    """
    longest = max(box_h, box_w)
    aw, ah = aspect_wh
    if aw == ah:  # exactly the square computation data was always prepared with
        side = int(np.ceil(longest * (1 + 2 * margin)))
        return side, side
    pad = 2 * margin * longest
    height = max(box_h + pad, (box_w + pad) * ah / aw)
    crop_h = int(np.ceil(height))
    return crop_h, max(1, int(round(crop_h * aw / ah)))


def align_garment(
    image: np.ndarray,
    mask: np.ndarray,
    resolution: int,
    margin: float = 0.06,
    background: tuple[int, int, int] = (255, 255, 255),
    aspect: str = DEFAULT_ASPECT,
) -> Aligned:
    """Crop to the mask's bounding box plus ``margin``, composite on ``background``, resize.

    The box (garment bounding box plus ``margin`` x its longer side on each side) is grown
    around the garment's centre to the frame's aspect, then resized to the frame. Square
    (``"1:1"``): the garment's longer side always spans ``1 / (1 + 2 * margin)`` of the
    output, which scale-normalises garments photographed at different distances. Portrait
    (``"3:4"``): a garment whose padded box is taller than 3:4 (a dress, a coat) fills the
    height (its height spans ``1 / (1 + 2 * margin)`` of it), with background left and
    right; a squatter one (a T-shirt) fills the width (``margin`` x its longer side left
    and right), with background above and below. Either way it is centred.

    Args:
        image: ``uint8`` RGB ``[H, W, 3]``.
        mask: ``uint8`` ``[H, W]``, nonzero = garment; must not be empty.
        resolution: output height in pixels (the width follows from ``aspect``).
        margin: share of the garment's longer side added on each side.
        background: RGB fill colour.
        aspect: ``"1:1"`` or ``"3:4"`` (width:height).
    Raises:
        ValueError: mismatched or empty mask, or an invalid aspect.
    """
    out_h, out_w = frame_size(resolution, aspect)
    if mask.shape != image.shape[:2]:
        raise ValueError(f"mask shape {mask.shape} != image shape {image.shape[:2]}")
    ys, xs = np.nonzero(mask)
    if ys.size == 0:
        raise ValueError("empty mask")
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    crop_h, crop_w = _crop_size(y1 - y0, x1 - x0, margin, parse_aspect(aspect))
    cy, cx = (y0 + y1) / 2.0, (x0 + x1) / 2.0
    top, left = int(round(cy - crop_h / 2.0)), int(round(cx - crop_w / 2.0))
    h, w = mask.shape
    pad_t, pad_l = max(0, -top), max(0, -left)
    pad_b, pad_r = max(0, top + crop_h - h), max(0, left + crop_w - w)

    alpha = (mask > 0).astype(np.float32)[..., None]
    bg = np.asarray(background, np.float32)
    comp = (image.astype(np.float32) * alpha + bg * (1 - alpha)).round().astype(np.uint8)

    def crop(arr: np.ndarray, mode: int, value) -> np.ndarray:
        if pad_t or pad_b or pad_l or pad_r:
            arr = cv2.copyMakeBorder(arr, pad_t, pad_b, pad_l, pad_r, mode, value=value)
        t, l_ = top + pad_t, left + pad_l
        return arr[t : t + crop_h, l_ : l_ + crop_w]

    comp_c = crop(comp, cv2.BORDER_CONSTANT, tuple(int(c) for c in background))
    photo_c = crop(image, cv2.BORDER_REFLECT_101, 0)
    mask_c = crop((mask > 0).astype(np.uint8) * 255, cv2.BORDER_CONSTANT, 0)

    mask_r = _resize(mask_c.astype(np.float32), out_h, out_w)
    mask_r = ((mask_r >= 127.5).astype(np.uint8)) * 255
    img_r = _resize(comp_c, out_h, out_w)
    # Snap the background exactly to its colour outside the (resized) garment so
    # resampling ringing never leaves a faint halo the GAN would learn.
    img_r[mask_r == 0] = np.asarray(background, np.uint8)
    return Aligned(image=img_r, mask=mask_r, photo=_resize(photo_c, out_h, out_w))
