"""The GAN phase table: order, lazy intervals, and the D step reusing the G step's fakes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from garment_gen.losses.gan import GANLoss, describe
from garment_gen.networks.projected import ProjectedDiscriminator
from garment_gen.networks.stylegan2 import Discriminator, Generator

RES = 32


def _loss(kind: str = "hinge", reuse: bool = False, r1: float = 0.0, pl: float = 0.0) -> GANLoss:
    return GANLoss(
        kind=kind,
        r1_gamma=r1,
        d_reg_interval=16,
        pl_weight=pl,
        g_reg_interval=4,
        pl_batch_shrink=2,
        pl_decay=0.01,
        reuse_fakes=reuse,
    )


class _Parts(nn.Module):
    """What a phase needs (``GANParts``), counting generator forwards and embeddings."""

    def __init__(self, D: nn.Module):
        super().__init__()
        torch.manual_seed(0)
        self.G = Generator(
            RES,
            z_dim=16,
            w_dim=16,
            mapping_layers=1,
            channel_base=256,
            channel_max=16,
            style_mixing_prob=0.0,
        )
        self.D = D
        self.register_buffer("pl_mean", torch.zeros(()))
        self.g_calls = 0
        self.fakes: list[torch.Tensor] = []
        self.G.register_forward_hook(self._count)

    def _count(self, module, args, out):
        self.g_calls += 1
        self.fakes.append(out.detach().clone())

    def augment_images(self, x: torch.Tensor) -> torch.Tensor:
        return x  # identity: the comparisons below need the same D input twice

    def sample_z(self, n: int) -> torch.Tensor:
        return torch.randn(n, self.G.z_dim)


def _projected() -> ProjectedDiscriminator:
    return ProjectedDiscriminator(
        RES, feature_size=32, proj_channels=8, channel_base=256, channel_max=16
    )


def _stylegan_d() -> Discriminator:
    return Discriminator(RES, channel_base=256, channel_max=16)


@pytest.mark.parametrize("r1,pl", [(0.0, 0.0), (0.1, 2.0)])
def test_phase_order_and_intervals(r1, pl):
    names = [p.name for p in _loss(r1=r1, pl=pl).phases()]
    reused = [p.name for p in _loss(r1=r1, pl=pl, reuse=True).phases()]
    d = ["Dmain"] + (["Dreg"] if r1 else [])
    g = ["Gmain"] + (["Greg"] if pl else [])
    assert names == d + g
    assert reused == g + d  # the G phases draw the fakes the D step reuses
    assert "reuses" in describe(_loss(reuse=True)) and "reuses" not in describe(_loss())


@pytest.mark.parametrize("make_d", [_projected, _stylegan_d], ids=["projected", "stylegan2"])
def test_d_step_reuses_the_g_steps_fakes(make_d):
    """With reuse: one G forward per batch, and the D step's loss is the one D gives on the
    G step's very images; without: the D step draws its own (a second forward)."""
    real = torch.rand(4, 3, RES, RES) * 2 - 1
    parts = _Parts(make_d())
    loss = _loss(reuse=True)
    loss.g_main(parts, real)
    d_loss, logs = loss.d_main(parts, real)
    assert parts.g_calls == 1
    with torch.no_grad():
        expected = loss.d_loss_fn(parts.D(real), parts.D(parts.fakes[0]))
    torch.testing.assert_close(d_loss.detach(), expected, rtol=1e-5, atol=1e-6)
    assert loss._fakes is None  # used once, then dropped: the next batch draws new fakes

    # the next D step (no G step before it) draws its own fakes instead of reusing stale ones
    loss.d_main(parts, real)
    assert parts.g_calls == 2

    plain = _loss(reuse=False)
    parts2 = _Parts(make_d())
    plain.d_main(parts2, real)
    plain.g_main(parts2, real)
    assert parts2.g_calls == 2 and plain._fakes is None


def test_reused_embedding_carries_no_graph_and_d_step_trains_only_the_heads():
    real = torch.rand(4, 3, RES, RES) * 2 - 1
    parts = _Parts(_projected())
    loss = _loss(reuse=True)
    g_loss, _ = loss.g_main(parts, real)
    assert g_loss.requires_grad
    assert all(not t.requires_grad for t in loss._fakes)
    d_loss, _ = loss.d_main(parts, real)
    parts.G.zero_grad(set_to_none=True)
    d_loss.backward()
    assert all(p.grad is None for p in parts.G.parameters())  # the D step never reaches G
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in parts.D.parameters())
