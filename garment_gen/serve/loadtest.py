"""Start the real studio server in a subprocess and put a bounded load on it.

Used by ``bench/bench_serve.py`` (the figures) and by the tests (a shorter run that asserts).

    with studio_server(["model=pretrained:reference"]) as server:
        report = run_load(server.url, clients=16, duration_s=20, pid=server.pid)

``run_load`` runs ``clients`` concurrent HTTP clients (asyncio + httpx, one connection each)
that each post one garment request after another for ``duration_s`` seconds, half of them
picking sample garments by id and half uploading image files, and reports latency
percentiles, images/s, errors by status and the server's resident memory before and after.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@dataclass
class Server:
    """A running studio server: its base ``url``, process id and log file."""

    url: str
    pid: int
    log: Path
    process: subprocess.Popen = field(repr=False)

    def log_tail(self, n: int = 30) -> str:
        """The last ``n`` lines of the server's output."""
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


@contextlib.contextmanager
def studio_server(
    args: Sequence[str] = (),
    host: str = "127.0.0.1",
    timeout_s: float = 120.0,
    nice: int = 0,
    env: dict[str, str] | None = None,
) -> Iterator[Server]:
    """Run ``python -m garment_gen.serve`` on a free port of ``host`` until the block ends.

    Waits for ``/healthz`` to answer; raises ``RuntimeError`` with the server's last log
    lines if it exits or does not answer within ``timeout_s``.
    """
    port = free_port(host)
    url = f"http://{host}:{port}"
    with tempfile.TemporaryDirectory(prefix="studio_server_") as tmp:
        log = Path(tmp) / "server.log"
        cmd = [sys.executable, "-m", "garment_gen.serve", f"host={host}", f"port={port}", *args]
        if nice:
            cmd = ["nice", "-n", str(nice), *cmd]
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                cmd,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
            )
        server = Server(url, proc.pid, log, proc)
        try:
            deadline = time.monotonic() + timeout_s
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(
                        f"studio server exited with status {proc.returncode}:\n{server.log_tail()}"
                    )
                try:
                    with urllib.request.urlopen(f"{url}/healthz", timeout=2) as r:
                        if r.status == 200:
                            break
                except OSError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"studio server did not answer within {timeout_s:g} s:\n{server.log_tail()}"
                    )
                time.sleep(0.2)
            yield server
        finally:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)


def _rss(pid: int | None) -> int | None:
    if pid is None:
        return None
    import psutil

    try:
        return psutil.Process(pid).memory_info().rss
    except psutil.Error:
        return None


@dataclass
class LoadReport:
    """What a load run measured (latencies in ms, memory in MiB)."""

    clients: int
    duration_s: float
    requests: int
    ok: int
    errors: int
    statuses: dict[str, int]
    images_per_s: float
    p50_ms: float
    p95_ms: float
    max_ms: float
    rss_before_mib: float | None
    rss_after_mib: float | None
    rss_peak_mib: float | None
    rss_series_mib: list[float]
    error_samples: list[str]
    server: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """Plain dict (JSON-ready)."""
        return asdict(self)

    def summary(self) -> str:
        """One line of the key figures."""
        mem = (
            f", RSS {self.rss_before_mib:.0f} -> {self.rss_after_mib:.0f} MiB "
            f"(peak {self.rss_peak_mib:.0f})"
            if self.rss_before_mib is not None and self.rss_after_mib is not None
            else ""
        )
        return (
            f"{self.clients} clients x {self.duration_s:.0f} s: {self.requests} requests, "
            f"{self.errors} errors, {self.images_per_s:.1f} images/s, p50 {self.p50_ms:.0f} ms, "
            f"p95 {self.p95_ms:.0f} ms{mem}"
        )


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    k = min(len(s) - 1, max(0, round(q / 100 * (len(s) - 1))))
    return s[k]


def request_pool(sample_root: Path, n: int = 16, uploads: bool = True) -> list[dict[str, Any]]:
    """``n`` (shape, texture) requests over the sample's test/validation garments.

    Each is ``{"files": {...}}`` for httpx: even ones pick samples by id, odd ones (when
    ``uploads``) upload the same kind of files (a mask PNG and a garment image PNG).
    """
    from garment_gen.serve.models import manifest_rows

    rows = manifest_rows(sample_root, "test") + manifest_rows(sample_root, "validation")
    pool = []
    for k in range(n):
        shape, texture = rows[(k * 5) % len(rows)], rows[(k * 7 + 3) % len(rows)]
        if uploads and k % 2:
            files = {
                "shape": ("m.png", (sample_root / "masks" / f"{shape['id']}.png").read_bytes()),
                "texture": (
                    "t.png",
                    (sample_root / "images" / f"{texture['id']}.png").read_bytes(),
                ),
            }
        else:
            files = {"shape_id": (None, shape["id"]), "texture_id": (None, texture["id"])}
        pool.append({"files": files})
    return pool


