"""Train the reference garment model within a wall-clock budget, and write what ships with it.

    python -m garment_gen.reference pipeline.data=DATASET [pipeline.minutes=120]
        [pipeline.out=DIR] [pipeline.work=DIR] [experiment=reference] [--max-mib 16] [OVERRIDE ...]
    python -m garment_gen.reference --card DIR        # rewrite DIR/model_card.md from DIR/metrics.json

Runs ``conf/experiment/reference.yaml`` (any experiment with ``experiment=``) through
:mod:`garment_gen.pipeline`: pretrain, segmenter and encoders, each in its share of the
wall-clock budget. A stopped run resumes when called again with the same ``pipeline.work``
(the card says how many calls it took). Then it

1. checked, before training, that the networks fit a shipped file below ``--max-mib`` in
   float16;
2. writes ``garment_model.pt`` in float16 into ``pipeline.out`` (loads back as float32) and
   checks that float16 does not change the test metrics (LPIPS and IoU within 0.005);
3. evaluates that file on the test split beside the mean-garment and paste baselines and the
   upper bound, and draws the grids;
4. writes ``metrics.json`` (updated after every step), ``model_card.md`` (from the template
   ``garment_gen/templates/model_card.md``) and ``train_reference.log``, and fails when a
   file is not below the size limit.

Copy ``pipeline.out`` to ``garment_gen/assets/models/<name>/`` to ship it.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import string
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from garment_gen.errors import GarmentGenError
from garment_gen.utils.atomic import atomic_path, write_json_atomic

log = logging.getLogger("garment_gen.reference")

FILE_LIMIT = 16 * 2**20  # bytes: every file shipped in the repository must be smaller
FORMAT = "garment_gen.reference_metrics/2"
STAGES = ("pretrain", "segmenter", "encoders")
TEMPLATE = Path(__file__).resolve().parent / "templates" / "model_card.md"
DEFAULT_DATA_LICENCE = (
    "CC0 1.0 (public domain dedication): photos of Alexey Grigorev's clothing dataset "
    '(clothing-cc0-small); courtesy credit: "Clothing dataset by Alexey Grigorev and contributors"'
)
# Test metrics first in the card's table (evaluate.TABLE keys), then the rest.
CARD_METRICS = ("lpips", "iou_classical", "cross_iou_classical", "cross_hist_hellinger", "realism")
FP16_TOLERANCE = 0.005


# ----------------------------------------------------------------------------- sizes


def _mib(n_bytes: float) -> str:
    return f"{n_bytes / 2**20:.2f} MiB"


def estimate_model_bytes(p: DictConfig, resolution: int) -> dict[str, int]:
    """Bytes of float16 weights of the networks experiment ``p`` would build: ``{network: bytes}``."""
    import hydra

    from garment_gen.networks.encoders import GarmentEncoders
    from garment_gen.pipeline import compose, stage_overrides

    def nbytes(module: torch.nn.Module) -> int:
        return sum(2 * v.numel() for v in module.state_dict().values() if v.is_floating_point())

    def cfg(stage: str) -> DictConfig:
        overrides, values = stage_overrides(p, stage)
        return compose(stage, overrides, values=values)

    g = hydra.utils.instantiate(cfg("pretrain").model.generator, resolution=resolution)
    enc_cfg = OmegaConf.to_container(cfg("encoders").model.encoders, resolve=True)
    enc_cfg.pop("_target_", None)
    enc = GarmentEncoders.from_generator(g, resolution=resolution, **enc_cfg)
    seg = hydra.utils.instantiate(cfg("segmenter").model.net, resolution=resolution)
    return {"generator": nbytes(g), "encoders": nbytes(enc), "segmenter": nbytes(seg)}


def file_sizes(out: Path) -> dict[str, int]:
    """``{file name: bytes}`` of every file in ``out``."""
    return {f.name: f.stat().st_size for f in sorted(out.iterdir()) if f.is_file()}


def check_file_sizes(out: Path, limit: int = FILE_LIMIT) -> dict[str, int]:
    """``{file name: bytes}`` of every file in ``out``; fails when one is not below ``limit``."""
    sizes = file_sizes(out)
    big = {k: v for k, v in sizes.items() if v >= limit}
    if big:
        raise GarmentGenError(
            f"{out}: {', '.join(f'{k} is {_mib(v)}' for k, v in big.items())}; every shipped "
            f"file must be below {_mib(limit)}: choose narrower networks "
            "(pipeline.stages.encoders.set.model.encoders.max_channels=...)"
        )
    return sizes


# ----------------------------------------------------------------------------- model card


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}g}" if abs(v) < 1000 else f"{v:.0f}"
    return str(v)


def _stage_table(metrics: dict[str, Any]) -> str:
    rows = [
        "| stage | configs | time box (s) | wall time (s) | images/s | result |",
        "|---|---|---|---|---|---|",
    ]
    for stage in STAGES:
        s = metrics.get("stages", {}).get(stage)
        if not s:
            continue
        result = {
            "pretrain": f"{_fmt(s.get('kimg'))} kimg",
            "segmenter": f"val IoU {_fmt(s.get('val', {}).get('val/iou'))}",
            "encoders": f"val LPIPS {_fmt(s.get('val', {}).get('val/lpips'))}",
        }[stage]
        rows.append(
            f"| {stage} | `{s.get('groups', '')}` | {_fmt(s.get('box_seconds'))} | "
            f"{_fmt(s.get('wall_seconds'))} | {_fmt(s.get('images_per_second'))} | {result} |"
        )
    for step in ("export", "evaluate"):
        if step in metrics.get("stages", {}):
            rows.append(f"| {step} | | | {_fmt(metrics['stages'][step].get('wall_seconds'))} | | |")
    return "\n".join(rows)


def _test_table(test: dict[str, Any] | None) -> str:
    from garment_gen.evaluate import TABLE

    if not test:
        return "Not evaluated (the run ended before the evaluation)."
    backend = test.get("realism_backend") or ""
    methods = [m for m in ("model", "upper_bound", "mean_garment", "paste_baseline") if test.get(m)]
    names = {
        "model": "model",
        "upper_bound": "upper bound",
        "mean_garment": "mean garment",
        "paste_baseline": "paste",
    }
    rows = [
        "| metric | " + " | ".join(names[m] for m in methods) + " |",
        "|---|" + "---|" * len(methods),
    ]
    labels = {key: (label, higher) for key, label, higher in TABLE}
    order = [*CARD_METRICS, *(k for k, _, _ in TABLE if k not in CARD_METRICS)]
    for key in order:
        label, higher = labels[key]
        if key in ("realism", "realism_kid"):
            kind = backend.upper().replace("_", "-")
            label = f"{label} {kind.replace('FD', 'KID') if key == 'realism_kid' else kind}"
        if all(test[m].get(key) is None for m in methods):
            continue
        arrow = "↑" if higher else "↓"
        rows.append(
            f"| {label} {arrow} | " + " | ".join(_fmt(test[m].get(key)) for m in methods) + " |"
        )
    return "\n".join(rows)


def model_card(metrics: dict[str, Any]) -> str:
    """The ``model_card.md`` text for a ``metrics.json`` written by :func:`run`."""
    data = metrics.get("data", {})
    test = metrics.get("test") or {}
    fp16 = metrics.get("fp16_check") or {}
    values = {
        "name": metrics.get("name", "reference"),
        "minutes": _fmt(metrics.get("wall_seconds", 0) / 60, 3),
        "budget_minutes": _fmt(metrics.get("budget_seconds", 0) / 60, 3),
        "calls": metrics.get("calls", 1),
        "device": metrics.get("device_name", "?"),
        "torch": metrics.get("torch_version", "?"),
        "version": metrics.get("garment_gen_version", "?"),
        "commit": metrics.get("git_commit") or "?",
        "experiment": metrics.get("experiment", "?"),
        "data_name": data.get("name", "?"),
        "resolution": data.get("resolution", "?"),
        "splits": ", ".join(f"{k} {v}" for k, v in data.get("by_split", {}).items()),
        "fingerprint": str(data.get("fingerprint", "?"))[:16],
        "source": data.get("source", "?"),
        "licence": metrics.get("data_licence") or "not stated",
        "file_size": _mib(metrics.get("files", {}).get("garment_model.pt", 0)),
        "kimg": _fmt(metrics.get("kimg")),
        "generator": metrics.get("generator")
        or f"pretrained here: {_fmt(metrics.get('kimg'))} kimg",
        "stage_table": _stage_table(metrics),
        "recipe": _recipe(metrics),
        "test_table": _test_table(test),
        "n": test.get("n", "?"),
        "pairs": test.get("num_pairs", "?"),
        "fp16": (
            f"float16 changes test LPIPS by {fp16.get('lpips_delta', 0):+.4f} and classical IoU by "
            f"{fp16.get('iou_delta', 0):+.4f} (on {fp16.get('n', '?')} garments)"
            if fp16
            else "float16 was not compared with float32"
        ),
        "speed": _fmt((test.get("model") or {}).get("images_per_second")),
    }
    return string.Template(TEMPLATE.read_text()).safe_substitute(values)


def _flat(d: Any, prefix: str = "") -> list[str]:
    if not isinstance(d, dict):
        return [f"{prefix}={d}"]
    return [item for k, v in d.items() for item in _flat(v, f"{prefix}.{k}" if prefix else k)]


def _recipe(metrics: dict[str, Any]) -> str:
    """The encoders stage's settings of the experiment, as ``key=value`` in backticks."""
    stage = (metrics.get("experiment") or {}).get("stages", {}).get("encoders") or {}
    groups = [f"{k}={v}" for k, v in (stage.get("groups") or {}).items() if v is not None]
    values = [v for v in _flat(stage.get("set") or {}) if not v.startswith(("trainer.", "data."))]
    return ", ".join(f"`{v}`" for v in groups + values) or "the stage defaults"


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


