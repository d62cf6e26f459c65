"""StyleGAN2 generator / discriminator: shapes, W+ interface, truncation, gradients, export."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from garment_gen.networks.stylegan2 import (
    Discriminator,
    Generator,
    _blur,
    _fir2d,
    _fir_kernel,
    _fir_matrix,
    _upsample_matrix,
    export_generator,
    load_generator,
    minibatch_stddev,
)

TINY = dict(z_dim=32, w_dim=32, mapping_layers=2, channel_base=256, channel_max=32)
TINY_D = dict(channel_base=256, channel_max=32)


def tiny_g(resolution: int = 32, **kw) -> Generator:
    torch.manual_seed(0)
    return Generator(resolution=resolution, **{**TINY, **kw})


def tiny_d(resolution: int = 32, **kw) -> Discriminator:
    torch.manual_seed(1)
    return Discriminator(resolution=resolution, **{**TINY_D, **kw})


@pytest.mark.parametrize("resolution", [32, 64, 128])
@pytest.mark.parametrize("batch", [1, 3])
def test_shapes(resolution: int, batch: int) -> None:
    g, d = tiny_g(resolution), tiny_d(resolution)
    assert g.num_ws == 2 * int(math.log2(resolution)) - 2
    assert g.w_avg.shape == (g.w_dim,)
    z = torch.randn(batch, g.z_dim)
    ws = g.mapping(z)
    assert ws.shape == (batch, g.num_ws, g.w_dim)
    img = g.synthesis(ws)
    assert img.shape == (batch, 3, resolution, resolution)
    assert torch.isfinite(img).all()
    assert g(z).shape == img.shape
    logits = d(img)
    assert logits.shape == (batch, 1)
    assert torch.isfinite(logits).all()


def test_num_ws_matches_stylegan2_at_64() -> None:
    assert tiny_g(64).num_ws == 10


def test_every_ws_row_changes_the_image() -> None:
    g = tiny_g(32).eval()
    ws = g.mapping(torch.randn(2, g.z_dim))
    base = g.synthesis(ws, noise_mode="const")
    other = g.mapping(torch.randn(2, g.z_dim))[:, 0]
    for k in range(g.num_ws):
        ws_plus = ws.clone()
        ws_plus[:, k] = other  # a genuine W+ code: row k differs from the rest
        img = g.synthesis(ws_plus, noise_mode="const")
        assert not torch.allclose(img, base, atol=1e-5), f"ws row {k} has no effect"


def test_synthesis_rejects_wrong_ws_shape() -> None:
    g = tiny_g(32)
    with pytest.raises(ValueError, match="ws must be"):
        g.synthesis(torch.randn(2, g.num_ws - 1, g.w_dim))


def test_const_noise_is_deterministic_and_random_noise_is_not() -> None:
    g = tiny_g(32).eval()
    for m in g.modules():  # noise strength starts at 0; give it a value so noise matters
        if hasattr(m, "noise_strength"):
            m.noise_strength.data.fill_(0.5)
    ws = g.mapping(torch.randn(2, g.z_dim))
    a, b = g.synthesis(ws, noise_mode="const"), g.synthesis(ws, noise_mode="const")
    assert torch.equal(a, b)
    assert not torch.allclose(
        g.synthesis(ws, noise_mode="random"), g.synthesis(ws, noise_mode="random")
    )
    assert not torch.allclose(g.synthesis(ws, noise_mode="none"), a)
    with pytest.raises(ValueError, match="noise_mode"):
        g.synthesis(ws, noise_mode="bogus")


def test_truncation_psi_zero_gives_the_average_image() -> None:
    g = tiny_g(32).eval()
    g.w_avg.normal_()
    z = torch.randn(3, g.z_dim)
    img = g(z, truncation_psi=0.0, noise_mode="const")
    assert torch.allclose(img[0], img[1], atol=1e-6) and torch.allclose(img[0], img[2], atol=1e-6)
    ws = g.mapping(z, truncation_psi=0.0)
    assert torch.allclose(ws, g.w_avg.expand_as(ws))
    # a cutoff truncates only the first rows
    ws_cut = g.mapping(z, truncation_psi=0.0, truncation_cutoff=2)
    assert torch.allclose(ws_cut[:, :2], g.w_avg.expand(3, 2, -1))
    assert torch.allclose(ws_cut[:, 2:], g.mapping(z)[:, 2:])


def test_fused_and_unfused_modconv_agree() -> None:
    g = tiny_g(64).eval()
    ws = g.mapping(torch.randn(3, g.z_dim))
    a = g.synthesis(ws, noise_mode="const", fused_modconv=False)
    b = g.synthesis(ws, noise_mode="const", fused_modconv=True)
    assert torch.allclose(a, b, atol=1e-4, rtol=1e-4)


def test_gradients_reach_every_parameter() -> None:
    g, d = tiny_g(32).train(), tiny_d(32)
    fake_img = g(torch.randn(4, g.z_dim))
    F.softplus(-d(fake_img)).mean().backward()
    missing = [
        n for n, p in g.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()
    ]
    assert not missing, f"no gradient for G params: {missing}"
    assert all(p.grad.abs().sum() > 0 for n, p in g.named_parameters() if "noise_strength" not in n)
    d.zero_grad(set_to_none=True)
    real_img = torch.rand(4, 3, 32, 32) * 2 - 1
    (F.softplus(d(fake_img.detach())).mean() + F.softplus(-d(real_img)).mean()).backward()
    missing = [n for n, p in d.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert not missing, f"no gradient for D params: {missing}"


def test_double_backward_for_r1_and_path_length() -> None:
    g, d = tiny_g(32), tiny_d(32)
    real_img = (torch.rand(4, 3, 32, 32) * 2 - 1).requires_grad_(True)
    (grad,) = torch.autograd.grad(d(real_img).sum(), real_img, create_graph=True)
    grad.square().sum().backward()
    assert d.from_rgb.weight.grad is not None and d.from_rgb.weight.grad.abs().sum() > 0
    ws = g.mapping(torch.randn(2, g.z_dim))
    img = g.synthesis(ws)
    (gw,) = torch.autograd.grad((img * torch.randn_like(img)).sum(), ws, create_graph=True)
    gw.square().sum().backward()
    assert g.synthesis.blocks[-1].conv1.weight.grad.abs().sum() > 0


def test_w_avg_tracks_w_only_when_asked() -> None:
    g = tiny_g(32).train()
    before = g.w_avg.clone()
    g(torch.randn(4, g.z_dim))
    assert torch.equal(g.w_avg, before)
    g(torch.randn(4, g.z_dim), update_w_avg=True)
    assert not torch.equal(g.w_avg, before)
    w = g.mapping(torch.randn(4, g.z_dim))[:, 0]
    assert g.w_avg.requires_grad is False and torch.isfinite(w).all()


def _capture_ws(g: Generator) -> list[torch.Tensor]:
    seen: list[torch.Tensor] = []
    g.synthesis.register_forward_pre_hook(lambda mod, args: seen.append(args[0].detach().clone()))
    return seen


def test_style_mixing_only_in_training() -> None:
    g = tiny_g(32, style_mixing_prob=1.0)
    seen = _capture_ws(g)
    z = torch.randn(8, g.z_dim)
    g.train()(z)
    g.eval()(z)
    mixed, plain = seen
    assert not torch.allclose(mixed[:, 0], mixed[:, -1]), "every sample should be mixed at prob 1"
    assert torch.allclose(mixed[:, 0], plain[:, 0])  # rows before the cutoff come from z
    assert torch.allclose(plain, plain[:, :1].expand_as(plain))
    g0 = tiny_g(32, style_mixing_prob=0.0)
    seen0 = _capture_ws(g0)
    g0.train()(z)
    assert torch.allclose(seen0[0], seen0[0][:, :1].expand_as(seen0[0]))


def test_export_load_round_trip(tmp_path) -> None:
    g = tiny_g(32, style_mixing_prob=0.5)
    g.w_avg.normal_()
    path = export_generator(g, tmp_path / "sub" / "generator.pt")
    assert path.is_file() and not list(path.parent.glob("*.tmp"))
    payload = torch.load(path, weights_only=True)
    assert payload["config"] == g.get_config() and payload["config"]["style_mixing_prob"] == 0.5
    g2 = load_generator(path)
    assert isinstance(g2, Generator) and not g2.training
    g.eval()
    z = torch.randn(2, g.z_dim)
    assert torch.equal(
        g(z, noise_mode="const", truncation_psi=0.7), g2(z, noise_mode="const", truncation_psi=0.7)
    )
    assert torch.equal(g2.w_avg, g.w_avg)


def test_load_rejects_non_generator_files(tmp_path) -> None:
    other = tmp_path / "other.pt"
    torch.save({"state_dict": {"a": torch.zeros(1)}}, other)
    text = tmp_path / "notes.txt"
    text.write_text("not a checkpoint")
    missing = tmp_path / "missing.pt"
    for path in (other, text, missing):
        with pytest.raises(ValueError, match=str(path).replace("\\", "\\\\")):
            load_generator(path)


@pytest.mark.parametrize("batch", [1, 3, 4, 6, 8])
def test_discriminator_batch_sizes(batch: int) -> None:
    d = tiny_d(32)
    logits = d(torch.rand(batch, 3, 32, 32) * 2 - 1)
    assert logits.shape == (batch, 1) and torch.isfinite(logits).all()


def test_minibatch_stddev_groups() -> None:
    x = torch.randn(6, 4, 2, 2)
    y = minibatch_stddev(x, group_size=4)  # 6 is not a multiple of 4 -> groups of 3
    assert y.shape == (6, 5, 2, 2) and torch.equal(y[:, :4], x)
    for n in range(6):
        group = x[n % 2 :: 2]  # sample n is grouped with n +- 2
        expected = (group.var(dim=0, unbiased=False) + 1e-8).sqrt().mean()
        assert torch.allclose(y[n, 4], expected.expand(2, 2), atol=1e-6)
    same = minibatch_stddev(x[:1].expand(4, -1, -1, -1).contiguous(), group_size=4)
    assert same[:, 4].abs().max() < 1e-3  # identical samples: no spread


def test_fir_matrices_match_reference_filters() -> None:
    f = torch.tensor([1.0, 3.0, 3.0, 1.0])
    f2 = torch.outer(f, f) / 64
    x = torch.randn(2, 3, 9, 9)
    # plain blur with padding 1: n + 2 - 3 = n - 1 outputs
    ref = F.conv2d(F.pad(x, [1, 1, 1, 1]), f2.expand(3, 1, 4, 4), groups=3)
    assert torch.allclose(
        _fir2d(x, _fir_matrix(9, 8, offset=1, stride=1, gain=1.0)), ref, atol=1e-6
    )
    # upsampling: zero insertion, pad (2, 1), filter with gain 4
    z = torch.zeros(2, 3, 18, 18)
    z[..., ::2, ::2] = x
    ref_up = F.conv2d(F.pad(z, [2, 1, 2, 1]), (f2 * 4).expand(3, 1, 4, 4), groups=3)
    assert torch.allclose(_fir2d(x, _upsample_matrix(9, gain=2.0)), ref_up, atol=1e-5)
    # a constant image stays constant away from the borders (filters are normalised)
    ones = torch.ones(1, 1, 8, 8)
    assert torch.allclose(
        _fir2d(ones, _upsample_matrix(8, gain=2.0))[..., 2:-2, 2:-2], torch.ones(1, 1, 12, 12)
    )


# (input side, banded matrix of the same filter, per-axis gain, padding, stride): the three
# blurs of the networks (after G's transposed conv, before D's stride-2 conv, D's 1x1 skip)
BLURS = [
    (9, dict(n_out=8, offset=1, stride=1), 2.0, 1, 1),
    (8, dict(n_out=9, offset=2, stride=1), 1.0, 2, 1),
    (8, dict(n_out=4, offset=1, stride=2), 1.0, 1, 2),
]


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels-last"])
@pytest.mark.parametrize("n, mat, gain, pad, stride", BLURS, ids=["up", "down-3x3", "down-1x1"])
def test_depthwise_blur_matches_fir_matrix_and_pytorch(n, mat, gain, pad, stride, channels_last):
    """Values, input gradient and double backward of ``_blur`` equal the banded-matrix filter
    and PyTorch's own depthwise conv (autograd's backward), in both layouts (kept)."""
    torch.manual_seed(0)
    x = torch.randn(2, 5, n, n, dtype=torch.float64)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)
    kernel = _fir_kernel(gain).double()
    y = _blur(x, kernel, pad, stride)
    y_mat = _fir2d(x, _fir_matrix(n, gain=gain, **mat).double())
    y_conv = F.conv2d(x, kernel.expand(5, 1, 4, 4), padding=pad, stride=stride, groups=5)
    assert y.shape == y_mat.shape == y_conv.shape
    assert y.is_contiguous(memory_format=torch.channels_last) == channels_last
    torch.testing.assert_close(y, y_mat, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(y, y_conv, rtol=1e-12, atol=1e-12)
    g = torch.randn_like(y)
    (gx,) = torch.autograd.grad(y, x, g)
    (gx_conv,) = torch.autograd.grad(y_conv, x, g)
    torch.testing.assert_close(gx, gx_conv, rtol=1e-12, atol=1e-12)
    assert gx.abs().sum() > 0
    fn = lambda t: _blur(t, kernel, pad, stride)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x,))
    assert torch.autograd.gradgradcheck(fn, (x,))


def test_no_grad_synthesis_runs_channels_last_and_gives_the_same_image() -> None:
    """Without autograd on CPU the synthesis runs channels-last (faster oneDNN forwards): same
    image, returned NCHW; with autograd it stays NCHW."""
    g = tiny_g(64).eval()
    ws = g.mapping(torch.randn(3, g.z_dim))
    layouts = []
    hook = g.synthesis.blocks[-1].conv0.register_forward_hook(
        lambda m, i, out: layouts.append(out.is_contiguous(memory_format=torch.channels_last))
    )
    try:
        with torch.no_grad():
            img_cl = g.synthesis(ws, noise_mode="const")
        img = g.synthesis(ws, noise_mode="const")
    finally:
        hook.remove()
    assert layouts == [True, False]
    assert img_cl.is_contiguous() and img.is_contiguous()
    torch.testing.assert_close(img_cl, img.detach(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("resolution", [48, 16, 2048, 0, "64", 64.0])
def test_bad_resolution_raises(resolution) -> None:
    with pytest.raises(ValueError, match="resolution must be"):
        Generator(resolution=resolution, **TINY)
    with pytest.raises(ValueError, match="resolution must be"):
        Discriminator(resolution=resolution, **TINY_D)


def test_discriminator_rejects_wrong_image_size() -> None:
    with pytest.raises(ValueError, match="img must be"):
        tiny_d(32)(torch.zeros(2, 3, 64, 64))


def test_config_rebuilds_the_same_architecture() -> None:
    g = tiny_g(64, conv_clamp=256)
    g2 = Generator(**g.get_config())
    assert g.config == g2.get_config()
    assert {k: v.shape for k, v in g.state_dict().items()} == {
        k: v.shape for k, v in g2.state_dict().items()
    }


@pytest.mark.slow
def test_networks_trace_without_graph_breaks() -> None:
    """``torch.compile(fullgraph=True)`` fails on any graph break; the eager backend skips codegen."""
    torch._dynamo.reset()
    g, d = tiny_g(32).eval(), tiny_d(32)
    ws = g.mapping(torch.randn(2, g.z_dim))
    synthesis = torch.compile(g.synthesis, backend="eager", fullgraph=True)
    img = synthesis(ws, noise_mode="const")
    assert torch.allclose(img, g.synthesis(ws, noise_mode="const"), atol=1e-5)
    logits = torch.compile(d, backend="eager", fullgraph=True)(img)
    assert torch.allclose(logits, d(img), atol=1e-5)
