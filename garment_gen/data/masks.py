"""Garment masks: from a mask file, a trained segmenter, or a classical bootstrap.

All masks here are ``uint8`` ``[H, W]`` with values in ``{0, 255}`` (garment = 255)
at the size of the photo they belong to.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from garment_gen.data.io import IMAGE_EXTENSIONS, load_gray
from garment_gen.errors import BadInputError


def clean_mask(mask: np.ndarray, min_component_share: float = 0.15) -> np.ndarray:
    """Keep the main garment blob(s) and fill holes.

    Args:
        mask: ``uint8`` ``[H, W]``, nonzero = garment.
        min_component_share: components smaller than this share of the largest
            one are dropped (stray background specks).
    Returns:
        ``uint8`` ``[H, W]`` in ``{0, 255}``.
    """
    binary = (mask > 0).astype(np.uint8)
    if binary.sum() == 0:
        return binary * 255
    k = max(3, int(round(min(mask.shape) * 0.01)) | 1)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k))
    binary = cv2.morphologyEx(binary, cv2.MORPH_OPEN, kernel)
    binary = cv2.morphologyEx(binary, cv2.MORPH_CLOSE, kernel)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(binary, connectivity=8)
    if n > 1:
        areas = stats[1:, cv2.CC_STAT_AREA]
        keep = np.flatnonzero(areas >= areas.max() * min_component_share) + 1
        binary = np.isin(labels, keep).astype(np.uint8)
    # Fill holes: flood the background from the border; what it cannot reach is inside.
    h, w = binary.shape
    padded = np.pad(binary, 1)
    flood = padded.copy()
    cv2.floodFill(flood, np.zeros((h + 4, w + 4), np.uint8), (0, 0), 1)
    holes = flood[1:-1, 1:-1] == 0
    binary[holes] = 1
    return binary * 255


def _work_size(image: np.ndarray, long_side: int) -> tuple[np.ndarray, float]:
    h, w = image.shape[:2]
    scale = min(1.0, long_side / max(h, w))
    if scale < 1.0:
        image = cv2.resize(
            image,
            (max(1, round(w * scale)), max(1, round(h * scale))),
            interpolation=cv2.INTER_AREA,
        )
    return image, scale


def _to_full_size(mask_small: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    h, w = shape
    if mask_small.shape != (h, w):
        mask_small = cv2.resize(
            mask_small.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR
        )
    return ((mask_small > 127.5).astype(np.uint8)) * 255


def border_is_plain(image: np.ndarray, border: float = 0.03, max_std: float = 10.0) -> bool:
    """True when the photo's outer frame is one flat colour (a studio/product shot)."""
    h, w = image.shape[:2]
    b = max(1, int(round(min(h, w) * border)))
    frame = np.concatenate(
        [
            image[:b].reshape(-1, 3),
            image[-b:].reshape(-1, 3),
            image[:, :b].reshape(-1, 3),
            image[:, -b:].reshape(-1, 3),
        ]
    ).astype(np.float32)
    return bool(frame.std(axis=0).max() <= max_std)


def plain_background_mask(
    image: np.ndarray, tolerance: float = 30.0, long_side: int = 512
) -> np.ndarray:
    """Mask for a photo on a flat background: pixels far from the border colour.

    Args:
        image: ``uint8`` RGB ``[H, W, 3]``.
    """
    small, _ = _work_size(image, long_side)
    h, w = small.shape[:2]
    b = max(1, int(round(min(h, w) * 0.03)))
    frame = np.concatenate(
        [
            small[:b].reshape(-1, 3),
            small[-b:].reshape(-1, 3),
            small[:, :b].reshape(-1, 3),
            small[:, -b:].reshape(-1, 3),
        ]
    )
    bg = np.median(frame, axis=0).astype(np.float32)
    dist = np.linalg.norm(small.astype(np.float32) - bg, axis=2)
    mask = clean_mask((dist > tolerance).astype(np.uint8) * 255)
    return _to_full_size(mask, image.shape[:2])


