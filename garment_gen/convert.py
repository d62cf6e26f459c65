"""Bring your own generator: NVlabs StyleGAN2-ADA pickles and rosinality checkpoints -> generator.pt.

    python -m garment_gen.convert src=network-snapshot-001200.pkl out=generator.pt [which=G_ema|G]
    python -m garment_gen.convert src=checkpoint/550000.pt out=generator.pt   # rosinality

or :func:`convert_generator` from Python. The result is an ordinary ``generator.pt`` (written with
:func:`garment_gen.networks.serialization.save_model`, kind ``generator``), so
``python -m garment_gen.train stage=encoders model.generator=generator.pt`` fits the encoders on
it. Its ``meta["converted_from"]`` records the source file, its format and its sha256.

Nothing in the source file is executed. NVlabs pickles are read by a restricted unpickler that
resolves only the globals listed in ``_ALLOWED`` below, each to a function of this module; any
other global (``os.system``, ``builtins.eval``, ``subprocess.Popen``, a class of some other
module) stops the read before it is called. rosinality checkpoints are read with
``torch.load(weights_only=True)``.

The formats, as this module relies on them
------------------------------------------

**NVlabs network pickle** (stylegan2-ada-pytorch ``network-snapshot-*.pkl``, and stylegan3's
with ``--cfg=stylegan2``): ``pickle.dump`` of a dict ``{"G", "D", "G_ema", "augment_pipe",
"training_set_kwargs", ...}``. Every network is an instance of a class decorated with
``torch_utils.persistence.persistent_class``; it pickles as a call of
``torch_utils.persistence._reconstruct_persistent_obj(meta)`` with ``meta = {"type": "class",
"version": 6, "module_src": <source text of the defining module>, "class_name": "Generator",
"state": <the object's __dict__>}``. NVlabs' loader executes ``module_src``; here it is kept as
text and never run, and the call returns a :class:`PersistentRecord`. ``state`` is an
``nn.Module`` ``__dict__``: ``_parameters`` and ``_buffers`` (name -> tensor), ``_modules``
(name -> child, again a persistent record), ``_init_args`` / ``_init_kwargs`` (the constructor
arguments, nested ones as ``dnnlib.util.EasyDict``) and attributes (``conv_clamp``, ``up``,
``architecture``, ``activation``, numpy scalars such as ``weight_gain`` = ``numpy.float64``).
Tensors use torch's own pickling: ``torch._utils._rebuild_tensor_v2(storage, offset, size,
stride, requires_grad, hooks[, metadata])``, parameters wrapped in
``torch._utils._rebuild_parameter(tensor, requires_grad, hooks)``. A storage pickles as
``torch.storage._load_from_bytes(b)`` where ``b`` is a legacy (non-zip) ``torch.save`` file of
that one storage: five pickles (the magic number ``0x1950a86a20f9469cfc6c``, protocol 1001, a
system-info dict with ``little_endian``, the storage as the persistent id ``("storage",
torch.FloatStorage, key, location, numel, view_metadata)``, the list of keys), then for each key
its element count (int64, little endian) and its raw bytes. ``_load_storage_file`` parses that
itself (torch's ``_load_from_bytes`` would unpickle it without restrictions).

Tree of ``G_ema`` used (NVlabs name -> garment_gen :class:`~garment_gen.networks.stylegan2.Generator`)::

    G_ema init kwargs / attrs: z_dim, c_dim, w_dim, img_resolution, img_channels
    mapping.fc{i}.weight [w, in], .bias          -> mapping_net.{i}.weight / bias
        (fc{i}.bias_gain = lr_multiplier, kept as mapping_lr_mul; activation must be lrelu)
    mapping.w_avg [w]                            -> w_avg  (w_avg_beta kept)
    synthesis.b4.const [C, 4, 4]                 -> synthesis.blocks.0.const [1, C, 4, 4]
    synthesis.b{r}.conv0 (r > 4, up=2), conv1    -> synthesis.blocks.{k}.conv0, conv1:
        weight [O, I, 3, 3], bias [O], noise_strength [], noise_const [r, r],
        affine.weight [I, w], affine.bias [I]    -> same names
    synthesis.b{r}.torgb.weight [3, C, 1, 1]     -> synthesis.blocks.{k}.torgb.weight [3, C]
        torgb.bias, torgb.affine.*               -> same names
    layer attrs conv_clamp (one value)           -> conv_clamp, with clamp_after_gain=True
    synthesis channel_base / channel_max         -> the same (checked against the weight shapes)

**rosinality stylegan2-pytorch checkpoint** (``train.py``'s ``checkpoint/NNNNNN.pt``, or
``convert_weight.py``'s output): ``torch.save`` of ``{"g", "d", "g_ema", "g_optim", "d_optim",
"args" (argparse.Namespace), "ada_aug_p"}`` or ``{"g_ema", "latent_avg"}``, each network a
plain ``state_dict``. ``size``, ``style_dim``, ``n_mlp`` and the channels come from the shapes;
``lr_mlp`` is not stored (its default 0.01 is assumed, ``lr_mlp=`` overrides)::

    style.{i+1}.weight [w, w], .bias             -> mapping_net.{i}   (style.0 is PixelNorm)
    input.input [1, C, 4, 4]                     -> synthesis.blocks.0.const
    conv1.conv.weight [1, O, I, 3, 3], conv1.conv.modulation.weight / bias,
    conv1.noise.weight [1], conv1.activate.bias  -> blocks.0.conv1 weight, affine, noise_strength, bias
    to_rgb1.conv.weight [1, 3, C, 1, 1], to_rgb1.conv.modulation.*, to_rgb1.bias [1, 3, 1, 1]
                                                 -> blocks.0.torgb weight [3, C], affine, bias [3]
    convs.{2k-2}, convs.{2k-1}, to_rgbs.{k-1}    -> blocks.{k}.conv0 (upsampling), conv1, torgb
    noises.noise_{j} [1, 1, r, r]                -> the j-th conv's noise_const (j = 0 at 4 px)
    *.blur.kernel, *.upsample.kernel             -> checked to be [1, 3, 3, 1] (x4), not stored
    latent_avg [w] (if present)                  -> w_avg; else the mean W of 4096 z (seed 0)

W rows are consumed the same way in all three: 4 px conv row 0, its toRGB row 1; the block at
``2^(k+2)`` px rows ``2k-1``, ``2k`` (convs) and ``2k+1`` (toRGB, shared with the next block's
first conv); ``num_ws = 2 log2(resolution) - 2``.

Refused, with one line each: any global outside the allow-list, a damaged or truncated file,
StyleGAN3 (``-t``/``-r``) synthesis networks, conditional generators (``c_dim > 0``), the
``orig`` and ``resnet`` synthesis architectures, mapping layers narrower or wider than ``w_dim``,
resampling filters other than [1, 3, 3, 1], channel counts that ``min(channel_base // r,
channel_max)`` cannot express, resolutions outside 32-1024 px, images that are not RGB.

Float32 parity: a converted generator gives NVlabs' / rosinality's images for the same weights,
``z`` and constant noise (``tests/test_convert.py`` checks this against its own reference
implementations of their forward passes). NVlabs runs the top ``num_fp16_res`` resolutions in
float16 on a GPU; the converted generator runs float32 throughout.
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import io
import math
import pickle
import re
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from garment_gen.errors import GarmentGenError
from garment_gen.networks.stylegan2 import Generator, StyleGANConfigError

__all__ = [
    "ConvertError",
    "PersistentRecord",
    "convert_generator",
    "estimate_w_avg",
    "fit_channels",
    "read_network_pickle",
    "read_source",
]

FORMAT_NVLABS = "nvlabs-stylegan2-ada-pickle"
FORMAT_ROSINALITY = "rosinality-stylegan2-pytorch"
WHICH = ("G_ema", "G")
W_AVG_SAMPLES = 4096

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001
_FIR = (1.0, 3.0, 3.0, 1.0)
_MAX_TENSOR_NUMEL = 1 << 28  # 1 GiB of float32; StyleGAN2's largest tensor has 2.4 M elements


class ConvertError(GarmentGenError):
    """A source network that cannot be read safely or mapped onto garment_gen's Generator."""


