"""Equal-CPU-time A/B of pretraining recipes: run the arms, then report curves, table and grids.

    python bench/ab_pretrain.py run bench/ab/projected_vs_stylegan2.yaml --data DATA --out ab/
    python bench/ab_pretrain.py report --out ab/ [--at 10 20 40]

``run`` starts every arm of the spec as ``python -m garment_gen.train`` with one thread
(``OMP_NUM_THREADS=1``), ``nice``, ``data.num_workers=0`` (data loading is in the CPU time) and
the :class:`~garment_gen.callbacks.CpuTimeBudget` callback, which stops the arm after the spec's
``minutes`` of the process's CPU time and probes FD-VGG / KID-VGG of ``n_probe`` ``G_ema``
samples against the validation split every ``probe_every`` CPU-minutes (VGG16: a network the
projected discriminator does not look through). Arms run ``parallel`` at a time (2 on the
project's 2-core machines); CPU time, not wall clock, is what they are held equal on, so the
machine may do other work meanwhile. Calling ``run`` again continues: a finished arm (its
``done.json``) is skipped, an interrupted one resumes from its ``last.ckpt`` with its CPU
minutes counted on (the budget's state is in the checkpoint), a larger ``minutes`` extends
finished arms.

``report`` reads every arm's ``probe/probe.csv`` and writes ``report.md`` (FD-VGG, KID-VGG and
kimg at each probe, kimg per CPU-hour), ``curves.png`` (CPU minutes -> FD-VGG, KID-VGG, kimg)
and ``grid_<min>min.png`` (each arm's probe samples at the same CPU minutes, side by side).

A spec (YAML):

    minutes: 40            # CPU-minutes per arm
    probe_every: 5
    n_probe: 256
    parallel: 2
    common: [stage=pretrain, seed=12345]       # overrides for every arm
    arms:
      stylegan2: [gan=stylegan2]
      projected: [gan=projected, loss.reuse_fakes=true]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import yaml
from PIL import Image, ImageDraw

REPO = Path(__file__).resolve().parents[1]
METRICS = ("fd_vgg", "kid_vgg", "kimg")


# ----------------------------------------------------------------------------- run


def load_spec(path: Path) -> dict:
    spec = yaml.safe_load(Path(path).read_text())
    if not isinstance(spec, dict) or not isinstance(spec.get("arms"), dict) or not spec["arms"]:
        raise SystemExit(f"error: {path}: needs an 'arms' mapping of name -> list of overrides")
    for name, overrides in spec["arms"].items():
        if not isinstance(overrides, list):
            raise SystemExit(f"error: {path}: arms.{name} must be a list of overrides")
    spec.setdefault("minutes", 40)
    spec.setdefault("probe_every", 5)
    spec.setdefault("n_probe", 256)
    spec.setdefault("parallel", 2)
    spec.setdefault("common", ["stage=pretrain"])
    return spec


def arm_command(spec: dict, name: str, data: Path, out: Path) -> list[str]:
    """The ``garment_gen.train`` command line of one arm (resuming when it has a checkpoint)."""
    folder = out / name
    cmd = [
        "nice", "-n", "5", sys.executable, "-m", "garment_gen.train",
        *spec["common"],
        f"data.root={data}",
        "data.num_workers=0",
        "data.persistent_workers=false",
        "trainer.enable_progress_bar=false",
        "+callbacks.cpu_budget._target_=garment_gen.callbacks.CpuTimeBudget",
        f"+callbacks.cpu_budget.minutes={spec['minutes']}",
        f"+callbacks.cpu_budget.probe_every={spec['probe_every']}",
        f"+callbacks.cpu_budget.n_probe={spec['n_probe']}",
        *spec["arms"][name],
        f"hydra.run.dir={folder}",
    ]  # fmt: skip
    last = folder / "checkpoints" / "last.ckpt"
    if last.is_file():
        cmd.append(f"ckpt_path={last}")
    return cmd


def _done(folder: Path, minutes: float) -> bool:
    f = folder / "done.json"
    return f.is_file() and json.loads(f.read_text()).get("minutes", 0) >= minutes


def run(spec_path: Path, data: Path, out: Path, only: list[str] | None) -> None:
    spec = load_spec(spec_path)
    out.mkdir(parents=True, exist_ok=True)
    (out / "spec.yaml").write_text(Path(spec_path).read_text())
    names = [n for n in spec["arms"] if not only or n in only]
    todo = [n for n in names if not _done(out / n, spec["minutes"])]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    running: dict[str, subprocess.Popen] = {}
    while todo or running:
        while todo and len(running) < int(spec["parallel"]):
            name = todo.pop(0)
            (out / name).mkdir(exist_ok=True)
            cmd = arm_command(spec, name, data, out)
            print(f"[{time.strftime('%H:%M:%S')}] start {name}: {' '.join(cmd[3:])}", flush=True)
            log = open(out / f"{name}.log", "a")  # noqa: SIM115 - closed when the arm ends
            running[name] = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=log)
        time.sleep(5)
        for name, proc in list(running.items()):
            if proc.poll() is None:
                continue
            del running[name]
            status = "finished" if proc.returncode == 0 else f"failed (exit {proc.returncode})"
            print(f"[{time.strftime('%H:%M:%S')}] {name} {status}", flush=True)
            if proc.returncode == 0:
                (out / name / "done.json").write_text(json.dumps({"minutes": spec["minutes"]}))


# ----------------------------------------------------------------------------- report


def read_probes(folder: Path) -> list[dict[str, float]]:
    table = folder / "probe" / "probe.csv"
    if not table.is_file():
        return []
    with open(table, newline="") as f:
        rows = [{k: float(v) for k, v in r.items()} for r in csv.DictReader(f)]
    return sorted(rows, key=lambda r: r["cpu_min"])


def _nearest(rows: list[dict[str, float]], minute: float) -> dict[str, float] | None:
    near = [r for r in rows if abs(r["cpu_min"] - minute) <= 0.6]
    return min(near, key=lambda r: abs(r["cpu_min"] - minute)) if near else None


def report(out: Path, at: list[float] | None) -> Path:
    arms = sorted(p for p in out.iterdir() if (p / "probe" / "probe.csv").is_file())
    if not arms:
        raise SystemExit(f"error: {out}: no arm has probe/probe.csv yet")
    probes = {a.name: read_probes(a) for a in arms}
    minutes = at or sorted({round(r["cpu_min"]) for rows in probes.values() for r in rows})
    lines = [f"# Pretraining A/B at equal CPU minutes ({out})", ""]
    for metric in METRICS:
        lines += [f"## {metric}", "", "| arm | " + " | ".join(f"{m:g}" for m in minutes) + " |"]
        lines.append("|---|" + "---|" * len(minutes))
        for name, rows in probes.items():
            cells = []
            for m in minutes:
                r = _nearest(rows, m)
                cells.append("-" if r is None else f"{r[metric]:.4g}")
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += ["## kimg per CPU-hour (last probe)", ""]
    for name, rows in probes.items():
        last = rows[-1]
        rate = 60 * last["kimg"] / max(last["cpu_min"], 1e-9)
        best = min(rows, key=lambda r: r["kid_vgg"])
        lines.append(
            f"- {name}: {rate:.1f} kimg/CPU-h ({last['kimg']:.2f} kimg in {last['cpu_min']:.1f} "
            f"CPU-min); best KID-VGG {best['kid_vgg']:.4f} (FD-VGG {best['fd_vgg']:.1f}) at "
            f"{best['cpu_min']:.1f} CPU-min"
        )
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    _curves(probes, out / "curves.png")
    for m in minutes:
        _grid(out, probes, m)
    print(path.read_text())
    return path


def _curves(probes: dict[str, list[dict[str, float]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for ax, metric in zip(axes, METRICS, strict=True):
        for name, rows in probes.items():
            ax.plot([r["cpu_min"] for r in rows], [r[metric] for r in rows], "o-", label=name)
        ax.set_xlabel("CPU minutes (1 thread)")
        ax.set_title(metric.replace("_", "-").upper() if metric != "kimg" else "kimg")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _grid(out: Path, probes: dict[str, list[dict[str, float]]], minute: float) -> Path | None:
    """The probe grids of every arm at ``minute`` CPU minutes, side by side with their names."""
    tiles = []
    for name, rows in probes.items():
        r = _nearest(rows, minute)
        if r is None:
            continue
        probe = out / name / "probe"
        # the probe's own name (three decimals), or the one-decimal name of earlier runs
        pngs = [
            probe / f"cpu{r['cpu_min']:08.3f}min.png",
            probe / f"cpu{r['cpu_min']:06.1f}min.png",
        ]
        png = next((p for p in pngs if p.is_file()), None)
        if png is None:
            continue
        img = Image.open(png).convert("RGB")
        canvas = Image.new("RGB", (img.width, img.height + 18), "white")
        canvas.paste(img, (0, 18))
        ImageDraw.Draw(canvas).text(
            (4, 3), f"{name} {r['cpu_min']:.0f} min {r['kimg']:.1f} kimg", fill="black"
        )
        tiles.append(np.asarray(canvas))
    if not tiles:
        return None
    gap = np.full((tiles[0].shape[0], 8, 3), 255, np.uint8)
    row = np.concatenate([t for tile in tiles for t in (tile, gap)][:-1], axis=1)
    path = out / f"grid_{minute:g}min.png"
    Image.fromarray(row).save(path)
    return path


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run (or continue) the arms of a spec")
    r.add_argument("spec", type=Path)
    r.add_argument("--data", type=Path, required=True, help="prepared dataset (64 px)")
    r.add_argument("--out", type=Path, required=True)
    r.add_argument("--arms", nargs="*", default=None, help="only these arms")
    p = sub.add_parser("report", help="table, curves and grids of the arms in --out")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--at", nargs="*", type=float, default=None, help="CPU minutes to compare")
    args = ap.parse_args(argv)
    if args.cmd == "run":
        if not (args.data / "dataset.json").is_file():
            raise SystemExit(f"error: --data {args.data}: not a prepared dataset (no dataset.json)")
        run(args.spec, args.data.resolve(), args.out.resolve(), args.arms)
    else:
        report(args.out.resolve(), args.at)


if __name__ == "__main__":
    main()
