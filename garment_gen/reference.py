"""Train the reference garment model within a wall-clock budget, and write what ships with it.

    python -m garment_gen.reference --data DATASET --out DIR [--minutes 9] [--trainer auto|gpu|cpu]
        [--model stylegan2_medium] [--set [STAGE:]KEY=VALUE ...] [--work outputs/reference]
    python -m garment_gen.reference --card DIR        # rewrite DIR/model_card.md from DIR/metrics.json

``scripts/train_reference.sh`` runs it on a GPU machine. ``DATASET`` is a folder made by
``python -m garment_gen.prepare ... resolution=64``. Within ``--minutes`` of wall clock it

1. checks the dataset, and that the model it would build fits in a file below ``--max-mib``
   (default :data:`FILE_LIMIT`) in float16, before training anything;
2. pretrains the StyleGAN2, trains the segmenter, then fits the shape and texture encoders on
   the frozen generator with the shape loss: each stage gets a time box (Lightning's
   ``trainer.max_time``) that is its fraction (``--fractions``) of the time actually left, so
   a slow machine shortens the later stages instead of running past the limit;
3. writes ``garment_model.pt`` in float16 into ``--out`` (loads back as float32);
4. evaluates that file on the test split beside the paste baseline (``garment_gen.evaluate``);
5. writes sample grids, ``metrics.json`` (updated after every step, so an interrupted run
   keeps what it finished), ``model_card.md`` and ``train_reference.log``, and fails when a
   file in ``--out`` is not below that limit.

Run folders (checkpoints, CSV logs, resolved configs) go under ``--work``; only ``--out`` is
meant to be shipped, as ``garment_gen/assets/models/<name>/`` (see
:meth:`garment_gen.inference.GarmentGenerator.from_pretrained`).

``--set KEY=VALUE`` is a Hydra override for every training stage; ``--set STAGE:KEY=VALUE``
for one (``pretrain``, ``segmenter``, ``encoders``), and ``--set eval:KEY=VALUE`` sets an
argument of :func:`garment_gen.evaluate.evaluate` (e.g. ``eval:max_samples=64``). A later
value for the same key replaces an earlier one, the defaults included.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import torch
import yaml

from garment_gen.errors import GarmentGenError
from garment_gen.utils.atomic import atomic_path

log = logging.getLogger("garment_gen.reference")

FILE_LIMIT = 16 * 2**20  # bytes: every file shipped in the repository must be smaller
FORMAT = "garment_gen.reference_metrics/1"
STAGES = ("pretrain", "segmenter", "encoders")
FRACTIONS = (0.6, 0.08, 0.25)  # of the budget; the rest is for evaluation, grids and export
# Generator config per trainer: on a GPU the medium one (7.4 MiB in fp16 at 64 px), on a CPU
# the small one of `make demo`.
DEFAULT_MODEL = {"gpu": "stylegan2_medium", "cpu": "stylegan2_small"}
STAGE_MODELS = {"segmenter": "segmenter_compact", "encoders": "encoders_compact"}
BATCH_SIZE = {"gpu": 32, "cpu": 16}
# Test metrics shown first in the model card (evaluate.TABLE keys).
CARD_METRICS = (
    "realism",
    "lpips",
    "iou_classical",
    "iou_segmenter",
    "cross_iou_classical",
    "cross_iou_segmenter",
)
DEFAULT_DATA_LICENCE = (
    "CC0 1.0 (public domain dedication): photos of Alexey Grigorev's clothing dataset "
    '(clothing-cc0-small); courtesy credit: "Clothing dataset by Alexey Grigorev and contributors"'
)


# ----------------------------------------------------------------------------- options


def parse_overrides(items: list[str]) -> dict[str, list[str]]:
    """``[STAGE:]KEY=VALUE`` items -> ``{stage or "all": ["KEY=VALUE", ...]}``.

    Raises:
        GarmentGenError: an item without ``=`` or with an unknown stage prefix.
    """
    out: dict[str, list[str]] = {}
    for item in items:
        scope, _, rest = item.partition(":")
        if "=" in scope or not rest:  # no stage prefix (a value may itself hold ':')
            scope, rest = "all", item
        if scope not in (*STAGES, "eval", "all") or "=" not in rest:
            raise GarmentGenError(
                f"--set {item}: expected KEY=VALUE or STAGE:KEY=VALUE with STAGE one of "
                f"{', '.join((*STAGES, 'eval'))}"
            )
        out.setdefault(scope, []).append(rest)
    return out


def merge_overrides(*groups: list[str]) -> list[str]:
    """Hydra overrides, a later ``KEY=...`` replacing an earlier one for the same key."""
    merged: dict[str, str] = {}
    for group in groups:
        for item in group:
            key = item.split("=", 1)[0]
            merged.pop(key, None)
            merged[key] = item
    return list(merged.values())


def eval_kwargs(items: list[str]) -> dict[str, Any]:
    """``KEY=VALUE`` items -> keyword arguments of ``evaluate`` (values read as YAML)."""
    import inspect

    from garment_gen.evaluate import evaluate

    known = set(inspect.signature(evaluate).parameters) - {"model", "root", "split", "out"}
    kwargs = {}
    for item in items:
        key, value = item.split("=", 1)
        if key not in known:
            raise GarmentGenError(
                f"--set eval:{item}: unknown evaluation setting; valid: {', '.join(sorted(known))}"
            )
        kwargs[key] = yaml.safe_load(value)
    return kwargs


def pick_trainer(choice: str) -> str:
    """``auto`` -> ``gpu`` when CUDA is available, else ``cpu``; ``gpu`` without CUDA fails."""
    if choice == "auto":
        return "gpu" if torch.cuda.is_available() else "cpu"
    if choice == "gpu" and not torch.cuda.is_available():
        raise GarmentGenError("--trainer gpu: CUDA is not available on this machine; use cpu")
    return choice


def device_name(trainer: str) -> str:
    """The accelerator's name: the GPU's, or the CPU's with its thread count."""
    from garment_gen.evaluate import _device_name

    return _device_name(torch.device("cuda" if trainer == "gpu" else "cpu"))


