"""What the studio holds: loaded garment models, their batch queues and the sample store.

A :class:`ModelSlot` is one garment model (loaded now or on first use), its
:class:`~garment_gen.serve.batching.BatchQueue` and a small cache of aligned inputs. The
:class:`SampleStore` is the bundled sample's test and validation garments: their masks are
the shapes a designer can pick, their images the textures.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from garment_gen.errors import GarmentGenError
from garment_gen.inference import (
    PRETRAINED_PREFIX,
    GarmentGenerator,
    available_pretrained,
    pretrained_path,
    resolve_model_file,
)
from garment_gen.serve.batching import BatchQueue
from garment_gen.serve.variations import generate_variations

# ----------------------------------------------------------------------------- model cards


def read_card(model_file: Path, max_metrics: int = 4) -> dict[str, Any]:
    """Summary of the ``model_card.md`` beside ``model_file``: title, first paragraph, key metrics.

    Returns ``{"title", "summary", "metrics": [{"metric", "model", "baseline"}], "status"}``;
    empty values when there is no card.
    """
    card = Path(model_file).parent / "model_card.md"
    out: dict[str, Any] = {"title": None, "summary": None, "metrics": [], "status": None}
    if not card.is_file():
        return out
    lines = card.read_text(encoding="utf-8", errors="replace").splitlines()
    section, para, status, in_code = None, [], [], False
    for line in lines:
        s = line.strip()
        if s.startswith("```"):
            in_code = not in_code
            continue
        if in_code:
            continue
        if s.startswith("# ") and out["title"] is None:
            out["title"] = _plain(s[2:])
            continue
        if s.startswith("## "):
            section = s[3:].strip().lower()
            continue
        if section is None and out["summary"] is None:
            if s:
                para.append(s)
            elif para:
                out["summary"] = _plain(" ".join(para))
        if section == "test metrics" and s.startswith("|") and len(out["metrics"]) < max_metrics:
            cells = [c.strip() for c in s.strip("|").split("|")]
            if len(cells) >= 3 and cells[0] not in ("metric", "") and not set(cells[0]) <= {"-"}:
                out["metrics"].append(
                    {"metric": _plain(cells[0]), "model": cells[1], "baseline": cells[2]}
                )
        if section and section.startswith("status") and out["status"] is None:
            if s:
                status.append(s)
            elif status:
                out["status"] = _plain(" ".join(status))
    if out["summary"] is None and para:
        out["summary"] = _plain(" ".join(para))
    if out["status"] is None and status:
        out["status"] = _plain(" ".join(status))
    return out


def _plain(text: str) -> str:
    return re.sub(r"[*`]", "", text).strip()


def _resolution_of(model_file: Path) -> int | None:
    metrics = Path(model_file).parent / "metrics.json"
    try:
        return int(json.loads(metrics.read_text())["data"]["resolution"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


# ----------------------------------------------------------------------------- inputs cache


class LRUCache:
    """A thread-safe least-recently-used map with at most ``size`` entries."""

    def __init__(self, size: int) -> None:
        self.size = int(size)
        self._d: OrderedDict[Hashable, Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> Any:
        """The value for ``key`` (now most recently used), or None."""
        with self._lock:
            if key in self._d:
                self._d.move_to_end(key)
                return self._d[key]
        return None

    def get_or_make(self, key: Hashable, make: Callable[[], Any]) -> Any:
        """The value for ``key``, made by ``make()`` (outside the lock) when absent."""
        with self._lock:
            if key in self._d:
                self._d.move_to_end(key)
                return self._d[key]
        value = make()
        if self.size > 0:
            with self._lock:
                self._d[key] = value
                self._d.move_to_end(key)
                while len(self._d) > self.size:
                    self._d.popitem(last=False)
        return value

    def __len__(self) -> int:
        return len(self._d)


# ----------------------------------------------------------------------------- jobs


@dataclass
class GenerateJob:
    """Aligned inputs for ``generate_tensors``: ``masks [n,1,R,R]``, ``textures [n,3,R,R]``."""

    masks: torch.Tensor
    textures: torch.Tensor


@dataclass
class VariationsJob:
    """One pair and the variation settings (see :func:`generate_variations`)."""

    mask: torch.Tensor
    texture: torch.Tensor
    n: int
    seed: int
    truncation: float
    strength: float


def run_batch(gen: GarmentGenerator, max_batch: int) -> Callable[[Hashable, Sequence[Any]], list]:
    """The batch function of a model's queue: one forward pass per group of jobs.

    Keys are ``("generate", truncation, seed)`` (jobs concatenated, then split again) or
    ``("variations", ...)`` (one job, one pass). Returns images ``[n, 3, R, R]`` in [-1, 1]
    on the CPU, one tensor per job.
    """

    def run(key: Hashable, jobs: Sequence[Any]) -> list[torch.Tensor]:
        kind = key[0]
        if kind == "variations":
            out = []
            for job in jobs:
                imgs = generate_variations(
                    gen,
                    job.mask,
                    job.texture,
                    n=job.n,
                    seed=job.seed,
                    truncation_psi=job.truncation,
                    strength=job.strength,
                )
                out.append(imgs.cpu())
            return out
        _, truncation, seed = key[:3]
        masks = torch.cat([j.masks for j in jobs])
        textures = torch.cat([j.textures for j in jobs])
        chunks = []
        for k in range(0, masks.shape[0], max_batch):
            chunks.append(
                gen.generate_tensors(
                    masks[k : k + max_batch],
                    textures[k : k + max_batch],
                    truncation,
                    None if seed is None else seed + k,
                ).cpu()
            )
        imgs = torch.cat(chunks)
        return list(imgs.split([j.masks.shape[0] for j in jobs]))

    return run


# ----------------------------------------------------------------------------- model slots


@dataclass
class ModelSlot:
    """One garment model of the studio: name, where it comes from, and (once loaded) its queue."""

    name: str
    spec: str
    file: Path
    shipped: bool
    gen: GarmentGenerator | None = None
    queue: BatchQueue | None = None
    cache: LRUCache = field(default_factory=lambda: LRUCache(512))
    lock: threading.Lock = field(default_factory=threading.Lock)

    def describe(self, default: str) -> dict[str, Any]:
        """JSON summary: name, resolution, loaded or not, and the model card's summary."""
        res = self.gen.resolution if self.gen is not None else _resolution_of(self.file)
        return {
            "name": self.name,
            "spec": self.spec,
            "shipped": self.shipped,
            "default": self.name == default,
            "loaded": self.gen is not None,
            "resolution": res,
            "aspect": self.gen.aspect if self.gen is not None else None,
            "card": read_card(self.file),
        }

    def load(self, device: str, warmup: int = 4) -> GarmentGenerator:
        """Load the model (once; thread-safe) and run a warm-up pass of ``warmup`` images."""
        with self.lock:
            if self.gen is None:
                gen = GarmentGenerator.from_checkpoint(self.spec, device=device)
                h, w = gen.height, gen.width
                for n in sorted({1, max(1, warmup)}):
                    gen.generate_tensors(torch.ones(n, 1, h, w), torch.zeros(n, 3, h, w))
                self.gen = gen
            return self.gen

    def aligned(self, kind: str, digest: str, make: Callable[[], torch.Tensor]) -> torch.Tensor:
        """Cached aligned input (``kind`` ``shape`` or ``texture``) for content ``digest``."""
        return self.cache.get_or_make((kind, digest), make)


