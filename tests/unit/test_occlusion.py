"""Texture images: occlusion really occludes, crops keep part of the garment, seeds repeat."""

from __future__ import annotations

import numpy as np
import pytest

from garment_gen.data.align import align_garment
from garment_gen.data.occlusion import TextureConfig, crop_region, make_texture, occlude
from tests.conftest import garment_photo


@pytest.fixture
def aligned():
    img, mask = garment_photo(seed=2)
    a = align_garment(img, mask, 64)
    return a.image, a.mask


@pytest.mark.parametrize("seed", range(8))
def test_occlusion_hides_requested_share(aligned, seed):
    image, mask = aligned
    cfg = TextureConfig(min_share=0.2, max_share=0.3, max_occluders=20)
    out, covered = occlude(image, mask, np.random.default_rng(seed), cfg)
    garment = mask > 0
    share = ((covered > 0) & garment).sum() / garment.sum()
    assert share >= 0.2
    changed = (np.abs(out.astype(int) - image.astype(int)).sum(-1) > 0) & garment
    # Occluders may coincide with garment colours on a few pixels, never on most.
    assert changed.sum() >= 0.7 * ((covered > 0) & garment).sum()
    assert (out[covered == 0] == image[covered == 0]).all()  # nothing outside the occluders changes


def test_occlusion_arms_only_and_blocks_only(aligned):
    image, mask = aligned
    for p_arm in (0.0, 1.0):
        cfg = TextureConfig(min_share=0.15, max_share=0.15, p_arm=p_arm, max_occluders=20)
        out, covered = occlude(image, mask, np.random.default_rng(0), cfg)
        assert ((covered > 0) & (mask > 0)).sum() / (mask > 0).sum() >= 0.15


def test_crop_keeps_only_part_of_garment(aligned):
    image, mask = aligned
    cfg = TextureConfig(p_zoom=0.0, crop_min_share=0.3, crop_max_share=0.5)
    out = crop_region(image, mask, np.random.default_rng(1), cfg)
    kept = (out != 255).any(-1)
    garment_pixels = (mask > 0) & (image != 255).any(-1)
    assert kept.sum() < 0.8 * garment_pixels.sum()
    assert kept.sum() > 0.1 * garment_pixels.sum()
    assert not (kept & (mask == 0)).any()  # a crop never invents pixels outside the garment


def test_zoomed_crop_fills_frame(aligned):
    image, mask = aligned
    cfg = TextureConfig(p_zoom=1.0, crop_min_share=0.3, crop_max_share=0.3)
    out = crop_region(image, mask, np.random.default_rng(4), cfg)
    assert out.shape == image.shape
    ys, xs = np.nonzero((out != 255).any(-1))
    assert max(np.ptp(ys), np.ptp(xs)) >= 0.6 * image.shape[0]


def test_make_texture_deterministic_and_varied(aligned):
    image, mask = aligned
    cfg = TextureConfig()
    a = make_texture(image, mask, np.random.default_rng(7), cfg)
    b = make_texture(image, mask, np.random.default_rng(7), cfg)
    c = make_texture(image, mask, np.random.default_rng(8), cfg)
    assert a.dtype == np.uint8 and a.shape == image.shape
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert (
        make_texture(image, mask, np.random.default_rng(0), TextureConfig(p_occlude=0, p_crop=0))
        is not image
    )


def test_bad_texture_config():
    with pytest.raises(ValueError, match="min_share"):
        TextureConfig(min_share=0.5, max_share=0.2)
