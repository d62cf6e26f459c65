"""Export: TorchScript and ONNX files that match PyTorch, atomic writes, one-line CLI errors.

ONNX needs ``onnx`` and, for the parity check, ``onnxruntime`` (both in the ``dev`` extra).
Their absence fails these tests with an install hint instead of skipping them quietly.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from garment_gen.errors import GarmentGenError
from garment_gen.export import InferenceModel, export, random_inputs
from tests.test_evaluate import run_main_in_process


@pytest.fixture(scope="session")
def tiny_model(tiny_chain) -> dict[str, Path]:
    return tiny_chain


@pytest.fixture(scope="module")
def gen(tiny_model):
    from garment_gen.inference import GarmentGenerator

    return GarmentGenerator.from_checkpoint(tiny_model["garment_model"])


def _real_inputs(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Masks and occluded textures of the bundled sample's test split."""
    from garment_gen import sample_dir
    from garment_gen.data.dataset import GarmentDataset

    ds = GarmentDataset(sample_dir(), "test")
    items = [ds[i] for i in range(n)]
    return torch.stack([it["mask"] for it in items]), torch.stack([it["texture"] for it in items])


def _require_onnx() -> None:
    missing = [p for p in ("onnx", "onnxruntime") if importlib.util.find_spec(p) is None]
    assert not missing, f"ONNX export tests need {missing}: pip install -e '.[dev]'"


def test_random_inputs_are_binary_blobs_and_textures():
    mask, texture = random_inputs(3, 64, seed=1)
    assert mask.shape == (3, 1, 64, 64) and texture.shape == (3, 3, 64, 64)
    assert set(mask.unique().tolist()) == {0.0, 1.0}
    share = mask.mean((1, 2, 3))
    assert (share > 0.05).all() and (share < 0.95).all()
    assert texture.min() >= -1 and texture.max() <= 1
    assert torch.equal(random_inputs(3, 64, seed=1)[0], mask)


@pytest.mark.filterwarnings("ignore:.*torch.jit.*deprecated:FutureWarning")
def test_torchscript_matches_pytorch(tiny_model, gen, tmp_path):
    out = tmp_path / "model.torchscript.pt"
    res = export(tiny_model["garment_model"], "torchscript", out=out, batch=2)
    assert res["path"] == str(out) and out.is_file()
    assert res["max_abs_diff"] is not None and res["max_abs_diff"] < 1e-3
    assert res["batch_sizes_checked"] == [2, 4]
    assert [p.name for p in tmp_path.iterdir()] == [out.name]  # no temporary file left
    loaded = torch.jit.load(str(out))
    mask, texture = _real_inputs(3)  # another batch size than the trace's
    with torch.no_grad():
        got = loaded(mask, texture)
    assert (got - gen.generate_tensors(mask, texture)).abs().max() < 1e-3


def test_onnx_matches_pytorch_with_dynamic_batch(tiny_model, gen, tmp_path):
    _require_onnx()
    import onnxruntime as ort

    res = export(
        tiny_model["garment_model"], "onnx", out=tmp_path / "model.onnx", batch=1, opset=17
    )
    assert res["max_abs_diff"] is not None and res["max_abs_diff"] < 1e-3
    assert res["opset"] == 17 and Path(res["path"]).is_file()
    session = ort.InferenceSession(res["path"], providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["mask", "texture"]
    assert session.get_inputs()[0].shape[0] == "batch"  # dynamic batch axis
    mask, texture = _real_inputs(3)
    got = session.run(["image"], {"mask": mask.numpy(), "texture": texture.numpy()})[0]
    assert got.shape == (3, 3, gen.resolution, gen.resolution)
    assert abs(got - gen.generate_tensors(mask, texture).numpy()).max() < 1e-3


def test_failed_check_writes_nothing(tiny_model, tmp_path):
    out = tmp_path / "model.torchscript.pt"
    out.write_bytes(b"previous export")
    with pytest.raises(GarmentGenError, match="differs from PyTorch"):
        export(tiny_model["garment_model"], "torchscript", out=out, tolerance=-1.0)
    assert out.read_bytes() == b"previous export"
    assert [p.name for p in tmp_path.iterdir()] == [out.name]


def test_bad_arguments_are_user_errors(tiny_model, tmp_path):
    with pytest.raises(GarmentGenError, match="format=tflite"):
        export(tiny_model["garment_model"], "tflite", out=tmp_path / "x")
    with pytest.raises(GarmentGenError, match="overwrite the model file"):
        export(tiny_model["garment_model"], "torchscript", out=tiny_model["garment_model"])
    with pytest.raises(GarmentGenError, match="this is a segmenter .*expected a garment model"):
        export(tiny_model["segmenter"], "torchscript", out=tmp_path / "x.pt")


def test_inference_model_is_generate_tensors(gen):
    net = InferenceModel(gen.model)
    mask, texture = _real_inputs(2)
    with torch.no_grad():
        assert torch.equal(net(mask, texture), gen.generate_tensors(mask, texture))


def test_cli_exports_and_fails_in_one_line(tiny_model, tmp_path):
    from garment_gen.export import main

    code, stdout, stderr = run_main_in_process(
        main,
        "garment_gen.export",
        f"model={tiny_model['garment_model']}",
        "format=torchscript",
        f"out={tmp_path / 'm.ts'}",
    )
    assert code == 0, stderr[-2000:]
    assert (tmp_path / "m.ts").is_file() and "max abs diff vs PyTorch" in stdout

    # A real process, to see exactly what a user sees.
    cmd = [
        sys.executable,
        "-m",
        "garment_gen.export",
        f"model={tiny_model['generator']}",
        "format=torchscript",
    ]
    res = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "pretrained generator" in lines[0]
