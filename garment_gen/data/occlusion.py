"""Texture images: the original garment, partly hidden or cropped.

The texture encoder must learn a garment's fabric from a view that is
incomplete, as it will be at inference (a T-shirt half covered by an arm, a
fabric swatch). :func:`make_texture` builds such a view from an aligned sample:

* **occlusion**: arm-like bands (a two-segment limb from the image border, skin
  or sleeve coloured) and blocks (rotated rectangles in background or random
  colours) are drawn until a sampled share of the garment is hidden;
* **crop**: an irregular polygon of the garment is kept and the rest set to the
  background; sometimes the crop is zoomed to fill the frame, like a swatch.

All arrays are ``uint8``; masks are ``{0, 255}``. Randomness comes only from the
``numpy.random.Generator`` passed in, so a seeded generator gives the same texture.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

SKIN_TONES = np.array(
    [
        [255, 219, 172],
        [241, 194, 125],
        [224, 172, 105],
        [198, 134, 66],
        [141, 85, 36],
        [92, 56, 30],
    ],
    dtype=np.float32,
)


@dataclass
class TextureConfig:
    """How texture images are made: the schema and the only defaults of ``data.texture``.

    Registered with Hydra as ``texture_schema`` (:mod:`garment_gen.schema`), so an unknown
    ``data.texture`` key or a value of the wrong type fails while the config is composed.

    Attributes:
        p_occlude: probability of occluding the garment.
        p_crop: probability of cropping an irregular region (applied after any occlusion).
        min_share / max_share: share of the garment hidden by occluders, sampled uniformly.
        p_arm: probability that an occluder is an arm (else a block).
        max_occluders: cap on occluders drawn per image.
        crop_min_share / crop_max_share: share of the garment a crop keeps.
        p_zoom: probability that a crop is zoomed to fill the frame (swatch-like).
    """

    p_occlude: float = 0.8
    p_crop: float = 0.3
    min_share: float = 0.10
    max_share: float = 0.40
    p_arm: float = 0.6
    max_occluders: int = 6
    crop_min_share: float = 0.25
    crop_max_share: float = 0.70
    p_zoom: float = 0.5

    def __post_init__(self) -> None:
        if not 0 <= self.min_share <= self.max_share < 1:
            raise ValueError(
                f"need 0 <= min_share <= max_share < 1, got {self.min_share}, {self.max_share}"
            )
        if not 0 < self.crop_min_share <= self.crop_max_share <= 1:
            raise ValueError("need 0 < crop_min_share <= crop_max_share <= 1")


def _random_colour(rng: np.random.Generator) -> np.ndarray:
    return rng.integers(0, 256, size=3).astype(np.float32)


def _arm(canvas: np.ndarray, rng: np.random.Generator, garment_yx: np.ndarray) -> np.ndarray:
    """Draw one arm-like limb on a binary canvas; returns the limb's mask."""
    h, w = canvas.shape[:2]
    side = rng.integers(4)
    t = rng.uniform(0.1, 0.9)
    start = [(t * w, -0.05 * h), (1.05 * w, t * h), (t * w, 1.05 * h), (-0.05 * w, t * h)][side]
    target = garment_yx[rng.integers(len(garment_yx))][::-1].astype(np.float64)
    # An elbow somewhere between the border and the target, pushed sideways.
    mid = (np.asarray(start) + target) / 2
    direction = target - np.asarray(start)
    normal = np.array([-direction[1], direction[0]]) / (np.linalg.norm(direction) + 1e-6)
    elbow = mid + normal * rng.uniform(-0.15, 0.15) * max(h, w)
    end = target + direction / (np.linalg.norm(direction) + 1e-6) * rng.uniform(0, 0.15) * max(h, w)
    thickness = max(2, int(round(rng.uniform(0.08, 0.16) * min(h, w))))
    limb = np.zeros((h, w), np.uint8)
    pts = np.round(np.stack([start, elbow, end])).astype(np.int32)
    cv2.polylines(limb, [pts], isClosed=False, color=255, thickness=thickness, lineType=cv2.LINE_8)
    # A hand: slightly wider blob at the end.
    cv2.circle(limb, tuple(int(v) for v in pts[-1]), int(thickness * 0.65), 255, -1)
    return limb


def _block(h: int, w: int, rng: np.random.Generator, garment_yx: np.ndarray) -> np.ndarray:
    cy, cx = garment_yx[rng.integers(len(garment_yx))]
    bw, bh = rng.uniform(0.12, 0.4) * w, rng.uniform(0.12, 0.4) * h
    box = cv2.boxPoints(((float(cx), float(cy)), (bw, bh), float(rng.uniform(0, 90))))
    block = np.zeros((h, w), np.uint8)
    cv2.fillPoly(block, [np.round(box).astype(np.int32)], 255)
    return block


