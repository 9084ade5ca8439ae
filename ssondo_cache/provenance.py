"""What every artifact records about how it was made."""

from __future__ import annotations

import hashlib
import platform
import subprocess
from datetime import UTC, datetime
from pathlib import Path

from ssondo_cache import __version__


def _git(*args: str) -> str:
    """A git command's output in the checkout this code runs from; "" outside a checkout."""
    here = Path(__file__).resolve().parent.parent
    try:
        return subprocess.run(
            ["git", "-C", str(here), *args], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def code_version(mark_dirty: bool = False) -> str:
    """Package version, plus the git commit when run from a checkout; with ``mark_dirty``, ``+dirty``
    when tracked files differ from that commit (a measured figure must say so)."""
    commit = _git("rev-parse", "--short=12", "HEAD")
    version = f"{__version__}+g{commit}" if commit else __version__
    if mark_dirty and _git("status", "--porcelain", "--untracked-files=no"):
        version += "+dirty"
    return version


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def sha256_file(path: str | Path) -> str:
    # file_digest reads into one reused buffer: a fresh 1-MiB bytes object per read cost ~0.5 ms of page
    # faults per 1.4-MB file (pack's plan hashes every input)
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def host() -> str:
    return platform.node()
