"""GarmentModel: one module for training, inference and export; fitting a texture to a shape."""

from __future__ import annotations

import pytest
import torch

from garment_gen.networks.garment_model import GarmentModel, fit_texture_to_shape


def _model(**kw) -> GarmentModel:
    from garment_gen.networks.stylegan2 import Generator

    torch.manual_seed(0)
    g = Generator(32, z_dim=16, w_dim=16, mapping_layers=1, channel_base=256, channel_max=32)
    return GarmentModel.from_generator(
        g, base_channels=8, max_channels=16, injection="both", inject_max_resolution=16, **kw
    )


def test_fit_moves_the_texture_garment_onto_the_shape_box_and_keeps_its_layout():
    bg = torch.ones(1, 3, 32, 32)
    texture = bg.clone()
    red, blue = torch.tensor([0.8, -0.8, -0.8]), torch.tensor([-0.8, -0.8, 0.8])
    texture[:, :, 4:12, 4:8] = red.view(1, 3, 1, 1)  # left half red
    texture[:, :, 4:12, 8:12] = blue.view(1, 3, 1, 1)  # right half blue
    mask = torch.zeros(1, 1, 32, 32)
    mask[:, :, 10:26, 8:24] = 1
    out = fit_texture_to_shape(mask, texture)
    assert torch.equal(out[0, :, mask[0, 0] == 0], torch.ones(3, int((mask == 0).sum())))
    assert torch.allclose(out[0, :, 18, 10], red, atol=1e-5)  # the left part of the shape
    assert torch.allclose(out[0, :, 18, 21], blue, atol=1e-5)  # the right part
    # a texture of the very garment of the mask comes back unchanged
    same = torch.where(mask > 0.5, torch.rand(1, 3, 32, 32) * 2 - 1, bg)
    torch.testing.assert_close(fit_texture_to_shape(mask, same), same)
    # a swatch filling the frame is stretched whole onto the shape
    swatch = torch.rand(1, 3, 32, 32) * 0.5 - 0.8
    fitted = fit_texture_to_shape(mask, swatch)
    assert (fitted[0, :, 10:26, 8:24] < 0).all()


def test_texture_fit_is_part_of_the_model_and_of_its_file(tmp_path):
    from garment_gen.networks.serialization import load_model, save_model

    model = _model(texture_fit="shape").eval()
    mask = torch.zeros(2, 1, 32, 32)
    mask[:, :, 6:28, 8:24] = 1
    tex = torch.ones(2, 3, 32, 32)
    tex[:, :, 2:12, 2:30] = -0.5
    assert not torch.equal(model.prepare_texture(mask, tex), tex)
    assert torch.equal(_model().prepare_texture(mask, tex), tex)  # texture_fit=none
    path = save_model(model, tmp_path / "m.pt")
    back, _ = load_model(path, "garment_model")
    assert back.texture_fit == "shape"
    torch.testing.assert_close(back(mask, tex), model(mask, tex))


def test_composite_mask_keeps_the_garment_inside_the_mask_and_is_saved(tmp_path):
    from garment_gen.networks.serialization import load_model, save_model

    drawn, kept = _model().eval(), _model(composite="mask").eval()
    mask = torch.zeros(2, 1, 32, 32)
    mask[:, :, 6:28, 8:24] = 1
    tex = torch.rand(2, 3, 32, 32) * 2 - 1
    a, b = drawn(mask, tex), kept(mask, tex)
    inside = mask.expand_as(a) > 0.5
    torch.testing.assert_close(b[inside], a[inside])  # the same garment inside the mask...
    assert torch.equal(b[~inside], torch.ones(int((~inside).sum())))  # ...white outside
    assert not torch.equal(a[~inside], b[~inside])
    back, _ = load_model(save_model(kept, tmp_path / "m.pt"), "garment_model")
    assert back.composite == "mask"
    torch.testing.assert_close(back(mask, tex), b)
    with pytest.raises(ValueError, match="composite must be one of none, mask"):
        _model(composite="alpha")


def test_garment_model_traces_with_injection_and_fit():
    model = _model(texture_fit="shape", composite="mask").eval().requires_grad_(False)
    mask = (torch.rand(2, 1, 32, 32) > 0.5).float()
    mask[:, :, 8:24, 8:24] = 1
    tex = torch.rand(2, 3, 32, 32) * 2 - 1
    traced = torch.jit.trace(lambda m, t: model(m, t), (mask, tex), check_trace=False)
    mask2 = torch.zeros(3, 1, 32, 32)
    mask2[:, :, 4:20, 10:30] = 1
    tex2 = torch.rand(3, 3, 32, 32) * 2 - 1
    torch.testing.assert_close(traced(mask2, tex2), model(mask2, tex2))


def test_frozen_generator_stays_frozen_unless_tuned():
    model = _model()
    assert not any(p.requires_grad for p in model.generator.parameters())
    assert all(p.requires_grad for p in model.encoders.parameters())
    model.train()
    assert not model.generator.training
    tuned = _model(tune_generator="torgb")
    free = {n for n, p in tuned.generator.named_parameters() if p.requires_grad}
    assert free and all(".torgb." in n for n in free)
    with pytest.raises(ValueError, match="texture_fit"):
        _model(texture_fit="warp")
