"""Data preparation: garment photos -> aligned images, masks and a manifest.

Usage::

    python -m garment_gen.prepare input_dir=PHOTOS output_dir=OUT resolution=64 [mask_dir=MASKS] [aspect=3:4]

``aspect=3:4`` writes portrait frames (``resolution`` high, ``3/4 * resolution`` wide) instead
of squares; see :mod:`garment_gen.data.aspect`.

Inputs are never modified. The dataset is built in a temporary folder beside
``output_dir`` and moved into place only when complete; re-running with the same
inputs and settings does nothing. A lock file beside ``output_dir``
(``.<name>.lock``) refuses a second prepare into the same folder while one runs.
A full or read-only disk stops the run with one line (the previous dataset, if any,
stays as it was); a bad photo is only skipped.

Output layout::

    OUT/images/<id>.png   garment composited on the background, square or 3:4 (aspect=)
    OUT/masks/<id>.png    8-bit mask, 0 / 255
    OUT/photos/<id>.png   the same crop of the original photo (for the segmenter)
    OUT/manifest.csv      one row per input: id, source_path, sha256, split, label,
                          mask_source, mask_area, status, reason
    OUT/report.txt        what was skipped and why, and the garment's mean share of the frame
    OUT/dataset.json      settings, counts, aspect / width / height (resolution = height) and
                          the fingerprint that makes re-runs idempotent
"""

from __future__ import annotations

import csv
import errno
import fcntl
import hashlib
import json
import logging
import math
import multiprocessing as mp
import os
import shutil
import signal
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from omegaconf import MISSING

from garment_gen import __version__
from garment_gen.data.align import align_garment
from garment_gen.data.aspect import DEFAULT_ASPECT, VALID_ASPECTS, frame_size
from garment_gen.data.io import IMAGE_EXTENSIONS, load_rgb, save_png_atomic, sha256_file
from garment_gen.data.masks import MaskCheck, classical_mask, find_mask_file, load_mask_file
from garment_gen.errors import BadInputError, GarmentGenError
from garment_gen.utils.oserrors import disk_reason, is_disk_error

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
    """The settings of ``python -m garment_gen.prepare``, and their only defaults.

    Registered with Hydra as ``prepare_schema`` (:mod:`garment_gen.schema`), the base of
    ``conf/prepare.yaml``: an unknown key or a value of the wrong type fails while Hydra
    composes, in one line; :func:`check_settings` checks ranges.
    """

    input_dir: str = MISSING  # folder of photos, searched recursively (jpg, jpeg, png, webp)
    output_dir: str = MISSING  # new or empty folder; built beside it, moved into place when done
    resolution: int = 256  # output height in pixels (power of two: 64, 128, 256, ...)
    # frame width:height, "1:1" (square) or "3:4" (portrait, resolution x 3/4 resolution wide);
    # in a YAML file quote it ("3:4"): unquoted, YAML reads 1:1 as the number 61
    aspect: str = DEFAULT_ASPECT
    mask_dir: str | None = None  # masks with the same file stem (VITON-HD cloth-mask convention)
    segmenter: str | None = None  # segmenter.pt from `stage=segmenter`, where no mask file exists
    margin: float = 0.06  # share of the garment's longer side kept around it
    background: tuple[int, int, int] = (255, 255, 255)
    min_area: float = 0.10  # masks covering less / more of the photo than this are rejected
    max_area: float = 0.90
    max_pixels: int = 40_000_000  # larger images are rejected (decompression bombs)
    val_fraction: float = 0.1  # only used when the input has no train/validation/test folders
    test_fraction: float = 0.1
    seed: int = 0
    # e.g. {train: 40}: at most N photos per (split, label); null = all. Typed Any for Hydra
    # (a typed null mapping cannot take a mapping override); check_settings checks it.
    max_per_group: Any = None
    grabcut_size: int | None = None  # GrabCut's long side; null = 2 x resolution in [128, 320]
    workers: int | None = None  # processes (a whole number >= 1); null = all cores
    overwrite: bool = False  # replace a different dataset already in output_dir

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
        if self.aspect != DEFAULT_ASPECT:  # square datasets keep the fingerprint they always had
            out["aspect"] = self.aspect
        return out


@dataclass
class Task:
    source: Path
    rel: str
    sha256: str
    id: str
    split: str
    label: str