# ----------------------------------------------------------------------------- size check


def _mib(n_bytes: float) -> str:
    return f"{n_bytes / 2**20:.2f} MiB"


def estimate_model_bytes(
    stage_overrides: dict[str, list[str]], resolution: int, work: Path
) -> dict[str, int]:
    """Bytes of float16 weights of the networks the stages would build: ``{network: bytes}``.

    Builds each network from its composed config (randomly initialised, on the CPU) and
    counts 2 bytes per floating-point value of its state.
    """
    import hydra

    from garment_gen.timebox import compose_stage

    def nbytes(module: torch.nn.Module) -> int:
        return sum(2 * v.numel() for v in module.state_dict().values() if v.is_floating_point())

    cfg = compose_stage("pretrain", stage_overrides["pretrain"], work)
    g = hydra.utils.instantiate(cfg.model.generator, resolution=resolution)
    cfg = compose_stage("encoders", stage_overrides["encoders"], work)
    enc = hydra.utils.instantiate(
        cfg.model.encoders, num_ws=g.num_ws, w_dim=g.w_dim, resolution=resolution
    )
    cfg = compose_stage("segmenter", stage_overrides["segmenter"], work)
    seg = hydra.utils.instantiate(cfg.model.net, resolution=resolution)
    return {"generator": nbytes(g), "encoders": nbytes(enc), "segmenter": nbytes(seg)}


def file_sizes(out: Path) -> dict[str, int]:
    """``{file name: bytes}`` of every file in ``out``."""
    return {p.name: p.stat().st_size for p in sorted(out.iterdir()) if p.is_file()}


def check_file_sizes(out: Path, limit: int = FILE_LIMIT) -> dict[str, int]:
    """``{file name: bytes}`` of every file in ``out``; fails when one is not below ``limit``."""
    sizes = file_sizes(out)
    big = {k: v for k, v in sizes.items() if v >= limit}
    if big:
        raise GarmentGenError(
            f"{out}: {', '.join(f'{k} is {_mib(v)}' for k, v in big.items())}; every shipped "
            f"file must be below {_mib(limit)}: use a smaller --model (e.g. stylegan2_small) "
            "or narrower encoders/segmenter (--set encoders:model.encoders.max_channels=...)"
        )
    return sizes


