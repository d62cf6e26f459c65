"""Design studio under load: latency, throughput and memory of the real server, next to offline.

    python bench/bench_serve.py [--clients 16] [--duration 20] [--single 10] [--threads N]
                                [--max-batch 32] [--json bench_serve.json]

1. Offline rate: ``GarmentGenerator.generate_tensors`` at batch ``--offline-batch`` (32) on
   the same aligned inputs the clients send, in this process, with the server's thread count.
2. The real server (``python -m garment_gen.serve``, a subprocess on 127.0.0.1): one client
   for ``--single`` s (latency of one garment), then ``--clients`` concurrent clients for
   ``--duration`` s, after a short warm-up under load. Half the clients pick sample garments
   by id, half upload image files (the server caches aligned inputs by content hash).
   Reports p50/p95 latency, images/s, errors, the server's RSS before/after, its batch sizes,
   and images/s as a share of the offline rate.

The clients run on the same machine as the server and take CPU from it; the load average
and the busiest other processes are printed so a reader knows what else was running.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path


def other_load() -> dict:
    """Load average and the busiest processes other than this one and its children."""
    import psutil

    me = os.getpid()
    procs = []
    for p in psutil.process_iter(["pid", "name", "cmdline"]):
        try:
            p.cpu_percent(None)
            procs.append(p)
        except psutil.Error:
            pass
    time.sleep(1.0)
    busy = []
    for p in procs:
        try:
            cpu = p.cpu_percent(None)
            if p.pid != me and cpu > 10:
                busy.append((cpu, " ".join(p.info["cmdline"] or [p.info["name"]])[:90]))
        except psutil.Error:
            pass
    return {"loadavg": os.getloadavg(), "busy": sorted(busy, reverse=True)[:5]}


def offline_rate(pool: list[dict], threads: int, batch: int, seconds: float) -> dict:
    """Images/s of ``generate_tensors`` at ``batch`` on the pool's aligned inputs."""
    import io

    import torch
    from PIL import Image

    from garment_gen import sample_dir
    from garment_gen.inference import GarmentGenerator

    torch.set_num_threads(threads)
    gen = GarmentGenerator.from_pretrained("reference")
    root = sample_dir()
    masks, texs = [], []
    for req in pool:
        f = req["files"]
        if "shape_id" in f:
            masks.append(gen.shape_tensor(root / "masks" / f"{f['shape_id'][1]}.png"))
            texs.append(gen.texture_tensor(root / "images" / f"{f['texture_id'][1]}.png"))
        else:
            masks.append(gen.shape_tensor(Image.open(io.BytesIO(f["shape"][1]))))
            texs.append(gen.texture_tensor(Image.open(io.BytesIO(f["texture"][1]))))
    reps = -(-batch // len(masks))
    m = torch.cat(masks * reps)[:batch]
    x = torch.cat(texs * reps)[:batch]
    out = {}
    for b in sorted({1, batch}):
        gen.generate_tensors(m[:b], x[:b])
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds or n < 2:
            gen.generate_tensors(m[:b], x[:b])
            n += 1
        dt = (time.perf_counter() - t0) / n
        out[b] = {"ms_per_batch": dt * 1000, "images_per_s": b / dt}
    del gen
    return out


def uncached_uploads(url: str, n: int = 12) -> dict:
    """Latency of uploads the server has not seen: train-split garment images as textures.

    Each is aligned on arrival (the texture's garment is found by the model's segmenter),
    which the cached runs above do not pay.
    """
    import httpx

    from garment_gen import sample_dir
    from garment_gen.serve.models import manifest_rows

    root = sample_dir()
    rows = manifest_rows(root, "train")[::7][:n]
    shape = manifest_rows(root, "test")[0]["id"]
    times = []
    with httpx.Client(base_url=url, timeout=60) as http:
        for row in rows:
            files = {
                "shape_id": (None, shape),
                "texture": ("t.png", (root / "images" / f"{row['id']}.png").read_bytes()),
            }
            t0 = time.perf_counter()
            r = http.post("/api/generate", files=files)
            times.append((time.perf_counter() - t0) * 1000)
            r.raise_for_status()
    times.sort()
    return {"n": len(times), "p50_ms": times[len(times) // 2], "max_ms": times[-1]}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--duration", type=float, default=20.0, help="seconds under load")
    ap.add_argument("--single", type=float, default=10.0, help="seconds of the one-client run")
    ap.add_argument("--warmup", type=float, default=3.0, help="seconds of load before measuring")
    ap.add_argument("--threads", type=int, default=None, help="server's torch threads")
    ap.add_argument("--max-batch", type=int, default=32)
    ap.add_argument("--max-wait-ms", type=float, default=4.0)
    ap.add_argument("--offline-batch", type=int, default=32)
    ap.add_argument("--nice", type=int, default=0, help="run the server under nice -n N")
    ap.add_argument("--json", default="bench_serve.json")
    args = ap.parse_args(argv)

    from garment_gen import sample_dir
    from garment_gen.serve.app import ServeSettings, cpu_threads
    from garment_gen.serve.loadtest import request_pool, run_load, studio_server

    threads = args.threads or cpu_threads(ServeSettings())
    pool = request_pool(sample_dir())
    before = other_load()
    offline = offline_rate(pool, threads, args.offline_batch, 5.0)
    server_args = [
        f"threads={threads}",
        f"max_batch={args.max_batch}",
        f"max_wait_ms={args.max_wait_ms}",
    ]
    with studio_server(server_args, nice=args.nice) as server:
        single = run_load(server.url, 1, args.single, pool, server.pid)
        load = run_load(
            server.url, args.clients, args.duration, pool, server.pid, warmup_s=args.warmup
        )
        fresh = uncached_uploads(server.url)
    after = other_load()
    rate = offline[args.offline_batch]["images_per_s"]
    result = {
        "threads": threads,
        "cpu_count": os.cpu_count(),
        "offline": offline,
        "single": single.as_dict(),
        "load": load.as_dict(),
        "share_of_offline": load.images_per_s / rate,
        "uncached_uploads": fresh,
        "machine_before": before,
        "machine_after": after,
        "args": vars(args),
    }
    Path(args.json).write_text(json.dumps(result, indent=2, default=str))
    stats = load.server["models"]["reference"]
    print(f"threads={threads} on {os.cpu_count()} cores; load average before {before['loadavg']}")
    for cpu, cmd in before["busy"]:
        print(f"  also running: {cpu:4.0f}% {cmd}")
    print(
        f"offline generate_tensors: batch 1 {offline[1]['ms_per_batch']:.0f} ms "
        f"({offline[1]['images_per_s']:.1f} img/s), batch {args.offline_batch} {rate:.1f} img/s"
    )
    print(f"single client: {single.summary()}")
    print(f"under load:    {load.summary()}")
    print(
        f"new uploads (texture aligned on arrival, one client): p50 {fresh['p50_ms']:.0f} ms, "
        f"max {fresh['max_ms']:.0f} ms over {fresh['n']}"
    )
    print(
        f"  = {result['share_of_offline']:.0%} of the offline batched rate; "
        f"{stats['run_batches']} batches of {stats['run_images'] / max(1, stats['run_batches']):.1f} "
        f"images on average (largest so far {stats['largest_batch']}); the model was busy "
        f"{stats['run_busy_s'] / load.duration_s:.0%} of the time"
    )
    series = load.rss_series_mib
    if len(series) >= 6:
        third = len(series) // 3
        first, last = sum(series[:third]) / third, sum(series[-third:]) / third
        result["rss_first_third_mib"], result["rss_last_third_mib"] = first, last
        print(
            f"  server RSS during the run: {min(series):.0f}-{max(series):.0f} MiB; mean of the "
            f"first third {first:.0f}, of the last third {last:.0f}"
        )
        Path(args.json).write_text(json.dumps(result, indent=2, default=str))
    print(f"load average after {after['loadavg']}; wrote {args.json}")
    return result


if __name__ == "__main__":
    main()
