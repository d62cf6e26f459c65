"""garment_gen: controllable garment image generation.

A shape mask and a texture image in, a garment image out. The pipeline is
``prepare`` (aligned image/mask pairs) -> ``stage=segmenter`` / ``stage=pretrain``
(StyleGAN2) -> ``stage=encoders`` (shape + texture encoders driving the frozen
generator's W+) -> ``generate``.
"""

from __future__ import annotations

from pathlib import Path

__version__ = "0.1.0"

_PKG_DIR = Path(__file__).resolve().parent


def conf_dir() -> Path:
    """Return the Hydra config folder.

    In a source checkout or editable install this is the repository's top-level
    ``conf/``; in a wheel it is shipped inside the package as ``garment_gen/conf``.
    The structured configs these YAML files build on (:mod:`garment_gen.schema`) are
    registered with Hydra's ConfigStore on the first call.
    """
    for candidate in (_PKG_DIR / "conf", _PKG_DIR.parent / "conf"):
        if (candidate / "config.yaml").is_file():
            _register_schemas()
            return candidate
    raise FileNotFoundError(
        f"garment_gen cannot find its Hydra configs (looked in {_PKG_DIR / 'conf'} and "
        f"{_PKG_DIR.parent / 'conf'}); reinstall the package."
    )


_registered = False


def _register_schemas() -> None:
    global _registered
    if not _registered:
        from garment_gen.schema import register  # Hydra + the dataclasses: only when composing

        register()
        _registered = True


def sample_dir() -> Path:
    """Return the bundled prepared sample dataset (64 px, CC0 clothing photos)."""
    return _PKG_DIR / "assets" / "sample64"