# ----------------------------------------------------------------------------- model card


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}g}" if abs(v) < 1000 else f"{v:.0f}"
    return str(v)


def model_card(metrics: dict[str, Any]) -> str:
    """The ``model_card.md`` text for a ``metrics.json`` written by :func:`main`."""
    from garment_gen.evaluate import TABLE

    name = metrics.get("name", "reference")
    data = metrics.get("data", {})
    cfgs = metrics.get("configs", {})
    stages = metrics.get("stages", {})
    test = metrics.get("test")
    lines = [
        f"# garment_gen model `{name}`",
        "",
        "A garment model (StyleGAN2 generator, shape and texture encoders, segmenter) trained by "
        f"`scripts/train_reference.sh` in {_fmt(metrics.get('wall_seconds', 0) / 60, 2)} minutes "
        f"of wall clock on {metrics.get('device_name', '?')}.",
        "Written from `metrics.json` by `python -m garment_gen.reference`; every number below is "
        "in that file.",
        "",
        "```python",
        "from garment_gen.inference import GarmentGenerator",
        "",
        f'gen = GarmentGenerator.from_pretrained("{name}")',
        'image = gen.generate(shape="coat_mask.png", texture="stars_tshirt.jpg")',
        "```",
        "",
        f"or `python -m garment_gen.generate model=pretrained:{name} shape=... texture=... out=...`.",
        "",
        "## Data",
        "",
        f"- prepared dataset: `{data.get('name', '?')}` ({data.get('resolution', '?')} px, "
        + ", ".join(f"{k} {v}" for k, v in data.get("by_split", {}).items())
        + f"), fingerprint `{str(data.get('fingerprint', '?'))[:16]}`",
        f"- source photos: `{data.get('source', '?')}`",
        f"- licence of the training data: {metrics.get('data_licence') or 'not stated'}",
        "",
        "## Training",
        "",
        f"- device: {metrics.get('device_name', '?')} (trainer `{cfgs.get('trainer', '?')}`, "
        f"precision `{metrics.get('precision', '?')}`); torch {metrics.get('torch_version', '?')}, "
        f"garment_gen {metrics.get('garment_gen_version', '?')}, commit "
        f"`{metrics.get('git_commit') or '?'}`",
        f"- budget {_fmt(metrics.get('budget_seconds'))} s, split over the stages by "
        f"{', '.join(f'{k} {v:g}' for k, v in metrics.get('fractions', {}).items())} "
        "of the time left when each starts (the rest: evaluation and export)",
        f"- weights stored in float16: {_mib(metrics.get('files', {}).get('garment_model.pt', 0))}"
        " (loaded back as float32)",
        "",
        "| stage | config | time box (s) | wall time (s) | images/s | result |",
        "|---|---|---|---|---|---|",
    ]
    for stage in STAGES:
        s = stages.get(stage)
        if not s:
            continue
        result = {
            "pretrain": f"{_fmt(s.get('kimg'))} kimg",
            "segmenter": f"val IoU {_fmt(s.get('val', {}).get('val/iou'))}",
            "encoders": f"val objective {_fmt(s.get('val', {}).get('val/objective'))}",
        }[stage]
        lines.append(
            f"| {stage} | `{cfgs.get(stage, '?')}` | {_fmt(s.get('box_seconds'))} | "
            f"{_fmt(s.get('wall_seconds'))} | {_fmt(s.get('images_per_second'))} | {result} |"
        )
    for step in ("export", "evaluate"):
        if step in stages:
            lines.append(f"| {step} | | | {_fmt(stages[step].get('wall_seconds'))} | | |")
    lines += ["", "Pretraining samples (fixed latents, generator EMA):", ""]
    lines += ["![pretrain samples](pretrain_samples.png)", ""]
    lines += ["## Test metrics", ""]
    if not test:
        lines += ["Not evaluated (the run ended before the evaluation).", ""]
    else:
        backend = test.get("realism_backend")
        lines += [
            f"Test split of the dataset: {test.get('n')} garments, {test.get('num_pairs')} "
            f"cross-combination pairs (shape of A, texture of B), {test.get('textures')} "
            "textures. The paste baseline crops the texture's garment and pastes it into the "
            "target shape; a model that does not beat it has learned no more than copying.",
            "",
            "| metric | model | paste baseline |",
            "|---|---|---|",
        ]
        labels = {key: (label, higher) for key, label, higher in TABLE}
        order = [k for k in CARD_METRICS] + [
            k for k, _, _ in TABLE if k not in CARD_METRICS and k != "images_per_second"
        ]
        for key in order:
            label, higher = labels[key]
            if key == "realism":
                if not backend:
                    continue
                label = f"realism {backend.upper().replace('_', '-')}"
                if backend == "fd_vgg":
                    label += " (not comparable to FID)"
            arrow = "↑" if higher else "↓"
            lines.append(
                f"| {label} {arrow} | {_fmt(test['model'].get(key))} | "
                f"{_fmt(test['paste_baseline'].get(key))} |"
            )
        lines += [
            "",
            "The segmenter IoUs use the segmenter bundled with the model, the one the shape "
            "loss trained the encoders against, so they favour the model; the classical IoUs "
            "(pixels that differ from the background) do not depend on it. The paste baseline "
            "copies real pixels, so its realism distance is low by construction.",
            f"Generation speed on {test.get('device_name', '?')}: "
            f"{_fmt(test['model'].get('images_per_second'))} images/s.",
            "",
            "Reconstructions (rows: occluded texture, mask, model, paste baseline, original):",
            "",
            "![test reconstructions](test_reconstructions.png)",
            "",
            "Cross-combinations (rows: A's mask, B's texture, model, paste baseline, B):",
            "",
            "![test cross-combinations](test_cross_pairs.png)",
            "",
            "Shape x texture grid of test garments (rows: shapes, columns: textures):",
            "",
            "![shape x texture grid](shape_texture_grid.png)",
            "",
        ]
    lines += [
        "## Limitations",
        "",
        f"{data.get('resolution', '?')} px images after minutes of training: expect blurry, "
        "approximate garments, not photographs. The model only knows garments like those of "
        "its training data, centred on a plain background.",
        "",
        "## Licence",
        "",
        "The weights are released under garment_gen's MIT licence (`LICENSE`). Training data: "
        f"{metrics.get('data_licence') or 'licence not stated'}.",
        "",
    ]
    return "\n".join(lines)


