"""The teacher cache: one zarr v3 group per (teacher, temporal support).

``WORK/cache/<teacher_id>/ts<TS>-hop<HOP>.zarr`` holds
    emb       (N, W_max, D) float16   one embedding per window, NaN where a clip has fewer windows
    clip      (N, D)        float16   float32 mean over the clip's valid windows, then float16
    n_windows (N,)          int32     valid windows per clip (0 = not written yet)
    done      (n_blocks,)   bool      block k (rows [k*R, (k+1)*R)) is complete; written after its rows
row i = row i of manifests/clips.parquet; R = attrs["zarr_shard_rows"] = the pack's shard size.

Why the chunking looks like this: zarr-python loses rows silently when several processes write
parts of one zarr shard. So a block of R rows is one zarr shard (sharding codec) of every array,
computed and written whole, once, by one process; ``done`` has one chunk (one file) per block for
the same reason. When packing kept every tar shard full (all but the last hold R clips), block k
IS tar shard k, so ``done`` has one entry per tar shard. When decode-time refusals left some tar
shards short, blocks straddle tar shards; the extractor then computes the few border rows of the
next tar shard too (same batches, same bits) rather than sharing a zarr shard between writers.
The local store replaces files atomically: a killed writer leaves the old shard file or the new.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.codecs import ZstdCodec

from ssondo_cache.provenance import host, now_iso
from ssondo_cache.workspace import Workspace

FORMAT = "ssondo-cache/1"
INNER_CHUNK_BYTES = 1 << 20  # inner chunks of about 1 MiB: a few rows can be read without the whole shard


class CacheMismatchError(ValueError):
    """The cache does not belong to this workspace (or to this extraction's settings)."""


class CacheBlockError(ValueError):
    """A block marked done whose files are missing, unreadable or hold non-finite values."""


ROW_ARRAYS = ("emb", "clip", "n_windows")  # the arrays a done block must have a file of


def cache_root(work: str | Path) -> Path:
    return Workspace(work).cache_dir


def cache_path(work: str | Path, teacher_id: str, ts_name: str) -> Path:
    """``WORK/cache/<teacher_id>/<ts_name>.zarr`` (``ts_name`` from ``TemporalSupport.name``)."""
    return cache_root(work) / teacher_id / f"{ts_name}.zarr"


def block_rows(shard_offsets: list[int], shard_size: int | None = None) -> int:
    """Rows per zarr shard ("block"): the pack's nominal shard size if known, else the largest tar shard."""
    if shard_size:
        return int(shard_size)
    return max([int(b - a) for a, b in zip(shard_offsets[:-1], shard_offsets[1:], strict=True)] + [1])


def _inner_rows(shard_rows: int, row_bytes: int) -> int:
    """Largest divisor of ``shard_rows`` whose chunk stays under INNER_CHUNK_BYTES (the sharding
    codec needs inner chunks that divide the shard)."""
    best = 1
    for c in range(1, shard_rows + 1):
        if shard_rows % c == 0 and c * row_bytes <= INNER_CHUNK_BYTES:
            best = c
    return best


class CacheStore:
    """A teacher cache on disk. Read with ``read_clip`` / ``read_windows`` one tar shard (``shard_rows``)
    or block (``block_rows``) at a time: per-row reads through zarr-python are slow."""

    def __init__(self, path: str | Path, mode: str = "r") -> None:
        self.path = Path(path)
        if not (self.path / "zarr.json").is_file():
            raise FileNotFoundError(f"no teacher cache at {self.path}")
        self._group = zarr.open_group(str(self.path), mode=mode)
        self.attrs: dict[str, Any] = dict(self._group.attrs)
        if self.attrs.get("format") != FORMAT:
            raise CacheMismatchError(
                f"{self.path} is not an ssondo cache (format {self.attrs.get('format')!r})"
            )
        self._offsets = np.asarray(self.attrs["shard_offsets"], dtype=np.int64)
        self._layout: dict[str, Any] = {}  # array name -> opened array, for file names

    # ---- shape
    @property
    def name(self) -> str:
        return f"{self.path.parent.name}/{self.path.name.removesuffix('.zarr')}"

    @property
    def n_rows(self) -> int:
        return int(self.attrs["n_rows"])

    @property
    def embed_dim(self) -> int:
        return int(self.attrs["embed_dim"])

    @property
    def max_windows(self) -> int:
        return int(self.attrs["max_windows"])

    @property
    def n_shards(self) -> int:
        return len(self._offsets) - 1

    def shard_rows(self, shard: int) -> tuple[int, int]:
        """(start, stop) rows of tar shard ``shard``."""
        if not 0 <= shard < self.n_shards:
            raise IndexError(f"tar shard {shard} out of range (cache has {self.n_shards})")
        return int(self._offsets[shard]), int(self._offsets[shard + 1])

    @property
    def block_size(self) -> int:
        return int(self.attrs["zarr_shard_rows"])

    @property
    def n_blocks(self) -> int:
        return -(-self.n_rows // self.block_size)

    def block_rows(self, block: int) -> tuple[int, int]:
        """(start, stop) rows of block (zarr shard) ``block``."""
        if not 0 <= block < self.n_blocks:
            raise IndexError(f"block {block} out of range (cache has {self.n_blocks})")
        return block * self.block_size, min((block + 1) * self.block_size, self.n_rows)

    # ---- progress
    def done(self) -> np.ndarray:
        """(n_blocks,) bool, read fresh from disk (other processes may be writing)."""
        return np.asarray(self._group["done"][:], dtype=bool)

    def pending_blocks(self) -> list[int]:
        return [int(k) for k in np.flatnonzero(~self.done())]

    def mark_undone(self, block: int) -> None:
        """Forget that ``block`` is done (``--redo-block``): the next extraction writes it again, whole.
        Its files go too: zarr merges a write into the shard file it finds, and a damaged one fails."""
        self.block_rows(block)  # range check
        self._group["done"][block] = False
        for array in ROW_ARRAYS:
            self.block_file(array, block).unlink(missing_ok=True)
        if self._group.attrs.get("finished"):
            self._group.attrs.update({"finished": None})
            self.attrs = dict(self._group.attrs)

    def shard_done(self, shard: int) -> bool:
        """True once every row of tar shard ``shard`` is written."""
        start, stop = self.shard_rows(shard)
        if stop == start:
            return True
        done = self.done()
        return bool(done[start // self.block_size : (stop - 1) // self.block_size + 1].all())

    def rows_done(self) -> int:
        done = self.done()
        full = int(done[:-1].sum()) * self.block_size if len(done) else 0
        last = self.n_rows - (self.n_blocks - 1) * self.block_size if len(done) and done[-1] else 0
        return full + last

    def missing_rows(self) -> int:
        return self.n_rows - self.rows_done()

    def is_complete(self) -> bool:
        return bool(self.done().all())

    # ---- integrity
    def block_file(self, array: str, block: int) -> Path:
        """The file holding ``array``'s rows of ``block`` (one zarr shard, or one chunk for n_windows)."""
        if array not in self._layout:  # opening an array reads its zarr.json: once per array
            self._layout[array] = self._group[array]
        arr = self._layout[array]
        return self.path / array / arr.metadata.encode_chunk_key((block,) + (0,) * (arr.ndim - 1))

    def missing_files(self, blocks: range | None = None, arrays: tuple[str, ...] = ROW_ARRAYS) -> list[Path]:
        """Files absent for blocks marked done (all done blocks by default): a done block read back
        without its file would be zarr's fill value (NaN), never an error. Only the ``done`` flags of
        ``blocks`` are read (one small file each), so a reader pays a few stats per block read."""
        todo = range(self.n_blocks) if blocks is None else blocks
        done = np.asarray(self._group["done"][todo.start : todo.stop], dtype=bool) if len(todo) else []
        return [
            f
            for k, is_done in zip(todo, done, strict=True)
            if is_done
            for a in arrays
            if not (f := self.block_file(a, k)).is_file()
        ]

    def verify_block(self, block: int) -> None:
        """Read every array of a done block and check it: files present and decodable, every valid
        window and clip embedding finite, window counts in range. Raises CacheBlockError."""
        start, stop = self.block_rows(block)
        emb, n_windows = self.read_windows(start, stop)
        clip = self.read_clip(start, stop)
        where = f"cache {self.path} block {block} (rows {start}..{stop - 1})"
        if (n_windows < 1).any() or (n_windows > self.max_windows).any():
            raise CacheBlockError(f"{where}: window counts out of 1..{self.max_windows}; {self._redo(block)}")
        valid = np.arange(self.max_windows)[None, :] < n_windows[:, None]  # (n, W_max)
        bad = int((~np.isfinite(clip)).any(1).sum() + (~np.isfinite(emb[valid])).any(-1).sum())
        if bad:
            raise CacheBlockError(f"{where}: {bad} non-finite embeddings (NaN/Inf); {self._redo(block)}")

    def _redo(self, block: int) -> str:
        return f"re-extract that block: run the same `ssondo extract` command with --redo-block {block}"

    def _checked_read(self, array: str, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) of ``array``, refusing a done block whose file is missing or unreadable."""
        if stop <= start:
            return np.asarray(self._group[array][start:stop])
        blocks = range(start // self.block_size, (stop - 1) // self.block_size + 1)
        missing = self.missing_files(blocks, (array,))
        if missing:
            block = int(missing[0].relative_to(self.path / array).parts[1])
            raise CacheBlockError(
                f"cache file {missing[0]} is missing but block {block} is marked done "
                f"(a deleted file reads back as NaN); {self._redo(block)}"
            )
        try:
            return np.asarray(self._group[array][start:stop])
        except Exception as err:  # zarr/numcodecs raise many types for a corrupt shard (zstd, checksums)
            files = ", ".join(str(self.block_file(array, k)) for k in blocks)
            raise CacheBlockError(
                f"cache file {files} of blocks {blocks[0]}..{blocks[-1]} is unreadable "
                f"({type(err).__name__}: {err}); {self._redo(blocks[0])}"
            ) from None

    # ---- reading
    def read_clip(self, start: int, stop: int) -> np.ndarray:
        """(stop-start, D) float32 clip embeddings."""
        return self._checked_read("clip", start, stop).astype(np.float32)

    def read_windows(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """((n, W_max, D) float32 window embeddings, NaN past each clip's windows; (n,) int32 counts)."""
        emb = self._checked_read("emb", start, stop).astype(np.float32)
        return emb, self.read_n_windows(start, stop)

    def read_n_windows(self, start: int, stop: int) -> np.ndarray:
        """(stop-start,) int32 valid windows per clip, without reading any embedding."""
        return self._checked_read("n_windows", start, stop).astype(np.int32)

    # ---- writing (extraction only)
    def write_block(self, block: int, emb: np.ndarray, clip: np.ndarray, n_windows: np.ndarray) -> None:
        """Write all rows of ``block`` (one whole zarr shard per array, one call each), then mark it done."""
        start, stop = self.block_rows(block)
        n = stop - start
        if emb.shape != (n, self.max_windows, self.embed_dim) or clip.shape != (n, self.embed_dim):
            raise ValueError(
                f"block {block}: got emb {emb.shape}, clip {clip.shape}; "
                f"expected ({n}, {self.max_windows}, {self.embed_dim}) and ({n}, {self.embed_dim})"
            )
        if n_windows.shape != (n,) or (n_windows < 1).any():
            raise ValueError(f"block {block}: n_windows must be {n} counts >= 1 (a row was not computed)")
        self._group["emb"][start:stop] = emb.astype(np.float16, copy=False)
        self._group["clip"][start:stop] = clip.astype(np.float16, copy=False)
        self._group["n_windows"][start:stop] = n_windows.astype(np.int32, copy=False)
        self._group["done"][block] = True  # last: a block is visible only once fully written

    def mark_finished(self) -> bool:
        """Record the end time once every block is done; True if the cache is complete."""
        if not self.is_complete():
            return False
        if not self._group.attrs.get("finished"):
            self._group.attrs.update({"finished": now_iso()})
            self.attrs = dict(self._group.attrs)
        return True


# ---------------------------------------------------------------- creation
def _check_same(path: Path, have: dict[str, Any], want: dict[str, Any], keys: tuple[str, ...]) -> None:
    for key in keys:
        if have.get(key) != want.get(key):
            hint = (
                "the clips manifest changed since this cache was made (re-packed corpus?)"
                if key == "clips_fingerprint"
                else "the cache was made with other settings (resume with the same ones)"
            )
            raise CacheMismatchError(
                f"cache {path} does not match this extraction: {key} is {have.get(key)!r} in the cache, "
                f"{want.get(key)!r} now; {hint}. Delete {path} to rebuild it."
            )


IDENTITY_KEYS = (  # the manifest first: its mismatch explains the others
    "clips_fingerprint",
    "format",
    "teacher_id",
    "ts",
    "hop",
    "teacher_sample_rate",
    "n_rows",
    "max_windows",
    "embed_dim",
    "shard_offsets",
    "zarr_shard_rows",
)


def create_or_open(path: str | Path, attrs: dict[str, Any], identity: tuple[str, ...] = ()) -> CacheStore:
    """Open the cache at ``path`` for writing, creating it if needed.

    ``attrs`` must hold n_rows, max_windows, embed_dim, shard_offsets (n_shards+1 row offsets of the
    tar shards), optionally zarr_shard_rows (the pack's shard size), and the provenance keys.
    Several processes may call this at once: the store is built in a private temporary folder and
    renamed into place, and the loser opens the winner's store. An existing
    store made with other settings or another manifest is refused (CacheMismatchError); ``identity``
    names more attrs that must match (e.g. what changes results at the last bit: batch size, precision).
    """
    path = Path(path)
    offsets = [int(x) for x in attrs["shard_offsets"]]
    rows = attrs.get("zarr_shard_rows") or block_rows(offsets)
    attrs = {**attrs, "format": FORMAT, "zarr_shard_rows": int(rows)}
    if not (path / "zarr.json").is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{host()}-{os.getpid()}")  # unique across nodes too
        shutil.rmtree(tmp, ignore_errors=True)
        _build(tmp, attrs)
        try:
            os.rename(tmp, path)  # atomic; fails if another process got there first
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
            if not (path / "zarr.json").is_file():
                raise
    store = CacheStore(path, mode="r+")
    _check_same(path, store.attrs, attrs, IDENTITY_KEYS + tuple(identity))
    return store


def _build(path: Path, attrs: dict[str, Any]) -> None:
    n, w, d = int(attrs["n_rows"]), int(attrs["max_windows"]), int(attrs["embed_dim"])
    rows = int(attrs["zarr_shard_rows"])
    n_blocks = -(-n // rows)
    zstd = ZstdCodec(level=1)  # float16 barely compresses; the NaN padding does
    layout = {
        "done_covers": "rows [k*zarr_shard_rows, (k+1)*zarr_shard_rows): tar shard k when every tar "
        "shard but the last holds zarr_shard_rows clips"
    }
    group = zarr.open_group(
        str(path), mode="w", attributes={**attrs, **layout, "started": now_iso(), "finished": None}
    )
    emb_inner = _inner_rows(rows, w * d * 2)
    group.create_array(
        "emb",
        shape=(n, w, d),
        dtype="float16",
        chunks=(emb_inner, w, d),
        shards=(rows, w, d),
        compressors=zstd,
        fill_value=np.nan,
        dimension_names=("row", "window", "dim"),
    )
    group.create_array(
        "clip",
        shape=(n, d),
        dtype="float16",
        chunks=(_inner_rows(rows, d * 2), d),
        shards=(rows, d),
        compressors=zstd,
        fill_value=np.nan,
        dimension_names=("row", "dim"),
    )
    group.create_array(
        "n_windows",
        shape=(n,),
        dtype="int32",
        chunks=(rows,),
        compressors=zstd,
        fill_value=0,
        dimension_names=("row",),
    )
    group.create_array(
        "done",
        shape=(n_blocks,),
        dtype="bool",
        chunks=(1,),
        fill_value=False,
        dimension_names=("block",),
    )
