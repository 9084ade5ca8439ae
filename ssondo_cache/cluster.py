"""Balanced data sampling (S-SONDO): k-means (ssondo_cache/kmeans.py) on cached teacher embeddings ->
sampling manifests.

Every clip is weighted by 1 / size of its k-means cluster, normalised to sum 1, so a student sees the
teacher's whole embedding space, not only the corpus' dominant sounds. `write_random_manifest` writes
the uniform baseline with the same schema.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from ssondo_cache.atomic import write_text
from ssondo_cache.cluster_report import (
    metric_sample_indices,
    primary_labels,
    sweep_table,
    write_report,
)
from ssondo_cache.kmeans import ClusterInputError, faiss_device, kmeans, nonfinite_rows
from ssondo_cache.manifests import META_KEY, read_clips, write_table
from ssondo_cache.provenance import code_version, now_iso
from ssondo_cache.workspace import Workspace

log = logging.getLogger(__name__)

MANIFEST_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("row", pa.int64()),
        ("shard", pa.int32()),
        ("cluster", pa.int32()),
        ("distance", pa.float32()),
        ("weight", pa.float64()),
    ]
)


def balanced_weights(labels: np.ndarray, k: int) -> np.ndarray:
    """weight_i = 1 / |cluster(i)|, normalised to sum 1: every non-empty cluster gets equal total mass."""
    sizes = np.bincount(labels, minlength=k).astype(np.float64)
    w = 1.0 / sizes[labels]
    return w / w.sum()


# ---------------------------------------------------------------- manifests


def sampling_table(
    keys: Any,
    rows: Any,
    shards: Any,
    cluster: Any,
    distance: Any,
    weight: Any,
    meta: dict,
    extra: dict | None = None,
) -> pa.Table:
    """A sampling manifest table (schema of docs/interfaces.md) with `meta` as JSON schema metadata."""
    cols = {
        "key": pa.array(keys, pa.string()),
        "row": pa.array(rows, pa.int64()),
        "shard": pa.array(shards, pa.int32()),
        "cluster": pa.array(cluster, pa.int32()),
        "distance": pa.array(distance, pa.float32()),
        "weight": pa.array(weight, pa.float64()),
    }
    schema = MANIFEST_SCHEMA
    for name, arr in (extra or {}).items():  # e.g. `window` at window level
        cols[name] = pa.array(arr, pa.int32())
        schema = schema.append(pa.field(name, pa.int32()))
    table = pa.table(cols, schema=schema)
    return table.replace_schema_metadata({META_KEY: json.dumps(meta, sort_keys=True, default=str).encode()})


def read_sampling_manifest(path: str | Path) -> tuple[pa.Table, dict]:
    """Read a balanced/random sampling manifest -> (table, metadata dict)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no sampling manifest at {path}: run `ssondo cluster` first")
    table = pq.read_table(path)
    raw = (table.schema.metadata or {}).get(META_KEY)
    if raw is None:
        raise ValueError(f"{path} is not an ssondo sampling manifest (no b'ssondo' schema metadata)")
    missing = [f.name for f in MANIFEST_SCHEMA if f.name not in table.column_names]
    if missing:
        raise ValueError(f"{path} lacks columns {missing}")
    return table, json.loads(raw)


# ---------------------------------------------------------------- cache level


@dataclass
class ClusterOutcome:
    k: int
    manifest: Path
    files: dict[str, Path]  # centroids, metrics, sizes_png, projection_png
    metrics: dict
    skipped: bool  # True when an identical manifest was already there (re-run = no-op)
    device: str = ""
    device_reason: str = ""
    n_iter: int = 0
    seconds: float = 0.0


@dataclass
class ClusterSummary:
    outcomes: list[ClusterOutcome]
    random_manifest: Path | None = None
    sweep_table: Path | None = None

    def table(self) -> str:
        """A markdown table: one line per k."""
        return sweep_table([(o.k, o.metrics, o.manifest.name, o.skipped) for o in self.outcomes])

    def report(self) -> str:
        """What the command prints: device, the table, and every file written."""
        lines = []
        for o in self.outcomes:
            how = (
                "already there, same settings: nothing done"
                if o.skipped
                else f"{o.device} ({o.device_reason})"
            )
            lines.append(f"k={o.k}: {how}")
        lines += ["", self.table(), ""]
        for o in self.outcomes:
            lines.append(f"{o.manifest}")
            lines += [f"  {p}" for p in o.files.values()]
        if self.sweep_table:
            lines.append(f"sweep summary: {self.sweep_table}")
        if self.random_manifest:
            lines.append(f"random baseline: {self.random_manifest}")
        return "\n".join(lines)


def manifest_path(work: str | Path, k: int, level: str = "clip") -> Path:
    path = Workspace(work).balanced_manifest(k)
    return path if level == "clip" else path.with_name(f"{path.stem}-{level}.parquet")


