"""All per-stage benchmarks behind one command: a table and a JSON file.

    python bench/run_all.py [--device cpu|cuda] [--dtype fp32|bf16] [--resolution 64] [--quick] [--json bench.json]

Rows: data loading (triples/s), pretrain train step and G inference (StyleGAN2, the
stage's config at this resolution), encoders train step and batched generation.
Each GPU/CPU row reports images/s, GFLOP per image, achieved GFLOP/s and the share of
a large matmul timed in the same run (the machine's practical peak).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path

HERE = Path(__file__).parent


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, HERE / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    ap.add_argument("--resolution", type=int, default=64)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument(
        "--channel-base", type=int, default=4096, help="16384 = the standard 256 px config"
    )
    ap.add_argument("--channel-max", type=int, default=128)
    ap.add_argument("--w-dim", type=int, default=256)
    ap.add_argument(
        "--data-root",
        default=None,
        help="prepared dataset for the data row (default: bundled sample)",
    )
    ap.add_argument("--quick", action="store_true", help="fewer timed steps")
    ap.add_argument("--json", default="bench_results.json")
    args = ap.parse_args(argv)
    steps, warmup = ("2", "1") if args.quick else ("5", "2")
    rows: list[dict] = []

    data = _load("bench_data")
    d = data.measure(args.data_root, None, 2, 32, 10 if args.quick else 30)
    rows.append({"row": f"data loading {d['resolution']} px", "img_per_s": d["triples_per_s"]})

    # Arguments both network benchmarks share: one generator config, one device and precision.
    shared = ["--device", args.device, "--dtype", args.dtype, "--resolution", str(args.resolution),
              "--batch", str(args.batch), "--channel-base", str(args.channel_base),
              "--channel-max", str(args.channel_max), "--w-dim", str(args.w_dim), "--steps", steps,
              "--warmup", warmup]  # fmt: skip
    sg = _load("bench_stylegan2").main([*shared, "--z-dim", str(args.w_dim)])
    for r in sg["rows"]:
        rows.append(
            {
                "row": f"pretrain {r['phase']}",
                "img_per_s": r["img_per_s"],
                "gflop_per_img": r["gflop_per_img"],
                "gflop_per_s": r["gflop_per_s"],
                "share_of_matmul": r["ratio_to_matmul"],
            }
        )
    enc = _load("bench_encoders").main(shared)
    for name in ("encoders_train", "generate"):
        r = enc[name]
        rows.append(
            {
                "row": name.replace("_", " "),
                "img_per_s": r["images_per_s"],
                "gflop_per_img": r["gflop_per_image"],
                "gflop_per_s": r["gflop_per_s"],
                "share_of_matmul": r["share_of_matmul"],
            }
        )

    print(
        f"\ndevice={args.device} dtype={args.dtype} resolution={args.resolution} batch={args.batch} "
        f"matmul={enc['matmul_gflops']:.1f} GFLOP/s"
    )
    print(f"{'benchmark':<22}{'img/s':>10}{'GFLOP/img':>11}{'TFLOP/s':>9}{'share of peak':>15}")
    for r in rows:
        g = r.get("gflop_per_img")
        gflop = f"{g:.2f}" if g else "-"
        tflops = f"{r['gflop_per_s'] / 1000:.3f}" if g else "-"
        share = f"{r['share_of_matmul']:.2f}" if g else "-"
        print(f"{r['row']:<22}{r['img_per_s']:>10.1f}{gflop:>11}{tflops:>9}{share:>15}")
    Path(args.json).write_text(json.dumps({"args": vars(args), "rows": rows}, indent=2) + "\n")
    print(f"wrote {args.json}")
    return rows


if __name__ == "__main__":
    main()
