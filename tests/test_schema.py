"""Structured configs are the schema: defaults live only in the dataclasses, and a bad key or
value fails while Hydra composes, in one line, for every command."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from garment_gen import conf_dir
from garment_gen.cli import one_line
from garment_gen.data.occlusion import TextureConfig
from garment_gen.prepare import PrepareConfig, config_from_dict
from garment_gen.schema import SCHEMAS

REPO = Path(__file__).resolve().parents[1]


def _compose(name: str, overrides: list[str]):
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        return compose(name, overrides=overrides)


def _run(module: str, *args: str, cwd: Path, env: dict | None = None):
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})},
    )


def _defaults(cls) -> dict:
    out = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
    return out


def test_composed_prepare_and_texture_configs_are_the_dataclass_defaults():
    cfg = _compose("prepare", [])
    assert OmegaConf.get_type(cfg) is PrepareConfig
    got = OmegaConf.to_container(cfg, throw_on_missing=False)
    want = _defaults(PrepareConfig)
    want["background"] = list(want["background"])
    assert {k: got[k] for k in want} == want
    assert OmegaConf.is_missing(cfg, "input_dir") and OmegaConf.is_missing(cfg, "output_dir")
    data = _compose("config", ["stage=encoders", "model.generator=x.pt"]).data
    assert OmegaConf.get_type(data.texture) is TextureConfig
    assert OmegaConf.to_container(data.texture) == _defaults(TextureConfig)


def test_no_yaml_file_mirrors_a_schema():
    """The numbers have one home: the YAML files name the schema, they do not repeat it."""
    prepare = yaml.safe_load((conf_dir() / "prepare.yaml").read_text())
    assert "prepare_schema" in prepare["defaults"]
    assert not set(prepare) & {f.name for f in dataclasses.fields(PrepareConfig)}
    data = yaml.safe_load((conf_dir() / "data" / "garment.yaml").read_text())
    assert "/texture_schema@texture" in data["defaults"] and "texture" not in data
    assert set(SCHEMAS.values()) == {PrepareConfig, TextureConfig}


@pytest.mark.parametrize(
    "override, cause",
    [
        ("data.texture.foo=1", "Key 'foo' not in 'TextureConfig'"),
        ("data.texture.p_crop=abc", "could not be converted to Float"),
        ("data.texture.max_occluders=1.5", "could not be converted to Integer"),
    ],
)
def test_a_bad_texture_key_or_type_fails_while_composing(override, cause):
    with pytest.raises(ConfigCompositionException) as info:
        _compose("config", ["stage=encoders", "model.generator=x.pt", override])
    assert cause in one_line(info.value)
    assert "\n" not in one_line(info.value)


def test_texture_overrides_reach_the_datamodule(tmp_path):
    import hydra

    cfg = _compose("config", ["stage=pretrain", "data.texture.p_crop=0.9", "data.texture.p_arm=0"])
    dm = hydra.utils.instantiate(cfg.data, _recursive_=False)
    assert isinstance(dm.texture, TextureConfig)
    assert (dm.texture.p_crop, dm.texture.p_arm, dm.texture.p_zoom) == (0.9, 0.0, 0.5)


@pytest.mark.parametrize(
    "module, args, expected",
    [
        (
            "garment_gen.prepare",
            ["input_dir=in", "output_dir=out", "margin=wide"],
            "error: margin=wide: Value 'wide' of type 'str' could not be converted to Float",
        ),
        (
            "garment_gen.prepare",
            ["input_dir=in", "output_dir=out", "resolutoin=64"],
            "error: Could not override 'resolutoin'. To append to your config use "
            "+resolutoin=64 (Key 'resolutoin' not in 'PrepareConfig')",
        ),
        (
            "garment_gen.train",
            ["stage=pretrain", "trainer.max_stepz=3"],
            "error: Could not override 'trainer.max_stepz'. To append to your config use "
            "+trainer.max_stepz=3 (Key 'max_stepz' is not in struct)",
        ),
        (
            "garment_gen.train",
            ["stage=pretrain", "data.texture.p_arm=often"],
            "error: data.texture.p_arm=often: Value 'often' of type 'str' could not be "
            "converted to Float",
        ),
        (
            "garment_gen.generate",
            ["data.batch_size=[1"],
            "error: data.batch_size=[1: no viable alternative at input '[1'",
        ),
    ],
)
def test_cli_config_errors_are_one_line(tmp_path, module, args, expected):
    res = _run(module, *args, cwd=tmp_path)
    assert res.returncode == 2, res.stderr
    assert res.stderr.strip().splitlines() == [expected]
    assert not (tmp_path / "out").exists() and not (tmp_path / "outputs").exists()


def test_hydra_full_error_still_shows_the_stack(tmp_path):
    res = _run(
        "garment_gen.prepare",
        "input_dir=in",
        "output_dir=out",
        "margin=wide",
        cwd=tmp_path,
        env={"HYDRA_FULL_ERROR": "1"},
    )
    assert res.returncode != 0 and "Traceback" in res.stderr and "margin" in res.stderr


def test_python_api_still_names_unknown_and_missing_settings():
    from garment_gen.errors import GarmentGenError

    with pytest.raises(GarmentGenError, match="unknown prepare setting.*: colour"):
        config_from_dict({"input_dir": "a", "output_dir": "b", "colour": 1})
    with pytest.raises(GarmentGenError, match="output_dir is required"):
        config_from_dict({"input_dir": "a", "output_dir": "???"})
    c = config_from_dict({"input_dir": "a", "output_dir": "b", "background": [1, 2, 3]})
    assert c.background == (1, 2, 3) and c.max_per_group is None
