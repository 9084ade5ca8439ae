"""FAISS k-means on a float32 point array: greedy k-means++ seeding, Lloyd iterations, nearest-centroid
assignment. Knows nothing about caches or manifests (ssondo_cache/cluster.py builds those on top).

Choices that are deliberate, not accidents:
- Lloyd iterations run on ALL points (or on `sample` of them when asked): FAISS subsamples to 256 points
  per centroid by default, so `max_points_per_centroid` is set to the training-set size.
- Seeding is greedy k-means++ (the variant scikit-learn uses: 2 + ln k candidates per step, keep the one
  that lowers the potential most), vectorised with one GEMM per step. FAISS 1.15's own k-means++ is a
  plain single-threaded D^2 sampler over every point. Seeding runs on a fixed random subset of
  `init_sample` points (default max(20000, 100 k)) because each step reads every seeding point once.
  `n_init` (default 4) seedings each get Lloyd iterations on that subset; the one with the lowest inertia
  there is refined on all points (cheap restarts: one k-means++ run alone often lands in a worse optimum
  than MiniBatchKMeans' best-of-10).
- Iterations stop when the objective improves by less than `tol` (relative), at most `max_iter`.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field

import faiss
import numpy as np
import torch
from tqdm.auto import tqdm

from ssondo_cache.devices import pick_device

log = logging.getLogger(__name__)


class ClusterInputError(ValueError):
    """The embeddings cannot be clustered as asked (k too large, NaN rows, incomplete cache)."""


@dataclass
class KMeansResult:
    centroids: np.ndarray  # (k, D) float32 (unit norm when normalize)
    labels: np.ndarray  # (N,) int32, nearest centroid of every point
    distances: np.ndarray  # (N,) float32, Euclidean distance to that centroid
    inertia: float  # sum of squared distances over ALL N points (float64 sum)
    n_iter: int  # Lloyd iterations run
    objective: list[float] = field(default_factory=list)  # FAISS objective per iteration (training set)
    device: str = "cpu"
    device_reason: str = ""
    train_points: int = 0
    init_points: int = 0
    seconds: float = 0.0


def faiss_device(device: str) -> tuple[str, str]:
    """``--device`` for FAISS, read by the one resolver (ssondo_cache.devices) against the GPUs FAISS
    sees (it links its own CUDA runtime): (device used, e.g. "cpu" or "cuda:1", why)."""
    gpus = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
    dev, why = pick_device(device, gpus, "FAISS (faiss.get_num_gpus())")
    return str(dev), why


def _flat_index(d: int, device: str, inner_product: bool = False) -> faiss.Index:
    """Exact (flat) index, L2 or inner product, on the CPU or on GPU ``device`` (cuda = cuda:0)."""
    dev = torch.device(device)
    if dev.type != "cuda":
        return faiss.IndexFlatIP(d) if inner_product else faiss.IndexFlatL2(d)
    res = faiss.StandardGpuResources()
    cfg = faiss.GpuIndexFlatConfig()
    cfg.device = dev.index or 0
    index = faiss.GpuIndexFlatIP(res, d, cfg) if inner_product else faiss.GpuIndexFlatL2(res, d, cfg)
    index.referenced_objects = [res]  # the GPU resources live as long as the index
    return index


def nonfinite_rows(X: np.ndarray, block: int = 65536) -> int:
    """How many rows of X hold a NaN or Inf (in blocks: no (N, D) temporary)."""
    return sum(int((~np.isfinite(X[a : a + block])).any(axis=1).sum()) for a in range(0, len(X), block))


def l2_normalize_(X: np.ndarray, block: int = 65536) -> np.ndarray:
    """Normalise rows of X in place; returns X. Zero rows stay zero, and rows already of unit norm are
    left bit-identical, so normalising twice (a k sweep on one array) changes nothing."""
    for a in range(0, len(X), block):
        xb = X[a : a + block]
        norms = np.sqrt(np.einsum("ij,ij->i", xb, xb, dtype=np.float64))
        scale = np.where(np.abs(norms - 1.0) < 1e-6, 1.0, 1.0 / np.maximum(norms, 1e-12))
        xb *= scale.astype(np.float32)[:, None]
    return X


def kmeans_plusplus(
    X: np.ndarray, k: int, rng: np.random.Generator, n_trials: int | None = None
) -> tuple[np.ndarray, float]:
    """Greedy k-means++ seeding. X (m, D) float32 -> (indices (k,) of the seed points, their potential:
    the sum of squared distances of X to the nearest seed)."""
    m = len(X)
    t = n_trials or 2 + int(math.log(k))
    sq = np.einsum("ij,ij->i", X, X)  # (m,)
    chosen = [int(rng.integers(m))]
    closest = np.maximum(sq - 2.0 * (X @ X[chosen[0]]) + sq[chosen[0]], 0.0)  # (m,) squared distance to seeds
    for _ in range(1, k):
        cum = np.cumsum(closest, dtype=np.float64)  # (m,)
        if cum[-1] <= 0:  # fewer distinct points than k: any unchosen point will do
            cand = rng.choice(np.setdiff1d(np.arange(m), chosen), size=1)
        else:
            cand = np.minimum(np.searchsorted(cum, rng.random(t) * cum[-1], side="right"), m - 1)  # (t,)
        d2 = np.maximum(sq[:, None] - 2.0 * (X @ X[cand].T) + sq[cand][None, :], 0.0)  # (m, t)
        np.minimum(d2, closest[:, None], out=d2)
        best = int(np.argmin(d2.sum(axis=0, dtype=np.float64)))
        chosen.append(int(cand[best]))
        closest = np.ascontiguousarray(d2[:, best])
    return np.asarray(chosen, dtype=np.int64), float(closest.sum(dtype=np.float64))


def _lloyd(
    X: np.ndarray,
    centroids: np.ndarray,
    index: faiss.Index,
    spherical: bool,
    seed: int,
    max_iter: int,
    tol: float,
    progress: bool,
    desc: str,
) -> tuple[np.ndarray, list[float]]:
    """FAISS Lloyd iterations on ALL rows of X from `centroids`, until the objective improves by less than
    tol (relative) or max_iter. -> (centroids (k, D), FAISS objective per iteration)."""
    k, d = centroids.shape
    cp = faiss.ClusteringParameters()
    cp.niter = 1  # one FAISS iteration per call: a progress bar and our own stopping rule
    cp.max_points_per_centroid = min(len(X), 2**31 - 1)  # never subsample (FAISS's default: 256 / centroid)
    cp.min_points_per_centroid = 1  # k <= n is checked by the caller; silences FAISS's small-set warning
    cp.spherical = spherical
    cp.seed = seed
    cp.check_input_data_for_NaNs = False  # checked by the caller, once
    objective: list[float] = []
    for _ in tqdm(range(max_iter), desc=desc, unit="iter", disable=not progress, leave=False):
        clus = faiss.Clustering(d, k, cp)
        faiss.copy_array_to_vector(centroids.ravel(), clus.centroids)
        clus.train(X, index)
        centroids = faiss.vector_float_to_array(clus.centroids).reshape(k, d)
        objective.append(float(clus.iteration_stats.at(0).obj))  # of the centroids before this update
        if len(objective) > 1 and abs(objective[-2] - objective[-1]) <= tol * abs(objective[-1]):
            break
    return centroids, objective


def assign(
    X: np.ndarray, centroids: np.ndarray, device: str = "cpu", index: faiss.Index | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Nearest centroid (L2) of every row: (labels (N,) int32, squared distances (N,) float32).
    `index`: an L2 flat index to reuse (emptied first), else a new one on `device`."""
    index = _flat_index(X.shape[1], device) if index is None else index
    index.reset()
    index.add(np.ascontiguousarray(centroids, dtype=np.float32))
    d2, idx = index.search(X, 1)
    return idx[:, 0].astype(np.int32), np.maximum(d2[:, 0], 0.0)


