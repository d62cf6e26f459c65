"""Evaluate a trained garment model on one split of a prepared dataset, beside a paste baseline.

Usage::

    python -m garment_gen.evaluate model=PATH/garment_model.pt data.root=DATASET split=test \
        [out=DIR] [device=cpu] [batch_size=16] [num_pairs=64] [seed=0] [realism=auto|fid|fd_vgg|none]

Writes ``metrics.json``, ``reconstructions.png`` and ``cross.png`` into ``out`` (default: the
model's folder + ``/eval_<split>``) and prints a table. The same code scores two methods:

* ``model``: the garment model, ``generate_tensors(mask, texture)``;
* ``paste_baseline``: the texture's garment pixels cropped to their bounding box, resized to
  the target mask's bounding box and kept inside the mask (see :func:`paste_baseline`). A
  model that does not beat it has not learned more than copying.

Metrics (images float in ``[-1, 1]``, masks ``{0, 1}``):

* reconstruction, from each sample's own mask and its deterministic occluded texture
  (``GarmentDataset(augment=False)``): ``l2`` (MSE in ``[-1, 1]``), ``psnr`` (dB, images in
  ``[0, 1]``, per image, capped at 100), ``ssim``, ``lpips`` (AlexNet);
* shape fidelity: IoU between the target mask and the generated garment's mask, found by the
  model's bundled segmenter (``iou_segmenter``; null without one) and by a classical
  "differs from the background colour" threshold cleaned by ``clean_mask`` (``iou_classical``);
* cross-combination, shape of sample A with the texture of sample B for seeded random pairs
  A != B: IoU with A's mask (``cross_iou_*``), ``cross_lpips_crop`` (LPIPS between the garment
  crops of the output and of B's image, each padded square on the background, resized to
  ``crop_size``), ``cross_hist_hellinger`` (Hellinger distance between normalised 8x8x8 RGB
  histograms of garment pixels; 0 = same colours, 1 = disjoint);
* ``realism``: Fréchet distance between reconstructions and the split's real images
  (:class:`garment_gen.metrics.RealismMetric`; its backend, ``fid`` or ``fd_vgg``, is named in
  ``realism_backend``); with few images it is biased high: compare runs of equal size only;
* ``images_per_second`` (model only): ``generate_tensors`` throughput on the device, after a warm-up.

:func:`evaluate` is a plain function (tests and notebooks call it); ``main`` wraps it with Hydra.
"""

from __future__ import annotations

import json
import logging
import math
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from garment_gen.errors import GarmentGenError
from garment_gen.metrics.garment import (  # noqa: F401 - re-exported: the evaluator's building blocks
    _background,
    _bbox,
    classical_garment_mask,
    colour_histograms,
    foreground,
    garment_crops,
    hellinger,
    iou,
    paste_baseline,
    segmenter_mask,
)
from garment_gen.utils.atomic import atomic_path

log = logging.getLogger("garment_gen.evaluate")

METHODS = ("model", "paste_baseline")
REALISM_BACKENDS = ("auto", "fid", "fd_vgg", "none")
TEXTURE_SOURCES = ("occluded", "full")
PSNR_CAP = 100.0  # dB; identical images would otherwise give +inf, which JSON cannot hold

# (key, label, higher is better) in table order.
TABLE = [
    ("l2", "reconstruction L2", False),
    ("psnr", "reconstruction PSNR (dB)", True),
    ("ssim", "reconstruction SSIM", True),
    ("lpips", "reconstruction LPIPS", False),
    ("iou_segmenter", "shape IoU, segmenter", True),
    ("iou_classical", "shape IoU, classical", True),
    ("cross_iou_segmenter", "cross IoU (A's shape), segmenter", True),
    ("cross_iou_classical", "cross IoU (A's shape), classical", True),
    ("cross_lpips_crop", "cross texture LPIPS (B's crop)", False),
    ("cross_hist_hellinger", "cross colour histogram Hellinger", False),
    ("realism", "realism", False),
    ("images_per_second", "speed (images/s)", True),
]


# ----------------------------------------------------------------------------- building blocks


# ----------------------------------------------------------------------------- data


