"""Shape and texture encoders that write the W+ style inputs of a frozen StyleGAN2 generator.

The method: a shape encoder reads the garment mask, a texture encoder reads a texture image;
both are CNNs of the same depth, every layer of each yields one style vector, the two vectors
of a layer are added, and the ``num_ws`` fused vectors (plus the generator's ``w_avg``) drive
``generator.synthesis(ws)``.

Design choice: by default an encoder has exactly ``num_layers == num_ws`` stages, so each stage
yields exactly one style vector (``num_layers`` may be set lower or higher; heads are then
spread over the stages by the same rule). The stages mirror the synthesis network:

* Style row ``i`` is read by stage ``num_layers - 1 - floor(i * num_layers / num_ws)``. Row 0
  (the 4 px synthesis layer, coarse pose/silhouette) reads the deepest, coarsest stage; the
  last row (the full-resolution toRGB, colour and fine detail) reads the shallowest one.
* Stride-2 stages are spaced evenly backwards from the deepest stage until the feature map is
  4 px. With the generator's own ``num_ws`` (``2 * log2(res) - 2``) and input resolution, the
  spacing is every second stage, so the stage feeding a style row has the spatial size of the
  synthesis layer that row drives (e.g. 64 px, 10 rows: stages 0-2 at 64 px, 3-4 at 32, ...,
  9 at 4).
* Each stage is a small residual block: ``conv3x3 (stride 1|2) -> GroupNorm -> LeakyReLU`` plus
  a skip (identity, or 2x2 average pool and/or 1x1 conv). GroupNorm removes each group's mean
  and scale; the un-normalised skip path keeps absolute colour and brightness, which the
  texture encoder must pass on. GroupNorm is per sample, so a sample's ws never depend on the
  rest of the batch.
* A style head pools its stage's features to ``pool_size x pool_size`` and maps them with one
  linear layer to ``w_dim``. The texture encoder pools globally (``pool_size=1``): its image is
  not aligned with the garment and may be occluded, so only position-free statistics should
  count. The shape encoder keeps a coarse 4x4 layout by default (``pool_size=4``): where the
  sleeves and hem are is the information it exists to carry, and a global average would blur
  it into position-free statistics.
* The last linear of every head starts with small weights and zero bias, so the initial ws are
  close to ``w_avg`` (the generator's mean image) and training starts from a stable output.

Plain PyTorch; never imports Lightning or Hydra.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from garment_gen.data.aspect import DEFAULT_ASPECT, frame_size, parse_aspect
from garment_gen.errors import ConfigError

__all__ = [
    "ConvEncoder",
    "EncoderConfigError",
    "GarmentEncoders",
    "ShapeEncoder",
    "TextureEncoder",
    "downsample_schedule",
    "head_stage_index",
    "stage_sizes",
]

_LRELU_SLOPE = 0.2
_MIN_FEATURE_SIZE = 4
# Small enough that initial ws stay within a few hundredths of w_avg, large enough that the
# encoder body gets a useful gradient from the first step.
_DEFAULT_HEAD_INIT_STD = 0.01


class EncoderConfigError(ConfigError, ValueError):
    """An encoder hyper-parameter is invalid."""


def _check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise EncoderConfigError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value


def downsample_schedule(num_layers: int, resolution: int) -> list[bool]:
    """Which of ``num_layers`` stages use stride 2 for a ``resolution`` px input.

    Halves the map until it is 4 px (``ceil(log2(resolution / 4))`` halvings), placing the
    stride-2 stages evenly spaced backwards from the last stage. With fewer stages than
    halvings every stage downsamples and the deepest map stays above 4 px.
    """
    halvings, size = 0, resolution
    while size > _MIN_FEATURE_SIZE:
        size = (size + 1) // 2
        halvings += 1
    if halvings >= num_layers:
        return [True] * num_layers
    down = [False] * num_layers
    if halvings:
        step = num_layers // halvings
        for j in range(halvings):
            down[num_layers - 1 - j * step] = True
    return down


def stage_sizes(downsample: list[bool], resolution: int) -> list[int]:
    """Side of each stage's output map for a ``resolution`` px input."""
    sizes, size = [], resolution
    for down in downsample:
        if down:
            size = (size + 1) // 2
        sizes.append(size)
    return sizes


