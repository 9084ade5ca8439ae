"""Clustering a cache in bounded memory: two passes over it, one tar shard at a time.

Before any embedding is read, the points are counted (clip level: the tar shards' rows; window level: the
cache's window counts, 4 bytes a clip) and the training and metric samples chosen from their keys alone
(kmeans_sample.pick_smallest: the points sample_indices would pick from the whole array). Pass 1
(scan_points) checks every point is finite and copies the chosen ones into the samples' own arrays, each
allocated once at its final size. k-means trains on the training sample (fit_sample). Pass 2 (assign_all)
labels every point, in tiles (kmeans.TiledAssigner), so the result is that of kmeans.kmeans on the whole
array, to the bit. Memory: the samples (s x D float32, s capped by kmeans_sample.default_sample), one block
and tile at a time, and a few N-length vectors (rows, windows, labels, distances). Nothing holds the (N, D)
float32 array of all points, unless `sample=0` asks to train on every point.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from ssondo_cache.kmeans import (
    ClusterInputError,
    TiledAssigner,
    faiss_device,
    l2_normalize_,
    nonfinite_rows,
    train,
)
from ssondo_cache.kmeans_sample import Picked, default_sample, pick_smallest, sample_rng


def iter_points(
    store: Any, level: str, progress: bool = True, desc: str = "read embeddings"
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Every clip (or valid window) embedding in point order, one block per tar shard:
    yields (points (p, D) float32, clip row (p,) int64, window (p,) int32; -1 at clip level)."""
    if level not in ("clip", "window"):
        raise ClusterInputError(f"unknown level {level!r}: use clip or window")
    for s in tqdm(range(store.n_shards), desc=desc, unit="shard", disable=not progress):
        a, b = store.shard_rows(s)
        if b <= a:
            continue
        if level == "clip":
            yield store.read_clip(a, b), np.arange(a, b, dtype=np.int64), np.full(b - a, -1, np.int32)
            continue
        emb, n_win = store.read_windows(a, b)  # (b-a, W_max, D), (b-a,)
        r, w = np.nonzero(np.arange(emb.shape[1])[None, :] < np.asarray(n_win)[:, None])  # row-major
        yield np.ascontiguousarray(emb[r, w], np.float32), r.astype(np.int64) + a, w.astype(np.int32)


def point_counts(store: Any, level: str) -> list[int]:
    """Points per tar shard, read before any embedding: rows (clip level) or valid windows (window level)."""
    spans = [store.shard_rows(s) for s in range(store.n_shards)]
    if level == "window":
        return [int(store.read_n_windows(a, b).sum()) if b > a else 0 for a, b in spans]
    return [b - a for a, b in spans]


@dataclass
class Points:
    """One pass over a cache: where every point is, and the only embeddings held in memory."""

    rows: np.ndarray  # (P,) int64 clip row of each point
    windows: np.ndarray  # (P,) int32 window of each point (-1 at clip level)
    train: Picked | None  # the largest training sample asked for (None once trained: freed)
    metric_idx: np.ndarray  # (m,) positions of the metric sample (pairwise metrics, PCA plot)
    metric_x: np.ndarray  # (m, D) float32 their embeddings


def scan_points(
    store: Any, level: str, train_size: int, seed: int, metric_sample: int, progress: bool
) -> Points:
    """Read the cache once, one tar shard at a time: check the points are finite and fill the training
    sample (`train_size` points, sample_indices' rule with seed) and the metric sample, both chosen first."""
    counts = point_counts(store, level)
    train_s = pick_smallest(counts, train_size, sample_rng(seed), store.embed_dim)
    metric_s = pick_smallest(counts, metric_sample, sample_rng(seed, 1), store.embed_dim)
    rows, windows, bad = [], [], 0
    for pts, r, w in iter_points(store, level, progress):
        bad += nonfinite_rows(pts)
        train_s.add(pts)
        metric_s.add(pts)
        rows.append(r)
        windows.append(w)
    if bad:
        raise ClusterInputError(
            f"{bad} {level} embeddings contain NaN or Inf in cache {store.path}; nothing was written"
        )
    rows_, windows_ = (np.concatenate(c) if c else np.empty(0, int) for c in (rows, windows))
    return Points(rows_, windows_.astype(np.int32), train_s, *metric_s.result())


@dataclass
class Fitted:
    centroids: np.ndarray  # (k, D) float32
    objective: list[float]
    train_points: int
    init_points: int
    device: str
    device_reason: str
    seconds: float  # training plus assignment
    labels: np.ndarray = field(default_factory=lambda: np.empty(0, np.int32))  # (P,) int32
    d2: np.ndarray = field(default_factory=lambda: np.empty(0, np.float32))  # (P,) float32 squared distances

    @property
    def inertia(self) -> float:
        return float(self.d2.sum(dtype=np.float64))


def fit_sample(points: Points, k: int, sample: int | None, seed: int, normalize: bool, device: str, opts: dict,
         progress: bool) -> Fitted:  # fmt: skip
    """Train k-means for one k on its share of the training sample: the points kmeans(X, k, seed=seed,
    sample=sample) trains on, with the same random generators (already normalised when `normalize`)."""
    t0 = time.perf_counter()
    n, d = len(points.rows), points.metric_x.shape[1]
    size = default_sample(k, d) if sample is None else sample or n
    _, Xt = points.train.result(max(size, k))  # (nt, D): the held sample itself when it is the largest
    rng = np.random.default_rng(seed)
    used, reason = faiss_device(device)
    fit = train(Xt, k, rng, seed, normalize, used, progress=progress, **opts)
    return Fitted(
        fit.centroids, fit.objective, len(Xt), fit.init_points, used, reason, time.perf_counter() - t0
    )


def assign_all(store: Any, level: str, fits: list[Fitted], normalize: bool, progress: bool) -> None:
    """Second pass: label every point for every fit (fit.labels, fit.d2), one tar shard at a time."""
    t0 = time.perf_counter()
    tiles = [TiledAssigner(f.centroids, f.device) for f in fits]
    for pts, _, _ in iter_points(store, level, progress, desc="assign"):
        if normalize:
            l2_normalize_(pts)
        for t in tiles:
            t.add(pts)
    share = (time.perf_counter() - t0) / max(len(fits), 1)
    for f, t in zip(fits, tiles, strict=True):
        f.labels, f.d2 = t.result()
        f.seconds += share
