"""User-facing errors.

Every error a user can cause by bad input derives from :class:`GarmentGenError`;
the command-line entry points print its message on one line and exit with
status 2 instead of showing a traceback.
"""

from __future__ import annotations

from pathlib import Path


class GarmentGenError(Exception):
    """An error caused by the user's input or configuration, with a clear message."""


class BadInputError(GarmentGenError):
    """A single input file cannot be used; names the file and the reason."""

    def __init__(self, path: str | Path, reason: str, code: str = "bad_input"):
        self.path = str(path)
        self.reason = reason
        self.code = code
        super().__init__(f"{self.path}: {reason}")


class ConfigError(GarmentGenError):
    """A configuration value is missing or invalid."""