def head_stage_index(ws_index: int, num_ws: int, num_layers: int) -> int:
    """The stage whose features style row ``ws_index`` reads: coarse rows read deep stages.

    ``num_layers - 1 - floor(ws_index * num_layers / num_ws)``; one to one (reversed) when
    ``num_layers == num_ws``.
    """
    return num_layers - 1 - (ws_index * num_layers) // num_ws


def _num_groups(channels: int) -> int:
    # At least 4 channels per group (a group of 1 is instance norm, which erases every
    # channel's mean) and at most 32 groups.
    return math.gcd(channels, max(1, min(32, channels // 4)))


class _Stage(nn.Module):
    """Residual stage: ``lrelu(gn(conv3x3(x))) + skip(x)``; ``[B, C_in, H, W] -> [B, C_out, H', W']``."""

    def __init__(self, in_channels: int, out_channels: int, downsample: bool) -> None:
        super().__init__()
        self.downsample = downsample
        self.conv = nn.Conv2d(
            in_channels, out_channels, 3, stride=2 if downsample else 1, padding=1, bias=False
        )
        self.norm = nn.GroupNorm(_num_groups(out_channels), out_channels)
        self.skip = (
            nn.Conv2d(in_channels, out_channels, 1, bias=False)
            if in_channels != out_channels
            else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.leaky_relu(self.norm(self.conv(x)), _LRELU_SLOPE)
        if self.downsample:
            # ceil_mode matches the stride-2 conv's output size, ceil(H / 2), for odd sizes.
            x = F.avg_pool2d(x, 2, ceil_mode=True)
        return out + self.skip(x)


class _StyleHead(nn.Module):
    """Pool a feature map to ``pool_size`` (``(h, w)``) and map it linearly: ``[B, C, H, W] -> [B, w_dim]``."""

    def __init__(
        self, channels: int, w_dim: int, pool_size: tuple[int, int], init_std: float
    ) -> None:
        super().__init__()
        self.pool_size = tuple(pool_size)
        self.linear = nn.Linear(channels * self.pool_size[0] * self.pool_size[1], w_dim)
        nn.init.normal_(self.linear.weight, std=init_std / math.sqrt(self.linear.in_features))
        nn.init.zeros_(self.linear.bias)

    def forward(self, feat: torch.Tensor) -> torch.Tensor:
        pooled = F.adaptive_avg_pool2d(feat, self.pool_size)
        return self.linear(pooled.flatten(1))


class ConvEncoder(nn.Module):
    """CNN pyramid with one style head per W+ row: ``[B, C, R, R] -> ws [B, num_ws, w_dim]``.

    See the module docstring for the stage layout and the head-to-stage rule. The returned ws
    are offsets; :class:`GarmentEncoders` adds the shape and texture offsets and ``w_avg``.

    Args:
        in_channels: input channels (1 for a mask, 3 for an RGB image).
        num_ws: number of W+ rows (the generator's ``num_ws``).
        w_dim: style vector size (the generator's ``w_dim``).
        resolution: input height ``R`` in px (and width, unless ``aspect`` is not ``"1:1"``).
        num_layers: number of stages; None means ``num_ws`` (one style vector per stage).
        base_channels: channels of the first stage; doubled at every stride-2 stage.
        max_channels: cap on the channels of any stage.
        pool_size: side of the pooled grid each head reads (1 = global average pooling); for a
            portrait input the grid keeps the aspect where it can (4 -> 4 x 3 at ``"3:4"``).
        head_init_std: scale of the heads' initial weights (outputs start near zero).
        aspect: ``"W:H"`` of the input (:mod:`garment_gen.data.aspect`): ``"3:4"`` takes
            ``[B, C, R, 3R/4]``; stages halve both sides, so feature maps match the generator's.
    """

    def __init__(
        self,
        in_channels: int,
        num_ws: int,
        w_dim: int,
        resolution: int,
        num_layers: int | None = None,
        base_channels: int = 32,
        max_channels: int = 256,
        pool_size: int = 1,
        head_init_std: float = _DEFAULT_HEAD_INIT_STD,
        styles: bool = True,
        feature_channels: dict[int, int] | None = None,
        aspect: str = DEFAULT_ASPECT,
    ) -> None:
        super().__init__()
        self.in_channels = _check_int("in_channels", in_channels, 1)
        self.num_ws = _check_int("num_ws", num_ws, 1)
        self.w_dim = _check_int("w_dim", w_dim, 1)
        self.resolution = _check_int("resolution", resolution, _MIN_FEATURE_SIZE)
        self.num_layers = _check_int("num_layers", num_ws if num_layers is None else num_layers, 1)
        self.base_channels = _check_int("base_channels", base_channels, 1)
        self.max_channels = _check_int("max_channels", max_channels, 1)
        self.pool_size = _check_int("pool_size", pool_size, 1)
        if not (math.isfinite(head_init_std) and head_init_std > 0):
            raise EncoderConfigError(f"head_init_std must be > 0, got {head_init_std!r}")
        self.head_init_std = float(head_init_std)
        try:
            self.height, self.width = frame_size(self.resolution, aspect)
        except ValueError as exc:
            raise EncoderConfigError(f"aspect={aspect!r}: {exc}") from None
        self.aspect = aspect
        aw, ah = parse_aspect(aspect)
        p = self.pool_size
        self.pool_hw = (p, p * aw // ah) if p * aw % ah == 0 else (p, p)

        self.downsample = downsample_schedule(self.num_layers, self.resolution)
        self.stages = nn.ModuleList()
        self.stage_channels: list[int] = []
        channels, prev, halvings = self.base_channels, self.in_channels, 0
        for down in self.downsample:
            halvings += int(down)
            channels = min(self.base_channels * 2**halvings, self.max_channels)
            self.stages.append(_Stage(prev, channels, down))
            self.stage_channels.append(channels)
            prev = channels

        self.styles = bool(styles)
        self.head_stage = [head_stage_index(i, self.num_ws, self.num_layers) for i in range(num_ws)]
        self.heads = nn.ModuleList(
            _StyleHead(self.stage_channels[s], self.w_dim, self.pool_hw, self.head_init_std)
            for s in (self.head_stage if self.styles else [])
        )
        # Spatial feature heads: for each injected resolution r, a zero-initialised 1x1 conv
        # from the deepest stage whose map is r x r to the generator's channels at r.
        self.feature_channels = {int(r): int(c) for r, c in (feature_channels or {}).items()}
        sizes = stage_sizes(self.downsample, self.resolution)
        self.feature_stage: dict[int, int] = {}
        for r in self.feature_channels:
            at_r = [k for k, size in enumerate(sizes) if size == r]
            if not at_r:
                raise EncoderConfigError(
                    f"no encoder stage has {r} x {r} feature maps (stage sizes {sizes}); "
                    "inject at the resolutions the encoder reaches"
                )
            self.feature_stage[r] = at_r[-1]
        self.feature_heads = nn.ModuleDict()
        for r, c in self.feature_channels.items():
            conv = nn.Conv2d(self.stage_channels[self.feature_stage[r]], c, 1)
            nn.init.zeros_(conv.weight)
            nn.init.zeros_(conv.bias)
            self.feature_heads[str(r)] = conv

    def get_config(self) -> dict[str, Any]:
        """Constructor kwargs (ints and floats) that rebuild this encoder's architecture."""
        return {
            "in_channels": self.in_channels,
            "num_ws": self.num_ws,
            "w_dim": self.w_dim,
            "resolution": self.resolution,
            "num_layers": self.num_layers,
            "base_channels": self.base_channels,
            "max_channels": self.max_channels,
            "pool_size": self.pool_size,
            "head_init_std": self.head_init_std,
            "styles": self.styles,
            "feature_channels": dict(self.feature_channels),
            "aspect": self.aspect,
        }

    def _check_input(self, x: torch.Tensor) -> None:
        expected = (self.in_channels, self.height, self.width)
        if x.ndim != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(
                f"{type(self).__name__} expects [B, {expected[0]}, {expected[1]}, {expected[2]}], "
                f"got {list(x.shape)}"
            )

    def per_layer_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The feature map of every stage, shallow to deep: ``num_layers`` tensors ``[B, C_k, H_k, W_k]``."""
        self._check_input(x)
        feats = []
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        return feats

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor | None, dict[int, torch.Tensor]]:
        """``(style offsets [B, num_ws, w_dim] or None, {r: feature map [B, C_r, r, r]})``.

        Style offsets are None when the encoder has no style heads (``styles=False``); the
        feature maps are those of ``feature_channels`` (empty without it).
        """
        feats = self.per_layer_features(x)
        styles = None
        if self.styles:
            styles = torch.stack(
                [head(feats[s]) for head, s in zip(self.heads, self.head_stage, strict=True)], 1
            )
        maps = {
            r: self.feature_heads[str(r)](feats[self.feature_stage[r]])
            for r in self.feature_channels
        }
        return styles, maps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Style offsets ``[B, num_ws, w_dim]`` for an input ``[B, in_channels, R, R]``."""
        styles, _ = self.encode(x)
        if styles is None:
            raise ValueError(f"{type(self).__name__} was built without style heads (styles=False)")
        return styles

    def extra_repr(self) -> str:
        return (
            f"in_channels={self.in_channels}, num_ws={self.num_ws}, w_dim={self.w_dim}, "
            f"resolution={self.resolution}, num_layers={self.num_layers}, pool_size={self.pool_size}"
        )


class _FixedInputEncoder(ConvEncoder):
    """A :class:`ConvEncoder` whose input channels are fixed by the subclass."""

    IN_CHANNELS = 0
    DEFAULT_POOL = 1

    def __init__(
        self,
        num_ws: int,
        w_dim: int,
        resolution: int,
        num_layers: int | None = None,
        base_channels: int = 32,
        max_channels: int = 256,
        pool_size: int | None = None,
        head_init_std: float = _DEFAULT_HEAD_INIT_STD,
        styles: bool = True,
        feature_channels: dict[int, int] | None = None,
        aspect: str = DEFAULT_ASPECT,
    ) -> None:
        super().__init__(
            in_channels=self.IN_CHANNELS,
            num_ws=num_ws,
            w_dim=w_dim,
            resolution=resolution,
            num_layers=num_layers,
            base_channels=base_channels,
            max_channels=max_channels,
            pool_size=self.DEFAULT_POOL if pool_size is None else pool_size,
            head_init_std=head_init_std,
            styles=styles,
            feature_channels=feature_channels,
            aspect=aspect,
        )

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        del config["in_channels"]
        return config


class ShapeEncoder(_FixedInputEncoder):
    """Encoder of the garment mask: float ``{0, 1}`` ``[B, 1, R, R]`` -> ``[B, num_ws, w_dim]``.

    Heads keep a ``pool_size x pool_size`` (default 4x4) layout, so where the garment's parts
    are reaches the styles. Other args as :class:`ConvEncoder`.
    """

    IN_CHANNELS = 1
    DEFAULT_POOL = 4


class TextureEncoder(_FixedInputEncoder):
    """Encoder of the texture image: float ``[-1, 1]`` ``[B, 3, R, R]`` -> ``[B, num_ws, w_dim]``.

    Heads pool globally (``pool_size=1``): the texture image is not aligned with the garment
    and may be occluded, so its styles depend on position-free statistics. Other args as
    :class:`ConvEncoder`.
    """

    IN_CHANNELS = 3
    DEFAULT_POOL = 1


INJECTIONS = ("styles", "features", "both")


class GarmentEncoders(nn.Module):
    """Shape and texture encoders fused per layer: ``(shape_mask, texture_img) -> ws (+ features)``.

    ``ws[:, i] = shape_enc(shape_mask)[:, i] + texture_enc(texture_img)[:, i] (+ w_avg)``, shape
    ``[B, num_ws, w_dim]``, ready for ``generator.synthesis(ws)``. Both encoders have the same
    number of stages and heads. ``w_avg`` is a persistent buffer, so a saved state dict carries
    it; :meth:`get_config` plus the state dict rebuild the model.

    **Feature injection** (``injection="features"`` or ``"both"``): each encoder also yields,
    for every synthesis resolution ``r <= inject_max_resolution``, a spatial feature map
    projected to the generator's channels at ``r`` (zero-initialised 1x1 convs, so training
    starts from the style-only behaviour); the shape and texture maps of a layer are added,
    and :meth:`encode` returns them for ``synthesis(ws, features=...)``. With
    ``injection="features"`` the encoders have no style heads and ws is ``w_avg`` on every row.

    Args:
        num_ws: the generator's number of W+ rows.
        w_dim: the generator's style size.
        resolution: side ``R`` of the mask and texture inputs, in px.
        w_avg: the generator's mean w ``[w_dim]``; None stores zeros (to be filled by
            ``load_state_dict``).
        num_layers: stages per encoder; None means ``num_ws`` (one style vector per stage).
        base_channels: channels of the first stage of each encoder.
        max_channels: cap on the channels of any stage.
        shape_pool_size: pooled grid side of the shape encoder's heads (texture heads are global).
        use_w_avg: add ``w_avg`` to the fused ws (encoders then predict offsets from the mean).
        head_init_std: scale of the heads' initial weights.
        injection: ``styles`` (W+ only, the method's minimal reading), ``features`` (spatial
            feature maps only) or ``both``.
        inject_max_resolution: highest synthesis resolution that receives feature maps.
        generator_channels: ``{resolution: channels}`` of the generator's synthesis blocks
            (``generator.synthesis.channels``); needed for feature injection.
    """

    def __init__(
        self,
        num_ws: int,
        w_dim: int,
        resolution: int,
        w_avg: torch.Tensor | None = None,
        num_layers: int | None = None,
        base_channels: int = 32,
        max_channels: int = 256,
        shape_pool_size: int = 4,
        use_w_avg: bool = True,
        head_init_std: float = _DEFAULT_HEAD_INIT_STD,
        injection: str = "styles",
        inject_max_resolution: int = 32,
        generator_channels: dict[int, int] | None = None,
        aspect: str = DEFAULT_ASPECT,
    ) -> None:
        super().__init__()
        if injection not in INJECTIONS:
            raise EncoderConfigError(
                f"injection must be one of {', '.join(INJECTIONS)}, got {injection!r}"
            )
        self.injection = injection
        self.inject_max_resolution = _check_int("inject_max_resolution", inject_max_resolution, 4)
        self.generator_channels = {int(r): int(c) for r, c in (generator_channels or {}).items()}
        feature_channels: dict[int, int] = {}
        if injection != "styles":
            if not self.generator_channels:
                raise EncoderConfigError(
                    f"injection={injection!r} needs the generator's channels per resolution "
                    "(build with GarmentEncoders.from_generator)"
                )
            feature_channels = {
                r: c for r, c in self.generator_channels.items() if r <= inject_max_resolution
            }
        kwargs: dict[str, Any] = dict(
            num_ws=num_ws,
            w_dim=w_dim,
            resolution=resolution,
            num_layers=num_layers,
            base_channels=base_channels,
            max_channels=max_channels,
            head_init_std=head_init_std,
            styles=injection != "features",
            feature_channels=feature_channels,
            aspect=aspect,
        )
        self.shape_enc = ShapeEncoder(pool_size=shape_pool_size, **kwargs)
        self.texture_enc = TextureEncoder(**kwargs)
        self.num_ws = self.shape_enc.num_ws
        self.w_dim = self.shape_enc.w_dim
        self.resolution = self.shape_enc.resolution
        self.aspect, self.width = self.shape_enc.aspect, self.shape_enc.width
        self.use_w_avg = bool(use_w_avg)
        if w_avg is None:
            w_avg = torch.zeros(self.w_dim)
        if not isinstance(w_avg, torch.Tensor) or tuple(w_avg.shape) != (self.w_dim,):
            shape = list(w_avg.shape) if isinstance(w_avg, torch.Tensor) else type(w_avg).__name__
            raise EncoderConfigError(f"w_avg must be a tensor [{self.w_dim}], got {shape}")
        self.register_buffer("w_avg", w_avg.detach().clone().float())

    @classmethod
    def from_generator(cls, generator: nn.Module, **kwargs: Any) -> GarmentEncoders:
        """Encoders sized for ``generator`` (its ``num_ws``, ``w_dim``, ``resolution``, ``w_avg``).

        ``kwargs`` are the other constructor args; ``resolution`` may be given to override
        the generator's.
        """
        kwargs.setdefault("resolution", int(generator.resolution))
        kwargs.setdefault("aspect", getattr(generator, "aspect", DEFAULT_ASPECT))
        channels = getattr(generator.synthesis, "channels", None)  # absent on stand-ins
        if channels is not None:
            kwargs.setdefault("generator_channels", dict(channels))
        return cls(
            num_ws=int(generator.num_ws),
            w_dim=int(generator.w_dim),
            w_avg=generator.w_avg.detach().cpu(),
            **kwargs,
        )

    def get_config(self) -> dict[str, Any]:
        """Constructor kwargs (ints, floats, bools) that rebuild the architecture; w_avg is in the state dict."""
        enc = self.shape_enc
        return {
            "num_ws": enc.num_ws,
            "w_dim": enc.w_dim,
            "resolution": enc.resolution,
            "num_layers": enc.num_layers,
            "base_channels": enc.base_channels,
            "max_channels": enc.max_channels,
            "shape_pool_size": enc.pool_size,
            "use_w_avg": self.use_w_avg,
            "head_init_std": enc.head_init_std,
            "injection": self.injection,
            "inject_max_resolution": self.inject_max_resolution,
            "generator_channels": dict(self.generator_channels),
            "aspect": self.aspect,
        }

    @property
    def feature_resolutions(self) -> list[int]:
        """Synthesis resolutions that receive injected feature maps (empty for ``styles``)."""
        return sorted(self.shape_enc.feature_channels)

    def fuse(self, shape_ws: torch.Tensor, texture_ws: torch.Tensor) -> torch.Tensor:
        """Add shape and texture styles row by row (and ``w_avg``): two ``[B, num_ws, w_dim]`` -> one."""
        if shape_ws.shape != texture_ws.shape:
            raise ValueError(
                f"shape and texture ws differ: {list(shape_ws.shape)} vs {list(texture_ws.shape)}"
            )
        ws = shape_ws + texture_ws
        if self.use_w_avg:
            ws = ws + self.w_avg.to(ws.dtype)
        return ws

    def encode(
        self, shape_mask: torch.Tensor, texture_img: torch.Tensor
    ) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        """``(ws [B, num_ws, w_dim], {r: fused feature map [B, C_r, r, r]})``.

        ``shape_mask`` float {0, 1} ``[B, 1, R, R]``, ``texture_img`` float [-1, 1]
        ``[B, 3, R, R]``. Per layer the shape and texture outputs are added; the feature maps
        are empty for ``injection="styles"``.
        """
        if shape_mask.shape[0] != texture_img.shape[0]:
            raise ValueError(
                f"batch sizes differ: shape_mask {shape_mask.shape[0]}, "
                f"texture_img {texture_img.shape[0]}"
            )
        shape_ws, shape_maps = self.shape_enc.encode(shape_mask)
        texture_ws, texture_maps = self.texture_enc.encode(texture_img)
        if shape_ws is None:  # features only: every row is the mean style
            b = shape_mask.shape[0]
            ws = self.w_avg.to(shape_mask.dtype).expand(b, self.num_ws, self.w_dim)
        else:
            ws = self.fuse(shape_ws, texture_ws)
        maps = {r: shape_maps[r] + texture_maps[r] for r in shape_maps}
        return ws, maps

    def forward(self, shape_mask: torch.Tensor, texture_img: torch.Tensor) -> torch.Tensor:
        """``shape_mask`` float {0, 1} ``[B, 1, R, R]``, ``texture_img`` float [-1, 1] ``[B, 3, R, R]`` -> ws ``[B, num_ws, w_dim]``."""
        return self.encode(shape_mask, texture_img)[0]
