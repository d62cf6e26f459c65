"""The stage chain as one runner: pretrain -> segmenter -> encoders -> evaluation and grids.

    python -m garment_gen.pipeline experiment=demo [pipeline.minutes=8] [pipeline.data=DATASET]
        [pipeline.stages.pretrain.groups.gan=projected] [pipeline.stages.encoders.set.loss.w_lpips=1.0]

An experiment (``conf/experiment/<name>.yaml``) names, for each stage, the config groups to
pick (``groups``: ``model=...``, ``gan=...``), the values to set on the composed stage config
(``set``, merged key by key: an unknown key is an error), and its share of the wall-clock
budget (``fraction``); ``common`` applies to every stage. The runner

1. gives each stage a time box (Lightning's ``trainer.max_time``): its fraction of the time
   actually left (:class:`~garment_gen.timebox.TimeBudget`), so a slow machine shortens the
   later stages instead of running past the limit;
2. passes ``generator.pt`` and ``segmenter.pt`` on to the encoders stage; with
   ``pipeline.generator=FILE`` (a ``generator.pt`` or a garment model, e.g. a shipped one or
   one made by ``garment_gen.convert``) it skips pretrain, trains the rest over that
   generator and gives pretrain's share of the budget to the encoders;
3. records every finished stage in ``<work>/pipeline_state.json``: a second call with the same
   ``work`` folder skips what is done and resumes an interrupted stage from its
   ``last.ckpt`` (Lightning's timer continues from the checkpoint), within the budget left;
4. evaluates the garment model on the test split and draws the shape x texture grid.

:func:`run_pipeline` is a plain function over the composed ``pipeline`` config; ``demo.py``,
``reference.py``, the test fixtures and the notebook all call it.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict

from garment_gen import conf_dir, sample_dir
from garment_gen.errors import ConfigError, GarmentGenError
from garment_gen.timebox import TimeBudget, hms
from garment_gen.utils.atomic import write_json_atomic

log = logging.getLogger("garment_gen.pipeline")

STAGES = ("pretrain", "segmenter", "encoders")
STATE_FILE = "pipeline_state.json"


# ----------------------------------------------------------------------------- composing


def compose(
    stage: str,
    overrides: list[str] | None = None,
    log_dir: str | Path = "outputs",
    run_dir: Path | None = None,
    values: dict[str, Any] | DictConfig | None = None,
) -> DictConfig:
    """The training config of ``stage`` as ``python -m garment_gen.train stage=STAGE ...`` composes it.

    ``overrides`` are Hydra override strings (group choices and values); ``values`` a nested
    mapping merged onto the result (struct mode: an unknown key fails). With ``run_dir`` Hydra's
    runtime folder is set to it (what training needs); without, ``paths.output_dir`` stays
    unresolved (enough to read the model, data and trainer settings).
    """
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
            cfg = hydra_compose(
                "config",
                overrides=[f"stage={stage}", f"paths.log_dir={log_dir}", *(overrides or [])],
                return_hydra_config=run_dir is not None,
            )
    finally:
        GlobalHydra.instance().clear()
    if values:
        try:
            cfg = OmegaConf.merge(
                cfg, OmegaConf.create(OmegaConf.to_container(OmegaConf.create(values)))
            )
        except Exception as exc:  # noqa: BLE001 - omegaconf's key errors name the key
            raise ConfigError(f"stage {stage}: {str(exc).splitlines()[0]}") from None
    if run_dir is not None:
        with open_dict(cfg):
            cfg.hydra.runtime.output_dir = str(run_dir)
            cfg.hydra.job.num = 0
        HydraConfig.instance().set_config(cfg)
        with open_dict(cfg):
            del cfg["hydra"]
    return cfg


def stage_overrides(p: DictConfig, stage: str) -> tuple[list[str], dict[str, Any]]:
    """``(group choices and common overrides, values to set)`` of ``stage`` in experiment ``p``."""
    spec = p.stages.get(stage) or {}
    groups = [f"{k}={v}" for k, v in (spec.get("groups") or {}).items() if v is not None]
    values = OmegaConf.to_container(spec.get("set") or OmegaConf.create({}), resolve=True)
    data = p.get("data")
    common = list(p.get("common") or [])
    if data:
        common.append(f"data.root={Path(str(data)).resolve()}")
    return [*common, *groups], values


def compose_pipeline(experiment: str, overrides: list[str] | None = None) -> DictConfig:
    """The ``pipeline`` config of ``experiment`` with command-line style ``overrides``."""
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
            cfg = hydra_compose(
                "pipeline", overrides=[f"experiment={experiment}", *(overrides or [])]
            )
    finally:
        GlobalHydra.instance().clear()
    return cfg.pipeline


# ----------------------------------------------------------------------------- state


class PipelineState:
    """What a pipeline run has done, in ``<work>/pipeline_state.json`` (written atomically).

    ``stages[stage] = {"status": "running"|"done", "run_dir", "box_seconds", "wall_seconds"}``;
    ``calls`` counts the calls that worked on this run (a resumed run says how many it took);
    ``used_seconds`` the wall clock they spent.
    """

    def __init__(self, work: Path, experiment: str):
        self.path = work / STATE_FILE
        self.data: dict[str, Any] = {
            "experiment": experiment,
            "calls": 0,
            "used_seconds": 0.0,
            "stages": {},
        }
        if self.path.is_file():
            try:
                saved = json.loads(self.path.read_text())
            except ValueError:
                raise GarmentGenError(
                    f"{self.path}: damaged pipeline state; delete it to start over"
                ) from None
            if saved.get("experiment") != experiment:
                raise GarmentGenError(
                    f"{self.path.parent}: holds a run of experiment {saved.get('experiment')!r}, "
                    f"not {experiment!r}; choose another pipeline.work folder"
                )
            self.data = saved

    def save(self) -> None:
        write_json_atomic(self.path, self.data)

    def stage(self, name: str) -> dict[str, Any]:
        return self.data["stages"].get(name, {})

    def set_stage(self, name: str, **values: Any) -> None:
        self.data["stages"].setdefault(name, {}).update(values)
        self.save()


# ----------------------------------------------------------------------------- running


def _trained_seconds(ckpt: Path) -> float:
    """Training seconds Lightning's timer had counted when ``ckpt`` was written (0 if none)."""
    from garment_gen.utils.safe_load import safe_torch_load

    callbacks = safe_torch_load(ckpt).get("callbacks") or {}
    for key, value in callbacks.items():
        if "Timer" in str(key) and isinstance(value, dict):
            return float((value.get("time_elapsed") or {}).get("train", 0.0))
    return 0.0


