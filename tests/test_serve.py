"""The design studio service: every endpoint, every bad input, batching, variations, a load run.

API tests run the app in process (FastAPI's TestClient, or httpx over ASGI for concurrency)
on the shipped ``reference`` model. The tests against the real server in a subprocess (the
headless browser and the load run, sharing one server) are in ``test_serve_browser.py``.
"""

from __future__ import annotations

import asyncio
import base64
import io
import socket
import struct
import sys
import time
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from garment_gen import sample_dir
from garment_gen.inference import GarmentGenerator
from garment_gen.serve.app import ServeSettings, create_app
from garment_gen.serve.batching import BatchQueue, QueueFullError
from garment_gen.serve.models import manifest_rows
from garment_gen.serve.variations import generate_variations, mix_fine_styles
from garment_gen.utils.images import to_uint8

ROOT = sample_dir()
ROWS = manifest_rows(ROOT, "test") + manifest_rows(ROOT, "validation")
LIMITS = dict(max_upload_mb=0.5, max_body_mb=2.0, max_pixels=4_000_000, max_grid=3)


# ----------------------------------------------------------------------------- helpers


def png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header says ``width x height`` (a decompression bomb's header)."""
    b = bytearray(png(np.zeros((8, 8), np.uint8)))
    struct.pack_into(">II", b, 16, width, height)  # IHDR data starts at byte 16
    struct.pack_into(">I", b, 29, zlib.crc32(bytes(b[12:29])))
    return bytes(b)


def decode(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def mask_bytes(row) -> bytes:
    return (ROOT / "masks" / f"{row['id']}.png").read_bytes()


def image_bytes(row) -> bytes:
    return (ROOT / "images" / f"{row['id']}.png").read_bytes()


def ids(shape_row, texture_row, **extra) -> dict:
    """Multipart fields that pick samples by id (plus options)."""
    fields = {"shape_id": shape_row["id"], "texture_id": texture_row["id"], **extra}
    return {k: (None, str(v)) for k, v in fields.items()}


def assert_error(r, status: int, field: str | None, *words: str) -> dict:
    """A one-line JSON error with this status and field, mentioning ``words``."""
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert set(body) == {"error", "field"}, body
    assert body["field"] == field, body
    assert "\n" not in body["error"] and "Traceback" not in body["error"]
    for w in words:
        assert w in body["error"], body
    return body


def offline(gen: GarmentGenerator, shape, texture) -> np.ndarray:
    img = gen.generate_tensors(gen.shape_tensor(shape), gen.texture_tensor(texture))
    return to_uint8(img[0])


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def gen() -> GarmentGenerator:
    return GarmentGenerator.from_pretrained("reference")


@pytest.fixture(scope="module")
def client(gen):
    app = create_app(ServeSettings(**LIMITS), generator=gen)
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


def make_app(gen, **settings):
    return create_app(ServeSettings(**{**LIMITS, **settings}), generator=gen)


def run_async(app, fn):
    """Run ``await fn(http_client, studio)`` against ``app`` over ASGI, queues started."""
    import httpx

    async def main():
        studio = app.state.studio
        await studio.start()
        try:
            transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
            async with httpx.AsyncClient(transport=transport, base_url="http://studio") as c:
                return await fn(c, studio)
        finally:
            await studio.stop()

    return asyncio.run(main())


def slow_batches(studio, seconds: float) -> None:
    """Make the default model's batch function sleep first (to pile requests up)."""
    slot = studio.slots[studio.default]
    inner = slot.queue.run_batch

    def run(key, jobs):
        time.sleep(seconds)
        return inner(key, jobs)

    slot.queue.run_batch = run


# ----------------------------------------------------------------------------- listings


def test_healthz_models_and_samples(client):
    h = client.get("/healthz")
    assert h.status_code == 200 and h.json()["status"] == "ok"
    assert h.json()["models"]["reference"]["loaded"] is True

    m = client.get("/api/models").json()
    assert m["default"] == "reference"
    ref = next(x for x in m["models"] if x["name"] == "reference")
    assert ref["resolution"] == 64 and ref["shipped"] and ref["loaded"]
    assert "reference" in ref["card"]["title"]
    assert ref["card"]["summary"] and len(ref["card"]["metrics"]) >= 2
    assert {"metric", "model", "baseline"} == set(ref["card"]["metrics"][0])
    assert m["limits"]["max_upload_mb"] == LIMITS["max_upload_mb"]

    samples = client.get("/api/samples").json()["samples"]
    assert len(samples) == len(ROWS) == 64
    assert {s["split"] for s in samples} == {"test", "validation"}
    sid = samples[0]["id"]
    mask = client.get(f"/api/samples/{sid}/mask.png")
    assert mask.status_code == 200 and mask.headers["content-type"] == "image/png"
    arr = np.asarray(Image.open(io.BytesIO(mask.content)))
    assert arr.shape[:2] == (64, 64) and set(np.unique(arr)) <= {0, 255}
    assert decode(client.get(f"/api/samples/{sid}/image.png").content).shape == (64, 64, 3)


@pytest.mark.parametrize(
    "path",
    [
        "/api/samples/not-an-id/mask.png",
        "/api/samples/..%2F..%2Fmanifest/mask.png",
        "/api/samples/{sid}/photo.png",
        "/api/nothing",
    ],
)
def test_unknown_sample_files_and_routes_are_404(client, path):
    r = client.get(path.format(sid=ROWS[0]["id"]))
    assert_error(r, 404, None)


def test_page_and_static_files_need_no_network(client):
    r = client.get("/")
    assert r.status_code == 200 and "text/html" in r.headers["content-type"]
    assert "/static/studio.js" in r.text and "/static/studio.css" in r.text
    assert "default-src 'self'" in r.headers["content-security-policy"]
    assert client.get("/docs").status_code == 404  # Swagger UI would need a CDN
    for name in ("studio.js", "studio.css"):
        assert client.get(f"/static/{name}").status_code == 200
    static = Path(__file__).resolve().parents[1] / "garment_gen" / "serve" / "static"
    for f in static.iterdir():
        text = f.read_text()
        for needle in ('src="http', 'href="http', "url(http", 'fetch("http', "//cdn", "@import"):
            assert needle not in text, (f.name, needle)


def test_a_model_file_is_served_and_shipped_models_load_on_first_use(gen):
    from garment_gen.inference import pretrained_path

    app = make_app(gen, model=str(pretrained_path("reference")))
    with TestClient(app, raise_server_exceptions=False) as c:
        listed = {m["name"]: m for m in c.get("/api/models").json()["models"]}
        assert set(listed) == {"file:reference", "reference"}
        assert listed["file:reference"]["default"] and listed["file:reference"]["loaded"]
        assert not listed["reference"]["loaded"] and listed["reference"]["resolution"] == 64
        r = c.post("/api/generate", files=ids(ROWS[0], ROWS[1], model="reference"))
        assert r.status_code == 200 and r.headers["x-model"] == "reference"
        assert c.get("/healthz").json()["models"]["reference"]["loaded"] is True
        same = c.post("/api/generate", files=ids(ROWS[0], ROWS[1]))
        assert same.headers["x-model"] == "file:reference"
        assert np.abs(decode(same.content).astype(int) - decode(r.content).astype(int)).max() <= 2


# ----------------------------------------------------------------------------- generate


def test_generate_by_id_matches_offline_generation(client, gen):
    a, b = ROWS[0], ROWS[20]
    r = client.post("/api/generate", files=ids(a, b))
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert r.headers["x-model"] == "reference"
    got = decode(r.content)
    want = offline(gen, ROOT / "masks" / f"{a['id']}.png", ROOT / "images" / f"{b['id']}.png")
    assert got.shape == (64, 64, 3)
    assert np.abs(got.astype(int) - want.astype(int)).max() <= 2


def test_uploads_give_the_same_garment_as_ids(client):
    a, b = ROWS[3], ROWS[40]
    by_id = decode(client.post("/api/generate", files=ids(a, b)).content)
    files = {"shape": ("coat mask.png", mask_bytes(a)), "texture": ("t.png", image_bytes(b))}
    up = client.post("/api/generate", files=files)
    assert up.status_code == 200, up.text
    assert np.abs(decode(up.content).astype(int) - by_id.astype(int)).max() <= 2


def test_shape_from_a_garment_photo_and_a_jpeg_texture(client):
    a, b = ROWS[5], ROWS[30]
    photo = (ROOT / "photos" / f"{a['id']}.png").read_bytes()  # real background: mask is found
    jpeg = io.BytesIO()
    Image.open(io.BytesIO(image_bytes(b))).convert("RGB").save(jpeg, format="JPEG")
    r = client.post(
        "/api/generate", files={"shape": ("p.png", photo), "texture": ("t.jpg", jpeg.getvalue())}
    )
    assert r.status_code == 200, r.text
    assert decode(r.content).shape == (64, 64, 3)


def test_textures_change_the_garment_and_a_drawn_shape_works(client):
    # A canvas drawing: white silhouette on opaque black, RGBA, with soft edges.
    canvas = np.zeros((256, 256, 4), np.uint8)
    canvas[..., 3] = 255
    canvas[40:220, 70:186, :3] = 255
    canvas[40:90, 30:226, :3] = 255  # sleeves
    canvas[39, 70:186, :3] = 128
    drawn = png(canvas)
    outs = []
    for tex in (ROWS[1], ROWS[50]):
        r = client.post(
            "/api/generate",
            files={"shape": ("drawn.png", drawn), "texture_id": (None, tex["id"])},
        )
        assert r.status_code == 200, r.text
        outs.append(decode(r.content).astype(int))
    assert np.abs(outs[0] - outs[1]).mean() > 5  # the texture shows
    other = client.post("/api/generate", files=ids(ROWS[6], ROWS[1]))
    assert np.abs(decode(other.content).astype(int) - outs[0]).mean() > 3  # so does the shape


def test_variations_json(client):
    a, b = ROWS[8], ROWS[16]
    r = client.post("/api/generate", files=ids(a, b, variations=4, seed=7))
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    body = r.json()
    assert body["seed"] == 7 and body["model"] == "reference" and len(body["images"]) == 4
    imgs = [decode(base64.b64decode(s)).astype(int) for s in body["images"]]
    for i in range(4):
        for j in range(i + 1, 4):
            assert np.abs(imgs[i] - imgs[j]).mean() > 0.5
    again = client.post("/api/generate", files=ids(a, b, variations=4, seed=7)).json()
    assert again["images"] == body["images"]  # seeded: reproducible
    unseeded = client.post("/api/generate", files=ids(a, b, variations=2)).json()
    assert isinstance(unseeded["seed"], int)


# ----------------------------------------------------------------------------- grid


def test_grid_json_png_and_zip(client):
    shapes, textures = ROWS[:2], ROWS[10:13]
    fields = [("shape_id", (None, s["id"])) for s in shapes]
    fields += [("texture_id", (None, t["id"])) for t in textures[:2]]
    fields += [("texture", ("my_fabric.png", image_bytes(textures[2])))]
    r = client.post("/api/grid", files=fields)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["shapes"] == [s["label"] for s in shapes]
    assert body["textures"] == [textures[0]["label"], textures[1]["label"], "my_fabric"]
    grid = decode(base64.b64decode(body["grid"]))
    assert grid.shape == (3 * 66 + 2, 4 * 66 + 2, 3)  # (S + 1) x (T + 1) tiles of 64 + 2 px
    zf = zipfile.ZipFile(io.BytesIO(base64.b64decode(body["zip"])))
    cells = sorted(n for n in zf.namelist() if n.startswith("cells/"))
    assert len(cells) == 6 and "grid.png" in zf.namelist()
    cell = decode(zf.read(next(n for n in cells if n.startswith("cells/r2_c1_"))))
    single = decode(client.post("/api/generate", files=ids(shapes[1], textures[0])).content)
    assert np.abs(cell.astype(int) - single.astype(int)).max() <= 2

    raw = client.post("/api/grid", files=fields + [("format", (None, "png"))])
    assert raw.headers["content-type"] == "image/png" and decode(raw.content).shape == grid.shape
    z = client.post("/api/grid", files=fields + [("format", (None, "zip"))])
    assert z.headers["content-type"] == "application/zip"
    assert len(zipfile.ZipFile(io.BytesIO(z.content)).namelist()) == 7


def test_grid_limits(client):
    too_many = [("shape_id", (None, r["id"])) for r in ROWS[:4]] + [
        ("texture_id", (None, ROWS[5]["id"]))
    ]
    assert_error(client.post("/api/grid", files=too_many), 422, "shape", "at most 3")
    bad_format = [("shape_id", (None, ROWS[0]["id"])), ("texture_id", (None, ROWS[1]["id"]))]
    assert_error(
        client.post("/api/grid", files=bad_format + [("format", (None, "gif"))]), 422, "format"
    )
    empty = [("shape_id", (None, ROWS[0]["id"])), ("texture", ("x.png", b""))]
    assert_error(client.post("/api/grid", files=empty), 422, "texture[0]", "empty")


# ----------------------------------------------------------------------------- bad input


def _bad_cases():
    a, b = ROWS[0], ROWS[1]
    real = image_bytes(b)
    black = png(np.zeros((64, 64), np.uint8))
    white = png(np.full((64, 64), 255, np.uint8))
    big = b"\x89PNG" + b"\0" * 600_000  # over the 0.5 MB test limit
    tex = ("texture_id", (None, b["id"]))
    shp = ("shape_id", (None, a["id"]))
    return [
        ("over size limit", [("shape", ("m.png", big)), tex], 413, "shape", "limit"),
        (
            "bomb header",
            [shp, ("texture", ("t.png", png_claiming(3000, 3000)))],
            413,
            "texture",
            "9,000,000",
        ),
        (
            "huge bomb",
            [shp, ("texture", ("t.png", png_claiming(40000, 40000)))],
            413,
            "texture",
            "1,600,000,000 pixels, over the limit of 4,000,000",
        ),
        (
            "not an image",
            [shp, ("texture", ("t.png", b"hello, I am text"))],
            422,
            "texture",
            "not a readable image",
        ),
        ("empty file", [("shape", ("m.png", b"")), tex], 422, "shape", "empty"),
        (
            "truncated",
            [shp, ("texture", ("t.png", real[: len(real) // 2]))],
            422,
            "texture",
            "truncated",
        ),
        (
            "tiny image",
            [("shape", ("m.png", png(np.zeros((4, 4), np.uint8)))), tex],
            422,
            "shape",
            "4x4",
        ),
        ("no garment", [("shape", ("m.png", black)), tex], 422, "shape", "no garment"),
        ("all garment", [("shape", ("m.png", white)), tex], 422, "shape", "all garment"),
        (
            "unknown model",
            [shp, tex, ("model", (None, "nope"))],
            422,
            "model",
            "available: reference",
        ),
        (
            "unknown sample",
            [("shape_id", (None, "../../etc/passwd")), tex],
            422,
            "shape_id",
            "no sample",
        ),
        ("missing shape", [tex], 422, "shape", "missing"),
        (
            "truncation text",
            [shp, tex, ("truncation", (None, "lots"))],
            422,
            "truncation",
            "not a number",
        ),
        ("truncation range", [shp, tex, ("truncation", (None, "3"))], 422, "truncation", "between"),
        ("negative seed", [shp, tex, ("seed", (None, "-1"))], 422, "seed", "between"),
        (
            "too many variations",
            [shp, tex, ("variations", (None, "99"))],
            422,
            "variations",
            "between",
        ),
    ]


@pytest.mark.parametrize(
    "name,fields,status,field,word", _bad_cases(), ids=[c[0] for c in _bad_cases()]
)
def test_bad_inputs_get_a_4xx_and_one_line(client, name, fields, status, field, word):
    r = client.post("/api/generate", files=fields)
    assert_error(r, status, field, word)


def test_bad_requests_outside_the_form(client):
    assert_error(client.post("/api/generate", json={"shape_id": "x"}), 415, None, "multipart")
    r = client.post(
        "/api/generate",
        content=b"--xyz\r\nthis is not a multipart body",
        headers={"content-type": "multipart/form-data; boundary=xyz"},
    )
    assert 400 <= r.status_code < 500 and "error" in r.json()
    huge = client.post(
        "/api/generate",
        content=b"0" * 10,
        headers={
            "content-type": "multipart/form-data; boundary=xyz",
            "content-length": "999999999",
        },
    )
    assert_error(huge, 413, None, "body")
    assert_error(client.get("/api/generate"), 405, None)
    # urlencoded forms (ids only) work like multipart
    ok = client.post("/api/generate", data={"shape_id": ROWS[0]["id"], "texture_id": ROWS[1]["id"]})
    assert ok.status_code == 200
    assert client.get("/healthz").json()["status"] == "ok"  # still up


# ----------------------------------------------------------------------------- queue, limits


def test_queue_bound_answers_503(gen):
    app = make_app(gen, max_queue=2, max_batch=1)
    tex = ROWS[1]

    async def go(c, studio):
        slow_batches(studio, 0.4)
        reqs = [c.post("/api/generate", files=ids(ROWS[k], tex)) for k in range(8)]
        return await asyncio.gather(*reqs)

    rs = run_async(app, go)
    codes = sorted(r.status_code for r in rs)
    assert set(codes) == {200, 503}, codes
    busy = next(r for r in rs if r.status_code == 503)
    assert_error(busy, 503, None, "busy")
    assert busy.headers["retry-after"] == "1"


def test_requests_in_flight_are_bounded(gen):
    app = make_app(gen, max_inflight=1)

    async def go(c, studio):
        slow_batches(studio, 0.4)
        return await asyncio.gather(
            *(c.post("/api/generate", files=ids(ROWS[k], ROWS[2])) for k in range(3))
        )

    codes = sorted(r.status_code for r in run_async(app, go))
    assert codes[0] == 200 and codes[-1] == 503, codes


def test_time_limit_answers_504_and_the_service_recovers(gen):
    app = make_app(gen, request_timeout_s=0.3)

    async def go(c, studio):
        slot = studio.slots[studio.default]
        inner = slot.queue.run_batch
        slow_batches(studio, 1.0)
        late = await c.post("/api/generate", files=ids(ROWS[0], ROWS[1]))
        slot.queue.run_batch = inner
        await asyncio.sleep(0.9)  # the slow pass ends
        again = await c.post("/api/generate", files=ids(ROWS[0], ROWS[1]))
        return late, again

    late, again = run_async(app, go)
    assert_error(late, 504, None, "longer than 0.3 s")
    assert again.status_code == 200


def test_concurrent_requests_share_one_forward_pass(gen):
    app = make_app(gen, max_wait_ms=20)
    pairs = [(ROWS[k], ROWS[k + 20]) for k in range(8)]

    async def go(c, studio):
        slow_batches(studio, 0.3)  # while the first pass runs, the others queue up
        rs = await asyncio.gather(*(c.post("/api/generate", files=ids(a, b)) for a, b in pairs))
        return rs, dict(vars(studio.slots[studio.default].queue.stats))

    rs, stats = run_async(app, go)
    assert all(r.status_code == 200 for r in rs)
    assert stats["largest_batch"] >= 4 and stats["batches"] < len(pairs), stats
    for (a, b), r in zip(pairs, rs, strict=True):  # batched results = one-by-one results
        want = offline(gen, ROOT / "masks" / f"{a['id']}.png", ROOT / "images" / f"{b['id']}.png")
        assert np.abs(decode(r.content).astype(int) - want.astype(int)).max() <= 3


def test_batch_queue_groups_by_key_and_isolates_failures():
    calls = []

    def run(key, payloads):
        calls.append((key, list(payloads)))
        time.sleep(0.05)
        if key == "bad":
            raise ValueError("boom")
        return [p * 10 for p in payloads]

    async def main():
        q = BatchQueue(run, max_batch=4, max_wait_ms=5, max_pending=6)
        q.start()
        first = asyncio.ensure_future(q.submit("a", 0))
        await asyncio.sleep(0.01)  # the worker is busy with it
        futs = [asyncio.ensure_future(q.submit(k, i)) for i, k in enumerate("aabab", start=1)]
        bad = asyncio.ensure_future(q.submit("bad", 9))
        await asyncio.sleep(0)
        with pytest.raises(QueueFullError):
            await q.submit("a", 99)
        results = await asyncio.gather(first, *futs, return_exceptions=True)
        with pytest.raises(ValueError, match="boom"):
            await bad
        await q.close()
        return results, q.stats

    results, stats = asyncio.run(main())
    assert results == [0, 10, 20, 30, 40, 50]
    key_of = {0: "a", 1: "a", 2: "a", 3: "b", 4: "a", 5: "b", 9: "bad"}
    assert all({key_of[p] for p in payloads} == {key} for key, payloads in calls)
    assert max(len(p) for _, p in calls) <= 4  # max_batch
    assert ("a", [1, 2, 4]) in calls  # the waiting a's ran together, in order
    assert stats.rejected == 1 and stats.largest_batch >= 2


# ----------------------------------------------------------------------------- variations


def test_variations_keep_shape_and_colours_and_vary_detail(gen):
    r = ROWS[12]
    mask = gen.shape_tensor(ROOT / "masks" / f"{r['id']}.png")
    tex = gen.texture_tensor(ROOT / "images" / f"{r['id']}.png")
    base = gen.generate_tensors(mask, tex)
    v = generate_variations(gen, mask, tex, n=4, seed=1)
    assert v.shape == (4, 3, 64, 64) and v.min() >= -1 and v.max() <= 1
    pair = [(v[i] - v[j]).abs().mean().item() for i in range(4) for j in range(i + 1, 4)]
    assert min(pair) > 0.01  # details differ
    m = mask[0, 0].bool()

    def colour_shift(imgs):
        return max((im[:, m].mean(1) - base[0][:, m].mean(1)).abs().max().item() for im in imgs)

    assert colour_shift(v) < 0.06  # colours stay
    free = generate_variations(gen, mask, tex, n=4, seed=1, keep_colours=False)
    assert colour_shift(free) > colour_shift(v)
    garment = (1 - v).abs().amax(1) > 0.25  # pixels that are not white background
    inside = garment[:, m].float().mean().item()
    outside = garment[:, ~m].float().mean().item()
    assert inside > 0.8 and outside < 0.1  # the silhouette stays
    assert torch.equal(generate_variations(gen, mask, tex, n=4, seed=1), v)
    assert not torch.equal(generate_variations(gen, mask, tex, n=4, seed=2), v)


def test_fine_style_mixing_touches_only_the_fine_rows(gen):
    ws = torch.randn(1, 10, 8)
    rng = torch.Generator().manual_seed(0)
    mixed = mix_fine_styles(ws, None, 8, n=3, fine_layers=3, strength=0.5, generator=rng)
    assert mixed.shape == (3, 10, 8)
    assert torch.equal(mixed[:, :6], ws.expand(3, -1, -1)[:, :6])  # coarse rows kept
    assert torch.equal(mixed[:, 9], ws.expand(3, -1, -1)[:, 9])  # the last row (colours) kept
    assert (mixed[:, 6:9] - ws[:, 6:9]).abs().amin() > 0
    assert not torch.equal(mixed[0], mixed[1])


# ----------------------------------------------------------------------------- the command


def test_cli_refuses_an_unknown_model_in_one_line(monkeypatch, capsys):
    from hydra.core.global_hydra import GlobalHydra

    from garment_gen.serve.__main__ import main

    monkeypatch.setattr(sys, "argv", ["garment_gen.serve", "model=pretrained:nope"])
    try:
        with pytest.raises(SystemExit) as exit_info:
            main()
    finally:
        GlobalHydra.instance().clear()
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "no pretrained garment model 'nope'" in err
    assert len(err.splitlines()) == 1 and "Traceback" not in err


def test_device_cuda_without_cuda_is_a_clear_error():
    from garment_gen.errors import GarmentGenError

    if torch.cuda.is_available():  # a GPU machine: the model lands on it
        app = create_app(ServeSettings(device="cuda"))
        assert app.state.studio.slots["reference"].gen.device.type == "cuda"
        return
    with pytest.raises(GarmentGenError, match="CUDA is not available"):
        create_app(ServeSettings(device="cuda"))


def test_a_busy_port_is_a_clear_error():
    from garment_gen.errors import GarmentGenError
    from garment_gen.serve.app import run_server

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(GarmentGenError, match=f"cannot listen on 127.0.0.1:{port}"):
            run_server(ServeSettings(port=port))
