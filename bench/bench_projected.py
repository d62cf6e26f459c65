"""Throughput of the Projected GAN discriminator beside the small StyleGAN2 discriminator.

Rows, at one image resolution and batch:

* ``D step``: D on the reals and on (detached) fakes, the D loss, backward, Adam. The projected
  D uses the hinge loss; the StyleGAN2 D the logistic loss plus lazy R1 every ``--r1-every``
  steps (``conf/loss/gan.yaml``), its cost spread over the steps. img/s counts the reals.
* ``G side``: D on fakes that require grad (D's parameters frozen, as in the G phase), the
  G loss, backward to the image: what a G step pays for D on top of G itself.
* ``DiffAugment``: the ``color,translation,cutout`` policy on reals and fakes (D step) or on
  the fakes (G side): its cost per step, to add to the projected rows.

All cases run round-robin, one call each per round, so a shared machine's changing load hits
them alike; each row gives the best round (least disturbed) and the median. On a loaded
machine, ``--threads 1 --clock cpu`` (the CPU time each call got) compares configurations
more reliably than wall time at 2 threads, whose parallel regions stall whenever one of the
two threads is descheduled.

The projected D runs at each ``--feature-sizes`` and each ``--widths`` (per-scale D
``channel_base:channel_max``; 4096:512 is the paper's). FLOPs per image come from
``torch.utils.flop_counter`` (convs and matmuls). Fakes are random images: D's cost does not
depend on where its input comes from.

Example (the CPU project target)::

    python bench/bench_projected.py --threads 2 --batch 16 --resolution 64
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import time
from pathlib import Path

import torch

from garment_gen.losses.adversarial import (
    d_hinge_loss,
    d_logistic_loss,
    g_hinge_loss,
    g_nonsaturating_loss,
    r1_penalty,
)
from garment_gen.losses.diffaugment import diff_augment
from garment_gen.networks.projected import ProjectedDiscriminator
from garment_gen.networks.stylegan2 import Discriminator

_spec = importlib.util.spec_from_file_location(
    "bench_stylegan2", Path(__file__).with_name("bench_stylegan2.py")
)
_sg = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_sg)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--resolution", type=int, default=64)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (CPU)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--feature-sizes", type=int, nargs="+", default=[128, 96, 64])
    p.add_argument(
        "--widths",
        nargs="+",
        default=["4096:512", "2048:256", "1024:128"],
        help="per-scale D channel_base:channel_max pairs",
    )
    p.add_argument("--proj-channels", type=int, default=64)
    p.add_argument("--sg2-channel-base", type=int, default=4096, help="conf/model/stylegan2_small")
    p.add_argument("--sg2-channel-max", type=int, default=128)
    p.add_argument("--r1-gamma", type=float, default=0.1)
    p.add_argument("--r1-every", type=int, default=16)
    p.add_argument("--steps", type=int, default=5, help="timed rounds (every case once each)")
    p.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    p.add_argument(
        "--clock",
        default="wall",
        choices=["wall", "cpu"],
        help="cpu: process CPU time (use with --threads 1 on a shared machine)",
    )
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    return p.parse_args(argv)


def _flops_per_img(fn, batch: int) -> float:
    total, _ = _sg.count_flops(fn)
    return total / batch / 1e9


def make_case(
    name: str,
    D: torch.nn.Module,
    d_loss_fn,
    g_loss_fn,
    args: argparse.Namespace,
    device: torch.device,
    r1: bool = False,
) -> dict:
    """The timed closures for discriminator ``D``: ``d_step``, ``g_side`` and (StyleGAN2) ``r1``."""
    b, r = args.batch, args.resolution
    real = torch.rand(b, 3, r, r, device=device) * 2 - 1
    fake = torch.rand(b, 3, r, r, device=device) * 2 - 1
    opt = torch.optim.Adam(D.parameters(), lr=2e-4, betas=(0.0, 0.99))
    D.train()

    def d_step() -> None:
        loss = d_loss_fn(D(real), D(fake))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def r1_step() -> None:
        real_req = real.detach().requires_grad_(True)
        penalty = r1_penalty(D(real_req), real_req) * (args.r1_gamma / 2) * args.r1_every
        opt.zero_grad(set_to_none=True)
        penalty.backward()
        opt.step()

    def g_side() -> None:
        D.requires_grad_(False)  # the G phase: only input gradients flow through D
        fake_req = fake.detach().requires_grad_(True)
        g_loss_fn(D(fake_req)).backward()
        D.requires_grad_(True)

    fns = {"d_step": d_step, "g_side": g_side}
    if r1:
        fns["r1"] = r1_step
    return {"name": name, "fns": fns, "params_m": sum(p.numel() for p in D.parameters()) / 1e6}


def run_interleaved(cases: list[dict], args: argparse.Namespace, device: torch.device) -> None:
    """Time every case's closures round-robin, ``args.steps`` rounds after ``args.warmup``.

    On a shared machine the load changes from second to second; interleaving exposes every
    configuration to the same load, and the minimum over rounds is the least disturbed run.
    """
    for case in cases:
        case["times"] = {k: [] for k in case["fns"]}
    for i in range(args.warmup + args.steps):
        for case in cases:
            for key, fn in case["fns"].items():
                t = _clock(args.clock)
                fn()
                _sg._sync(device)
                if i >= args.warmup:
                    case["times"][key].append(_clock(args.clock) - t)


def _clock(kind: str) -> float:
    """Wall time, or this process's CPU time (all threads): with one thread, the CPU time a
    call got is nearly independent of other processes' load."""
    return time.perf_counter() if kind == "wall" else time.process_time()