def _cluster_one(
    X: np.ndarray,
    rows: np.ndarray,
    windows: np.ndarray,
    k: int,
    path: Path,
    base: dict,
    ids: dict,
    opts: dict,
    metric_sample: int,
    progress: bool,
) -> ClusterOutcome:
    """Cluster X for one k, then write centroids, metrics, PNGs and, last, the manifest."""
    res = kmeans(X, k, copy=False, progress=progress, **opts)
    meta = {**base, "k": k, "inertia": res.inertia, "n_iter": res.n_iter, "device": res.device,
            "train_points": res.train_points, "init_points": res.init_points, "n_points": len(X),
            "code_version": code_version(), "created": now_iso()}  # fmt: skip
    files = sidecar_paths(path)
    idx = metric_sample_indices(len(X), metric_sample, opts["seed"])
    classes = None if ids["classes"] is None else ids["classes"][rows]
    extra = {"n_iter": res.n_iter, "seconds": res.seconds, "device": res.device, "objective": res.objective,
             "manifest": path.name, **{key: meta[key] for key in base}}  # fmt: skip
    title = f"{meta['cache']}  k={k}  {base['level']}{'  normalized' if base['normalize'] else ''}"
    metrics = write_report(files, X, res.labels, res.centroids, res.inertia, idx, classes, extra, title)
    table = sampling_table(
        ids["key"][rows], rows, ids["shard"][rows], res.labels, res.distances,
        balanced_weights(res.labels, k), meta,
        extra={"window": windows} if base["level"] == "window" else None,
    )  # fmt: skip
    write_table(path, table)  # last: its presence means the whole set is there
    log.info("wrote %s (k=%d, %d iterations, %.1f s on %s)", path, k, res.n_iter, res.seconds, res.device)
    return ClusterOutcome(
        k, path, files, metrics, False, res.device, res.device_reason, res.n_iter, res.seconds
    )


def sidecar_paths(manifest: Path) -> dict[str, Path]:
    """Files written beside a balanced manifest (the manifest itself is written last)."""
    stem = manifest.with_suffix("")
    return {
        "centroids": Path(f"{stem}.centroids.npy"),
        "metrics": Path(f"{stem}.metrics.json"),
        "sizes_png": Path(f"{stem}.sizes.png"),
        "projection_png": Path(f"{stem}.pca.png"),
    }


def _cache_meta(store: Any) -> dict:
    a = store.attrs
    name = f"{a.get('teacher_id')}/{Path(store.path).name.removesuffix('.zarr')}"
    return {
        "cache": name,
        "teacher_id": a.get("teacher_id"),
        "ts": a.get("ts"),
        "hop": a.get("hop"),
        "clips_fingerprint": a.get("clips_fingerprint"),
    }


def _open_complete(work: str | Path, cache_name: str) -> Any:
    from ssondo_cache.store import open_cache

    store = open_cache(work, cache_name)
    if not store.is_complete():
        raise ClusterInputError(
            f"cache {cache_name} is not complete: {store.missing_rows()} of {store.n_rows} rows missing; "
            "finish `ssondo extract` first"
        )
    return store


def _clips(work: str | Path, n_rows: int) -> pa.Table:
    clips = read_clips(work)
    if clips.num_rows != n_rows or not np.array_equal(clips["row"].to_numpy(), np.arange(n_rows)):
        raise ClusterInputError(
            f"clips manifest ({clips.num_rows} rows) does not match the cache ({n_rows} rows)"
        )
    return clips


def _already_done(path: Path, params: dict, need: list[Path], force: bool) -> bool:
    """True when `path` (and the files `need`) exist, made with `params`: re-running is then a no-op.
    A manifest made with other settings is never replaced silently: that needs force."""
    if not path.exists():
        return False
    _, meta = read_sampling_manifest(path)
    diff = {key: (meta.get(key), v) for key, v in params.items() if meta.get(key) != v}
    if not diff and all(p.exists() for p in need):
        return True
    if diff and not force:
        raise ClusterInputError(
            f"{path} exists and was made with other settings {diff} (old, new): pass force=True (--force) to replace it"
        )
    return False