# ----------------------------------------------------------------------------- settings


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def check_settings(cfg: PrepareConfig) -> None:
    """Reject a setting of the wrong type or range before any work, naming the key.

    Raises:
        GarmentGenError: ``<key>=<value>: must be ...``.
    """

    def bad(key: str, expected: str) -> GarmentGenError:
        return GarmentGenError(f"{key}={getattr(cfg, key)}: must be {expected}")

    r = cfg.resolution
    if not _is_int(r) or r < 8 or r & (r - 1):
        raise bad("resolution", "a power of two (e.g. 64, 128, 256)")
    try:
        frame_size(r, cfg.aspect)
    except ValueError:
        raise bad("aspect", f"one of {VALID_ASPECTS}") from None
    if not _is_number(cfg.margin) or not 0 <= cfg.margin <= 1:
        raise bad("margin", "a number between 0 and 1")
    for key in ("min_area", "max_area"):
        if not _is_number(getattr(cfg, key)) or not 0 <= getattr(cfg, key) <= 1:
            raise bad(key, "a share of the photo between 0 and 1")
    if cfg.min_area >= cfg.max_area:
        raise GarmentGenError(
            f"min_area={cfg.min_area}, max_area={cfg.max_area}: min_area must be below max_area"
        )
    for key in ("val_fraction", "test_fraction"):
        if not _is_number(getattr(cfg, key)) or not 0 <= getattr(cfg, key) < 1:
            raise bad(key, "a number from 0 to below 1")
    if cfg.val_fraction + cfg.test_fraction >= 1:
        raise GarmentGenError(
            f"val_fraction={cfg.val_fraction}, test_fraction={cfg.test_fraction}: "
            "together they must leave some images for training (sum below 1)"
        )
    if not _is_int(cfg.max_pixels) or cfg.max_pixels < 64:
        raise bad("max_pixels", "a whole number of pixels (e.g. 40000000)")
    if not _is_int(cfg.seed):
        raise bad("seed", "a whole number")
    if cfg.workers is not None and (not _is_int(cfg.workers) or cfg.workers < 1):
        raise bad("workers", "a whole number of processes, 1 or more (or null for all cores)")
    if cfg.grabcut_size is not None and (not _is_int(cfg.grabcut_size) or cfg.grabcut_size < 32):
        raise bad("grabcut_size", "a whole number of pixels, 32 or more (or null)")
    if not isinstance(cfg.overwrite, bool):
        raise bad("overwrite", "true or false")
    bg = cfg.background
    if (
        not isinstance(bg, (list, tuple))
        or len(bg) != 3
        or not all(_is_int(c) and 0 <= c <= 255 for c in bg)
    ):
        raise bad("background", "three whole numbers 0-255, e.g. [255,255,255]")
    if cfg.max_per_group is not None and (
        not isinstance(cfg.max_per_group, dict)
        or not all(k in SPLITS and _is_int(v) and v >= 0 for k, v in cfg.max_per_group.items())
    ):
        raise bad("max_per_group", f"a mapping of {'/'.join(SPLITS)} to counts, e.g. {{train: 40}}")
    for key in ("input_dir", "output_dir", "mask_dir", "segmenter"):
        v = getattr(cfg, key)
        if v is not None and not isinstance(v, (str, os.PathLike)):
            raise bad(key, "a path")


def _check_paths(cfg: PrepareConfig) -> tuple[Path, Path]:
    """``(input root, output folder)``, both resolved; the input must be a folder outside the output."""
    root = Path(cfg.input_dir).expanduser().resolve()
    if not root.is_dir():
        raise GarmentGenError(f"input_dir={cfg.input_dir}: not a folder")
    out = Path(cfg.output_dir).expanduser().resolve()
    if out == root or root in out.parents:
        raise GarmentGenError(
            f"output_dir={cfg.output_dir} is inside input_dir={cfg.input_dir}; choose a folder outside it"
        )
    return root, out


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
    root, out = _check_paths(cfg)
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
OUTPUT_SUBDIRS = ("images", "masks", "photos")


def _load_segmenter(path: str):
    from garment_gen.networks.segmenter import load_segmenter

    return load_segmenter(path)


