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


def test_mode_seeking_term_rewards_latent_pairs_that_draw_different_pictures():
    """MSGAN's term: big for a batch of one picture, small for distinct ones; its gradient
    pushes the two halves of a collapsed batch apart; in Gmain it is added and logged."""
    from garment_gen.losses.gan import mode_seeking_loss

    torch.manual_seed(0)
    z = torch.randn(8, 16)
    base = torch.rand(1, 3, 32, 32) * 2 - 1
    collapsed = (base + 0.01 * torch.randn(8, 3, 32, 32)).requires_grad_(True)
    varied = torch.rand(8, 3, 32, 32) * 2 - 1
    ms_c, ratio_c = mode_seeking_loss(collapsed, z, 16)
    ms_v, ratio_v = mode_seeking_loss(varied, z, 16)
    assert ratio_c < 0.1 * ratio_v and ms_c > 10 * ms_v
    ms_c.backward()
    step = collapsed - 1e-3 * collapsed.grad  # one descent step increases the pairs' distance
    _, ratio_after = mode_seeking_loss(step.detach(), z, 16)
    assert ratio_after > ratio_c

    class MeanD(nn.Module):  # a D without parameters: the loss is G's alone
        def forward(self, x):
            return x.mean((1, 2, 3))

    parts = _Parts(MeanD())
    plain = _loss()
    ms = GANLoss(
        kind="hinge",
        r1_gamma=0.0,
        d_reg_interval=16,
        pl_weight=0.0,
        g_reg_interval=4,
        pl_batch_shrink=2,
        pl_decay=0.01,
        diversity_weight=0.5,
        diversity_size=8,
    )
    torch.manual_seed(1)
    loss_plain, logs_plain = plain.g_main(parts, torch.zeros(4, 3, RES, RES))
    torch.manual_seed(1)
    loss_ms, logs_ms = ms.g_main(parts, torch.zeros(4, 3, RES, RES))
    assert "train/diversity" in logs_ms and "train/diversity" not in logs_plain
    assert float(loss_ms) > float(loss_plain)
    assert "mode seeking x0.5 at 8 px" in describe(ms)
    with pytest.raises(Exception, match="diversity_weight"):
        GANLoss(
            kind="hinge",
            r1_gamma=0,
            d_reg_interval=1,
            pl_weight=0,
            g_reg_interval=1,
            pl_batch_shrink=1,
            pl_decay=0.01,
            diversity_weight=-1,
        )
