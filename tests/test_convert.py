"""garment_gen.convert: NVlabs / rosinality generators in, garment_gen generator.pt out.

The fixtures are written here, in the foreign formats, by this file's own code: an NVlabs
network pickle (persistent-class records built with fake ``torch_utils`` / ``dnnlib`` modules
that exist in ``sys.modules`` only while the fixture is pickled) and a rosinality checkpoint.
Parity is checked against this file's own reference implementations of their forward passes
(per-sample fused modulated convs with 2D upfirdn2d filters, post-gain clamping), which share
no code with garment_gen's generator.
"""

from __future__ import annotations

import argparse
import builtins
import contextlib
import hashlib
import math
import os
import pathlib
import pickle
import subprocess
import sys
import types
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from garment_gen.convert import ConvertError, convert_generator, estimate_w_avg, read_source
from garment_gen.networks.serialization import load_model
from garment_gen.networks.stylegan2 import Generator

CFG = dict(resolution=32, z_dim=16, w_dim=16, mapping_layers=2, lr=0.01, base=256, cmax=16)
SQRT2 = math.sqrt(2.0)
F2D = torch.outer(torch.tensor([1.0, 3, 3, 1]), torch.tensor([1.0, 3, 3, 1])) / 64


def channels(cfg: dict) -> dict[int, int]:
    log2 = int(math.log2(cfg["resolution"]))
    return {2**i: min(cfg["base"] // 2**i, cfg["cmax"]) for i in range(2, log2 + 1)}


def random_nvlabs_flat(cfg: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights in NVlabs' layout and naming (``mapping.fc0.weight``, ``synthesis.b4.const``...)."""
    gen = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=1.0, shift=0.0):
        return torch.randn(*shape, generator=gen) * scale + shift

    wd, ch, flat = cfg["w_dim"], channels(cfg), {}
    for i in range(cfg["mapping_layers"]):
        fan_in = cfg["z_dim"] if i == 0 else wd
        flat[f"mapping.fc{i}.weight"] = rnd(wd, fan_in, scale=1 / cfg["lr"])
        flat[f"mapping.fc{i}.bias"] = rnd(wd, scale=10.0)  # x lr_multiplier 0.01 at run time
    flat["mapping.w_avg"] = rnd(wd, scale=0.5)
    for r, c in ch.items():
        b = f"synthesis.b{r}"
        if r == 4:
            flat[f"{b}.const"] = rnd(c, 4, 4)
        for name in ["conv1"] if r == 4 else ["conv0", "conv1"]:
            c_in = ch[r // 2] if name == "conv0" else c
            flat[f"{b}.{name}.weight"] = rnd(c, c_in, 3, 3)
            flat[f"{b}.{name}.bias"] = rnd(c, scale=0.2)
            flat[f"{b}.{name}.noise_strength"] = rnd((), scale=0.3)
            flat[f"{b}.{name}.noise_const"] = rnd(r, r)
            flat[f"{b}.{name}.affine.weight"] = rnd(c_in, wd)
            flat[f"{b}.{name}.affine.bias"] = rnd(c_in, scale=0.1, shift=1.0)
        flat[f"{b}.torgb.weight"] = rnd(3, c, 1, 1)
        flat[f"{b}.torgb.bias"] = rnd(3, scale=0.2)
        flat[f"{b}.torgb.affine.weight"] = rnd(c, wd)
        flat[f"{b}.torgb.affine.bias"] = rnd(c, scale=0.1, shift=1.0)
    return flat


def ours_to_nvlabs_flat(g: Generator) -> dict[str, torch.Tensor]:
    """Export garment_gen's generator into NVlabs' naming and layout (the inverse mapping)."""
    flat = {"mapping.w_avg": g.w_avg}
    for i, fc in enumerate(g.mapping_net):
        flat[f"mapping.fc{i}.weight"], flat[f"mapping.fc{i}.bias"] = fc.weight, fc.bias
    for blk in g.synthesis.blocks:
        b = f"synthesis.b{blk.resolution}"
        if blk.first:
            flat[f"{b}.const"] = blk.const[0]
        for name in ["conv1"] if blk.first else ["conv0", "conv1"]:
            layer = getattr(blk, name)
            for k in ("weight", "bias", "noise_strength", "noise_const"):
                flat[f"{b}.{name}.{k}"] = getattr(layer, k)
            flat[f"{b}.{name}.affine.weight"] = layer.affine.weight
            flat[f"{b}.{name}.affine.bias"] = layer.affine.bias
        flat[f"{b}.torgb.weight"] = blk.torgb.weight[:, :, None, None]
        flat[f"{b}.torgb.bias"] = blk.torgb.bias
        flat[f"{b}.torgb.affine.weight"] = blk.torgb.affine.weight
        flat[f"{b}.torgb.affine.bias"] = blk.torgb.affine.bias
    return {k: v.detach().clone() for k, v in flat.items()}


# --------------------------------------------------------------------------- NVlabs pickle writer


@contextlib.contextmanager
def fake_nvlabs_modules():
    """``torch_utils.persistence`` and ``dnnlib.util`` in ``sys.modules`` only while pickling."""

    def _reconstruct_persistent_obj(meta):  # pragma: no cover - never called: loads use stubs
        raise AssertionError("the fixture's reconstruct function must never be called")

    _reconstruct_persistent_obj.__module__ = "torch_utils.persistence"
    _reconstruct_persistent_obj.__qualname__ = "_reconstruct_persistent_obj"

    class EasyDict(dict):
        pass

    EasyDict.__module__, EasyDict.__qualname__ = "dnnlib.util", "EasyDict"
    mods = {n: types.ModuleType(n) for n in ("torch_utils", "torch_utils.persistence")}
    mods |= {n: types.ModuleType(n) for n in ("dnnlib", "dnnlib.util")}
    mods["torch_utils.persistence"]._reconstruct_persistent_obj = _reconstruct_persistent_obj
    mods["dnnlib.util"].EasyDict = EasyDict
    assert not set(mods) & set(sys.modules)
    sys.modules.update(mods)
    try:
        yield EasyDict
    finally:
        for n in mods:
            sys.modules.pop(n, None)


class Persistent:
    """Pickles like an NVlabs ``persistent_class`` instance: a reconstruct call with a meta dict."""

    def __init__(self, class_name: str, state: dict, module_src: str):
        self.class_name, self.state, self.module_src = class_name, state, module_src

    def __reduce__(self):
        meta = dict(
            type="class",
            version=6,
            module_src=self.module_src,
            class_name=self.class_name,
            state=self.state,
        )
        return (sys.modules["torch_utils.persistence"]._reconstruct_persistent_obj, (meta,))


MODULE_SRC = "import torch\n# training/networks.py would be here; garment_gen never runs it\n"


def module(class_name, flat, prefix, params=(), buffers=(), children=None, kwargs=None, **attrs):
    """A persistent record whose state looks like an ``nn.Module.__dict__``."""
    state = {
        "training": False,
        "_parameters": OrderedDict(
            (p, nn.Parameter(flat[f"{prefix}.{p}"].clone(), requires_grad=False)) for p in params
        ),
        "_buffers": OrderedDict((b, flat[f"{prefix}.{b}"].clone()) for b in buffers),
        "_non_persistent_buffers_set": set(),
        "_forward_hooks": OrderedDict(),
        "_modules": OrderedDict(children or {}),
        "_init_args": (),
        "_init_kwargs": dict(kwargs or {}),
        **attrs,
    }
    return Persistent(class_name, state, MODULE_SRC)


def nvlabs_generator(flat, cfg, EasyDict, c_dim=0, architecture="skip", conv_clamp=None):
    """The ``G_ema`` record tree (stylegan2-ada-pytorch names, attrs and init kwargs)."""
    flat = dict(flat)
    ch, wd = channels(cfg), cfg["w_dim"]
    for r in ch:  # resample_filter buffers, as upfirdn2d.setup_filter makes them
        for p in (f"synthesis.b{r}", f"synthesis.b{r}.conv0", f"synthesis.b{r}.conv1"):
            flat[f"{p}.resample_filter"] = F2D.clone()

    def fc(prefix, fan_in, lr, act):
        return module(
            "FullyConnectedLayer",
            flat,
            prefix,
            ("weight", "bias"),
            activation=act,
            weight_gain=np.float64(lr / np.sqrt(fan_in)),
            bias_gain=lr,
        )

    fcs = {
        f"fc{i}": fc(f"mapping.fc{i}", cfg["z_dim"] if i == 0 else wd, cfg["lr"], "lrelu")
        for i in range(cfg["mapping_layers"])
    }
    mapping = module(
        "MappingNetwork",
        flat,
        "mapping",
        buffers=("w_avg",),
        children=fcs,
        kwargs=dict(z_dim=cfg["z_dim"], c_dim=c_dim, w_dim=wd, num_ws=None, num_layers=len(fcs)),
        z_dim=cfg["z_dim"],
        c_dim=c_dim,
        w_dim=wd,
        num_layers=len(fcs),
        w_avg_beta=0.995,
    )
    blocks = {}
    for r, c in ch.items():
        b = f"synthesis.b{r}"
        layers = {}
        for name in ["conv1"] if r == 4 else ["conv0", "conv1"]:
            p = f"{b}.{name}"
            layers[name] = module(
                "SynthesisLayer",
                flat,
                p,
                ("weight", "noise_strength", "bias"),
                ("resample_filter", "noise_const"),
                {"affine": fc(f"{p}.affine", wd, 1, "linear")},
                resolution=r,
                up=2 if name == "conv0" else 1,
                use_noise=True,
                activation="lrelu",
                conv_clamp=conv_clamp,
                padding=1,
                act_gain=np.float64(np.sqrt(2)),
            )
        layers["torgb"] = module(
            "ToRGBLayer",
            flat,
            f"{b}.torgb",
            ("weight", "bias"),
            children={"affine": fc(f"{b}.torgb.affine", wd, 1, "linear")},
            conv_clamp=conv_clamp,
            weight_gain=np.float64(1 / np.sqrt(c)),
        )
        blocks[f"b{r}"] = module(
            "SynthesisBlock",
            flat,
            b,
            ("const",) if r == 4 else (),
            ("resample_filter",),
            layers,
            in_channels=0 if r == 4 else ch[r // 2],
            resolution=r,
            is_last=r == cfg["resolution"],
            architecture=architecture,
            use_fp16=False,
            num_conv=len(layers) - 1,
            num_torgb=1,
        )
    syn_kwargs = EasyDict(
        channel_base=cfg["base"],
        channel_max=cfg["cmax"],
        num_fp16_res=0,
        conv_clamp=conv_clamp,
        architecture=architecture,
    )
    synthesis = module(
        "SynthesisNetwork",
        flat,
        "synthesis",
        children=blocks,
        kwargs=dict(w_dim=wd, img_resolution=cfg["resolution"], img_channels=3, **syn_kwargs),
        w_dim=wd,
        img_resolution=cfg["resolution"],
        img_channels=3,
        block_resolutions=list(ch),
    )
    return module(
        "Generator",
        flat,
        "G",
        children={"synthesis": synthesis, "mapping": mapping},
        kwargs=dict(
            z_dim=cfg["z_dim"],
            c_dim=c_dim,
            w_dim=wd,
            img_resolution=cfg["resolution"],
            img_channels=3,
            mapping_kwargs=EasyDict(num_layers=cfg["mapping_layers"]),
            synthesis_kwargs=syn_kwargs,
        ),
        z_dim=cfg["z_dim"],
        c_dim=c_dim,
        w_dim=wd,
        img_resolution=cfg["resolution"],
        img_channels=3,
    )


def write_nvlabs_pickle(path, flat, cfg=CFG, protocol=4, tweak=None, **kw) -> Path:
    """A network-snapshot.pkl as NVlabs' training loop writes it (``pickle.dump`` of a dict)."""
    with fake_nvlabs_modules() as EasyDict:
        g_ema = nvlabs_generator(flat, cfg, EasyDict, **kw)
        if tweak:
            tweak(g_ema)
        d = module("Discriminator", {"D.b4.w": torch.zeros(2, 2)}, "D.b4", ("w",))
        aug = module("AugmentPipe", {"p.p": torch.zeros(())}, "p", buffers=("p",))
        data = dict(
            training_set_kwargs=EasyDict(class_name="training.dataset.ImageFolderDataset"),
            G=nvlabs_generator(flat, cfg, EasyDict, **kw),
            D=d,
            G_ema=g_ema,
            augment_pipe=aug,
        )
        with open(path, "wb") as f:
            pickle.dump(data, f, protocol=protocol)
    assert "torch_utils" not in sys.modules and "dnnlib" not in sys.modules
    return Path(path)


# --------------------------------------------------------------------------- reference math


def upfirdn2d(x, f, up=1, pad=(0, 0), gain=1.0):
    """Zero-insertion upsampling, zero padding (before, after), 2D FIR convolution, gain."""
    b, c, h, w = x.shape
    if up > 1:
        y = x.new_zeros(b, c, h * up, w * up)
        y[:, :, ::up, ::up] = x
        x = y
    x = F.pad(x, [pad[0], pad[1], pad[0], pad[1]])
    k = (f * gain).flip([0, 1])[None, None].repeat(c, 1, 1, 1)
    return F.conv2d(x, k, groups=c)


def modconv(x, weight, styles, up=False, demodulate=True):
    """Per-sample weights (``weight * style``, demodulated), one conv per sample."""
    w = weight[None] * styles[:, None, :, None, None]
    if demodulate:
        w = w * torch.rsqrt(w.square().sum(dim=[2, 3, 4]) + 1e-8)[:, :, None, None, None]
    out = []
    for i in range(w.shape[0]):
        xi = x[i : i + 1] if x.shape[0] > 1 else x
        if up:  # stride-2 transposed conv, then the [1,3,3,1] blur padded 1 each side, gain 4
            y = upfirdn2d(F.conv_transpose2d(xi, w[i].transpose(0, 1), stride=2), F2D, 1, (1, 1), 4)
        else:
            y = F.conv2d(xi, w[i], padding=w.shape[-1] // 2)
        out.append(y)
    return torch.cat(out)


def fc_ref(x, w, b, lr=1.0, act=False):
    x = x @ (w * (lr / math.sqrt(w.shape[1]))).t() + b * lr
    return F.leaky_relu(x, 0.2) * SQRT2 if act else x


def nvlabs_reference(flat, cfg, z, psi=1.0, cutoff=None, clamp=None):
    """NVlabs' G_ema(z, c=None, truncation_psi, truncation_cutoff, noise_mode='const'), float32."""
    x = z * torch.rsqrt(z.square().mean(dim=1, keepdim=True) + 1e-8)
    for i in range(cfg["mapping_layers"]):
        x = fc_ref(x, flat[f"mapping.fc{i}.weight"], flat[f"mapping.fc{i}.bias"], cfg["lr"], True)
    log2 = int(math.log2(cfg["resolution"]))
    num_ws = 2 * log2 - 2
    ws = x[:, None].repeat(1, num_ws, 1)
    if psi != 1:
        w_avg = flat["mapping.w_avg"]
        k = num_ws if cutoff is None else cutoff
        ws[:, :k] = w_avg.lerp(ws[:, :k], psi)
    return nvlabs_synthesis(flat, cfg, ws, clamp)


def nvlabs_synthesis(flat, cfg, ws, clamp=None):
    def layer(x, p, w, up):
        styles = fc_ref(w, flat[f"{p}.affine.weight"], flat[f"{p}.affine.bias"])
        x = modconv(x, flat[f"{p}.weight"], styles, up)
        x = x + flat[f"{p}.noise_const"] * flat[f"{p}.noise_strength"]
        x = F.leaky_relu(x + flat[f"{p}.bias"][None, :, None, None], 0.2) * SQRT2
        return x if clamp is None else x.clamp(-clamp, clamp)

    def torgb(x, p, w):
        wt = flat[f"{p}.weight"]
        styles = fc_ref(w, flat[f"{p}.affine.weight"], flat[f"{p}.affine.bias"])
        styles = styles / math.sqrt(wt.shape[1])
        y = modconv(x, wt, styles, demodulate=False) + flat[f"{p}.bias"][None, :, None, None]
        return y if clamp is None else y.clamp(-clamp, clamp)

    x = img = None
    idx = 0
    for r in channels(cfg):
        b = f"synthesis.b{r}"
        if r == 4:
            x = flat[f"{b}.const"][None].repeat(ws.shape[0], 1, 1, 1)
            x = layer(x, f"{b}.conv1", ws[:, 0], False)
            img = torgb(x, f"{b}.torgb", ws[:, 1])
            idx = 1
            continue
        x = layer(x, f"{b}.conv0", ws[:, idx], True)
        x = layer(x, f"{b}.conv1", ws[:, idx + 1], False)
        img = upfirdn2d(img, F2D, 2, (2, 1), 4) + torgb(x, f"{b}.torgb", ws[:, idx + 2])
        idx += 2
    return img


def rosinality_reference(sd, z, n_mlp, lr_mlp=0.01, latent_avg=None, psi=1.0):
    """rosinality's g_ema([z], truncation, truncation_latent, randomize_noise=False)."""
    x = z * torch.rsqrt(z.square().mean(dim=1, keepdim=True) + 1e-8)
    for i in range(1, n_mlp + 1):
        x = fc_ref(x, sd[f"style.{i}.weight"], sd[f"style.{i}.bias"], lr_mlp, True)
    if psi < 1:
        x = latent_avg + psi * (x - latent_avg)
    n_rgb = sum(1 for k in sd if k.startswith("to_rgbs.") and k.endswith(".conv.weight"))
    latent = x[:, None].repeat(1, 2 * (n_rgb + 2) - 2, 1)

    def styled(x, p, w, noise, up):
        wt = sd[f"{p}.conv.weight"][0]
        scale = 1 / math.sqrt(wt[0].numel())
        style = fc_ref(w, sd[f"{p}.conv.modulation.weight"], sd[f"{p}.conv.modulation.bias"])
        out = modconv(x, wt * scale, style, up)
        out = out + sd[f"{p}.noise.weight"] * noise
        return F.leaky_relu(out + sd[f"{p}.activate.bias"][None, :, None, None], 0.2) * SQRT2

    def to_rgb(x, p, w, skip):
        wt = sd[f"{p}.conv.weight"][0]
        style = fc_ref(w, sd[f"{p}.conv.modulation.weight"], sd[f"{p}.conv.modulation.bias"])
        out = modconv(x, wt / math.sqrt(wt[0].numel()), style, demodulate=False) + sd[f"{p}.bias"]
        return out if skip is None else out + upfirdn2d(skip, F2D * 4, 2, (2, 1))

    out = sd["input.input"].repeat(z.shape[0], 1, 1, 1)
    out = styled(out, "conv1", latent[:, 0], sd["noises.noise_0"], False)
    skip = to_rgb(out, "to_rgb1", latent[:, 1], None)
    for k in range(n_rgb):
        i = 2 * k + 1
        out = styled(out, f"convs.{2 * k}", latent[:, i], sd[f"noises.noise_{i}"], True)
        out = styled(
            out, f"convs.{2 * k + 1}", latent[:, i + 1], sd[f"noises.noise_{i + 1}"], False
        )
        skip = to_rgb(out, f"to_rgbs.{k}", latent[:, i + 2], skip)
    return skip


def nvlabs_flat_to_rosinality(flat, cfg) -> dict[str, torch.Tensor]:
    """The same weights in rosinality's state-dict naming and layout."""
    sd = {}
    for i in range(cfg["mapping_layers"]):
        sd[f"style.{i + 1}.weight"] = flat[f"mapping.fc{i}.weight"]
        sd[f"style.{i + 1}.bias"] = flat[f"mapping.fc{i}.bias"]
    sd["input.input"] = flat["synthesis.b4.const"][None]

    def conv(dst, src, noise_idx, up):
        sd[f"{dst}.conv.weight"] = flat[f"{src}.weight"][None]
        sd[f"{dst}.conv.modulation.weight"] = flat[f"{src}.affine.weight"]
        sd[f"{dst}.conv.modulation.bias"] = flat[f"{src}.affine.bias"]
        sd[f"{dst}.noise.weight"] = flat[f"{src}.noise_strength"].reshape(1)
        sd[f"{dst}.activate.bias"] = flat[f"{src}.bias"]
        sd[f"noises.noise_{noise_idx}"] = flat[f"{src}.noise_const"][None, None]
        if up:
            sd[f"{dst}.conv.blur.kernel"] = F2D * 4

    def rgb(dst, src, up):
        sd[f"{dst}.conv.weight"] = flat[f"{src}.weight"][None]
        sd[f"{dst}.conv.modulation.weight"] = flat[f"{src}.affine.weight"]
        sd[f"{dst}.conv.modulation.bias"] = flat[f"{src}.affine.bias"]
        sd[f"{dst}.bias"] = flat[f"{src}.bias"].reshape(1, 3, 1, 1)
        if up:
            sd[f"{dst}.upsample.kernel"] = F2D * 4

    conv("conv1", "synthesis.b4.conv1", 0, False)
    rgb("to_rgb1", "synthesis.b4.torgb", False)
    for k, r in enumerate(list(channels(cfg))[1:]):
        conv(f"convs.{2 * k}", f"synthesis.b{r}.conv0", 2 * k + 1, True)
        conv(f"convs.{2 * k + 1}", f"synthesis.b{r}.conv1", 2 * k + 2, False)
        rgb(f"to_rgbs.{k}", f"synthesis.b{r}.torgb", True)
    return {k: v.clone() for k, v in sd.items()}


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def flat():
    return random_nvlabs_flat(CFG)


@pytest.fixture(scope="module")
def nvlabs_pkl(tmp_path_factory, flat):
    return write_nvlabs_pickle(tmp_path_factory.mktemp("nv") / "network-snapshot.pkl", flat)


def z_batch(n: int = 3, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, CFG["z_dim"], generator=torch.Generator().manual_seed(seed))


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max())


# --------------------------------------------------------------------------- NVlabs: parity


def test_nvlabs_pickle_matches_their_forward_pass(nvlabs_pkl, flat, tmp_path):
    out = convert_generator(nvlabs_pkl, tmp_path / "generator.pt")
    g, meta = load_model(out, "generator")
    assert g.get_config()["clamp_after_gain"] and g.num_ws == 8
    z = z_batch()
    with torch.no_grad():
        for psi, cutoff in ((1.0, None), (0.6, None), (0.5, 3)):
            ours = g(z, truncation_psi=psi, truncation_cutoff=cutoff, noise_mode="const")
            ref = nvlabs_reference(flat, CFG, z, psi, cutoff)
            assert ref.abs().max() > 0.5  # the images are not trivially small
            assert max_diff(ours, ref) < 2e-5 * max(1.0, float(ref.abs().max())), (psi, cutoff)
    assert torch.equal(g.w_avg, flat["mapping.w_avg"])
    src = meta["converted_from"]
    assert src["format"] == "nvlabs-stylegan2-ada-pickle" and src["network"] == "G_ema"
    assert src["sha256"] == hashlib.sha256(nvlabs_pkl.read_bytes()).hexdigest()
    assert src["file"] == str(nvlabs_pkl.resolve())


def test_nvlabs_conv_clamp_is_applied_after_the_activation_gain(flat, tmp_path):
    """conv_clamp small enough to bite: 256 in NVlabs' config, 0.5 here."""
    pkl = write_nvlabs_pickle(tmp_path / "clamp.pkl", flat, protocol=3, conv_clamp=0.5)
    g, _ = read_source(pkl)
    z = z_batch(2)
    with torch.no_grad():
        ours = g(z, noise_mode="const")
        ref = nvlabs_reference(flat, CFG, z, clamp=0.5)
        assert max_diff(ours, ref) < 2e-5
        assert max_diff(ref, nvlabs_reference(flat, CFG, z)) > 0.1  # the clamp bites
        old_style = Generator(**{**g.get_config(), "clamp_after_gain": False})
        old_style.load_state_dict(g.state_dict())
        assert max_diff(old_style.eval()(z, noise_mode="const"), ref) > 1e-3


def test_our_generator_round_trips_through_nvlabs_format(tmp_path):
    torch.manual_seed(3)
    g = Generator(
        resolution=32, z_dim=16, w_dim=16, mapping_layers=2, channel_base=256, channel_max=16
    ).eval()
    with torch.no_grad():
        for name, p in g.named_parameters():
            if "noise_strength" in name or name.endswith("bias"):
                p.normal_(0, 0.3)
        g.w_avg.normal_()
    pkl = write_nvlabs_pickle(tmp_path / "ours.pkl", ours_to_nvlabs_flat(g))
    back, _ = read_source(pkl)
    z = z_batch()
    with torch.no_grad():
        a, b = g(z, noise_mode="const"), back(z, noise_mode="const")
        assert max_diff(a, b) <= 1e-6
        ws = g.mapping(z, truncation_psi=0.7)
        assert max_diff(g.synthesis(ws, "const"), back.synthesis(ws, "const")) <= 1e-6
        assert max_diff(ws, back.mapping(z, truncation_psi=0.7)) <= 1e-6
    assert {k: v.shape for k, v in back.state_dict().items()} == {
        k: v.shape for k, v in g.state_dict().items()
    }


def test_g_instead_of_g_ema_and_missing_network(nvlabs_pkl, tmp_path):
    g, meta = read_source(nvlabs_pkl, which="G")
    assert meta["converted_from"]["network"] == "G" and isinstance(g, Generator)
    with pytest.raises(ConvertError, match="which='D'"):
        read_source(nvlabs_pkl, which="D")


# --------------------------------------------------------------------------- NVlabs: refusals


def _sg3(g_ema):
    syn = g_ema.state["_modules"]["synthesis"]
    syn.state["_modules"] = OrderedDict(
        input=module("SynthesisInput", {}, "x"),
        L0_36_16=module(
            "SynthesisLayer", {"L0.magnitude_ema": torch.ones(())}, "L0", buffers=("magnitude_ema",)
        ),
    )


def _wide_mapping(g_ema):
    fc1 = g_ema.state["_modules"]["mapping"].state["_modules"]["fc1"]
    fc1.state["_parameters"]["weight"] = nn.Parameter(torch.zeros(16, 32))


def _channels_off_formula(
    g_ema,
):  # 16 px block with 12 channels: no (base, max) gives 16, 16, 12, 8
    blk = g_ema.state["_modules"]["synthesis"].state["_modules"]["b16"]
    for name in ("conv0", "conv1"):
        layer = blk.state["_modules"][name].state["_parameters"]
        w = layer["weight"]
        layer["weight"] = nn.Parameter(w[:12] if name == "conv0" else w[:12, :12])
        layer["bias"] = nn.Parameter(layer["bias"][:12])


@pytest.mark.parametrize(
    ("kwargs", "tweak", "expected"),
    [
        ({"c_dim": 10}, None, r"conditional \(c_dim=10.*conditioning is not supported"),
        ({"architecture": "resnet"}, None, "the 'resnet' synthesis architecture"),
        ({"architecture": "orig"}, None, "the 'orig' synthesis architecture"),
        ({}, _sg3, "is a StyleGAN3 generator"),
        ({}, _wide_mapping, r"mapping\.fc1 is \[16, 32\]"),
        ({}, _channels_off_formula, r"cannot express.*min\(channel_base // resolution"),
    ],
)
def test_nvlabs_refusals_are_one_line(flat, tmp_path, kwargs, tweak, expected):
    pkl = write_nvlabs_pickle(tmp_path / "x.pkl", flat, tweak=tweak, **kwargs)
    with pytest.raises(ConvertError, match=expected) as info:
        convert_generator(pkl, tmp_path / "out.pt")
    assert "\n" not in str(info.value) and str(pkl) in str(info.value)
    assert not (tmp_path / "out.pt").exists()


def test_resolution_outside_what_we_support(tmp_path):
    cfg = {**CFG, "resolution": 16}
    pkl = write_nvlabs_pickle(tmp_path / "x.pkl", random_nvlabs_flat(cfg), cfg=cfg)
    with pytest.raises(ConvertError, match="makes 16 px images.*32 to 1024 px"):
        read_source(pkl)


# --------------------------------------------------------------------------- rosinality


def test_rosinality_checkpoint_matches_their_forward_pass(flat, tmp_path):
    sd = nvlabs_flat_to_rosinality(flat, CFG)
    latent_avg = torch.randn(CFG["w_dim"])
    args = argparse.Namespace(size=32, latent=16, n_mlp=2, channel_multiplier=2, path="lmdb")
    ckpt = {"g": sd, "d": {"convs.0.0.weight": torch.zeros(1)}, "g_ema": sd, "args": args}
    path = tmp_path / "550000.pt"
    torch.save({**ckpt, "latent_avg": latent_avg, "g_optim": {"state": {}}}, path)
    g, meta = read_source(path)
    z = z_batch()
    with torch.no_grad():
        ref = rosinality_reference(sd, z, 2)
        assert max_diff(g(z, noise_mode="const"), ref) < 2e-5 * max(1.0, float(ref.abs().max()))
        ref_t = rosinality_reference(sd, z, 2, latent_avg=latent_avg, psi=0.5)
        assert max_diff(g(z, truncation_psi=0.5, noise_mode="const"), ref_t) < 2e-5 * float(
            ref_t.abs().max().clamp(min=1)
        )
    assert torch.equal(g.w_avg, latent_avg)
    assert meta["converted_from"]["format"] == "rosinality-stylegan2-pytorch"
    assert meta["converted_from"]["args"]["size"] == 32 and not meta["notes"]


def test_rosinality_without_latent_avg_estimates_it(flat, tmp_path):
    path = tmp_path / "g.pt"
    torch.save({"g_ema": nvlabs_flat_to_rosinality(flat, CFG)}, path)
    g, meta = read_source(path)
    assert "w_avg not in the source" in meta["notes"][0]
    assert torch.allclose(g.w_avg, estimate_w_avg(g))
    assert not torch.allclose(g.w_avg, torch.zeros_like(g.w_avg))


def test_rosinality_refusals(flat, tmp_path):
    sd = nvlabs_flat_to_rosinality(flat, CFG)
    cases = {
        "extra": ({**sd, "extra.weight": torch.zeros(2)}, "no place for \\(extra.weight\\)"),
        "blur": (
            {**sd, "convs.0.conv.blur.kernel": torch.ones(4, 4)},
            "other than \\[1, 3, 3, 1\\]",
        ),
        "no_g_ema": (None, "no g_ema state dict in this checkpoint \\(it holds: g\\)"),
        "starts_at_16": (
            {**sd, "input.input": torch.zeros(1, 16, 16, 16)},
            "starts from a \\[16, 16\\] constant",
        ),
    }
    for name, (state, expected) in cases.items():
        path = tmp_path / f"{name}.pt"
        torch.save({"g_ema": state} if state is not None else {"g": sd}, path)
        with pytest.raises(ConvertError, match=expected) as info:
            read_source(path)
        assert "\n" not in str(info.value), name


# --------------------------------------------------------------------------- security


class Reduce:
    """An object that unpickles as ``fn(*args)``: what a malicious pickle does."""

    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return (self.fn, self.args)


def payloads(marker: Path) -> dict[str, object]:
    code = f"open({str(marker)!r}, 'w').close()"
    return {
        "os.system": Reduce(os.system, f"touch {marker}"),
        "eval": Reduce(builtins.eval, code),
        "builtins.exec": Reduce(builtins.exec, code),
        "subprocess.Popen": Reduce(subprocess.Popen, ["touch", str(marker)]),
        "other global": Reduce(pathlib.Path.write_text, pathlib.Path(marker), "x"),
    }


def test_payloads_are_live_under_plain_pickle(tmp_path):
    """Control: the exec payload really runs under an unrestricted unpickler."""
    marker = tmp_path / "ran"
    pickle.loads(pickle.dumps(payloads(marker)["builtins.exec"]))
    assert marker.exists()


@pytest.mark.parametrize(
    "name", ["os.system", "eval", "builtins.exec", "subprocess.Popen", "other global"]
)
def test_pickles_that_call_code_are_refused_and_nothing_runs(tmp_path, flat, name):
    marker = tmp_path / "pwned"
    evil = payloads(marker)[name]
    top = tmp_path / "top.pkl"
    top.write_bytes(pickle.dumps(evil))
    nested = write_nvlabs_pickle(  # inside a valid-looking snapshot, deep in G_ema's state
        tmp_path / "nested.pkl",
        flat,
        tweak=lambda g: g.state["_modules"]["mapping"].state.update(hook=evil),
    )
    for path in (top, nested):
        with pytest.raises(ConvertError, match="refused: the pickle asks for") as info:
            convert_generator(path, tmp_path / "out.pt")
        assert "\n" not in str(info.value) and "nothing in it was run" in str(info.value)
        assert not marker.exists() and not (tmp_path / "out.pt").exists()
    asked = {"os.system": "posix.system", "eval": "builtins.eval", "builtins.exec": "builtins.exec"}
    if name in asked:
        assert asked[name] in str(info.value)


def test_protocol_0_pickle_and_embedded_module_source_never_run(tmp_path, flat):
    marker = tmp_path / "pwned"
    classic = tmp_path / "classic.pkl"
    classic.write_bytes(f"cos\nsystem\n(S'touch {marker}'\ntR.".encode())
    with pytest.raises(ConvertError, match="asks for os.system"):
        read_source(classic)
    # module_src is NVlabs' embedded class source, which their loader exec()s; here it is text
    src = f"open({str(marker)!r}, 'w').close()\n"
    pkl = tmp_path / "src.pkl"
    write_nvlabs_pickle(pkl, flat, tweak=lambda g: setattr(g, "module_src", src))
    g, _ = read_source(pkl)
    assert isinstance(g, Generator) and not marker.exists()


def test_code_inside_a_storage_record_is_refused(tmp_path):
    """Each storage is a nested legacy torch file, unpickled by its own restricted reader."""
    marker = tmp_path / "pwned"
    inner = b"".join(
        pickle.dumps(x, protocol=2) for x in (0x1950A86A20F9469CFC6C, 1001, {"little_endian": True})
    ) + pickle.dumps(Reduce(os.system, f"touch {marker}"), protocol=2)
    path = tmp_path / "storage.pkl"
    path.write_bytes(pickle.dumps(Reduce(torch.storage._load_from_bytes, inner)))
    with pytest.raises(ConvertError, match="asks for posix.system"):
        read_source(path)
    assert not marker.exists()


def test_rosinality_file_with_pickled_code_is_refused(tmp_path, flat):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    sd = nvlabs_flat_to_rosinality(flat, CFG)
    torch.save({"g_ema": sd, "x": Reduce(os.system, f"touch {marker}")}, path)
    with pytest.raises(ConvertError, match=r"refused: .*pickled code \(posix.system\)") as info:
        convert_generator(path, tmp_path / "out.pt")
    assert "\n" not in str(info.value) and not marker.exists()


def test_truncated_and_empty_files_give_one_line(tmp_path, nvlabs_pkl, flat):
    data = nvlabs_pkl.read_bytes()
    cut = tmp_path / "cut.pkl"
    cut.write_bytes(data[: len(data) // 2])
    ros = tmp_path / "ros.pt"
    torch.save({"g_ema": nvlabs_flat_to_rosinality(flat, CFG)}, ros)
    cut_ros = tmp_path / "cut.pt"
    cut_ros.write_bytes(ros.read_bytes()[:5000])
    empty = tmp_path / "empty.pkl"
    empty.write_bytes(b"")
    for path, expected in (
        (cut, "damaged or truncated network pickle"),
        (cut_ros, "damaged or truncated PyTorch checkpoint"),
        (empty, "empty file"),
        (tmp_path / "missing.pkl", "file not found"),
    ):
        with pytest.raises(ConvertError, match=expected) as info:
            convert_generator(path, tmp_path / "out.pt")
        assert "\n" not in str(info.value)


# --------------------------------------------------------------------------- CLI and training


def test_cli_converts_and_reports_errors_on_one_line(nvlabs_pkl, tmp_path, monkeypatch, capsys):
    from garment_gen.convert import main

    out = tmp_path / "cli" / "generator.pt"
    monkeypatch.setattr(sys, "argv", ["convert", f"src={nvlabs_pkl}", f"out={out}"])
    main()
    printed = capsys.readouterr().out
    assert f"wrote {out}" in printed and "stage=encoders" in printed
    assert load_model(out, "generator")[0].resolution == 32
    res = subprocess.run(
        [sys.executable, "-m", "garment_gen.convert", f"src={tmp_path}/nope.pkl"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [f"error: src={tmp_path}/nope.pkl: file not found"]


def test_encoders_train_on_a_converted_generator(tmp_path):
    from garment_gen.train import train
    from tests.conftest import TINY_ENCODERS, compose_config

    cfg64 = {**CFG, "resolution": 64}
    pkl = write_nvlabs_pickle(tmp_path / "snap.pkl", random_nvlabs_flat(cfg64), cfg=cfg64)
    gen = convert_generator(pkl, tmp_path / "converted.pt")
    cfg = compose_config(
        [
            "stage=encoders",
            *TINY_ENCODERS,
            f"model.generator={gen}",
            "debug=fast",
            "trainer.max_steps=2",
            "loss.w_lpips=0",
        ],
        tmp_path / "run",
        tmp_path,
    )
    metrics = train(cfg)
    assert (tmp_path / "run" / "garment_model.pt").is_file()
    assert all(math.isfinite(float(v)) for v in metrics.values())
