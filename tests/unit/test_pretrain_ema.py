"""``G_ema``'s update (``garment_gen.modules.pretrain.ema_update``): the lerp formula, buffers."""

from __future__ import annotations

import copy

import pytest
import torch

from garment_gen.modules.pretrain import ema_update
from garment_gen.networks.stylegan2 import Generator


def _pair() -> tuple[Generator, Generator]:
    torch.manual_seed(0)
    net = Generator(32, z_dim=16, w_dim=16, mapping_layers=2, channel_base=128, channel_max=16)
    ema = copy.deepcopy(net).requires_grad_(False)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p))
        net.w_avg.normal_()
    return ema, net


@pytest.mark.parametrize("beta", [0.0, 0.5, 0.999])
def test_ema_update_is_the_lerp_of_every_parameter_and_copies_buffers(beta):
    ema, net = _pair()
    before = [p.clone() for p in ema.parameters()]
    ema_update(ema, net, beta)
    for b, p_ema, p in zip(before, ema.parameters(), net.parameters(), strict=True):
        torch.testing.assert_close(p_ema, beta * b + (1 - beta) * p, rtol=1e-6, atol=1e-6)
    for b_ema, b in zip(ema.buffers(), net.buffers(), strict=True):
        assert torch.equal(b_ema, b)
    assert not any(p.requires_grad for p in ema.parameters())


def test_ema_update_refuses_different_networks():
    ema, _ = _pair()
    with pytest.raises(ValueError, match="different tensors"):
        ema_update(ema, torch.nn.Linear(2, 2), 0.5)