def kmeans(
    X: np.ndarray,
    k: int,
    seed: int = 0,
    normalize: bool = False,
    sample: int | None = None,
    device: str = "auto",
    max_iter: int = 100,
    tol: float = 1e-4,
    init_sample: int | None = None,
    n_init: int = 4,
    copy: bool = True,
    progress: bool = False,
) -> KMeansResult:
    """FAISS k-means of X (N, D) float32 into k clusters, k-means++ seeded; all N points labelled.

    normalize: L2-normalise rows and run spherical k-means (unit centroids, cosine assignment).
    sample: train on this many random points (None: all of them); every point is assigned at the end.
    init_sample: seed on this many random training points; None: max(20000, 100 k); 0: all of them.
    n_init: with n_init > 1, run n_init seedings + Lloyd on the seeding sample and refine the best one
        (lowest inertia there) on the whole training set.
    copy: False lets normalize work in place on X (saves memory on big caches).
    """
    t0 = time.perf_counter()
    X = np.asarray(X)
    if X.ndim != 2 or X.dtype != np.float32:
        raise ClusterInputError(f"kmeans wants a 2-D float32 array, got {X.dtype} {X.shape}")
    n, d = X.shape
    if not 1 <= k <= n:
        raise ClusterInputError(
            f"k={k} clusters asked for {n} points: k must be between 1 and the number of points"
        )
    bad = nonfinite_rows(X)
    if bad:
        raise ClusterInputError(f"{bad} of {n} embedding rows contain NaN or Inf")
    used, reason = faiss_device(device)
    log.info("k-means k=%d on %d x %d points, faiss device %s (%s)", k, n, d, used, reason)
    if normalize:
        X = l2_normalize_(X.copy() if copy else X)
    rng = np.random.default_rng(seed)

    # training set: all points unless `sample` says otherwise (sorted indices: sequential reads)
    train_idx = (
        None if sample is None or sample >= n else np.sort(rng.choice(n, size=max(sample, k), replace=False))
    )
    Xt = X if train_idx is None else X[train_idx]
    nt = len(Xt)
    m = max(20_000, 100 * k) if init_sample is None else init_sample or nt
    m = nt if m >= nt else max(m, k)
    init_idx = np.arange(nt) if m == nt else np.sort(rng.choice(nt, size=m, replace=False))
    Xi = Xt if m == nt else Xt[init_idx]
    index = _flat_index(d, used, inner_product=normalize)  # Lloyd's assignments (cosine when spherical)
    l2 = _flat_index(d, used)  # distances and labels reported: always Euclidean
    best = None  # (inertia on the seeding sample, centroids): n_init short runs there, keep the best
    for r in range(n_init):
        c = np.ascontiguousarray(Xi[kmeans_plusplus(Xi, k, rng)[0]], dtype=np.float32)  # (k, D)
        if normalize:
            l2_normalize_(c)
        if n_init > 1:
            c, _ = _lloyd(
                Xi, c, index, normalize, seed, max_iter, tol, progress, f"k-means k={k} init {r + 1}/{n_init}"
            )
            score = float(assign(Xi, c, index=l2)[1].sum(dtype=np.float64))
            best = (score, c) if best is None or score < best[0] else best
        else:
            best = (0.0, c)
    centroids, objective = _lloyd(
        Xt, best[1], index, normalize, seed, max_iter, tol, progress, f"k-means k={k}"
    )

    labels, d2 = assign(X, centroids, index=l2)
    return KMeansResult(
        centroids=centroids,
        labels=labels,
        distances=np.sqrt(d2).astype(np.float32),
        inertia=float(d2.sum(dtype=np.float64)),
        n_iter=len(objective),
        objective=objective,
        device=used,
        device_reason=reason,
        train_points=nt,
        init_points=m,
        seconds=time.perf_counter() - t0,
    )
