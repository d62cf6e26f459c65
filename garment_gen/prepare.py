"""Data preparation: garment photos -> aligned images, masks and a manifest.

Usage::

    python -m garment_gen.prepare input_dir=PHOTOS output_dir=OUT resolution=64 [mask_dir=MASKS]

Inputs are never modified. The dataset is built in a temporary folder beside
``output_dir`` and moved into place only when complete; re-running with the same
inputs and settings does nothing.

Output layout::

    OUT/images/<id>.png   garment composited on the background, square
    OUT/masks/<id>.png    8-bit mask, 0 / 255
    OUT/photos/<id>.png   the same crop of the original photo (for the segmenter)
    OUT/manifest.csv      one row per input: id, source_path, sha256, split, label,
                          mask_source, mask_area, status, reason
    OUT/report.txt        what was skipped and why
    OUT/dataset.json      settings, counts and the fingerprint that makes re-runs idempotent
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import multiprocessing as mp
import os
import shutil
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from garment_gen import __version__
from garment_gen.data.align import align_garment
from garment_gen.data.io import IMAGE_EXTENSIONS, load_rgb, save_png_atomic, sha256_file
from garment_gen.data.masks import MaskCheck, classical_mask, find_mask_file, load_mask_file
from garment_gen.errors import BadInputError, GarmentGenError

log = logging.getLogger("garment_gen.prepare")

DATASET_FORMAT = "garment_gen.dataset/1"
MANIFEST_FIELDS = [
    "id",
    "source_path",
    "sha256",
    "split",
    "label",
    "mask_source",
    "mask_area",
    "status",
    "reason",
]
SPLIT_ALIASES = {
    "train": "train",
    "training": "train",
    "val": "validation",
    "valid": "validation",
    "validation": "validation",
    "test": "test",
    "testing": "test",
}
SPLITS = ("train", "validation", "test")


@dataclass
class PrepareConfig:
    """Settings of one preparation run (mirrors ``conf/prepare.yaml``)."""

    input_dir: str
    output_dir: str
    resolution: int = 256
    mask_dir: str | None = None
    segmenter: str | None = None
    margin: float = 0.06
    background: tuple[int, int, int] = (255, 255, 255)
    min_area: float = 0.10
    max_area: float = 0.90
    max_pixels: int = 40_000_000
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    seed: int = 0
    max_per_group: dict[str, int] | None = None
    grabcut_size: int | None = None
    workers: int | None = None
    overwrite: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def fingerprint_settings(self) -> dict[str, Any]:
        keys = (
            "resolution",
            "margin",
            "background",
            "min_area",
            "max_area",
            "max_pixels",
            "val_fraction",
            "test_fraction",
            "seed",
            "max_per_group",
            "grabcut_size",
        )
        out = {k: getattr(self, k) for k in keys}
        out["background"] = list(self.background)
        out["max_per_group"] = dict(self.max_per_group) if self.max_per_group else None
        return out


@dataclass
class Task:
    source: Path
    rel: str
    sha256: str
    id: str
    split: str
    label: str


# ----------------------------------------------------------------------------- scanning


def _split_and_label(rel: Path, sha: str, cfg: PrepareConfig) -> tuple[str, str]:
    dirs = [p.lower() for p in rel.parts[:-1]]
    split = next((SPLIT_ALIASES[d] for d in dirs if d in SPLIT_ALIASES), None)
    if split is None:
        u = int(hashlib.sha256(f"{cfg.seed}:{sha}".encode()).hexdigest()[:12], 16) / 16**12
        split = (
            "test"
            if u < cfg.test_fraction
            else "validation"
            if u < cfg.test_fraction + cfg.val_fraction
            else "train"
        )
    parent = rel.parts[-2] if len(rel.parts) > 1 else ""
    label = "" if parent.lower() in SPLIT_ALIASES else parent
    return split, label


def scan_inputs(cfg: PrepareConfig) -> tuple[list[Task], list[dict[str, Any]]]:
    """Find every file under ``input_dir``; return image tasks and rows for ignored files."""
    root = Path(cfg.input_dir).expanduser().resolve()
    if not root.is_dir():
        raise GarmentGenError(f"input_dir={cfg.input_dir}: not a folder")
    out = Path(cfg.output_dir).expanduser().resolve()
    if out == root or root in out.parents:
        raise GarmentGenError(
            f"output_dir={cfg.output_dir} is inside input_dir={cfg.input_dir}; choose a folder outside it"
        )
    exclude = [out]
    if cfg.mask_dir:
        exclude.append(Path(cfg.mask_dir).expanduser().resolve())

    files = sorted(
        p
        for p in root.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)
    )
    files = [p for p in files if not any(e == p or e in p.parents for e in exclude)]
    tasks: list[Task] = []
    ignored: list[dict[str, Any]] = []
    for path in files:
        rel = path.relative_to(root)
        if path.suffix.lower() not in IMAGE_EXTENSIONS:
            ignored.append(
                _row(
                    rel.as_posix(),
                    "",
                    "",
                    "",
                    status="skipped",
                    reason=f"not an image file (extension '{path.suffix}')",
                    code="not_image",
                )
            )
            continue
        sha = sha256_file(path)
        split, label = _split_and_label(rel, sha, cfg)
        tasks.append(
            Task(
                source=path, rel=rel.as_posix(), sha256=sha, id=path.stem, split=split, label=label
            )
        )
    if not tasks:
        raise GarmentGenError(
            f"input_dir={cfg.input_dir}: no image files found (looked recursively for {', '.join(IMAGE_EXTENSIONS)})"
        )
    # Unique ids: the file stem, disambiguated by content hash when stems repeat.
    counts = Counter(t.id for t in tasks)
    for t in tasks:
        if counts[t.id] > 1:
            t.id = f"{t.id}-{t.sha256[:8]}"
    if cfg.max_per_group:
        tasks = _select(tasks, cfg.max_per_group)
    return tasks, ignored


def _select(tasks: list[Task], max_per_group: dict[str, int]) -> list[Task]:
    """Keep at most ``max_per_group[split]`` images per (split, label), chosen by content hash."""
    groups: dict[tuple[str, str], list[Task]] = {}
    for t in tasks:
        groups.setdefault((t.split, t.label), []).append(t)
    keep: list[Task] = []
    for (split, _), items in sorted(groups.items()):
        n = max_per_group.get(split)
        items = sorted(items, key=lambda t: t.sha256)
        keep.extend(items if n is None else items[: int(n)])
    return sorted(keep, key=lambda t: t.rel)


def _row(rel: str, sha: str, split: str, label: str, **kw: Any) -> dict[str, Any]:
    row = {k: "" for k in MANIFEST_FIELDS}
    row.update(source_path=rel, sha256=sha, split=split, label=label)
    row.update({k: v for k, v in kw.items() if k in MANIFEST_FIELDS})
    row["_code"] = kw.get("code", "")
    return row


# ----------------------------------------------------------------------------- one image

_WORKER: dict[str, Any] = {}


def _init_worker(cfg: PrepareConfig, tmp_dir: str) -> None:
    cv2.setNumThreads(1)
    _WORKER["cfg"] = cfg
    _WORKER["tmp"] = Path(tmp_dir)
    _WORKER["segmenter"] = None
    if cfg.segmenter:
        import torch

        from garment_gen.networks.segmenter import load_segmenter

        torch.set_num_threads(1)
        _WORKER["segmenter"] = load_segmenter(cfg.segmenter)


def _get_mask(image: np.ndarray, task: Task, cfg: PrepareConfig) -> tuple[np.ndarray, str]:
    if cfg.mask_dir:
        mask_path = find_mask_file(Path(cfg.mask_dir), Path(task.rel).stem)
        if mask_path is not None:
            return load_mask_file(mask_path, image.shape[:2]), "file"
    seg = _WORKER.get("segmenter")
    if seg is not None:
        return seg.predict_mask(image), "segmenter"
    work_size = cfg.grabcut_size or min(320, max(128, 2 * cfg.resolution))
    return classical_mask(image, work_size=work_size, area_range=(cfg.min_area, cfg.max_area))


def prepare_one(task: Task) -> dict[str, Any]:
    """Prepare one photo into the temporary dataset folder; never raises for bad input."""
    cfg: PrepareConfig = _WORKER["cfg"]
    tmp: Path = _WORKER["tmp"]
    row = _row(task.rel, task.sha256, task.split, task.label, id=task.id)
    try:
        image = load_rgb(task.source, max_pixels=cfg.max_pixels, background=tuple(cfg.background))
        mask, source = _get_mask(image, task, cfg)
        area = MaskCheck(cfg.min_area, cfg.max_area)(mask, task.source, source)
        aligned = align_garment(image, mask, cfg.resolution, cfg.margin, tuple(cfg.background))
        save_png_atomic(aligned.image, tmp / "images" / f"{task.id}.png")
        save_png_atomic(aligned.mask, tmp / "masks" / f"{task.id}.png")
        save_png_atomic(aligned.photo, tmp / "photos" / f"{task.id}.png")
        row.update(mask_source=source, mask_area=f"{area:.4f}", status="ok")
    except BadInputError as exc:
        row.update(id="", status="skipped", reason=exc.reason)
        row["_code"] = exc.code
    except Exception as exc:  # noqa: BLE001 - one odd file must not stop the run
        row.update(
            id="", status="skipped", reason=f"unexpected error: {exc.__class__.__name__}: {exc}"
        )
        row["_code"] = "error"
    return row


# ----------------------------------------------------------------------------- the run


def _fingerprint(cfg: PrepareConfig, tasks: list[Task], ignored: list[dict[str, Any]]) -> str:
    h = hashlib.sha256()
    h.update(DATASET_FORMAT.encode())
    h.update(json.dumps(cfg.fingerprint_settings(), sort_keys=True).encode())
    for t in tasks:
        h.update(f"{t.rel}\0{t.sha256}\0{t.split}\0{t.label}\n".encode())
    for r in ignored:
        h.update(f"ignored:{r['source_path']}\n".encode())
    for extra_path in (cfg.mask_dir, cfg.segmenter):
        if not extra_path:
            continue
        p = Path(extra_path)
        files = sorted(p.rglob("*")) if p.is_dir() else [p]
        for f in files:
            if f.is_file():
                h.update(f"{f.name}\0{sha256_file(f)}\n".encode())
    return h.hexdigest()


def _existing_fingerprint(out: Path) -> str | None:
    meta = out / "dataset.json"
    if not meta.is_file():
        return None
    try:
        return json.loads(meta.read_text()).get("fingerprint")
    except (OSError, ValueError):
        return None


def _check_output(out: Path, fingerprint: str, overwrite: bool) -> bool:
    """Return True when ``out`` already holds exactly this dataset."""
    if not out.exists():
        return False
    if not out.is_dir():
        raise GarmentGenError(f"output_dir={out}: exists and is not a folder")
    if not any(out.iterdir()):
        return False
    existing = _existing_fingerprint(out)
    if existing is None:
        raise GarmentGenError(
            f"output_dir={out}: folder is not empty and is not a garment_gen dataset; "
            "refusing to write into it (choose an empty or new folder)"
        )
    if existing == fingerprint:
        return True
    if not overwrite:
        raise GarmentGenError(
            f"output_dir={out}: already holds a different prepared dataset (other inputs or settings); "
            "choose another output_dir, or pass overwrite=true to replace it"
        )
    return False


def _write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=MANIFEST_FIELDS, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    os.replace(tmp, path)


def _report(rows: list[dict[str, Any]], seconds: float) -> tuple[str, dict[str, Any]]:
    ok = [r for r in rows if r["status"] == "ok"]
    skipped = [r for r in rows if r["status"] != "ok"]
    by_code = Counter(r["_code"] or "other" for r in skipped)
    by_split = Counter(r["split"] for r in ok)
    by_source = Counter(r["mask_source"] for r in ok)
    lines = [
        f"prepared {len(ok)} images, skipped {len(skipped)} ({seconds:.1f} s)",
        "by split: " + ", ".join(f"{s}={by_split.get(s, 0)}" for s in SPLITS),
        "mask sources: " + ", ".join(f"{k}={v}" for k, v in sorted(by_source.items())),
    ]
    if skipped:
        lines.append(
            "skipped by reason: " + ", ".join(f"{k}={v}" for k, v in by_code.most_common())
        )
        lines.append("")
        lines.append("skipped inputs:")
        lines.extend(f"  {r['source_path']}: {r['reason']}" for r in skipped)
    stats = {
        "prepared": len(ok),
        "skipped": len(skipped),
        "skipped_by_reason": dict(by_code),
        "by_split": dict(by_split),
        "mask_sources": dict(by_source),
        "seconds": round(seconds, 2),
    }
    return "\n".join(lines) + "\n", stats


def prepare(cfg: PrepareConfig) -> dict[str, Any]:
    """Run data preparation; returns the summary stats written to ``dataset.json``.

    Raises:
        GarmentGenError: no inputs, unusable output folder, or nothing could be prepared.
    """
    t0 = time.time()
    if cfg.resolution < 8 or cfg.resolution & (cfg.resolution - 1):
        raise GarmentGenError(
            f"resolution={cfg.resolution}: must be a power of two (e.g. 64, 128, 256)"
        )
    if cfg.mask_dir and not Path(cfg.mask_dir).is_dir():
        raise GarmentGenError(f"mask_dir={cfg.mask_dir}: not a folder")
    if cfg.segmenter and not Path(cfg.segmenter).is_file():
        raise GarmentGenError(f"segmenter={cfg.segmenter}: file not found")
    out = Path(cfg.output_dir).expanduser().resolve()
    tasks, ignored = scan_inputs(cfg)
    fingerprint = _fingerprint(cfg, tasks, ignored)
    if _check_output(out, fingerprint, cfg.overwrite):
        log.info(
            "output_dir=%s is already up to date (same inputs and settings); nothing to do", out
        )
        return json.loads((out / "dataset.json").read_text())["stats"]

    out.parent.mkdir(parents=True, exist_ok=True)
    for stale in out.parent.glob(f".{out.name}.tmp-*"):
        log.info("removing leftovers of an interrupted run: %s", stale)
        shutil.rmtree(stale, ignore_errors=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    tmp.mkdir()
    try:
        workers = cfg.workers or min(len(tasks), os.cpu_count() or 1)
        rows: list[dict[str, Any]] = []
        if workers <= 1:
            _init_worker(cfg, str(tmp))
            rows = [_progress(i, len(tasks), prepare_one(t)) for i, t in enumerate(tasks)]
        else:
            ctx = mp.get_context("spawn" if cfg.segmenter else "fork")
            with ctx.Pool(workers, initializer=_init_worker, initargs=(cfg, str(tmp))) as pool:
                for i, row in enumerate(pool.imap(prepare_one, tasks, chunksize=4)):
                    rows.append(_progress(i, len(tasks), row))
        rows.extend(ignored)
        rows.sort(key=lambda r: r["source_path"])
        n_ok = sum(r["status"] == "ok" for r in rows)
        text, stats = _report(rows, time.time() - t0)
        if n_ok == 0:
            raise GarmentGenError(f"input_dir={cfg.input_dir}: no image could be prepared.\n{text}")
        _write_csv(rows, tmp / "manifest.csv")
        (tmp / "report.txt").write_text(text)
        meta = {
            "format": DATASET_FORMAT,
            "garment_gen_version": __version__,
            "fingerprint": fingerprint,
            "resolution": cfg.resolution,
            "background": list(cfg.background),
            "input_dir": str(Path(cfg.input_dir).resolve()),
            "settings": cfg.fingerprint_settings(),
            "stats": stats,
        }
        (tmp / "dataset.json").write_text(json.dumps(meta, indent=2) + "\n")
        _swap_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("%s", text.split("\nskipped inputs:")[0].rstrip())
    log.info("dataset written to %s (full report: %s)", out, out / "report.txt")
    return stats


def _progress(i: int, n: int, row: dict[str, Any]) -> dict[str, Any]:
    if row["status"] != "ok":
        log.warning("skipped %s: %s", row["source_path"], row["reason"])
    if (i + 1) % 200 == 0 or i + 1 == n:
        log.info("processed %d/%d", i + 1, n)
    return row


def _swap_into_place(tmp: Path, out: Path) -> None:
    """Move the finished dataset to ``out``; an older dataset there is removed only afterwards."""
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        os.replace(out, old)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# ----------------------------------------------------------------------------- CLI


def config_from_dict(d: dict[str, Any]) -> PrepareConfig:
    """Build a :class:`PrepareConfig` from a plain dict, naming missing or unknown keys."""
    known = set(PrepareConfig.__dataclass_fields__)
    unknown = sorted(set(d) - known)
    if unknown:
        raise GarmentGenError(
            f"unknown prepare setting(s): {', '.join(unknown)}; valid: {', '.join(sorted(known))}"
        )
    for req in ("input_dir", "output_dir"):
        if d.get(req) in (None, "", "???"):
            raise GarmentGenError(
                f"{req} is required: python -m garment_gen.prepare input_dir=PHOTOS output_dir=OUT [resolution=256] [mask_dir=MASKS]"
            )
    d = dict(d)
    if d.get("background") is not None:
        d["background"] = tuple(int(c) for c in d["background"])
    return PrepareConfig(**d)


def main() -> None:
    """Entry point for ``python -m garment_gen.prepare``."""
    import hydra
    from omegaconf import OmegaConf

    from garment_gen import conf_dir
    from garment_gen.cli import user_errors

    @hydra.main(version_base="1.3", config_path=str(conf_dir()), config_name="prepare")
    @user_errors
    def _app(cfg) -> None:
        d = OmegaConf.to_container(cfg, resolve=False, throw_on_missing=False)
        d.pop("hydra", None)
        prepare(config_from_dict(d))

    _app()


if __name__ == "__main__":
    main()