def _init_worker(
    cfg: PrepareConfig, tmp_dir: str, segmenter: Any = None, in_child: bool = False
) -> None:
    """Set up one worker (or the parent when ``workers=1``).

    In a child it never raises: a pool whose initializer fails cannot do any work (and
    ``multiprocessing.Pool`` respawns such workers for ever), so the failure is kept and the
    first task reports it as a run-level error.
    """
    _WORKER.clear()
    _WORKER["cfg"] = cfg
    _WORKER["tmp"] = Path(tmp_dir)
    _WORKER["segmenter"] = segmenter
    try:
        if in_child:
            # Ctrl-C is the parent's to handle: it stops the run and cleans up once.
            signal.signal(signal.SIGINT, signal.SIG_IGN)
        cv2.setNumThreads(1)
        if cfg.segmenter:
            import torch

            torch.set_num_threads(1)
            if segmenter is None:
                _WORKER["segmenter"] = _load_segmenter(cfg.segmenter)
    except BaseException as exc:  # noqa: BLE001 - reported by prepare_one, see above
        if not in_child:
            raise
        _WORKER["init_error"] = (
            str(exc) if isinstance(exc, GarmentGenError) else f"{exc.__class__.__name__}: {exc}"
        )


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


def _disk_error(cfg: PrepareConfig, exc: OSError, what: str) -> GarmentGenError:
    """The run-level error for a full / read-only / forbidden output location."""
    out = Path(cfg.output_dir).expanduser().resolve()
    return GarmentGenError(
        f"{out}: {disk_reason(exc)} while writing {what}; the run was stopped and nothing "
        "was changed in output_dir (free some space or fix its permissions, then run again)"
    )


# A write that fails for these is about this sample's file name, not the output location.
NAME_ERRNOS = frozenset({errno.ENAMETOOLONG, errno.EINVAL, errno.EILSEQ})


def _write_sample(aligned: Any, sample_id: str, cfg: PrepareConfig, tmp: Path) -> str | None:
    """Write one sample's three PNGs; all or none of them end up on disk.

    Returns None, or the reason the sample is skipped (its file name cannot be written).
    Raises:
        GarmentGenError: any other write failure (full, read-only or forbidden location, I/O
            error): it would fail for every photo, so the run stops.
    """
    written: list[Path] = []
    try:
        for sub, arr in zip(
            OUTPUT_SUBDIRS, (aligned.image, aligned.mask, aligned.photo), strict=True
        ):
            path = tmp / sub / f"{sample_id}.png"
            save_png_atomic(arr, path)
            written.append(path)
    except OSError as exc:
        for path in written:
            path.unlink(missing_ok=True)
        if exc.errno in NAME_ERRNOS:
            return f"cannot write {sub}/{sample_id}.png: {exc.__class__.__name__}: {exc}"
        raise _disk_error(cfg, exc, f"{sub}/{sample_id}.png") from None
    return None


def prepare_one(task: Task) -> dict[str, Any]:
    """Prepare one photo into the temporary dataset folder.

    Bad input never raises: it becomes a ``skipped`` row with the reason.
    Raises:
        GarmentGenError: a run-level failure (the worker could not start, or the output
            location is full or not writable).
    """
    if "init_error" in _WORKER:
        raise GarmentGenError(_WORKER["init_error"])
    cfg: PrepareConfig = _WORKER["cfg"]
    tmp: Path = _WORKER["tmp"]
    row = _row(task.rel, task.sha256, task.split, task.label, id=task.id)
    try:
        image = load_rgb(task.source, max_pixels=cfg.max_pixels, background=tuple(cfg.background))
        mask, source = _get_mask(image, task, cfg)
        area = MaskCheck(cfg.min_area, cfg.max_area)(mask, task.source, source)
        aligned = align_garment(
            image, mask, cfg.resolution, cfg.margin, tuple(cfg.background), cfg.aspect
        )
    except BadInputError as exc:
        # A mask file's fault names the mask file, not the photo of this row.
        reason = exc.reason if exc.path == str(task.source) else f"{exc.path}: {exc.reason}"
        row.update(id="", status="skipped", reason=reason)
        row["_code"] = exc.code
        return row
    except Exception as exc:  # noqa: BLE001 - one odd file must not stop the run
        row.update(
            id="", status="skipped", reason=f"unexpected error: {exc.__class__.__name__}: {exc}"
        )
        row["_code"] = "error"
        return row
    problem = _write_sample(aligned, task.id, cfg, tmp)
    if problem is not None:
        row.update(id="", status="skipped", reason=problem)
        row["_code"] = "write_error"
        return row
    row.update(mask_source=source, mask_area=f"{area:.4f}", status="ok")
    row["_share"] = float((aligned.mask > 0).mean())  # garment / frame area, for the report
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
        missing = _first_missing_file(out)
        if missing is None:
            return True
        log.warning(
            "output_dir=%s: %s (listed in its manifest) is missing or empty; rebuilding the dataset",
            out,
            missing,
        )
        return False
    if not overwrite:
        raise GarmentGenError(
            f"output_dir={out}: already holds a different prepared dataset (other inputs or settings); "
            "choose another output_dir, or pass overwrite=true to replace it"
        )
    return False