class _Refused(Exception):
    """Raised inside the unpickler: the file asks for something outside the allow-list."""


class _Damaged(Exception):
    """Raised inside the unpickler: the file's records are inconsistent."""


# --------------------------------------------------------------------------- restricted unpickler


class EasyDict(dict):
    """Stand-in for NVlabs' ``dnnlib.util.EasyDict`` (a dict with attribute access)."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):  # never let a key named __setstate__ act as a method
            raise AttributeError(name)
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


@dataclass
class PersistentRecord:
    """What ``_reconstruct_persistent_obj(meta)`` returns here: the pickled object as data.

    ``state`` is the module's ``__dict__`` (``_parameters``, ``_buffers``, ``_modules``,
    ``_init_kwargs``, attributes); ``module_src`` is the embedded source, never executed.
    """

    class_name: str
    state: dict
    module_src: str = ""
    version: Any = None

    def __setstate__(self, state: Any) -> None:
        raise _Refused("state for a persistent object, which NVlabs pickles never carry")

    @property
    def children(self) -> dict[str, Any]:
        return dict(self.state.get("_modules") or {})

    @property
    def tensors(self) -> dict[str, torch.Tensor]:
        """Parameters and buffers by name (``None`` entries, e.g. no bias, left out)."""
        out = {}
        for group in ("_parameters", "_buffers"):
            for k, v in dict(self.state.get(group) or {}).items():
                if v is not None:
                    out[k] = _tensor(v, k)
        return out

    @property
    def init_kwargs(self) -> dict[str, Any]:
        kw = self.state.get("_init_kwargs")
        return dict(kw) if isinstance(kw, dict) else {}

    def attr(self, name: str, default: Any = None) -> Any:
        """An attribute of the pickled object, else its constructor kwarg, else ``default``."""
        if name in self.state:
            return self.state[name]
        return self.init_kwargs.get(name, default)


@dataclass
class _TensorRecord:
    """A tensor rebuilt from the pickle (wrapped, so no pickled state can reach a real tensor)."""

    tensor: torch.Tensor

    def __setstate__(self, state: Any) -> None:
        raise _Refused("state for a tensor")


@dataclass
class _Storage:
    flat: torch.Tensor


@dataclass
class _PendingStorage:
    key: str
    view: tuple | None = None


@dataclass(frozen=True)
class _StorageType:
    name: str
    dtype: torch.dtype


@dataclass
class _NpDtype:
    spec: str
    order: str = "|"

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) > 1 and state[1] in ("<", ">", "|", "="):
            self.order = state[1]

    def numpy(self) -> np.dtype:
        order = "" if self.order in ("|", "=") else self.order
        return np.dtype(order + self.spec)


@dataclass
class _NpArray:
    array: np.ndarray | None = None

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, tuple) or len(state) not in (4, 5):
            raise _Damaged("a numpy array record of an unknown layout")
        shape, dtype, fortran, raw = state[-4:]
        if not isinstance(dtype, _NpDtype) or not isinstance(raw, (bytes, bytearray)):
            raise _Refused("a numpy array of Python objects")
        self.array = _np_values(raw, dtype, shape, "F" if fortran else "C")


_NP_SPEC = re.compile(r"^[biuf][1248]$|^f16$")


def _np_values(raw: bytes, dtype: _NpDtype, shape: Any, order: str = "C") -> np.ndarray:
    if not isinstance(shape, tuple) or not all(isinstance(s, int) and s >= 0 for s in shape):
        raise _Damaged("a numpy array of an invalid shape")
    dt = dtype.numpy()
    if dt.itemsize * math.prod(shape) != len(raw):
        raise _Damaged("a numpy array whose data does not match its shape")
    return np.frombuffer(bytes(raw), dtype=dt).reshape(shape, order=order).copy()


def _np_dtype(spec: Any, align: Any = False, copy: Any = False) -> _NpDtype:
    if not isinstance(spec, str) or not _NP_SPEC.match(spec):
        raise _Refused(f"numpy dtype {spec!r} (only numbers are allowed)")
    return _NpDtype(spec)


def _np_scalar(dtype: Any, data: Any = None) -> Any:
    if not isinstance(dtype, _NpDtype) or not isinstance(data, (bytes, bytearray)):
        raise _Refused("a numpy scalar of Python objects")
    return _np_values(data, dtype, (1,))[0].item()


def _np_reconstruct(cls: Any, shape: Any = None, typecode: Any = None) -> _NpArray:
    if cls is not _NpArray:
        raise _Refused("numpy _reconstruct of a class other than ndarray")
    return _NpArray()


def _np_frombuffer(buf: Any, dtype: Any, shape: Any, order: Any = "C") -> np.ndarray:
    if not isinstance(dtype, _NpDtype) or not isinstance(buf, (bytes, bytearray)):
        raise _Refused("a numpy buffer of Python objects")
    return _np_values(buf, dtype, tuple(shape), "F" if order == "F" else "C")


def _codecs_encode(text: Any, encoding: Any = "utf-8") -> bytes:
    """Protocol-2 pickles spell bytes as ``_codecs.encode(str, 'latin1')``."""
    if not isinstance(text, str) or encoding != "latin1":
        raise _Refused("_codecs.encode other than the latin1 bytes of protocol 2")
    return text.encode("latin1")


def _tensor(value: Any, what: str) -> torch.Tensor:
    if isinstance(value, _TensorRecord):
        return value.tensor
    if isinstance(value, _NpArray) and value.array is not None:
        return torch.from_numpy(value.array)
    raise _Damaged(f"{what} is not a tensor ({type(value).__name__})")


def _rebuild_tensor_v2(
    storage: Any,
    storage_offset: Any,
    size: Any,
    stride: Any,
    requires_grad: Any = False,
    backward_hooks: Any = None,
    metadata: Any = None,
) -> _TensorRecord:
    """A tensor from a storage, after checking that the view stays inside it."""
    if not isinstance(storage, _Storage):
        raise _Refused("a tensor over something other than a storage")
    ints = (storage_offset, *tuple(size), *tuple(stride))
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in ints):
        raise _Damaged("a tensor with an invalid size, stride or offset")
    size, stride = tuple(size), tuple(stride)
    if len(size) != len(stride):
        raise _Damaged("a tensor whose size and stride disagree")
    if math.prod(size) > _MAX_TENSOR_NUMEL:
        raise _Damaged(f"a tensor of {math.prod(size)} elements (a StyleGAN2 has none so large)")
    if math.prod(size):
        last = storage_offset + sum((s - 1) * st for s, st in zip(size, stride, strict=True))
        if last >= storage.flat.numel():
            raise _Damaged("a tensor that reaches past the end of its storage")
    flat = storage.flat
    return _TensorRecord(torch.as_strided(flat, size, stride, storage_offset).clone())


def _rebuild_parameter(data: Any, requires_grad: Any = False, hooks: Any = None, *state: Any):
    if not isinstance(data, _TensorRecord):
        raise _Refused("a parameter over something other than a tensor")
    return data


def _reconstruct_persistent_obj(meta: Any) -> PersistentRecord:
    """Stand-in for NVlabs' function of that name: returns the record, never runs ``module_src``."""
    if not isinstance(meta, dict) or meta.get("type") != "class":
        raise _Damaged("a persistent-object record that is not a class instance")
    name, state = meta.get("class_name"), meta.get("state")
    if not isinstance(name, str) or not isinstance(state, dict):
        raise _Damaged("a persistent-object record without class name or state")
    src = meta.get("module_src")
    return PersistentRecord(name, state, src if isinstance(src, str) else "", meta.get("version"))


