"""Balanced data sampling (S-SONDO): k-means (ssondo_cache/kmeans.py) on cached teacher embeddings ->
sampling manifests.

Every clip is weighted by 1 / size of its k-means cluster, normalised to sum 1, so a student sees the
teacher's whole embedding space, not only the corpus' dominant sounds. `write_random_manifest` writes
the uniform baseline with the same schema.
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ssondo_cache.atomic import write_text
from ssondo_cache.cluster_report import (
    primary_classes,
    sweep_table,
    write_report,
)
from ssondo_cache.cluster_stream import Fitted, Points, assign_all, fit_sample, scan_points
from ssondo_cache.kmeans import ClusterInputError, faiss_device, l2_normalize_
from ssondo_cache.kmeans_sample import default_sample
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


def _write_one(
    fit: Fitted, points: Points, k: int, path: Path, base: dict, ids: dict, progress: bool
) -> ClusterOutcome:
    """Write centroids, metrics and PNGs of one k, then, last, its manifest."""
    meta = {**base, "k": k, "inertia": fit.inertia, "n_iter": len(fit.objective), "device": fit.device,
            "train_points": fit.train_points, "init_points": fit.init_points, "n_points": len(points.rows),
            "code_version": code_version(), "created": now_iso()}  # fmt: skip
    files = sidecar_paths(path)
    classes = None if ids["classes"] is None else ids["classes"][points.rows]
    extra = {"n_iter": len(fit.objective), "seconds": fit.seconds, "device": fit.device,
             "objective": fit.objective, "manifest": path.name, **{key: meta[key] for key in base}}  # fmt: skip
    title = f"{meta['cache']}  k={k}  {base['level']}{'  normalized' if base['normalize'] else ''}"
    metrics = write_report(files, points.metric_x, fit.labels, fit.centroids, fit.inertia,
                           points.metric_idx, classes, extra, title)  # fmt: skip
    table = sampling_table(
        ids["key"][points.rows], points.rows, ids["shard"][points.rows], fit.labels,
        np.sqrt(fit.d2).astype(np.float32), balanced_weights(fit.labels, k), meta,
        extra={"window": points.windows} if base["level"] == "window" else None,
    )  # fmt: skip
    write_table(path, table)  # last: its presence means the whole set is there
    log.info(
        "wrote %s (k=%d, %d iterations, %.1f s on %s)", path, k, len(fit.objective), fit.seconds, fit.device
    )
    return ClusterOutcome(
        k, path, files, metrics, False, fit.device, fit.device_reason, len(fit.objective), fit.seconds
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
    from ssondo_cache.cache_index import open_cache

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
    n_init: int | None = None,
    metric_sample: int = 5000,
    random_baseline: bool = False,
    force: bool = False,
    progress: bool = True,
) -> ClusterSummary:
    """Cluster a complete cache for each k and write WORK/manifests/balanced-k{K}.parquet (+ sidecars).

    Memory stays bounded: the cache is read twice, one tar shard at a time. The first pass keeps only the
    training sample (`sample` points; None: kmeans.default_sample(k, D); 0: every point, N x D float32),
    chosen before reading and held once, and the metric sample; k-means trains on it; the second pass
    labels every point in tiles. The labels
    equal kmeans(X, k, seed, sample=...) on the whole array, to the bit.

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
    ids = {
        "key": np.asarray(clips["key"].to_numpy(zero_copy_only=False), dtype=object),
        "shard": clips["shard"].to_numpy(),
        "classes": primary_classes(clips["labels"]) if "labels" in clips.column_names else None,
    }
    fits: dict[int, Fitted] = {}
    points = None
    if todo:
        d = store.embed_dim
        sizes = [max(default_sample(kk, d) if sample is None else sample, kk) for kk in todo]
        train_size = sys.maxsize if sample == 0 else max(sizes)
        points = scan_points(store, level, train_size, seed, metric_sample, progress)
        if max(todo) > len(points.rows):
            raise ClusterInputError(
                f"k={max(todo)} is larger than the number of {level} embeddings ({len(points.rows)})"
            )
        if normalize:  # in place, once: each k trains on these rows (or a subset of them)
            l2_normalize_(points.metric_x)
            l2_normalize_(points.train.X)
        opts = {"max_iter": max_iter, "tol": tol, "init_sample": init_sample, "n_init": n_init}
        fits = {kk: fit_sample(points, kk, sample, seed, normalize, device, opts, progress) for kk in todo}
        points.train = None  # the training sample is no longer needed: free it before the second pass
        assign_all(store, level, list(fits.values()), normalize, progress)

    outcomes = []
    for kk in ks:
        path = manifest_path(work, kk, level)
        files = sidecar_paths(path)
        if kk not in todo:
            metrics = json.loads(files["metrics"].read_text())
            outcomes.append(ClusterOutcome(kk, path, files, metrics, skipped=True))
            log.info("%s already made with these settings: nothing to do", path)
            continue
        outcomes.append(_write_one(fits[kk], points, kk, path, base, ids, progress))

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
