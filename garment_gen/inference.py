"""Load a trained garment model and generate garments: shape + texture in, image out.

``garment_model.pt`` (written by ``stage=encoders``) holds the frozen generator,
both encoders, optionally the segmenter, and the data settings used to align
inputs. It is read with ``torch.load(weights_only=True)``: no pickled code.

    from garment_gen.inference import GarmentGenerator
    gen = GarmentGenerator.from_checkpoint("garment_model.pt")
    images = gen.generate(shape="coat_mask.png", texture="stars_tshirt.jpg")
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from garment_gen import __version__
from garment_gen.errors import GarmentGenError

FORMAT = "garment_gen.garment_model/1"


def _module_payload(module: nn.Module) -> dict[str, Any]:
    return {
        "kwargs": module.get_config() if hasattr(module, "get_config") else dict(module.kwargs),
        "state_dict": {k: v.detach().cpu().clone() for k, v in module.state_dict().items()},
    }


def save_garment_model(
    path: str | Path,
    generator: nn.Module,
    encoders: nn.Module,
    segmenter: nn.Module | None = None,
    data: dict[str, Any] | None = None,
    meta: dict[str, Any] | None = None,
    half: bool = False,
) -> Path:
    """Write ``garment_model.pt`` atomically.

    Args:
        data: alignment settings (``resolution``, ``margin``, ``background``).
        meta: free-form run information (kimg, metrics, config).
        half: store floating-point weights as fp16 (smaller file; loaded back as fp32).
    """
    payload: dict[str, Any] = {
        "format": FORMAT,
        "garment_gen_version": __version__,
        "generator": _module_payload(generator),
        "encoders": _module_payload(encoders),
        "segmenter": _module_payload(segmenter) if segmenter is not None else None,
        "data": dict(data or {}),
        "meta": dict(meta or {}),
    }
    if half:
        for key in ("generator", "encoders", "segmenter"):
            if payload[key] is not None:
                sd = payload[key]["state_dict"]
                payload[key]["state_dict"] = {k: v.half() if v.is_floating_point() else v for k, v in sd.items()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _float_state(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.float() if v.is_floating_point() else v for k, v in sd.items()}


def load_garment_model(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read ``garment_model.pt``; returns ``{generator, encoders, segmenter, data, meta}`` (modules in eval).

    Raises:
        GarmentGenError: missing file, or a file that is not a garment model of this version
            (e.g. ``generator.pt`` or ``segmenter.pt`` given by mistake), each with what to do.
    """
    from garment_gen.networks.encoders import GarmentEncoders
    from garment_gen.networks.segmenter import Segmenter
    from garment_gen.networks.stylegan2 import Generator

    path = Path(path)
    if not path.is_file():
        raise GarmentGenError(f"{path}: model file not found")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        raise GarmentGenError(f"{path}: not a readable model file ({exc.__class__.__name__})") from None
    fmt = payload.get("format") if isinstance(payload, dict) else None
    if fmt != FORMAT:
        hint = {
            "garment_gen.segmenter/1": "this is a segmenter export (stage=segmenter)",
        }.get(str(fmt), "")
        if fmt and "generator" in str(fmt):
            hint = "this is a pretrained generator (stage=pretrain); fit the encoders on it with stage=encoders"
        raise GarmentGenError(
            f"{path}: not a garment model (format {fmt!r}, expected {FORMAT!r})"
            + (f": {hint}" if hint else "; export one with `python -m garment_gen.train stage=encoders`")
        )
    try:
        g = Generator(**payload["generator"]["kwargs"])
        g.load_state_dict(_float_state(payload["generator"]["state_dict"]))
        enc = GarmentEncoders(**payload["encoders"]["kwargs"])
        enc.load_state_dict(_float_state(payload["encoders"]["state_dict"]))
        seg = None
        if payload.get("segmenter"):
            seg = Segmenter(**payload["segmenter"]["kwargs"])
            seg.load_state_dict(_float_state(payload["segmenter"]["state_dict"]))
    except (TypeError, KeyError, RuntimeError, ValueError) as exc:
        raise GarmentGenError(
            f"{path}: model was written by garment_gen {payload.get('garment_gen_version')} and does not "
            f"match this version ({__version__}): {exc}"
        ) from None
    modules = {"generator": g, "encoders": enc, "segmenter": seg}
    for m in modules.values():
        if m is not None:
            m.requires_grad_(False).eval().to(map_location)
    return {**modules, "data": payload.get("data", {}), "meta": payload.get("meta", {})}