def load_embeddings(
    store: Any, level: str, progress: bool = True
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All clip (or valid window) embeddings as float32, read one block per tar shard.

    -> X (P, D) float32, row (P,) int64 clip row of each point, window (P,) int32 (-1 at clip level).
    Raises ClusterInputError naming the count of rows holding NaN/Inf.
    """
    if level not in ("clip", "window"):
        raise ClusterInputError(f"unknown level {level!r}: use clip or window")
    n, d = store.n_rows, store.embed_dim
    X = np.empty((n, d), np.float32) if level == "clip" else None
    parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    bad = 0
    for s in tqdm(range(store.n_shards), desc="read embeddings", unit="shard", disable=not progress):
        a, b = store.shard_rows(s)
        if b <= a:
            continue
        if level == "clip":
            X[a:b] = store.read_clip(a, b)  # (b-a, D)
            bad += nonfinite_rows(X[a:b])
        else:
            emb, n_win = store.read_windows(a, b)  # (b-a, W_max, D), (b-a,)
            valid = np.arange(emb.shape[1])[None, :] < np.asarray(n_win)[:, None]  # (b-a, W_max)
            r, w = np.nonzero(valid)
            pts = emb[r, w]  # (p, D)
            bad += nonfinite_rows(pts)
            parts.append((np.ascontiguousarray(pts, np.float32), r.astype(np.int64) + a, w.astype(np.int32)))
    if bad:
        raise ClusterInputError(
            f"{bad} {level} embeddings contain NaN or Inf in cache {store.path}; nothing was written"
        )
    if level == "clip":
        return X, np.arange(n, dtype=np.int64), np.full(n, -1, np.int32)
    if not parts:
        return np.empty((0, d), np.float32), np.empty(0, np.int64), np.empty(0, np.int32)
    return tuple(np.concatenate(c) for c in zip(*parts, strict=True))  # type: ignore[return-value]


def cluster_cache(
    work: str | Path,
    cache_name: str,
    k: int | list[int],
    seed: int = 0,
    normalize: bool = False,
    level: str = "clip",
    sample: int | None = None,
    device: str = "auto",
    max_iter: int = 100,
    tol: float = 1e-4,
    init_sample: int | None = None,
    n_init: int = 4,
    metric_sample: int = 5000,
    random_baseline: bool = False,
    force: bool = False,
    progress: bool = True,
) -> ClusterSummary:
    """Cluster a complete cache for each k and write WORK/manifests/balanced-k{K}.parquet (+ sidecars).

    Every input is checked before anything is written; each file is written under a temporary name and
    renamed, the manifest last, so an interrupted run leaves no manifest and re-running resumes. A k
    whose manifest already exists with the same settings is skipped (no-op).
    """
    ks = [k] if isinstance(k, int) else list(k)
    store = _open_complete(work, cache_name)
    clips = _clips(work, store.n_rows)
    faiss_device(device)  # refuse a bad device before reading anything
    if level == "clip" and max(ks) > store.n_rows:
        raise ClusterInputError(
            f"k={max(ks)} is larger than the number of clips ({store.n_rows}) in {cache_name}"
        )
    base = {**_cache_meta(store), "kind": "balanced", "level": level, "seed": seed, "normalize": normalize,
            "sample": sample, "init_sample": init_sample, "n_init": n_init, "max_iter": max_iter,
            "tol": tol}  # fmt: skip

    todo = [
        kk
        for kk in ks
        if not _already_done(
            manifest_path(work, kk, level),
            {**base, "k": kk},
            list(sidecar_paths(manifest_path(work, kk, level)).values()),
            force,
        )
    ]
    if random_baseline:  # refuse a conflicting random manifest now, not after the balanced ones are written
        _already_done(Workspace(work).random_manifest, _random_params(store, seed), [], force)
    X = rows = windows = None
    if todo:
        X, rows, windows = load_embeddings(store, level, progress)
        if max(todo) > len(X):
            raise ClusterInputError(
                f"k={max(todo)} is larger than the number of {level} embeddings ({len(X)})"
            )
    ids = {
        "key": np.asarray(clips["key"].to_numpy(zero_copy_only=False), dtype=object),
        "shard": clips["shard"].to_numpy(),
        "classes": primary_labels(clips["labels"].to_pylist()) if "labels" in clips.column_names else None,
    }

    opts = {"seed": seed, "normalize": normalize, "sample": sample, "device": device, "max_iter": max_iter,
            "tol": tol, "init_sample": init_sample, "n_init": n_init}  # fmt: skip
    outcomes = []
    for kk in ks:
        path = manifest_path(work, kk, level)
        files = sidecar_paths(path)
        if kk not in todo:
            metrics = json.loads(files["metrics"].read_text())
            outcomes.append(ClusterOutcome(kk, path, files, metrics, skipped=True))
            log.info("%s already made with these settings: nothing to do", path)
            continue
        outcomes.append(_cluster_one(X, rows, windows, kk, path, base, ids, opts, metric_sample, progress))

    summary = ClusterSummary(outcomes)
    if len(ks) > 1:
        summary.sweep_table = path.with_name(f"balanced-sweep{'' if level == 'clip' else '-' + level}.md")
        write_text(summary.sweep_table, summary.table() + "\n")
    if random_baseline:
        summary.random_manifest = write_random_manifest(work, cache_name, seed=seed, force=force)
    return summary


def _random_params(store: Any, seed: int) -> dict:
    return {**_cache_meta(store), "kind": "random", "level": "clip", "seed": seed, "k": None}


def write_random_manifest(work: str | Path, cache_name: str, seed: int = 0, force: bool = False) -> Path:
    """The uniform baseline: every clip of a complete cache once, weight 1/N, cluster 0, distance NaN."""
    store = _open_complete(work, cache_name)
    clips = _clips(work, store.n_rows)
    path = Workspace(work).random_manifest
    params = _random_params(store, seed)
    if _already_done(path, params, [], force):
        return path
    n = clips.num_rows
    meta = {**params, "normalize": False, "n_points": n, "code_version": code_version(), "created": now_iso()}
    table = sampling_table(
        clips["key"],
        clips["row"],
        clips["shard"],
        np.zeros(n, np.int32),
        np.full(n, np.nan, np.float32),
        np.full(n, 1.0 / n),
        meta,
    )
    write_table(path, table)
    return path
