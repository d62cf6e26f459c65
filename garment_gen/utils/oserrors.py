"""Telling a problem of the disk (full, read-only, no permission) from a problem of one input."""

from __future__ import annotations

import errno

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
