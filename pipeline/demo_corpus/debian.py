"""Debian packages as data: `apt-get download` + `dpkg -x` into a cache folder.

No system install happens: the .deb is fetched into CACHE/debian/, unpacked into
CACHE/debian/<package>/ (a private root), and the .deb is deleted once unpacked
(its sha256 and version stay in the marker `.ssondo-package.json`). The unpack is
renamed into place only when complete, so a killed run leaves nothing half-done.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ssondo_cache.atomic import write_json
from ssondo_cache.provenance import sha256_file

MARKER = ".ssondo-package.json"


@dataclass(frozen=True)
class DebianPackage:
    """One unpacked Debian package: its files live under `root` (e.g. root/usr/share/...)."""

    name: str
    version: str
    root: Path
    deb_sha256: str
    deb_bytes: int


class DebianUnavailable(RuntimeError):
    """The package could not be fetched (no apt-get, unknown package, no network to the mirror...)."""


def default_cache_dir() -> Path:
    """$SSONDO_CACHE, else $XDG_CACHE_HOME/ssondo, else ~/.cache/ssondo (shared by every build and test)."""
    if env := os.environ.get("SSONDO_CACHE"):
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "ssondo"


def cached_package(name: str, cache_dir: Path) -> DebianPackage | None:
    """The package if a previous run unpacked it completely into the cache, else None."""
    root = Path(cache_dir) / "debian" / name
    marker = root / MARKER
    if not marker.is_file():
        return None
    meta = json.loads(marker.read_text())
    return DebianPackage(name, meta["version"], root, meta["deb_sha256"], meta["deb_bytes"])


def fetch_package(
    name: str, cache_dir: Path, download: bool = True, log: Callable[[str], None] | None = None
) -> DebianPackage:
    """Return the unpacked package, downloading and unpacking it on first use.

    Raises DebianUnavailable with the reason (apt-get's own message) when it cannot be had;
    with download=False only the cache is looked at. `log` hears what is being downloaded.
    """
    log = log or (lambda message: None)
    if (pkg := cached_package(name, cache_dir)) is not None:
        return pkg
    if not download:
        raise DebianUnavailable(f"{name}: not in the cache {cache_dir} and downloads are off")
    for tool in ("apt-get", "dpkg-deb"):
        if shutil.which(tool) is None:
            raise DebianUnavailable(f"{name}: `{tool}` is not available on this machine (not Debian/Ubuntu?)")
    debian_dir = Path(cache_dir) / "debian"
    debian_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{name}-", dir=debian_dir) as tmp:
        log(f"[demo-data] {name}: apt-get download + dpkg-deb -x into {debian_dir}")
        deb = _download(name, Path(tmp), log)
        version = _deb_field(deb, "Version")
        unpacked = Path(tmp) / "root"
        _run(["dpkg-deb", "-x", str(deb), str(unpacked)], f"{name}: dpkg-deb -x failed")
        write_json(
            unpacked / MARKER,
            {
                "package": name,
                "version": version,
                "deb": deb.name,
                "deb_sha256": sha256_file(deb),
                "deb_bytes": deb.stat().st_size,
            },
        )
        root = debian_dir / name
        if root.exists():  # a stale, unmarked leftover: ours to replace
            shutil.rmtree(root)
        os.replace(unpacked, root)
    pkg = cached_package(name, cache_dir)
    assert pkg is not None
    return pkg


def _download(name: str, where: Path, log: Callable[[str], None]) -> Path:
    """`apt-get download NAME` into `where`; one `apt-get update` and retry when the lists lack it."""
    try:
        _run(["apt-get", "download", "-q", name], f"{name}: apt-get download failed", cwd=where)
    except DebianUnavailable as first:
        if os.geteuid() != 0:  # apt-get update needs root: report the first failure as it was
            raise
        log(f"[demo-data] {name}: not downloadable yet, running `apt-get update` once and retrying")
        try:
            _run(["apt-get", "update", "-q"], "apt-get update failed")
            _run(["apt-get", "download", "-q", name], f"{name}: apt-get download failed", cwd=where)
        except DebianUnavailable as second:
            raise DebianUnavailable(f"{first}\n(after apt-get update) {second}") from None
    debs = sorted(where.glob(f"{name}_*.deb"))
    if len(debs) != 1:
        raise DebianUnavailable(f"{name}: apt-get download left {len(debs)} .deb files, expected 1")
    return debs[0]


def _deb_field(deb: Path, field: str) -> str:
    out = subprocess.run(["dpkg-deb", "-f", str(deb), field], capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise DebianUnavailable(f"{deb.name}: dpkg-deb -f failed: {out.stderr.strip()}")
    return out.stdout.strip()


def _run(cmd: list[str], what: str, cwd: Path | None = None) -> None:
    try:
        out = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False, timeout=900)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise DebianUnavailable(f"{what}: {err}") from None
    if out.returncode != 0:
        # apt prints a harmless sandbox warning (W: ... unsandboxed as root); keep the real errors
        msg = "\n".join(ln for ln in out.stderr.splitlines() if not ln.startswith("W:")).strip()
        raise DebianUnavailable(f"{what} (exit {out.returncode}): {msg or out.stdout.strip()}")
