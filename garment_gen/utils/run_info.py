"""What a run folder records so a result can be reproduced: config, commit, versions."""

from __future__ import annotations

import json
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

PACKAGES = (
    "garment-gen",
    "torch",
    "torchvision",
    "pytorch-lightning",
    "torchmetrics",
    "hydra-core",
    "omegaconf",
    "lpips",
    "segmentation-models-pytorch",
    "albumentations",
    "wandb",
    "numpy",
)


def git_commit(path: Path) -> str | None:
    """The checkout's commit (with ``-dirty`` when modified), or None outside git."""
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=path,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=path,
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def write_run_info(cfg: DictConfig, output_dir: str | Path) -> dict[str, Any]:
    """Write ``config_resolved.yaml`` and ``run_info.json`` into ``output_dir``."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config_resolved.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    info = {
        "argv": sys.argv,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "git_commit": git_commit(Path(__file__).resolve().parent),
        "versions": versions(),
        "seed": cfg.get("seed"),
    }
    (out / "run_info.json").write_text(json.dumps(info, indent=2) + "\n")
    return info
