"""Faults a user can act on: raised where the fault is detected, as one line that says what
failed, in which file (and member or block), why, and what to do next.

``SsondoError`` is the base of the faults that are not a bad argument: a damaged file, a full
disk, a file refused for safety. Its str() is the whole message, and it is constructible from that
one string (a DataLoader worker's exception is re-raised in the main process as ``type(msg)``).
The CLI (``pipeline/cli.py``) prints these, and ValueError / OSError, as one line with exit status
1; a traceback only with ``--debug`` or SSONDO_DEBUG=1.
"""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


class SsondoError(Exception):
    """A fault with its file and next step in the message."""


class DiskFullError(SsondoError):
    """A write failed for lack of space (or quota); nothing half-written was left as finished."""


class UnsafeFileError(SsondoError):
    """A file was refused because reading it could run code (a pickle with arbitrary objects)."""


def filesystem_of(path: str | Path) -> str:
    """``MOUNT (DEVICE)`` of the filesystem holding ``path`` (the device from /proc/mounts on Linux)."""
    p = Path(os.path.abspath(path))
    while not p.exists() and p != p.parent:
        p = p.parent
    while not os.path.ismount(p) and p != p.parent:
        p = p.parent
    device = None
    try:
        with open("/proc/mounts") as f:
            for line in f:
                fields = line.split()
                if len(fields) > 1 and fields[1] == str(p):
                    device = fields[0]  # the last entry for a mount point is the one in use
    except OSError:
        pass
    return f"{p} ({device})" if device else str(p)


def disk_full(path: str | Path, what: str, resume: str) -> DiskFullError:
    """The one message for a full disk: what was being written, where, how much is free, what next."""
    where = Path(path).parent
    try:
        free = f", {shutil.disk_usage(where).free / 2**20:.1f} MiB free"
    except OSError:
        free = ""
    return DiskFullError(
        f"no space left writing {what} {path} (filesystem {filesystem_of(where)}{free}); "
        f"free space there, then {resume}"
    )


@contextmanager
def writing(path: str | Path, what: str, resume: str = "run the same command again") -> Iterator[None]:
    """Turn a full-disk OSError raised inside the block into ``disk_full(path, ...)``."""
    try:
        yield
    except OSError as err:
        if err.errno in DISK_FULL:
            raise disk_full(path, what, resume) from err
        raise
