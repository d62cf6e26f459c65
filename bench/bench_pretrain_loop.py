"""Images per CPU-second of the *real* pretraining loop, with a per-phase breakdown.

Builds :class:`~garment_gen.modules.pretrain.PretrainModule` from the composed Hydra config
(``stage=pretrain model=stylegan2_small gan=...``) and the real :class:`GarmentDataModule`
(bundled sample, or ``--data DIR``), then runs its real ``training_step`` under a minimal
Lightning ``Trainer`` (no logger, checkpoints, validation or progress bar; samples off):
the phase table, ``toggle_optimizer``, ``manual_backward``, Adam, ``G_ema`` and the logging
all run as in ``python -m garment_gen.train``.

The clock is the process's CPU time (``time.process_time()``: all threads), robust to other
jobs on a shared machine; img/CPU-s = batch / mean CPU seconds per batch after warm-up. The
mean is over ``--batches`` consecutive batches (default 16: one full cycle of the lazy R1 and
path-length intervals, 16 and 4). With ``--threads 2`` the CPU time includes OpenMP's
spin-waits, so it is the cost on the machine, not the wall time.

Per-phase breakdown (CPU seconds per batch; exclusive, so the rows add up to the total):
wrappers around ``G``/``D``/feature net/augmentation forwards, the loss phases, ``G_ema``'s
update and the optimizers' steps; the backward passes are split at tensor hooks on the
feature maps, the discriminator's input and the generator's output (where the gradient
enters each network). ``data`` is the time between batches (loader + Lightning's loop).

    python bench/bench_pretrain_loop.py --gan projected stylegan2 --threads 1 2
    python bench/bench_pretrain_loop.py --gan projected --threads 1 --profile
    python bench/bench_pretrain_loop.py --gan projected --override model.discriminator.feature_size=96
    python bench/bench_pretrain_loop.py --case "stylegan2 gan=stylegan2" \
        --case "recipe gan=projected loss.reuse_fakes=true model.discriminator.pixel_scale=true"

``--case "NAME OVERRIDE ..."`` (repeatable) names a case by its own overrides, instead of one case
per ``--gan`` value. Each case also reports its FLOPs per image (``FlopCounterMode``: the convs and
matmuls of one warm-up batch, forward and backward) and the achieved GFLOP per CPU-second as a
share of one thread's ``--matmul-size`` matmul GFLOP/s measured in the same run (the machine's
practical peak per core).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import os
import statistics
import time
import warnings
from collections import defaultdict
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
import torch

from garment_gen.pipeline import compose
from garment_gen.utils.cpu_malloc import keep_freed_memory

clock = time.process_time


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--gan", nargs="+", default=["projected"], choices=["projected", "stylegan2"])
    p.add_argument("--threads", nargs="+", type=int, default=[1], help="torch.set_num_threads")
    p.add_argument("--interop", type=int, default=None, help="torch.set_num_interop_threads")
    p.add_argument("--model", default="stylegan2_small")
    p.add_argument("--data", default=None, help="prepared dataset (default: bundled sample64)")
    p.add_argument(
        "--workers", type=int, default=0, help="loader workers (0: data in the CPU time)"
    )
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--batches", type=int, default=16, help="timed batches per round and case")
    p.add_argument("--warmup", type=int, default=3, help="untimed batches first (each round)")
    p.add_argument("--rounds", type=int, default=1, help="rounds over the cases (interleaved)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--override", nargs="*", default=[], help="extra Hydra overrides for every case")
    p.add_argument("--no-malloc-tune", action="store_true", help="leave glibc malloc as it is")
    p.add_argument("--profile", action="store_true", help="torch.profiler top ops (self CPU)")
    p.add_argument("--profile-rows", type=int, default=30)
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    p.add_argument(
        "--case",
        action="append",
        default=None,
        metavar="'NAME OVERRIDE ...'",
        help="a named case with its own Hydra overrides (repeatable; replaces --gan)",
    )
    p.add_argument("--matmul-size", type=int, default=2048)
    return p.parse_args(argv)


def parse_cases(args: argparse.Namespace) -> dict[str, list[str]]:
    """Case name -> its overrides: ``--case`` values, else one case per ``--gan``."""
    if not args.case:
        return {gan: [f"gan={gan}"] for gan in args.gan}
    cases: dict[str, list[str]] = {}
    for text in args.case:
        name, *overrides = text.split()
        cases[name] = overrides
    return cases


def matmul_gflops_1thread(size: int, reps: int = 5) -> float:
    """Median GFLOP per CPU-second of one ``size``-square fp32 matmul on one thread (the
    practical peak of one core)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.mm(a, b)
    times = []
    for _ in range(reps):  # CPU time, as the loop's: robust to other jobs on the machine
        t = clock()
        torch.mm(a, b)
        times.append(clock() - t)
    torch.set_num_threads(old)
    return 2 * size**3 / statistics.median(times) / 1e9


