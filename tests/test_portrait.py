"""Portrait (3:4) models: rectangular generator, discriminators and encoders, and one tiny
portrait model trained, generated from, exported and reloaded end to end."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from garment_gen.networks.encoders import EncoderConfigError, GarmentEncoders
from garment_gen.networks.garment_model import GarmentModel
from garment_gen.networks.serialization import load_model, save_model
from garment_gen.networks.stylegan2 import Discriminator, Generator, StyleGANConfigError
from tests.conftest import TINY_CHAIN

TINY_G = dict(z_dim=16, w_dim=16, mapping_layers=2, channel_base=512, channel_max=32)


@pytest.mark.parametrize("resolution", [32, 64, 128])
@pytest.mark.parametrize("aspect, width_share", [("1:1", 1.0), ("3:4", 0.75)])
def test_generator_and_discriminator_draw_and_read_the_rectangle(resolution, aspect, width_share):
    torch.manual_seed(0)
    g = Generator(resolution, aspect=aspect, **TINY_G)
    d = Discriminator(resolution, channel_base=512, channel_max=32, aspect=aspect)
    width = int(resolution * width_share)
    img = g(torch.randn(3, 16))
    assert img.shape == (3, 3, resolution, width) and g.width == width
    assert g.synthesis.block_sizes[4] == (4, 3 if aspect == "3:4" else 4)
    # W+ does not depend on the aspect: the encoders' contract is unchanged
    assert g.num_ws == Generator(resolution, **TINY_G).num_ws
    logits = d(img)
    assert logits.shape == (3, 1)
    logits.sum().backward()  # the custom blur backward handles the rectangle too
    assert all(p.grad is not None for p in d.parameters() if p.requires_grad)
    with pytest.raises(ValueError, match=f"img must be \\[B, 3, {resolution}, {width}\\]"):
        d(torch.zeros(1, 3, resolution, resolution + 4))


def test_portrait_generator_is_not_a_cropped_square():
    """The 4 x 3 constant and the W-axis upsampling are the portrait network's own, not a crop."""
    torch.manual_seed(1)
    g = Generator(32, aspect="3:4", **TINY_G).eval()
    assert g.synthesis.blocks[0].const.shape[-2:] == (4, 3)
    assert g.synthesis.blocks[1].img_up_w.shape == (6, 3)
    with torch.no_grad():
        a = g(torch.randn(2, 16), noise_mode="const")
        b = g(torch.randn(2, 16), noise_mode="const", fused_modconv=True)
    assert a.shape == (2, 3, 32, 24) and torch.isfinite(a).all()
    ws = g.mapping(torch.randn(2, 16))
    with torch.no_grad():
        assert torch.allclose(
            g.synthesis(ws, noise_mode="const"),
            g.synthesis(ws, noise_mode="const", fused_modconv=True),
            atol=1e-4,
        )
    assert not torch.allclose(a, b)  # different z, different garments


@pytest.mark.parametrize("injection", ["styles", "features", "both"])
def test_portrait_encoders_feed_every_injected_block(injection):
    torch.manual_seed(2)
    g = Generator(64, aspect="3:4", **TINY_G)
    model = GarmentModel.from_generator(
        g,
        num_layers=5,
        base_channels=8,
        max_channels=16,
        injection=injection,
        inject_max_resolution=64,
        texture_fit="shape",
        composite="mask",
    )
    assert model.aspect == "3:4" and model.size == (64, 48)
    mask = torch.zeros(2, 1, 64, 48)
    mask[:, :, 8:60, 10:38] = 1
    texture = torch.rand(2, 3, 64, 48) * 2 - 1
    ws, maps = model.styles(mask, texture)
    assert ws.shape == (2, g.num_ws, 16)
    for r, m in maps.items():
        assert tuple(m.shape[-2:]) == g.synthesis.block_sizes[r]
    out = model(mask, texture)
    assert out.shape == (2, 3, 64, 48)
    assert torch.allclose(out[:, :, 0, 0], torch.ones(2, 3))  # composited background outside
    out.mean().backward()
    assert any(p.grad is not None for p in model.encoders.parameters())


def test_projected_discriminator_reads_the_rectangle_undistorted():
    from garment_gen.networks.projected import ProjectedConfigError, ProjectedDiscriminator

    d = ProjectedDiscriminator(64, aspect="3:4")
    assert d.features.input_size == (128, 96)  # feature_size high, as wide as the aspect makes it
    img = (torch.rand(2, 3, 64, 48) * 2 - 1).requires_grad_(True)
    logits = d(img)
    assert logits.shape == (2, d.num_logits) and d.num_logits == 4 * 12
    logits.mean().backward()
    assert img.grad is not None and img.grad.abs().sum() > 0
    with pytest.raises(ProjectedConfigError, match="not a multiple of 32"):
        ProjectedDiscriminator(64, feature_size=64, aspect="3:4")


@pytest.mark.parametrize("build", ["generator", "discriminator", "encoders"])
def test_an_odd_aspect_is_refused_naming_the_valid_ones(build):
    with pytest.raises((StyleGANConfigError, EncoderConfigError), match="one of 1:1, 3:4"):
        if build == "generator":
            Generator(64, aspect="2:3", **TINY_G)
        elif build == "discriminator":
            Discriminator(64, aspect="16:9")
        else:
            GarmentEncoders(num_ws=10, w_dim=16, resolution=64, aspect="4:3")


def test_encoders_and_generator_of_different_aspects_do_not_combine():
    g = Generator(64, aspect="3:4", **TINY_G)
    enc = GarmentEncoders(num_ws=g.num_ws, w_dim=16, resolution=64)
    with pytest.raises(ValueError, match="encoders read 1:1 images, the generator draws 3:4"):
        GarmentModel(g, enc)


