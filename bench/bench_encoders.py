"""Encoders-stage training step and batched generation: images/s, FLOPs and share of the matmul peak.

    python bench/bench_encoders.py [--resolution 64] [--batch 16] [--device cpu|cuda] [--dtype fp32|bf16]
        [--channel-base 4096 --channel-max 128 --w-dim 256]   # the generator (as conf/model/stylegan2_small)
        [--enc-base 32 --enc-max 256]                          # the encoders (as conf/model/encoders.yaml)
        [--w-lpips 0.8] [--threads N] [--steps 5] [--warmup 2] [--json out.json]

The train step is what ``stage=encoders`` runs per batch: encoders forward, frozen
generator synthesis, L2 + LPIPS (alex) loss, backward into the encoders, Adam step.
Generation is ``GarmentGenerator.generate_tensors`` (encoders + synthesis, no grad).
FLOPs are counted with ``torch.utils.flop_counter``; the achieved GFLOP/s is compared
with a large matmul timed in the same run on the same device.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path

import torch

_spec = importlib.util.spec_from_file_location(
    "bench_stylegan2", Path(__file__).with_name("bench_stylegan2.py")
)
_sg = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_sg)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--resolution", type=int, default=64)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--gen-batch", type=int, default=64)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    ap.add_argument("--channel-base", type=int, default=4096)
    ap.add_argument("--channel-max", type=int, default=128)
    ap.add_argument("--w-dim", type=int, default=256)
    ap.add_argument("--enc-base", type=int, default=32)
    ap.add_argument("--enc-max", type=int, default=256)
    ap.add_argument("--w-lpips", type=float, default=0.8)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    from garment_gen.losses.reconstruction import ReconstructionLoss
    from garment_gen.networks.encoders import GarmentEncoders
    from garment_gen.networks.stylegan2 import Generator

    g = Generator(
        args.resolution,
        z_dim=args.w_dim,
        w_dim=args.w_dim,
        mapping_layers=2,
        channel_base=args.channel_base,
        channel_max=args.channel_max,
    ).to(device)
    g.requires_grad_(False).eval()
    enc = GarmentEncoders.from_generator(
        g, base_channels=args.enc_base, max_channels=args.enc_max
    ).to(device)
    loss_fn = ReconstructionLoss(w_l2=1.0, w_lpips=args.w_lpips).to(device)
    opt = torch.optim.Adam(enc.parameters(), lr=1e-4)
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.dtype == "bf16")

    def batch(n):
        mask = (torch.rand(n, 1, args.resolution, args.resolution, device=device) > 0.5).float()
        return mask, torch.rand(n, 3, args.resolution, args.resolution, device=device) * 2 - 1

    mask, tex = batch(args.batch)
    real = torch.rand_like(tex) * 2 - 1

    def train_step():
        with amp:
            fake = g.synthesis(enc(mask, tex), noise_mode="const")
            total, _ = loss_fn(fake.float(), real, mask)
        opt.zero_grad(set_to_none=True)
        total.backward()
        opt.step()

    gmask, gtex = batch(args.gen_batch)

    @torch.no_grad()
    def gen_step():
        with amp:
            g.synthesis(enc(gmask, gtex), noise_mode="const")

    rows = {}
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    peak = _sg.matmul_gflops(8192 if device.type == "cuda" else 4096, dtype, device)
    for name, fn, n in (
        ("encoders_train", train_step, args.batch),
        ("generate", gen_step, args.gen_batch),
    ):
        flops, _ = _sg.count_flops(fn)
        times = _sg.time_calls(fn, args.steps, args.warmup, device)
        sec = sorted(times)[len(times) // 2]
        rows[name] = {
            "images_per_s": n / sec,
            "gflop_per_image": flops / n / 1e9,
            "gflop_per_s": flops / sec / 1e9,
            "share_of_matmul": flops / sec / 1e9 / peak,
        }
    print(f"device={device} dtype={args.dtype} res={args.resolution} matmul={peak:.1f} GFLOP/s")
    print(f"{'phase':<16}{'img/s':>10}{'GFLOP/img':>11}{'GFLOP/s':>10}{'/matmul':>9}")
    for name, r in rows.items():
        print(
            f"{name:<16}{r['images_per_s']:>10.2f}{r['gflop_per_image']:>11.2f}{r['gflop_per_s']:>10.1f}{r['share_of_matmul']:>9.2f}"
        )
    out = {
        "device": str(device),
        "dtype": args.dtype,
        "resolution": args.resolution,
        "matmul_gflops": peak,
        **rows,
    }
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
