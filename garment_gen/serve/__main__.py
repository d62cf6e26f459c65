"""Entry point: ``python -m garment_gen.serve model=pretrained:reference [port=8000] ...``.

Settings: ``conf/cli/serve.yaml``. Parses, composes, serves; the work is in ``app.py``.
"""

from __future__ import annotations

import sys


def main() -> None:
    """Compose ``conf/cli/serve.yaml`` with the command line and serve until interrupted."""

    from garment_gen import conf_dir
    from garment_gen.cli import hydra_main, user_errors

    missing = [m for m in ("fastapi", "uvicorn", "python_multipart") if not _importable(m)]
    if missing:
        print(
            f"error: the design studio needs {', '.join(missing)}: "
            "pip install 'garment-gen[serve]' (or `make install`)",
            file=sys.stderr,
        )
        raise SystemExit(2)

    @user_errors
    def _app(cfg) -> None:
        from omegaconf import OmegaConf

        from garment_gen.errors import ConfigError
        from garment_gen.serve.app import ServeSettings, run_server

        d = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
        d.pop("hydra", None)
        try:
            settings = ServeSettings(**d)
        except TypeError as exc:
            raise ConfigError(f"serve: {exc}") from None
        run_server(settings)

    hydra_main(conf_dir() / "cli", "serve", _app)


def _importable(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


if __name__ == "__main__":
    main()
