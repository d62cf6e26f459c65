"""Projected GAN discriminator (Sauer et al. 2021, "Projected GANs Converge Faster").

Written for this project from the paper's description. The discriminator looks at the image
through a frozen, pretrained feature network instead of learning its own features:

1. **Features**: ImageNet EfficientNet-lite0 (:class:`~garment_gen.networks.feature_nets.EfficientNetLite0Features`)
   on the image resized to ``feature_size``; maps at strides 4, 8, 16 and 32.
2. **Cross-channel mixing (CCM)**: a random 1x1 convolution per scale (``proj_channels``
   channels, doubling per scale with ``proj_expand``).
3. **Cross-scale mixing (CSM)**: a random top-down path like a U-Net decoder / FPN: from the
   coarsest scale down, the mixed map is upsampled x2 (bilinear), added to the next finer CCM
   output and passed through one random 3x3 convolution. The paper finds that CCM and CSM work
   best random and *fixed*; here they are buffers (no gradient), seeded by ``seed`` and saved in
   the state dict, so a reloaded discriminator projects exactly as the saved one.
4. **Multi-scale discriminators**: one small trainable patch discriminator per scale: strided
   4x4 convolutions with batch norm and leaky ReLU(0.2) down to 4x4 (a stride-1 3x3 block where
   the map is already that small), then a 3x3 convolution to one channel of patch logits.
   All their convolutions are spectrally normalised, as in the paper's code.
5. **Pixel scale** (``pixel_scale=True``; our addition, not in the paper): one more patch
   discriminator of the same kind on the image itself. ImageNet features are trained to ignore
   colour shifts, and on their own they let the generator drift into colour casts (blue or
   magenta garments on green backgrounds after a few kimg at 64 px) that no scale sees; the
   pixel scale sees colours directly. It has no batch norm (see :class:`ScaleDiscriminator`:
   a colour cast all fakes share would be normalised away). It costs ~50 MFLOP per 64 px
   image (the trunk ~600).

Only the per-scale discriminators have parameters; the feature network is not in the state dict
(it is rebuilt from its package, see :mod:`garment_gen.networks.feature_nets`).

Batch norm makes the logits depend on the batch: in training mode call the discriminator once on
the reals and once on the fakes (not on their concatenation), as the paper's code does. Apply
DiffAugment (:mod:`garment_gen.losses.diffaugment`) to both before this module; train with the
hinge losses in :mod:`garment_gen.losses.adversarial`. No R1 is needed.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm as _spectral_norm

from garment_gen.data.aspect import DEFAULT_ASPECT, frame_size, parse_aspect
from garment_gen.errors import ConfigError
from garment_gen.networks import ops
from garment_gen.networks.feature_nets import EfficientNetLite0Features
from garment_gen.networks.stylegan2 import (
    EqualLinear,
    class_map,
    minibatch_stddev,
    project_class,
)

__all__ = [
    "ProjectedDiscriminator",
    "ProjectedConfigError",
    "RandomProjection",
    "ScaleDiscriminator",
]

_LRELU_SLOPE = 0.2
_PATCH_SIZE = 4  # the per-scale discriminators downsample to this side before the logit conv
NORMS = ("batch", "none")


class ProjectedConfigError(ConfigError, ValueError):
    """Invalid projected-discriminator hyper-parameter (also a ``ValueError``)."""


def _check_int(name: str, value: Any, lo: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < lo:
        raise ProjectedConfigError(f"{name} must be an int >= {lo}, got {value!r}")
    return value


class RandomProjection(nn.Module):
    """Fixed random CCM + CSM: 4 feature maps -> 4 mixed maps, same spatial sizes.

    Input: maps ``[B, in_channels[i], S_i, S_i]`` with ``S_i = 2 S_{i+1}`` (finest first).
    Output: maps ``[B, out_channels[i], S_i, S_i]``; ``out_channels`` is
    ``(c, c, 2c, 4c)`` with ``proj_expand`` (CCM gives ``(c, 2c, 4c, 8c)``, each CSM conv halves
    toward the finer scale's width), else ``(c, c, c, c)``.

    Weights are drawn from N(0, 1 / fan_in) by a private generator seeded with ``seed`` (the
    global RNG is untouched) and kept as buffers: saved in the state dict, never trained.
    """

    def __init__(
        self, in_channels: tuple[int, ...], proj_channels: int, expand: bool, seed: int
    ) -> None:
        super().__init__()
        n = len(in_channels)
        ccm = [proj_channels * (2**i if expand else 1) for i in range(n)]
        # CSM conv at scale i maps ccm[i] -> the finer scale's width (its own at scale 0)
        csm = [ccm[max(i - 1, 0)] for i in range(n)]
        self.out_channels = tuple(csm)
        gen = torch.Generator().manual_seed(int(seed))

        def draw(c_out: int, c_in: int, k: int) -> torch.Tensor:
            fan_in = c_in * k * k
            return torch.randn(c_out, c_in, k, k, generator=gen) / math.sqrt(fan_in)

        for i in range(n):
            self.register_buffer(f"ccm{i}", draw(ccm[i], in_channels[i], 1))
        for i in range(n):
            self.register_buffer(f"csm{i}", draw(csm[i], ccm[i], 3))
        self.num_scales = n

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        """Mix ``feats`` (finest first) across channels, then top-down across scales."""
        mixed = [F.conv2d(f, getattr(self, f"ccm{i}")) for i, f in enumerate(feats)]
        out: list[torch.Tensor] = [None] * self.num_scales  # type: ignore[list-item]
        x = None
        for i in reversed(range(self.num_scales)):
            y = mixed[i]
            if x is not None:
                y = y + F.interpolate(x, size=y.shape[-2:], mode="bilinear", align_corners=False)
            x = F.conv2d(y, getattr(self, f"csm{i}"), padding=1)
            out[i] = x
        return out


class _Conv2d(nn.Conv2d):
    """``nn.Conv2d`` through :func:`garment_gen.networks.ops.conv2d`: on CPU training of wide
    convs, its weight gradient is one im2col matmul (the 512-wide heads' backward took ~25 %
    less time than with oneDNN's)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ops.conv2d(x, self.weight, self.bias, self.stride[0], self.padding[0])


def _conv(c_in: int, c_out: int, k: int, stride: int, padding: int, bias: bool, sn: bool):
    conv = _Conv2d(c_in, c_out, k, stride, padding, bias=bias)
    return _spectral_norm(conv) if sn else conv


class MinibatchStd(nn.Module):
    """:func:`~garment_gen.networks.stylegan2.minibatch_stddev` as a layer: ``[B, C, H, W]`` ->
    ``[B, C + 1, H, W]``, the last channel the std-dev over groups of ``group_size`` samples."""

    def __init__(self, group_size: int) -> None:
        super().__init__()
        self.group_size = int(group_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return minibatch_stddev(x, self.group_size, 1)

    def extra_repr(self) -> str:
        return f"group_size={self.group_size}"


class ScaleDiscriminator(nn.Module):
    """Patch discriminator on one mixed feature map: ``[B, C, S, S]`` -> logits ``[B, s*s]``.

    Strided 4x4 conv + batch norm + leaky ReLU(0.2) blocks halve ``S`` while it exceeds 4
    (one stride-1 3x3 block instead if ``S <= 4``), then a 3x3 conv gives one logit per
    position of the final ``s x s`` map (``s = 4`` for ``S`` = 4 * 2^k). Block widths at side
    ``r`` are ``min(channel_base // r, channel_max)``.

    ``norm="batch"`` (the paper's) normalises each block over the batch it is given; ``"none"``
    leaves only the spectral norm. Batch norm over a batch of fakes alone subtracts what all of
    them share (a colour cast is a per-channel shift after the first conv) and rescales away how
    little they vary (collapse), so the scale cannot see either; without it, it can.

    ``mbstd_group_size > 0`` appends StyleGAN2's minibatch standard deviation (over groups of
    that many samples) as one more channel before the logit conv: a batch of fakes that are
    all alike (mode collapse) is then visible to the scale.
    """

    def __init__(
        self,
        in_channels: int,
        size: int,
        channel_base: int,
        channel_max: int,
        sn: bool,
        norm: str = "batch",
        mbstd_group_size: int = 0,
        out_channels: int = 1,
    ) -> None:
        super().__init__()
        if norm not in NORMS:
            raise ProjectedConfigError(f"norm must be one of {', '.join(NORMS)}, got {norm!r}")
        layers: list[nn.Module] = []
        c_in = in_channels

        def block(c_out: int, k: int, stride: int, padding: int) -> None:
            nonlocal c_in
            layers.append(_conv(c_in, c_out, k, stride, padding, bias=norm == "none", sn=sn))
            if norm == "batch":
                layers.append(nn.BatchNorm2d(c_out))
            layers.append(nn.LeakyReLU(_LRELU_SLOPE, inplace=True))
            c_in = c_out

        if size <= _PATCH_SIZE:
            block(min(channel_base // size, channel_max), 3, 1, 1)
        while size > _PATCH_SIZE:
            size //= 2
            block(min(channel_base // size, channel_max), 4, 2, 1)
        if mbstd_group_size > 0:
            layers.append(MinibatchStd(mbstd_group_size))
            c_in += 1
        layers.append(_conv(c_in, out_channels, 3, 1, 1, bias=True, sn=sn))
        self.main = nn.Sequential(*layers)
        self.out_size = size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x [B, C, S, S]`` -> patch logits ``[B, out_channels, s, s]``."""
        return self.main(x)


class ProjectedDiscriminator(nn.Module):
    """Projected GAN discriminator: image ``[B, 3, R, R]`` in ``[-1, 1]`` -> logits ``[B, N]``.

    ``N`` is the number of patch logits of the 4 scales together (64 at ``feature_size`` 128:
    a 4x4 map per scale; 52 at 64, 36 at 96); a hinge loss takes their mean. Gradients flow to
    ``img`` (the generator's step needs them).

    Args:
        resolution: side ``R`` of the images it is given (checked); they are resized to
            ``feature_size`` for the feature network.
        feature_size: input side of the frozen EfficientNet-lite0, a multiple of 32 (the feature
            maps are ``feature_size / (4, 8, 16, 32)``). 128 suits 64 px images on a CPU.
        proj_channels: CCM width ``c`` of the finest scale.
        proj_expand: double the CCM width per coarser scale (``c, 2c, 4c, 8c``), as in the paper.
        channel_base, channel_max: per-scale discriminator width at side ``r``:
            ``min(channel_base // r, channel_max)`` (the paper's code: 4096 and 512).
        spectral_norm: spectrally normalise the per-scale discriminators' convolutions.
        seed: seed of the random CCM / CSM weights.
        pixel_scale: add a patch discriminator on the image itself (see the module docstring).
        norm: ``batch`` (the paper's) or ``none`` in the feature scales' discriminators (see
            :class:`ScaleDiscriminator`); the pixel scale has none.
        mbstd_group_size: minibatch standard deviation before every scale's logits (0: off;
            not in the paper), so that a collapsed batch of fakes shows.
        c_dim: number of classes of a class-conditional discriminator (0: unconditional).
            Each scale then ends in ``cmap_dim`` channels, and a patch's logit is their dot
            product with an embedding of the class (projection discriminator, as the paper's
            conditional model); ``c`` is required by :meth:`score` and :meth:`forward`. A
            conditional D also has a linear class probe on the globally pooled embedding,
            :meth:`classify` (trained on reals; ``GANLoss(class_weight=...)`` asks the
            generator's fakes to be classified as the class they were drawn for).
        classifier_lr_mul: learning-rate multiplier of that probe (equalised learning rate):
            the probe must learn the classes within the first minutes, faster than the heads
            (at D's lr 0.0002, 100 reaches 55 % validation accuracy on the 8 development classes
            in 50 steps of 16 reals, 10 needs 600; measured on frozen embeddings).

    Only the per-scale discriminators are trainable; the random projections are buffers in the
    state dict; the feature network is in neither (rebuilt from its package). The feature
    network stays in eval mode under ``train()``. ``get_config()`` returns the constructor
    arguments as plain values.
    """

    def __init__(
        self,
        resolution: int,
        feature_size: int = 128,
        proj_channels: int = 64,
        proj_expand: bool = True,
        channel_base: int = 4096,
        channel_max: int = 512,
        spectral_norm: bool = True,
        img_channels: int = 3,
        seed: int = 0,
        aspect: str = DEFAULT_ASPECT,
        pixel_scale: bool = False,
        norm: str = "batch",
        mbstd_group_size: int = 0,
        c_dim: int = 0,
        cmap_dim: int = 64,
        classifier_lr_mul: float = 100.0,
    ) -> None:
        super().__init__()
        _check_int("resolution", resolution, 8)
        if not float(classifier_lr_mul) > 0:
            raise ProjectedConfigError(f"classifier_lr_mul must be > 0, got {classifier_lr_mul!r}")
        _check_int("c_dim", c_dim, 0)
        _check_int("cmap_dim", cmap_dim, 1)
        _check_int("mbstd_group_size", mbstd_group_size, 0)
        try:
            self.height, self.width = frame_size(resolution, aspect)
        except ValueError as exc:
            raise ProjectedConfigError(f"aspect={aspect!r}: {exc}") from None
        self.aspect = aspect
        _check_int("feature_size", feature_size, 32)
        if feature_size % 32:
            raise ProjectedConfigError(f"feature_size must be a multiple of 32, got {feature_size}")
        _check_int("proj_channels", proj_channels, 1)
        _check_int("channel_base", channel_base, 1)
        _check_int("channel_max", channel_max, 1)
        _check_int("seed", seed, 0)
        if norm not in NORMS:
            raise ProjectedConfigError(f"norm must be one of {', '.join(NORMS)}, got {norm!r}")
        if img_channels != 3:
            raise ProjectedConfigError(
                f"img_channels must be 3 (ImageNet feature network), got {img_channels!r}"
            )
        self._kwargs: dict[str, Any] = dict(
            resolution=int(resolution),
            feature_size=int(feature_size),
            proj_channels=int(proj_channels),
            proj_expand=bool(proj_expand),
            channel_base=int(channel_base),
            channel_max=int(channel_max),
            spectral_norm=bool(spectral_norm),
            img_channels=3,
            seed=int(seed),
            aspect=aspect,
            pixel_scale=bool(pixel_scale),
            norm=str(norm),
            mbstd_group_size=int(mbstd_group_size),
            c_dim=int(c_dim),
            cmap_dim=int(cmap_dim),
            classifier_lr_mul=float(classifier_lr_mul),
        )
        self.c_dim, self.cmap_dim = int(c_dim), int(cmap_dim)
        self.resolution, self.img_channels = resolution, 3
        try:
            self.features = EfficientNetLite0Features(feature_size, aspect=aspect)
        except ValueError as exc:
            raise ProjectedConfigError(str(exc)) from None
        self.projection = RandomProjection(
            self.features.channels, proj_channels, bool(proj_expand), seed
        )
        sizes = [feature_size // s for s in self.features.strides]
        channels = list(self.projection.out_channels)
        norms = [norm] * len(sizes)
        if pixel_scale:  # the image itself, as the finest "scale"; never batch-normalised
            sizes, channels, norms = [self.height, *sizes], [3, *channels], ["none", *norms]
        self.pixel_scale = bool(pixel_scale)
        self.discs = nn.ModuleList(
            ScaleDiscriminator(
                c,
                s,
                channel_base,
                channel_max,
                bool(spectral_norm),
                n,
                mbstd_group_size,
                out_channels=cmap_dim if c_dim else 1,
            )
            for c, s, n in zip(channels, sizes, norms, strict=True)
        )
        if c_dim:
            self.class_embed = nn.Linear(c_dim, cmap_dim)
            self.classifier = EqualLinear(sum(channels), c_dim, lr_mul=float(classifier_lr_mul))
        aw, ah = parse_aspect(aspect)  # the patch maps keep the image's aspect: 4 x 3 at 3:4
        self.num_logits = sum(d.out_size * (d.out_size * aw // ah) for d in self.discs)

    def get_config(self) -> dict[str, Any]:
        """Constructor kwargs that rebuild this discriminator (plain Python values)."""
        return dict(self._kwargs)

    @property
    def config(self) -> dict[str, Any]:
        return self.get_config()

    def embed(self, img: torch.Tensor) -> list[torch.Tensor]:
        """The part with no trainable parameters: frozen features, then the fixed projection.

        ``img [B, 3, R, R]`` in ``[-1, 1]`` -> 4 mixed maps (finest first), preceded by ``img``
        itself with ``pixel_scale``. Because nothing in it
        trains, a detached embedding of fakes computed for the generator's step is exactly what
        the discriminator's step would compute again (``GANLoss(reuse_fakes=True)`` uses that).
        """
        if img.ndim != 4 or img.shape[1:] != (3, self.height, self.width):
            raise ValueError(
                f"img must be [B, 3, {self.height}, {self.width}], got {list(img.shape)}"
            )
        mixed = self.projection(self.features(img))
        return [img, *mixed] if self.pixel_scale else mixed

    def score(self, mixed: list[torch.Tensor], c: torch.Tensor | None = None) -> torch.Tensor:
        """The trainable per-scale discriminators: :meth:`embed`'s maps -> logits
        ``[B, num_logits]`` (``c``: the classes, indices ``[B]`` or one-hot, when ``c_dim > 0``)."""
        cmap = class_map(self, c, mixed[0].shape[0], mixed[0].device)
        return torch.cat(
            [project_class(d(m), cmap).flatten(1) for d, m in zip(self.discs, mixed, strict=True)],
            dim=1,
        )

    def classify(self, mixed: list[torch.Tensor]) -> torch.Tensor:
        """Class logits ``[B, c_dim]`` of :meth:`embed`'s maps (each averaged over its positions)
        by the linear probe of a conditional D."""
        if not self.c_dim:
            raise ValueError("classify: this discriminator is not class-conditional (c_dim = 0)")
        return self.classifier(torch.cat([m.mean(dim=(2, 3)) for m in mixed], dim=1))

    def forward(self, img: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        """``img [B, 3, R, R]`` float in ``[-1, 1]`` -> patch logits ``[B, num_logits]``."""
        return self.score(self.embed(img), c)