# ----------------------------------------------------------------------------- CPU-time ledger


class Ledger:
    """Exclusive CPU time per label: nested regions subtract from their parent."""

    def __init__(self) -> None:
        self.totals: dict[str, float] = defaultdict(float)
        self._stack: list[list[Any]] = []  # [label, start, child time]
        self.phase = "-"
        self.marks: list[tuple[str, float]] | None = None  # set during a backward

    @contextlib.contextmanager
    def region(self, label: str):
        self._stack.append([label, clock(), 0.0])
        try:
            yield
        finally:
            name, start, child = self._stack.pop()
            dt = clock() - start
            self.totals[name] += dt - child
            if self._stack:
                self._stack[-1][2] += dt

    def add(self, label: str, seconds: float) -> None:
        self.totals[label] += seconds
        if self._stack:
            self._stack[-1][2] += seconds

    def mark(self, what: str):
        """A tensor hook recording when the gradient reaches ``what`` (during a backward)."""

        def hook(grad):
            if self.marks is not None:
                self.marks.append((what, clock()))
            return None

        return hook


def _hook(t: torch.Tensor, fn) -> None:
    if torch.is_grad_enabled() and isinstance(t, torch.Tensor) and t.requires_grad:
        t.register_hook(fn)


def instrument(module, ledger: Ledger) -> None:
    """Wrap the module's networks, phases and EMA update with CPU-time regions (in place)."""
    G, D, aug = module.G, module.D, module.augment

    def wrap_forward(net, label, mark_in=None, mark_out=None):
        inner = net.forward

        def forward(*a, **k):
            name = label if torch.is_grad_enabled() else f"{label} (no grad)"
            if mark_in and a:
                _hook(a[0], ledger.mark(mark_in))
            with ledger.region(name):
                out = inner(*a, **k)
            if mark_out:
                # a list of maps (the feature net): the last, coarsest one's gradient is
                # complete once everything after the feature net has run its backward
                _hook(out[-1] if isinstance(out, list | tuple) else out, ledger.mark(mark_out))
            return out

        net.forward = forward

    wrap_forward(G, "G forward", mark_out="G out")
    wrap_forward(G.synthesis, "G forward")
    wrap_forward(D, "D forward", mark_in="D in")
    if hasattr(D, "features"):
        wrap_forward(D.features, "feature net forward", mark_out="features out")
    if aug is not None:
        wrap_forward(aug, "augment forward")

    def wrap_phase(phase):
        def fn(parts, real_img, *classes):  # classes: the batch's, for a conditional GAN
            ledger.phase = phase.name
            with ledger.region(f"{phase.name} loss + misc"):
                return phase.fn(parts, real_img, *classes)

        return dataclasses.replace(phase, fn=fn)

    module.phases = [wrap_phase(p) for p in module.phases]

    inner_backward = module.manual_backward

    def manual_backward(loss, *a, **k):
        ledger.marks = []
        start = clock()
        inner_backward(loss, *a, **k)
        end = clock()
        marks, ledger.marks = ledger.marks, None
        for label, seconds in split_backward(ledger.phase, start, end, marks).items():
            ledger.add(label, seconds)

    module.manual_backward = manual_backward

    inner_ema = module._update_ema

    def update_ema(n):
        with ledger.region("EMA update"):
            inner_ema(n)

    module._update_ema = update_ema