def write_model_card(out: Path) -> Path:
    """Write ``out/model_card.md`` from ``out/metrics.json``."""
    metrics_path = out / "metrics.json"
    if not metrics_path.is_file():
        raise GarmentGenError(f"{metrics_path}: not found; run python -m garment_gen.reference")
    path = out / "model_card.md"
    with atomic_path(path) as tmp:
        tmp.write_text(model_card(json.loads(metrics_path.read_text())))
    return path


# ----------------------------------------------------------------------------- the run


def _stage_record(run_dir: Path, work: Path, box: float, wall: float, stage: str) -> dict:
    """What ``metrics.json`` keeps of one training stage, from its run folder."""
    from omegaconf import OmegaConf

    info = json.loads((run_dir / "metrics.json").read_text())
    train_s = info.get("train_seconds")
    rec: dict[str, Any] = {
        "box_seconds": round(box, 1),
        "wall_seconds": round(wall, 1),
        "train_seconds": train_s,
        "steps": info.get("global_step"),
        "stop_reason": info.get("stop_reason"),
        "val": {k: v for k, v in info.items() if k.startswith("val/")},
        "run": run_dir.relative_to(work).as_posix(),
    }
    if stage == "pretrain":
        rec["kimg"] = None if info.get("kimg") is None else round(info["kimg"], 3)
        images = None if rec["kimg"] is None else rec["kimg"] * 1000
    else:
        batch = OmegaConf.load(run_dir / "config_resolved.yaml").data.batch_size
        images = None if rec["steps"] is None else rec["steps"] * int(batch)
    # Real images per second of training loop (pretrain: images the discriminator saw).
    rec["images_per_second"] = round(images / train_s, 2) if images and train_s else None
    return rec


