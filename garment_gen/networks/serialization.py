"""One save/load contract for every network garment_gen writes.

A file is ``{"kind", "format_version", "config", "state_dict", "meta", "weights_dtype"}``:

* ``kind`` names the network (``generator``, ``segmenter``, ``garment_model``,
  ``discriminator``, ``projected_discriminator``); :data:`KINDS` maps it to its class;
* ``config`` is the class's ``get_config()`` (plain values), ``from_config`` (or the
  constructor) rebuilds it;
* ``state_dict`` holds tensors only, optionally stored in float16 (loaded back as float32);
* ``meta`` is free-form run information (metrics, training settings).

:func:`save_model` writes atomically; :func:`load_model` reads with
``torch.load(weights_only=True)`` (never pickled code), checks kind and version, and gives one
error text for a file that is missing, damaged or of another kind. Files written before this
contract (``garment_gen.generator/1``, ``garment_gen.segmenter/1``,
``garment_gen.garment_model/1``: ``generator.pt``, ``segmenter.pt``, ``garment_model.pt`` and
the first shipped ``reference`` model) still load.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import torch
from torch import nn

from garment_gen.errors import GarmentGenError
from garment_gen.utils.atomic import atomic_path
from garment_gen.utils.safe_load import CheckpointFileError, safe_torch_load

FORMAT_VERSION = 2
KINDS = {
    "generator": "garment_gen.networks.stylegan2.Generator",
    "discriminator": "garment_gen.networks.stylegan2.Discriminator",
    "projected_discriminator": "garment_gen.networks.projected.ProjectedDiscriminator",
    "segmenter": "garment_gen.networks.segmenter.Segmenter",
    "encoders": "garment_gen.networks.encoders.GarmentEncoders",
    "garment_model": "garment_gen.networks.garment_model.GarmentModel",
}
WHAT = {
    "generator": "a pretrained generator (stage=pretrain)",
    "segmenter": "a segmenter (stage=segmenter)",
    "garment_model": "a garment model (stage=encoders)",
    "discriminator": "a discriminator",
    "projected_discriminator": "a projected discriminator",
    "encoders": "shape and texture encoders",
}
_LEGACY = {
    "garment_gen.generator/1": "generator",
    "garment_gen.segmenter/1": "segmenter",
    "garment_gen.garment_model/1": "garment_model",
}


class ModelFileError(CheckpointFileError, ValueError):
    """A model file is missing, damaged, of another kind or from an incompatible version."""


def _class(kind: str) -> type[nn.Module]:
    module, name = KINDS[kind].rsplit(".", 1)
    return getattr(importlib.import_module(module), name)


def kind_of(module: nn.Module) -> str:
    """The registered kind of ``module``'s class."""
    path = f"{type(module).__module__}.{type(module).__qualname__}"
    for kind, target in KINDS.items():
        if target == path:
            return kind
    raise GarmentGenError(f"{path} is not a network garment_gen can save ({', '.join(KINDS)})")


