"""Several garments for one (shape, texture) pair: seeded noise plus fine-layer style mixing.

The encoders turn a mask and a texture into W+ codes ``ws [1, num_ws, w_dim]``. The coarse
rows decide the silhouette; the rows of the finest resolutions decide small detail, except
the very last one, which only feeds the final ToRGB layer and so sets the output colours
(measured on the shipped model: mixing it shifts the mean garment colour 3-4 times more than
mixing the three rows before it). A variation keeps the coarse rows and the last row, moves
the ``fine_layers`` rows before the last a fraction ``strength`` toward the W of a random
garment drawn by the generator's own mapping network (pixel2style2pixel's multi-modal
synthesis), and draws the image with seeded random noise. With ``keep_colours`` the mean
colour inside the shape mask is then set back to that of the unmixed garment. The shape and
the colours stay; the details differ.
"""

from __future__ import annotations

import torch

from garment_gen.errors import GarmentGenError


def mix_fine_styles(
    ws: torch.Tensor,
    mapping: torch.nn.Module | None,
    z_dim: int,
    n: int,
    fine_layers: int,
    strength: float,
    generator: torch.Generator,
) -> torch.Tensor:
    """``ws [1, num_ws, w_dim]`` -> ``[n, num_ws, w_dim]`` with the fine rows mixed.

    The mixed rows are the ``fine_layers`` rows before the last one (``num_ws - 1 - k`` to
    ``num_ws - 2``); the last row (final ToRGB: the colours) and the coarse rows are kept.
    Mixed row ``i`` of variation ``j`` is ``lerp(ws[i], w_j[i], strength)`` where
    ``w_j = mapping(z_j)`` is a random garment's W (``z_j`` drawn from ``generator``). Without
    a mapping network, ``w_j`` is ``ws`` plus Gaussian noise of the code's spread.
    """
    num_ws = ws.shape[1]
    k = max(0, min(int(fine_layers), num_ws - 1))
    out = ws.expand(n, -1, -1).clone()
    if k == 0 or strength == 0:
        return out
    rows = slice(num_ws - 1 - k, num_ws - 1)
    z = torch.randn(n, z_dim, generator=generator).to(ws.device, ws.dtype)
    if mapping is not None:
        w_rand = mapping(z)[:, rows]
    else:
        spread = ws.std(dim=(1, 2), keepdim=True)
        noise = torch.randn(out[:, rows].shape, generator=generator).to(ws.device, ws.dtype)
        w_rand = out[:, rows] + spread * noise
    out[:, rows] = out[:, rows].lerp(w_rand.to(ws.dtype), float(strength))
    return out


def match_mean_colour(
    images: torch.Tensor, reference: torch.Tensor, shape_mask: torch.Tensor
) -> torch.Tensor:
    """Shift each image's mean colour inside ``shape_mask`` to ``reference``'s.

    ``images [n, 3, R, R]`` and ``reference [1, 3, R, R]`` in ``[-1, 1]``, ``shape_mask``
    ``[1, 1, R, R]`` in ``{0, 1}``; returns ``[n, 3, R, R]`` clamped to ``[-1, 1]``. The
    background (outside the mask) is left as drawn.
    """
    m = shape_mask.to(images.dtype)
    area = m.sum().clamp_min(1.0)
    mean = (images * m).sum(dim=(2, 3), keepdim=True) / area
    ref = (reference * m).sum(dim=(2, 3), keepdim=True) / area
    return (images + (ref - mean) * m).clamp(-1, 1)


@torch.no_grad()
def generate_variations(
    gen,
    shape_mask: torch.Tensor,
    texture_img: torch.Tensor,
    n: int = 4,
    seed: int = 0,
    truncation_psi: float = 1.0,
    fine_layers: int = 3,
    strength: float = 0.6,
    keep_colours: bool = True,
) -> torch.Tensor:
    """``n`` different garments for one pair, as one forward pass.

    Args:
        gen: a :class:`garment_gen.inference.GarmentGenerator`.
        shape_mask: aligned mask float ``[1, 1, R, R]`` in ``{0, 1}`` (``gen.shape_tensor``).
        texture_img: aligned texture float ``[1, 3, R, R]`` in ``[-1, 1]`` (``gen.texture_tensor``).
        n: number of variations (>= 1).
        seed: the same seed gives the same variations; variation ``k`` of seed ``s`` does not
            depend on ``n`` for the style mixing (the noise does).
        truncation_psi: as in ``generate_tensors`` (< 1 pulls toward the average garment).
        fine_layers: how many fine W+ rows (before the last) are mixed (0 = noise only).
        strength: how far those rows move toward a random garment's W, in ``[0, 1]``.
        keep_colours: set each variation's mean colour inside the mask back to that of the
            unmixed code (drawn in the same pass as an extra image).

    Returns:
        images ``[n, 3, R, R]`` in ``[-1, 1]``.
    """
    if n < 1:
        raise GarmentGenError(f"variations must be >= 1, got {n}")
    if not 0.0 <= strength <= 1.0:
        raise GarmentGenError(f"variation strength must be in [0, 1], got {strength}")
    if shape_mask.shape[0] != 1 or texture_img.shape[0] != 1:
        raise GarmentGenError("generate_variations takes one shape and one texture")
    device = gen.device
    # styles and (with feature injection) the fused feature maps, through the one garment model
    ws, features = gen.model.styles(shape_mask.to(device), texture_img.to(device), truncation_psi)
    rng = torch.Generator().manual_seed(int(seed))
    g = gen.generator
    ws_n = mix_fine_styles(
        ws,
        getattr(g, "mapping", None),
        int(getattr(g, "z_dim", ws.shape[2])),
        n,
        fine_layers,
        strength,
        rng,
    )
    devices = [device] if device.type == "cuda" else []
    if keep_colours:  # the unmixed code rides along as the colour reference
        ws_n = torch.cat([ws_n, ws])
    rows = ws_n.shape[0]
    features = {r: f.expand(rows, -1, -1, -1) for r, f in features.items()}
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(int(seed))
        img = gen.model.synthesize(ws_n, features, noise_mode="random")
    img = gen.model.composite_image(img, shape_mask.to(device)).clamp(-1, 1)
    if not keep_colours:
        return img
    return match_mean_colour(img[:n], img[n:], shape_mask.to(device))