# ``torch.<Type>Storage`` names allowed inside a storage record, with their dtypes
_STORAGE_DTYPES = {
    "FloatStorage": torch.float32,
    "DoubleStorage": torch.float64,
    "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16,
    "LongStorage": torch.int64,
    "IntStorage": torch.int32,
    "ShortStorage": torch.int16,
    "CharStorage": torch.int8,
    "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
}


def _load_storage_file(data: Any) -> _Storage:
    """Stand-in for ``torch.storage._load_from_bytes``: parse the legacy storage file ``data``."""
    if not isinstance(data, (bytes, bytearray)):
        raise _Refused("a storage record that is not bytes")
    f = io.BytesIO(bytes(data))
    declared: dict[str, tuple[torch.dtype, int]] = {}

    def load() -> Any:
        return _StorageUnpickler(f, declared).load()

    if load() != _LEGACY_MAGIC or load() != _LEGACY_PROTOCOL:
        raise _Damaged("a storage record that is not a torch storage file")
    info = load()
    if not isinstance(info, dict) or info.get("little_endian") is not True:
        raise _Damaged("a storage written on a big-endian machine")
    obj, keys = load(), load()
    if not isinstance(obj, _PendingStorage) or not isinstance(keys, list):
        raise _Damaged("a storage record that holds something other than one storage")
    flats = {}
    for key in keys:
        if key not in declared:
            raise _Damaged("a storage record with undeclared data")
        dtype, numel = declared[key]
        head = f.read(8)
        if len(head) != 8 or int.from_bytes(head, "little", signed=True) != numel:
            raise _Damaged("a storage record with a wrong element count")
        nbytes = numel * torch.empty((), dtype=dtype).element_size()
        raw = f.read(nbytes)
        if len(raw) != nbytes:
            raise _Damaged("a storage record cut short")
        flats[key] = (
            torch.frombuffer(bytearray(raw), dtype=dtype) if numel else torch.empty(0, dtype=dtype)
        )
    if obj.key not in flats:
        raise _Damaged("a storage record without its data")
    flat = flats[obj.key]
    if obj.view is not None:
        offset, numel = obj.view
        if offset + numel > flat.numel():
            raise _Damaged("a storage view past the end of its storage")
        flat = flat[offset : offset + numel]
    return _Storage(flat)


class _StorageUnpickler(pickle.Unpickler):
    """The pickles inside one legacy storage record: numbers, dicts, strings, storage ids."""

    def __init__(self, f: io.BytesIO, declared: dict[str, tuple[torch.dtype, int]]):
        super().__init__(f)
        self._declared = declared

    def find_class(self, module: str, name: str) -> Any:
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name, _STORAGE_DTYPES[name])
        raise _Refused(f"{module}.{name}")

    def persistent_load(self, pid: Any) -> _PendingStorage:
        if not (isinstance(pid, tuple) and len(pid) == 6 and pid[0] == "storage"):
            raise _Damaged("a persistent id that is not a storage")
        _, stype, key, _location, numel, view = pid
        if not isinstance(stype, _StorageType) or not isinstance(key, str):
            raise _Damaged("a storage id of an unknown type")
        if not isinstance(numel, int) or numel < 0:
            raise _Damaged("a storage of negative size")
        if self._declared.setdefault(key, (stype.dtype, numel)) != (stype.dtype, numel):
            raise _Damaged("a storage declared twice with different sizes")
        if view is None:
            return _PendingStorage(key)
        # (view_key, offset, numel): a slice of the root storage ``key`` (torch < 1.0 files)
        if not (isinstance(view, tuple) and len(view) == 3):
            raise _Damaged("a storage view of an unknown layout")
        offset, size = view[1], view[2]
        if not all(isinstance(v, int) and v >= 0 for v in (offset, size)):
            raise _Damaged("a storage view with an invalid offset or size")
        return _PendingStorage(key, (offset, size))


