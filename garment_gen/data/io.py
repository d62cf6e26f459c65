"""Reading user images safely.

Every reader here turns the many ways an input can be bad (empty, truncated,
not an image, too large, unexpected mode) into a :class:`BadInputError` that
names the file and the reason, so callers can skip it and go on.
"""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from garment_gen.errors import BadInputError
from garment_gen.utils.atomic import atomic_path

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")
DEFAULT_MAX_PIXELS = 40_000_000
# A photo whose long side is more than this many times its short side is a strip, not a
# garment photo; the mask methods cannot work on it (GrabCut needs a few rows to sample).
MAX_ASPECT = 20


def _open(path: Path, max_pixels: int) -> Image.Image:
    if not path.is_file():
        raise BadInputError(path, "file not found", "missing")
    size = path.stat().st_size
    if size == 0:
        raise BadInputError(path, "empty file (0 bytes)", "empty_file")
    try:
        # Pillow's own bomb check fires only at 2x its limit and warns below
        # that; we check the header size ourselves before decoding anything.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            old_limit = Image.MAX_IMAGE_PIXELS
            Image.MAX_IMAGE_PIXELS = None
            try:
                img = Image.open(path)
            finally:
                Image.MAX_IMAGE_PIXELS = old_limit
    except UnidentifiedImageError:
        raise BadInputError(
            path, "not a readable image (unknown or corrupt format)", "not_image"
        ) from None
    except OSError as exc:
        raise BadInputError(path, f"cannot open image: {exc}", "corrupt") from None
    w, h = img.size
    if w * h > max_pixels:
        img.close()
        raise BadInputError(
            path,
            f"image is {w}x{h} = {w * h:,} pixels, over the limit of {max_pixels:,} "
            "(possible decompression bomb; raise max_pixels if it is genuine)",
            "too_large",
        )
    if w < 8 or h < 8:
        img.close()
        raise BadInputError(path, f"image is only {w}x{h} pixels", "too_small")
    if max(w, h) > MAX_ASPECT * min(w, h):
        img.close()
        raise BadInputError(
            path,
            f"image too thin: {w}x{h} px (one side over {MAX_ASPECT} times the other; not a garment photo)",
            "too_thin",
        )
    try:
        img.load()
    except (OSError, SyntaxError, ValueError) as exc:
        raise BadInputError(path, f"corrupt or truncated image: {exc}", "corrupt") from None
    return img


def _to_8bit(img: Image.Image) -> Image.Image:
    """A 16-bit, 32-bit integer or float single-channel image as 8-bit ``L``, scaled, not clipped.

    Pillow's own ``convert("L")`` / ``convert("RGB")`` clips such values at 255, which turns
    a normal 16-bit photo all white. ``I;16*`` is scaled by 255/65535. ``I`` and ``F`` carry no
    bit depth: values within 0-255 are taken as 8-bit, within 0-65535 as 16-bit, a float image
    within 0-1 as 0-1; anything else is stretched from its minimum to its maximum.
    """
    if img.mode not in ("I", "F") and not img.mode.startswith("I;16"):
        return img
    arr = np.asarray(img).astype(np.float64)
    lo, hi = float(arr.min()), float(arr.max())
    if img.mode.startswith("I;16"):
        arr = arr / 257.0
    elif img.mode == "F" and lo >= 0 and hi <= 1:
        arr = arr * 255.0
    elif lo >= 0 and hi <= 255:
        pass
    elif img.mode == "I" and lo >= 0 and hi <= 65535:
        arr = arr / 257.0
    else:
        arr = (arr - lo) * (255.0 / max(hi - lo, 1e-12))
    arr = np.nan_to_num(arr, nan=0.0)
    return Image.fromarray(np.clip(np.round(arr), 0, 255).astype(np.uint8), "L")


def load_rgb(
    path: str | Path,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    background: tuple[int, int, int] = (255, 255, 255),
) -> np.ndarray:
    """Load an image as ``uint8`` RGB ``[H, W, 3]``.

    EXIF orientation is applied, transparency is composited on ``background``
    and grayscale/palette/CMYK images are converted (16-bit and float greyscale
    scaled to 8 bit, see :func:`_to_8bit`).

    Raises:
        BadInputError: the file is missing, empty, corrupt, truncated, not an
            image, or over ``max_pixels``.
    """
    path = Path(path)
    img = _open(path, max_pixels)
    try:
        img = ImageOps.exif_transpose(img)
    except Exception:  # noqa: BLE001 - a broken EXIF block must not lose the image
        pass
    img = _to_8bit(img)
    if img.mode == "P":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "RGB" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (*background, 255))
        canvas.alpha_composite(rgba)
        img = canvas
    arr = np.asarray(img.convert("RGB"), dtype=np.uint8)
    return np.ascontiguousarray(arr)


def load_gray(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Load an image as ``uint8`` single-channel ``[H, W]`` (EXIF orientation applied)."""
    path = Path(path)
    img = _open(path, max_pixels)
    try:
        img = ImageOps.exif_transpose(img)
    except Exception:  # noqa: BLE001
        pass
    img = _to_8bit(img)
    if img.mode in ("RGBA", "LA"):
        # A mask given with transparency: use the alpha channel when it carries
        # the shape, else the luminance.
        alpha = np.asarray(img.getchannel("A"))
        if alpha.min() < 255:
            return np.ascontiguousarray(alpha)
    return np.ascontiguousarray(np.asarray(img.convert("L"), dtype=np.uint8))


def visible_share(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> float:
    """Share of the image's pixels that are not fully transparent (1.0 without an alpha channel).

    Raises:
        BadInputError: as :func:`load_rgb`.
    """
    img = _open(Path(path), max_pixels)
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        return float((np.asarray(img.getchannel("A")) > 0).mean())
    if "transparency" in img.info and img.mode in ("RGB", "L"):
        return float((np.asarray(img.convert("RGBA").getchannel("A")) > 0).mean())
    return 1.0


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Return the hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def save_png_atomic(arr: np.ndarray, path: str | Path) -> None:
    """Write ``arr`` (``uint8`` HxW or HxWx3) as PNG via a temporary file and rename."""
    with atomic_path(path) as tmp:
        Image.fromarray(arr).save(tmp, format="PNG")
