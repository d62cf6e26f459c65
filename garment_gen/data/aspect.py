"""Frame aspects: ``"W:H"`` text -> frame size in pixels.

An aspect is written ``"W:H"``: ``"1:1"`` (square, the default) or ``"3:4"`` (portrait, the
shape of most garment product photos). ``resolution`` is always the frame's HEIGHT (its long
side); the width is ``resolution * W / H``, so ``"3:4"`` at 64 px is 64 high and 48 wide
(arrays ``[64, 48]``, PIL size ``(48, 64)``).
"""

from __future__ import annotations

ASPECTS: dict[str, tuple[int, int]] = {"1:1": (1, 1), "3:4": (3, 4)}
DEFAULT_ASPECT = "1:1"
VALID_ASPECTS = ", ".join(ASPECTS)  # "1:1, 3:4", for error messages


def parse_aspect(text: str) -> tuple[int, int]:
    """``"3:4"`` -> ``(3, 4)`` (width, height).

    Raises:
        ValueError: anything but a valid aspect; the message is ``must be one of 1:1, 3:4``,
            so a caller can prefix the key: ``aspect=2:3: must be one of 1:1, 3:4``.
    """
    if not isinstance(text, str) or text not in ASPECTS:
        raise ValueError(f"must be one of {VALID_ASPECTS}")
    return ASPECTS[text]


def frame_size(resolution: int, aspect: str = DEFAULT_ASPECT) -> tuple[int, int]:
    """``(height, width)`` in pixels of a frame ``resolution`` high at ``aspect``.

    Raises:
        ValueError: an invalid aspect, or a resolution whose width would not be whole.
    """
    w, h = parse_aspect(aspect)
    if resolution * w % h:
        raise ValueError(
            f"resolution {resolution} at aspect {w}:{h} gives a width of "
            f"{resolution * w / h:g} px; use a resolution divisible by {h}"
        )
    return int(resolution), int(resolution * w // h)
