"""The training data of one run: the (cache, sampling manifest, tar shards) triple, opened and
cross-checked, and the block reads the stream and the trainer share.

One segment read = ONE block of target rows per tar shard (``CacheStore.read_clip`` /
``read_windows``, rows in tar order) + the tar's members (memory-mapped, see
``ssondo_cache.shards.tar_clips``), paired by position and checked by key: never a per-row
Zarr read.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.compute as pc
import torch

from ssondo_cache.cache_index import open_cache
from ssondo_cache.cluster import read_sampling_manifest
from ssondo_cache.manifests import read_clips
from ssondo_cache.shards import audio_member, pcm16, tar_clips
from ssondo_cache.store import CacheBlockError, CacheStore
from ssondo_cache.workspace import Workspace
from ssondo_distill import sampling


class DataMismatchError(ValueError):
    """Cache, manifest and shards that do not belong together."""


@dataclass(frozen=True)
class CorpusView:
    """What the readers need to find audio and targets (picklable: paths, not open handles)."""

    shard_paths: tuple[str, ...]
    cache_path: str
    shard_offsets: tuple[int, ...]  # rows of tar shard s: offsets[s]:offsets[s+1]
    sample_rate: int  # of the audio in the shards
    target: str  # clip | window
    crop_samples: int  # emitted audio length
    window_hop: int  # samples between TS windows (target=window)

    def shard_rows(self, shard: int) -> tuple[int, int]:
        return self.shard_offsets[shard], self.shard_offsets[shard + 1]


@dataclass(frozen=True)
class TrainingData:
    """A checked (cache, manifest, shards) triple, ready to stream."""

    view: CorpusView
    table: sampling.SamplingTable  # every clip of the manifest (training + held out)
    manifest: str  # "random" or the manifest path
    cache_attrs: dict[str, Any]
    embed_dim: int


def resolve_manifest(work: str | Path, manifest: str) -> Path | None:
    """``random`` -> None (uniform), a bare name -> WORK/manifests/<name>.parquet, else a path."""
    if manifest == "random":
        return None
    path = Path(manifest)
    if path.suffix != ".parquet" and "/" not in manifest:
        path = Workspace(work).manifests_dir / f"{manifest}.parquet"
    return path


def open_training_data(
    work: str | Path,
    cache: str,
    manifest: str,
    target: str,
    clip_seconds: float,
    teacher: str | None = None,
    allow_foreign_manifest: bool = False,
) -> TrainingData:
    """Open and cross-check the cache, the sampling manifest and the packed shards of ``work``.

    A manifest clustered on another cache of the same pack (other teacher, TS or hop) is refused
    unless ``allow_foreign_manifest``; a done cache block whose file is missing is refused here,
    before any step (a deleted zarr shard file reads back as NaN)."""
    store = open_cache(work, cache)  # refuses a cache made from another clips manifest
    attrs = store.attrs
    if teacher is not None and attrs.get("teacher") != teacher:
        raise DataMismatchError(
            f"cache {store.name} holds teacher {attrs.get('teacher')!r} embeddings; this "
            f"configuration distils teacher {teacher!r}"
        )
    if not store.is_complete():
        raise DataMismatchError(
            f"cache {store.name} is not complete: {store.missing_rows()} of {store.n_rows} "
            "rows missing; finish `ssondo extract` first"
        )
    missing = store.missing_files()
    if missing:
        raise CacheBlockError(
            f"cache {store.path}: {len(missing)} file(s) of blocks marked done are missing, first "
            f"{missing[0]}: its targets would read back as NaN; re-extract those blocks (or delete "
            f"{store.path} and run `ssondo extract` again); `ssondo cache info` lists them"
        )
    clips = read_clips(work)
    keys = np.asarray(clips.column("key").to_pylist(), dtype=object)
    path = resolve_manifest(work, manifest)
    if path is None:
        table = sampling.make_table(
            keys,
            clips.column("row").to_numpy(),
            clips.column("shard").to_numpy(),
            kind="random",
            meta={"kind": "random"},
        )
    else:
        table = _manifest_table(
            path, keys, clips.column("shard").to_numpy(), attrs, store.name, allow_foreign_manifest
        )
    sample_rate = int(attrs["sample_rate"])
    if target == "window":
        if attrs.get("ts") == "full":
            raise DataMismatchError(f"cache {store.name} has one full-clip window per clip: use target=clip")
        crop, hop = int(attrs["window_samples"]), int(attrs["hop_samples"])
        if attrs.get("teacher_sample_rate") != sample_rate:  # windows were cut at the teacher's rate
            crop, hop = round(float(attrs["ts"]) * sample_rate), round(float(attrs["hop"]) * sample_rate)
    else:
        crop, hop = round(clip_seconds * sample_rate), 0
    ws = Workspace(work)
    view = CorpusView(
        shard_paths=tuple(str(ws.shard_path(s)) for s in range(store.n_shards)),
        cache_path=str(store.path),
        shard_offsets=tuple(int(store.shard_rows(s)[0]) for s in range(store.n_shards)) + (store.n_rows,),
        sample_rate=sample_rate,
        target=target,
        crop_samples=crop,
        window_hop=hop,
    )
    missing = [p for p in view.shard_paths if not Path(p).is_file()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} tar shard(s) missing, first {missing[0]}")
    return TrainingData(view, table, "random" if path is None else str(path), attrs, store.embed_dim)


def _manifest_table(
    path: Path, keys: np.ndarray, shard_of_row: np.ndarray, attrs: dict, cache_name: str, allow_foreign: bool
) -> sampling.SamplingTable:
    table, meta = read_sampling_manifest(path)
    have_fp = attrs.get("clips_fingerprint")
    if meta.get("clips_fingerprint") is not None and meta["clips_fingerprint"] != have_fp:
        raise DataMismatchError(
            f"manifest {path} was built for clips_fingerprint {meta['clips_fingerprint']!r}, but cache "
            f"{cache_name} has clips_fingerprint {have_fp!r}: they do not belong together"
        )
    if not allow_foreign:
        _refuse_foreign(path, meta, attrs, cache_name)
    rows = table.column("row").to_numpy()
    if "window" in table.column_names or len(np.unique(rows)) != len(rows):
        raise DataMismatchError(
            f"manifest {path} has one row per window; training samples clips: cluster with --level clip"
        )
    if len(rows) and (rows.min() < 0 or rows.max() >= len(keys)):
        raise DataMismatchError(
            f"manifest {path} points at rows up to {rows.max()}; the shards hold {len(keys)}"
        )
    mkeys = np.asarray(table.column("key").to_pylist(), dtype=object)
    bad = np.flatnonzero(keys[rows] != mkeys)
    if len(bad):
        raise DataMismatchError(
            f"manifest {path}: {len(bad)} key(s) are not in the shards at their rows, first "
            f"{mkeys[bad[0]]!r} at row {rows[bad[0]]} (shards have {keys[rows[bad[0]]]!r})"
        )
    shards = table.column("shard").to_numpy()
    moved = np.flatnonzero(shard_of_row[rows] != shards)
    if len(moved):
        raise DataMismatchError(
            f"manifest {path}: row {rows[moved[0]]} is in tar shard {shard_of_row[rows[moved[0]]]}, "
            f"the manifest says {shards[moved[0]]} ({len(moved)} such rows)"
        )
    if (
        pc.any(pc.is_null(table.column("cluster"))).as_py()
        or pc.any(pc.is_null(table.column("weight"))).as_py()
    ):
        raise DataMismatchError(f"manifest {path} has clips without a cluster or a weight")
    weights = table.column("weight").to_numpy()
    clusters = table.column("cluster").to_numpy()
    return sampling.make_table(
        mkeys, rows, shards, weights, clusters, kind=str(meta.get("kind", "balanced")), meta=meta
    )


def _refuse_foreign(path: Path, meta: dict, attrs: dict, cache_name: str) -> None:
    """A manifest clustered on another cache (teacher, TS, hop) of the same pack: both sides named."""
    have = {
        "cache": cache_name,
        "teacher_id": attrs.get("teacher_id"),
        "ts": attrs.get("ts"),
        "hop": attrs.get("hop"),
    }
    differ = [k for k, v in have.items() if meta.get(k) is not None and meta[k] != v]
    if differ:
        theirs = ", ".join(f"{k} {meta[k]!r}" for k in differ)
        ours = ", ".join(f"{k} {have[k]!r}" for k in differ)
        raise DataMismatchError(
            f"manifest {path} was built from another cache ({theirs}) than the one trained on ({ours}): "
            f"cluster this cache (`ssondo cluster WORK --cache {cache_name} -k K`), or pass "
            "--allow-foreign-manifest if you mean to sample with it"
        )


def _refuse_nonfinite(
    view: CorpusView, targets: np.ndarray, n_windows: np.ndarray | None, rows: np.ndarray
) -> None:
    """Targets (n, D) or (n, W, D) of ``rows`` must be finite (window targets: their valid windows)."""
    if n_windows is None:
        bad = ~np.isfinite(targets).all(-1)  # (n,)
    else:
        valid = np.arange(targets.shape[1])[None, :] < n_windows[:, None]  # (n, W)
        bad = (valid & ~np.isfinite(targets).all(-1)).any(-1)
    if bad.any():
        row = int(rows[np.flatnonzero(bad)[0]])
        raise CacheBlockError(
            f"cache {view.cache_path}: {int(bad.sum())} NaN/Inf target(s), first at row {row}; training on "
            f"them would diverge: run `ssondo cache info WORK --verify` and re-extract the blocks it names"
        )


def read_segment(
    view: CorpusView, store: CacheStore | None, table: sampling.SamplingTable, segment: sampling.Segment
) -> tuple[list[tuple[memoryview, str]], np.ndarray, np.ndarray | None]:
    """Audio bytes of the segment's clips (tar order) and their targets, from one block read
    (``store`` None: audio only, the targets are (n, 0)).

    Returns (audio [(bytes, ext)] per item, targets (n, D) or (n, W, D) float32, n_windows (n,) or None)."""
    start, stop = view.shard_rows(segment.shard)
    rows = table.rows[segment.positions]
    if rows[0] < start or rows[-1] >= stop:
        raise DataMismatchError(
            f"manifest rows {rows[0]}..{rows[-1]} are not in tar shard {segment.shard} "
            f"(rows {start}..{stop - 1} in the cache)"
        )
    lo, hi = int(rows[0]), int(rows[-1]) + 1
    if store is None:
        targets, n_windows = np.zeros((hi - lo, 0), np.float32), None
    elif view.target == "window":
        targets, n_windows = store.read_windows(lo, hi)
    else:
        targets, n_windows = store.read_clip(lo, hi), None
    want = {int(r) - start: i for i, r in enumerate(rows)}  # index in tar -> item
    audio: list[tuple[memoryview, str] | None] = [None] * len(rows)
    url = view.shard_paths[segment.shard]
    for index, key, members in tar_clips(url, stop=hi - start):
        item = want.get(index)
        if item is None:
            continue
        if key != table.keys[segment.positions[item]]:
            raise DataMismatchError(
                f"{url}: clip {index} is {key!r}, the manifest says row {start + index} is "
                f"{table.keys[segment.positions[item]]!r}: shards and manifest do not belong together"
            )
        ext, data, _ = audio_member(url, key, members)  # checks the pack's checksum
        audio[item] = (data, ext)
    if any(a is None for a in audio):
        raise DataMismatchError(f"{url} ends before row {hi - 1}: the shard is shorter than the cache says")
    targets, n_windows = targets[rows - lo], None if n_windows is None else n_windows[rows - lo]
    _refuse_nonfinite(view, targets, n_windows, rows)
    return audio, targets, n_windows  # type: ignore[return-value]


def fit_length(x: np.ndarray, length: int, offset: int) -> np.ndarray:
    """x[offset:offset+length], zero-padded at the end when too short."""
    out = x[offset : offset + length]
    return out if len(out) == length else np.pad(out, (0, length - len(out)))


def target_statistics(data: TrainingData, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std (each (D,), float64) of the targets the clips at ``positions`` of the sampling
    table are trained on, read one block per tar shard: their clip embeddings (target=clip), or
    their valid window embeddings (target=window: each clip weighs one, shared equally by its
    windows, as the stream draws one window uniformly per sample; the clip embeddings, means of
    windows, spread less). A constant dimension gets std 1 (nothing to scale)."""
    store = CacheStore(data.view.cache_path)
    rows = np.sort(data.table.rows[positions])
    total = np.zeros(data.embed_dim)
    squares = np.zeros(data.embed_dim)
    for shard in np.unique(data.table.shards[positions]):
        start, stop = data.view.shard_rows(int(shard))
        mine = rows[(rows >= start) & (rows < stop)]
        lo, hi = int(mine[0]), int(mine[-1]) + 1
        if data.view.target == "window":
            emb, n_windows = store.read_windows(lo, hi)  # (n, W_max, D), (n,)
            emb, n_windows = emb[mine - lo].astype(np.float64), n_windows[mine - lo]
            _refuse_nonfinite(data.view, emb, n_windows, mine)
            valid = np.arange(emb.shape[1])[None, :] < n_windows[:, None]  # (n, W_max)
            x = np.where(valid[..., None], emb, 0.0)  # NaN past each clip's windows -> 0
            per_clip = np.maximum(n_windows, 1)[:, None].astype(np.float64)  # (n, 1)
            total += (x.sum(1) / per_clip).sum(0)
            squares += (np.square(x).sum(1) / per_clip).sum(0)
        else:
            block = store.read_clip(lo, hi).astype(np.float64)[mine - lo]  # (n, D)
            _refuse_nonfinite(data.view, block, None, mine)
            total += block.sum(0)
            squares += np.square(block).sum(0)
    n = len(rows)
    mean = total / n
    std = np.sqrt(np.maximum(squares / n - np.square(mean), 0.0))
    return mean, np.where(std > 1e-6, std, 1.0)


def load_validation(data: TrainingData, positions: np.ndarray) -> dict[str, torch.Tensor]:
    """The held-out clips, read once: fixed crops from the start of each clip (window 0 for
    target=window). ``{"audio": (n, L) int16, "target": (n, D), "row": (n,)}``."""
    if len(positions) == 0:
        return {}
    view, table = data.view, data.table
    store = CacheStore(view.cache_path)
    audio, target = [], []
    for shard in np.unique(table.shards[positions]):
        pos = positions[table.shards[positions] == shard]
        seg = sampling.Segment(int(shard), pos, np.ones(len(pos), dtype=np.int64))
        items, targets, n_windows = read_segment(view, store, table, seg)
        for i, (raw, ext) in enumerate(items):
            audio.append(fit_length(pcm16(raw, ext)[0], view.crop_samples, 0))
            target.append(targets[i] if n_windows is None else targets[i, 0])
    return {
        "audio": torch.from_numpy(np.stack(audio)),
        "target": torch.from_numpy(np.stack(target)),
        "row": torch.from_numpy(table.rows[positions]),
    }