_ALLOWED: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("_codecs", "encode"): _codecs_encode,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch.storage", "_load_from_bytes"): _load_storage_file,
    ("numpy.core.multiarray", "scalar"): _np_scalar,
    ("numpy.core.multiarray", "_reconstruct"): _np_reconstruct,
    ("numpy.core.numeric", "_frombuffer"): _np_frombuffer,
    ("numpy", "dtype"): _np_dtype,
    ("numpy", "ndarray"): _NpArray,
    ("dnnlib.util", "EasyDict"): EasyDict,
    ("dnnlib", "EasyDict"): EasyDict,
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): _reconstruct_persistent_obj,
}
_MODULE_ALIASES = {
    "__builtin__": "builtins",
    "numpy._core.multiarray": "numpy.core.multiarray",
    "numpy._core.numeric": "numpy.core.numeric",
}


class _NetworkUnpickler(pickle.Unpickler):
    """Resolves only the globals of ``_ALLOWED``, each to this module's own stand-in."""

    def find_class(self, module: str, name: str) -> Any:
        key = (_MODULE_ALIASES.get(module, module), name)
        if key not in _ALLOWED:
            raise _Refused(f"{module}.{name}")
        return _ALLOWED[key]

    def persistent_load(self, pid: Any) -> Any:
        raise _Refused("a persistent id outside a storage record")


def read_network_pickle(path: str | Path) -> Any:
    """The content of an NVlabs network pickle, as data (:class:`PersistentRecord` per network).

    Raises :class:`ConvertError` (one line naming ``path``) for a global outside the allow-list
    (nothing was called), and for a damaged or truncated file.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            return _NetworkUnpickler(f).load()
    except _Refused as exc:
        raise ConvertError(
            f"{path}: refused: the pickle asks for {exc}, which a StyleGAN2 network pickle never "
            "needs (only tensors, plain containers, numpy numbers and NVlabs' persistent-object "
            "records are read); nothing in it was run"
        ) from None
    except _Damaged as exc:
        raise ConvertError(f"{path}: damaged network pickle: {exc}") from None
    except OSError as exc:
        raise ConvertError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except Exception as exc:  # noqa: BLE001 - a damaged stream raises many types
        raise ConvertError(
            f"{path}: damaged or truncated network pickle ({_first_line(exc)})"
        ) from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    first = text.splitlines()[0][:120] if text else ""
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


# --------------------------------------------------------------------------- shared checks


@dataclass
class _Source:
    """What a reader found: our generator's kwargs, its state dict, and notes for the meta."""

    config: dict[str, Any]
    state: dict[str, torch.Tensor]
    info: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    has_w_avg: bool = True


