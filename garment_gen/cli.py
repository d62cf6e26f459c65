"""Helpers shared by the command-line entry points.

A user mistake (bad path, unknown stage, missing required value) must end in
one line that says what is wrong and what is valid, not a library traceback.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

from garment_gen.errors import GarmentGenError


def _user_cause(exc: BaseException) -> GarmentGenError | None:
    """The GarmentGenError behind ``exc``, also when a library (Hydra's instantiate) wrapped it."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, GarmentGenError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def user_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn :class:`GarmentGenError` and missing config values into ``error: ...`` + exit 2."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except GarmentGenError as exc:
            print(f"error: {exc}", file=sys.stderr)
            raise SystemExit(2) from None
        except MissingMandatoryValue as exc:
            key = getattr(exc, "full_key", None) or str(exc)
            print(
                f"error: missing required value '{key}': set it on the command line, e.g. {key}=...",
                file=sys.stderr,
            )
            raise SystemExit(2) from None
        except Exception as exc:
            cause = _user_cause(exc)
            if cause is None:
                raise
            print(f"error: {cause}", file=sys.stderr)
            raise SystemExit(2) from None

    return wrapper


def group_options(conf: Path, group: str) -> list[str]:
    """Names of the configs in a Hydra config group folder."""
    return sorted(p.stem for p in (conf / group).glob("*.yaml"))


def group_values(argv: list[str], group: str) -> list[str]:
    """The values of ``group=...`` (also ``+group=``, ``~group=``) on the command line."""
    return [
        a.split("=", 1)[1] for a in argv if "=" in a and a.split("=", 1)[0].lstrip("+~") == group
    ]


def check_group_choice(argv: list[str], conf: Path, group: str, required: bool) -> None:
    """Validate ``group=value`` on the command line before Hydra composes anything.

    Exits with status 2 and one line naming the valid options when the value is
    missing (and required) or unknown. Comma lists (multirun) are checked item by item.
    """
    options = group_options(conf, group)
    values = group_values(argv, group)
    example = f"python -m garment_gen.train {group}=<{'|'.join(options)}>"
    if not values:
        if required:
            print(f"error: {group} is required: {example}", file=sys.stderr)
            raise SystemExit(2)
        return
    for value in values:
        for item in value.split(","):
            item = item.strip()
            if item.startswith(("choice(", "range(", "glob(")):
                continue
            if item not in options:
                print(
                    f"error: unknown {group} '{item}'; valid: {', '.join(options)}", file=sys.stderr
                )
                raise SystemExit(2)


def one_line(exc: BaseException) -> str:
    """Hydra's and OmegaConf's multi-line composition errors as one line.

    ``Could not override 'foo'. / To append ... use +foo=1`` and the OmegaConf cause below it
    (``Key 'foo' is not in struct`` + ``full_key``/``object_type`` lines) become
    ``Could not override 'foo'. To append ... use +foo=1 (Key 'foo' is not in struct)``; a value
    a structured config refuses becomes ``resolution=abc: Value 'abc' ... converted to Integer``.
    """

    def lines(e: BaseException) -> list[str]:
        skip = ("full_key:", "object_type=", "reference_type=", "See https://hydra.cc")
        return [
            t.strip() for t in str(e).splitlines() if t.strip() and not t.strip().startswith(skip)
        ]

    text = " ".join(lines(exc))
    cause = exc.__cause__
    override = getattr(exc, "override", None)  # OverrideParseException: the override as typed
    if isinstance(override, str) and override not in text:
        return f"{override}: {text}"
    merging = "Error merging override "
    if text.startswith(merging) and isinstance(cause, OmegaConfBaseException) and lines(cause):
        return f"{text[len(merging) :]}: {' '.join(lines(cause))}"  # key=value: what is wrong
    if cause is not None and isinstance(cause, OmegaConfBaseException):
        extra = " ".join(lines(cause))
        if extra and extra not in text:
            text = f"{text} ({extra})"
    return text


def hydra_main(config_dir: Path, config_name: str, app: Callable[[Any], Any]) -> Any:
    """Run ``app(cfg)`` as a Hydra app with ``config_dir/config_name.yaml`` as primary config.

    A config that cannot be composed (unknown key, a value of the wrong type for a structured
    config, a bad override) ends in one ``error:`` line and exit status 2 instead of Hydra's
    multi-line report; ``HYDRA_FULL_ERROR=1`` still shows the whole stack. Errors raised inside
    ``app`` are left to it (see :func:`user_errors`).
    """
    import os

    import hydra
    from hydra.errors import CompactHydraException

    full = os.environ.get("HYDRA_FULL_ERROR")
    entered = False

    @functools.wraps(app)  # Hydra names the job (and its log file) after the wrapped app
    def task(cfg: Any) -> Any:
        nonlocal entered
        entered = True
        return app(cfg)

    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra re-raises instead of printing; we print below
    try:
        return hydra.main(version_base="1.3", config_path=str(config_dir), config_name=config_name)(
            task
        )()
    except (CompactHydraException, OmegaConfBaseException) as exc:
        if full == "1" or entered:
            raise
        print(f"error: {one_line(exc)}", file=sys.stderr)
        raise SystemExit(2) from None
    finally:
        if full is None:
            os.environ.pop("HYDRA_FULL_ERROR", None)
        else:
            os.environ["HYDRA_FULL_ERROR"] = full