@torch.no_grad()
def generator_samples(g: torch.nn.Module, n: int = 32, seed: int = 0) -> np.ndarray:
    """An ``n``-image grid of ``g`` (fixed latents, truncation 1), as uint8 HWC."""
    from garment_gen.utils.images import grid

    z = torch.randn(n, g.z_dim, generator=torch.Generator().manual_seed(seed))
    return grid(g(z, noise_mode="const"), nrow=8)


def _stage_record(run_dir: Path, state: dict[str, Any], groups: dict[str, Any], stage: str) -> dict:
    """What ``metrics.json`` keeps of one training stage, from its run folder."""
    info = json.loads((run_dir / "metrics.json").read_text())
    train_s = info.get("train_seconds")
    rec: dict[str, Any] = {
        "box_seconds": state.get("box_seconds"),
        "wall_seconds": state.get("wall_seconds"),
        "train_seconds": train_s,
        "steps": info.get("global_step"),
        "stop_reason": info.get("stop_reason"),
        "val": {k: v for k, v in info.items() if k.startswith("val/")},
        "run": run_dir.name,
        "groups": ", ".join(f"{k}={v or 'default'}" for k, v in groups.items()),
    }
    if stage == "pretrain":
        rec["kimg"] = None if info.get("kimg") is None else round(info["kimg"], 3)
        images = None if rec["kimg"] is None else rec["kimg"] * 1000
    else:
        batch = OmegaConf.load(run_dir / "config_resolved.yaml").data.batch_size
        images = None if rec["steps"] is None else rec["steps"] * int(batch)
    rec["images_per_second"] = round(images / train_s, 2) if images and train_s else None
    return rec


