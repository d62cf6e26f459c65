"""Class-conditional GAN: the generator's class input, both discriminators' projection, the GAN
phases drawing fakes for the batch's classes, and the data's labels."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from garment_gen import sample_dir
from garment_gen.data.datamodule import GarmentDataModule
from garment_gen.data.dataset import GarmentDataset, dataset_classes
from garment_gen.losses.gan import GANLoss
from garment_gen.networks.projected import ProjectedDiscriminator
from garment_gen.networks.stylegan2 import (
    Discriminator,
    Generator,
    StyleGANConfigError,
    export_generator,
    load_generator,
)
from tests.conftest import TINY_CLASSES, sample_with_labels, tiny_conditional_generator

RES = 32
NAMES = TINY_CLASSES


def _generator(c_dim: int = 3) -> Generator:
    return tiny_conditional_generator(c_dim, RES, style_mixing_prob=0.0)


def test_generator_class_changes_the_style_and_indices_equal_one_hot():
    g = _generator()
    z = torch.randn(1, 16).expand(3, -1)
    ws = g.mapping(z, c=torch.tensor([0, 1, 2]))
    assert not torch.allclose(ws[0], ws[1]) and not torch.allclose(ws[1], ws[2])
    assert torch.equal(ws, g.mapping(z, c=torch.eye(3)))
    img = g(z, c=torch.tensor([2, 2, 2]), noise_mode="const")
    assert torch.allclose(img[0], img[1]) and img.shape == (3, 3, RES, RES)
    # no class given: each row draws one at random, still a valid image of every row
    assert g(torch.randn(5, 16), noise_mode="const").shape == (5, 3, RES, RES)
    assert g.class_index("pants") == 1


def test_generator_class_errors_are_one_line():
    g = _generator()
    with pytest.raises(ValueError, match=r"class index out of range: got 0\.\.3, expected 0\.\.2"):
        g.mapping(torch.randn(2, 16), c=torch.tensor([0, 3]))
    with pytest.raises(ValueError, match=r"c must be \[2\] class indices or \[2, 3\]"):
        g.mapping(torch.randn(2, 16), c=torch.zeros(2, 4))
    with pytest.raises(ValueError, match="unknown class 'coat'.*dress, pants, skirt"):
        g.class_index("coat")
    with pytest.raises(StyleGANConfigError, match="class_names must be 3 distinct names"):
        Generator(RES, c_dim=3, class_names=["a", "b"])
    with pytest.raises(StyleGANConfigError, match="c_dim must be an int >= 0"):
        Generator(RES, c_dim=-1)
    with pytest.raises(ValueError, match="not class-conditional"):
        _generator(c_dim=0).class_index("dress")


def test_conditional_generator_file_keeps_its_classes(tmp_path):
    g = _generator().eval()
    path = export_generator(g, tmp_path / "generator.pt")
    back = load_generator(path)
    assert back.c_dim == 3 and back.class_names == NAMES
    z, c = torch.randn(2, 16), torch.tensor([0, 2])
    assert torch.equal(g(z, c=c, noise_mode="const"), back(z, c=c, noise_mode="const"))


def test_unconditional_generator_ignores_c_and_keeps_its_mapping_width():
    g = _generator(c_dim=0)
    assert g.mapping_net[0].weight.shape[1] == 16 and not hasattr(g, "class_embed")
    z = torch.randn(2, 16)
    assert torch.equal(g.mapping(z), g.mapping(z, c=torch.tensor([5, 9])))


@pytest.fixture(scope="module")
def projected_d() -> ProjectedDiscriminator:
    torch.manual_seed(0)
    return ProjectedDiscriminator(RES, feature_size=64, c_dim=3, cmap_dim=8).eval()


@pytest.mark.parametrize("kind", ["projected", "stylegan2"])
def test_conditional_discriminators_score_image_and_class(kind, projected_d):
    if kind == "projected":
        d = projected_d
    else:
        torch.manual_seed(0)
        d = Discriminator(RES, channel_base=256, channel_max=16, c_dim=3, cmap_dim=8)
    img = torch.rand(2, 3, RES, RES) * 2 - 1
    a, b = d(img, torch.tensor([0, 0])), d(img, torch.tensor([1, 1]))
    n = projected_d.num_logits if kind == "projected" else 1
    assert a.shape == (2, n) and torch.isfinite(a).all()
    assert not torch.allclose(a, b)  # the same image scores differently as another class
    assert torch.allclose(a, d(img, torch.eye(3)[[0, 0]]))
    with pytest.raises(ValueError, match="class-conditional.*pass c"):
        d(img)
    d.zero_grad()
    d(img, torch.tensor([0, 2])).mean().backward()
    assert d.class_embed.weight.grad is not None and d.class_embed.weight.grad.abs().sum() > 0


class _Parts(torch.nn.Module):
    def __init__(self, D: torch.nn.Module):
        super().__init__()
        self.G, self.D = _generator(), D
        self.register_buffer("pl_mean", torch.zeros(()))
        self.classes: list[torch.Tensor] = []
        self.G.mapping_net.register_forward_pre_hook(self._spy)

    def _spy(self, module, args):  # the class half of the mapping network's input
        self.classes.append(args[0][:, 16:].detach().clone())

    def augment_images(self, x):
        return x

    def sample_z(self, n):
        return torch.randn(n, 16)


@pytest.mark.parametrize("reuse", [False, True])
def test_phases_draw_fakes_for_the_batch_classes(reuse):
    torch.manual_seed(0)
    d = Discriminator(RES, channel_base=256, channel_max=16, c_dim=3, cmap_dim=8)
    parts = _Parts(d)
    loss = GANLoss("hinge", 1.0, 1, 2.0, 1, 2, 0.01, reuse_fakes=reuse)
    real = torch.rand(4, 3, RES, RES) * 2 - 1
    real_c = torch.tensor([2, 0, 1, 2])
    for phase in loss.phases():
        value, logs = phase.fn(parts, real, real_c)
        assert torch.isfinite(value), phase.name
    expected = parts.G.class_embed(torch.eye(3)[real_c])
    expected = expected * torch.rsqrt(expected.square().mean(1, keepdim=True) + 1e-8)
    # every fake (Dmain's unless reused, Gmain's, Greg's smaller batch) is of the batch's classes
    assert len(parts.classes) == (2 if reuse else 3)
    for got in parts.classes:
        assert torch.allclose(got, expected[: got.shape[0]], atol=1e-6)
    assert parts.classes[-1].shape[0] == 2  # Greg: the batch / pl_batch_shrink


def test_dataset_labels_index_the_sorted_classes_of_all_splits(tmp_path):
    classes = dataset_classes(sample_dir())
    assert classes == sorted(classes) and len(classes) == 8 and "dress" in classes
    ds = GarmentDataset(sample_dir(), "validation")
    item = ds[0]
    assert ds.classes == classes and classes[item["label"]] == ds.rows[0]["label"]
    root = sample_with_labels(tmp_path, lambda i, label: "" if i == 0 else label)
    dm = GarmentDataModule(root=root, num_workers=0)
    assert dm.unlabeled == 1 and dm.classes == classes
    split = _split_of(root, 0)
    assert GarmentDataset(root, split)[0]["label"] == -1  # the manifest's first row, no label


def _split_of(root: Path, i: int) -> str:
    with open(root / "manifest.csv", newline="") as f:
        return list(csv.DictReader(f))[i]["split"]


def test_projected_class_probe_learns_the_classes_of_reals(projected_d):
    """Dmain's probe term alone teaches the probe two visibly different classes (red tops vs
    blue trousers-like bars) within a few dozen steps; an unconditional D has no probe."""
    d = ProjectedDiscriminator(RES, feature_size=64, c_dim=2, cmap_dim=8)
    img = torch.ones(8, 3, RES, RES)
    img[:4, :, 8:24, 6:26] = torch.tensor([0.8, -0.8, -0.8]).view(3, 1, 1)  # red block
    img[4:, :, 4:28, 10:14] = torch.tensor([-0.8, -0.8, 0.8]).view(3, 1, 1)  # two blue legs
    img[4:, :, 4:28, 18:22] = torch.tensor([-0.8, -0.8, 0.8]).view(3, 1, 1)
    c = torch.tensor([0] * 4 + [1] * 4)
    opt = torch.optim.Adam(d.classifier.parameters(), lr=0.002)
    emb = [m.detach() for m in d.embed(img)]
    first = torch.nn.functional.cross_entropy(d.classify(emb), c).item()
    for _ in range(40):
        loss = torch.nn.functional.cross_entropy(d.classify(emb), c)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.1 * first and (d.classify(emb).argmax(1) == c).all()
    with pytest.raises(ValueError, match="not class-conditional"):
        ProjectedDiscriminator(RES, feature_size=64).classify(emb)


def test_class_weight_adds_the_probe_terms_only_for_a_conditional_projected_d(projected_d):
    torch.manual_seed(0)
    parts = _Parts(projected_d)
    real = torch.rand(4, 3, RES, RES) * 2 - 1
    real_c = torch.tensor([0, 1, 2, 0])
    with_probe = GANLoss("hinge", 0.0, 16, 0.0, 4, 2, 0.01, class_weight=2.0)
    _, d_logs = with_probe.d_main(parts, real, real_c)
    assert 0 <= float(d_logs["train/class_acc_real"]) <= 1 and d_logs["train/class_real"] > 0
    torch.manual_seed(1)
    g_loss, g_logs = with_probe.g_main(parts, real, real_c)
    torch.manual_seed(1)
    plain_loss, plain_logs = GANLoss("hinge", 0.0, 16, 0.0, 4, 2, 0.01).g_main(parts, real, real_c)
    assert "train/class_fake" not in plain_logs
    assert torch.allclose(g_loss, plain_loss + 2.0 * g_logs["train/class_fake"], atol=1e-5)
    sg2 = Discriminator(RES, channel_base=256, channel_max=16, c_dim=3, cmap_dim=8)
    _, logs = with_probe.g_main(_Parts(sg2), real, real_c)  # no probe: nothing added
    assert "train/class_fake" not in logs
    with pytest.raises(Exception, match="class_weight"):
        GANLoss("hinge", 0.0, 16, 0.0, 4, 2, 0.01, class_weight=-1)
