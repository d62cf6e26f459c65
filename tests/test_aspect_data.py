"""Portrait (3:4) frames on the data side: aspect parsing, alignment, prepare, dataset, CLI."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from garment_gen import prepare as prep
from garment_gen.data.align import align_garment
from garment_gen.data.aspect import frame_size, parse_aspect
from garment_gen.data.datamodule import GarmentDataModule
from garment_gen.data.dataset import GarmentDataset
from garment_gen.data.occlusion import TextureConfig, make_texture
from garment_gen.errors import GarmentGenError
from garment_gen.prepare import PrepareConfig, check_settings, prepare
from tests.conftest import garment_photo, tree_digest, write_photo_folder

MARGIN = 0.06


def cfg(inp: Path, out: Path, **kw) -> PrepareConfig:
    return PrepareConfig(
        input_dir=str(inp),
        output_dir=str(out),
        resolution=kw.pop("resolution", 64),
        workers=1,
        **kw,
    )


def box_photo(h: int, w: int, box_h: int, box_w: int) -> tuple[np.ndarray, np.ndarray]:
    """A flat-coloured rectangular 'garment' ``box_h`` x ``box_w`` centred in an ``h`` x ``w`` photo."""
    mask = np.zeros((h, w), np.uint8)
    t, l_ = (h - box_h) // 2, (w - box_w) // 2
    mask[t : t + box_h, l_ : l_ + box_w] = 255
    img = np.full((h, w, 3), 230, np.uint8)
    img[mask > 0] = (40, 90, 160)
    return img, mask


def extent(mask: np.ndarray) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(mask)
    return int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1


# ---------------------------------------------------------------- aspect


def test_parse_aspect_and_frame_size():
    assert parse_aspect("1:1") == (1, 1) and parse_aspect("3:4") == (3, 4)
    assert frame_size(64, "1:1") == (64, 64)
    assert frame_size(64, "3:4") == (64, 48) and frame_size(128, "3:4") == (128, 96)
    assert frame_size(8, "3:4") == (8, 6)
    for bad in ("2:3", "4:3", "abc", "0:1", "", "3:4:5", None, 1):
        with pytest.raises(ValueError, match="must be one of 1:1, 3:4"):
            parse_aspect(bad)


@pytest.mark.parametrize("bad", ["2:3", "4:3", "abc", "0:1", 3])
def test_check_settings_names_aspect(bad, tmp_path: Path):
    with pytest.raises(GarmentGenError) as err:
        check_settings(cfg(tmp_path, tmp_path / "o", aspect=bad))
    assert str(err.value) == f"aspect={bad}: must be one of 1:1, 3:4"


# ---------------------------------------------------------------- align


def square_reference(image, mask, resolution, margin, background):
    """The square alignment every dataset was prepared with before aspects (kept as the oracle)."""
    ys, xs = np.nonzero(mask)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    side = int(np.ceil(max(y1 - y0, x1 - x0) * (1 + 2 * margin)))
    top = int(round((y0 + y1) / 2.0 - side / 2.0))
    left = int(round((x0 + x1) / 2.0 - side / 2.0))
    h, w = mask.shape
    pads = (max(0, -top), max(0, top + side - h), max(0, -left), max(0, left + side - w))
    alpha = (mask > 0).astype(np.float32)[..., None]
    comp = (image * alpha + np.float32(background) * (1 - alpha)).round().astype(np.uint8)

    def crop(arr, mode, value):
        if any(pads):
            arr = cv2.copyMakeBorder(arr, *pads, mode, value=value)
        return arr[top + pads[0] : top + pads[0] + side, left + pads[2] : left + pads[2] + side]

    def resize(arr):
        interp = cv2.INTER_AREA if arr.shape[0] > resolution else cv2.INTER_CUBIC
        return cv2.resize(arr, (resolution, resolution), interpolation=interp)

    m = resize(crop((mask > 0).astype(np.uint8) * 255, cv2.BORDER_CONSTANT, 0).astype(np.float32))
    m = (m >= 127.5).astype(np.uint8) * 255
    img = resize(crop(comp, cv2.BORDER_CONSTANT, tuple(background)))
    img[m == 0] = background
    return img, m, resize(crop(image, cv2.BORDER_REFLECT_101, 0))


@pytest.mark.parametrize(
    ("seed", "h", "w"), [(0, 300, 200), (1, 180, 260), (2, 90, 70), (3, 400, 400)]
)
def test_align_square_is_unchanged(seed: int, h: int, w: int):
    img, mask = garment_photo(h, w, seed=seed)
    if seed == 1:  # garment cut by the photo's edge: the crop needs padding
        img, mask = np.ascontiguousarray(img[:, 60:]), np.ascontiguousarray(mask[:, 60:])
    for resolution, margin, bg in ((64, MARGIN, (255, 255, 255)), (32, 0.2, (250, 240, 230))):
        a = align_garment(img, mask, resolution, margin, bg)
        b = align_garment(img, mask, resolution, margin, bg, aspect="1:1")
        ref = square_reference(img, mask, resolution, margin, bg)
        for got in (a, b):
            for arr, want in zip((got.image, got.mask, got.photo), ref, strict=True):
                assert np.array_equal(arr, want)


@pytest.mark.parametrize(("box_h", "box_w", "tall"), [(240, 70, True), (90, 220, False)])
def test_align_portrait_fits_the_garment(box_h: int, box_w: int, tall: bool):
    img, mask = box_photo(300, 300, box_h, box_w)
    a = align_garment(img, mask, 64, MARGIN, aspect="3:4")
    assert a.image.shape == (64, 48, 3) and a.photo.shape == (64, 48, 3)
    assert a.mask.shape == (64, 48) and set(np.unique(a.mask)) <= {0, 255}
    assert (a.image[a.mask == 0] == 255).all()
    y0, y1, x0, x1 = extent(a.mask)
    side = 64 if tall else 48  # the frame side the garment's long side fills
    lo, hi = (y0, y1) if tall else (x0, x1)
    assert abs((hi - lo) / side - 1 / (1 + 2 * MARGIN)) < 0.04  # spans 1/(1+2*margin)
    pad = side * MARGIN / (1 + 2 * MARGIN)  # the margin left on both sides, in output pixels
    assert abs(lo - pad) <= 1 and abs(side - hi - pad) <= 1
    # The other direction has background on both sides, equally (centred).
    lo2, hi2, other = (x0, x1, 48) if tall else (y0, y1, 64)
    assert lo2 > pad + 2 and abs(lo2 - (other - hi2)) <= 1
    # A portrait frame wastes less of itself on padding than a square one for a tall garment.
    sq = align_garment(img, mask, 64, MARGIN)
    if tall:
        assert (a.mask > 0).mean() > (sq.mask > 0).mean() * 1.2


def test_align_portrait_garment_at_photo_edge():
    img, mask = garment_photo(240, 180, seed=3)
    img, mask = np.ascontiguousarray(img[:150]), np.ascontiguousarray(mask[:150])
    a = align_garment(img, mask, 32, MARGIN, aspect="3:4")
    assert a.image.shape == (32, 24, 3) and a.mask.any()


# ---------------------------------------------------------------- prepare


@pytest.fixture(scope="module")
def portrait(tmp_path_factory) -> tuple[Path, Path]:
    """(photo folder, dataset prepared from it at 64 px, aspect 3:4)."""
    root = tmp_path_factory.mktemp("portrait")
    inp = write_photo_folder(root / "in", {"train": 4, "validation": 2, "test": 1})
    out = root / "out"
    prepare(cfg(inp, out, aspect="3:4"))
    return inp, out


def test_prepare_portrait_end_to_end(portrait, tmp_path: Path):
    inp, out = portrait
    meta = json.loads((out / "dataset.json").read_text())
    assert (meta["aspect"], meta["resolution"], meta["height"], meta["width"]) == (
        "3:4",
        64,
        64,
        48,
    )
    assert meta["settings"]["aspect"] == "3:4"
    assert meta["stats"]["prepared"] == 7 and 0.2 < meta["stats"]["garment_share"] < 0.9
    assert "garment share of the frame" in (out / "report.txt").read_text()
    for sid in (r.stem for r in (out / "images").glob("*.png")):
        assert np.asarray(Image.open(out / "images" / f"{sid}.png")).shape == (64, 48, 3)
        assert np.asarray(Image.open(out / "masks" / f"{sid}.png")).shape == (64, 48)
        assert np.asarray(Image.open(out / "photos" / f"{sid}.png")).shape == (64, 48, 3)
    before, inputs = tree_digest(out), tree_digest(inp)
    prepare(cfg(inp, out, aspect="3:4"))  # same inputs and settings: nothing to do
    assert tree_digest(out) == before and tree_digest(inp) == inputs
    with pytest.raises(GarmentGenError, match="different prepared dataset"):
        prepare(cfg(inp, out))  # a square dataset is a different dataset
    assert tree_digest(out) == before
    square = tmp_path / "square"
    prepare(cfg(inp, square))
    meta_sq = json.loads((square / "dataset.json").read_text())
    assert (meta_sq["aspect"], meta_sq["height"], meta_sq["width"]) == ("1:1", 64, 64)
    assert "aspect" not in meta_sq["settings"] and meta_sq["fingerprint"] != meta["fingerprint"]
    # T-shirts are wider than 3:4: the portrait frame has more background above and below.
    assert meta_sq["stats"]["garment_share"] > meta["stats"]["garment_share"]


def old_fingerprint(c: PrepareConfig, tasks, ignored) -> str:
    """The fingerprint as computed before ``aspect`` existed (no mask_dir / segmenter here)."""
    keys = "resolution margin background min_area max_area max_pixels val_fraction test_fraction"
    settings = {k: getattr(c, k) for k in (*keys.split(), "seed", "max_per_group", "grabcut_size")}
    settings["background"] = list(c.background)
    h = hashlib.sha256(prep.DATASET_FORMAT.encode())
    h.update(json.dumps(settings, sort_keys=True).encode())
    for t in tasks:
        h.update(f"{t.rel}\0{t.sha256}\0{t.split}\0{t.label}\n".encode())
    for r in ignored:
        h.update(f"ignored:{r['source_path']}\n".encode())
    return h.hexdigest()


def test_square_fingerprint_is_unchanged(portrait, tmp_path: Path):
    inp, _ = portrait
    c = cfg(inp, tmp_path / "o")
    assert c.aspect == "1:1" and "aspect" not in c.fingerprint_settings()
    tasks, ignored = prep.scan_inputs(c)
    assert prep._fingerprint(c, tasks, ignored) == old_fingerprint(c, tasks, ignored)
    c.aspect = "3:4"
    assert prep._fingerprint(c, tasks, ignored) != old_fingerprint(c, tasks, ignored)


def test_bundled_sample_fingerprint_still_matches(sample_root):
    """The bundled sample stays up to date: its own inputs give its recorded fingerprint."""
    meta = json.loads((sample_root / "dataset.json").read_text())
    if not Path(meta["input_dir"]).is_dir():
        pytest.skip(f"the sample's photos are not here ({meta['input_dir']})")
    settings = dict(meta["settings"], background=tuple(meta["settings"]["background"]))
    c = PrepareConfig(input_dir=meta["input_dir"], output_dir="/nonexistent/out", **settings)
    tasks, ignored = prep.scan_inputs(c)
    assert prep._fingerprint(c, tasks, ignored) == meta["fingerprint"]


def test_cli_rejects_an_odd_aspect_in_one_line(tmp_path: Path):
    inp = tmp_path / "in"
    inp.mkdir()
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "garment_gen.prepare",
            f"input_dir={inp}",
            f"output_dir={tmp_path / 'out'}",
            "aspect=2:3",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 2
    err = res.stderr.strip().splitlines()
    assert len(err) == 1 and "aspect=2:3" in err[0] and "1:1, 3:4" in err[0], res.stderr
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- dataset / datamodule


def test_datamodule_portrait_batches(portrait):
    _, out = portrait
    dm = GarmentDataModule(root=out, batch_size=2, num_workers=0)
    assert (dm.aspect, dm.resolution, dm.height, dm.width) == ("3:4", 64, 64, 48)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    for key in ("image", "texture", "photo"):
        assert batch[key].shape == (2, 3, 64, 48)
    assert batch["mask"].shape == (2, 1, 64, 48)
    val = next(iter(dm.val_dataloader()))
    assert val["texture"].shape == (2, 3, 64, 48)
    item = dm.datasets["validation"][0]
    assert torch.all(item["image"][:, item["mask"][0] == 0] == 1.0)  # background exact
    small = GarmentDataModule(root=out, resolution=32, batch_size=2, num_workers=0)
    assert (small.height, small.width) == (32, 24)
    small.setup("fit")
    b = next(iter(small.train_dataloader()))
    assert b["image"].shape == (2, 3, 32, 24) and b["mask"].shape == (2, 1, 32, 24)
    assert set(b["mask"].unique().tolist()) <= {0.0, 1.0}
    assert GarmentDataset(out, "train").describe()["width"] == 48


def test_make_texture_on_portrait_frames(portrait):
    _, out = portrait
    image, mask, _ = GarmentDataset(out, "train").load(0)
    assert image.shape == (64, 48, 3)
    always = TextureConfig(p_occlude=1.0, p_crop=1.0, p_zoom=1.0)
    for seed in range(8):
        for c in (always, TextureConfig()):
            tex = make_texture(image, mask, np.random.default_rng(seed), c)
            assert tex.shape == (64, 48, 3) and tex.dtype == np.uint8
    assert not np.array_equal(make_texture(image, mask, np.random.default_rng(0), always), image)


def test_dataset_without_aspect_is_square_and_odd_aspect_named(sample_root, tmp_path: Path):
    dm = GarmentDataModule(num_workers=0)  # the bundled sample predates aspects
    assert (dm.aspect, dm.height, dm.width) == ("1:1", 64, 64)
    (tmp_path / "manifest.csv").write_text((sample_root / "manifest.csv").read_text())
    meta = json.loads((sample_root / "dataset.json").read_text())
    (tmp_path / "dataset.json").write_text(json.dumps(dict(meta, aspect="16:9")))
    with pytest.raises(GarmentGenError, match=r"aspect=16:9: must be one of 1:1, 3:4"):
        GarmentDataModule(root=tmp_path)
