"""Telling a problem of the disk (full, read-only, no permission) from a problem of one input."""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path

DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM})


def is_disk_error(exc: BaseException) -> bool:
    """True for an ``OSError`` from a full, read-only or forbidden location, and for torch's
    "unexpected pos" / "file write failed" errors, which is how a full disk surfaces from
    ``torch.save``."""
    if isinstance(exc, OSError) and exc.errno in DISK_ERRNOS:
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and (
        "unexpected pos" in text or "file write failed" in text or "No space left" in text
    )


def disk_reason(exc: BaseException) -> str:
    """A short lower-case reason for a disk error (``no space left on device``, ...)."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return "no space left on device (the write stopped part way)"


def check_writable(folder: str | Path, what: str) -> Path:
    """Make ``folder`` (and parents) and prove a file can be written there, before any compute.

    ``what`` names the setting in the error (e.g. ``"paths.output_dir"``, ``"out"``). Raises
    :class:`~garment_gen.errors.GarmentGenError` with one line naming the folder and the reason
    (read-only, no permission, full, a file in the way).
    """
    from garment_gen.errors import GarmentGenError

    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-check.", dir=folder)
        try:
            os.write(fd, b"x")
        finally:
            os.close(fd)
            os.unlink(probe)
    except (FileExistsError, NotADirectoryError):
        raise GarmentGenError(
            f"{what}={folder}: a file is in the way (expected a folder)"
        ) from None
    except OSError as exc:
        raise GarmentGenError(f"{what}={folder}: cannot write there: {disk_reason(exc)}") from None
    return folder