def rows_of(case: dict, args: argparse.Namespace) -> list[dict]:
    b, t = args.batch, case["times"]
    best = {k: min(v) for k, v in t.items()}
    median = {k: statistics.median(v) for k, v in t.items()}
    d_best, d_median, note = best["d_step"], median["d_step"], ""
    if "r1" in t:  # lazy R1: one R1 step every r1_every D steps
        d_best += best["r1"] / args.r1_every
        d_median += median["r1"] / args.r1_every
        note = f"+ R1 step ({median['r1']:.2f} s) / {args.r1_every}"
    out = []
    for row, key, s_best, s_median in [
        ("D step", "d_step", d_best, d_median),
        ("G side", "g_side", best["g_side"], median["g_side"]),
    ]:
        out.append(
            {
                "d": case["name"],
                "row": row,
                "img_per_s_best": b / s_best,
                "img_per_s_median": b / s_median,
                "gflop_per_img": _flops_per_img(case["fns"][key], b),
                "params_m": case["params_m"],
                "note": note if key == "d_step" else "",
            }
        )
    return out


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.device == "cpu" and args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)

    sg2 = Discriminator(
        args.resolution, channel_base=args.sg2_channel_base, channel_max=args.sg2_channel_max
    ).to(device)
    sg2_name = f"StyleGAN2 D {args.sg2_channel_base}/{args.sg2_channel_max}"
    cases = [make_case(sg2_name, sg2, d_logistic_loss, g_nonsaturating_loss, args, device, True)]
    for width in args.widths:
        base, cmax = (int(v) for v in width.split(":"))
        for fs in args.feature_sizes:
            D = ProjectedDiscriminator(
                args.resolution,
                feature_size=fs,
                proj_channels=args.proj_channels,
                channel_base=base,
                channel_max=cmax,
            ).to(device)
            name = f"projected fs={fs} D {base}/{cmax}"
            cases.append(make_case(name, D, d_hinge_loss, g_hinge_loss, args, device))
    imgs = torch.rand(2 * args.batch, 3, args.resolution, args.resolution, device=device) * 2 - 1
    cases.append(
        {
            "name": "DiffAugment (reals + fakes)",
            "fns": {
                "d_step": lambda: diff_augment(imgs),
                "g_side": lambda: diff_augment(imgs[: args.batch]),
            },
            "params_m": 0.0,
        }
    )
    mm_before = _sg.matmul_gflops(2048, torch.float32, device)
    run_interleaved(cases, args, device)
    mm_after = _sg.matmul_gflops(2048, torch.float32, device)
    rows = [row for case in cases for row in rows_of(case, args)]

    print(
        f"device={device} threads={torch.get_num_threads()} res={args.resolution} batch={args.batch} "
        f"proj_channels={args.proj_channels} rounds={args.steps} clock={args.clock} "
        f"matmul 2048^2: {mm_before:.1f} GFLOP/s before, {mm_after:.1f} after"
    )
    print(
        f"{'discriminator':<34} {'row':<7} {'img/s best':>10} {'median':>7} {'GFLOP/img':>9} "
        f"{'params':>7}"
    )
    for r in rows:
        print(
            f"{r['d']:<34} {r['row']:<7} {r['img_per_s_best']:>10.1f} {r['img_per_s_median']:>7.1f} "
            f"{r['gflop_per_img']:>9.2f} {r['params_m']:>6.2f}M  {r['note']}"
        )
    print(
        "img/s counts the real images of a D step (the batch); DiffAugment rows: its cost per step"
    )
    results = {
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "matmul_gflops": [mm_before, mm_after],
        "rows": rows,
    }
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
