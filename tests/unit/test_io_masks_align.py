"""Reading photos, making masks, aligning garments."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from garment_gen.data.align import align_garment
from garment_gen.data.io import load_gray, load_rgb
from garment_gen.data.masks import (
    MaskCheck,
    border_is_plain,
    classical_mask,
    grabcut_mask,
    load_mask_file,
    plain_background_mask,
)
from garment_gen.errors import BadInputError
from tests.conftest import garment_photo


def iou(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a > 0, b > 0
    return float((a & b).sum() / max(1, (a | b).sum()))


# ---------------------------------------------------------------- io


def test_zero_byte_file(tmp_path: Path):
    p = tmp_path / "empty.jpg"
    p.write_bytes(b"")
    with pytest.raises(BadInputError, match="empty file") as e:
        load_rgb(p)
    assert e.value.path == str(p) and e.value.code == "empty_file"


def test_non_image_file(tmp_path: Path):
    p = tmp_path / "notes.png"
    p.write_text("this is text")
    with pytest.raises(BadInputError, match="not a readable image") as e:
        load_rgb(p)
    assert str(p) in str(e.value)


def test_truncated_jpeg(tmp_path: Path):
    img, _ = garment_photo()
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=95)
    p = tmp_path / "trunc.jpg"
    p.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(BadInputError, match="truncated") as e:
        load_rgb(p)
    assert e.value.code == "corrupt"


def test_decompression_bomb_rejected_before_decoding(tmp_path: Path):
    p = tmp_path / "bomb.png"
    Image.new("1", (6000, 6000)).save(p)  # tiny file, 36 Mpx
    assert p.stat().st_size < 100_000
    with pytest.raises(BadInputError, match="over the limit") as e:
        load_rgb(p, max_pixels=10_000_000)
    assert e.value.code == "too_large"


def test_exif_orientation_applied(tmp_path: Path):
    img = np.zeros((20, 40, 3), np.uint8)
    img[:, :20] = 255  # left half white
    pil = Image.fromarray(img)
    exif = pil.getexif()
    exif[0x0112] = 6  # rotate 90 CW on display
    p = tmp_path / "rot.jpg"
    pil.save(p, exif=exif, quality=100)
    out = load_rgb(p)
    assert out.shape == (40, 20, 3)
    assert out[:20].mean() > 200 and out[20:].mean() < 50  # white half now on top


def test_rgba_composited_on_white_and_gray_converted(tmp_path: Path):
    rgba = np.zeros((16, 16, 4), np.uint8)
    rgba[..., 0] = 255
    rgba[:8, :, 3] = 255  # top opaque red, bottom transparent
    p = tmp_path / "a.png"
    Image.fromarray(rgba, "RGBA").save(p)
    out = load_rgb(p)
    assert out.shape == (16, 16, 3)
    assert (out[:8] == [255, 0, 0]).all() and (out[8:] == 255).all()
    g = tmp_path / "g.png"
    Image.fromarray(np.full((10, 12), 77, np.uint8), "L").save(g)
    assert load_rgb(g).shape == (10, 12, 3) and (load_rgb(g) == 77).all()
    assert load_gray(g).shape == (10, 12)


# ---------------------------------------------------------------- masks


def test_plain_background_mask_matches_truth():
    img, truth = garment_photo(background="plain")
    assert border_is_plain(img)
    mask = plain_background_mask(img)
    assert set(np.unique(mask)) <= {0, 255}
    assert iou(mask, truth) > 0.95


def test_grabcut_on_textured_background():
    img, truth = garment_photo(background="wood", seed=3)
    assert not border_is_plain(img)
    mask = grabcut_mask(img, long_side=160)
    assert iou(mask, truth) > 0.85
    mask2, method = classical_mask(img, work_size=160)
    assert method == "grabcut" and iou(mask2, truth) > 0.85


def test_real_photos_bootstrap_masks_are_plausible():
    photos = sorted((Path(__file__).parents[1] / "assets" / "photos").glob("*.jpg"))
    assert len(photos) >= 3
    check = MaskCheck()
    for p in photos:
        mask, _ = classical_mask(load_rgb(p), work_size=160)
        area = check(mask, p, "grabcut")
        assert 0.1 < area < 0.9


def test_mask_file_wrong_size(tmp_path: Path):
    p = tmp_path / "m.png"
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(p)
    with pytest.raises(BadInputError, match="does not match|but its image is") as e:
        load_mask_file(p, (20, 10))
    assert e.value.code == "bad_mask"


def test_mask_file_not_binary(tmp_path: Path):
    p = tmp_path / "m.png"
    grad = np.tile(np.linspace(0, 255, 50).astype(np.uint8), (40, 1))
    Image.fromarray(grad).save(p)
    with pytest.raises(BadInputError, match="not binary"):
        load_mask_file(p, (40, 50))


def test_mask_file_jpeg_noise_accepted(tmp_path: Path):
    _, truth = garment_photo()
    p = tmp_path / "m.jpg"
    Image.fromarray(truth).save(p, quality=75)
    mask = load_mask_file(p, truth.shape)
    assert set(np.unique(mask)) <= {0, 255} and iou(mask, truth) > 0.97


def test_mask_check_rejects_empty_and_full():
    check = MaskCheck(0.1, 0.9)
    with pytest.raises(BadInputError, match="no garment detected"):
        check(np.zeros((10, 10), np.uint8), "x.jpg", "grabcut")
    with pytest.raises(BadInputError, match="almost the whole"):
        check(np.full((10, 10), 255, np.uint8), "x.jpg", "grabcut")


# ---------------------------------------------------------------- align


@pytest.mark.parametrize("resolution", [32, 64, 128])
def test_align_square_scale_normalised(resolution: int):
    img, mask = garment_photo(h=300, w=200)
    a = align_garment(img, mask, resolution, margin=0.1)
    assert a.image.shape == (resolution, resolution, 3) and a.image.dtype == np.uint8
    assert a.mask.shape == (resolution, resolution) and set(np.unique(a.mask)) <= {0, 255}
    assert a.photo.shape == (resolution, resolution, 3)
    ys, xs = np.nonzero(a.mask)
    longest = max(ys.max() - ys.min() + 1, xs.max() - xs.min() + 1)
    assert abs(longest / resolution - 1 / 1.2) < 0.06  # garment spans 1/(1+2*margin)
    assert (a.image[a.mask == 0] == 255).all()  # plain background exactly


def test_align_same_garment_at_two_scales_matches():
    img, mask = garment_photo(h=400, w=300, seed=1)
    small = np.ascontiguousarray(img[::2, ::2])
    a = align_garment(img, mask, 64)
    b = align_garment(small, np.ascontiguousarray(mask[::2, ::2]), 64)
    assert iou(a.mask, b.mask) > 0.9


# ---------------------------------------------------------------- odd files


def test_16bit_grey_png_is_scaled_not_clipped(tmp_path: Path):
    img, _ = garment_photo(seed=2)
    grey = img.mean(2).round().astype(np.uint8)
    p = tmp_path / "grey16.png"
    Image.fromarray(grey.astype(np.uint16) * 257).save(p)  # full 16-bit range
    assert Image.open(p).mode == "I;16"
    rgb = load_rgb(p)
    assert rgb.dtype == np.uint8 and np.abs(rgb.astype(int) - grey[..., None]).max() <= 1
    assert np.abs(load_gray(p).astype(int) - grey).max() <= 1


def test_float_and_int32_images_are_scaled():
    from garment_gen.data.io import _to_8bit

    ramp = np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8)
    out = np.asarray(_to_8bit(Image.fromarray(ramp, "F")))
    assert out.dtype == np.uint8 and out.min() == 0 and out.max() == 255
    wide = Image.fromarray((ramp * 65535).astype(np.int32), "I")
    assert np.asarray(_to_8bit(wide)).max() == 255


def test_thin_image_rejected_with_a_clear_reason(tmp_path: Path):
    p = tmp_path / "thin.png"
    Image.fromarray(np.full((12, 4000, 3), 90, np.uint8)).save(p)
    with pytest.raises(BadInputError, match="image too thin: 4000x12 px") as e:
        load_rgb(p)
    assert e.value.code == "too_thin"


def test_unreadable_mask_file_is_a_bad_mask_naming_the_mask(tmp_path: Path):
    p = tmp_path / "m.png"
    p.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(BadInputError, match="unreadable mask file") as e:
        load_mask_file(p, (20, 10))
    assert e.value.code == "bad_mask" and e.value.path == str(p)