class _PairDataset(Dataset):
    """Cross-combination pairs ``(a, b)`` of a split: A's mask with B's texture, and B's real garment."""

    def __init__(self, base: Dataset, pairs: list[tuple[int, int]], textures: str):
        self.base, self.pairs, self.textures = base, pairs, textures

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, k: int) -> dict[str, Any]:
        a, b = self.pairs[k]
        item_a, item_b = self.base[a], self.base[b]
        return {
            "mask": item_a["mask"],
            "texture": item_b["image" if self.textures == "full" else "texture"],
            "ref_image": item_b["image"],
            "ref_mask": item_b["mask"],
        }


def cross_pairs(n: int, num_pairs: int, seed: int) -> list[tuple[int, int]]:
    """``num_pairs`` seeded random index pairs ``(a, b)`` with ``a != b`` (empty when ``n < 2``)."""
    if n < 2 or num_pairs <= 0:
        return []
    rng = np.random.default_rng(seed)
    a = rng.integers(0, n, num_pairs)
    b = (a + rng.integers(1, n, num_pairs)) % n
    return [(int(i), int(j)) for i, j in zip(a, b, strict=True)]


# ----------------------------------------------------------------------------- evaluation


class _Scores:
    """Per-sample metric values of one method, averaged at the end."""

    def __init__(self) -> None:
        self.values: dict[str, list[torch.Tensor]] = {}

    def add(self, key: str, v: torch.Tensor) -> None:
        self.values.setdefault(key, []).append(v.detach().double().cpu().flatten())

    def means(self) -> dict[str, float]:
        return {k: float(torch.cat(v).mean()) for k, v in self.values.items()}


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} ({torch.get_num_threads()} threads)"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _realism_metric(backend: str, size: int, device: torch.device):
    from garment_gen.metrics import RealismMetric

    if backend == "none":
        return None
    try:
        metric = RealismMetric(backend, size=size)
    except Exception as exc:  # noqa: BLE001 - torch-fidelity or Inception weights missing, no network
        hint = "; use realism=fd_vgg (or auto) here" if backend == "fid" else ""
        raise GarmentGenError(
            f"realism={backend}: metric unavailable ({exc.__class__.__name__}: {str(exc).splitlines()[0] if str(exc) else ''}){hint}"
        ) from None
    # Real statistics are computed once and kept while the fake ones are reset between methods.
    metric.fd.reset_real_features = False
    return metric.to(device)


def _save_grids(
    out: Path, recon: dict[str, torch.Tensor], cross: dict[str, torch.Tensor] | None
) -> list[str]:
    from garment_gen.utils.images import grid, save_png

    written = []
    k = recon["real"].shape[0]
    rows = [
        recon["texture"],
        recon["mask"] * 2 - 1,
        recon["model"],
        recon["paste_baseline"],
        recon["real"],
    ]
    save_png(
        grid(torch.cat([r.expand(-1, 3, -1, -1).cpu() for r in rows]), nrow=k),
        out / "reconstructions.png",
    )
    written.append("reconstructions.png")
    if cross is not None and cross["mask"].shape[0]:
        k = cross["mask"].shape[0]
        rows = [
            cross["mask"] * 2 - 1,
            cross["texture"],
            cross["model"],
            cross["paste_baseline"],
            cross["ref_image"],
        ]
        save_png(
            grid(torch.cat([r.expand(-1, 3, -1, -1).cpu() for r in rows]), nrow=k),
            out / "cross.png",
        )
        written.append("cross.png")
    return written


def _write_json(obj: dict[str, Any], path: Path) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2) + "\n")


