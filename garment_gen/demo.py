"""``make demo``: the whole method on the bundled sample, on CPU, in about ten minutes.

    python -m garment_gen.demo [--out outputs/demo] [--minutes 6.5] [--workers 2] [HYDRA_OVERRIDE ...]

Runs ``conf/experiment/demo.yaml`` through :mod:`garment_gen.pipeline` (pretrain, segmenter,
encoders in their time boxes, then the shape x texture grid of the sample's test garments and
the evaluation beside the baselines), then draws the same grid with the model shipped in the
package (``reference_grid.png``) when there is one. Extra arguments are Hydra overrides of the
experiment, e.g. ``pipeline.stages.encoders.set.loss.w_lpips=1.0``.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from garment_gen import sample_dir
from garment_gen.data.dataset import read_dataset_meta
from garment_gen.pipeline import compose_pipeline, run_pipeline
from garment_gen.utils.atomic import write_json_atomic

log = logging.getLogger("garment_gen.demo")


def reference_grid(root: Path, path: Path, name: str = "reference") -> str | None:
    """Write the shape x texture grid of ``root``'s test garments drawn by the shipped model ``name``.

    Returns the grid's path, or None (after one line saying so) when no such model is shipped.
    """
    from garment_gen.generate import split_grid
    from garment_gen.inference import GarmentGenerator, available_pretrained, pretrained_path
    from garment_gen.utils.images import save_png

    if name not in available_pretrained():
        print(
            f"no shipped reference model ({pretrained_path(name)} is absent): skipping its grid; "
            "python -m garment_gen.reference trains one"
        )
        return None
    gen = GarmentGenerator.from_pretrained(name)
    grid_path = save_png(split_grid(gen, root, "test"), path)
    log.info("reference model %r: grid of the test garments in %s", name, grid_path)
    return str(grid_path)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--out", default="outputs/demo", help="where every run folder and the grids go")
    ap.add_argument(
        "--minutes", type=float, default=None, help="training budget (default: the experiment's)"
    )
    ap.add_argument("--workers", type=int, default=None, help="data loader workers")
    ap.add_argument("overrides", nargs="*", help="Hydra overrides of conf/experiment/demo.yaml")
    args = ap.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="[%(asctime)s][%(name)s] %(message)s", datefmt="%H:%M:%S"
    )
    t0 = time.time()
    out = Path(args.out).resolve()
    overrides = [f"pipeline.out={out}", *args.overrides]
    if args.minutes is not None:
        overrides.append(f"pipeline.minutes={args.minutes}")
    p = compose_pipeline("demo", overrides)
    if args.workers is not None:
        p.common = [c for c in p.common if not c.startswith("data.num_workers=")] + [
            f"data.num_workers={args.workers}"
        ]
    root = sample_dir()
    meta = read_dataset_meta(root)
    log.info(
        "bundled sample: %s (%d px, %s)",
        root,
        meta["resolution"],
        ", ".join(f"{k}={v}" for k, v in meta["stats"]["by_split"].items()),
    )
    summary = run_pipeline(p)
    summary["reference_grid"] = reference_grid(root, out / "reference_grid.png")
    summary["minutes"] = round((time.time() - t0) / 60, 1)
    write_json_atomic(out / "demo_summary.json", summary)
    lines = [
        "",
        f"demo finished in {summary['minutes']} min",
        f"  garment model : {summary.get('model')}",
        f"  shape x texture grid : {summary.get('grid')}",
        *(f"  {stage} run : {path}" for stage, path in summary["runs"].items()),
    ]
    if "metrics" in summary:
        lines.append(f"  test metrics : {summary['metrics']}")
    if summary["reference_grid"]:
        lines.append(f"  reference model's grid : {summary['reference_grid']}")
    print("\n".join(lines))
    return summary


if __name__ == "__main__":
    main()