def _fp16_check(fp32: Path, fp16: Path, root: Path) -> dict[str, float]:
    """LPIPS and classical IoU of the float32 and float16 files on part of the test split."""
    from garment_gen.evaluate import evaluate

    kw = dict(
        root=root,
        split="test",
        max_samples=64,
        num_pairs=0,
        realism="none",
        speed_images=0,
        dists=False,
    )
    a, b = evaluate(str(fp32), **kw)["model"], evaluate(str(fp16), **kw)["model"]
    check = {
        "n": 64,
        "lpips_delta": b["lpips"] - a["lpips"],
        "iou_delta": b["iou_classical"] - a["iou_classical"],
    }
    if abs(check["lpips_delta"]) > FP16_TOLERANCE or abs(check["iou_delta"]) > FP16_TOLERANCE:
        raise GarmentGenError(
            f"float16 changes the model's test metrics too much ({check}); ship float32 "
            "or investigate the weights that do not fit"
        )
    return check


def run(
    p: DictConfig, max_mib: float = FILE_LIMIT / 2**20, data_licence: str = DEFAULT_DATA_LICENCE
) -> dict[str, Any]:
    """Train (resumably), export in float16, evaluate and document experiment ``p``; returns ``metrics.json``."""
    from garment_gen import __version__, sample_dir
    from garment_gen.data.dataset import read_dataset_meta
    from garment_gen.evaluate import _device_name, evaluate, format_table
    from garment_gen.generate import split_grid
    from garment_gen.inference import GarmentGenerator, load_garment_model, save_garment_model
    from garment_gen.networks.stylegan2 import load_generator
    from garment_gen.pipeline import run_pipeline
    from garment_gen.utils.images import save_png
    from garment_gen.utils.run_info import git_commit

    out = Path(str(p.out)).resolve()
    data_root = Path(str(p.data)).resolve() if p.get("data") else sample_dir()
    meta = read_dataset_meta(data_root)
    resolution = int(meta["resolution"])
    sizes = estimate_model_bytes(p, resolution)
    limit = int(max_mib * 2**20)
    log.info(
        "garment model in float16: %s (%s)",
        _mib(sum(sizes.values())),
        ", ".join(f"{k} {_mib(v)}" for k, v in sizes.items()),
    )
    if sum(sizes.values()) >= 0.98 * limit:  # the file adds names and settings
        raise GarmentGenError(
            f"the garment model would be {_mib(sum(sizes.values()))} in float16 "
            f"({', '.join(f'{k} {_mib(v)}' for k, v in sizes.items())}), not below the "
            f"{_mib(limit)} a shipped file may have: choose narrower networks"
        )
    out.mkdir(parents=True, exist_ok=True)
    metrics: dict[str, Any] = {
        "format": FORMAT,
        "name": str(p.name),
        "experiment": OmegaConf.to_container(p, resolve=True),
        "data": {
            "name": data_root.name,
            "resolution": resolution,
            "by_split": meta.get("stats", {}).get("by_split", {}),
            "fingerprint": meta.get("fingerprint"),
            "source": "/".join(Path(str(meta.get("input_dir", "?"))).parts[-2:]),
        },
        "data_licence": data_licence,
        "device_name": _device_name(torch.device("cpu")),
        "torch_version": str(torch.__version__),
        "garment_gen_version": __version__,
        "git_commit": git_commit(Path(__file__).resolve().parent),
        "budget_seconds": float(p.minutes) * 60,
        "estimated_fp16_bytes": sizes,
        "stages": {},
    }
    metrics["experiment"]["data"] = str(p.get("data"))

    def save() -> None:
        write_json_atomic(out / "metrics.json", metrics)

    save()
    # 1. the stages (resumable), without the pipeline's own evaluation: the shipped file is
    # the float16 one, evaluated below.
    p_train = p.copy()
    p_train.evaluate = None
    p_train.grid = False
    summary = run_pipeline(p_train)
    runs = {k: Path(v) for k, v in summary["runs"].items()}
    state = json.loads((Path(str(p.work or p.out)).resolve() / "pipeline_state.json").read_text())
    metrics.update(calls=state["calls"], wall_seconds=state["used_seconds"])
    for stage in STAGES:
        if stage in runs:
            groups = dict(p.stages[stage].get("groups") or {})
            metrics["stages"][stage] = _stage_record(
                runs[stage], state["stages"][stage], groups, stage
            )
    metrics["kimg"] = metrics["stages"].get("pretrain", {}).get("kimg")
    if p.get("generator"):
        metrics["generator"] = (
            f"taken from `{Path(str(p.generator)).name}` (pipeline.generator; not retrained here)"
        )
    else:
        metrics["generator"] = f"pretrained here: {_fmt(metrics['kimg'])} kimg"
    samples = sorted((runs["pretrain"] / "samples").glob("kimg*.png")) if "pretrain" in runs else []
    if samples:
        shutil.copyfile(samples[-1], out / "pretrain_samples.png")
    else:  # a given generator: samples of it, fixed latents
        save_png(
            generator_samples(load_generator(Path(str(p.generator)))), out / "pretrain_samples.png"
        )
    save()

    # 2. the garment model in float16, as it will ship, checked against float32.
    t0 = time.monotonic()
    fp32 = runs["encoders"] / "garment_model.pt"
    model, model_meta = load_garment_model(fp32)
    model_meta["reference"] = {
        k: metrics[k] for k in ("name", "data", "device_name", "torch_version", "kimg")
    }
    model_path = save_garment_model(
        out / "garment_model.pt", model, meta=model_meta, dtype=torch.float16
    )
    metrics["fp16_check"] = _fp16_check(fp32, model_path, data_root)
    metrics["stages"]["export"] = {"wall_seconds": round(time.monotonic() - t0, 1)}
    save()

    # 3. test metrics of the shipped file beside the baselines and the upper bound; grids.
    t0 = time.monotonic()
    kwargs = OmegaConf.to_container(p.evaluate, resolve=True) if p.get("evaluate") else {}
    report = evaluate(model_path, root=data_root, out=out.parent / f"{out.name}_eval", **kwargs)
    log.info("test split:\n%s", format_table(report))
    for src, dst in (
        ("reconstructions.png", "test_reconstructions.png"),
        ("cross.png", "test_cross_pairs.png"),
    ):
        if (Path(report["out"]) / src).is_file():
            shutil.copyfile(Path(report["out"]) / src, out / dst)
    gen = GarmentGenerator.from_checkpoint(model_path)
    save_png(split_grid(gen, data_root, "test"), out / "shape_texture_grid.png")
    keep = (
        "methods",
        "realism_backend",
        "split",
        "n",
        "num_pairs",
        "textures",
        "seed",
        "device_name",
    )
    metrics["test"] = {k: report.get(k) for k in (*report.get("methods", []), *keep)}
    metrics["stages"]["evaluate"] = {"wall_seconds": round(time.monotonic() - t0, 1)}
    save()

    # 4. the card, then every file's size: a file too big to ship fails the run.
    metrics["files"] = file_sizes(out)
    save()
    write_model_card(out)
    metrics["files"] = check_file_sizes(out, limit)
    save()
    return metrics


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """``python -m garment_gen.reference``: compose the experiment, log to a file, run."""
    from garment_gen.cli import user_errors
    from garment_gen.pipeline import compose_pipeline

    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--max-mib",
        type=float,
        default=FILE_LIMIT / 2**20,
        help="every file written to pipeline.out must be smaller (MiB)",
    )
    ap.add_argument(
        "--data-licence", default=DEFAULT_DATA_LICENCE, help="licence of the training data"
    )
    ap.add_argument("--card", metavar="DIR", help="only rewrite DIR/model_card.md")
    ap.add_argument(
        "overrides", nargs="*", help="Hydra overrides: experiment=NAME, pipeline.KEY=VALUE"
    )
    args = ap.parse_args(argv)

    @user_errors
    def _main() -> dict[str, Any]:
        if args.card:
            path = write_model_card(Path(args.card))
            print(f"wrote {path}")
            return json.loads((Path(args.card) / "metrics.json").read_text())
        experiment = "reference"
        rest = []
        for item in args.overrides:
            if item.startswith("experiment="):
                experiment = item.split("=", 1)[1]
            else:
                rest.append(item)
        p = compose_pipeline(experiment, rest)
        if OmegaConf.is_missing(p, "data"):
            raise GarmentGenError(
                "pipeline.data is required: the development set prepared at 64 px, e.g. "
                "python -m garment_gen.reference pipeline.data=ref_data (README, 'Reference model')"
            )
        out = Path(str(p.out))
        out.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(out / "train_reference.log", mode="a")
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
            metrics = run(p, args.max_mib, args.data_licence)
        except BaseException:
            log.exception("the reference run stopped")
            raise
        finally:
            logging.captureWarnings(False)
            root.removeHandler(handler)
            handler.close()
        print(
            "\n".join(
                [
                    f"reference model {p.name!r} done: {metrics['wall_seconds'] / 60:.1f} min of "
                    f"{float(p.minutes):g} in {metrics['calls']} call(s) on {metrics['device_name']}",
                    f"  {out / 'garment_model.pt'} ({_mib(metrics['files']['garment_model.pt'])}, float16)",
                    f"  {out / 'model_card.md'}, metrics.json, grids, train_reference.log",
                    f"  to ship it: copy {out}/ to garment_gen/assets/models/{p.name}/",
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