@dataclass
class _Tally:
    """What the clients of one phase saw."""

    record: bool = False
    latencies: list[float] = field(default_factory=list)
    statuses: Counter = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)
    rss: list[int] = field(default_factory=list)


async def _client(http, pool: list[dict], first: int, step: int, stop: float, tally: _Tally):
    """Post requests ``first, first + step, ...`` of the pool until ``stop``."""
    import httpx

    k = first
    while time.perf_counter() < stop:
        req = pool[k % len(pool)]
        k += step
        t0 = time.perf_counter()
        try:
            r = await http.post("/api/generate", **req)
            status = str(r.status_code)
            if r.status_code != 200 or r.headers.get("content-type") != "image/png":
                tally.errors.append(f"{r.status_code} {r.text[:160]}")
        except httpx.HTTPError as exc:
            status = exc.__class__.__name__
            tally.errors.append(f"{status}: {exc}")
        else:
            if tally.record:
                tally.latencies.append((time.perf_counter() - t0) * 1000)
        if tally.record:
            tally.statuses[status] += 1


async def _watch_memory(pid: int | None, stop: float, tally: _Tally) -> None:
    while time.perf_counter() < stop:
        rss = _rss(pid)
        if rss is not None:
            tally.rss.append(rss)
        await asyncio.sleep(0.5)


def _run_counters(before: dict, after: dict) -> dict:
    """``after`` (a ``/healthz`` answer) with ``run_*`` counters: this run's share only."""
    for name, m in after["models"].items():
        m0 = before["models"].get(name, {})
        for k in ("batches", "images", "rejected", "dropped", "busy_s"):
            if k in m:
                m[f"run_{k}"] = m[k] - m0.get(k, 0)
    return after


async def _load(
    url: str,
    clients: int,
    duration_s: float,
    pool: list[dict[str, Any]],
    pid: int | None,
    timeout_s: float,
    warmup_s: float,
) -> LoadReport:
    import httpx

    tally = _Tally()
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=timeout_s, limits=limits) as http:
        for req in pool:  # every distinct input once (the server caches aligned inputs)
            r = await http.post("/api/generate", **req)
            if r.status_code != 200:
                raise RuntimeError(f"warm-up request failed: {r.status_code} {r.text[:200]}")
        if warmup_s > 0:  # under load, so that batch-sized buffers exist before "before"
            stop = time.perf_counter() + warmup_s
            await asyncio.gather(
                *(_client(http, pool, c, clients, stop, tally) for c in range(clients))
            )
        rss_before = _rss(pid)
        health_before = (await http.get("/healthz")).json()
        tally.record = True
        t_start = time.perf_counter()
        stop = t_start + duration_s
        await asyncio.gather(
            _watch_memory(pid, stop, tally),
            *(_client(http, pool, c, clients, stop, tally) for c in range(clients)),
        )
        elapsed = time.perf_counter() - t_start
        rss_after = _rss(pid)
        health = _run_counters(health_before, (await http.get("/healthz")).json())
    mib = 1 / (1 << 20)
    ok = tally.statuses.get("200", 0)
    lat = tally.latencies
    return LoadReport(
        clients=clients,
        duration_s=elapsed,
        requests=sum(tally.statuses.values()),
        ok=ok,
        errors=len(tally.errors),
        statuses=dict(tally.statuses),
        images_per_s=ok / elapsed if elapsed > 0 else 0.0,
        p50_ms=_percentile(lat, 50),
        p95_ms=_percentile(lat, 95),
        max_ms=max(lat) if lat else float("nan"),
        rss_before_mib=rss_before * mib if rss_before else None,
        rss_after_mib=rss_after * mib if rss_after else None,
        rss_peak_mib=max(tally.rss + [rss_after or 0]) * mib if tally.rss else None,
        rss_series_mib=[round(r * mib, 1) for r in tally.rss],
        error_samples=tally.errors[:5],
        server=health,
    )


def run_load(
    url: str,
    clients: int = 16,
    duration_s: float = 20.0,
    pool: list[dict[str, Any]] | None = None,
    pid: int | None = None,
    timeout_s: float = 60.0,
    warmup_s: float = 0.0,
) -> LoadReport:
    """Put ``clients`` concurrent clients on ``POST /api/generate`` for ``duration_s`` seconds.

    Args:
        url: the server's base URL.
        pool: requests to cycle through (default :func:`request_pool` over the bundled sample).
        pid: the server's process id, to read its resident memory before and after.
        timeout_s: per-request client timeout (a timeout counts as an error).
        warmup_s: seconds of the same load before measuring (errors in it still count).
    """
    if pool is None:
        from garment_gen import sample_dir

        pool = request_pool(sample_dir())
    return asyncio.run(_load(url, clients, duration_s, pool, pid, timeout_s, warmup_s))
