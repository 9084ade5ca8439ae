"""Finding the caches of a workspace: resolve a NAME, open it against the clips manifest, list and
verify them (``ssondo cache info``). The store itself (one cache's arrays) is store.py."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ssondo_cache.store import (
    CacheBlockError,
    CacheMismatchError,
    CacheStore,
    cache_root,
)
from ssondo_cache.workspace import Workspace


@dataclass(frozen=True)
class CacheInfo:
    """One line of ``ssondo cache info``."""

    name: str  # <teacher_id>/ts<TS>-hop<HOP>
    path: Path
    teacher: str
    teacher_id: str
    ts: float | str
    hop: float | str
    embed_dim: int
    rows_done: int
    rows_total: int
    size_bytes: int
    matches_manifest: bool | None  # None: the workspace has no clips manifest to compare with
    missing_files: tuple[Path, ...] = ()  # files of done blocks that are not on disk

    @property
    def complete(self) -> bool:
        return self.rows_done == self.rows_total and not self.missing_files


def _all_cache_paths(work: str | Path) -> list[Path]:
    root = cache_root(work)
    if not root.is_dir():
        return []
    return sorted(p for p in root.glob("*/*.zarr") if (p / "zarr.json").is_file())


def resolve_cache(work: str | Path, name: str) -> Path:
    """``<teacher_id>/ts<TS>-hop<HOP>``, any unique suffix of it (``ts1-hop1``), or a path to a .zarr."""
    direct = Path(name)
    if direct.suffix == ".zarr" and (direct / "zarr.json").is_file():
        return direct
    want = name.removesuffix(".zarr").strip("/")
    paths = _all_cache_paths(work)
    names = {f"{p.parent.name}/{p.name.removesuffix('.zarr')}": p for p in paths}
    hits = [n for n in names if n == want or n.endswith("/" + want)]
    if len(hits) == 1:
        return names[hits[0]]
    known = ", ".join(sorted(names)) or "(none)"
    if not hits:
        raise FileNotFoundError(f"no cache {name!r} in {cache_root(work)}; caches there: {known}")
    raise ValueError(f"cache name {name!r} is ambiguous: {', '.join(sorted(hits))}; give <teacher_id>/<ts>")


def _workspace_fingerprint(work: str | Path) -> str | None:
    from ssondo_cache.manifests import clips_fingerprint  # packing's module; imported when needed

    if not Workspace(work).clips_manifest.is_file():
        return None
    return clips_fingerprint(work)


def open_cache(work: str | Path, name: str) -> CacheStore:
    """Open cache ``name`` of workspace ``work`` for reading; refuses a cache made from another manifest."""
    store = CacheStore(resolve_cache(work, name))
    have = _workspace_fingerprint(work)
    if have is None:
        raise FileNotFoundError(f"{Workspace(work).clips_manifest} is missing: cannot check cache {name!r}")
    if store.attrs.get("clips_fingerprint") != have:
        raise CacheMismatchError(
            f"cache {store.path} was made from another clips manifest (fingerprint "
            f"{str(store.attrs.get('clips_fingerprint'))[:12]}..., workspace has {have[:12]}...): its rows would "
            "not line up with manifests/clips.parquet. Re-run `ssondo extract` on this workspace."
        )
    return store


def _size_on_disk(path: Path) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            with contextlib.suppress(OSError):  # a shard file being replaced right now
                total += os.path.getsize(os.path.join(root, f))
    return total


def verify_cache(path: str | Path, progress: bool = False) -> list[str]:
    """Read every done block of the cache at ``path`` and check it (``CacheStore.verify_block``);
    returns one line per damaged block (empty: every done block is whole and finite)."""
    from tqdm import tqdm

    store = CacheStore(path)
    done = np.flatnonzero(store.done())
    problems = []
    for block in tqdm(done.tolist(), unit="block", desc=f"verify {store.name}", disable=not progress):
        try:
            store.verify_block(block)
        except CacheBlockError as err:
            problems.append(str(err))
    return problems


def list_caches(work: str | Path) -> list[CacheInfo]:
    """Every cache in ``WORK/cache``, with progress and size on disk."""
    fingerprint = _workspace_fingerprint(work)
    out = []
    for path in _all_cache_paths(work):
        try:
            store = CacheStore(path)
        except CacheMismatchError:
            continue
        a = store.attrs
        out.append(
            CacheInfo(
                name=store.name,
                path=path,
                teacher=str(a.get("teacher")),
                teacher_id=str(a.get("teacher_id")),
                ts=a.get("ts"),
                hop=a.get("hop"),
                embed_dim=store.embed_dim,
                rows_done=store.rows_done(),
                rows_total=store.n_rows,
                size_bytes=_size_on_disk(path),
                matches_manifest=None if fingerprint is None else a.get("clips_fingerprint") == fingerprint,
                missing_files=tuple(store.missing_files()),
            )
        )
    return out