def _first_missing_file(out: Path) -> str | None:
    """The first file ``out/manifest.csv`` lists that is not on disk (or empty); None when all are.

    Only ``stat`` calls: cheap enough to run on every re-run.
    """
    try:
        with open(out / "manifest.csv", newline="") as f:
            ids = [r["id"] for r in csv.DictReader(f) if r.get("status") == "ok"]
    except (OSError, ValueError, KeyError, csv.Error):
        return "manifest.csv"
    for sample_id in ids:
        for sub in OUTPUT_SUBDIRS:
            rel = f"{sub}/{sample_id}.png"
            try:
                if (out / rel).stat().st_size == 0:
                    return rel
            except OSError:
                return rel
    return None


def _write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=MANIFEST_FIELDS, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    os.replace(tmp, path)


def _report(
    rows: list[dict[str, Any]], seconds: float, cfg: PrepareConfig | None = None
) -> tuple[str, dict[str, Any]]:
    ok = [r for r in rows if r["status"] == "ok"]
    skipped = [r for r in rows if r["status"] != "ok"]
    by_code = Counter(r["_code"] or "other" for r in skipped)
    by_split = Counter(r["split"] for r in ok)
    by_source = Counter(r["mask_source"] for r in ok)
    shares = [r["_share"] for r in ok if "_share" in r]
    garment_share = round(float(np.mean(shares)), 4) if shares else None
    lines = [
        f"prepared {len(ok)} images, skipped {len(skipped)} ({seconds:.1f} s)",
        "by split: " + ", ".join(f"{s}={by_split.get(s, 0)}" for s in SPLITS),
        "mask sources: " + ", ".join(f"{k}={v}" for k, v in sorted(by_source.items())),
    ]
    if garment_share is not None:
        frame = ""
        if cfg is not None:
            h, w = frame_size(cfg.resolution, cfg.aspect)
            frame = f" (frame {w} wide x {h} high, aspect {cfg.aspect})"
        lines.append(
            f"garment share of the frame: {garment_share:.1%}{frame}, "
            f"background (padding) {1 - garment_share:.1%}"
        )
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
        "garment_share": garment_share,  # mean mask area / frame area of the prepared images
        "seconds": round(seconds, 2),
    }
    return "\n".join(lines) + "\n", stats