def test_portrait_networks_round_trip_and_square_files_still_load(tmp_path):
    torch.manual_seed(3)
    g = Generator(32, aspect="3:4", **TINY_G).eval()
    path = save_model(g, tmp_path / "generator.pt")
    g2 = load_model(path)[0].eval()
    assert g2.aspect == "3:4" and g2.get_config() == g.get_config()
    ws = g.mapping(torch.randn(2, 16))
    with torch.no_grad():
        assert torch.equal(
            g.synthesis(ws, noise_mode="const"), g2.synthesis(ws, noise_mode="const")
        )
    # a file written before aspects existed (no "aspect" in its config) is a square model
    from garment_gen.inference import GarmentGenerator, pretrained_path

    gen = GarmentGenerator.from_pretrained("reference")
    assert gen.aspect == "1:1" and (gen.height, gen.width) == (64, 64)
    shipped = torch.load(pretrained_path("reference"), weights_only=True)
    assert "aspect" not in shipped["config"]["generator"]


# ----------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def portrait_model(portrait_data, tmp_path_factory) -> Path:
    """The smoke chain (a few steps per stage) trained on the 3:4 dataset: garment_model.pt."""
    from garment_gen.pipeline import compose_pipeline, run_pipeline

    out = tmp_path_factory.mktemp("portrait_model")
    p = compose_pipeline(
        "smoke", [f"pipeline.out={out}", f"pipeline.data={portrait_data}", *TINY_CHAIN]
    )
    return Path(run_pipeline(p)["runs"]["encoders"]) / "garment_model.pt"


def test_a_portrait_model_generates_exports_and_reloads(portrait_model, portrait_data, tmp_path):
    from garment_gen.evaluate import evaluate
    from garment_gen.export import export
    from garment_gen.generate import labelled_grid
    from garment_gen.inference import GarmentGenerator

    gen = GarmentGenerator.from_checkpoint(portrait_model)
    assert gen.aspect == "3:4" and (gen.height, gen.width) == (64, 48)
    assert gen.generator.width == 48 and gen.segmenter is not None

    # user inputs of any size are aligned into the portrait frame
    mask = np.zeros((300, 200), np.uint8)
    mask[30:280, 50:150] = 255  # a long, narrow garment
    texture = np.full((120, 160, 3), (200, 40, 40), np.uint8)  # a swatch, landscape
    out = gen.generate(Image.fromarray(mask), Image.fromarray(texture))
    assert out.size == (48, 64)
    grid = labelled_grid(
        gen.shape_tensor(mask).cpu(),
        gen.texture_tensor(texture).cpu(),
        gen.generate(mask, texture, output="tensor").cpu()[None],
        ["coat"],
        ["red"],
    )
    assert grid.shape[:2] == (2 + 2 * 66, 2 + 2 * 50)

    m, t = gen.shape_tensor(mask), gen.texture_tensor(texture)
    for fmt, name in (("torchscript", "model.ts"), ("onnx", "model.onnx")):
        res = export(str(portrait_model), format=fmt, out=str(tmp_path / name))
        assert res["aspect"] == "3:4" and res["max_abs_diff"] <= 1e-3, res
    ts = torch.jit.load(str(tmp_path / "model.ts"))
    assert ts(m, t).shape == (1, 3, 64, 48)
    import onnxruntime as ort

    sess = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    (onnx_out,) = sess.run(None, dict(zip(names, (m.numpy(), t.numpy()), strict=True)))
    assert onnx_out.shape == (1, 3, 64, 48)

    metrics = evaluate(
        gen,
        root=portrait_data,
        split="test",
        out=tmp_path / "eval",
        num_pairs=4,
        realism="fd_vgg",
        realism_size=32,
        speed_images=4,
        max_samples=6,
    )
    assert metrics["aspect"] == "3:4" and metrics["n"] >= 2
    assert (tmp_path / "eval" / "metrics.json").is_file()
    with pytest.raises(Exception, match="its images are 1:1, the model draws 3:4"):
        evaluate(gen, split="test", max_samples=4, realism="none")  # the square bundled sample


def test_the_studio_serves_a_portrait_model(portrait_model):
    import io

    from fastapi.testclient import TestClient

    from garment_gen.inference import GarmentGenerator
    from garment_gen.serve.app import ServeSettings, create_app

    gen = GarmentGenerator.from_checkpoint(portrait_model)
    app = create_app(ServeSettings(max_grid=2), generator=gen)
    with TestClient(app) as c:
        models = c.get("/api/models").json()["models"]
        assert any(m.get("aspect") == "3:4" for m in models)
        samples = c.get("/api/samples").json()["samples"]
        r = c.post(
            "/api/generate",
            data={"shape_id": samples[0]["id"], "texture_id": samples[1]["id"]},
        )
        assert r.status_code == 200, r.text
        assert Image.open(io.BytesIO(r.content)).size == (48, 64)


def test_realism_of_one_image_is_nan_not_a_crash():
    """One sample has no covariance; LAPACK's eigensolver on NaN killed the process (SIGSEGV)."""
    from garment_gen.metrics.realism import RealismMetric, frechet_distance

    assert torch.isnan(frechet_distance(torch.randn(1, 8), torch.randn(5, 8)))
    bad = torch.randn(4, 8)
    bad[0, 0] = float("nan")
    assert torch.isnan(frechet_distance(bad, torch.randn(4, 8)))
    metric = RealismMetric("fd_vgg", size=32)
    metric.update(torch.zeros(1, 3, 64, 48), real=True)
    metric.update(torch.zeros(1, 3, 64, 48), real=False)
    assert all(torch.isnan(v) for v in metric.compute_all().values())
