"""The EfficientNet-lite0 segmenter: offline ImageNet weights really land in smp's timm encoder,
its export rebuilds without the ImageNet file, and it segments 64 px images."""

from __future__ import annotations

import hydra
import pytest
import torch

from garment_gen.errors import GarmentGenError
from garment_gen.networks import feature_nets
from garment_gen.networks.segmenter import (
    LITE0_ENCODER,
    Segmenter,
    export_segmenter,
    load_segmenter,
)

LITE0 = dict(encoder_name=LITE0_ENCODER, encoder_depth=4, decoder_channels=[128, 64, 32, 16])


@pytest.fixture(scope="module")
def lite0() -> Segmenter:
    torch.manual_seed(0)
    return Segmenter(**LITE0, pretrained_encoder=True)


def test_imagenet_weights_land_in_the_encoder(lite0):
    imagenet = feature_nets.load_efficientnet_lite0_state()
    encoder = lite0.net.encoder.model.state_dict()
    assert len(encoder) == len(lite0.encoder_report["loaded"]) == 198
    for key, tensor in encoder.items():
        assert torch.equal(tensor, imagenet[key]), key
    unused = set(lite0.encoder_report["unused"])
    assert {"conv_head.weight", "classifier.weight", "classifier.bias"} <= unused
    assert len(encoder) + len(unused) == feature_nets.NUM_TENSORS  # every tensor accounted for
    # depth 4 uses features down to stride 16: blocks 5 and 6 (stride 32) are trimmed away
    assert len(lite0.net.encoder.model.blocks) == 5
    assert not any(k.startswith(("blocks.5.", "blocks.6.")) for k in encoder)

    torch.manual_seed(0)
    scratch = Segmenter(**LITE0).net.encoder.model.state_dict()
    assert not torch.equal(scratch["conv_stem.weight"], imagenet["conv_stem.weight"])


def test_forward_gives_logits_at_64px(lite0):
    img = torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        logits = lite0.eval()(img)
    assert logits.shape == (2, 1, 64, 64) and torch.isfinite(logits).all()
    with torch.no_grad():
        assert lite0(img[:, :, :40, :56]).shape == (2, 1, 40, 56)  # padded to a multiple of 16


def test_export_round_trips_without_the_imagenet_file(lite0, tmp_path, monkeypatch):
    seg = Segmenter(**LITE0, pretrained_encoder=True).train()
    with torch.no_grad():  # as after training: weights differ from both ImageNet and a fresh build
        for p in seg.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    path = export_segmenter(seg, tmp_path / "segmenter.pt")
    config = seg.get_config()
    assert config["pretrained_encoder"] is False
    assert config["encoder_init"].startswith("imagenet")

    def no_imagenet(*args, **kwargs):
        raise AssertionError("load_segmenter read the ImageNet weights")

    monkeypatch.setattr(feature_nets, "load_efficientnet_lite0_state", no_imagenet)
    monkeypatch.setattr(feature_nets, "efficientnet_lite0_weights_path", no_imagenet)
    back = load_segmenter(path)
    assert back.get_config() == config  # encoder_init survives as information
    src, dst = seg.state_dict(), back.state_dict()
    assert src.keys() == dst.keys()
    for key in src:
        assert torch.equal(src[key], dst[key]), key
    img = torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        assert torch.allclose(seg.eval()(img), back(img), atol=1e-6)
    with pytest.raises(AssertionError, match="ImageNet"):  # the patch is live: it would catch it
        Segmenter(**LITE0, pretrained_encoder=True)


def test_fp16_export_is_small(lite0, tmp_path):
    from garment_gen.networks.serialization import save_model

    path = save_model(lite0, tmp_path / "segmenter_fp16.pt", dtype=torch.float16)
    assert path.stat().st_size < 8e6
    back = load_segmenter(path)
    assert next(back.parameters()).dtype == torch.float32


def test_pretrained_encoder_refuses_other_encoders():
    with pytest.raises(GarmentGenError, match="pretrained_encoder"):
        Segmenter(encoder_name="tu-resnet18", encoder_depth=3, pretrained_encoder=True)


def test_config_builds_the_pretrained_lite0(compose_cfg):
    cfg = compose_cfg(["stage=segmenter"])  # the stage's default model
    assert cfg.model.net.encoder_name == LITE0_ENCODER and cfg.model.net.pretrained_encoder
    net = hydra.utils.instantiate(cfg.model.net, resolution=64)
    assert isinstance(net, Segmenter) and net.get_config()["encoder_name"] == LITE0_ENCODER
    imagenet = feature_nets.load_efficientnet_lite0_state()
    assert torch.equal(net.net.encoder.model.conv_stem.weight, imagenet["conv_stem.weight"])