def evaluate(
    model: str | Path | Any,
    root: str | Path | None = None,
    split: str = "test",
    out: str | Path | None = None,
    device: str = "cpu",
    batch_size: int = 16,
    num_pairs: int = 64,
    seed: int = 0,
    realism: str = "auto",
    realism_size: int = 128,
    textures: str = "occluded",
    data_seed: int = 0,
    max_samples: int | None = None,
    crop_size: int = 64,
    background_tolerance: int = 16,
    grid_size: int = 8,
    num_workers: int = 0,
    speed_images: int = 128,
) -> dict[str, Any]:
    """Score a garment model and the paste baseline on one split; returns the ``metrics.json`` dict.

    Args:
        model: ``garment_model.pt`` path, ``pretrained:NAME`` (a model shipped with the
            package), or a loaded ``GarmentGenerator`` (then nothing is written unless ``out``
            is given).
        root: prepared dataset folder; None = the bundled sample.
        split: ``train``, ``validation`` or ``test``.
        out: folder for ``metrics.json`` and the PNG grids; None = ``<model folder>/eval_<split>``
            (``outputs/eval_<NAME>_<split>`` for ``pretrained:NAME``).
        device: ``cpu``, ``cuda``, ``cuda:1`` ... (a loaded model keeps its own device).
        num_pairs: cross-combination pairs (seeded by ``seed``).
        realism: ``auto`` (FID if Inception is available, else FD-VGG, with a warning),
            ``fid``, ``fd_vgg`` or ``none``.
        realism_size: side the realism backbone sees (FD-VGG only).
        textures: ``occluded`` (the dataset's deterministic occluded textures) or ``full``
            (the unoccluded garment: an upper bound, and a sanity check of the baseline).
        data_seed: seed of the dataset's deterministic textures (``GarmentDataset(seed=...)``).
        max_samples: use only the first N samples of the split.
        speed_images: images (from the start of the split) timed for ``images_per_second``
            (0 = not timed).
        background_tolerance: 8-bit levels by which a pixel must differ from the background to
            count as garment (classical masks, paste baseline).

    Returns:
        ``{"model": {metric: value}, "paste_baseline": {...}, "realism_backend", "split", "n",
        "num_pairs", "device", "device_name", "model_file", "dataset", ...}``; metrics that
        cannot be computed (no segmenter, fewer than two samples for pairs) are None.

    Raises:
        GarmentGenError: missing or wrong model file, missing dataset, empty split, bad option.
    """
    from garment_gen.inference import PRETRAINED_PREFIX, GarmentGenerator, resolve_model_file

    if realism not in REALISM_BACKENDS:
        raise GarmentGenError(f"realism={realism}: must be one of {', '.join(REALISM_BACKENDS)}")
    if textures not in TEXTURE_SOURCES:
        raise GarmentGenError(f"textures={textures}: must be one of {', '.join(TEXTURE_SOURCES)}")
    if int(batch_size) < 1:
        raise GarmentGenError(f"batch_size={batch_size}: must be >= 1")
    t_start = time.time()
    if isinstance(model, GarmentGenerator):
        gen, model_file = model, None
    else:
        gen, model_file = (
            GarmentGenerator.from_checkpoint(model, device=device),
            str(resolve_model_file(model).resolve()),
        )
        if out is None and str(model).startswith(PRETRAINED_PREFIX):
            # Not beside the file: a shipped model lives inside the installed package.
            out = Path("outputs") / f"eval_{str(model)[len(PRETRAINED_PREFIX) :]}_{split}"
    dev = gen.device
    # Imported only now, so that a wrong model path fails fast (torchmetrics and lpips load slowly).
    from torchmetrics.functional.image import (
        peak_signal_noise_ratio,
        structural_similarity_index_measure,
    )

    from garment_gen import sample_dir
    from garment_gen.data.dataset import GarmentDataset
    from garment_gen.losses.perceptual import LPIPSLoss

    root = Path(root) if root is not None else sample_dir()
    if out is None and model_file is not None:
        out = Path(model_file).parent / f"eval_{split}"
    dataset = GarmentDataset(root, split, resolution=gen.resolution, augment=False, seed=data_seed)
    if max_samples is not None:
        dataset.rows = dataset.rows[: int(max_samples)]
    n = len(dataset)
    if n == 0:
        raise GarmentGenError(f"split={split}: no samples in {root} (see its manifest.csv)")
    background = gen.background
    tol = int(background_tolerance)
    lpips = LPIPSLoss("alex").to(dev)
    metric = _realism_metric(realism, realism_size, dev)
    realism_name = metric.name if metric is not None else None
    methods: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
        "model": gen.generate_tensors,
        "paste_baseline": lambda m, t: paste_baseline(m, t, background, tol),
    }
    scores = {name: _Scores() for name in METHODS}

    def shape_scores(
        s: _Scores, prefix: str, img: torch.Tensor, target: torch.Tensor
    ) -> torch.Tensor:
        cls_mask = classical_garment_mask(img, background, tol)
        s.add(f"{prefix}iou_classical", iou(cls_mask, target))
        if gen.segmenter is not None:
            s.add(f"{prefix}iou_segmenter", iou(segmenter_mask(gen.segmenter, img), target))
        return cls_mask

    loader_kw = {"batch_size": int(batch_size), "shuffle": False, "num_workers": int(num_workers)}
    texture_key = "image" if textures == "full" else "texture"
    log.info(
        "evaluating %s on %s split=%s (%d images, %s textures) on %s",
        model_file or "model",
        root,
        split,
        n,
        textures,
        dev,
    )

    # --- speed: generate_tensors alone, on inputs already on the device, after a warm-up call
    speed_batches, count = [], 0
    for batch in DataLoader(dataset, **loader_kw):
        if count >= speed_images:
            break
        speed_batches.append((batch["mask"].to(dev), batch[texture_key].to(dev)))
        count += batch["mask"].shape[0]
    images_per_second = None
    if speed_batches:
        gen.generate_tensors(
            *speed_batches[0]
        )  # the first call pays for allocations, kernel choice
        _sync(dev)
        t0 = time.perf_counter()
        for mask, texture in speed_batches:
            gen.generate_tensors(mask, texture)
        _sync(dev)
        images_per_second = count / (time.perf_counter() - t0)
    del speed_batches

    # --- reconstruction, shape fidelity, realism of the model
    recon_grid: dict[str, list[torch.Tensor]] = {}
    with torch.no_grad():
        for batch in DataLoader(dataset, **loader_kw):
            real, mask, texture = (
                batch["image"].to(dev),
                batch["mask"].to(dev),
                batch[texture_key].to(dev),
            )
            outputs = {"model": gen.generate_tensors(mask, texture)}
            outputs["paste_baseline"] = methods["paste_baseline"](mask, texture)
            if metric is not None:
                metric.update(real, real=True)
                metric.update(outputs["model"], real=False)
            for name, img in outputs.items():
                s = scores[name]
                x01, y01 = (img + 1) / 2, (real + 1) / 2
                s.add("l2", (img - real).square().flatten(1).mean(1))
                psnr = peak_signal_noise_ratio(
                    x01, y01, data_range=1.0, reduction="none", dim=(1, 2, 3)
                )
                s.add("psnr", psnr.clamp(max=PSNR_CAP))
                s.add(
                    "ssim",
                    structural_similarity_index_measure(x01, y01, data_range=1.0, reduction="none"),
                )
                s.add("lpips", lpips(img, real))
                shape_scores(s, "", img, mask)
            have = recon_grid.get("real", [torch.empty(0)])
            if sum(t.shape[0] for t in have) < grid_size:
                for key, t in {"texture": texture, "mask": mask, "real": real, **outputs}.items():
                    recon_grid.setdefault(key, []).append(t.cpu())
    realism_values: dict[str, float | None] = {name: None for name in METHODS}
    if metric is not None:
        # A Fréchet distance is >= 0; float error can give a tiny negative one for equal sets.
        realism_values["model"] = max(0.0, float(metric.compute()))
        metric.reset()  # keeps the real statistics
        with torch.no_grad():
            for batch in DataLoader(dataset, **loader_kw):
                mask, texture = batch["mask"].to(dev), batch[texture_key].to(dev)
                metric.update(methods["paste_baseline"](mask, texture), real=False)
        realism_values["paste_baseline"] = max(0.0, float(metric.compute()))

    # --- cross-combinations: A's shape with B's texture
    pairs = cross_pairs(n, int(num_pairs), seed)
    if not pairs:
        log.warning("split=%s has %d image(s): no cross-combination pairs", split, n)
    cross_grid: dict[str, list[torch.Tensor]] = {}
    with torch.no_grad():
        for batch in (
            DataLoader(_PairDataset(dataset, pairs, textures), **loader_kw) if pairs else []
        ):
            mask, texture = batch["mask"].to(dev), batch["texture"].to(dev)
            ref_image, ref_mask = batch["ref_image"].to(dev), batch["ref_mask"].to(dev)
            ref_crops = garment_crops(ref_image, ref_mask, background, crop_size)
            ref_hist = colour_histograms(ref_image, ref_mask)
            outputs = {name: fn(mask, texture) for name, fn in methods.items()}
            for name, img in outputs.items():
                s = scores[name]
                cls_mask = shape_scores(s, "cross_", img, mask)
                # The output's own garment region; the target shape where nothing was found.
                empty = cls_mask.flatten(1).mean(1) < 0.01
                region = torch.where(empty.view(-1, 1, 1, 1), mask, cls_mask)
                s.add(
                    "cross_lpips_crop",
                    lpips(garment_crops(img, region, background, crop_size), ref_crops),
                )
                s.add("cross_hist_hellinger", hellinger(colour_histograms(img, region), ref_hist))
            if sum(t.shape[0] for t in cross_grid.get("mask", [])) < grid_size:
                for key, t in {
                    "mask": mask,
                    "texture": texture,
                    "ref_image": ref_image,
                    **outputs,
                }.items():
                    cross_grid.setdefault(key, []).append(t.cpu())

    results: dict[str, Any] = {}
    for name in METHODS:
        means = scores[name].means()
        row = {
            key: means.get(key)
            for key, _, _ in TABLE
            if key not in ("realism", "images_per_second")
        }
        row["realism"] = realism_values[name]
        results[name] = row
    results["model"]["images_per_second"] = images_per_second
    results["paste_baseline"]["images_per_second"] = None  # not a generator: nothing to time
    report: dict[str, Any] = {
        **results,
        "realism_backend": realism_name,
        "split": split,
        "n": n,
        "num_pairs": len(pairs),
        "textures": textures,
        "seed": seed,
        "device": str(dev),
        "device_name": _device_name(dev),
        "resolution": gen.resolution,
        "model_file": model_file,
        "dataset": str(Path(root).resolve()),
        "seconds": round(time.time() - t_start, 2),
    }
    if out is not None:
        out = Path(out)
        recon = {k: torch.cat(v)[:grid_size] for k, v in recon_grid.items()}
        cross = {k: torch.cat(v)[:grid_size] for k, v in cross_grid.items()} if cross_grid else None
        report["images"] = _save_grids(out, recon, cross)
        _write_json(report, out / "metrics.json")
        report["out"] = str(out)
        log.debug("wrote %s", out / "metrics.json")
    return report