class OutputLock:
    """Exclusive, non-blocking lock on ``output_dir``: a file ``.<name>.lock`` beside it.

    While one prepare holds it, a second one into the same folder is refused, and the
    holder alone may delete temporary folders there. ``flock`` locks die with their process,
    so a killed run never leaves a stale lock; the file is removed on release.
    """

    def __init__(self, out: Path):
        self.out = out
        self.path = out.parent / f".{out.name}.lock"
        self.fd: int | None = None
        self.locked = False

    def _open(self) -> int:
        try:
            self.out.parent.mkdir(parents=True, exist_ok=True)
            return os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except (FileExistsError, NotADirectoryError):
            raise GarmentGenError(
                f"output_dir={self.out}: cannot create its parent folder {self.out.parent} "
                "(a file is in the way)"
            ) from None
        except OSError as exc:
            raise GarmentGenError(
                f"output_dir={self.out}: cannot write in {self.out.parent}: {disk_reason(exc)}"
            ) from None

    def __enter__(self) -> OutputLock:
        while True:
            fd = self._open()
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise GarmentGenError(
                    f"output_dir={self.out}: another prepare is writing this folder right now "
                    f"(it holds {self.path}); wait for it to finish, or choose another output_dir"
                ) from None
            except OSError as exc:  # a file system without locks (some network mounts)
                log.warning(
                    "cannot lock %s (%s); make sure no other prepare writes output_dir=%s",
                    self.path,
                    exc.strerror,
                    self.out,
                )
                self.fd = fd
                return self
            # The previous holder unlinks the file on release: if it did so between our open
            # and our lock, we hold a lock on a file nobody else will see; open it again.
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        self.fd, self.locked = fd, True
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
        except OSError:
            pass  # the pid is for people reading the file; the lock is what counts
        return self

    def __exit__(self, *exc: object) -> None:
        if self.fd is None:
            return
        if self.locked:
            try:
                self.path.unlink(missing_ok=True)
            except OSError:
                pass
        os.close(self.fd)
        self.fd, self.locked = None, False


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_leftovers(out: Path, locked: bool) -> None:
    """Clean up after interrupted runs; call while holding :class:`OutputLock`.

    Holding the lock proves no live prepare owns a temporary folder here. Without a working
    lock only folders whose writer process is gone are removed. A previous dataset moved
    aside by a swap that was cut short is moved back.
    """
    for kind in ("tmp", "old"):
        for stale in sorted(out.parent.glob(f".{out.name}.{kind}-*")):
            pid = stale.name.rsplit("-", 1)[-1]
            if not locked and pid.isdigit() and _pid_alive(int(pid)):
                continue
            if kind == "old" and not out.exists():
                log.info("restoring the previous dataset from an interrupted run: %s", stale)
                os.replace(stale, out)
                continue
            log.info("removing leftovers of an interrupted run: %s", stale)
            shutil.rmtree(stale, ignore_errors=True)


def _load_segmenter_in_parent(cfg: PrepareConfig) -> Any:
    """Load ``segmenter=`` once before any work: a bad file is one error line, not a hung pool."""
    if not cfg.segmenter:
        return None
    if not Path(cfg.segmenter).is_file():
        raise GarmentGenError(f"segmenter={cfg.segmenter}: file not found")
    try:
        return _load_segmenter(cfg.segmenter)
    except GarmentGenError as exc:
        msg = str(exc).removeprefix(f"{Path(cfg.segmenter)}: ")
        raise GarmentGenError(f"segmenter={cfg.segmenter}: {msg}") from None
    except Exception as exc:  # noqa: BLE001 - a damaged file can fail in many ways
        raise GarmentGenError(
            f"segmenter={cfg.segmenter}: cannot load it ({exc.__class__.__name__}: {exc}); "
            "export one with `python -m garment_gen.train stage=segmenter`"
        ) from None


def prepare(cfg: PrepareConfig) -> dict[str, Any]:
    """Run data preparation; returns the summary stats written to ``dataset.json``.

    Settings, paths, the segmenter and the output location are checked before any work.

    Raises:
        GarmentGenError: a bad setting, no inputs, unusable or locked output folder, a full or
            read-only disk, or nothing could be prepared.
    """
    t0 = time.time()
    check_settings(cfg)
    if cfg.mask_dir and not Path(cfg.mask_dir).is_dir():
        raise GarmentGenError(f"mask_dir={cfg.mask_dir}: not a folder")
    _, out = _check_paths(cfg)
    segmenter = _load_segmenter_in_parent(cfg)
    with OutputLock(out) as lock:
        _remove_leftovers(out, lock.locked)
        tasks, ignored = scan_inputs(cfg)
        fingerprint = _fingerprint(cfg, tasks, ignored)
        if _check_output(out, fingerprint, cfg.overwrite):
            log.info(
                "output_dir=%s is already up to date (same inputs and settings); nothing to do",
                out,
            )
            return json.loads((out / "dataset.json").read_text())["stats"]
        tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
        try:
            try:
                tmp.mkdir()
            except OSError as exc:
                if is_disk_error(exc):
                    raise _disk_error(cfg, exc, tmp.name) from None
                raise
            rows = _process(tasks, cfg, tmp, segmenter)
            text, stats = _finish(rows, ignored, cfg, fingerprint, tmp, out, t0)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    log.info("%s", text.split("\nskipped inputs:")[0].rstrip())
    log.info("dataset written to %s (full report: %s)", out, out / "report.txt")
    return stats


