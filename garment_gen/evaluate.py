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
from garment_gen.utils.oserrors import check_writable

log = logging.getLogger("garment_gen.evaluate")

METHODS = ("model", "upper_bound", "mean_garment", "paste_baseline")
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
    ("cross_dists_crop", "cross texture DISTS (B's crop)", False),
    ("cross_hist_hellinger", "cross colour histogram Hellinger", False),
    ("realism", "realism", False),
    ("realism_kid", "realism", False),
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
    return metric.to(device)


def _dists_metric(device: torch.device):
    """DISTS (structure and texture similarity on VGG16), or None when its weights are missing."""
    try:
        from garment_gen.metrics.dists import DISTS

        return DISTS().to(device)
    except (ImportError, GarmentGenError) as exc:
        log.warning("DISTS unavailable (%s): cross_dists_crop is not computed", exc)
        return None


def mean_garment(dataset: Dataset, background: tuple[int, int, int]) -> torch.Tensor:
    """The average garment of a split: per-pixel mean of the aligned originals over the samples
    whose mask covers that pixel (the mean garment colour where none does); ``[3, R, R]``."""
    total, count = None, None
    for k in range(len(dataset)):
        item = dataset[k]
        img, mask = item["image"], item["mask"]
        total = img * mask if total is None else total + img * mask
        count = mask.clone() if count is None else count + mask
    covered = count > 0
    overall = total.sum((1, 2)) / count.sum().clamp(min=1)
    mean = torch.where(covered, total / count.clamp(min=1), overall.view(3, 1, 1))
    return mean.clamp(-1, 1)


def paint_inside(
    mask: torch.Tensor, img: torch.Tensor, background: tuple[int, int, int]
) -> torch.Tensor:
    """``img`` (``[3, R, R]`` or ``[B, 3, R, R]``) inside ``mask`` ``[B, 1, R, R]``, background outside."""
    bg = _background(background, mask.device)
    return torch.where(mask > 0.5, img.to(mask.device).expand(mask.shape[0], -1, -1, -1), bg)


class Method:
    """One way to make a garment from ``(mask, texture)``: the model, a baseline, an upper bound.

    ``fn(mask [B,1,R,R], texture [B,3,R,R]) -> image [B,3,R,R]`` in ``[-1, 1]``; ``texture``
    names the batch key it is given (``texture``: the occluded one, ``image``: the whole
    garment, for the upper bound).
    """

    def __init__(
        self, name: str, fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], texture: str
    ):
        self.name, self.fn, self.texture = name, fn, texture

    def __call__(self, mask: torch.Tensor, texture: torch.Tensor) -> torch.Tensor:
        return self.fn(mask, texture)


def time_method(
    method: Method, dataset: Dataset, loader_kw: dict, images: int, dev: torch.device
) -> float | None:
    """Images per second of ``method`` alone, on inputs already on the device, after a warm-up."""
    batches, count = [], 0
    for batch in DataLoader(dataset, **loader_kw):
        if count >= images:
            break
        batches.append((batch["mask"].to(dev), batch[method.texture].to(dev)))
        count += batch["mask"].shape[0]
    if not batches:
        return None
    with torch.no_grad():
        method(*batches[0])  # the first call pays for allocations and kernel choice
        _sync(dev)
        t0 = time.perf_counter()
        for mask, texture in batches:
            method(mask, texture)
        _sync(dev)
    return count / (time.perf_counter() - t0)


