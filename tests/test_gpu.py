"""CUDA checks, run by scripts/gpu_check.sh on a GPU machine (`pytest -m gpu`); CI deselects them."""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def cuda():
    assert torch.cuda.is_available(), "run the gpu-marked tests on a machine with CUDA"
    return torch.device("cuda")


def test_generator_bf16_close_to_fp32(cuda):
    from garment_gen.networks.stylegan2 import Discriminator, Generator

    g = Generator(
        64, z_dim=128, w_dim=128, mapping_layers=2, channel_base=4096, channel_max=128
    ).to(cuda)
    d = Discriminator(64, channel_base=4096, channel_max=128).to(cuda)
    z = torch.randn(8, 128, device=cuda)
    with torch.no_grad():
        ref = g(z, noise_mode="const")
        with torch.autocast("cuda", dtype=torch.bfloat16):
            low = g(z, noise_mode="const")
    assert (ref - low.float()).abs().mean() < 0.05
    loss = d(g(z)).mean()
    loss.backward()
    assert all(p.grad is not None for p in g.synthesis.parameters() if p.requires_grad)


def test_pretrain_and_encoders_steps_on_gpu(tmp_path, cuda):
    from garment_gen.train import train
    from tests.conftest import TINY_ENCODERS, compose_config

    cfg = compose_config(
        [
            "stage=pretrain",
            "gan=stylegan2",
            "model=stylegan2_tiny",
            "debug=fast",
            "trainer=gpu",
            "model.realism=null",
        ],
        tmp_path / "pre",
        tmp_path,
    )
    train(cfg)
    cfg = compose_config(
        [
            "stage=encoders",
            *TINY_ENCODERS,
            "trainer=gpu",
            f"model.generator={tmp_path / 'pre' / 'generator.pt'}",
            "trainer.max_steps=4",
            "trainer.limit_val_batches=1",
        ],
        tmp_path / "enc",
        tmp_path,
    )
    metrics = train(cfg)
    assert (tmp_path / "enc" / "garment_model.pt").is_file() and metrics["train/first"] > 0


def test_generation_on_gpu_matches_cpu(tmp_path, cuda, tiny_garment_model):
    from garment_gen.inference import GarmentGenerator

    cpu = GarmentGenerator.from_checkpoint(tiny_garment_model)
    gpu = GarmentGenerator.from_checkpoint(tiny_garment_model, device="cuda")
    mask = torch.zeros(2, 1, 64, 64)
    mask[:, :, 16:48, 20:44] = 1
    tex = torch.rand(2, 3, 64, 64) * 2 - 1
    a = cpu.generate_tensors(mask, tex)
    b = gpu.generate_tensors(mask, tex).cpu()
    assert (a - b).abs().max() < 1e-2