def _process(
    tasks: list[Task], cfg: PrepareConfig, tmp: Path, segmenter: Any
) -> list[dict[str, Any]]:
    """Run :func:`prepare_one` over ``tasks`` in this process or a pool; rows in task order."""
    workers = min(cfg.workers or os.cpu_count() or 1, len(tasks))
    if workers <= 1:
        _init_worker(cfg, str(tmp), segmenter)
        return [_progress(i, len(tasks), prepare_one(t)) for i, t in enumerate(tasks)]
    ctx = mp.get_context("spawn" if cfg.segmenter else "fork")
    rows: list[dict[str, Any]] = []
    # Children start with SIGINT ignored (the disposition is inherited), so Ctrl-C reaches
    # only this process, which stops the pool and cleans up once.
    main_thread = threading.current_thread() is threading.main_thread()
    old_handler = signal.signal(signal.SIGINT, signal.SIG_IGN) if main_thread else None
    try:
        pool = ProcessPoolExecutor(
            workers, mp_context=ctx, initializer=_init_worker, initargs=(cfg, str(tmp), None, True)
        )
        results = pool.map(prepare_one, tasks, chunksize=4)
    finally:
        if main_thread:
            signal.signal(signal.SIGINT, old_handler)
    try:
        for i, row in enumerate(results):
            rows.append(_progress(i, len(tasks), row))
    except BrokenProcessPool:
        raise GarmentGenError(
            "a prepare worker process died (killed, or out of memory?); "
            "run again with fewer workers, e.g. workers=1"
        ) from None
    finally:
        # Pending photos are dropped; running ones finish before the caller removes tmp.
        pool.shutdown(wait=True, cancel_futures=True)
    return rows


def _finish(
    rows: list[dict[str, Any]],
    ignored: list[dict[str, Any]],
    cfg: PrepareConfig,
    fingerprint: str,
    tmp: Path,
    out: Path,
    t0: float,
) -> tuple[str, dict[str, Any]]:
    """Write manifest, report and metadata into ``tmp`` and move it to ``out``."""
    rows = sorted(rows + ignored, key=lambda r: r["source_path"])
    n_ok = sum(r["status"] == "ok" for r in rows)
    text, stats = _report(rows, time.time() - t0, cfg)
    if n_ok == 0:
        raise GarmentGenError(f"input_dir={cfg.input_dir}: no image could be prepared.\n{text}")
    height, width = frame_size(cfg.resolution, cfg.aspect)
    meta = {
        "format": DATASET_FORMAT,
        "garment_gen_version": __version__,
        "fingerprint": fingerprint,
        "resolution": cfg.resolution,  # the height
        "aspect": cfg.aspect,
        "height": height,
        "width": width,
        "background": list(cfg.background),
        "input_dir": str(Path(cfg.input_dir).resolve()),
        "settings": cfg.fingerprint_settings(),
        "stats": stats,
    }
    what = "manifest.csv"
    try:
        _write_csv(rows, tmp / "manifest.csv")
        what = "report.txt"
        (tmp / "report.txt").write_text(text)
        what = "dataset.json"
        (tmp / "dataset.json").write_text(json.dumps(meta, indent=2) + "\n")
        what = out.name
        _swap_into_place(tmp, out)
    except OSError as exc:
        if is_disk_error(exc):
            raise _disk_error(cfg, exc, what) from None
        raise
    return text, stats


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
    bg = d.get("background")
    if isinstance(bg, (list, tuple)) and all(_is_int(c) for c in bg):
        d["background"] = tuple(bg)  # anything else is named by check_settings
    return PrepareConfig(**d)


def main() -> None:
    """Entry point for ``python -m garment_gen.prepare``."""
    from omegaconf import OmegaConf

    from garment_gen import conf_dir
    from garment_gen.cli import hydra_main, user_errors

    @user_errors
    def _app(cfg) -> None:
        d = OmegaConf.to_container(cfg, resolve=False, throw_on_missing=False)
        d.pop("hydra", None)
        try:
            prepare(config_from_dict(d))
        except KeyboardInterrupt:
            print(
                f"error: interrupted; the unfinished dataset was removed and "
                f"output_dir={d.get('output_dir')} was left as it was",
                file=sys.stderr,
            )
            raise SystemExit(130) from None

    hydra_main(conf_dir(), "prepare", _app)


if __name__ == "__main__":
    main()