class _Scorer:
    """The metrics every phase computes, with the networks they need built once."""

    def __init__(self, gen, background, tol: int, crop_size: int, realism, dists, dev):
        from torchmetrics.functional.image import (
            peak_signal_noise_ratio,
            structural_similarity_index_measure,
        )

        from garment_gen.losses.perceptual import LPIPSLoss

        self.gen, self.background, self.tol, self.crop_size = gen, background, tol, crop_size
        self.lpips = LPIPSLoss("alex").to(dev)
        self.realism, self.dists = realism, dists
        self.psnr, self.ssim = peak_signal_noise_ratio, structural_similarity_index_measure

    def shape(
        self, s: _Scores, prefix: str, img: torch.Tensor, target: torch.Tensor
    ) -> torch.Tensor:
        cls_mask = classical_garment_mask(img, self.background, self.tol)
        s.add(f"{prefix}iou_classical", iou(cls_mask, target))
        if self.gen.segmenter is not None:
            s.add(f"{prefix}iou_segmenter", iou(segmenter_mask(self.gen.segmenter, img), target))
        return cls_mask

    def reconstruction(
        self, s: _Scores, img: torch.Tensor, real: torch.Tensor, mask: torch.Tensor
    ) -> None:
        x01, y01 = (img + 1) / 2, (real + 1) / 2
        s.add("l2", (img - real).square().flatten(1).mean(1))
        psnr = self.psnr(x01, y01, data_range=1.0, reduction="none", dim=(1, 2, 3))
        s.add("psnr", psnr.clamp(max=PSNR_CAP))
        s.add("ssim", self.ssim(x01, y01, data_range=1.0, reduction="none"))
        s.add("lpips", self.lpips(img, real))
        self.shape(s, "", img, mask)

    def cross(self, s: _Scores, img: torch.Tensor, mask: torch.Tensor, ref_image, ref_mask) -> None:
        cls_mask = self.shape(s, "cross_", img, mask)
        # The output's own garment region; the target shape where nothing was found.
        empty = cls_mask.flatten(1).mean(1) < 0.01
        region = torch.where(empty.view(-1, 1, 1, 1), mask, cls_mask)
        crops = garment_crops(img, region, self.background, self.crop_size)
        ref_crops = garment_crops(ref_image, ref_mask, self.background, self.crop_size)
        s.add("cross_lpips_crop", self.lpips(crops, ref_crops))
        if self.dists is not None:
            s.add("cross_dists_crop", self.dists(crops, ref_crops))
        s.add(
            "cross_hist_hellinger",
            hellinger(colour_histograms(img, region), colour_histograms(ref_image, ref_mask)),
        )


def score_reconstructions(methods, dataset, loader_kw, scorer, scores, dev, grid_size):
    """Each method on each sample's own mask and texture, against the sample; realism features of
    every method's outputs are kept for :func:`score_realism`."""
    fakes: dict[str, list[torch.Tensor]] = {m.name: [] for m in methods}
    reals: list[torch.Tensor] = []
    shown: dict[str, list[torch.Tensor]] = {}
    with torch.no_grad():
        for batch in DataLoader(dataset, **loader_kw):
            real, mask = batch["image"].to(dev), batch["mask"].to(dev)
            reals.append(real.cpu())
            outputs = {m.name: m(mask, batch[m.texture].to(dev)).clamp(-1, 1) for m in methods}
            for name, img in outputs.items():
                scorer.reconstruction(scores[name], img, real, mask)
                fakes[name].append(img.cpu())
            if sum(t.shape[0] for t in shown.get("real", [])) < grid_size:
                extra = {"texture": batch["texture"], "mask": mask, "real": real}
                for key, t in {**extra, **outputs}.items():
                    shown.setdefault(key, []).append(t.cpu())
    return reals, fakes, {k: torch.cat(v)[:grid_size] for k, v in shown.items()}


def score_cross(methods, dataset, pairs, textures, loader_kw, scorer, scores, dev, grid_size):
    """Each method on A's mask with B's texture, judged against A's shape and B's garment."""
    shown: dict[str, list[torch.Tensor]] = {}
    if not pairs:
        return None
    with torch.no_grad():
        for batch in DataLoader(_PairDataset(dataset, pairs, textures), **loader_kw):
            mask = batch["mask"].to(dev)
            ref_image, ref_mask = batch["ref_image"].to(dev), batch["ref_mask"].to(dev)
            outputs = {}
            for m in methods:
                texture = batch["ref_image"] if m.texture == "image" else batch["texture"]
                outputs[m.name] = m(mask, texture.to(dev)).clamp(-1, 1)
                scorer.cross(scores[m.name], outputs[m.name], mask, ref_image, ref_mask)
            if sum(t.shape[0] for t in shown.get("mask", [])) < grid_size:
                extra = {"mask": mask, "texture": batch["texture"], "ref_image": ref_image}
                for key, t in {**extra, **outputs}.items():
                    shown.setdefault(key, []).append(t.cpu())
    return {k: torch.cat(v)[:grid_size] for k, v in shown.items()}