def _run_stage(
    stage: str,
    overrides: list[str],
    values: dict[str, Any],
    work: Path,
    box: float,
    state: PipelineState,
) -> Path:
    """Train one stage in its time box, resuming it when an earlier call was interrupted."""
    from garment_gen.train import train

    previous = state.stage(stage)
    run_dir = (
        Path(previous["run_dir"])
        if previous.get("run_dir")
        else (work / stage / "runs" / time.strftime("%Y-%m-%d_%H-%M-%S"))
    )
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    resume = previous.get("status") == "running" and ckpt.is_file()
    if resume:
        # Lightning's timer continues from the checkpoint: the box is what it had used plus
        # this call's share.
        elapsed = _trained_seconds(ckpt)
        log.info("== stage %s: resuming %s (%.0f s trained)", stage, ckpt, elapsed)
        box += elapsed
    extra = [f"trainer.max_time={hms(box)}"] + ([f"ckpt_path={ckpt}"] if resume else [])
    cfg = compose(stage, [*overrides, *extra], work, run_dir, values)
    state.set_stage(stage, status="running", run_dir=str(run_dir), box_seconds=round(box, 1))
    t0 = time.monotonic()
    log.info("== stage %s (time box %.0f s) in %s", stage, box, run_dir)
    metrics = train(cfg)
    wall = time.monotonic() - t0
    state.set_stage(
        stage, status="done", wall_seconds=round(wall + previous.get("wall_seconds", 0), 1)
    )
    log.info(
        "== stage %s done in %.0f s: %s",
        stage,
        wall,
        ", ".join(f"{k}={v:.4g}" for k, v in metrics.items() if k.startswith("val/")),
    )
    return run_dir


def _given_generator(p: DictConfig) -> Path | None:
    """``pipeline.generator``: an existing ``generator.pt`` or garment model (its generator),
    checked now; the chain then skips stage pretrain and trains the rest over it."""
    value = p.get("generator")
    if not value:
        return None
    from garment_gen.networks.stylegan2 import GeneratorFileError, load_generator

    path = Path(str(value)).expanduser().resolve()
    try:
        load_generator(path)
    except GeneratorFileError as exc:
        raise GarmentGenError(f"pipeline.generator: {exc}") from None
    log.info("== stage pretrain skipped: the generator of %s", path)
    return path


