"""``make demo``: the whole method on the bundled sample, on CPU, in about ten minutes.

    python -m garment_gen.demo [--out outputs/demo] [--minutes 8]

1. checks the bundled prepared sample (64 px, CC0 photos);
2. pretrains a small StyleGAN2 (time-boxed);
3. trains the segmenter (time-boxed);
4. fits the shape and texture encoders on the frozen generator, with the shape loss;
5. generates a shape x texture grid from the sample's test garments and evaluates
   the model on the test split next to the paste baseline.

A short CPU run gives rough, blurry garments: it shows the pipeline works end to
end. Train on a GPU for real results (README, "Training properly").
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict

from garment_gen import conf_dir, sample_dir
from garment_gen.data.dataset import read_dataset_meta, read_manifest

log = logging.getLogger("garment_gen.demo")


def _hms(seconds: float) -> str:
    seconds = max(1, int(seconds))
    return f"00:{seconds // 3600:02d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def run_stage(stage: str, overrides: list[str], log_dir: Path, seconds: float) -> Path:
    """Compose and run one training stage like the CLI would; returns its run folder."""
    from garment_gen.train import train

    run_dir = log_dir / stage / "runs" / time.strftime("%Y-%m-%d_%H-%M-%S")
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        cfg = compose(
            "config",
            overrides=[
                f"stage={stage}",
                f"paths.log_dir={log_dir}",
                f"trainer.max_time={_hms(seconds)}",
                *overrides,
            ],
            return_hydra_config=True,
        )
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(run_dir)
        cfg.hydra.job.num = 0
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    t0 = time.time()
    log.info("== stage %s (time box %.0f s)", stage, seconds)
    metrics = train(cfg)
    log.info(
        "== stage %s done in %.0f s: %s",
        stage,
        time.time() - t0,
        ", ".join(f"{k}={v:.4g}" for k, v in metrics.items() if k.startswith("val/")),
    )
    GlobalHydra.instance().clear()
    return run_dir


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
    from garment_gen.generate import generate_combinations, labelled_grid
    from garment_gen.inference import GarmentGenerator
    from garment_gen.utils.images import save_png

    rows = read_manifest(root, "test")
    shapes = [root / "masks" / f"{r['id']}.png" for r in rows[0:32:8]]
    textures = [root / "images" / f"{r['id']}.png" for r in rows[3:32:6]]
    gen = GarmentGenerator.from_checkpoint(model)
    masks, texs, imgs = generate_combinations(gen, shapes, textures, progress=False)
    grid_path = save_png(
        labelled_grid(
            masks,
            texs,
            imgs,
            [r["label"] for r in rows[0:32:8]],
            [r["label"] for r in rows[3:32:6]],
        ),
        out / "grid.png",
    )
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
        for k in ("lpips", "shape_iou_classical", "psnr")
        if k in res.get("model", {})
    }
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
            + [
                "  Note: a few minutes on a CPU give rough garments; see README 'Training properly' for GPU training."
            ]
        )
    )
    return summary


if __name__ == "__main__":
    main()