def split_backward(phase: str, start: float, end: float, marks) -> dict[str, float]:
    """One backward's CPU time split where the gradient reached each network.

    The autograd engine runs later-created nodes first, so the discriminator's heads finish
    before its feature net starts, and D before the augmentation and G.
    """
    last = {}
    for what, t in marks:
        last[what] = max(t, last.get(what, t))
    cuts = [("D heads backward", last.get("features out"))]
    d_part = "feature net backward" if "features out" in last else "D backward"
    cuts.append((d_part, last.get("D in")))
    cuts.append(("augment backward", last.get("G out")))
    out: dict[str, float] = {}
    prev = start
    for label, t in cuts:
        if t is None:
            continue
        out[f"{phase} {label}"] = t - prev
        prev = t
    if phase.startswith("G"):
        tail = "G backward"
    else:  # a D phase: everything is D's weight gradient unless the input needed one too
        tail = "D backward" if prev == start else "input backward"
    out[f"{phase} {tail}"] = out.get(f"{phase} {tail}", 0.0) + end - prev
    return out


class LoopTimer(pl.Callback):
    """CPU seconds per batch (and between batches), a stop after ``n`` batches, the profiler."""

    def __init__(self, ledger: Ledger, warmup: int, n: int, profile: bool) -> None:
        self.ledger, self.warmup, self.n, self.profile = ledger, warmup, n, profile
        self.seen = 0
        self.batch_s: list[float] = []
        self.phase_s: list[dict[str, float]] = []
        self.prof = None
        self.flops: int | None = None  # of the last warm-up batch
        self._counter = None

    def on_train_start(self, trainer, module) -> None:
        for name, opt in zip(("G", "D"), trainer.optimizers, strict=True):
            state: dict[str, Any] = {}

            def pre(o, a, k, state=state, name=name):
                state["t"] = clock()

            def post(o, a, k, state=state, name=name):
                self.ledger.add(f"Adam step {name}", clock() - state["t"])

            opt.register_step_pre_hook(pre)
            opt.register_step_post_hook(post)
        self.prev_end = clock()

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        if self.seen == self.warmup - 1 and self.flops is None:
            from torch.utils.flop_counter import FlopCounterMode

            self._counter = FlopCounterMode(display=False)
            self._counter.__enter__()
        if self.seen == self.warmup:
            self.ledger.totals.clear()
            if self.profile:
                from torch.profiler import ProfilerActivity, profile

                self.prof = profile(activities=[ProfilerActivity.CPU])
                self.prof.__enter__()
        self.start = clock()
        self.ledger.add("data + loop", self.start - self.prev_end)

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if self._counter is not None:
            self._counter.__exit__(None, None, None)
            self.flops = self._counter.get_total_flops()
            self._counter = None
        end = clock()
        if self.seen >= self.warmup:
            self.batch_s.append(end - self.prev_end)
        self.prev_end = end
        self.seen += 1
        if self.seen >= self.warmup + self.n:
            trainer.should_stop = True
            if self.prof is not None:
                self.prof.__exit__(None, None, None)


# ----------------------------------------------------------------------------- one case


def build(args: argparse.Namespace, case: list[str]):
    """The composed config, PretrainModule and GarmentDataModule of one case's overrides."""
    overrides = [
        f"model={args.model}",
        *case,
        "model.sample_every_n_batches=0",
        f"data.batch_size={args.batch}",
        f"data.num_workers={args.workers}",
        *args.override,
    ]
    if args.data:
        overrides.append(f"data.root={args.data}")
    cfg = compose("pretrain", overrides)
    torch.manual_seed(args.seed)
    datamodule = hydra.utils.instantiate(cfg.data, _recursive_=False)
    extra = {"classes": datamodule.classes} if "conditional" in cfg.model else {}  # as train.build
    module = hydra.utils.instantiate(
        cfg.model, resolution=datamodule.resolution, loss=cfg.loss, _recursive_=False, **extra
    )
    return cfg, module, datamodule


def run_case(module, datamodule, args, threads: int, root: Path) -> dict[str, Any]:
    """``--warmup`` + ``--batches`` batches of ``trainer.fit`` at ``threads``; the CPU times."""
    torch.set_num_threads(threads)
    ledger = Ledger()
    if not hasattr(module, "_bench_ledger"):
        instrument(module, ledger)
        module._bench_ledger = ledger
    ledger = module._bench_ledger
    ledger.totals.clear()
    timer = LoopTimer(ledger, args.warmup, args.batches, args.profile)
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=-1,
        max_steps=-1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        callbacks=[timer],
        default_root_dir=str(root),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(module, datamodule=datamodule)
    return {
        "threads_seen": torch.get_num_threads(),
        "flops_per_batch": timer.flops,
        "batch_s": timer.batch_s,
        "phases": {k: v / max(1, len(timer.batch_s)) for k, v in ledger.totals.items()},
        "profile": timer.prof,
    }