def fit_channels(
    channels: dict[int, int], base: int | None = None, cmax: int | None = None
) -> tuple[int, int] | None:
    """``(channel_base, channel_max)`` with ``min(channel_base // r, channel_max) == channels[r]``
    for every resolution ``r``; the given pair when it fits, else one derived from the counts,
    else ``None``."""

    def fits(b: int, m: int) -> bool:
        return all(min(b // r, m) == c for r, c in channels.items())

    if isinstance(base, int) and isinstance(cmax, int) and base > 0 and cmax > 0:
        if fits(base, cmax):
            return base, cmax
    top = max(channels.values())
    below = [r for r, c in channels.items() if c < top]
    b = channels[max(below)] * max(below) if below else top * max(channels)
    return (b, top) if fits(b, top) else None


def _expected_blur(gain: float) -> torch.Tensor:
    f = torch.tensor(_FIR, dtype=torch.float64)
    return (torch.outer(f, f) / f.sum() ** 2 * gain).float()


def _check_blur(t: torch.Tensor | None, gain: float, where: str, path: Path) -> None:
    if t is None:
        return
    if t.shape != (4, 4) or not torch.allclose(t.float(), _expected_blur(gain), atol=1e-6):
        raise ConvertError(
            f"{path}: {where} resamples with a filter other than [1, 3, 3, 1] "
            f"(found {t.flatten()[:4].tolist()}...); garment_gen's generator uses only that one"
        )


def _check_geometry(path: Path, what: str, resolution: int, img_channels: int) -> None:
    if resolution < 32 or resolution > 1024:
        raise ConvertError(
            f"{path}: {what} makes {resolution} px images; garment_gen's generator supports "
            "32 to 1024 px"
        )
    if img_channels != 3:
        raise ConvertError(
            f"{path}: {what} makes {img_channels}-channel images; garment_gen works on RGB (3)"
        )


def _channels_or_refuse(
    path: Path, what: str, channels: dict[int, int], base: Any = None, cmax: Any = None
) -> tuple[int, int]:
    fit = fit_channels(channels, base, cmax)
    if fit is None:
        found = ", ".join(f"{r}px:{c}" for r, c in sorted(channels.items()))
        raise ConvertError(
            f"{path}: {what} has channel counts ({found}) that garment_gen's generator cannot "
            "express: it uses min(channel_base // resolution, channel_max) channels per block"
        )
    return fit


def _build_generator(path: Path, src: _Source) -> Generator:
    """Our Generator with ``src.state`` loaded: every tensor placed, every shape equal."""
    try:
        g = Generator(**src.config)
    except StyleGANConfigError as exc:
        raise ConvertError(f"{path}: cannot build the generator: {exc}") from None
    ours = g.state_dict()
    if not src.has_w_avg:
        src.state["w_avg"] = torch.zeros_like(ours["w_avg"])  # estimated below
    missing = sorted(set(ours) - set(src.state))
    extra = sorted(set(src.state) - set(ours))
    if missing or extra:
        raise ConvertError(
            f"{path}: the network does not map onto garment_gen's generator "
            f"(unmapped: {', '.join((missing + extra)[:4])})"
        )
    for k, v in src.state.items():
        if tuple(v.shape) != tuple(ours[k].shape):
            raise ConvertError(
                f"{path}: {k} has shape {list(v.shape)} where {list(ours[k].shape)} was expected"
            )
    g.load_state_dict({k: v.detach().float().clone() for k, v in src.state.items()})
    if not src.has_w_avg:
        g.w_avg.copy_(estimate_w_avg(g))
        src.notes.append(
            f"w_avg not in the source: set to the mean W of {W_AVG_SAMPLES} z (seed 0)"
        )
    return g.requires_grad_(False).eval()


def estimate_w_avg(g: Generator, n: int = W_AVG_SAMPLES, seed: int = 0) -> torch.Tensor:
    """Mean W of ``n`` seeded ``z`` (for truncation when the source keeps no average)."""
    z = torch.randn(n, g.z_dim, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return g.mapping(z)[:, 0].mean(dim=0)


# --------------------------------------------------------------------------- NVlabs


def _child(obj: PersistentRecord, name: str, cls: str | tuple[str, ...], path: Path, where: str):
    node = obj.children.get(name)
    names = (cls,) if isinstance(cls, str) else cls
    if not isinstance(node, PersistentRecord) or node.class_name not in names:
        found = node.class_name if isinstance(node, PersistentRecord) else type(node).__name__
        found = "nothing" if node is None else found
        raise ConvertError(
            f"{path}: {where}.{name} is not a StyleGAN2 {names[0]} (found {found}); "
            "not a stylegan2-ada-pytorch / stylegan3 --cfg=stylegan2 generator"
        )
    return node


def _refuse_stylegan3(path: Path, where: str, synthesis: PersistentRecord) -> None:
    kids = synthesis.children
    is_sg3 = any(
        isinstance(k, PersistentRecord)
        and (k.class_name == "SynthesisInput" or "magnitude_ema" in (k.state.get("_buffers") or {}))
        for k in kids.values()
    )
    if is_sg3:
        raise ConvertError(
            f"{path}: {where} is a StyleGAN3 generator (a SynthesisInput layer and SynthesisLayers "
            "with magnitude_ema, config -t or -r); only StyleGAN2 generators can be converted "
            "(stylegan3's --cfg=stylegan2 ones are)"
        )


def _nvlabs_mapping(path: Path, where: str, mapping: PersistentRecord, z_dim: int, w_dim: int):
    """``(num_layers, lr_multiplier, {our key: tensor})`` of an NVlabs MappingNetwork."""
    if "embed" in mapping.children:
        raise ConvertError(
            f"{path}: {where} is conditional (its mapping network embeds class labels); "
            "conditioning is not supported: garment_gen's encoders drive an unconditional "
            "generator, so convert one trained without labels (c_dim=0)"
        )
    state, lrs, n = {}, set(), 0
    while f"fc{n}" in mapping.children:
        fc = _child(mapping, f"fc{n}", "FullyConnectedLayer", path, f"{where}.mapping")
        t = fc.tensors
        want_in = z_dim if n == 0 else w_dim
        if "weight" not in t or "bias" not in t or tuple(t["weight"].shape) != (w_dim, want_in):
            raise ConvertError(
                f"{path}: {where}.mapping.fc{n} is {list(t.get('weight', torch.empty(0)).shape)} "
                f"(no bias or not [{w_dim}, {want_in}]); garment_gen's mapping layers all have "
                "w_dim features and a bias"
            )
        if fc.attr("activation", "linear") != "lrelu":
            raise ConvertError(
                f"{path}: {where}.mapping.fc{n} uses activation {fc.attr('activation')!r}; "
                "garment_gen's mapping network uses lrelu"
            )
        lrs.add(round(float(fc.attr("bias_gain", mapping.attr("lr_multiplier", 0.01))), 9))
        state[f"mapping_net.{n}.weight"], state[f"mapping_net.{n}.bias"] = t["weight"], t["bias"]
        n += 1
    if n == 0 or len(lrs) != 1:
        raise ConvertError(f"{path}: {where}.mapping has no fc layers of one learning rate")
    return n, lrs.pop(), state


def _nvlabs_layer(
    path: Path, where: str, layer: PersistentRecord, prefix: str, up: bool
) -> dict[str, torch.Tensor]:
    """One SynthesisLayer -> ``{our key: tensor}``; refuses what our ModulatedConv cannot do."""
    t = layer.tensors
    w = t.get("weight")
    if w is None or w.ndim != 4 or w.shape[2:] != (3, 3):
        raise ConvertError(f"{path}: {where} is not a 3x3 modulated conv")
    if int(layer.attr("up", 1)) != (2 if up else 1) or layer.attr("activation", "lrelu") != "lrelu":
        raise ConvertError(
            f"{path}: {where} has up={layer.attr('up', 1)}, activation="
            f"{layer.attr('activation', 'lrelu')!r}; StyleGAN2 uses up={2 if up else 1}, lrelu"
        )
    _check_blur(t.get("resample_filter"), 1.0, where, path)
    res = int(layer.attr("resolution", 0))
    out = {
        f"{prefix}.weight": w,
        f"{prefix}.bias": t["bias"],
        f"{prefix}.affine.weight": layer.children["affine"].tensors["weight"],
        f"{prefix}.affine.bias": layer.children["affine"].tensors["bias"],
    }
    if "noise_const" in t:
        out[f"{prefix}.noise_strength"] = t["noise_strength"].reshape(())
        out[f"{prefix}.noise_const"] = t["noise_const"]
    else:  # use_noise=False: no noise input is what a zero strength gives
        out[f"{prefix}.noise_strength"] = torch.zeros(())
        out[f"{prefix}.noise_const"] = torch.zeros(res, res)
    return out


def _nvlabs_block(
    path: Path, where: str, blk: PersistentRecord, k: int, res: int, is_last: bool
) -> tuple[dict[str, torch.Tensor], set]:
    """One SynthesisBlock -> ``({our key: tensor}, {conv_clamp values})``."""
    arch = blk.attr("architecture", "skip")
    kids = blk.children
    if arch != "skip" or "skip" in kids or ("torgb" not in kids and not is_last):
        arch = arch if arch != "skip" else ("resnet" if "skip" in kids else "orig")
        raise ConvertError(
            f"{path}: {where} uses the '{arch}' synthesis architecture; garment_gen's generator "
            "is the 'skip' one (StyleGAN2's config F), so it cannot be mapped"
        )
    _check_blur(blk.tensors.get("resample_filter"), 1.0, where, path)
    prefix = f"synthesis.blocks.{k}"
    state, clamps = {}, set()
    names = ["conv1"] if res == 4 else ["conv0", "conv1"]
    for name in names:
        layer = _child(blk, name, "SynthesisLayer", path, where)
        state.update(
            _nvlabs_layer(path, f"{where}.{name}", layer, f"{prefix}.{name}", name == "conv0")
        )
        clamps.add(layer.attr("conv_clamp"))
    if res == 4:
        state[f"{prefix}.const"] = blk.tensors["const"].unsqueeze(0)
    rgb = _child(blk, "torgb", "ToRGBLayer", path, where)
    rw = rgb.tensors["weight"]
    if rw.ndim != 4 or rw.shape[2:] != (1, 1):
        raise ConvertError(f"{path}: {where}.torgb is not a 1x1 conv")
    state[f"{prefix}.torgb.weight"] = rw[:, :, 0, 0]
    state[f"{prefix}.torgb.bias"] = rgb.tensors["bias"]
    state[f"{prefix}.torgb.affine.weight"] = rgb.children["affine"].tensors["weight"]
    state[f"{prefix}.torgb.affine.bias"] = rgb.children["affine"].tensors["bias"]
    clamps.add(rgb.attr("conv_clamp"))
    return state, clamps


def _as_int(value: Any, what: str, path: Path) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
        raise ConvertError(f"{path}: {what} is {value!r}, not a whole number")
    return int(value)


def _nvlabs_network(path: Path, data: Any, which: str) -> tuple[PersistentRecord, str]:
    """The ``which`` Generator record of an NVlabs pickle and its name; refuses conditional ones."""
    if isinstance(data, PersistentRecord):
        net, where = data, data.class_name
    elif isinstance(data, dict):
        if which not in data:
            found = ", ".join(str(k) for k in data) or "nothing"
            raise ConvertError(f"{path}: no {which} in this pickle (it holds: {found})")
        net, where = data[which], which
    else:
        raise ConvertError(f"{path}: not an NVlabs network pickle (holds a {type(data).__name__})")
    if not isinstance(net, PersistentRecord) or net.class_name != "Generator":
        found = net.class_name if isinstance(net, PersistentRecord) else type(net).__name__
        raise ConvertError(f"{path}: {where} is a {found}, not an NVlabs Generator")
    c_dim = _as_int(net.attr("c_dim", 0), f"{where}.c_dim", path)
    if c_dim > 0:
        raise ConvertError(
            f"{path}: {where} is conditional (c_dim={c_dim}: it takes class labels); "
            "conditioning is not supported: garment_gen's encoders drive an unconditional "
            "generator, so convert one trained without labels (c_dim=0)"
        )
    return net, where


def _nvlabs_synthesis(
    path: Path, where: str, synthesis: PersistentRecord, resolution: int
) -> tuple[dict[str, torch.Tensor], dict[int, int], Any]:
    """``({our key: tensor}, {resolution: channels}, conv_clamp)`` of a SynthesisNetwork."""
    if resolution < 4 or resolution & (resolution - 1):
        raise ConvertError(f"{path}: {where} has img_resolution={resolution}, not a power of two")
    state, channels, clamps = {}, {}, set()
    for k, res in enumerate(2**i for i in range(2, int(math.log2(resolution)) + 1)):
        blk = _child(synthesis, f"b{res}", "SynthesisBlock", path, where)
        blk_state, blk_clamps = _nvlabs_block(
            path, f"{where}.b{res}", blk, k, res, res == resolution
        )
        state.update(blk_state)
        clamps |= blk_clamps
        channels[res] = int(blk_state[f"synthesis.blocks.{k}.conv1.weight"].shape[0])
    if len(clamps) != 1:
        raise ConvertError(f"{path}: {where} clamps its layers at different values {clamps}")
    return state, channels, clamps.pop()


def _nvlabs_source(path: Path, data: Any, which: str) -> _Source:
    """Map the ``which`` network of an NVlabs pickle onto our generator's config and state."""
    net, where = _nvlabs_network(path, data, which)
    z_dim = _as_int(net.attr("z_dim"), f"{where}.z_dim", path)
    w_dim = _as_int(net.attr("w_dim"), f"{where}.w_dim", path)
    mapping = _child(net, "mapping", "MappingNetwork", path, where)
    synthesis = net.children.get("synthesis")
    if isinstance(synthesis, PersistentRecord):
        _refuse_stylegan3(path, f"{where}.synthesis", synthesis)
    synthesis = _child(net, "synthesis", "SynthesisNetwork", path, where)
    resolution = _as_int(
        synthesis.attr("img_resolution", net.attr("img_resolution")), "img_resolution", path
    )
    n_layers, lr_mul, state = _nvlabs_mapping(path, where, mapping, z_dim, w_dim)
    syn_state, channels, conv_clamp = _nvlabs_synthesis(
        path, f"{where}.synthesis", synthesis, resolution
    )
    state.update(syn_state)
    img_channels = int(state[f"synthesis.blocks.{len(channels) - 1}.torgb.weight"].shape[0])
    _check_geometry(path, where, resolution, img_channels)
    kw = synthesis.init_kwargs
    base, cmax = _channels_or_refuse(
        path, where, channels, kw.get("channel_base", 32768), kw.get("channel_max", 512)
    )
    w_avg = mapping.tensors.get("w_avg")
    if w_avg is not None:
        state["w_avg"] = w_avg
    beta = mapping.attr("w_avg_beta", 0.995)
    config = dict(
        resolution=resolution,
        z_dim=z_dim,
        w_dim=w_dim,
        mapping_layers=n_layers,
        mapping_lr_mul=float(lr_mul),
        channel_base=base,
        channel_max=cmax,
        img_channels=img_channels,
        w_avg_beta=float(beta) if isinstance(beta, (int, float)) else 0.995,
        conv_clamp=None if conv_clamp is None else float(conv_clamp),
        clamp_after_gain=True,
    )
    fp16 = synthesis.attr("num_fp16_res", 0)
    info = {
        "class": f"{net.class_name} (persistence version {net.version})",
        "num_fp16_res": fp16,
        "conv_clamp": config["conv_clamp"],
    }
    notes = []
    if isinstance(fp16, int) and fp16 > 0:
        notes.append(
            f"the source ran its top {fp16} resolutions in float16 on a GPU; "
            "this generator runs float32 throughout (same math, no float16 rounding)"
        )
    return _Source(config, state, info, notes, has_w_avg=w_avg is not None)


# --------------------------------------------------------------------------- rosinality


def _pop(sd: dict[str, torch.Tensor], key: str, path: Path, what: str) -> torch.Tensor:
    if key not in sd:
        raise ConvertError(
            f"{path}: {what} has no {key}; not a rosinality stylegan2-pytorch generator"
        )
    v = sd.pop(key)
    if not isinstance(v, torch.Tensor):
        raise ConvertError(f"{path}: {what}.{key} is not a tensor")
    return v


def _ros_conv(sd: dict, src: str, dst: str, noise: torch.Tensor | None, path: Path, what: str):
    w = _pop(sd, f"{src}.conv.weight", path, what)
    if w.ndim != 5 or w.shape[0] != 1 or w.shape[3:] != (3, 3):
        raise ConvertError(f"{path}: {what}.{src} is not a 3x3 modulated conv")
    out = {
        f"{dst}.weight": w[0],
        f"{dst}.affine.weight": _pop(sd, f"{src}.conv.modulation.weight", path, what),
        f"{dst}.affine.bias": _pop(sd, f"{src}.conv.modulation.bias", path, what),
        f"{dst}.noise_strength": _pop(sd, f"{src}.noise.weight", path, what).reshape(()),
        f"{dst}.bias": _pop(sd, f"{src}.activate.bias", path, what),
    }
    blur = sd.pop(f"{src}.conv.blur.kernel", None)
    _check_blur(blur, 4.0, f"{what}.{src}", path)
    if noise is not None:
        out[f"{dst}.noise_const"] = noise.reshape(noise.shape[-2:])
    return out


def _ros_torgb(sd: dict, src: str, dst: str, path: Path, what: str) -> dict[str, torch.Tensor]:
    w = _pop(sd, f"{src}.conv.weight", path, what)
    if w.ndim != 5 or w.shape[0] != 1 or w.shape[3:] != (1, 1):
        raise ConvertError(f"{path}: {what}.{src} is not a 1x1 toRGB conv")
    _check_blur(sd.pop(f"{src}.upsample.kernel", None), 4.0, f"{what}.{src}", path)
    return {
        f"{dst}.weight": w[0, :, :, 0, 0],
        f"{dst}.bias": _pop(sd, f"{src}.bias", path, what).reshape(-1),
        f"{dst}.affine.weight": _pop(sd, f"{src}.conv.modulation.weight", path, what),
        f"{dst}.affine.bias": _pop(sd, f"{src}.conv.modulation.bias", path, what),
    }


def _ros_synthesis(
    path: Path, sd: dict, what: str, n_rgb: int
) -> tuple[dict[str, torch.Tensor], dict[int, int], list[str]]:
    """rosinality's synthesis keys popped from ``sd``: ``(our state, channels, notes)``."""
    noises = {
        int(k.rsplit("_", 1)[1]): sd.pop(k)
        for k in list(sd)
        if re.fullmatch(r"noises\.noise_\d+", k)
    }
    const = _pop(sd, "input.input", path, what)
    if const.ndim != 4 or const.shape[2:] != (4, 4):
        raise ConvertError(
            f"{path}: {what} starts from a {list(const.shape[2:])} constant; StyleGAN2 (and "
            "garment_gen's generator) starts at 4x4"
        )
    state = {"synthesis.blocks.0.const": const}
    state.update(_ros_conv(sd, "conv1", "synthesis.blocks.0.conv1", noises.get(0), path, what))
    state.update(_ros_torgb(sd, "to_rgb1", "synthesis.blocks.0.torgb", path, what))
    channels = {4: int(const.shape[1])}
    for k in range(1, n_rgb + 1):
        dst = f"synthesis.blocks.{k}"
        for j, name in ((2 * k - 2, "conv0"), (2 * k - 1, "conv1")):
            state.update(
                _ros_conv(sd, f"convs.{j}", f"{dst}.{name}", noises.get(j + 1), path, what)
            )
        state.update(_ros_torgb(sd, f"to_rgbs.{k - 1}", f"{dst}.torgb", path, what))
        channels[2 ** (k + 2)] = int(state[f"{dst}.conv1.weight"].shape[0])
    notes = []
    if len(noises) < 2 * n_rgb + 1:
        notes.append("no noises.noise_N buffers: constant noise set to zero")
        for key in list(state):
            if key.endswith(".noise_strength"):
                res = 2 ** (int(key.split(".")[2]) + 2)
                state.setdefault(
                    key.replace("noise_strength", "noise_const"), torch.zeros(res, res)
                )
    return state, channels, notes


def _rosinality_source(path: Path, ckpt: dict, which: str, lr_mlp: float) -> _Source:
    """Map rosinality's ``g_ema`` (or ``g``) state dict onto our generator's config and state."""
    what = {"G_ema": "g_ema", "G": "g"}[which]
    if not isinstance(ckpt.get(what), dict):
        found = ", ".join(str(k) for k in ckpt) or "nothing"
        raise ConvertError(f"{path}: no {what} state dict in this checkpoint (it holds: {found})")
    sd = dict(ckpt[what])
    n_mlp = n_rgb = 0
    while f"style.{n_mlp + 1}.weight" in sd:
        n_mlp += 1
    while f"to_rgbs.{n_rgb}.conv.weight" in sd:
        n_rgb += 1
    if n_mlp == 0 or "input.input" not in sd:
        raise ConvertError(
            f"{path}: {what} is not a rosinality stylegan2-pytorch generator "
            "(no style.N / input.input)"
        )
    state = {}
    for i in range(n_mlp):
        state[f"mapping_net.{i}.weight"] = _pop(sd, f"style.{i + 1}.weight", path, what)
        state[f"mapping_net.{i}.bias"] = _pop(sd, f"style.{i + 1}.bias", path, what)
    style_dim = int(state["mapping_net.0.weight"].shape[1])
    syn_state, channels, notes = _ros_synthesis(path, sd, what, n_rgb)
    state.update(syn_state)
    if sd:
        raise ConvertError(
            f"{path}: {what} has weights garment_gen's generator has no place for "
            f"({', '.join(sorted(sd)[:4])}); not a plain rosinality StyleGAN2 generator"
        )
    resolution = 2 ** (n_rgb + 2)
    img_channels = int(state["synthesis.blocks.0.torgb.weight"].shape[0])
    _check_geometry(path, what, resolution, img_channels)
    base, cmax = _channels_or_refuse(path, what, channels)
    latent_avg = ckpt.get("latent_avg")
    if isinstance(latent_avg, torch.Tensor) and latent_avg.numel() % style_dim == 0:
        state["w_avg"] = latent_avg.reshape(-1, style_dim).mean(dim=0)
    config = dict(
        resolution=resolution,
        z_dim=style_dim,
        w_dim=style_dim,
        mapping_layers=n_mlp,
        mapping_lr_mul=float(lr_mlp),
        channel_base=base,
        channel_max=cmax,
        img_channels=img_channels,
    )
    # rosinality's channels at 64 px are 256 * channel_multiplier
    info: dict[str, Any] = {"channel_multiplier": channels[64] / 256 if 64 in channels else None}
    args = ckpt.get("args")
    if isinstance(args, argparse.Namespace):
        info["args"] = {
            k: v for k, v in vars(args).items() if isinstance(v, (int, float, str, bool))
        }
    return _Source(config, state, info, notes, has_w_avg="w_avg" in state)


def _load_torch_checkpoint(path: Path) -> Any:
    """``torch.load(weights_only=True)`` (argparse.Namespace, rosinality's ``args``, allowed)."""
    try:
        with warnings.catch_warnings(), torch.serialization.safe_globals([argparse.Namespace]):
            warnings.simplefilter("ignore", UserWarning)
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for damaged files
        text = str(exc)
        if "Weights only load failed" in text or "Unsupported global" in text:
            m = re.search(r"GLOBAL ([\w.]+)", text)
            asked = m.group(1) if m else "a Python object"
            raise ConvertError(
                f"{path}: refused: the checkpoint holds pickled code ({asked}), not just tensors "
                "and plain containers; nothing in it was run"
            ) from None
        raise ConvertError(
            f"{path}: damaged or truncated PyTorch checkpoint ({type(exc).__name__})"
        ) from None


# --------------------------------------------------------------------------- entry point


def sniff_format(path: Path) -> str:
    """``FORMAT_NVLABS`` (a plain pickle) or ``FORMAT_ROSINALITY`` (a torch.save file)."""
    with open(path, "rb") as f:
        head = f.read(16)
    if not head:
        raise ConvertError(f"{path}: empty file")
    if head.startswith(b"PK\x03\x04"):
        return FORMAT_ROSINALITY
    if head[:1] == b"\x80" and head[2:4] == b"\x8a\x0a":
        if int.from_bytes(head[4:14], "little") == _LEGACY_MAGIC:
            return FORMAT_ROSINALITY  # torch.save's legacy (pre-1.6) format
    if head[:1] == b"\x80" or head[:1] in (b"(", b"}", b"c"):
        return FORMAT_NVLABS
    raise ConvertError(
        f"{path}: neither a network pickle nor a PyTorch checkpoint (starts with {head[:8]!r})"
    )


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_source(
    src: str | Path, which: str = "G_ema", lr_mlp: float = 0.01
) -> tuple[Generator, dict]:
    """Read ``src`` (NVlabs pickle or rosinality checkpoint): ``(generator, meta)``, nothing saved."""
    path = Path(src).expanduser()
    if which not in WHICH:
        raise ConvertError(f"which={which!r}: use G_ema (the averaged generator) or G")
    if not path.is_file():
        raise ConvertError(f"src={src}: file not found")
    fmt = sniff_format(path)
    try:
        if fmt == FORMAT_NVLABS:
            source = _nvlabs_source(path, read_network_pickle(path), which)
        else:
            source = _rosinality_source(path, _rosinality_checkpoint(path), which, lr_mlp)
    except (_Damaged, KeyError, AttributeError, TypeError, IndexError) as exc:
        # a record of the expected class with an entry missing or of the wrong type
        what = f"missing {exc}" if isinstance(exc, KeyError) else _first_line(exc)
        raise ConvertError(f"{path}: damaged or unexpected {fmt} file ({what})") from None
    g = _build_generator(path, source)
    meta = {
        "converted_from": {
            "file": str(path.resolve()),
            "format": fmt,
            "sha256": _sha256(path),
            "network": which if fmt == FORMAT_NVLABS else {"G_ema": "g_ema", "G": "g"}[which],
            **source.info,
        },
        "notes": source.notes,
    }
    return g, _plain(meta)


def _rosinality_checkpoint(path: Path) -> dict:
    ckpt = _load_torch_checkpoint(path)
    if isinstance(ckpt, dict) and ("kind" in ckpt or "format" in ckpt):
        raise ConvertError(
            f"{path}: already a garment_gen model file; use it as model.generator={path}"
        )
    if not isinstance(ckpt, dict):
        raise ConvertError(f"{path}: not a rosinality checkpoint (holds a {type(ckpt).__name__})")
    return ckpt


def _plain(value: Any) -> Any:
    """``value`` as plain Python (what ``torch.load(weights_only=True)`` reads back)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, np.generic):
        return value.item()
    return str(value)


def convert_generator(
    src: str | Path, out: str | Path, which: str = "G_ema", lr_mlp: float = 0.01
) -> Path:
    """Convert a foreign StyleGAN2 generator into garment_gen's ``generator.pt``; returns ``out``.

    Args:
        src: an NVlabs stylegan2-ada-pytorch / stylegan3 (``--cfg=stylegan2``) network pickle,
            or a rosinality stylegan2-pytorch checkpoint (see the module docstring).
        out: where to write the generator (atomically).
        which: ``G_ema`` (the moving average, what NVlabs and rosinality generate with) or ``G``.
        lr_mlp: rosinality only: the mapping network's learning-rate multiplier it was built
            with (not stored in its checkpoints; its default is 0.01).

    Raises:
        ConvertError: one line for a file that is unsafe, damaged or cannot be mapped.
    """
    from garment_gen.networks.serialization import save_model
    from garment_gen.utils.oserrors import check_writable, disk_reason, is_disk_error

    if isinstance(lr_mlp, bool) or not isinstance(lr_mlp, (int, float)) or not lr_mlp > 0:
        raise ConvertError(f"lr_mlp={lr_mlp!r}: a positive number (rosinality's default: 0.01)")
    out_path = Path(out).expanduser()
    if Path(src).expanduser().resolve() == out_path.resolve():
        raise ConvertError(f"out={out}: the same file as src; choose another name")
    if out_path.is_dir():
        raise ConvertError(f"out={out}: a folder; give a file name such as generator.pt")
    g, meta = read_source(src, which, lr_mlp)
    check_writable(out_path.parent, "out")
    try:
        return save_model(g, out_path, meta=meta)
    except OSError as exc:
        if is_disk_error(exc):
            raise ConvertError(f"out={out}: cannot write: {disk_reason(exc)}") from None
        raise


def main() -> None:
    """Entry point for ``python -m garment_gen.convert``."""

    from garment_gen import conf_dir
    from garment_gen.cli import hydra_main, user_errors

    @user_errors
    def _app(cfg) -> None:
        from omegaconf import OmegaConf

        from garment_gen.networks.serialization import read_model_file

        d = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
        d.pop("hydra", None)
        src = str(d["src"])
        out = d.get("out") or str(Path(src).with_suffix("")) + ".generator.pt"
        path = convert_generator(src, out, which=str(d.get("which")), lr_mlp=d.get("lr_mlp"))
        payload = read_model_file(path)
        c, m = payload["config"], payload["meta"]
        print(
            f"wrote {path} ({m['converted_from']['format']}, {m['converted_from']['network']}): "
            f"{c['resolution']} px, w_dim {c['w_dim']}, {c['mapping_layers']} mapping layers; "
            f"next: python -m garment_gen.train stage=encoders model.generator={path} "
            f"data.resolution={c['resolution']}"
        )
        for note in m.get("notes") or []:
            print(f"note: {note}")

    hydra_main(conf_dir() / "cli", "convert", _app)


if __name__ == "__main__":
    sys.exit(main())
