"""ReconstructionLoss: identities, weighted totals, skipped networks, a frozen segmenter."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from garment_gen.losses import reconstruction
from garment_gen.losses.reconstruction import ReconstructionLoss, l2_loss, shape_l1_loss

SIZE = 32


class FakeLPIPS(nn.Module):
    """Cheap stand-in for LPIPSLoss: per-sample mean absolute difference, ``[B]``."""

    def __init__(self, net: str = "alex") -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return (x - y).abs().flatten(1).mean(1)


class FakeSegmenter(nn.Module):
    """``logits = gain * red channel``: an image whose red channel is ``2 * mask - 1`` segments to ``mask``.

    Holds a BatchNorm and a Dropout so that train mode would visibly change it.
    """

    def __init__(self, gain: float = 40.0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 1, 1)
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.weight[0, 0] = gain
            self.conv.bias.zero_()
        self.norm = nn.BatchNorm2d(1, affine=False)  # identity in eval (fresh running stats)
        self.drop = nn.Dropout(0.5)

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        return self.drop(self.norm(self.conv(img)))


@pytest.fixture
def fake_lpips(monkeypatch):
    monkeypatch.setattr(reconstruction, "LPIPSLoss", FakeLPIPS)


@pytest.fixture(scope="module")
def real_loss() -> ReconstructionLoss:
    return ReconstructionLoss(w_l2=1.0, w_lpips=0.8, lpips_net="alex")


def _garment(seed: int = 0, batch: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """A mask float {0, 1} ``[B, 1, S, S]`` and an image [-1, 1] whose red channel is ``2 * mask - 1``."""
    gen = torch.Generator().manual_seed(seed)
    mask = (torch.rand(batch, 1, SIZE, SIZE, generator=gen) > 0.5).float()
    img = torch.rand(batch, 3, SIZE, SIZE, generator=gen) * 2 - 1
    img[:, :1] = mask * 2 - 1
    return img, mask


def test_real_lpips_terms_zero_for_identical_and_positive_otherwise(real_loss):
    img, mask = _garment()
    total, terms = real_loss(img, img.clone(), mask)
    assert set(terms) == {"l2", "lpips", "first"}
    assert terms["l2"] == 0
    assert terms["lpips"].abs() < 1e-6
    assert total.abs() < 1e-6

    other, _ = _garment(seed=1)
    total, terms = real_loss(img, other, mask)
    assert terms["l2"] > 0 and terms["lpips"] > 0.05
    torch.testing.assert_close(terms["first"], 1.0 * terms["l2"] + 0.8 * terms["lpips"])
    torch.testing.assert_close(total.detach(), terms["first"])


def test_real_lpips_gradient_reaches_generated_and_not_lpips(real_loss):
    img, mask = _garment()
    target, _ = _garment(seed=1)
    generated = img.clone().requires_grad_(True)
    total, terms = real_loss(generated, target, mask)
    assert total.requires_grad and all(not t.requires_grad for t in terms.values())
    total.backward()
    assert generated.grad is not None and generated.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in real_loss.parameters())


def test_shape_term_zero_when_segmentation_matches_mask(fake_lpips):
    img, mask = _garment()
    loss = ReconstructionLoss(w_shape=0.5, segmenter=FakeSegmenter())
    total, terms = loss(img, img, mask)
    assert set(terms) == {"l2", "lpips", "first", "shape", "second"}
    assert terms["l2"] == 0 and terms["lpips"] == 0
    assert terms["shape"] < 1e-6
    assert total.abs() < 1e-6

    _, other_mask = _garment(seed=1)
    _, terms = loss(img, img, other_mask)
    assert terms["shape"] > 0.3  # about half the pixels disagree


def test_shape_l1_helper():
    _, mask = _garment()
    assert shape_l1_loss(100 * (2 * mask - 1), mask) < 1e-6
    assert shape_l1_loss(torch.zeros_like(mask), mask) == pytest.approx(0.5)
    torch.testing.assert_close(shape_l1_loss(-100 * (2 * mask - 1), mask), torch.tensor(1.0))
    with pytest.raises(ValueError, match="do not match"):
        shape_l1_loss(mask[..., :16], mask)
    a, b = torch.zeros(1, 3, 4, 4), torch.ones(1, 3, 4, 4)
    assert l2_loss(a, b) == 1 and l2_loss(a, a) == 0


@pytest.mark.parametrize(
    ("w_l2", "w_lpips", "w_shape"),
    [(1.0, 0.8, 0.0), (0.5, 2.0, 0.3), (0.0, 1.0, 2.0), (0.0, 0.0, 1.0)],
)
def test_total_is_the_weighted_sum(fake_lpips, w_l2, w_lpips, w_shape):
    img, mask = _garment()
    target, other_mask = _garment(seed=1)
    segmenter = FakeSegmenter(gain=1.0)  # soft logits, so the shape term is not saturated
    loss = ReconstructionLoss(w_l2, w_lpips, w_shape, segmenter=segmenter)
    total, terms = loss(img, target, other_mask)
    first = w_l2 * l2_loss(img, target)
    if w_lpips:
        assert terms["lpips"] > 0
        first = first + w_lpips * (img - target).abs().mean()
    else:
        assert "lpips" not in terms
    torch.testing.assert_close(terms["first"], first)
    expected = first
    if w_shape:
        shape = shape_l1_loss(img[:, :1], other_mask)
        torch.testing.assert_close(terms["shape"], shape)
        expected = first + w_shape * shape
        torch.testing.assert_close(terms["second"], expected)
    else:
        assert "shape" not in terms and "second" not in terms
    torch.testing.assert_close(total, expected)


def test_zero_weight_skips_building_its_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("LPIPSLoss must not be built when w_lpips=0")

    monkeypatch.setattr(reconstruction, "LPIPSLoss", refuse)
    loss = ReconstructionLoss(w_l2=1.0, w_lpips=0.0, segmenter=FakeSegmenter())
    assert loss.lpips is None and loss.segmenter is None and not loss.uses_shape
    assert list(loss.parameters()) == [] and list(loss.children()) == []
    img, mask = _garment()
    total, terms = loss(img, img + 0.1, mask=None)  # no mask needed without the shape term
    assert set(terms) == {"l2", "first"}
    torch.testing.assert_close(total, torch.tensor(0.01))
    with pytest.raises(AssertionError, match="must not be built"):
        ReconstructionLoss(w_lpips=0.8)


def test_segmenter_frozen_but_gradient_flows_through_it(fake_lpips):
    segmenter = FakeSegmenter(gain=1.0)
    before = {k: v.clone() for k, v in segmenter.state_dict().items()}
    loss = ReconstructionLoss(w_l2=0.0, w_lpips=0.0, w_shape=1.0, segmenter=segmenter)
    loss.train()
    assert loss.training and not segmenter.training
    assert all(not m.training for m in segmenter.modules())
    assert all(not p.requires_grad for p in segmenter.parameters())

    img, mask = _garment()
    generated = img.clone().requires_grad_(True)
    total, terms = loss(generated, img, 1 - mask)
    total.backward()
    # w_l2 = w_lpips = 0: every bit of this gradient came back through the segmenter.
    assert generated.grad is not None and generated.grad[:, 0].abs().sum() > 0
    assert all(p.grad is None for p in segmenter.parameters())
    # Eval mode: dropout is off and BatchNorm statistics did not move.
    _, again = loss(img, img, 1 - mask)
    torch.testing.assert_close(again["shape"], terms["shape"])
    for key, value in segmenter.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_bad_configurations_raise(fake_lpips):
    with pytest.raises(ValueError, match="needs a segmenter"):
        ReconstructionLoss(w_shape=0.5)
    with pytest.raises(ValueError, match="w_l2"):
        ReconstructionLoss(w_l2=-1.0)
    with pytest.raises(ValueError, match="w_shape"):
        ReconstructionLoss(w_shape=float("nan"), segmenter=FakeSegmenter())
    with pytest.raises(ValueError, match="all reconstruction loss weights are 0"):
        ReconstructionLoss(w_l2=0.0, w_lpips=0.0, w_shape=0.0)
    loss = ReconstructionLoss(w_shape=1.0, segmenter=FakeSegmenter())
    img, _ = _garment()
    with pytest.raises(ValueError, match="needs the input mask"):
        loss(img, img)
