"""Export a trained garment model for inference without garment_gen: TorchScript or ONNX.

Usage::

    python -m garment_gen.export model=PATH/garment_model.pt format=onnx|torchscript \
        [out=PATH] [batch=1] [check=true] [opset=17] [dynamo=false]

The exported network is :class:`InferenceModel`: the :class:`GarmentModel` (encoders, injected
features and the generator's synthesis network) with its fixed noise (``noise_mode="const"``), so
the same inputs always give the same image:

    inputs   mask     float ``[B, 1, R, R]`` in ``{0, 1}`` (garment = 1), aligned like the training data
             texture  float ``[B, 3, R, R]`` in ``[-1, 1]``, aligned like the training data
    output   image    float ``[B, 3, R, R]`` in ``[-1, 1]``

Alignment of raw photos (cut-out, centring, margin) is not part of the export; do it with
``GarmentGenerator.shape_tensor`` / ``texture_tensor`` or the same steps in your own code.

With ``check=true`` (the default) the written file is loaded back (``torch.jit.load``, or
an ONNX Runtime session) and compared with the PyTorch model on random blob masks and
random textures, at the export batch size and at another one (the batch axis is dynamic);
the export fails when the largest absolute difference exceeds ``tolerance``. The file
appears at ``out`` only after that check passed (temporary file + rename).

ONNX needs the ``onnx`` package; the check needs ``onnxruntime``. ``dynamo=false`` uses
PyTorch's TorchScript-based ONNX exporter (a few seconds, deprecated upstream but fully
working); ``dynamo=true`` uses the ``torch.export``-based exporter (needs ``onnxscript``,
about ten times slower here, opset >= 18).
"""

from __future__ import annotations

import copy
import importlib.util
import logging
import os
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from garment_gen.errors import GarmentGenError

log = logging.getLogger("garment_gen.export")

FORMATS = ("onnx", "torchscript")
# Suffixes of the default output file; never ``.pt`` alone, which would collide with garment_model.pt.
_SUFFIX = {"onnx": ".onnx", "torchscript": ".torchscript.pt"}
INPUT_NAMES = ["mask", "texture"]
OUTPUT_NAMES = ["image"]


