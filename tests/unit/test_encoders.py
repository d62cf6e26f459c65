"""Shape/texture encoders: W+ shapes over resolutions, equal depth, per-row fusion, gradients."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from garment_gen.networks.encoders import (
    ConvEncoder,
    GarmentEncoders,
    ShapeEncoder,
    TextureEncoder,
    downsample_schedule,
    head_stage_index,
)

W_DIM = 16
TINY = dict(base_channels=4, max_channels=16)


class FakeGenerator(nn.Module):
    """Stands in for StyleGAN2: ``synthesis(ws [B, num_ws, w_dim]) -> [B, 3, R, R]``, frozen."""

    def __init__(self, num_ws: int = 8, w_dim: int = W_DIM, resolution: int = 32) -> None:
        super().__init__()
        self.num_ws, self.w_dim, self.resolution = num_ws, w_dim, resolution
        self.to_img = nn.Linear(num_ws * w_dim, 3 * 8 * 8)
        self.register_buffer("w_avg", torch.randn(w_dim))
        self.requires_grad_(False)

    def synthesis(self, ws: torch.Tensor) -> torch.Tensor:
        img = self.to_img(ws.flatten(1)).view(-1, 3, 8, 8)
        return nn.functional.interpolate(img, size=self.resolution).tanh()


def _inputs(batch: int, resolution: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    shape_mask = (torch.rand(batch, 1, resolution, resolution, generator=gen) > 0.5).float()
    texture_img = torch.rand(batch, 3, resolution, resolution, generator=gen) * 2 - 1
    return shape_mask, texture_img


@pytest.mark.parametrize("resolution", [32, 64, 128])
@pytest.mark.parametrize("num_ws", [8, 10, 12])
def test_output_shapes_and_equal_depth(resolution, num_ws):
    torch.manual_seed(0)
    model = GarmentEncoders(num_ws, W_DIM, resolution, **TINY)
    shape_mask, texture_img = _inputs(2, resolution)
    shape_ws = model.shape_enc(shape_mask)
    texture_ws = model.texture_enc(texture_img)
    ws = model(shape_mask, texture_img)
    for out in (shape_ws, texture_ws, ws):
        assert out.shape == (2, num_ws, W_DIM)
        assert torch.isfinite(out).all()

    shape_enc, texture_enc = model.shape_enc, model.texture_enc
    # Default design: one stage per W+ row, so each stage yields exactly one style vector.
    assert len(shape_enc.stages) == len(texture_enc.stages) == num_ws
    assert len(shape_enc.heads) == len(texture_enc.heads) == num_ws
    assert shape_enc.head_stage == texture_enc.head_stage == list(range(num_ws - 1, -1, -1))

    feats = shape_enc.per_layer_features(shape_mask)
    assert len(feats) == num_ws
    sizes = [f.shape[-1] for f in feats]
    assert sizes[0] == resolution and sizes[-1] == 4  # full res in, 4 px at the deepest stage
    assert sizes == sorted(sizes, reverse=True)
    tex_sizes = [f.shape[-1] for f in texture_enc.per_layer_features(texture_img)]
    assert tex_sizes == sizes


def test_standard_num_ws_mirrors_synthesis_resolutions():
    # StyleGAN2 at 64 px: rows 0..9 drive layers at 4, 8, 8, 16, 16, 32, 32, 64, 64, 64 px.
    enc = TextureEncoder(num_ws=10, w_dim=W_DIM, resolution=64, **TINY)
    feats = enc.per_layer_features(torch.zeros(1, 3, 64, 64))
    size_per_row = [feats[s].shape[-1] for s in enc.head_stage]
    assert size_per_row == [4, 8, 8, 16, 16, 32, 32, 64, 64, 64]
    assert enc.stage_channels == [4, 4, 4, 8, 8, 16, 16, 16, 16, 16]  # doubles, capped at 16


def test_fewer_layers_than_ws_share_stages_coarse_to_deep():
    model = GarmentEncoders(num_ws=10, w_dim=W_DIM, resolution=64, num_layers=4, **TINY)
    for enc in (model.shape_enc, model.texture_enc):
        assert len(enc.stages) == 4 and len(enc.heads) == 10
        assert enc.head_stage[0] == 3 and enc.head_stage[-1] == 0
        assert enc.head_stage == sorted(enc.head_stage, reverse=True)
        assert set(enc.head_stage) == {0, 1, 2, 3}
    assert model(*_inputs(2, 64)).shape == (2, 10, W_DIM)


@pytest.mark.parametrize(("num_layers", "resolution"), [(10, 64), (8, 128), (3, 1024), (18, 1024)])
def test_downsample_schedule_reaches_4px_when_possible(num_layers, resolution):
    down = downsample_schedule(num_layers, resolution)
    assert len(down) == num_layers and down[-1]
    assert resolution // 2 ** sum(down) == max(4, resolution // 2**num_layers)


def test_head_stage_index_is_a_reversed_bijection_for_equal_counts():
    assert [head_stage_index(i, 14, 14) for i in range(14)] == list(range(13, -1, -1))


def test_fuse_adds_shape_and_texture_per_row_plus_w_avg():
    torch.manual_seed(0)
    w_avg = torch.randn(W_DIM)
    model = GarmentEncoders(8, W_DIM, 32, w_avg=w_avg, head_init_std=1.0, **TINY)
    shape_mask, texture_img = _inputs(3, 32)
    shape_ws = model.shape_enc(shape_mask)
    texture_ws = model.texture_enc(texture_img)
    ws = model(shape_mask, texture_img)
    torch.testing.assert_close(ws, shape_ws + texture_ws + w_avg)
    for i in range(8):
        torch.testing.assert_close(ws[:, i], shape_ws[:, i] + texture_ws[:, i] + w_avg)
    torch.testing.assert_close(model.fuse(shape_ws, texture_ws), ws)
    # Both encoders contribute: a different texture or mask changes the ws.
    other_mask, other_tex = _inputs(3, 32, seed=1)
    assert not torch.allclose(model(shape_mask, other_tex), ws)
    assert not torch.allclose(model(other_mask, texture_img), ws)

    no_avg = GarmentEncoders(8, W_DIM, 32, w_avg=w_avg, use_w_avg=False, **TINY)
    torch.testing.assert_close(no_avg.fuse(shape_ws, texture_ws), shape_ws + texture_ws)


def test_samples_do_not_depend_on_the_rest_of_the_batch():
    torch.manual_seed(0)
    model = GarmentEncoders(8, W_DIM, 32, head_init_std=1.0, **TINY)
    shape_mask, texture_img = _inputs(4, 32)
    batched = model(shape_mask, texture_img)
    single = model(shape_mask[1:2], texture_img[1:2])
    torch.testing.assert_close(batched[1:2], single, atol=1e-5, rtol=1e-4)


def test_gradients_reach_every_encoder_parameter_and_never_the_generator():
    torch.manual_seed(0)
    generator = FakeGenerator(num_ws=8, resolution=32)
    model = GarmentEncoders.from_generator(generator, **TINY)
    assert (model.num_ws, model.w_dim, model.resolution) == (8, W_DIM, 32)
    torch.testing.assert_close(model.w_avg, generator.w_avg)
    gen_before = {k: v.clone() for k, v in generator.state_dict().items()}
    enc_before = {k: v.clone() for k, v in model.named_parameters()}

    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    shape_mask, texture_img = _inputs(2, 32)
    target = torch.rand(2, 3, 32, 32) * 2 - 1
    fake_img = generator.synthesis(model(shape_mask, texture_img))
    loss = (fake_img - target).square().mean()
    loss.backward()

    for name, param in model.named_parameters():
        assert param.grad is not None, name
        assert param.grad.abs().sum() > 0, name
    for name, param in generator.named_parameters():
        assert param.grad is None, name
    optimizer.step()
    for name, value in generator.state_dict().items():
        assert torch.equal(value, gen_before[name]), name
    assert any(not torch.equal(p, enc_before[k]) for k, p in model.named_parameters())


def test_initial_ws_are_close_to_w_avg():
    torch.manual_seed(0)
    w_avg = torch.randn(W_DIM)
    model = GarmentEncoders(10, W_DIM, 64, w_avg=w_avg, **TINY)
    ws = model(*_inputs(4, 64))
    offset = (ws - w_avg).abs()
    assert offset.max() < 0.1 * w_avg.abs().mean()
    assert offset.max() > 0  # not dead: the encoders already respond to their inputs


def test_get_config_round_trip_rebuilds_identical_model():
    torch.manual_seed(0)
    model = GarmentEncoders(12, W_DIM, 64, w_avg=torch.randn(W_DIM), num_layers=6, **TINY)
    config = model.get_config()
    plain = (int, float, bool, str)
    assert all(
        type(v) in plain or (type(v) is dict and all(type(x) is int for x in v.items() for x in x))
        for v in config.values()
    ), config
    rebuilt = GarmentEncoders(**config)
    assert rebuilt.get_config() == config
    src, dst = model.state_dict(), rebuilt.state_dict()
    assert {k: v.shape for k, v in src.items()} == {k: v.shape for k, v in dst.items()}
    rebuilt.load_state_dict(src)
    inputs = _inputs(2, 64)
    torch.testing.assert_close(rebuilt(*inputs), model(*inputs))

    texture = TextureEncoder(8, W_DIM, 32, **TINY)
    assert TextureEncoder(**texture.get_config()).get_config() == texture.get_config()
    shape = ShapeEncoder(8, W_DIM, 32, **TINY)
    assert ShapeEncoder(**shape.get_config()).get_config() == shape.get_config()


def test_bad_inputs_and_configs_raise():
    model = GarmentEncoders(8, W_DIM, 32, **TINY)
    shape_mask, texture_img = _inputs(2, 32)
    with pytest.raises(ValueError, match=r"\[B, 1, 32, 32\]"):
        model(texture_img, texture_img)
    with pytest.raises(ValueError, match=r"\[B, 3, 32, 32\]"):
        model(shape_mask, texture_img[..., :16, :16])
    with pytest.raises(ValueError, match="batch sizes"):
        model(shape_mask[:1], texture_img)
    with pytest.raises(ValueError, match="w_avg"):
        GarmentEncoders(8, W_DIM, 32, w_avg=torch.zeros(W_DIM + 1))
    with pytest.raises(ValueError, match="num_layers"):
        ConvEncoder(3, 8, W_DIM, 32, num_layers=0)


# ------------------------------------------------------------------ feature injection


def _tiny_generator(res: int = 32):
    from garment_gen.networks.stylegan2 import Generator

    torch.manual_seed(0)
    return Generator(res, z_dim=16, w_dim=16, mapping_layers=1, channel_base=256, channel_max=32)


@pytest.mark.parametrize("injection", ["features", "both"])
def test_injected_features_start_as_a_no_op_and_then_change_the_image(injection):
    g = _tiny_generator(32).eval()
    enc = GarmentEncoders.from_generator(
        g, base_channels=8, max_channels=16, injection=injection, inject_max_resolution=16
    )
    assert enc.feature_resolutions == [4, 8, 16]
    mask, tex = _inputs(2, 32)
    ws, maps = enc.encode(mask, tex)
    for r, m in maps.items():
        assert tuple(m.shape) == (2, g.synthesis.channels[r], r, r)
    plain = g.synthesis(ws, noise_mode="const")
    torch.testing.assert_close(g.synthesis(ws, noise_mode="const", features=maps), plain)
    if injection == "features":  # no style heads: every row is w_avg
        assert torch.equal(ws, g.w_avg.expand_as(ws))
    # a step on the feature heads makes the injection matter
    loss = g.synthesis(ws, noise_mode="const", features=maps).square().mean()
    loss.backward()
    head = enc.shape_enc.feature_heads["16"]
    assert head.weight.grad is not None and head.weight.grad.abs().sum() > 0
    with torch.no_grad():
        head.weight.add_(0.5 * torch.randn_like(head.weight))
    ws, maps = enc.encode(mask, tex)
    assert (g.synthesis(ws, noise_mode="const", features=maps) - plain).abs().max() > 1e-3


def test_injection_needs_the_generators_channels_and_reachable_resolutions():
    from garment_gen.networks.encoders import EncoderConfigError

    with pytest.raises(EncoderConfigError, match="from_generator"):
        GarmentEncoders(8, W_DIM, 32, injection="both")
    with pytest.raises(EncoderConfigError, match="injection must be one of"):
        GarmentEncoders(8, W_DIM, 32, injection="pixels")
    g = _tiny_generator(32)
    with pytest.raises(EncoderConfigError, match="no encoder stage has 4 x 4"):
        # one stage only, downsampled once to 16 px: no stage reaches 4 px
        GarmentEncoders.from_generator(
            g, num_layers=1, base_channels=8, injection="both", inject_max_resolution=32
        )