def cast_state(
    state: dict[str, torch.Tensor], dtype: torch.dtype
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Floating-point tensors of ``state`` cast to ``dtype``; returns ``(state, names kept as is)``.

    A tensor with values beyond the narrower type's range (float16 ends at 65504) keeps its own
    dtype rather than turning into infinities.
    """
    out, kept = {}, []
    for k, v in state.items():
        if not v.is_floating_point() or v.dtype == dtype:
            out[k] = v
            continue
        cast = v.to(dtype)
        if bool((torch.isfinite(v) & ~torch.isfinite(cast)).any()):
            out[k] = v
            kept.append(k)
        else:
            out[k] = cast
    return out, kept


def save_model(
    module: nn.Module,
    path: str | Path,
    meta: dict[str, Any] | None = None,
    dtype: torch.dtype | None = None,
) -> Path:
    """Write ``module`` to ``path`` atomically (see the module docstring).

    ``dtype=torch.float16`` stores floating-point weights in half the space; :func:`load_model`
    returns float32 modules. Tensors whose values do not fit stay float32 (listed in the file).
    """
    from garment_gen import __version__

    state = {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}
    kept: list[str] = []
    if dtype is not None and dtype != torch.float32:
        if not dtype.is_floating_point:
            raise GarmentGenError(f"dtype={dtype}: weights can only be stored as a float type")
        state, kept = cast_state(state, dtype)
    payload = {
        "kind": kind_of(module),
        "format_version": FORMAT_VERSION,
        "garment_gen_version": __version__,
        "config": module.get_config(),
        "state_dict": state,
        "meta": dict(meta or {}),
        "weights_dtype": str(dtype or torch.float32).removeprefix("torch."),
        "kept_float32": kept,
    }
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return path


def _upgrade(payload: dict[str, Any]) -> dict[str, Any]:
    """A file of the first formats as a contract-2 payload."""
    kind = _LEGACY[payload["format"]]
    meta = dict(payload.get("meta") or payload.get("extra") or {})
    if kind != "garment_model":
        return {
            "kind": kind,
            "config": payload["kwargs"],
            "state_dict": payload["state_dict"],
            "meta": meta,
        }
    state: dict[str, torch.Tensor] = {}
    config: dict[str, Any] = {"data": payload.get("data", {}), "segmenter": None}
    for part in ("generator", "encoders", "segmenter"):
        sub = payload.get(part)
        if not sub:
            continue
        config[part] = sub["kwargs"]
        state.update({f"{part}.{k}": v for k, v in sub["state_dict"].items()})
    return {"kind": kind, "config": config, "state_dict": state, "meta": meta}


def read_model_file(path: str | Path) -> dict[str, Any]:
    """The payload of a model file (any version), checked: ``{kind, config, state_dict, meta}``."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: model file not found")
    try:
        payload = safe_torch_load(path)
    except CheckpointFileError as exc:
        raise ModelFileError(str(exc)) from None
    if not isinstance(payload, dict):
        raise ModelFileError(f"{path}: not a garment_gen model file")
    if payload.get("format") in _LEGACY:
        try:
            return _upgrade(payload)
        except (KeyError, TypeError) as exc:
            raise ModelFileError(f"{path}: damaged model file (missing {exc})") from None
    kind = payload.get("kind")
    if kind is None:
        if "pytorch-lightning_version" in payload:
            raise ModelFileError(
                f"{path}: a training checkpoint, not an exported model; use the run's export "
                "(generator.pt, segmenter.pt, garment_model.pt), or resume with ckpt_path="
            )
        raise ModelFileError(
            f"{path}: not a garment_gen model file (format {payload.get('format')!r})"
        )
    if kind not in KINDS:
        raise ModelFileError(f"{path}: unknown kind {kind!r} (known: {', '.join(KINDS)})")
    version = payload.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ModelFileError(
            f"{path}: written by a newer garment_gen (format {version}, this one reads up to "
            f"{FORMAT_VERSION}); upgrade garment_gen"
        )
    for key in ("config", "state_dict"):
        if not isinstance(payload.get(key), dict):
            raise ModelFileError(f"{path}: damaged model file (no {key})")
    return payload


def load_model(
    path: str | Path,
    kind: str | tuple[str, ...] | None = None,
    map_location: str | torch.device = "cpu",
    hint: str = "",
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the network in ``path``: ``(module in eval mode, float32, on map_location; meta)``.

    ``kind`` (one or several) is what the caller expects; another kind is refused with one line
    saying what the file is. ``hint`` is appended to that line (what to do instead).
    """
    path = Path(path)
    payload = read_model_file(path)
    found = payload["kind"]
    wanted = (kind,) if isinstance(kind, str) else kind
    if wanted and found not in wanted:
        expected = " or ".join(WHAT[k] for k in wanted)
        raise ModelFileError(
            f"{path}: this is {WHAT[found]}, expected {expected}" + (f"; {hint}" if hint else "")
        )
    cls = _class(found)
    state = {k: v.float() if v.is_floating_point() else v for k, v in payload["state_dict"].items()}
    try:
        build = getattr(cls, "from_config", None)
        module = build(payload["config"]) if build else cls(**payload["config"])
        module.load_state_dict(state)
    except (TypeError, KeyError, RuntimeError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelFileError(
            f"{path}: {WHAT[found]} that does not match this garment_gen version: {first[:300]}"
        ) from None
    module.requires_grad_(False).eval()
    return module.to(map_location), dict(payload.get("meta") or {})
