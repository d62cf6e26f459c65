"""Throughput of the StyleGAN2 networks, as a fraction of the device's matmul speed.

Measures, at one configuration:

1. the training step: G step (G forward, D on the fakes, backward, Adam) then
   D step (G forward without grad, D on real and fake, backward, Adam), no
   regularisation -- the ``Gmain`` + ``Dmain`` phases of ``PretrainModule``;
2. generator inference (eval, no grad, ``noise_mode='const'``).

FLOPs per image come from ``torch.utils.flop_counter.FlopCounterMode`` (convs
and matmuls only; elementwise work counts zero), split into conv and matmul.
The same run times a large square matmul on the same device and threads, and
prints achieved GFLOP/s divided by the matmul's.

Example (the CPU project target)::

    python bench/bench_stylegan2.py --resolution 64 --batch 8 --threads 2 --steps 5 --warmup 2
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections import defaultdict
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from garment_gen.networks.ops import set_cpu_fast_path
from garment_gen.networks.stylegan2 import Discriminator, Generator
from garment_gen.utils.cpu_malloc import keep_freed_memory


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--resolution", type=int, default=64)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--channel-base", type=int, default=16384)
    p.add_argument("--channel-max", type=int, default=512)
    p.add_argument("--z-dim", type=int, default=512)
    p.add_argument("--w-dim", type=int, default=512)
    p.add_argument("--mapping-layers", type=int, default=8)
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch.set_num_threads (CPU); default: leave as is",
    )
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument(
        "--dtype", default="fp32", choices=["fp32", "bf16"], help="bf16 = autocast to bfloat16"
    )
    p.add_argument("--steps", type=int, default=5, help="timed iterations")
    p.add_argument("--warmup", type=int, default=2, help="untimed iterations first")
    p.add_argument(
        "--compile", action="store_true", help="torch.compile G.synthesis, G.mapping_net and D"
    )
    p.add_argument("--fused-modconv", default="auto", choices=["auto", "on", "off"])
    p.add_argument(
        "--plain-conv",
        action="store_true",
        help="CPU: PyTorch's own conv backward instead of the im2col weight gradient (for comparison)",
    )
    p.add_argument("--skip-train", action="store_true")
    p.add_argument("--skip-infer", action="store_true")
    p.add_argument(
        "--infer-batch", type=int, default=None, help="inference batch (default: --batch)"
    )
    p.add_argument("--matmul-size", type=int, default=None, help="default 4096 on CPU, 8192 on GPU")
    p.add_argument(
        "--profile", action="store_true", help="print a torch.profiler table for one train step"
    )
    p.add_argument(
        "--malloc-tune",
        action="store_true",
        help="CPU/glibc: keep freed memory in the heap (no mmap/trim), so large tensors stop page-faulting",
    )
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    return p.parse_args(argv)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(fn, n: int, warmup: int, device: torch.device) -> list[float]:
    """Seconds per call for ``n`` calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    _sync(device)
    out = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        _sync(device)
        out.append(time.perf_counter() - t)
    return out