def occlude(
    image: np.ndarray,
    mask: np.ndarray,
    rng: np.random.Generator,
    cfg: TextureConfig,
    background: tuple[int, int, int] = (255, 255, 255),
) -> tuple[np.ndarray, np.ndarray]:
    """Hide a share of the garment behind arms and blocks.

    Args:
        image: ``uint8`` RGB ``[H, W, 3]``, aligned garment.
        mask: ``uint8`` ``[H, W]`` ``{0, 255}``.
    Returns:
        ``(occluded image, occluder mask)``; the occluder mask is ``{0, 255}``.
    """
    h, w = mask.shape
    garment = mask > 0
    garment_yx = np.argwhere(garment)
    out = image.astype(np.float32)
    covered = np.zeros((h, w), bool)
    if len(garment_yx) == 0:
        return image.copy(), covered.astype(np.uint8) * 255
    target = rng.uniform(cfg.min_share, cfg.max_share)
    n_garment = garment.sum()
    for _ in range(cfg.max_occluders):
        if covered[garment].sum() / n_garment >= target:
            break
        if rng.random() < cfg.p_arm:
            region = _arm(covered, rng, garment_yx) > 0
            base = (
                SKIN_TONES[rng.integers(len(SKIN_TONES))]
                if rng.random() < 0.6
                else _random_colour(rng)
            )
            # Shade across the limb so it reads as a rounded object, not a flat stroke.
            shade = cv2.GaussianBlur(region.astype(np.float32), (0, 0), max(1.0, 0.02 * min(h, w)))
            colour = base[None, None, :] * (0.75 + 0.25 * shade[..., None])
            out = np.where(region[..., None], colour, out)
        else:
            region = _block(h, w, rng, garment_yx) > 0
            fill = np.asarray(background, np.float32) if rng.random() < 0.5 else _random_colour(rng)
            out[region] = fill
        covered |= region
    return np.clip(out, 0, 255).round().astype(np.uint8), covered.astype(np.uint8) * 255


def crop_region(
    image: np.ndarray,
    mask: np.ndarray,
    rng: np.random.Generator,
    cfg: TextureConfig,
    background: tuple[int, int, int] = (255, 255, 255),
) -> np.ndarray:
    """Keep an irregular polygon of the garment, set everything else to the background.

    With probability ``cfg.p_zoom`` the kept region is scaled up to fill the frame.
    Returns ``uint8`` RGB ``[H, W, 3]``.
    """
    h, w = mask.shape
    garment = mask > 0
    garment_yx = np.argwhere(garment)
    if len(garment_yx) == 0:
        return image.copy()
    share = rng.uniform(cfg.crop_min_share, cfg.crop_max_share)
    cy, cx = garment_yx[rng.integers(len(garment_yx))]
    radius = np.sqrt(share * garment.sum() / np.pi)
    keep = np.zeros((h, w), bool)
    for _ in range(6):
        n = int(rng.integers(5, 10))
        angles = np.sort(rng.uniform(0, 2 * np.pi, n))
        radii = radius * rng.uniform(0.6, 1.4, n)
        pts = np.stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles)], axis=1)
        poly = np.zeros((h, w), np.uint8)
        cv2.fillPoly(poly, [np.round(pts).astype(np.int32)], 1)
        keep = (poly > 0) & garment
        if keep.sum() >= 0.5 * share * garment.sum():
            break
        radius *= 1.3  # near an edge the polygon falls off the garment: grow it
    bg = np.asarray(background, np.uint8)
    out = np.where(keep[..., None], image, bg)
    if rng.random() < cfg.p_zoom and keep.any():
        ys, xs = np.nonzero(keep)
        y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
        patch = out[y0:y1, x0:x1]
        scale = min(h / patch.shape[0], w / patch.shape[1]) * rng.uniform(0.7, 1.0)
        ph, pw = max(1, int(patch.shape[0] * scale)), max(1, int(patch.shape[1] * scale))
        patch = cv2.resize(patch, (pw, ph), interpolation=cv2.INTER_LINEAR)
        out = np.empty_like(image)
        out[:] = bg
        oy, ox = (h - ph) // 2, (w - pw) // 2
        out[oy : oy + ph, ox : ox + pw] = patch
    return out


def make_texture(
    image: np.ndarray,
    mask: np.ndarray,
    rng: np.random.Generator,
    cfg: TextureConfig,
    background: tuple[int, int, int] = (255, 255, 255),
) -> np.ndarray:
    """Texture view of an aligned garment: occluded and/or cropped as ``cfg`` says.

    Args:
        image: ``uint8`` RGB ``[H, W, 3]``.
        mask: ``uint8`` ``[H, W]`` ``{0, 255}``.
        rng: the only source of randomness.
    Returns:
        ``uint8`` RGB ``[H, W, 3]``.
    """
    out = image
    if rng.random() < cfg.p_occlude:
        out, _ = occlude(out, mask, rng, cfg, background)
    if rng.random() < cfg.p_crop:
        out = crop_region(out, mask, rng, cfg, background)
    return out.copy() if out is image else out
