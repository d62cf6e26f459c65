"""DISTS: a full-reference image distance that unifies structure and texture similarity.

Ding, Ma, Wang and Simoncelli 2020, "Image Quality Assessment: Unifying Structure and Texture
Similarity". Both images go through an ImageNet VGG16 whose max pooling is replaced by L2
pooling (``sqrt(g * x^2)`` with a normalised 3x3 Hann window, stride 2: it removes aliasing, so
a shifted texture gives nearly the same statistics). Six representations are compared, the
image itself and the output of each of the five VGG stages (relu1_2 ... relu5_3), channel by
channel, through their global statistics only:

* texture term ``l = (2 mu_x mu_y + c1) / (mu_x^2 + mu_y^2 + c1)`` (channel means),
* structure term ``s = (2 sigma_xy + c2) / (sigma_x^2 + sigma_y^2 + c2)`` (variances and
  covariance over the positions), with ``c1 = c2 = 1e-6``;

``D(x, y) = 1 - sum_ij (alpha_ij l_ij + beta_ij s_ij)`` with the learned ``alpha, beta >= 0`` of
all 1475 channels (3 + 64 + 128 + 256 + 512 + 512) normalised to sum to one. ``D`` is 0 for
identical images and grows with visible differences; a texture moved in space scores close to
its original, which is what judging "B's fabric made into A's garment" needs.

Weights, all offline:

* the VGG16 trunk is torchvision's ImageNet VGG16 ``features``, taken from the LPIPS weights the
  project already loads (:func:`garment_gen.losses.perceptual.load_backbone_state`);
* ``alpha`` and ``beta`` come from ``weights.pt`` of the PyPI package ``DISTS_pytorch==0.1``
  (MIT; only its data file is read, found through ``importlib.metadata``, checked against
  :data:`HEAD_SHA256` and loaded with ``torch.load(weights_only=True)``, which unpickles tensors
  and plain containers only).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from garment_gen.errors import GarmentGenError

__all__ = ["DISTS", "HEAD_SHA256", "DISTSWeightsError", "dists_head_path", "load_dists_head"]

PACKAGE = "DISTS_pytorch"
PACKAGE_VERSION = "0.1"
PIP_COMMAND = f"pip install {PACKAGE}=={PACKAGE_VERSION}"
HEAD_FILE = "DISTS_pytorch/weights.pt"
HEAD_SHA256 = "f5e65c96230b7f6ca995691647d482237e4cab8a50c5c4a5784f219ef0748218"
# (output channels of each conv) per VGG16 stage; a stage ends with relu1_2, relu2_2 ... relu5_3
_VGG16_STAGES = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))
CHANNELS = (3, *(stage[-1] for stage in _VGG16_STAGES))  # the image, then the five stages
_C1 = _C2 = 1e-6
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)

_HEAD_CACHE: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}


class DISTSWeightsError(GarmentGenError, RuntimeError):
    """The DISTS head weights (``DISTS_pytorch``'s ``weights.pt``) are missing or different."""


def _error(reason: str) -> DISTSWeightsError:
    return DISTSWeightsError(
        f"DISTS weights: {reason}; they come from the package {PACKAGE}, "
        f"install it with `{PIP_COMMAND}`"
    )


def dists_head_path() -> Path:
    """Path of ``weights.pt`` inside the installed ``DISTS_pytorch`` package.

    Raises:
        DISTSWeightsError: the package is not installed or lacks the file.
    """
    try:
        dist = importlib.metadata.distribution(PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        raise _error("package not installed") from None
    # the wheel also copies the file to sys.prefix; the one inside the package is the one we own
    for entry in dist.files or ():
        if entry.as_posix() == HEAD_FILE:
            path = Path(str(dist.locate_file(entry)))
            if path.is_file():
                return path
    raise _error(f"{HEAD_FILE} not found in the installed package")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def load_dists_head(path: str | Path | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The learned DISTS weights ``(alpha, beta)``, each float32 ``[1475]``, unnormalised.

    Args:
        path: a ``weights.pt``; default: the installed package's (:func:`dists_head_path`).

    Raises:
        DISTSWeightsError: package missing, checksum other than :data:`HEAD_SHA256`, or the file
            does not hold ``alpha`` and ``beta`` of the expected shape. One line naming the
            package and the pip command.
    """
    path = Path(path) if path is not None else dists_head_path()
    key = str(path.resolve())
    if key in _HEAD_CACHE:
        return _HEAD_CACHE[key]
    if not path.is_file():
        raise _error(f"{path} not found")
    digest = _sha256(path)
    if digest != HEAD_SHA256:
        raise _error(f"{path} has sha256 {digest[:12]}..., expected {HEAD_SHA256[:12]}...")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        alpha, beta = (state[k].detach().float().reshape(-1) for k in ("alpha", "beta"))
    except Exception as exc:  # a file with the right checksum never gets here
        raise _error(f"{path} is not readable as DISTS weights ({exc})") from None
    if alpha.numel() != sum(CHANNELS) or beta.numel() != sum(CHANNELS):
        raise _error(f"{path}: {alpha.numel()} weights, expected {sum(CHANNELS)}")
    _HEAD_CACHE[key] = (alpha, beta)
    return alpha, beta


class L2Pool(nn.Module):
    """L2 pooling: ``sqrt(g * x^2)``, ``g`` the normalised 3x3 Hann window, stride 2.

    ``[B, C, H, W]`` -> ``[B, C, ceil(H / 2), ceil(W / 2)]`` (zero padding 1). Replaces VGG's max
    pooling: a smooth low-pass before subsampling, so the features do not alias.
    """

    def __init__(self, channels: int):
        super().__init__()
        taps = torch.tensor([0.5, 1.0, 0.5])  # the 5-tap Hann window without its zero ends
        window = torch.outer(taps, taps)
        window = window / window.sum()
        self.register_buffer("window", window.expand(channels, 1, 3, 3).clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        energy = F.conv2d(x.square(), self.window, stride=2, padding=1, groups=x.shape[1])
        return (energy + 1e-12).sqrt()  # the epsilon keeps the gradient of sqrt finite at 0


def _vgg16_l2_stages() -> tuple[nn.ModuleList, dict[int, nn.Conv2d]]:
    """The five VGG16 stages with L2 pooling before stages 2-5, and torchvision index -> conv."""
    stages, convs = nn.ModuleList(), {}
    index, in_ch = 0, 3
    for s, widths in enumerate(_VGG16_STAGES):
        layers: list[nn.Module] = []
        if s > 0:
            layers.append(L2Pool(in_ch))
            index += 1  # torchvision's max pool sits at this index of ``features``
        for out_ch in widths:
            conv = nn.Conv2d(in_ch, out_ch, 3, padding=1)
            convs[index] = conv
            layers += [conv, nn.ReLU()]
            index += 2
            in_ch = out_ch
        stages.append(nn.Sequential(*layers))
    return stages, convs


class DISTS(nn.Module):
    """DISTS distance between two images (see the module docstring).

    ``forward(x, y)``: images float ``[-1, 1]`` ``[B, 3, H, W]`` (the same size, at least 32 px
    so relu5_3 keeps a few positions) -> distances ``[B]``, 0 for identical images, about 0.1-0.6
    for different ones. Symmetric in ``x`` and ``y``. Gradients flow to the inputs (it can serve
    as a loss); the network itself is frozen (no trainable parameters) and always in eval mode.

    Args:
        head_path: the DISTS ``weights.pt``; default: the installed ``DISTS_pytorch``'s.
    """

    def __init__(self, head_path: str | Path | None = None):
        super().__init__()
        from garment_gen.losses.perceptual import load_backbone_state

        alpha, beta = load_dists_head(head_path)
        self.stages, convs = _vgg16_l2_stages()
        state = load_backbone_state("vgg")
        expected = {f"features.{i}.{p}" for i in convs for p in ("weight", "bias")}
        if not expected <= set(state):
            raise GarmentGenError(f"VGG16 weights lack {sorted(expected - set(state))[:4]}")
        with torch.no_grad():
            for i, conv in convs.items():
                conv.weight.copy_(state[f"features.{i}.weight"])
                conv.bias.copy_(state[f"features.{i}.bias"])
        total = alpha.sum() + beta.sum()
        self.register_buffer("alpha", alpha / total)
        self.register_buffer("beta", beta / total)
        self.register_buffer("mean", torch.tensor(_IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(_IMAGENET_STD).view(1, 3, 1, 1))
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> DISTS:
        return super().train(False)

    def features(self, img: torch.Tensor) -> list[torch.Tensor]:
        """The six representations of images float ``[-1, 1]`` ``[B, 3, H, W]``.

        The image in ``[0, 1]`` ``[B, 3, H, W]``, then relu1_2 ``[B, 64, H, W]``, relu2_2
        ``[B, 128, H/2, W/2]`` ... relu5_3 ``[B, 512, H/16, W/16]``.
        """
        x01 = (img.float() + 1) / 2
        feats = [x01]
        h = (x01 - self.mean) / self.std
        for stage in self.stages:
            h = stage(h)
            feats.append(h)
        return feats

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Distances ``[B]`` between images float ``[-1, 1]`` ``x`` and ``y``, ``[B, 3, H, W]``."""
        if x.shape != y.shape or x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(
                f"expected two [B, 3, H, W] batches, got {tuple(x.shape)}, {tuple(y.shape)}"
            )
        fx, fy = self.features(x), self.features(y)
        alphas = self.alpha.split(CHANNELS)
        betas = self.beta.split(CHANNELS)
        similarity = x.new_zeros(x.shape[0], dtype=torch.float32)
        for a, b, u, v in zip(alphas, betas, fx, fy, strict=True):
            mu_u, mu_v = u.mean((2, 3)), v.mean((2, 3))  # [B, C]
            var_u = (u - mu_u[..., None, None]).square().mean((2, 3))
            var_v = (v - mu_v[..., None, None]).square().mean((2, 3))
            cov = (u * v).mean((2, 3)) - mu_u * mu_v
            texture = (2 * mu_u * mu_v + _C1) / (mu_u.square() + mu_v.square() + _C1)
            structure = (2 * cov + _C2) / (var_u + var_v + _C2)
            similarity = similarity + texture @ a + structure @ b
        return 1 - similarity