class InferenceModel(nn.Module):
    """The garment model with fixed noise, clamped: ``(mask, texture) -> image``.

    ``forward(mask, texture)``: mask float ``[B, 1, R, R]`` in ``{0, 1}``, texture float
    ``[B, 3, R, R]`` in ``[-1, 1]`` -> image float ``[B, 3, R, R]`` clamped to ``[-1, 1]``.
    Matches ``GarmentGenerator.generate_tensors(mask, texture)`` (``truncation_psi=1``, no seed).
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.requires_grad_(False).eval()

    def forward(self, mask: torch.Tensor, texture: torch.Tensor) -> torch.Tensor:
        return self.model(mask, texture, noise_mode="const").clamp(-1, 1)


def random_inputs(
    batch: int, resolution: int, seed: int = 0, width: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random test inputs: blob masks float ``[B, 1, R, W]`` in ``{0, 1}``, textures ``[B, 3, R, W]`` in ``[-1, 1]``
    (``W`` = ``R`` unless ``width`` is given: portrait models).

    Masks are thresholded smooth noise (one or a few blobs, never empty); textures are a smooth
    colour field plus fine noise, white (1.0) outside the mask like the aligned training textures.
    """
    g = torch.Generator().manual_seed(seed)
    r, w = resolution, resolution if width is None else int(width)
    coarse = torch.randn(batch, 1, 5, 5, generator=g)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, 5), torch.linspace(-1, 1, 5), indexing="ij")
    coarse = coarse + 1.5 * (1 - (xx**2 + yy**2))  # favour a central garment-like blob
    field = F.interpolate(coarse, size=(r, w), mode="bicubic", align_corners=True)
    mask = (field > 0.5).float()
    mask[:, :, r // 2 - r // 8 : r // 2 + r // 8, w // 2 - w // 8 : w // 2 + w // 8] = 1.0
    colour = F.interpolate(
        torch.rand(batch, 3, 4, 4, generator=g) * 2 - 1, size=(r, w), mode="bilinear"
    )
    texture = (colour + 0.2 * torch.randn(batch, 3, r, w, generator=g)).clamp(-1, 1)
    texture = torch.where(mask > 0, texture, torch.ones_like(texture))
    return mask, texture


def _load_model(model: str | Path | Any) -> tuple[Any, str]:
    from garment_gen.inference import GarmentGenerator

    if isinstance(model, GarmentGenerator):
        return model, "<GarmentGenerator>"
    return GarmentGenerator.from_checkpoint(model, device="cpu"), str(model)


def _require(package: str, why: str) -> None:
    if importlib.util.find_spec(package) is None:
        raise GarmentGenError(
            f"{why} needs the '{package}' package: pip install {package} (or pip install 'garment_gen[export]')"
        )


def _default_out(model_path: str, fmt: str) -> Path:
    from garment_gen.inference import PRETRAINED_PREFIX

    if model_path.startswith(PRETRAINED_PREFIX):  # shipped inside the package: write here instead
        return Path(f"{model_path[len(PRETRAINED_PREFIX) :]}_garment_model{_SUFFIX[fmt]}")
    p = Path(model_path)
    return p.with_name(p.stem + _SUFFIX[fmt])


def _write_torchscript(
    net: InferenceModel, example: tuple[torch.Tensor, torch.Tensor], path: Path
) -> None:
    with warnings.catch_warnings():
        # Shape checks in the networks are Python conditions; traced as constants they are harmless.
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings(
            "ignore", category=FutureWarning, message=r".*torch\.jit\..*deprecated"
        )
        traced = torch.jit.trace(net, example, check_trace=False)
        torch.jit.save(traced, str(path))


def _write_onnx(
    net: InferenceModel,
    example: tuple[torch.Tensor, torch.Tensor],
    path: Path,
    opset: int,
    dynamo: bool,
) -> None:
    _require("onnx", "format=onnx")
    if dynamo:
        _require("onnxscript", "dynamo=true")
        batch = torch.export.Dim("batch")
        kwargs: dict[str, Any] = {
            "dynamo": True,
            "dynamic_shapes": {"mask": {0: batch}, "texture": {0: batch}},
            # One self-contained file: external data would be named after the temporary file.
            "external_data": False,
            "verbose": False,
        }
    else:
        axes = {name: {0: "batch"} for name in INPUT_NAMES + OUTPUT_NAMES}
        kwargs = {"dynamo": False, "dynamic_axes": axes}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        # The TorchScript-based exporter is deprecated upstream (and says so twice); chosen on purpose.
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.onnx.*")
        warnings.filterwarnings(
            "ignore", category=DeprecationWarning, message=r".*legacy TorchScript-based ONNX export"
        )
        warnings.filterwarnings(
            "ignore", category=UserWarning, message=r".*axis name: batch will not be used"
        )
        try:
            torch.onnx.export(
                net,
                example,
                str(path),
                input_names=INPUT_NAMES,
                output_names=OUTPUT_NAMES,
                opset_version=opset,
                **kwargs,
            )
        except Exception as exc:  # noqa: BLE001 - surface why, with the exporter named
            exporter = (
                "torch.export-based (dynamo=true)" if dynamo else "TorchScript-based (dynamo=false)"
            )
            raise GarmentGenError(
                f"ONNX export failed with the {exporter} exporter at opset {opset}: "
                f"{exc.__class__.__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            ) from exc
    import onnx

    onnx.checker.check_model(str(path))


def _runner(fmt: str, path: Path):
    """A callable ``(mask, texture) -> image`` (torch tensors) running the exported file."""
    if fmt == "torchscript":
        with warnings.catch_warnings():
            warnings.filterwarnings(
                "ignore", category=FutureWarning, message=r".*torch\.jit\..*deprecated"
            )
            loaded = torch.jit.load(str(path), map_location="cpu").eval()

        def run(mask: torch.Tensor, texture: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                return loaded(mask, texture)

        return run
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    session = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])

    def run(mask: torch.Tensor, texture: torch.Tensor) -> torch.Tensor:
        out = session.run(OUTPUT_NAMES, {"mask": mask.numpy(), "texture": texture.numpy()})[0]
        return torch.from_numpy(out)

    return run


def check_export(
    net: nn.Module,
    fmt: str,
    path: str | Path,
    batches: list[int],
    resolution: int,
    seed: int = 0,
    width: int | None = None,
) -> float:
    """Largest absolute difference between the exported file and ``net`` over random inputs of each batch size."""
    run = _runner(fmt, Path(path))
    worst = 0.0
    for i, b in enumerate(batches):
        mask, texture = random_inputs(b, resolution, seed + i, width)
        with torch.no_grad():
            ref = net(mask, texture)
        try:
            got = run(mask, texture)
        except Exception as exc:  # noqa: BLE001 - e.g. a batch axis that was fixed at export time
            raise GarmentGenError(
                f"exported {fmt} model failed on batch size {b}: {exc.__class__.__name__}: {str(exc).splitlines()[0]}"
            ) from exc
        if tuple(got.shape) != tuple(ref.shape):
            raise GarmentGenError(
                f"exported {fmt} model returned {list(got.shape)}, expected {list(ref.shape)}"
            )
        worst = max(worst, float((got.float() - ref).abs().max()))
    return worst


def export(
    model_path: str | Path | Any,
    format: str = "onnx",  # noqa: A002 - the CLI's name for it
    out: str | Path | None = None,
    batch: int = 1,
    check: bool = True,
    opset: int = 17,
    dynamo: bool = False,
    tolerance: float = 1e-3,
    seed: int = 0,
) -> dict[str, Any]:
    """Write ``model_path``'s garment model as TorchScript or ONNX; returns what was written.

    Args:
        model_path: ``garment_model.pt`` (or a loaded ``GarmentGenerator``; then ``out`` is required).
        format: ``onnx`` or ``torchscript``.
        out: output file; None = beside the model (``garment_model.onnx`` /
            ``garment_model.torchscript.pt``).
        batch: batch size of the example inputs used to trace (the batch axis stays dynamic).
        check: compare the written file with PyTorch on random inputs (ONNX needs onnxruntime).
        opset: ONNX opset version.
        dynamo: use the ``torch.export``-based ONNX exporter instead of the TorchScript-based one.
        tolerance: largest allowed absolute difference in the check (images are in [-1, 1]).

    Returns:
        ``{"path", "format", "max_abs_diff" (None without check), "batch_sizes_checked",
        "resolution", "opset" (ONNX), "seconds"}``.

    Raises:
        GarmentGenError: unknown format, unreadable model, missing package, an export that fails
            or differs from PyTorch by more than ``tolerance``.
    """
    t0 = time.time()
    fmt = str(format).lower()
    if fmt not in FORMATS:
        raise GarmentGenError(f"format={format}: must be one of {', '.join(FORMATS)}")
    if int(batch) < 1:
        raise GarmentGenError(f"batch={batch}: must be >= 1")
    if fmt == "onnx":
        _require("onnx", "format=onnx")
        if check:
            _require("onnxruntime", "checking an ONNX export (check=true)")
        if dynamo and opset < 18:
            log.info("dynamo=true needs opset >= 18; using 18")
            opset = 18
    gen, model_name = _load_model(model_path)
    if out is None:
        if model_name.startswith("<"):
            raise GarmentGenError("out is required when exporting an already loaded model")
        out = _default_out(model_name, fmt)
    out = Path(out).expanduser()
    if not model_name.startswith("<") and out.resolve() == Path(model_name).resolve():
        raise GarmentGenError(
            f"out={out}: would overwrite the model file itself; choose another path"
        )
    if out.is_dir():
        raise GarmentGenError(f"out={out}: is a folder; give a file path")
    out.parent.mkdir(parents=True, exist_ok=True)

    model = gen.model
    if gen.device.type != "cpu":  # export on the CPU without moving the caller's model
        model = copy.deepcopy(model).cpu()
    net = InferenceModel(model)
    example = random_inputs(int(batch), gen.height, seed, gen.width)
    fd, tmp_name = tempfile.mkstemp(
        prefix=f".{out.name}.", suffix=".tmp" + out.suffix, dir=out.parent
    )
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        if fmt == "torchscript":
            _write_torchscript(net, example, tmp)
        else:
            _write_onnx(net, example, tmp, int(opset), bool(dynamo))
        max_diff = None
        batches = [int(batch), int(batch) + 2]
        if check:
            max_diff = check_export(net, fmt, tmp, batches, gen.height, seed + 1, gen.width)
            log.info(
                "%s vs PyTorch on random inputs (batch %s): max abs diff %.3g",
                fmt,
                batches,
                max_diff,
            )
            if not max_diff <= tolerance:
                raise GarmentGenError(
                    f"exported {fmt} model differs from PyTorch by up to {max_diff:.3g} "
                    f"(tolerance {tolerance:g}); not written"
                )
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it private; give it a normal file's mode
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    result: dict[str, Any] = {
        "path": str(out),
        "format": fmt,
        "max_abs_diff": max_diff,
        "batch_sizes_checked": batches if check else [],
        "resolution": gen.resolution,
        "aspect": gen.aspect,
        "seconds": round(time.time() - t0, 2),
    }
    if fmt == "onnx":
        result.update(opset=int(opset), exporter="dynamo" if dynamo else "torchscript")
    return result


# ----------------------------------------------------------------------------- CLI


def main() -> None:
    """Entry point for ``python -m garment_gen.export``."""
    from omegaconf import OmegaConf

    from garment_gen import conf_dir
    from garment_gen.cli import hydra_main, user_errors

    @user_errors
    def _app(cfg) -> None:
        if OmegaConf.is_missing(cfg, "model"):
            raise GarmentGenError(
                "model is required: python -m garment_gen.export model=PATH/garment_model.pt format=onnx|torchscript"
            )
        d = OmegaConf.to_container(cfg, resolve=True)
        d.pop("hydra", None)
        known = {"model", "format", "out", "batch", "check", "opset", "dynamo", "tolerance", "seed"}
        unknown = sorted(set(d) - known)
        if unknown:
            raise GarmentGenError(
                f"unknown export setting(s): {', '.join(unknown)}; valid: {', '.join(sorted(known))}"
            )
        res = export(d.pop("model"), **d)
        diff = (
            "not checked"
            if res["max_abs_diff"] is None
            else f"max abs diff vs PyTorch {res['max_abs_diff']:.3g}"
        )
        print(
            f"wrote {res['path']} ({res['format']}, {res['resolution']} px, {diff}, {res['seconds']:.1f} s)"
        )

    hydra_main(conf_dir() / "cli", "export", _app)


if __name__ == "__main__":
    main()
