"""The reference model: a CPU rehearsal of ``python -m garment_gen.reference``, float16 files,
models shipped with the package (``from_pretrained``, ``pretrained:NAME``)."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
import torch

from garment_gen.errors import GarmentGenError

BUDGET_MINUTES = 1.0
# Lightning checks its time limit between steps, and each stage ends with a validation and an
# export: a slow step or two may pass the budget by this much.
MARGIN_SECONDS = 20.0
# The shipped model's reconstruction LPIPS on the bundled test split, as a share of the
# mean-garment baseline's (measured: see the test).
MEAN_GARMENT_SHARE = 0.6  # measured 0.068 against 0.157 (0.43)
# The smoke experiment's tiny networks, with a short evaluation.
TINY = [
    "experiment=smoke",
    f"pipeline.minutes={BUDGET_MINUTES}",
    "pipeline.evaluate.max_samples=8",
]


@pytest.fixture(scope="module")
def rehearsal(tmp_path_factory, sample_root) -> tuple[Path, dict, float, float]:
    """One time-boxed run on the bundled sample.

    Returns ``(out folder, returned metrics, wall seconds, CPU share)``; the CPU share is the
    process's CPU time over the wall time (about 1-2 on an idle 2-core machine, far below 1
    when other work starves it).
    """
    from garment_gen.reference import main

    root = tmp_path_factory.mktemp("reference")
    t0, cpu0 = time.monotonic(), time.process_time()
    metrics = main(
        [
            *TINY,
            f"pipeline.data={sample_root}",
            f"pipeline.out={root / 'out'}",
            f"pipeline.work={root / 'work'}",
        ]
    )
    wall = time.monotonic() - t0
    return root / "out", metrics, wall, (time.process_time() - cpu0) / wall


@pytest.mark.slow
def test_rehearsal_writes_everything_within_its_budget(rehearsal):
    out, metrics, wall, cpu_share = rehearsal
    budget = BUDGET_MINUTES * 60
    boxes = [metrics["stages"][s]["box_seconds"] for s in ("pretrain", "segmenter", "encoders")]
    assert sum(boxes) <= budget * 0.8 + 3, boxes  # the stages' shares of the budget, no more
    # Lightning checks the limit between steps: when other processes starve this one, a single
    # step can outlast the margin, and the wall clock says nothing about the time boxes.
    if cpu_share > 0.5:
        assert metrics["wall_seconds"] <= budget + 3 * MARGIN_SECONDS, (wall, metrics["stages"])
    for name in (
        "garment_model.pt",
        "metrics.json",
        "model_card.md",
        "train_reference.log",
        "test_reconstructions.png",
        "test_cross_pairs.png",
        "shape_texture_grid.png",
    ):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    saved = json.loads((out / "metrics.json").read_text())
    for key in ("kimg", "device_name", "torch_version", "experiment", "stages", "test", "files"):
        assert saved.get(key) is not None, key
    assert saved["kimg"] > 0 and saved["torch_version"] == str(torch.__version__)
    assert saved["calls"] == 1 and saved["experiment"]["name"] == "smoke"
    assert "model=stylegan2_tiny" in saved["stages"]["pretrain"]["groups"]
    for stage in ("pretrain", "segmenter", "encoders"):
        s = saved["stages"][stage]
        assert s["wall_seconds"] > 0 and s["box_seconds"] >= 1, (stage, s)
        assert s["images_per_second"] > 0 and "time limit" in s["stop_reason"], (stage, s)
    for method in ("model", "upper_bound", "mean_garment", "paste_baseline"):
        for key in ("realism", "lpips", "iou_classical", "cross_iou_classical"):
            assert isinstance(saved["test"][method][key], float), (method, key)
    assert saved["test"]["realism_backend"] == "fd_vgg" and saved["test"]["n"] == 8
    assert abs(saved["fp16_check"]["lpips_delta"]) <= 0.005
    assert all(size < 16 * 2**20 for size in saved["files"].values())
    card = (out / "model_card.md").read_text()
    assert "FD-VGG" in card and "paste" in card and "mean garment" in card and "upper bound" in card
    assert "MIT" in card and "CC0" in card and "1 call(s)" in card and "$" not in card
    assert f"{saved['test']['model']['lpips']:.3g}" in card
    log = (out / "train_reference.log").read_text()
    assert "stage encoders" in log and "test split" in log


@pytest.mark.slow
def test_a_second_call_resumes_and_skips_what_is_done(rehearsal, sample_root, tmp_path):
    """The pipeline state of the rehearsal says every stage is done: a second call trains
    nothing, counts a second call, and rewrites the same files."""
    from garment_gen.pipeline import compose_pipeline, run_pipeline

    out = rehearsal[0]
    work = out.parent / "work"
    state = json.loads((work / "pipeline_state.json").read_text())
    assert all(
        state["stages"][s]["status"] == "done" for s in ("pretrain", "segmenter", "encoders")
    )
    p = compose_pipeline(
        "smoke",
        [
            f"pipeline.data={sample_root}",
            f"pipeline.out={tmp_path}",
            f"pipeline.work={work}",
            "pipeline.evaluate=null",
        ],
    )
    t0 = time.monotonic()
    summary = run_pipeline(p)
    assert summary["calls"] == 2 and time.monotonic() - t0 < 60
    assert summary["runs"] == {k: v["run_dir"] for k, v in state["stages"].items()}
    with pytest.raises(GarmentGenError, match="holds a run of experiment 'smoke', not 'demo'"):
        run_pipeline(
            compose_pipeline("demo", [f"pipeline.out={tmp_path}", f"pipeline.work={work}"])
        )


@pytest.mark.slow
def test_a_given_generator_skips_pretrain(tiny_chain, tmp_path):
    """pipeline.generator: a garment model's generator is reused, pretrain never runs, and a
    file that is not a generator is one line before any training."""
    from garment_gen.inference import load_garment_model
    from garment_gen.networks.stylegan2 import load_generator
    from garment_gen.pipeline import compose_pipeline, run_pipeline

    given = tiny_chain["garment_model"]
    p = compose_pipeline(
        "smoke",
        [
            f"pipeline.out={tmp_path / 'out'}",
            f"pipeline.generator={given}",
            "++pipeline.stages.segmenter.set.trainer.max_steps=2",
            "++pipeline.stages.encoders.set.trainer.max_steps=2",
            "pipeline.minutes=5",
            "pipeline.evaluate=null",
            "pipeline.grid=false",
        ],
    )
    summary = run_pipeline(p)
    assert set(summary["runs"]) == {"segmenter", "encoders"}
    model, _ = load_garment_model(summary["model"])
    reused = load_generator(given).state_dict()
    for k, v in model.generator.state_dict().items():
        assert torch.equal(v, reused[k]), k
    bad = compose_pipeline(
        "smoke",
        [f"pipeline.out={tmp_path / 'bad'}", f"pipeline.generator={tiny_chain['segmenter']}"],
    )
    with pytest.raises(GarmentGenError, match="pipeline.generator: .*segmenter.*expected"):
        run_pipeline(bad)
    assert not (tmp_path / "bad" / "segmenter").exists()


@pytest.mark.slow
def test_rehearsal_model_is_float16_on_disk_and_generates(rehearsal, sample_root):
    from garment_gen.inference import GarmentGenerator

    out = rehearsal[0]
    raw = torch.load(out / "garment_model.pt", map_location="cpu", weights_only=True)
    assert raw["weights_dtype"] == "float16" and raw["kind"] == "garment_model"
    for key in ("generator", "encoders", "segmenter"):
        floats = [
            v for k, v in raw["state_dict"].items() if k.startswith(key) and v.is_floating_point()
        ]
        kept = set(raw.get("kept_float32", []))
        assert floats and all(
            v.dtype == torch.float16
            for k, v in raw["state_dict"].items()
            if k.startswith(key) and v.is_floating_point() and k not in kept
        ), key
    gen = GarmentGenerator.from_checkpoint(out / "garment_model.pt")
    assert all(p.dtype == torch.float32 for p in gen.generator.parameters())
    assert gen.meta["reference"]["kimg"] > 0 and gen.meta["generator_file"].endswith("generator.pt")
    mask = next((sample_root / "masks").glob("*.png"))
    image = next((sample_root / "images").glob("*.png"))
    img = gen.generate([mask, mask], [image, image], output="tensor")
    assert img.shape == (2, 3, 64, 64) and torch.isfinite(img).all()


# ------------------------------------------------------------------ shipped models


@pytest.mark.slow
def test_from_pretrained_loads_a_shipped_model(rehearsal, tmp_path, monkeypatch, sample_root):
    from garment_gen import inference
    from garment_gen.generate import run

    out = rehearsal[0]
    models = tmp_path / "models"
    (models / "ref").mkdir(parents=True)
    shutil.copyfile(out / "garment_model.pt", models / "ref" / "garment_model.pt")
    shutil.copyfile(out / "model_card.md", models / "ref" / "model_card.md")
    (models / "empty").mkdir()  # a folder without a model is not a model
    monkeypatch.setattr(inference, "PRETRAINED_DIR", models)
    assert inference.available_pretrained() == ["ref"]
    assert inference.pretrained_path("ref") == models / "ref" / "garment_model.pt"
    gen = inference.GarmentGenerator.from_pretrained("ref")
    assert gen.resolution == 64 and gen.meta["reference"]["name"] == "smoke"
    # The same model wherever a model path is expected.
    mask = sorted((sample_root / "masks").glob("*.png"))[0]
    res = run(
        "pretrained:ref",
        str(mask),
        str(mask.parent.parent / "images" / mask.name),
        out=str(tmp_path / "one.png"),
    )
    assert res["images"] == [str(tmp_path / "one.png")] and (tmp_path / "one.png").is_file()


@pytest.mark.slow
def test_demo_draws_the_shipped_reference_grid(
    rehearsal, tmp_path, monkeypatch, capsys, sample_root
):
    from garment_gen import inference
    from garment_gen.demo import reference_grid

    monkeypatch.setattr(inference, "PRETRAINED_DIR", tmp_path / "models")
    assert reference_grid(sample_root, tmp_path / "grid.png") is None
    assert "no shipped reference model" in capsys.readouterr().out
    (tmp_path / "models" / "reference").mkdir(parents=True)
    out = rehearsal[0]
    shutil.copyfile(out / "garment_model.pt", tmp_path / "models/reference/garment_model.pt")
    assert reference_grid(sample_root, tmp_path / "grid.png") == str(tmp_path / "grid.png")
    assert (tmp_path / "grid.png").stat().st_size > 0


def test_unknown_pretrained_name_says_what_exists_and_how_to_train(tmp_path, monkeypatch):
    from garment_gen import inference

    monkeypatch.setattr(inference, "PRETRAINED_DIR", tmp_path / "models")
    assert inference.available_pretrained() == []
    with pytest.raises(GarmentGenError, match="none is shipped.*scripts/train_reference.sh"):
        inference.GarmentGenerator.from_pretrained("reference")
    (tmp_path / "models" / "small").mkdir(parents=True)
    (tmp_path / "models" / "small" / "garment_model.pt").write_bytes(b"")
    with pytest.raises(GarmentGenError, match="'big'; available: small.*train_reference.sh"):
        inference.GarmentGenerator.from_pretrained("big")
    with pytest.raises(GarmentGenError, match="available: small"):
        inference.load_garment_model("pretrained:../small")


# ------------------------------------------------------------------ float16 files


def _random_model():
    from garment_gen.networks.encoders import GarmentEncoders
    from garment_gen.networks.stylegan2 import Generator

    torch.manual_seed(0)
    g = Generator(32, z_dim=32, w_dim=32, mapping_layers=2, channel_base=256, channel_max=32)
    enc = GarmentEncoders(
        num_ws=g.num_ws,
        w_dim=g.w_dim,
        resolution=32,
        base_channels=8,
        max_channels=16,
        w_avg=g.w_avg.clone(),
    )
    return g.eval(), enc.eval()


def test_float16_save_loads_back_as_float32_close_to_the_original(tmp_path):
    from garment_gen.inference import GarmentGenerator, save_garment_model

    g, enc = _random_model()
    with torch.no_grad():  # a value beyond float16's range must not turn into inf
        g.w_avg[0] = 1e5
    data = {"resolution": 32}
    full = save_garment_model(tmp_path / "fp32.pt", g, enc, data=data)
    half = save_garment_model(tmp_path / "fp16.pt", g, enc, data=data, dtype=torch.float16)
    assert half.stat().st_size < 0.6 * full.stat().st_size
    raw = torch.load(half, map_location="cpu", weights_only=True)
    assert raw["weights_dtype"] == "float16"
    kept = raw.get("kept_float32", [])
    assert raw["kind"] == "garment_model" and raw["format_version"] == 2
    for name, v in raw["state_dict"].items():
        if v.is_floating_point():
            assert v.dtype == (torch.float32 if name in kept else torch.float16), name
    assert kept == ["generator.w_avg"]
    a = GarmentGenerator.from_checkpoint(full)
    b = GarmentGenerator.from_checkpoint(half)
    assert all(p.dtype == torch.float32 for p in b.generator.parameters())
    assert b.generator.w_avg[0] == 1e5
    torch.manual_seed(1)
    mask = (torch.rand(4, 1, 32, 32) > 0.5).float()
    tex = torch.rand(4, 3, 32, 32) * 2 - 1
    ref, low = a.generate_tensors(mask, tex), b.generate_tensors(mask, tex)
    assert ref.std() > 0.01  # not a blank image, or any cast would look equal
    assert (ref - low).abs().max() < 2e-2, (ref - low).abs().max()
    with pytest.raises(GarmentGenError, match="float type"):
        save_garment_model(tmp_path / "int.pt", g, enc, dtype=torch.int8)


def test_too_big_a_model_fails_before_training(tmp_path, sample_root, capsys):
    from garment_gen.reference import main

    with pytest.raises(SystemExit) as exc:
        main(
            [
                f"pipeline.data={sample_root}",
                f"pipeline.out={tmp_path / 'out'}",
                f"pipeline.work={tmp_path / 'work'}",
                "pipeline.stages.pretrain.groups.model=stylegan2",
                "pipeline.stages.pretrain.groups.gan=stylegan2",
            ]
        )
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "not below the 16.00 MiB" in err and "narrower networks" in err
    assert not (tmp_path / "work").exists()  # nothing was trained


def test_reference_needs_its_data(capsys):
    from garment_gen.reference import main

    with pytest.raises(SystemExit) as exc:
        main([])
    assert exc.value.code == 2
    assert "pipeline.data is required" in capsys.readouterr().err


def test_shipped_files_must_be_below_the_limit(tmp_path):
    from garment_gen.reference import FILE_LIMIT, check_file_sizes

    (tmp_path / "small.json").write_text("{}")
    assert check_file_sizes(tmp_path) == {"small.json": 2}
    with open(tmp_path / "garment_model.pt", "wb") as f:
        f.truncate(FILE_LIMIT)  # exactly the limit is too big
    with pytest.raises(GarmentGenError, match=r"garment_model.pt is 16.00 MiB"):
        check_file_sizes(tmp_path)


def test_every_experiment_composes_and_the_time_split():
    """conf/experiment/*.yaml: each composes, each stage's groups and values build a config
    (an unknown key would fail), and the fractions leave time for the evaluation."""
    from garment_gen import conf_dir
    from garment_gen.pipeline import STAGES, compose, compose_pipeline, stage_overrides
    from garment_gen.timebox import TimeBudget

    names = sorted(f.stem for f in (conf_dir() / "experiment").glob("*.yaml"))
    assert {"demo", "reference", "smoke"} <= set(names)
    for name in names:
        p = compose_pipeline(name, ["pipeline.data=null"])
        assert p.name == name and sum(p.stages[s].fraction for s in STAGES) < 1
        for stage in STAGES:
            overrides, values = stage_overrides(p, stage)
            cfg = compose(stage, overrides, values=values)
            assert cfg.stage_name == stage
    from garment_gen.errors import ConfigError

    p = compose_pipeline("smoke", ["+pipeline.stages.encoders.set.loss.w_typo=1"])
    overrides, values = stage_overrides(p, "encoders")
    with pytest.raises(ConfigError, match="w_typo"):
        compose("encoders", overrides, values=values)
    budget = TimeBudget(100, {"pretrain": 0.6, "segmenter": 0.1, "encoders": 0.2})
    assert budget.box("pretrain") == pytest.approx(60, abs=0.5)
    budget.done("pretrain", 60, 70)  # 10 s over: the later boxes share what is left
    budget.start -= 70
    seg = budget.box("segmenter")
    assert seg == pytest.approx((30 - 2 * 10) * 0.1 / 0.4, abs=0.5)
    with pytest.raises(ValueError, match="not the next one"):
        budget.box("encoders")


def test_the_shipped_reference_model_follows_shape_and_colour(sample_root):
    """The model in garment_gen/assets/models/reference: small files, a card, and garments that
    take the mask's outline and the texture's colour (cross pairs of bundled test garments)."""
    import csv

    from garment_gen.evaluate import foreground
    from garment_gen.inference import GarmentGenerator, available_pretrained, pretrained_path

    assert "reference" in available_pretrained()
    folder = pretrained_path("reference").parent
    for f in folder.iterdir():
        assert f.stat().st_size < 16 * 2**20, f
    card = (folder / "model_card.md").read_text()
    assert "Test metrics" in card and "paste baseline" in card and "Licence" in card
    gen = GarmentGenerator.from_pretrained("reference")
    assert all(p.dtype == torch.float32 for p in gen.generator.parameters())
    with open(sample_root / "manifest.csv") as fh:
        test = [r["id"] for r in csv.DictReader(fh) if r["split"] == "test"]
    ids_a, ids_b = test[:6], test[6:12]
    shapes = [sample_root / "masks" / f"{i}.png" for i in ids_a]
    textures = [sample_root / "images" / f"{i}.png" for i in ids_b]
    out = gen.generate(shapes, textures, output="tensor")
    res = gen.resolution
    assert out.shape == (6, 3, res, res) and torch.isfinite(out).all()
    masks = torch.cat([gen.shape_tensor(s) for s in shapes]).bool()[:, 0]
    fg = foreground(out, gen.background, tolerance=24)
    iou = ((fg & masks).sum((1, 2)) / (fg | masks).sum((1, 2)).clamp(min=1)).mean().item()
    assert iou > 0.95, (
        iou
    )  # the garment is kept inside the mask (composite=mask); the card reports 0.998
    # colour: an output's mean garment colour lies nearer its own texture's than other textures'
    tex = torch.cat([gen.texture_tensor(t) for t in textures])
    tex_fg = foreground(tex, gen.background)

    def mean_colour(img, m):
        return (img * m[:, None]).sum((2, 3)) / m.sum((1, 2)).clamp(min=1)[:, None]

    dist = torch.cdist(mean_colour(out, masks.float()), mean_colour(tex, tex_fg.float()))
    own, other = dist.diag().mean(), (dist.sum() - dist.diag().sum()) / (6 * 5)
    assert own < 0.5 * other, dist  # measured 0.10 against 0.43 (v1: 0.28 against 0.44)


def test_the_shipped_reference_model_beats_the_mean_garment(sample_root, tmp_path):
    """Reconstructions of the bundled test garments (occluded textures): LPIPS below the
    mean-garment baseline's by a margin, the mask's silhouette kept, colours near the
    texture's (the v2 numbers in the model card are on the development test split)."""
    from garment_gen.evaluate import evaluate

    report = evaluate(
        "pretrained:reference",
        root=sample_root,
        split="test",
        out=tmp_path,
        num_pairs=16,
        realism="none",
        speed_images=0,
        dists=False,
    )
    model, mean = report["model"], report["mean_garment"]
    assert model["lpips"] < MEAN_GARMENT_SHARE * mean["lpips"], (model["lpips"], mean["lpips"])
    assert model["iou_classical"] > 0.95 and model["cross_iou_classical"] > 0.95, model
    # measured 0.476 against the mean garment's 0.860 and the paste baseline's 0.375
    assert model["cross_hist_hellinger"] < 0.6 < mean["cross_hist_hellinger"], (model, mean)