def _portable_meta(meta: dict[str, Any], work: Path) -> dict[str, Any]:
    """The encoders export's meta with this machine's paths made relative to the work folder."""
    meta = json.loads(json.dumps(meta, default=str))

    def rel(value: Any) -> Any:
        if isinstance(value, str) and value.startswith(str(work)):
            return "<work>/" + Path(value).relative_to(work).as_posix()
        if isinstance(value, dict):
            return {k: rel(v) for k, v in value.items()}
        return value

    return rel(meta)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Train, export, evaluate and document the reference model; returns ``metrics.json``."""
    from garment_gen import __version__
    from garment_gen.data.dataset import read_dataset_meta
    from garment_gen.evaluate import _write_json as write_json
    from garment_gen.timebox import TimeBudget, compose_stage, run_stage
    from garment_gen.utils.run_info import git_commit

    budget = TimeBudget(args.minutes * 60, dict(zip(STAGES, args.fractions, strict=True)))
    out, work = Path(args.out).resolve(), Path(args.work).resolve()
    data_root = Path(args.data).resolve()
    meta = read_dataset_meta(data_root)
    trainer = pick_trainer(args.trainer)
    model = args.model or DEFAULT_MODEL[trainer]
    user = parse_overrides(args.set)
    common = [
        f"trainer={trainer}",
        f"data.root={data_root}",
        f"data.num_workers={args.workers}",
        f"data.batch_size={BATCH_SIZE[trainer]}",
        "trainer.enable_progress_bar=false",
        "trainer.enable_model_summary=false",
    ]
    if trainer == "gpu" and not torch.cuda.is_bf16_supported():
        common.append("trainer.precision=32-true")  # trainer=gpu is bf16-mixed
    defaults = {
        "pretrain": [f"model={model}", "trainer.limit_val_batches=0"],
        "segmenter": [f"model={STAGE_MODELS['segmenter']}", "trainer.limit_val_batches=2"],
        "encoders": [
            f"model={STAGE_MODELS['encoders']}",
            "loss.w_shape=0.1",
            "trainer.limit_val_batches=2",
            "trainer.val_check_interval=50",
            "trainer.check_val_every_n_epoch=null",
        ],
    }
    overrides = {
        s: merge_overrides(common, defaults[s], user.get("all", []), user.get(s, []))
        for s in STAGES
    }
    evaluation = eval_kwargs(user.get("eval", []))

    # 1. checks before any training: the data, and the size of the float16 file.
    cfg = compose_stage("pretrain", overrides["pretrain"], work)
    resolution = int(cfg.data.resolution or meta["resolution"])
    precision = str(cfg.trainer.precision)
    configs = {
        "trainer": trainer,
        **{
            s: next(o[len("model=") :] for o in overrides[s] if o.startswith("model="))
            for s in STAGES
        },
        # As given on the command line, not this machine's absolute path of the data.
        "overrides": {
            s: [o.replace(str(data_root), args.data) for o in v] for s, v in overrides.items()
        },
    }
    sizes = estimate_model_bytes(overrides, resolution, work)
    log.info(
        "garment model in float16: %s (%s)",
        _mib(sum(sizes.values())),
        ", ".join(f"{k} {_mib(v)}" for k, v in sizes.items()),
    )
    limit = int(args.max_mib * 2**20)
    if sum(sizes.values()) >= 0.98 * limit:  # the file adds names and settings
        raise GarmentGenError(
            f"the garment model would be {_mib(sum(sizes.values()))} in float16 "
            f"({', '.join(f'{k} {_mib(v)}' for k, v in sizes.items())}), not below the "
            f"{_mib(limit)} a shipped file may have: choose a smaller --model "
            f"(now {model}) or narrower networks with --set"
        )
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    metrics: dict[str, Any] = {
        "format": FORMAT,
        "name": args.name,
        "data": {
            "name": data_root.name,
            "resolution": resolution,
            "by_split": meta.get("stats", {}).get("by_split", {}),
            "fingerprint": meta.get("fingerprint"),
            # The photos' folder without this machine's part of the path.
            "source": "/".join(Path(str(meta.get("input_dir", "?"))).parts[-2:]),
        },
        "data_licence": args.data_licence,
        "device": "cuda" if trainer == "gpu" else "cpu",
        "device_name": device_name(trainer),
        "precision": precision,
        "torch_version": str(torch.__version__),
        "garment_gen_version": __version__,
        "git_commit": git_commit(Path(__file__).resolve().parent),
        "configs": configs,
        "budget_seconds": budget.seconds,
        "fractions": dict(zip(STAGES, args.fractions, strict=True)),
        "estimated_fp16_bytes": sizes,
        "stages": {},
        "kimg": None,
        "test": None,
        "files": {},
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }

    def save() -> None:
        metrics["wall_seconds"] = round(budget.elapsed(), 1)
        write_json(metrics, out / "metrics.json")

    # 2. the three training stages, each in its box of the time left.
    runs: dict[str, Path] = {}
    for stage in STAGES:
        extra = []
        if stage == "encoders":
            extra = [
                f"model.generator={runs['pretrain'] / 'generator.pt'}",
                f"loss.segmenter={runs['segmenter'] / 'segmenter.pt'}",
            ]
        box = budget.box(stage)
        t0 = time.monotonic()
        runs[stage] = run_stage(stage, [*overrides[stage], *extra], work, box)
        wall = time.monotonic() - t0
        budget.done(stage, box, wall)
        metrics["stages"][stage] = _stage_record(runs[stage], work, box, wall, stage)
        if stage == "pretrain":
            metrics["kimg"] = metrics["stages"][stage]["kimg"]
            samples = sorted((runs[stage] / "samples").glob("kimg*.png"))
            if samples:
                shutil.copyfile(samples[-1], out / "pretrain_samples.png")
        save()
        log.info("%.0f s left of %.0f s", budget.left(), budget.seconds)

    # 3. the garment model in float16, as it will ship.
    from garment_gen.inference import GarmentGenerator, load_garment_model, save_garment_model

    t0 = time.monotonic()
    model, meta = load_garment_model(runs["encoders"] / "garment_model.pt")
    model_meta = _portable_meta(meta, work)
    model_meta["reference"] = {
        k: metrics[k]
        for k in ("name", "data", "device_name", "torch_version", "configs", "kimg", "started")
    }
    model_path = save_garment_model(
        out / "garment_model.pt", model, meta=model_meta, dtype=torch.float16
    )
    metrics["stages"]["export"] = {"wall_seconds": round(time.monotonic() - t0, 1)}
    save()

    # 4. test metrics of the shipped file, beside the paste baseline, and the grids.
    from garment_gen.evaluate import evaluate, format_table
    from garment_gen.generate import split_grid
    from garment_gen.utils.images import save_png

    t0 = time.monotonic()
    device = metrics["device"]
    report = evaluate(
        model_path,
        root=data_root,
        split="test",
        out=work / "eval_test",
        **{"device": device, "batch_size": 2 * BATCH_SIZE[trainer], **evaluation},
    )
    log.info("test split:\n%s", format_table(report))
    for src, dst in (
        ("reconstructions.png", "test_reconstructions.png"),
        ("cross.png", "test_cross_pairs.png"),
    ):
        if (work / "eval_test" / src).is_file():
            shutil.copyfile(work / "eval_test" / src, out / dst)
    gen = GarmentGenerator.from_checkpoint(model_path, device=device)
    save_png(split_grid(gen, data_root, "test"), out / "shape_texture_grid.png")
    metrics["test"] = {
        k: report.get(k)
        for k in (
            "model",
            "paste_baseline",
            "realism_backend",
            "split",
            "n",
            "num_pairs",
            "textures",
            "seed",
            "device_name",
        )
    }
    metrics["stages"]["evaluate"] = {"wall_seconds": round(time.monotonic() - t0, 1)}
    save()

    # 5. the card, then every file's size: a file too big to ship fails the run.
    metrics["files"] = file_sizes(out)
    save()
    write_model_card(out)
    metrics["files"] = check_file_sizes(out, limit)
    save()
    return metrics


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """``python -m garment_gen.reference``: parse options, log to a file, run."""
    from garment_gen.cli import user_errors

    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--data", help="prepared dataset folder (python -m garment_gen.prepare)")
    ap.add_argument("--out", help="folder for what ships: model, metrics, grids, card, log")
    ap.add_argument("--work", default="outputs/reference", help="folder for the run folders")
    ap.add_argument("--minutes", type=float, default=9.0, help="wall-clock budget of the run")
    ap.add_argument(
        "--fractions",
        type=lambda s: tuple(float(x) for x in s.split(",")),
        default=FRACTIONS,
        help="shares of the budget for pretrain,segmenter,encoders (the rest: evaluation)",
    )
    ap.add_argument("--trainer", choices=("auto", "gpu", "cpu"), default="auto")
    ap.add_argument(
        "--model",
        default=None,
        help=f"generator config (conf/model/); default {DEFAULT_MODEL['gpu']} on a GPU, "
        f"{DEFAULT_MODEL['cpu']} on a CPU",
    )
    ap.add_argument("--name", default="reference", help="the model's name (from_pretrained)")
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="[STAGE:]KEY=VALUE",
        help="Hydra override for every stage or one (pretrain, segmenter, encoders), or "
        "eval:KEY=VALUE for the evaluation; repeatable",
    )
    ap.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1))
    ap.add_argument(
        "--data-licence", default=DEFAULT_DATA_LICENCE, help="licence of the training data"
    )
    ap.add_argument(
        "--max-mib",
        type=float,
        default=FILE_LIMIT / 2**20,
        help="every file written to --out must be smaller than this (MiB)",
    )
    ap.add_argument("--card", metavar="DIR", help="only rewrite DIR/model_card.md")
    args = ap.parse_args(argv)

    @user_errors
    def _main() -> dict[str, Any]:
        if args.card:
            path = write_model_card(Path(args.card))
            print(f"wrote {path}")
            return json.loads((Path(args.card) / "metrics.json").read_text())
        if not args.data or not args.out:
            raise GarmentGenError("--data DATASET and --out DIR are required")
        if len(args.fractions) != len(STAGES):
            raise GarmentGenError(
                f"--fractions {args.fractions}: give three shares, for {', '.join(STAGES)}"
            )
        try:
            from garment_gen.timebox import TimeBudget

            TimeBudget(1, dict(zip(STAGES, args.fractions, strict=True)))
        except ValueError as exc:
            raise GarmentGenError(f"--fractions: {exc}") from None
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(out / "train_reference.log", mode="w")
        handler.setFormatter(
            logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] %(message)s", "%H:%M:%S")
        )
        root = logging.getLogger()
        root.addHandler(handler)
        if root.level > logging.INFO or root.level == logging.NOTSET:
            root.setLevel(logging.INFO)
        logging.captureWarnings(True)
        log.info(
            "python -m garment_gen.reference %s", " ".join(sys.argv[1:] if argv is None else argv)
        )
        try:
            metrics = run(args)
        except BaseException:
            log.exception("the reference run failed")
            raise
        finally:
            logging.captureWarnings(False)
            root.removeHandler(handler)
            handler.close()
        print(
            "\n".join(
                [
                    f"reference model {args.name!r} done in {metrics['wall_seconds'] / 60:.1f} min "
                    f"(budget {args.minutes:g}) on {metrics['device_name']}",
                    f"  {out / 'garment_model.pt'} ({_mib(metrics['files']['garment_model.pt'])}, float16)",
                    f"  {out / 'model_card.md'}, metrics.json, grids, train_reference.log",
                    f"  to ship it: copy {out}/ to garment_gen/assets/models/{args.name}/",
                ]
            )
        )
        return metrics

    return _main()


if __name__ == "__main__":
    logging.basicConfig(
        level=logging.INFO, format="[%(asctime)s][%(name)s] %(message)s", datefmt="%H:%M:%S"
    )
    main()
