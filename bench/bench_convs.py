"""Single 3x3 convs of the StyleGAN2 networks, per pass, as a fraction of the matmul speed.

For each layer shape it times, channels-last, batch ``--batch``:

* the forward conv (oneDNN);
* the input gradient (``aten.convolution_backward``, input only);
* the weight gradient by oneDNN, and by :mod:`garment_gen.networks.ops` (im2col matmul);
* the three passes by ``ops``' Winograd F(2x2, 3x3) (what the CPU training path runs for
  stride-1 3x3 convs on maps of at least ``ops.WINOGRAD_MIN_PIXELS`` pixels).

FLOPs are the direct conv's (``2 * B * H * W * 9 * C_in * C_out``) for every column, as
``torch.utils.flop_counter`` counts them, so Winograd's columns are *effective* rates: it
does 2.25x fewer multiplies, and can beat the matmul.

This is the ceiling behind ``bench_stylegan2.py``'s train-step figure: the step cannot
beat its kernels. Example (CPU, shielded from other processes)::

    chrt -f 50 python bench/bench_convs.py --threads 2
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from garment_gen.networks import ops

SHAPES = [
    (512, 512, 8),
    (512, 512, 16),
    (512, 512, 32),
    (256, 256, 64),
    (512, 256, 64),
    (128, 128, 32),
    (128, 128, 64),
]


def _time(fn, reps: int) -> float:
    fn()
    fn()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--malloc-tune", action="store_true", help="see bench_stylegan2.py")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.malloc_tune:
        from garment_gen.utils.cpu_malloc import keep_freed_memory

        keep_freed_memory()
    a, b = torch.randn(4096, 4096), torch.randn(4096, 4096)
    mm = 2 * 4096**3 / _time(lambda: torch.mm(a, b), args.reps) / 1e9
    print(
        f"threads={torch.get_num_threads()} batch={args.batch} matmul 4096^2 fp32: {mm:.1f} GFLOP/s"
    )
    print(
        f"{'in->out, px':>16} {'forward':>8} {'grad_x':>8} {'grad_w':>8} {'grad_w ours':>12} "
        f"{'wino fwd':>9} {'wino gx':>8} {'wino gw':>8}"
    )
    rows = []
    cl = torch.channels_last
    for cin, cout, size in SHAPES:
        x = torch.randn(args.batch, cin, size, size).contiguous(memory_format=cl)
        w = torch.randn(cout, cin, 3, 3)
        g = F.conv2d(x, w, padding=1).contiguous(memory_format=cl)
        flops = 2 * args.batch * cout * cin * 9 * size * size

        def bwd(mask, g=g, x=x, w=w):
            return torch.ops.aten.convolution_backward(
                g, x, w, None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1, mask
            )

        x_pad = F.pad(x.permute(0, 2, 3, 1), (0, 0, 1, 1, 1, 1))
        g_nhwc = g.permute(0, 2, 3, 1)
        x_nhwc = x.permute(0, 2, 3, 1)

        def wino_fwd(x_nhwc=x_nhwc, w=w, size=size):
            v = ops._wino_tiles(x_nhwc)
            return ops._wino_conv(v, ops._wino_kernel(w), args.batch, size, size), v

        _, v = wino_fwd()
        u = ops._wino_kernel(w)
        timings = {
            "forward": _time(lambda x=x, w=w: F.conv2d(x, w, padding=1), args.reps),
            "grad_x": _time(lambda: bwd([True, False, False]), args.reps),
            "grad_w": _time(lambda: bwd([False, True, False]), args.reps),
            "grad_w_ours": _time(
                lambda g_nhwc=g_nhwc, x_pad=x_pad: ops._weight_grad(g_nhwc, x_pad, 3, 1), args.reps
            ),
            # as in training: the forward keeps the tiles V and kernel U for the backward
            "wino_forward": _time(wino_fwd, args.reps),
            "wino_grad_x": _time(
                lambda g_nhwc=g_nhwc, u=u, size=size: ops._wino_conv(
                    ops._wino_tiles(g_nhwc), u, args.batch, size, size, flip=True
                ),
                args.reps,
            ),
            "wino_grad_w": _time(
                lambda g_nhwc=g_nhwc, v=v: ops._wino_weight_grad(ops._wino_grad_tiles(g_nhwc), v),
                args.reps,
            ),
        }
        row = {"in": cin, "out": cout, "size": size}
        row.update({k: flops / t / 1e9 / mm for k, t in timings.items()})
        rows.append(row)
        print(
            f"{f'{cin}->{cout}, {size}':>16} {row['forward']:8.2f} {row['grad_x']:8.2f} "
            f"{row['grad_w']:8.2f} {row['grad_w_ours']:12.2f} {row['wino_forward']:9.2f} "
            f"{row['wino_grad_x']:8.2f} {row['wino_grad_w']:8.2f}",
            flush=True,
        )
    if args.json:
        args.json.write_text(json.dumps({"matmul_gflops": mm, "rows": rows}, indent=2))
    return rows


if __name__ == "__main__":
    main()