def grabcut_mask(
    image: np.ndarray,
    margin_x: float = 0.08,
    margin_y: float = 0.05,
    iterations: int = 5,
    long_side: int = 256,
    seed: int = 0,
) -> np.ndarray:
    """GrabCut from a centred rectangle (for textured floors, beds, carpets).

    Args:
        image: ``uint8`` RGB ``[H, W, 3]``.
    Returns:
        ``uint8`` ``[H, W]`` in ``{0, 255}``.
    """
    small, _ = _work_size(image, long_side)
    h, w = small.shape[:2]
    rect = (
        int(w * margin_x),
        int(h * margin_y),
        int(w * (1 - 2 * margin_x)),
        int(h * (1 - 2 * margin_y)),
    )
    gc = np.zeros((h, w), np.uint8)
    bgd = np.zeros((1, 65), np.float64)
    fgd = np.zeros((1, 65), np.float64)
    cv2.setRNGSeed(seed)
    bgr = cv2.cvtColor(small, cv2.COLOR_RGB2BGR)
    cv2.grabCut(bgr, gc, rect, bgd, fgd, iterations, cv2.GC_INIT_WITH_RECT)
    fg = np.isin(gc, (cv2.GC_FGD, cv2.GC_PR_FGD)).astype(np.uint8) * 255
    return _to_full_size(clean_mask(fg), image.shape[:2])


def classical_mask(
    image: np.ndarray, work_size: int = 256, area_range: tuple[float, float] = (0.10, 0.90)
) -> tuple[np.ndarray, str]:
    """Bootstrap mask needing no weights: border flood for flat backgrounds, else GrabCut.

    Args:
        image: ``uint8`` RGB ``[H, W, 3]``.
        work_size: long side GrabCut runs at (its cost grows faster than the pixel
            count: about 0.2 s at 128 px and 1 s at 256 px per photo on one core).
            When the result's area falls outside ``area_range`` at a small size
            (GrabCut sometimes collapses on low-contrast photos), it is retried at 256 px.
    Returns:
        ``(mask, method)`` where method is ``"plain_background"`` or ``"grabcut"``.
    """
    if border_is_plain(image):
        return plain_background_mask(image), "plain_background"
    mask = grabcut_mask(image, long_side=work_size)
    area = (mask > 0).mean()
    if work_size < 256 and not area_range[0] <= area <= area_range[1]:
        mask = grabcut_mask(image, long_side=256)
    return mask, "grabcut"


def find_mask_file(mask_dir: Path, stem: str) -> Path | None:
    """The mask with the same stem as the photo (VITON-HD ``cloth-mask`` convention)."""
    for ext in IMAGE_EXTENSIONS + tuple(e.upper() for e in IMAGE_EXTENSIONS):
        candidate = mask_dir / f"{stem}{ext}"
        if candidate.is_file():
            return candidate
    return None


def load_mask_file(
    path: str | Path, expected_hw: tuple[int, int], max_grey_share: float = 0.05
) -> np.ndarray:
    """Load and validate a user mask file.

    Args:
        path: mask image; garment bright, background dark.
        expected_hw: ``(H, W)`` of its photo.
        max_grey_share: masks with more pixels strictly between dark and bright
            than this share are rejected as not binary (JPEG edge noise is fine).
    Raises:
        BadInputError: unreadable, wrong size, or not binary; ``path`` is the mask file and
            ``code`` is always ``bad_mask`` (a broken mask is not a broken photo).
    """
    try:
        gray = load_gray(path)
    except BadInputError as exc:
        raise BadInputError(path, f"unreadable mask file: {exc.reason}", "bad_mask") from None
    if gray.shape != tuple(expected_hw):
        raise BadInputError(
            path,
            f"mask is {gray.shape[1]}x{gray.shape[0]} but its image is {expected_hw[1]}x{expected_hw[0]}",
            "bad_mask",
        )
    grey = ((gray > 32) & (gray < 223)).mean()
    if grey > max_grey_share:
        raise BadInputError(
            path,
            f"mask is not binary: {grey:.0%} of its pixels are grey (expected black background, white garment)",
            "bad_mask",
        )
    return ((gray >= 128).astype(np.uint8)) * 255


@dataclass
class MaskCheck:
    """Plausible garment area, as a share of the photo."""

    min_area: float = 0.10
    max_area: float = 0.90

    def __call__(self, mask: np.ndarray, path: str | Path, source: str) -> float:
        area = float((mask > 0).mean())
        if area < self.min_area or area > self.max_area:
            what = (
                "no garment detected"
                if area < self.min_area
                else "mask covers almost the whole photo"
            )
            raise BadInputError(
                path,
                f"{what}: {source} mask covers {area:.1%} of the image "
                f"(plausible range {self.min_area:.0%}-{self.max_area:.0%})",
                "no_garment" if area < self.min_area else "implausible_mask",
            )
        return area
