"""The garment model: shape encoder + texture encoder + the pretrained generator, as one module.

``GarmentModel(shape_mask, texture_img) -> image``. The encoders write the generator's W+
styles (and, with feature injection, spatial feature maps added into its activations); the
generator draws the garment. The segmenter (optional) finds masks of garment photos given as
shapes and scores the shape of outputs; the data settings say how inputs are aligned
(``resolution``, ``aspect``, ``margin``, ``background``), exactly as the training data was.

Training (``EncodersModule``), inference (``GarmentGenerator``), export (ONNX / TorchScript)
and evaluation all hold this module; none of them rebuilds "encoders -> synthesis" itself.
It is saved and loaded with :mod:`garment_gen.networks.serialization` (kind
``garment_model``). Plain PyTorch; never imports Lightning or Hydra.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from garment_gen.data.aspect import frame_size
from garment_gen.networks.encoders import GarmentEncoders
from garment_gen.networks.segmenter import Segmenter
from garment_gen.networks.stylegan2 import Generator

DEFAULT_DATA = {"margin": 0.06, "background": [255, 255, 255]}
TUNE_CHOICES = ("none", "torgb", "all")
TEXTURE_FITS = ("none", "shape")
COMPOSITES = ("none", "mask")


class GarmentModel(nn.Module):
    """Encoders + generator (+ segmenter) + alignment settings.

    Args:
        generator: the pretrained StyleGAN2 :class:`Generator` (frozen unless
            ``tune_generator`` says otherwise).
        encoders: :class:`GarmentEncoders` sized for it.
        segmenter: optional :class:`Segmenter` (frozen).
        data: alignment settings: ``resolution`` and ``aspect`` (default the generator's),
            ``margin``, ``background`` (RGB 0-255).
        tune_generator: which generator weights training may change: ``none`` (the method:
            frozen), ``torgb`` (the toRGB layers only) or ``all`` (PTI-style). Beyond the
            method; recorded so a tuned model says so.
        texture_fit: ``none`` (the texture encoder reads the texture as given) or ``shape``:
            the texture's garment is first stretched onto the shape's box and cut to the mask
            (:func:`fit_texture_to_shape`), so the spatial texture features arrive where the
            garment's parts are; for a texture of the same garment (training) it is close to
            the identity.
        composite: ``none`` (the generator's image as drawn) or ``mask``: the drawn garment is
            kept inside the shape mask and the background colour painted outside, so the output
            has exactly the silhouette asked for (training then spends nothing on the
            background). Applied in :meth:`forward` and :meth:`composite_image`.
    """

    def __init__(
        self,
        generator: Generator,
        encoders: GarmentEncoders,
        segmenter: Segmenter | None = None,
        data: dict[str, Any] | None = None,
        tune_generator: str = "none",
        texture_fit: str = "none",
        composite: str = "none",
    ):
        super().__init__()
        if composite not in COMPOSITES:
            raise ValueError(f"composite must be one of {', '.join(COMPOSITES)}, got {composite!r}")
        self.composite = composite
        if texture_fit not in TEXTURE_FITS:
            raise ValueError(
                f"texture_fit must be one of {', '.join(TEXTURE_FITS)}, got {texture_fit!r}"
            )
        self.texture_fit = texture_fit
        if tune_generator not in TUNE_CHOICES:
            raise ValueError(
                f"tune_generator must be one of {', '.join(TUNE_CHOICES)}, got {tune_generator!r}"
            )
        if encoders.num_ws != generator.num_ws or encoders.w_dim != generator.w_dim:
            raise ValueError(
                f"encoders write {encoders.num_ws} x {encoders.w_dim} styles, the generator "
                f"takes {generator.num_ws} x {generator.w_dim}"
            )
        self.generator = generator
        self.encoders = encoders
        self.segmenter = segmenter
        if getattr(encoders, "aspect", "1:1") != getattr(generator, "aspect", "1:1"):
            raise ValueError(
                f"the encoders read {encoders.aspect} images, the generator draws "
                f"{generator.aspect} ones"
            )
        self.data = {
            **DEFAULT_DATA,
            "resolution": int(generator.resolution),
            "aspect": getattr(generator, "aspect", "1:1"),
            **(data or {}),
        }
        self.data["background"] = [int(c) for c in self.data["background"]]
        self.tune_generator = tune_generator
        self.freeze()

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_generator(
        cls,
        generator: Generator,
        segmenter: Segmenter | None = None,
        data: dict[str, Any] | None = None,
        tune_generator: str = "none",
        texture_fit: str = "none",
        composite: str = "none",
        **encoder_kwargs: Any,
    ) -> GarmentModel:
        """New encoders sized for ``generator`` (``encoder_kwargs`` go to :class:`GarmentEncoders`)."""
        encoders = GarmentEncoders.from_generator(generator, **encoder_kwargs)
        return cls(generator, encoders, segmenter, data, tune_generator, texture_fit, composite)

    def get_config(self) -> dict[str, Any]:
        """Plain values that rebuild the architecture (:meth:`from_config`); weights are in the state dict."""
        return {
            "generator": self.generator.get_config(),
            "encoders": self.encoders.get_config(),
            "segmenter": None if self.segmenter is None else self.segmenter.get_config(),
            "data": dict(self.data),
            "tune_generator": self.tune_generator,
            "texture_fit": self.texture_fit,
            "composite": self.composite,
        }

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> GarmentModel:
        seg = config.get("segmenter")
        return cls(
            Generator(**config["generator"]),
            GarmentEncoders(**config["encoders"]),
            Segmenter(**seg) if seg else None,
            config.get("data"),
            config.get("tune_generator", "none"),
            config.get("texture_fit", "none"),
            config.get("composite", "none"),
        )

    # ------------------------------------------------------------------ what training may change

    def freeze(self) -> GarmentModel:
        """Frozen for real: the segmenter always, the generator except what ``tune_generator`` frees."""
        self.generator.requires_grad_(False)
        if self.tune_generator == "all":
            self.generator.synthesis.requires_grad_(True)
        elif self.tune_generator == "torgb":
            for blk in self.generator.synthesis.blocks:
                blk.torgb.requires_grad_(True)
        if self.segmenter is not None:
            self.segmenter.requires_grad_(False)
        return self

    def train(self, mode: bool = True) -> GarmentModel:
        super().train(mode)
        # The generator's training mode would turn on style mixing; BatchNorm statistics of the
        # segmenter must not move: both stay in eval mode whatever the caller does.
        self.generator.eval()
        if self.segmenter is not None:
            self.segmenter.eval()
        return self

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    # ------------------------------------------------------------------ forward

    @property
    def resolution(self) -> int:
        """Height of the images (and width, when square)."""
        return int(self.data["resolution"])

    @property
    def aspect(self) -> str:
        """``"W:H"`` of the images: ``"1:1"`` or ``"3:4"`` (portrait)."""
        return str(self.data.get("aspect", "1:1"))

    @property
    def size(self) -> tuple[int, int]:
        """``(height, width)`` of the inputs and outputs."""
        return frame_size(self.resolution, self.aspect)

    def styles(
        self, shape_mask: torch.Tensor, texture_img: torch.Tensor, truncation_psi: float = 1.0
    ) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        """``(ws [B, num_ws, w_dim], {r: feature map})`` for aligned inputs (see :meth:`forward`).

        ``truncation_psi < 1`` pulls ws toward ``w_avg`` (the average garment).
        """
        texture_img = self.prepare_texture(shape_mask, texture_img)
        ws, features = self.encoders.encode(shape_mask, texture_img)
        if truncation_psi != 1.0:
            ws = self.encoders.w_avg.to(ws.dtype).lerp(ws, truncation_psi)
        return ws, features

    def prepare_texture(self, shape_mask: torch.Tensor, texture_img: torch.Tensor) -> torch.Tensor:
        """The texture as the texture encoder reads it (fitted to the shape with ``texture_fit``)."""
        if self.texture_fit == "shape":
            return fit_texture_to_shape(shape_mask, texture_img, self.data["background"])
        return texture_img

    def synthesize(
        self,
        ws: torch.Tensor,
        features: dict[int, torch.Tensor] | None = None,
        noise_mode: str = "const",
    ) -> torch.Tensor:
        """Draw ``ws`` (with injected ``features``): image ``[B, 3, H, W]`` roughly in ``[-1, 1]``."""
        return self.generator.synthesis(ws, noise_mode=noise_mode, features=features)

    def forward(
        self,
        shape_mask: torch.Tensor,
        texture_img: torch.Tensor,
        truncation_psi: float = 1.0,
        noise_mode: str = "const",
    ) -> torch.Tensor:
        """Mask float {0, 1} ``[B, 1, H, W]`` + texture float [-1, 1] ``[B, 3, H, W]`` -> image ``[B, 3, H, W]``.

        The output is not clamped (training wants the gradient); clamp to ``[-1, 1]`` to view.
        """
        ws, features = self.styles(shape_mask, texture_img, truncation_psi)
        return self.composite_image(self.synthesize(ws, features, noise_mode), shape_mask)

    def composite_image(self, img: torch.Tensor, shape_mask: torch.Tensor) -> torch.Tensor:
        """``img`` inside ``shape_mask``, the background colour outside (``composite=mask``);
        ``img`` unchanged with ``composite=none``."""
        if self.composite == "none":
            return img
        bg = torch.tensor(self.data["background"], dtype=img.dtype, device=img.device)
        bg = (bg / 127.5 - 1).view(1, -1, 1, 1)
        m = shape_mask.to(img.dtype)
        return img * m + bg * (1 - m)

    def extra_repr(self) -> str:
        return (
            f"resolution={self.resolution}, aspect={self.aspect}, injection={self.encoders.injection}, "
            f"tune_generator={self.tune_generator}, texture_fit={self.texture_fit}, "
            f"composite={self.composite}, "
            f"segmenter={self.segmenter is not None}"
        )


def _box(fg: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Bounding boxes of bool masks ``[B, H, W]`` as pixel edges ``(y0, y1, x0, x1)`` ``[B]`` each
    (end exclusive); an empty mask gives the whole image. Tensor ops only (traceable)."""
    b, h, w = fg.shape
    rows, cols = fg.any(2), fg.any(1)
    empty = ~rows.any(1)
    rows = rows | empty[:, None]
    cols = cols | empty[:, None]
    y0 = rows.float().argmax(1)
    y1 = h - rows.flip(1).float().argmax(1)
    x0 = cols.float().argmax(1)
    x1 = w - cols.flip(1).float().argmax(1)
    return y0.float(), y1.float(), x0.float(), x1.float()


def fit_texture_to_shape(
    shape_mask: torch.Tensor,
    texture_img: torch.Tensor,
    background: tuple[int, int, int] | list[int] = (255, 255, 255),
    tolerance: int = 16,
) -> torch.Tensor:
    """The texture's garment stretched onto the shape: ``[B, 3, H, W]`` in ``[-1, 1]``.

    The bounding box of the texture's garment pixels (those differing from the background by
    more than ``tolerance`` levels; the whole image for a swatch that fills the frame) is
    resampled onto the bounding box of ``shape_mask`` (float ``{0, 1}`` ``[B, 1, H, W]``), and
    only the pixels inside the mask are kept: B's fabric cut in A's silhouette, with its layout
    (stripes, a print's regions) where the garment's parts are. For a texture made from the
    same garment (training) it is close to the identity. Tensor ops only: batched,
    differentiable in the texture and traceable for export.
    """
    bg = torch.tensor(list(background), dtype=texture_img.dtype, device=texture_img.device)
    bg = (bg / 127.5 - 1).view(1, 3, 1, 1)
    fg = (texture_img - bg).abs().amax(1) > tolerance / 127.5
    ty0, ty1, tx0, tx1 = _box(fg)
    my0, my1, mx0, mx1 = _box(shape_mask[:, 0] > 0.5)
    h, w = texture_img.shape[-2:]
    # normalised coordinates (align_corners=False): pixel edge e -> 2 e / size - 1
    sy = (ty1 - ty0) / (my1 - my0).clamp(min=1)
    sx = (tx1 - tx0) / (mx1 - mx0).clamp(min=1)
    oy = (ty0 - my0 * sy) * 2 / h + sy - 1
    ox = (tx0 - mx0 * sx) * 2 / w + sx - 1
    # the affine grid x' = sx x + ox, y' = sy y + oy over pixel centres, built separably
    # (ONNX opset 17 has grid_sample but not affine_grid)
    xs = (torch.arange(w, dtype=sx.dtype, device=sx.device) * 2 + 1) / w - 1
    ys = (torch.arange(h, dtype=sy.dtype, device=sy.device) * 2 + 1) / h - 1
    gx = (sx[:, None] * xs + ox[:, None])[:, None, :].expand(-1, h, -1)
    gy = (sy[:, None] * ys + oy[:, None])[:, :, None].expand(-1, -1, w)
    grid = torch.stack([gx, gy], -1)  # [B, H, W, 2]
    fitted = torch.nn.functional.grid_sample(
        texture_img, grid, mode="bilinear", padding_mode="border", align_corners=False
    )
    return torch.where(shape_mask > 0.5, fitted, bg.expand_as(fitted))