def score_realism(metric, reals, fakes) -> dict[str, dict[str, float | None]]:
    """FD (and KID) of every method's reconstructions against the split's real images."""
    out: dict[str, dict[str, float | None]] = {}
    for name, images in fakes.items():
        if metric is None:
            out[name] = {"realism": None, "realism_kid": None}
            continue
        metric.reset()
        for r in reals:
            metric.update(r, real=True)
        for f in images:
            metric.update(f, real=False)
        values = metric.compute_all()
        fd = float(values[metric.name])
        kid = values.get(f"kid_{metric.name.split('_', 1)[-1]}") if metric.name != "fid" else None
        # A Fréchet distance is >= 0; float error can give a tiny negative one for equal sets.
        out[name] = {"realism": max(0.0, fd), "realism_kid": None if kid is None else float(kid)}
    return out


def _save_grids(
    out: Path, recon: dict[str, torch.Tensor], cross: dict[str, torch.Tensor] | None
) -> list[str]:
    """``reconstructions.png`` (rows: occluded texture, mask, model, upper bound, mean garment,
    paste baseline, original) and ``cross.png`` (rows: A's mask, B's texture, model, upper
    bound, mean garment, paste baseline, B)."""
    from garment_gen.utils.images import grid, save_png

    written = []
    methods = [m for m in METHODS if m in recon]
    k = recon["real"].shape[0]
    rows = [recon["texture"], recon["mask"] * 2 - 1, *(recon[m] for m in methods), recon["real"]]
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
            *(cross[m] for m in methods),
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
    dists: bool = True,
) -> dict[str, Any]:
    """Score a garment model beside the mean-garment and paste baselines and its upper bound.

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
            (the unoccluded garment for every method).
        data_seed: seed of the dataset's deterministic textures (``GarmentDataset(seed=...)``).
        max_samples: use only the first N samples of the split.
        speed_images: images (from the start of the split) timed for ``images_per_second``
            (0 = not timed).
        background_tolerance: 8-bit levels by which a pixel must differ from the background to
            count as garment (classical masks, paste baseline).
        dists: also score cross-combination crops with DISTS (when its weights are installed).

    Returns:
        ``{method: {metric: value}}`` for ``model``, ``upper_bound`` (the model given the
        unoccluded garment), ``mean_garment`` (the split's average garment painted inside the
        target mask: a model that cannot beat it has learned nothing) and ``paste_baseline``,
        plus ``realism_backend``, ``split``, ``n``, ``num_pairs``, ``device`` ...; metrics that
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
    from garment_gen import sample_dir
    from garment_gen.data.dataset import GarmentDataset

    root = Path(root) if root is not None else sample_dir()
    if out is None and model_file is not None:
        out = Path(model_file).parent / f"eval_{split}"
    if out is not None:
        check_writable(out, "out")  # before any compute
    dataset = GarmentDataset(root, split, resolution=gen.resolution, augment=False, seed=data_seed)
    if dataset.aspect != gen.aspect:
        raise GarmentGenError(
            f"data.root={root}: its images are {dataset.aspect}, the model draws {gen.aspect} "
            f"ones; evaluate on a dataset prepared with aspect={gen.aspect}"
        )
    if max_samples is not None:
        dataset.rows = dataset.rows[: int(max_samples)]
    n = len(dataset)
    if n == 0:
        raise GarmentGenError(f"split={split}: no samples in {root} (see its manifest.csv)")
    background = gen.background
    tol = int(background_tolerance)
    metric = _realism_metric(realism, realism_size, dev)
    scorer = _Scorer(
        gen, background, tol, crop_size, metric, _dists_metric(dev) if dists else None, dev
    )
    texture_key = "image" if textures == "full" else "texture"
    average = mean_garment(dataset, background)
    methods = [
        Method("model", gen.generate_tensors, texture_key),
        Method("upper_bound", gen.generate_tensors, "image"),
        Method("mean_garment", lambda m, t: paint_inside(m, average, background), texture_key),
        Method("paste_baseline", lambda m, t: paste_baseline(m, t, background, tol), texture_key),
    ]
    scores = {m.name: _Scores() for m in methods}
    loader_kw = {"batch_size": int(batch_size), "shuffle": False, "num_workers": int(num_workers)}
    log.info(
        "evaluating %s on %s split=%s (%d images, %s textures) on %s",
        model_file or "model",
        root,
        split,
        n,
        textures,
        dev,
    )
    images_per_second = time_method(methods[0], dataset, loader_kw, int(speed_images), dev)
    reals, fakes, recon_grid = score_reconstructions(
        methods, dataset, loader_kw, scorer, scores, dev, grid_size
    )
    realism_values = score_realism(metric, reals, fakes)
    del reals, fakes
    pairs = cross_pairs(n, int(num_pairs), seed)
    if not pairs:
        log.warning("split=%s has %d image(s): no cross-combination pairs", split, n)
    cross_grid = score_cross(
        methods, dataset, pairs, textures, loader_kw, scorer, scores, dev, grid_size
    )

    results: dict[str, Any] = {}
    for m in methods:
        means = scores[m.name].means()
        row = {key: means.get(key) for key, _, _ in TABLE}
        row.update(realism_values[m.name])
        row["images_per_second"] = None
        results[m.name] = row
    results["model"]["images_per_second"] = images_per_second
    report: dict[str, Any] = {
        **results,
        "methods": [m.name for m in methods],
        "realism_backend": metric.name if metric is not None else None,
        "split": split,
        "n": n,
        "num_pairs": len(pairs),
        "textures": textures,
        "seed": seed,
        "device": str(dev),
        "device_name": _device_name(dev),
        "resolution": gen.resolution,
        "aspect": gen.aspect,
        "model_file": model_file,
        "dataset": str(Path(root).resolve()),
        "seconds": round(time.time() - t_start, 2),
    }
    if out is not None:
        out = Path(out)
        report["images"] = _save_grids(out, recon_grid, cross_grid)
        _write_json(report, out / "metrics.json")
        report["out"] = str(out)
        log.debug("wrote %s", out / "metrics.json")
    return report


def format_table(report: dict[str, Any]) -> str:
    """The metrics of :func:`evaluate` as a plain-text table, the model beside its baselines."""
    backend = report.get("realism_backend")
    methods = [m for m in report.get("methods", METHODS) if m in report]
    head = (
        f"split={report['split']}  images={report['n']}  cross pairs={report['num_pairs']}  "
        f"textures={report.get('textures', 'occluded')}  device={report['device']} ({report.get('device_name', '')})"
    )
    names = {
        "model": "model",
        "upper_bound": "upper bound",
        "mean_garment": "mean garment",
        "paste_baseline": "paste baseline",
    }
    rows = []
    for key, label, higher in TABLE:
        if key in ("realism", "realism_kid"):
            name = backend.upper().replace("_", "-") if backend else None
            if key == "realism_kid" and name:
                name = name.replace("FD", "KID").replace("FID", "KID")
            label = f"{label} {name}" if name else f"{label} (off)"
        arrow = "↑" if higher else "↓"
        cells = []
        for name in methods:
            v = report[name].get(key)
            cells.append(
                "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4g}"
            )
        rows.append((f"{label} {arrow}", *cells))
    w0 = max(len(r[0]) for r in rows)
    widths = [max(10, len(names.get(m, m))) for m in methods]
    title = f"{'metric':<{w0}}  " + "  ".join(
        f"{names.get(m, m):>{w}}" for m, w in zip(methods, widths, strict=True)
    )
    lines = [head, title, "-" * len(title)]
    lines += [
        f"{r[0]:<{w0}}  " + "  ".join(f"{c:>{w}}" for c, w in zip(r[1:], widths, strict=True))
        for r in rows
    ]
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