def run_pipeline(p: DictConfig) -> dict[str, Any]:
    """Run experiment ``p`` (a composed ``pipeline`` config); returns its summary.

    The summary (also ``<out>/pipeline_summary.json``) names every run folder, the garment
    model, the evaluation and the grid.
    """
    out = Path(str(p.out)).resolve()
    work = Path(str(p.get("work") or out)).resolve()
    work.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    state = PipelineState(work, str(p.name))
    state.data["calls"] += 1
    state.save()
    given = _given_generator(p)
    fractions = {s: float(p.stages[s].fraction) for s in STAGES if s in p.stages}
    if given and "pretrain" in fractions:  # its share goes to the encoders trained over it
        share = fractions.pop("pretrain")
        if "encoders" in fractions:
            fractions["encoders"] += share
    left = float(p.minutes) * 60 - float(state.data["used_seconds"])
    if left <= 0 and any(state.stage(s).get("status") != "done" for s in fractions):
        raise GarmentGenError(
            f"{work}: the budget of {p.minutes} min is spent and stages are unfinished; "
            "raise pipeline.minutes to continue"
        )
    budget = TimeBudget(max(left, 1.0), fractions)
    t_call = time.monotonic()
    runs: dict[str, Path] = {}
    try:
        for stage in fractions:
            done = state.stage(stage)
            if done.get("status") == "done":
                runs[stage] = Path(done["run_dir"])
                budget.done(stage, 0.0, 0.0)
                log.info("== stage %s already done: %s", stage, runs[stage])
                continue
            overrides, values = stage_overrides(p, stage)
            if stage == "encoders":
                generator = given or runs["pretrain"] / "generator.pt"
                values.setdefault("model", {})["generator"] = str(generator)
                if "segmenter" in runs:
                    values.setdefault("loss", {})["segmenter"] = str(
                        runs["segmenter"] / "segmenter.pt"
                    )
            box = budget.box(stage)
            t0 = time.monotonic()
            runs[stage] = _run_stage(stage, overrides, values, work, box, state)
            budget.done(stage, box, time.monotonic() - t0)
    finally:
        state.data["used_seconds"] = round(
            state.data["used_seconds"] + time.monotonic() - t_call, 1
        )
        state.save()
    return finish(p, runs, out, state)


def finish(p: DictConfig, runs: dict[str, Path], out: Path, state: PipelineState) -> dict[str, Any]:
    """Evaluate the garment model and draw its grid (what every experiment ends with)."""
    from garment_gen.evaluate import evaluate, format_table
    from garment_gen.generate import split_grid
    from garment_gen.inference import GarmentGenerator
    from garment_gen.utils.images import save_png

    summary: dict[str, Any] = {
        "experiment": str(p.name),
        "runs": {k: str(v) for k, v in runs.items()},
        "calls": state.data["calls"],
        "wall_seconds": state.data["used_seconds"],
    }
    if "encoders" not in runs:
        return summary
    model = runs["encoders"] / "garment_model.pt"
    root = Path(str(p.data)).resolve() if p.get("data") else sample_dir()
    summary["model"] = str(model)
    if p.get("grid", True):
        gen = GarmentGenerator.from_checkpoint(model)
        summary["grid"] = str(save_png(split_grid(gen, root, "test"), out / "grid.png"))
    if p.get("evaluate") is not None:
        kwargs = OmegaConf.to_container(p.evaluate, resolve=True) or {}
        report = evaluate(str(model), root=str(root), out=str(out / "eval_test"), **kwargs)
        print(format_table(report))
        summary["metrics"] = str(out / "eval_test" / "metrics.json")
        summary["test"] = {m: report[m] for m in report.get("methods", []) if m in report}
    write_json_atomic(out / "pipeline_summary.json", summary)
    return summary


def main() -> None:
    """``python -m garment_gen.pipeline experiment=NAME [overrides]``."""

    from garment_gen.cli import check_group_choice, hydra_main, user_errors

    check_group_choice(sys.argv[1:], conf_dir(), "experiment", required=False)

    @user_errors
    def _app(cfg: DictConfig) -> None:
        summary = run_pipeline(cfg.pipeline)
        print(json.dumps({k: v for k, v in summary.items() if k != "test"}, indent=2))

    hydra_main(conf_dir(), "pipeline", _app)


if __name__ == "__main__":
    main()