def model_slots(model: str) -> tuple[dict[str, ModelSlot], str]:
    """The studio's models: every shipped one plus ``model``; returns ``(slots, default name)``.

    Raises:
        GarmentGenError: ``model`` names no shipped model or no file.
    """
    slots = {
        name: ModelSlot(name, f"{PRETRAINED_PREFIX}{name}", pretrained_path(name), True)
        for name in available_pretrained()
    }
    spec = str(model)
    file = resolve_model_file(spec)  # raises for an unknown pretrained name
    if spec.startswith(PRETRAINED_PREFIX):
        return slots, spec[len(PRETRAINED_PREFIX) :]
    if not file.is_file():
        raise GarmentGenError(f"model={model}: model file not found")
    name = file.parent.name if file.name == "garment_model.pt" else file.stem
    if name in slots or not name:
        name = f"file:{name or file.stem}"
    slots[name] = ModelSlot(name, str(file), file, False)
    return slots, name


# ----------------------------------------------------------------------------- samples


def manifest_rows(root: Path, split: str) -> list[dict[str, str]]:
    """Rows of a prepared dataset's ``manifest.csv`` with status ``ok`` in ``split``.

    The same rows as ``garment_gen.data.dataset.read_manifest``, read without importing the
    training data stack (albumentations), which the server does not need.
    """
    import csv

    with open(Path(root) / "manifest.csv", newline="") as f:
        return [r for r in csv.DictReader(f) if r.get("status") == "ok" and r["split"] == split]


@dataclass(frozen=True)
class Sample:
    """A garment of the bundled sample: id, label, split and its files."""

    id: str
    label: str
    split: str
    mask: Path
    image: Path


class SampleStore:
    """The bundled sample's garments that the studio offers (test and validation splits).

    Ids come from the sample's ``manifest.csv``; a file is only ever looked up by an id of
    that list, never built from what a client sends.
    """

    def __init__(self, root: Path, splits: Sequence[str] = ("test", "validation")) -> None:
        self.root = Path(root)
        self.samples: dict[str, Sample] = {}
        for split in splits:
            for row in manifest_rows(self.root, split):
                sid = row["id"]
                mask, image = (
                    self.root / "masks" / f"{sid}.png",
                    self.root / "images" / f"{sid}.png",
                )
                if mask.is_file() and image.is_file():
                    self.samples[sid] = Sample(sid, row.get("label", ""), split, mask, image)

    def get(self, sample_id: str) -> Sample | None:
        """The sample with this id, or None."""
        return self.samples.get(sample_id)

    def listing(self) -> list[dict[str, str]]:
        """``[{"id", "label", "split"}]`` ordered by label then split."""
        items = sorted(self.samples.values(), key=lambda s: (s.label, s.split, s.id))
        return [{"id": s.id, "label": s.label, "split": s.split} for s in items]


def digest(data: bytes) -> str:
    """SHA-256 hex of ``data`` (the cache key of an upload)."""
    return hashlib.sha256(data).hexdigest()