# ----------------------------------------------------------------------------- report


def print_case(
    name: str, batch: int, runs: list[dict], profile_rows: int, peak: float
) -> dict[str, Any]:
    times = [t for r in runs for t in r["batch_s"]]
    mean = statistics.fmean(times)
    per_round = [batch / statistics.fmean(r["batch_s"]) for r in runs]
    phases: dict[str, float] = defaultdict(float)
    for r in runs:
        for k, v in r["phases"].items():
            phases[k] += v / len(runs)
    print(
        f"\n== {name}: {batch / mean:.2f} img per CPU-second "
        f"(mean {mean:.3f} CPU-s/batch over {len(times)} batches; rounds "
        + ", ".join(f"{v:.2f}" for v in per_round)
        + f"; kimg per CPU-hour {3.6 * batch / mean:.2f})"
    )
    flops = next((r["flops_per_batch"] for r in runs if r["flops_per_batch"]), None)
    share = None
    if flops:
        share = flops / mean / 1e9 / peak
        print(
            f"   {flops / batch / 1e9:.2f} GFLOP/img (convs + matmuls, forward + backward), "
            f"{flops / mean / 1e9:.1f} GFLOP per CPU-second = {share:.2f} of one thread's "
            f"matmul ({peak:.1f} GFLOP/s)"
        )
    accounted = sum(phases.values())
    rows = sorted(phases.items(), key=lambda kv: -kv[1])
    rows.append(("(unaccounted: toggles, zero_grad, logging)", mean - accounted))
    for k, v in rows:
        print(f"   {k:<44} {v:7.3f} s  {100 * v / mean:5.1f} %")
    for r in runs:
        if r["profile"] is not None:
            print(
                r["profile"]
                .key_averages()
                .table(sort_by="self_cpu_time_total", row_limit=profile_rows)
            )
            break
    return {
        "case": name,
        "img_per_cpu_s": batch / mean,
        "img_per_cpu_s_rounds": per_round,
        "cpu_s_per_batch": mean,
        "gflop_per_img": None if not flops else flops / batch / 1e9,
        "share_of_matmul_peak": share,
        "phases_cpu_s_per_batch": dict(phases),
    }


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    if args.interop:
        torch.set_num_interop_threads(args.interop)
    tuned = False if args.no_malloc_tune else keep_freed_memory()
    root = Path(os.environ.get("TMPDIR", "/tmp")) / "bench_pretrain_loop"
    cases = parse_cases(args)
    built = {name: build(args, overrides) for name, overrides in cases.items()}
    peak = matmul_gflops_1thread(args.matmul_size)
    runs: dict[tuple[str, int], list[dict]] = defaultdict(list)
    for _ in range(args.rounds):
        for name in cases:
            _, module, datamodule = built[name]
            for threads in args.threads:
                runs[(name, threads)].append(run_case(module, datamodule, args, threads, root))
    peak = (peak + matmul_gflops_1thread(args.matmul_size)) / 2  # before and after: the load
    print(
        f"torch {torch.__version__}, batch {args.batch}, model {args.model}, data "
        f"{args.data or 'sample64'}, workers {args.workers}, malloc_tuned {tuned}, "
        f"interop {torch.get_num_interop_threads()}, overrides {args.override}, "
        f"one thread's {args.matmul_size}-square matmul {peak:.1f} GFLOP/s"
    )
    for name, overrides in cases.items():
        print(
            f"{name}: {' '.join(overrides)}; phases "
            f"{[p.name for p in built[name][1].gan_loss.phases()]}"
        )
    results = []
    for (case, threads), case_runs in runs.items():
        name = f"{case} threads={threads} (seen {case_runs[0]['threads_seen']})"
        res = print_case(name, args.batch, case_runs, args.profile_rows, peak)
        res.update(case=case, overrides=cases[case], threads=threads)
        results.append(res)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps(
                {"config": vars(args) | {"json": str(args.json)}, "rows": results},
                indent=2,
                default=str,
            )
        )
    return results


if __name__ == "__main__":
    main()