def format_table(report: dict[str, Any]) -> str:
    """The metrics of :func:`evaluate` as a plain-text table, model beside the paste baseline."""
    backend = report.get("realism_backend")
    head = (
        f"split={report['split']}  images={report['n']}  cross pairs={report['num_pairs']}  "
        f"textures={report.get('textures', 'occluded')}  device={report['device']} ({report.get('device_name', '')})"
    )
    rows = []
    for key, label, higher in TABLE:
        if key == "realism":
            label = f"realism {backend.upper().replace('_', '-')}" if backend else "realism (off)"
        arrow = "↑" if higher else "↓"
        cells = []
        for name in METHODS:
            v = report[name].get(key)
            cells.append(
                "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4g}"
            )
        rows.append((f"{label} {arrow}", *cells))
    w0 = max(len(r[0]) for r in rows)
    lines = [head, f"{'metric':<{w0}}  {'model':>10}  {'paste baseline':>14}", "-" * (w0 + 28)]
    lines += [f"{a:<{w0}}  {b:>10}  {c:>14}" for a, b, c in rows]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- CLI


def main() -> None:
    """Entry point for ``python -m garment_gen.evaluate``."""
    from omegaconf import OmegaConf

    from garment_gen import conf_dir
    from garment_gen.cli import hydra_main, user_errors

    @user_errors
    def _app(cfg) -> None:
        if OmegaConf.is_missing(cfg, "model"):
            raise GarmentGenError(
                "model is required: python -m garment_gen.evaluate model=PATH/garment_model.pt data.root=DATASET split=test"
            )
        d = OmegaConf.to_container(cfg, resolve=True)
        d.pop("hydra", None)
        data = d.pop("data", None) or {}
        unknown = sorted(set(data) - {"root", "seed"})
        if unknown:
            raise GarmentGenError(
                f"unknown data setting(s): {', '.join(unknown)}; valid: data.root, data.seed"
            )
        report = evaluate(d.pop("model"), root=data.get("root"), data_seed=data.get("seed", 0), **d)
        print(format_table(report))
        print(f"wrote {Path(report['out']) / 'metrics.json'}")

    hydra_main(conf_dir() / "cli", "evaluate", _app)


if __name__ == "__main__":
    main()
