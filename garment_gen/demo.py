"""``make demo``: the whole method on the bundled sample, on CPU, in about ten minutes.

    python -m garment_gen.demo [--out outputs/demo] [--minutes 8]

1. checks the bundled prepared sample (64 px, CC0 photos);
2. pretrains a small StyleGAN2 (time-boxed);
3. trains the segmenter (time-boxed);
4. fits the shape and texture encoders on the frozen generator, with the shape loss;
5. generates a shape x texture grid from the sample's test garments and evaluates
   the model on the test split next to the paste baseline;
6. when the package ships a reference model (``GarmentGenerator.from_pretrained``), draws
   the same grid with it (``reference_grid.png``) for comparison.

A short CPU run gives rough, blurry garments: it shows the pipeline works end to
end. Train on a GPU for real results (README, "Training properly").
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

from garment_gen import sample_dir
from garment_gen.data.dataset import read_dataset_meta
from garment_gen.timebox import run_stage

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
            "scripts/train_reference.sh trains one on a GPU"
        )
        return None
    gen = GarmentGenerator.from_pretrained(name)
    grid_path = save_png(split_grid(gen, root, "test"), path)
    log.info(
        "reference model %r (%s): grid of the test garments in %s",
        name,
        gen.meta.get("reference", {}).get("device_name", "?"),
        grid_path,
    )
    return str(grid_path)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--out", default="outputs/demo", help="where every run folder and the final grid go"
    )
    ap.add_argument(
        "--minutes", type=float, default=6.5, help="total training time box (split over the stages)"
    )
    ap.add_argument("--workers", type=int, default=2, help="data loader workers")
    args = ap.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="[%(asctime)s][%(name)s] %(message)s", datefmt="%H:%M:%S"
    )
    t0 = time.time()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    budget = args.minutes * 60

    # 1. data: the bundled sample is already prepared by garment_gen.prepare.
    root = sample_dir()
    meta = read_dataset_meta(root)
    log.info(
        "bundled sample: %s (%d px, %s)",
        root,
        meta["resolution"],
        ", ".join(f"{k}={v}" for k, v in meta["stats"]["by_split"].items()),
    )

    common = [
        f"data.num_workers={args.workers}",
        "trainer.enable_progress_bar=false",
        "trainer.enable_model_summary=false",
    ]
    # 2. pretrain
    pre = run_stage(
        "pretrain",
        common
        + [
            "data.batch_size=16",
            "model.sample_every_n_batches=100",
            "trainer.limit_val_batches=0",
        ],
        out,
        budget * 0.5,
    )
    # 3. segmenter
    seg = run_stage(
        "segmenter",
        common + ["data.batch_size=16", "trainer.limit_val_batches=2"],
        out,
        budget * 0.15,
    )
    # 4. encoders on the frozen generator, with the shape loss
    enc = run_stage(
        "encoders",
        common
        + [
            f"model.generator={pre / 'generator.pt'}",
            f"loss.segmenter={seg / 'segmenter.pt'}",
            "loss.w_shape=0.1",
            "data.batch_size=16",
            "trainer.limit_val_batches=2",
            "trainer.val_check_interval=50",
            "trainer.check_val_every_n_epoch=null",
        ],
        out,
        budget * 0.35,
    )
    model = enc / "garment_model.pt"

    # 5. generate a grid from the test split's garments, then evaluate.
    from garment_gen.generate import split_grid
    from garment_gen.inference import GarmentGenerator
    from garment_gen.utils.images import save_png

    gen = GarmentGenerator.from_checkpoint(model)
    grid_path = save_png(split_grid(gen, root, "test"), out / "grid.png")
    summary = {
        "model": str(model),
        "grid": str(grid_path),
        "generator": str(pre / "generator.pt"),
        "segmenter": str(seg / "segmenter.pt"),
    }
    from garment_gen.evaluate import evaluate, format_table

    res = evaluate(str(model), root=str(root), split="test", out=str(out / "eval_test"))
    print(format_table(res))
    summary["metrics"] = str(out / "eval_test" / "metrics.json")
    summary["metrics_summary"] = {
        k: res["model"].get(k)
        for k in ("lpips", "iou_classical", "psnr")
        if k in res.get("model", {})
    }
    # 6. the same grid from the reference model shipped with the package, when there is one.
    summary["reference_grid"] = reference_grid(root, out / "reference_grid.png")
    summary["minutes"] = round((time.time() - t0) / 60, 1)
    (out / "demo_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(
        "\n".join(
            [
                "",
                f"demo finished in {summary['minutes']} min",
                f"  garment model : {model}",
                f"  shape x texture grid : {grid_path}",
                f"  generator (stage pretrain) : {summary['generator']}",
                f"  segmenter : {summary['segmenter']}",
            ]
            + ([f"  test metrics : {summary['metrics']}"] if "metrics" in summary else [])
            + (
                [f"  reference model's grid : {summary['reference_grid']}"]
                if summary["reference_grid"]
                else []
            )
            + [
                "  Note: a few minutes on a CPU give rough garments; see README 'Training properly' for GPU training."
            ]
        )
    )
    return summary


if __name__ == "__main__":
    main()
