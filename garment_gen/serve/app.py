"""The design studio's web service: FastAPI app over a garment model and the sample store.

    from garment_gen.serve.app import ServeSettings, create_app
    app = create_app(ServeSettings(model="pretrained:reference"))   # then: uvicorn.run(app)

Endpoints (all errors are one-line JSON ``{"error": "...", "field": "shape"}``):

======================================  ==========================================================
``GET  /``                              the studio page (static HTML, CSS, JS from the package)
``GET  /healthz``                       ``{"status": "ok", ...}`` plus queue counters
``GET  /api/models``                    models (shipped + the served one), resolution, card summary
``GET  /api/samples``                   the sample garments one can pick (ids, labels)
``GET  /api/samples/{id}/mask.png``     a sample's mask (``image.png``: its garment image)
``POST /api/generate``                  ``shape``/``shape_id`` + ``texture``/``texture_id`` -> PNG;
                                        ``variations=N`` -> JSON ``{"images": [base64 PNG]}``
``POST /api/grid``                      several shapes x several textures -> JSON with a labelled
                                        grid PNG and a ZIP of the cells (``format=png|zip``: raw)
======================================  ==========================================================
"""

from __future__ import annotations

import asyncio
import base64
import io
import logging
import os
import random
import re
import time
import zipfile
from collections.abc import Callable
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from PIL import Image
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException

from garment_gen import sample_dir
from garment_gen.errors import GarmentGenError
from garment_gen.serve.batching import BatchQueue, QueueFullError
from garment_gen.serve.models import (
    GenerateJob,
    ModelSlot,
    SampleStore,
    VariationsJob,
    digest,
    model_slots,
    run_batch,
)
from garment_gen.serve.uploads import Form, Part, UploadError, decode_image, read_form, safe_label

