"""The one save/load contract: every network round-trips, files of other kinds and damaged
files give one clear line, float16 comes back as float32, and older formats still load."""

from __future__ import annotations

import pytest
import torch

from garment_gen.networks.serialization import ModelFileError, load_model, save_model


def _generator():
    from garment_gen.networks.stylegan2 import Generator

    return Generator(32, z_dim=16, w_dim=16, mapping_layers=1, channel_base=256, channel_max=32)


def _networks():
    from garment_gen.networks.encoders import GarmentEncoders
    from garment_gen.networks.garment_model import GarmentModel
    from garment_gen.networks.projected import ProjectedDiscriminator
    from garment_gen.networks.segmenter import Segmenter
    from garment_gen.networks.stylegan2 import Discriminator

    torch.manual_seed(0)
    g = _generator()
    seg = Segmenter(encoder_depth=3, decoder_channels=[16, 8, 8], resolution=32)
    return {
        "generator": g,
        "discriminator": Discriminator(32, channel_base=256, channel_max=32),
        "projected_discriminator": ProjectedDiscriminator(32, feature_size=64, channel_max=32),
        "segmenter": seg,
        "encoders": GarmentEncoders.from_generator(
            g, base_channels=8, max_channels=16, injection="both", inject_max_resolution=16
        ),
        "garment_model": GarmentModel.from_generator(
            g, segmenter=seg, base_channels=8, max_channels=16, injection="both"
        ),
    }


@pytest.mark.parametrize("kind", list(_networks()))
def test_every_network_round_trips(kind, tmp_path):
    net = _networks()[kind].eval()
    with torch.no_grad():  # make every parameter differ from a fresh build
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    path = save_model(net, tmp_path / f"{kind}.pt", meta={"note": kind})
    raw = torch.load(path, map_location="cpu", weights_only=True)  # no pickled code
    assert raw["kind"] == kind and raw["format_version"] == 2
    back, meta = load_model(path, kind)
    assert meta == {"note": kind} and type(back) is type(net)
    assert back.get_config() == net.get_config()
    src, dst = net.state_dict(), back.state_dict()
    assert src.keys() == dst.keys()
    for k in src:
        assert torch.equal(src[k], dst[k]), k
    assert not any(p.requires_grad for p in back.parameters())


def test_another_kind_or_a_damaged_file_is_one_line(tmp_path):
    path = save_model(_generator(), tmp_path / "generator.pt")
    with pytest.raises(
        ModelFileError, match="this is a pretrained generator.*expected a garment model"
    ):
        load_model(path, "garment_model")
    broken = tmp_path / "broken.pt"
    broken.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ModelFileError, match="broken.pt: cannot be loaded safely"):
        load_model(broken)
    with pytest.raises(ModelFileError, match="missing.pt: model file not found"):
        load_model(tmp_path / "missing.pt")
    torch.save({"kind": "generator", "format_version": 99, "config": {}, "state_dict": {}}, broken)
    with pytest.raises(ModelFileError, match="newer garment_gen"):
        load_model(broken)
    ckpt = tmp_path / "last.ckpt"
    torch.save({"state_dict": {}, "pytorch-lightning_version": "2.6"}, ckpt)
    with pytest.raises(ModelFileError, match="a training checkpoint"):
        load_model(ckpt)


def test_float16_files_load_as_float32(tmp_path):
    g = _generator()
    full = save_model(g, tmp_path / "a.pt")
    half = save_model(g, tmp_path / "b.pt", dtype=torch.float16)
    assert half.stat().st_size < 0.6 * full.stat().st_size
    back, _ = load_model(half, "generator")
    assert all(p.dtype == torch.float32 for p in back.parameters())
    z = torch.randn(2, 16)
    torch.testing.assert_close(
        back(z, noise_mode="const"), g.eval()(z, noise_mode="const"), atol=2e-2, rtol=0
    )


def test_files_of_the_first_format_still_load(tmp_path):
    """generator.pt / segmenter.pt / garment_model.pt as sessions 1-3 wrote them."""
    from garment_gen.networks.encoders import GarmentEncoders

    g = _generator().eval()
    old_gen = tmp_path / "generator.pt"
    torch.save(
        {
            "format": "garment_gen.generator/1",
            "class": "garment_gen.networks.stylegan2.Generator",
            "kwargs": g.get_config(),
            "state_dict": g.state_dict(),
        },
        old_gen,
    )
    back, _ = load_model(old_gen, "generator")
    z = torch.randn(2, 16)
    torch.testing.assert_close(back(z, noise_mode="const"), g(z, noise_mode="const"))
    enc = GarmentEncoders(g.num_ws, g.w_dim, 32, w_avg=g.w_avg, base_channels=8, max_channels=16)
    cfg = {
        k: v
        for k, v in enc.get_config().items()
        if k not in ("injection", "inject_max_resolution", "generator_channels")
    }
    old_model = tmp_path / "garment_model.pt"
    torch.save(
        {
            "format": "garment_gen.garment_model/1",
            "generator": {"kwargs": g.get_config(), "state_dict": g.state_dict()},
            "encoders": {"kwargs": cfg, "state_dict": enc.state_dict()},
            "segmenter": None,
            "data": {"resolution": 32, "margin": 0.06, "background": [255, 255, 255]},
            "meta": {"a": 1},
        },
        old_model,
    )
    model, meta = load_model(old_model, "garment_model")
    assert meta == {"a": 1} and model.segmenter is None and model.data["resolution"] == 32
    mask = (torch.rand(2, 1, 32, 32) > 0.5).float()
    tex = torch.rand(2, 3, 32, 32) * 2 - 1
    torch.testing.assert_close(model(mask, tex), g.synthesis(enc(mask, tex), noise_mode="const"))