def matmul_gflops(size: int, dtype: torch.dtype, device: torch.device, reps: int = 5) -> float:
    """Median GFLOP/s of ``size x size @ size x size``."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    times = time_calls(lambda: torch.mm(a, b), reps, 1, device)
    return 2 * size**3 / statistics.median(times) / 1e9


def time_bracketed(
    fn, n: int, warmup: int, device: torch.device, mm_probe
) -> list[tuple[float, float]]:
    """``(seconds, matmul GFLOP/s)`` per timed call; the matmul speed is the mean of probes
    just before and just after the call, so a shared machine's changing load cancels
    in the ratio."""
    for _ in range(warmup):
        fn()
    _sync(device)
    before = mm_probe()
    out = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        _sync(device)
        dt = time.perf_counter() - t
        after = mm_probe()
        out.append((dt, (before + after) / 2))
        before = after
    return out


def count_flops(fn) -> tuple[int, dict[str, int]]:
    """Total FLOPs of one call of ``fn`` and their split by op (conv vs matmul...).

    Counted with PyTorch's own conv backward (the CPU fast path's chunked
    ``addmm_`` is invisible to the counter): the same FLOPs, the model's nominal count.
    """
    old = set_cpu_fast_path(False)
    try:
        with FlopCounterMode(display=False) as counter:
            fn()
    finally:
        set_cpu_fast_path(old)
    by_op: dict[str, int] = defaultdict(int)
    for op, n in counter.get_flop_counts().get("Global", {}).items():
        by_op[str(op).split(".")[1] if str(op).count(".") >= 1 else str(op)] += n
    return counter.get_total_flops(), dict(by_op)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    malloc_tuned = keep_freed_memory() if args.malloc_tune else False
    set_cpu_fast_path(not args.plain_conv)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False  # compare like with like: true fp32
        torch.backends.cudnn.allow_tf32 = False
    amp_dtype = torch.bfloat16 if args.dtype == "bf16" else None
    fused = {"auto": None, "on": True, "off": False}[args.fused_modconv]
    torch.manual_seed(0)

    G = Generator(
        resolution=args.resolution,
        z_dim=args.z_dim,
        w_dim=args.w_dim,
        mapping_layers=args.mapping_layers,
        channel_base=args.channel_base,
        channel_max=args.channel_max,
    ).to(device)
    D = Discriminator(
        resolution=args.resolution, channel_base=args.channel_base, channel_max=args.channel_max
    ).to(device)
    g_opt = torch.optim.Adam(G.parameters(), lr=0.0025, betas=(0.0, 0.99), eps=1e-8)
    d_opt = torch.optim.Adam(D.parameters(), lr=0.0025, betas=(0.0, 0.99), eps=1e-8)
    G_run, D_run = G, D
    if args.compile:
        G.synthesis = torch.compile(G.synthesis)
        G.mapping_net = torch.compile(G.mapping_net)
        D_run = torch.compile(D)

    batch = args.batch
    real_img = torch.rand(batch, 3, args.resolution, args.resolution, device=device) * 2 - 1

    def autocast():
        return torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None)

    def train_step() -> None:
        G.train()
        # Gmain: D is frozen for this phase, so only input gradients flow through it
        D.requires_grad_(False)
        with autocast():
            fake_img = G_run(
                torch.randn(batch, args.z_dim, device=device),
                update_w_avg=True,
                fused_modconv=fused,
            )
            g_loss = F.softplus(-D_run(fake_img)).float().mean()
        g_opt.zero_grad(set_to_none=True)
        g_loss.backward()
        g_opt.step()
        D.requires_grad_(True)
        # Dmain: fresh fakes without grad, as PretrainModule does
        with autocast():
            with torch.no_grad():
                fake_img = G_run(torch.randn(batch, args.z_dim, device=device), fused_modconv=fused)
            d_loss = (
                F.softplus(D_run(fake_img)).float().mean()
                + F.softplus(-D_run(real_img)).float().mean()
            )
        d_opt.zero_grad(set_to_none=True)
        d_loss.backward()
        d_opt.step()

    infer_batch = args.infer_batch or batch
    z_inf = torch.randn(infer_batch, args.z_dim, device=device)

    def infer() -> None:
        G.eval()
        with torch.no_grad(), autocast():
            G_run(z_inf, noise_mode="const", fused_modconv=fused)

    mm_size = args.matmul_size or (8192 if device.type == "cuda" else 4096)
    mm = {"fp32": matmul_gflops(mm_size, torch.float32, device)}
    if amp_dtype is not None:
        mm["bf16"] = matmul_gflops(mm_size, torch.bfloat16, device)
    ref_key = args.dtype

    results: dict = {
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "malloc_tuned": malloc_tuned,
    }
    mm_dtype = torch.float32 if ref_key == "fp32" else torch.bfloat16
    probe_a = torch.randn(mm_size, mm_size, device=device, dtype=mm_dtype)
    probe_b = torch.randn(mm_size, mm_size, device=device, dtype=mm_dtype)

    def mm_probe() -> float:
        _sync(device)
        t = time.perf_counter()
        torch.mm(probe_a, probe_b)
        _sync(device)
        return 2 * mm_size**3 / (time.perf_counter() - t) / 1e9

    rows = []
    for name, fn, n_img, skip in [
        ("train", train_step, batch, args.skip_train),
        ("infer", infer, infer_batch, args.skip_infer),
    ]:
        if skip:
            continue
        timed = time_bracketed(fn, args.steps, args.warmup, device, mm_probe)
        times = [dt for dt, _ in timed]
        flops, by_op = count_flops(fn)
        t = statistics.median(times)
        gflops = flops / t / 1e9
        # per-iteration ratio against the matmul measured around that iteration
        bracketed = statistics.median(flops / dt / 1e9 / mm_gf for dt, mm_gf in timed)
        rows.append(
            {
                "phase": name,
                "batch": n_img,
                "s_per_iter_median": t,
                "s_per_iter_min": min(times),
                "img_per_s": n_img / t,
                "gflop_per_img": flops / n_img / 1e9,
                "gflop_by_op_per_img": {k: v / n_img / 1e9 for k, v in by_op.items()},
                "gflop_per_s": gflops,
                "ratio_to_matmul": gflops / mm[ref_key],
                "matmul_gflops_bracketing": statistics.median(mm_gf for _, mm_gf in timed),
                "ratio_to_bracketing_matmul": bracketed,
            }
        )
    # matmul again after the model runs: on a shared machine the two readings bracket the load
    mm_after = matmul_gflops(
        mm_size, torch.float32 if ref_key == "fp32" else torch.bfloat16, device
    )
    results["matmul_gflops"] = mm
    results["matmul_gflops_after"] = mm_after
    results["rows"] = rows

    print(
        f"device={results['device']} threads={results['threads']} dtype={args.dtype} res={args.resolution} "
        f"batch={batch} channel_base={args.channel_base} channel_max={args.channel_max} compile={args.compile} "
        f"fused_modconv={args.fused_modconv} malloc_tuned={malloc_tuned}"
    )
    print(f"matmul {mm_size}^2 {ref_key}: {mm[ref_key]:.1f} GFLOP/s before, {mm_after:.1f} after")
    print(
        f"{'phase':<6} {'img/s':>8} {'s/iter':>8} {'GFLOP/img':>10} {'GFLOP/s':>9} {'/matmul':>8} "
        f"{'/bracket':>8}  flops by op (GFLOP/img)"
    )
    for r in rows:
        ops = ", ".join(
            f"{k}={v:.1f}"
            for k, v in sorted(r["gflop_by_op_per_img"].items(), key=lambda kv: -kv[1])
        )
        print(
            f"{r['phase']:<6} {r['img_per_s']:>8.3f} {r['s_per_iter_median']:>8.3f} {r['gflop_per_img']:>10.1f} "
            f"{r['gflop_per_s']:>9.1f} {r['ratio_to_matmul']:>8.3f} {r['ratio_to_bracketing_matmul']:>8.3f}  {ops}"
        )
    print(
        "/matmul: against the matmul timed before the runs; /bracket: median over iterations of the ratio "
        "to the matmul timed right before and after each iteration (robust to a shared machine's load)"
    )

    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        with profile(activities=acts) as prof:
            train_step()
            _sync(device)
        key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
        print(prof.key_averages().table(sort_by=key, row_limit=30))

    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