log = logging.getLogger("garment_gen.serve")
STATIC_DIR = Path(__file__).resolve().parent / "static"
SEED_MAX = 2**31 - 1
CSP = (
    "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)


@dataclass
class ServeSettings:
    """Settings of the studio service (``conf/cli/serve.yaml`` holds the same keys, documented)."""

    model: str = "pretrained:reference"
    host: str = "127.0.0.1"
    port: int = 8000
    device: str = "cpu"
    max_upload_mb: float = 10.0
    max_body_mb: float = 40.0
    max_pixels: int = 25_000_000
    max_batch: int = 32
    max_wait_ms: float = 4.0
    max_queue: int = 256
    max_inflight: int = 128
    request_timeout_s: float = 60.0
    max_grid: int = 8
    max_variations: int = 16
    cache_size: int = 512
    threads: int | None = None
    access_log: bool = False
    log_level: str = "info"

    def __post_init__(self) -> None:
        for name in ("max_upload_mb", "max_body_mb", "request_timeout_s"):
            if not float(getattr(self, name)) > 0:
                raise GarmentGenError(f"{name} must be > 0, got {getattr(self, name)}")
        for name in ("max_pixels", "max_batch", "max_queue", "max_inflight", "max_grid"):
            if int(getattr(self, name)) < 1:
                raise GarmentGenError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0 < int(self.port) < 65536:
            raise GarmentGenError(f"port must be in 1..65535, got {self.port}")

    @property
    def max_upload_bytes(self) -> int:
        """Largest accepted upload (one file), in bytes."""
        return int(self.max_upload_mb * 1e6)


def cpu_threads(settings: ServeSettings) -> int:
    """Torch CPU threads for the model: ``settings.threads``, else all cores but one.

    The process also parses requests, encodes PNGs and aligns uploads; leaving it a core
    keeps the model's threads from waiting on a descheduled sibling (on 2 shared cores, two
    model threads made one garment 10x slower than one thread did).
    """
    if settings.threads:
        return int(settings.threads)
    return max(1, (os.cpu_count() or 1) - 1)


class ErrorResponse(Exception):
    """Raised inside handlers to answer with ``status`` and a one-line JSON error."""

    def __init__(self, status: int, message: str, field: str | None = None, headers=None):
        self.err = UploadError(status, message, field)
        self.headers = headers or {}
        super().__init__(self.err.message)


def _clean(exc: Exception, field: str) -> str:
    """A GarmentGenError about an in-memory image -> one line naming the form field."""
    msg = re.sub(r"^<\w+>:\s*", "", str(exc))
    return msg if msg.startswith(f"{field}:") else f"{field}: {msg}"


def png_bytes(img: torch.Tensor) -> bytes:
    """Image ``[3, R, R]`` in ``[-1, 1]`` -> PNG bytes."""
    arr = img.detach().cpu().add(1).mul(127.5).round().clamp(0, 255).to(torch.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr.permute(1, 2, 0).numpy()).save(buf, format="PNG", compress_level=3)
    return buf.getvalue()


def b64(data: bytes) -> str:
    """Base64 text of ``data``."""
    return base64.b64encode(data).decode("ascii")


# ----------------------------------------------------------------------------- the studio


class Studio:
    """State of one service: settings, model slots, samples; the work behind the endpoints."""

    def __init__(self, settings: ServeSettings, generator=None) -> None:
        self.settings = settings
        self.started = time.time()
        self.slots, self.default = model_slots(settings.model)
        for slot in self.slots.values():
            slot.cache.size = settings.cache_size
        self.samples = SampleStore(sample_dir())
        self.inflight = 0
        self._load_lock: asyncio.Lock | None = None
        torch.set_num_threads(cpu_threads(settings))
        default = self.slots[self.default]
        if generator is not None:
            default.gen = generator
        else:
            default.load(settings.device)
        log.info(
            "model %s (%s px) on %s; %d sample garments",
            self.default,
            default.gen.resolution,
            settings.device,
            len(self.samples.samples),
        )

    # ---------------------------------------------------------------- lifecycle

    def _queue_for(self, slot: ModelSlot) -> BatchQueue:
        s = self.settings
        return BatchQueue(
            run_batch(slot.gen, s.max_batch),
            s.max_batch,
            s.max_wait_ms,
            s.max_queue,
            in_flight=lambda: self.inflight,
        )

    async def start(self) -> None:
        """Start the queues of the loaded models (inside the event loop).

        The grid code (``garment_gen.generate``) is imported in a thread meanwhile, so the
        first grid request does not pay for it.
        """
        import importlib

        self._load_lock = asyncio.Lock()
        asyncio.get_running_loop().run_in_executor(
            None, importlib.import_module, "garment_gen.generate"
        )
        for slot in self.slots.values():
            if slot.gen is not None and slot.queue is None:
                slot.queue = self._queue_for(slot)
                slot.queue.start()

    async def stop(self) -> None:
        """Stop every queue."""
        for slot in self.slots.values():
            if slot.queue is not None:
                await slot.queue.close()
                slot.queue = None

    async def slot(self, name: str | None) -> ModelSlot:
        """The model called ``name`` (the default when empty), loaded on first use."""
        name = name or self.default
        slot = self.slots.get(name)
        if slot is None:
            raise ErrorResponse(
                422, f"model: no model {name!r}; available: {', '.join(self.slots)}", "model"
            )
        if slot.queue is None:
            assert self._load_lock is not None
            async with self._load_lock:
                if slot.queue is None:
                    try:
                        await run_in_threadpool(slot.load, self.settings.device)
                    except GarmentGenError as exc:
                        raise ErrorResponse(422, f"model: {exc}", "model") from None
                    slot.cache.size = self.settings.cache_size
                    slot.queue = self._queue_for(slot)
                    slot.queue.start()
        return slot

    # ---------------------------------------------------------------- inputs

    def _align(self, slot: ModelSlot, kind: str, part: Part | None, sample, field: str):
        """Aligned tensor for an upload or a sample; runs in a worker thread on a cache miss."""
        gen = slot.gen
        to_tensor = gen.shape_tensor if kind == "shape" else gen.texture_tensor

        def make() -> torch.Tensor:
            try:
                if sample is not None:
                    src = sample.mask if kind == "shape" else sample.image
                    return to_tensor(src).cpu()
                img = decode_image(part.data, field, self.settings.max_pixels)
                return to_tensor(img).cpu()
            except GarmentGenError as exc:
                raise UploadError(422, _clean(exc, field), field) from None

        key = f"id:{sample.id}" if sample is not None else digest(part.data)
        return slot.aligned(kind, key, make)

    async def inputs(self, slot: ModelSlot, form: Form, kind: str, limit: int) -> list[tuple]:
        """The ``kind`` inputs of a form (files ``kind``, sample ids ``kind_id``), aligned.

        Returns ``[(tensor [1, C, R, R], label)]`` in form order.
        """
        parts = [p for p in form.parts if p.name in (kind, f"{kind}_id")]
        if not parts:
            raise ErrorResponse(
                422,
                f"{kind}: missing; upload a file as '{kind}' or pick a sample with '{kind}_id'",
                kind,
            )
        if len(parts) > limit:
            raise ErrorResponse(422, f"{kind}: at most {limit} allowed, got {len(parts)}", kind)
        out = []
        for i, part in enumerate(parts):
            field = part.name if limit == 1 else f"{part.name}[{i}]"
            if part.name == kind:
                if not part.is_file and not part.data:
                    raise ErrorResponse(422, f"{field}: empty file (0 bytes)", field)
                sample, label = None, safe_label(part.filename, f"upload{i + 1}")
            else:
                sid = part.text()
                sample = self.samples.get(sid)
                if sample is None:
                    raise ErrorResponse(
                        422,
                        f"{field}: no sample garment {sid[:64]!r} (see GET /api/samples)",
                        field,
                    )
                label = sample.label
            key = f"id:{sample.id}" if sample is not None else digest(part.data)
            cached = slot.cache.get((kind, key))
            if cached is None:
                cached = await run_in_threadpool(self._align, slot, kind, part, sample, field)
            out.append((cached, label))
        return out

    async def read(self, request, grid: bool = False) -> Form:
        """The request's form, in memory, under the size limits."""
        s = self.settings
        body = (
            s.max_body_mb * 1e6 if grid else min(s.max_body_mb * 1e6, 2 * s.max_upload_bytes + 1e6)
        )
        return await read_form(
            request, s.max_upload_bytes, int(body), max_parts=4 * s.max_grid + 16
        )

    async def submit(self, slot: ModelSlot, key: tuple, job: Any, size: int) -> torch.Tensor:
        """Queue a job on the model's batch queue; 503 when the queue is full."""
        try:
            return await slot.queue.submit(key, job, size)
        except QueueFullError as exc:
            raise ErrorResponse(503, str(exc), None, {"Retry-After": "1"}) from None


def _number(form: Form, name: str, cast, default, lo, hi):
    part = form.first(name)
    if part is None or not part.text():
        return default
    text = part.text()
    try:
        value = cast(text)
    except ValueError:
        raise ErrorResponse(422, f"{name}: not a number: {text[:32]!r}", name) from None
    if not (lo <= value <= hi) or value != value:
        raise ErrorResponse(422, f"{name}: must be between {lo} and {hi}, got {text[:32]}", name)
    return value


# ----------------------------------------------------------------------------- the app


class Guard:
    """ASGI middleware: security headers, a bound on POSTs in flight, a time limit per request.

    A POST to ``/api/`` beyond ``max_inflight`` is answered 503 at once; a request running
    longer than ``request_timeout_s`` is cancelled and answered 504 (its queued job is then
    skipped by the batch worker).
    """

    def __init__(self, app, studio: Studio, error: Callable[..., Any]) -> None:
        self.app, self.studio, self.error = app, studio, error

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        settings = self.studio.settings
        heavy = scope["method"] == "POST" and scope["path"].startswith("/api/")
        started = False

        async def send_with_headers(message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                headers = MutableHeaders(scope=message)
                headers.setdefault("Content-Security-Policy", CSP)
                headers.setdefault("X-Content-Type-Options", "nosniff")
                headers.setdefault("Referrer-Policy", "no-referrer")
            await send(message)

        if heavy and self.studio.inflight >= settings.max_inflight:
            response = self.error(
                503,
                f"server busy: {self.studio.inflight} requests in flight (limit "
                f"{settings.max_inflight}); retry in a moment",
                headers={"Retry-After": "1"},
            )
            await response(scope, receive, send_with_headers)
            return
        self.studio.inflight += heavy
        try:
            await asyncio.wait_for(
                self.app(scope, receive, send_with_headers), settings.request_timeout_s
            )
        except asyncio.TimeoutError:
            if not started:
                response = self.error(
                    504, f"request took longer than {settings.request_timeout_s:g} s"
                )
                await response(scope, receive, send_with_headers)
        finally:
            self.studio.inflight -= heavy


# ----------------------------------------------------------------------------- errors


def error_response(status: int, message: str, field: str | None = None, headers=None):
    """The one-line JSON error every refusal is: ``{"error": "...", "field": ...}``."""
    message = " ".join(str(message).split())
    return JSONResponse({"error": message, "field": field}, status, headers=headers)


async def _on_error(request: Request, exc: ErrorResponse):
    return error_response(exc.err.status, exc.err.message, exc.err.field, exc.headers)


async def _on_upload(request: Request, exc: UploadError):
    return error_response(exc.status, exc.message, exc.field)


async def _on_user(request: Request, exc: GarmentGenError):
    return error_response(422, str(exc))


async def _on_http(request: Request, exc: HTTPException):
    text = {404: "not found", 405: "method not allowed"}.get(exc.status_code, str(exc.detail))
    return error_response(exc.status_code, f"{text}: {request.method} {request.url.path}")


async def _on_validation(request: Request, exc: RequestValidationError):
    first = exc.errors()[0] if exc.errors() else {}
    loc = ".".join(str(x) for x in first.get("loc", ())[1:]) or None
    return error_response(422, f"{loc or 'request'}: {first.get('msg', 'invalid')}", loc)


async def _on_crash(request: Request, exc: Exception):
    log.exception("internal error on %s %s", request.method, request.url.path)
    return error_response(500, f"internal error ({exc.__class__.__name__}); see the server log")


HANDLERS = {
    ErrorResponse: _on_error,
    UploadError: _on_upload,
    GarmentGenError: _on_user,
    HTTPException: _on_http,
    RequestValidationError: _on_validation,
    Exception: _on_crash,
}

# ----------------------------------------------------------------------------- endpoints

router = APIRouter()


def _studio(request: Request) -> Studio:
    return request.app.state.studio


@router.get("/", include_in_schema=False)
async def index():
    """The studio page."""
    return FileResponse(STATIC_DIR / "index.html", media_type="text/html")


@router.get("/healthz")
async def healthz(request: Request):
    """Liveness plus per-model queue counters."""
    studio = _studio(request)
    models = {}
    for name, slot in studio.slots.items():
        q = slot.queue
        models[name] = {
            "loaded": slot.gen is not None,
            "pending": q.pending if q else 0,
            **(asdict(q.stats) if q else {}),
            "cached_inputs": len(slot.cache),
        }
    return {
        "status": "ok",
        "uptime_s": round(time.time() - studio.started, 1),
        "inflight": studio.inflight,
        "models": models,
    }


@router.get("/api/models")
async def models(request: Request):
    """Models the studio can use: shipped ones and the served one, with card summaries."""
    studio, s = _studio(request), _studio(request).settings
    return {
        "default": studio.default,
        "models": [slot.describe(studio.default) for slot in studio.slots.values()],
        "limits": {
            "max_upload_mb": s.max_upload_mb,
            "max_pixels": s.max_pixels,
            "max_grid": s.max_grid,
            "max_variations": s.max_variations,
        },
    }


@router.get("/api/samples")
async def samples(request: Request):
    """Sample garments (test and validation splits of the bundled sample)."""
    return {
        "samples": _studio(request).samples.listing(),
        "mask_url": "/api/samples/{id}/mask.png",
        "image_url": "/api/samples/{id}/image.png",
    }


@router.get("/api/samples/{sample_id}/{kind}.png")
async def sample_file(request: Request, sample_id: str, kind: str):
    """A sample's mask (``mask.png``) or garment image (``image.png``), by manifest id only."""
    sample = _studio(request).samples.get(sample_id)
    if sample is None or kind not in ("mask", "image"):
        raise ErrorResponse(404, f"no sample file {sample_id[:64]}/{kind[:16]}.png")
    path = sample.mask if kind == "mask" else sample.image
    return Response(
        path.read_bytes(), media_type="image/png", headers={"Cache-Control": "max-age=3600"}
    )


def _batch_key(truncation: float, seed: int | None, form: Form) -> tuple:
    """Jobs with equal keys share a pass; a seeded job runs alone (reproducible noise)."""
    return (
        ("generate", truncation, seed) if seed is None else ("generate", truncation, seed, id(form))
    )


@router.post("/api/generate")
async def generate(request: Request):
    """One garment (PNG), or ``variations`` garments (JSON of base64 PNGs)."""
    studio = _studio(request)
    form = await studio.read(request)
    slot = await studio.slot(form.first("model") and form.first("model").text())
    truncation = _number(form, "truncation", float, 1.0, 0.0, 1.0)
    seed = _number(form, "seed", int, None, 0, SEED_MAX)
    n = _number(form, "variations", int, 1, 1, studio.settings.max_variations)
    strength = _number(form, "strength", float, 0.6, 0.0, 1.0)
    mask = (await studio.inputs(slot, form, "shape", 1))[0][0]
    texture = (await studio.inputs(slot, form, "texture", 1))[0][0]
    headers = {"X-Model": slot.name, "Cache-Control": "no-store"}
    if n == 1:
        job = GenerateJob(mask, texture)
        img = await studio.submit(slot, _batch_key(truncation, seed, form), job, 1)
        return Response(png_bytes(img[0]), media_type="image/png", headers=headers)
    seed = random.randrange(SEED_MAX) if seed is None else seed
    job = VariationsJob(mask, texture, n, seed, truncation, strength)
    imgs = await studio.submit(slot, ("variations", id(job)), job, n + 1)
    pngs = await run_in_threadpool(lambda: [b64(png_bytes(i)) for i in imgs])
    return JSONResponse({"model": slot.name, "seed": seed, "images": pngs}, headers=headers)


def grid_files(
    masks: torch.Tensor,
    textures: torch.Tensor,
    images: torch.Tensor,
    shape_names: list[str],
    texture_names: list[str],
) -> tuple[bytes, bytes]:
    """``(grid PNG, ZIP)`` for images ``[S, T, 3, R, R]`` (see ``generate.labelled_grid``).

    The ZIP holds ``grid.png`` and ``cells/r<i>_c<j>_<shape>__<texture>.png``.
    """
    from garment_gen.generate import labelled_grid

    sheet = labelled_grid(masks, textures, images, shape_names, texture_names)
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(sheet)).save(buf, format="PNG")
    grid_png = buf.getvalue()
    zbuf = io.BytesIO()
    with zipfile.ZipFile(zbuf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("grid.png", grid_png)
        for i, shape_name in enumerate(shape_names):
            for j, texture_name in enumerate(texture_names):
                name = f"cells/r{i + 1}_c{j + 1}_{shape_name}__{texture_name}.png"
                zf.writestr(name, png_bytes(images[i, j]))
    return grid_png, zbuf.getvalue()


@router.post("/api/grid")
async def grid(request: Request):
    """Every shape x texture: JSON ``{"grid": base64 PNG, "zip": base64 ZIP, ...}``.

    ``format=png`` answers the grid PNG itself, ``format=zip`` the ZIP itself.
    """
    studio = _studio(request)
    form = await studio.read(request, grid=True)
    fmt = (form.first("format").text() if form.first("format") else "") or "json"
    if fmt not in ("json", "png", "zip"):
        raise ErrorResponse(422, f"format: json, png or zip, got {fmt[:16]!r}", "format")
    slot = await studio.slot(form.first("model") and form.first("model").text())
    truncation = _number(form, "truncation", float, 1.0, 0.0, 1.0)
    seed = _number(form, "seed", int, None, 0, SEED_MAX)
    shapes = await studio.inputs(slot, form, "shape", studio.settings.max_grid)
    textures = await studio.inputs(slot, form, "texture", studio.settings.max_grid)
    s, t = len(shapes), len(textures)
    masks = torch.cat([m for m, _ in shapes])
    texs = torch.cat([x for x, _ in textures])
    job = GenerateJob(masks.repeat_interleave(t, 0), texs.repeat(s, 1, 1, 1))
    imgs = await studio.submit(slot, _batch_key(truncation, seed, form), job, s * t)
    names = [label for _, label in shapes], [label for _, label in textures]
    grid_png, zip_bytes = await run_in_threadpool(
        grid_files, masks, texs, imgs.view(s, t, *imgs.shape[1:]), *names
    )
    headers = {"X-Model": slot.name, "Cache-Control": "no-store"}
    if fmt == "png":
        return Response(grid_png, media_type="image/png", headers=headers)
    if fmt == "zip":
        headers["Content-Disposition"] = 'attachment; filename="garments.zip"'
        return Response(zip_bytes, media_type="application/zip", headers=headers)
    body = {"model": slot.name, "shapes": names[0], "textures": names[1]}
    return JSONResponse({**body, "grid": b64(grid_png), "zip": b64(zip_bytes)}, headers=headers)


# ----------------------------------------------------------------------------- the app


def create_app(settings: ServeSettings | None = None, generator=None) -> FastAPI:
    """Build the FastAPI app (loads the default model now, so a bad one fails before serving).

    Args:
        settings: :class:`ServeSettings` (defaults: the shipped ``reference`` model on CPU).
        generator: an already loaded :class:`GarmentGenerator` to serve as the default model
            (tests share one); None loads ``settings.model``.

    Raises:
        GarmentGenError: unknown model name, missing file, unavailable device.
    """
    studio = Studio(settings or ServeSettings(), generator)

    @asynccontextmanager
    async def lifespan(app):
        await studio.start()
        yield
        await studio.stop()

    app = FastAPI(
        title="garment_gen design studio",
        lifespan=lifespan,
        docs_url=None,  # Swagger UI would load its scripts from a CDN; the README has the API
        redoc_url=None,
        openapi_url=None,
    )
    app.state.studio = studio
    for exc_class, handler in HANDLERS.items():
        app.add_exception_handler(exc_class, handler)
    app.add_middleware(Guard, studio=studio, error=error_response)
    app.include_router(router)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app


def run_server(settings: ServeSettings) -> None:
    """Serve the studio with uvicorn until interrupted (``python -m garment_gen.serve``)."""
    import socket

    import uvicorn

    if settings.host not in ("127.0.0.1", "localhost", "::1"):
        log.warning(
            "listening on %s: reachable from other machines, with no authentication",
            settings.host,
        )
    model_slots(settings.model)  # an unknown model fails before anything else
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((settings.host, int(settings.port)))
        except OSError as exc:
            raise GarmentGenError(
                f"cannot listen on {settings.host}:{settings.port} ({exc.strerror}); "
                "pick another with port=..."
            ) from None
    app = create_app(settings)
    log.info("design studio on http://%s:%d/", settings.host, settings.port)
    uvicorn.run(
        app,
        host=settings.host,
        port=int(settings.port),
        log_level=settings.log_level,
        access_log=settings.access_log,
        timeout_keep_alive=10,
    )
