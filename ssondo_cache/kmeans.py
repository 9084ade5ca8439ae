"""FAISS k-means on float32 points: greedy k-means++ seeding, Lloyd iterations on a training sample,
nearest-centroid assignment of every point in fixed tiles. Knows nothing about caches or manifests
(ssondo_cache/cluster.py streams a cache through `train` and `TiledAssigner`).

Choices that are deliberate, not accidents:
- Lloyd iterations run on a random training sample (kmeans_sample.default_sample: SAMPLE_PER_CENTROID points
  per centroid, at most SAMPLE_BYTES of float32), then every point is assigned. Measured (benchmarks/
  cluster.py --sample-sweep, 200k x 768, k=50, Lloyd from the same seeds, inertia on ALL points vs
  training on all): 512 per centroid +0.37 % / +0.74 %, 1024 per centroid -0.26 % / -0.54 % (two
  seedings; which local optimum a run lands in moves the figure by more than the sampling does).
  FAISS itself would subsample to 256 points per centroid: `max_points_per_centroid` is set to the
  training-set size so the sample is ours, not FAISS's.
- Seeding is greedy k-means++ (the variant scikit-learn uses: 2 + ln k candidates per step, keep the one
  that lowers the potential most), vectorised with one GEMM per step. FAISS 1.15's own k-means++ is a
  plain single-threaded D^2 sampler over every point. Seeding runs on a fixed random subset of
  max(INIT_MIN, INIT_PER_CENTROID k) training points (more where the budget allows: seeding_size),
  projected onto its top 2k principal directions
  (pca_basis; k-means' optimum lives near the span of k centroids, and projecting onto 2k directions is
  known to keep the objective within a small factor), so a restart costs 2k/D of a full-width one. Up to
  N_INIT seedings, each k-means++ + at most INIT_MAX_ITER Lloyd iterations there, as many as fit
  SEED_BUDGET Lloyd iterations on the training set (small training sets get fewer: a 10k-point cluster
  once spent 32 full-width restarts on half its points, 115 s under load). The best seeding then takes
  up to SWAP_MOVES swap moves there (kmeans_search.swap_search: the least useful centroid splits the
  costliest cluster, kept when the seeding-subset inertia drops; SWAP_PATIENCE rejections in a row end
  it), inside the same budget; the result is lifted to full-D cluster means and refined on the training
  sample. Restarts alone left a poorer optimum than MiniBatchKMeans' at some seeds (best of 32 on 5k
  points: -0.5 % to +0.3 % at d768, +1.7 % at d3840); swap moves are what reaches below it (measured:
  docs/results/scale.md).
- Iterations stop when the objective improves by less than `tol` (relative), at most `max_iter`.
- Assignment searches tiles of ASSIGN_TILE consecutive points whatever blocks they arrive in, so a
  cache streamed one tar shard at a time is labelled exactly as the whole array at once.
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
from ssondo_cache.kmeans_sample import default_sample, sample_indices, sample_rng
from ssondo_cache.kmeans_search import kmeans_plusplus, pca_basis, swap_search

log = logging.getLogger(__name__)

INIT_MIN, INIT_PER_CENTROID = 5_000, 100  # seeding subset: max(INIT_MIN, INIT_PER_CENTROID k) points ...
INIT_MAX_PER_CENTROID = 400  # ... grown up to this many per centroid where the full plan fits (seeding_size)
N_INIT = 32  # most seedings tried on the seeding subset (each: k-means++ + capped Lloyd there) ...
SEED_BUDGET = 12  # ... as many as cost at most this many Lloyd iterations on the training set ...
N_INIT_MIN = 4  # ... but never fewer (on tiny inputs the budget would allow one; they cost nothing)
INIT_MAX_ITER = 20  # Lloyd iterations per seeding, at most
INIT_DIMS_PER_CENTROID = 2  # seedings run in the top 2k principal directions of the seeding subset
SWAP_MOVES, SWAP_PATIENCE = 24, 6  # then swap moves from the best seeding (kmeans_search), in the budget
SEED_THREADS = 1  # FAISS threads while seeding (small problems)
ASSIGN_TILE = 4096  # points per assignment search (a (4096, 3840) float32 tile is 63 MB)


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


class TiledAssigner:
    """Nearest centroid (L2) of points fed in blocks of any size: (labels (N,) int32, squared distances
    (N,) float32) in the order fed.

    Points are searched in tiles of exactly `tile` consecutive points (the last one shorter), whatever the
    blocks they came in: every point meets the same BLAS call with the same neighbours, so feeding one
    block per tar shard gives the labels and distances of feeding all points at once, to the bit.
    """

    def __init__(
        self,
        centroids: np.ndarray,
        device: str = "cpu",
        index: faiss.Index | None = None,
        tile: int = ASSIGN_TILE,
    ) -> None:
        k, d = centroids.shape
        self.index = _flat_index(d, device) if index is None else index
        self.index.reset()
        self.index.add(np.ascontiguousarray(centroids, dtype=np.float32))
        self.tile = tile
        self.buf = np.empty((tile, d), np.float32)  # (tile, D) the points not yet searched
        self.fill = 0
        self.labels: list[np.ndarray] = []
        self.d2: list[np.ndarray] = []

    def _search(self, X: np.ndarray) -> None:
        d2, idx = self.index.search(X, 1)
        self.labels.append(idx[:, 0].astype(np.int32))
        self.d2.append(np.maximum(d2[:, 0], 0.0))

    def add(self, X: np.ndarray) -> None:
        """Feed the next points, X (m, D) float32."""
        a = 0
        if self.fill:  # complete the pending tile first
            a = min(len(X), self.tile - self.fill)
            self.buf[self.fill : self.fill + a] = X[:a]
            self.fill += a
            if self.fill < self.tile:
                return
            self._search(self.buf)
            self.fill = 0
        whole = a + (len(X) - a) // self.tile * self.tile
        for b in range(a, whole, self.tile):  # whole tiles straight from X (no copy)
            self._search(np.ascontiguousarray(X[b : b + self.tile]))
        rest = len(X) - whole
        self.buf[:rest] = X[whole:]
        self.fill = rest

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """Search the last, short tile -> (labels (N,) int32, squared distances (N,) float32)."""
        if self.fill:
            self._search(self.buf[: self.fill])
            self.fill = 0
        if not self.labels:
            return np.empty(0, np.int32), np.empty(0, np.float32)
        self.labels, self.d2 = [np.concatenate(self.labels)], [np.concatenate(self.d2)]
        return self.labels[0], self.d2[0]


def assign(
    X: np.ndarray, centroids: np.ndarray, device: str = "cpu", index: faiss.Index | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Nearest centroid (L2) of every row: (labels (N,) int32, squared distances (N,) float32), the same
    to the bit as streaming X through a TiledAssigner. `index`: an L2 flat index to reuse (emptied first)."""
    tiles = TiledAssigner(centroids, device, index)
    tiles.add(X)
    return tiles.result()


@dataclass
class Trained:
    centroids: np.ndarray  # (k, D) float32
    objective: list[float]  # FAISS objective per Lloyd iteration on the training set
    init_points: int
    n_init: int = 1  # seedings tried
    init_dims: int = 0  # dimensions they ran in


def seeding_dims(m: int, d: int, k: int) -> int:
    """Dimensions the seedings of m points in D run in: INIT_DIMS_PER_CENTROID k principal directions,
    or all D when that many (plus the range finder's 10 spare) would not be fewer than min(m, D)."""
    p = INIT_DIMS_PER_CENTROID * k
    return p if p + 10 <= min(m, d) else d


def seeding_plan(nt: int, d: int, m: int, p: int, k: int, n_init: int | None = None) -> tuple[int, int]:
    """(seedings, swap moves) that fit SEED_BUDGET Lloyd iterations on the training set (nt d k): a seeding
    costs about m p k (2 + ln k + INIT_MAX_ITER + 1) (k-means++, capped Lloyd and scoring on m points in
    p dims), a swap move m p k (INIT_MAX_ITER + 1). Swap moves come first (up to SWAP_MOVES, at most half
    the budget), seedings get the rest (between N_INIT_MIN and N_INIT, unless `n_init` is given)."""
    budget = SEED_BUDGET * nt * d // (m * p)  # Lloyd iterations on the seeding subset
    moves = min(SWAP_MOVES, budget // 2 // (INIT_MAX_ITER + 1))
    left = (budget - moves * (INIT_MAX_ITER + 1)) // (2 + int(math.log(k)) + INIT_MAX_ITER + 1)
    return (int(min(N_INIT, max(N_INIT_MIN, left))) if n_init is None else n_init), int(moves)


def seeding_size(nt: int, d: int, k: int) -> int:
    """Seeding-subset size by default: max(INIT_MIN, INIT_PER_CENTROID k) points, grown (up to
    INIT_MAX_PER_CENTROID k) while N_INIT seedings and SWAP_MOVES moves on it still fit SEED_BUDGET: wide
    points leave budget to spare, and a larger subset ranks the seedings closer to all points."""
    lo = max(INIT_MIN, INIT_PER_CENTROID * k)
    plan = N_INIT * (2 + int(math.log(k)) + INIT_MAX_ITER + 1) + SWAP_MOVES * (INIT_MAX_ITER + 1)
    fit = SEED_BUDGET * nt * d // (seeding_dims(lo, d, k) * plan)
    return int(max(lo, min(fit, INIT_MAX_PER_CENTROID * k)))


def seed_centroids(Xi: np.ndarray, k: int, n_init: int, moves: int, rng: np.random.Generator, seed: int,
                   tol: float, progress: bool) -> tuple[np.ndarray, int]:  # fmt: skip
    """Best of n_init seedings of the seeding subset Xi (m, D): greedy k-means++ then at most INIT_MAX_ITER
    Lloyd iterations, in the top p principal directions of Xi (seeding_dims: 2k, or all D when small);
    the lowest inertia there, improved by up to `moves` swap moves (kmeans_search.swap_search, each
    settled by the same capped Lloyd), becomes full-D means of its clusters. -> ((k, D) float32, p).
    One FAISS thread: these are small problems, where OpenMP barriers on busy cores cost more than they
    save (10k x 768 before: 7 s with one thread, 54 s with two on a loaded 2-core machine). On the CPU:
    the GPU is for the big runs."""
    m, d = Xi.shape
    p = seeding_dims(m, d, k)
    project = p < d
    step = max(1, m // max(INIT_MIN, INIT_PER_CENTROID * k))  # the basis needs no more rows than the default
    mu, V = pca_basis(Xi[::step], p, rng) if project else (None, None)
    Z = np.ascontiguousarray((Xi - mu) @ V) if project else Xi  # (m, p)
    if n_init == 1:
        return np.ascontiguousarray(Xi[kmeans_plusplus(Z, k, rng)[0]], dtype=np.float32), Z.shape[1]
    index, l2 = _flat_index(Z.shape[1], "cpu"), _flat_index(Z.shape[1], "cpu")
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(SEED_THREADS)
    try:
        best = None  # (inertia in the seeding space, centroids there)
        for r in range(n_init):
            c = np.ascontiguousarray(Z[kmeans_plusplus(Z, k, rng)[0]], dtype=np.float32)  # (k, p)
            c, _ = _lloyd(Z, c, index, False, seed, INIT_MAX_ITER, tol, progress, f"seeding {r + 1}/{n_init}")
            score = float(assign(Z, c, index=l2)[1].sum(dtype=np.float64))
            best = (score, c) if best is None or score < best[0] else best
        c = best[1]
        if moves:

            def settle(start: np.ndarray) -> np.ndarray:  # a move settles like a seeding: capped Lloyd
                return _lloyd(Z, start, index, False, seed, INIT_MAX_ITER, tol, False, "")[0]

            c = swap_search(Z, c, settle, moves, SWAP_PATIENCE, rng)[0]
        labels = assign(Z, c, index=l2)[0]  # (m,)
    finally:
        faiss.omp_set_num_threads(threads)
    onehot = np.zeros((k, m), np.float32)
    onehot[labels, np.arange(m)] = 1.0
    counts = onehot.sum(axis=1)  # (k,)
    full = onehot @ Xi / np.maximum(counts, 1.0)[:, None]  # (k, D) means of each cluster's points
    if (counts == 0).any():  # a centroid that lost every point keeps its seeding-space position
        back = c @ V.T + mu if project else c
        full[counts == 0] = back[counts == 0]
    return np.ascontiguousarray(full, dtype=np.float32), Z.shape[1]


def train(
    Xt: np.ndarray,
    k: int,
    rng: np.random.Generator,
    seed: int = 0,
    normalize: bool = False,
    device: str = "cpu",
    max_iter: int = 100,
    tol: float = 1e-4,
    init_sample: int | None = None,
    n_init: int | None = None,
    progress: bool = False,
) -> Trained:
    """Seed (`seed` on a seeding subset) and run Lloyd on all of Xt (nt, D) float32 (already normalised
    when `normalize`)."""
    nt, d = Xt.shape
    m = seeding_size(nt, d, k) if init_sample is None else init_sample or nt
    m = nt if m >= nt else max(m, k)
    n_init, moves = seeding_plan(nt, d, m, seeding_dims(m, d, k), k, n_init)
    init_idx = sample_indices(nt, m, rng)
    Xi = Xt if init_idx is None else Xt[init_idx]
    c, dims = seed_centroids(Xi, k, n_init, moves, rng, seed, tol, progress)
    if normalize:
        l2_normalize_(c)
    index = _flat_index(d, device, inner_product=normalize)  # Lloyd's assignments (cosine when spherical)
    centroids, objective = _lloyd(Xt, c, index, normalize, seed, max_iter, tol, progress, f"k-means k={k}")
    return Trained(centroids, objective, m, n_init, dims)


def check_points(X: np.ndarray, k: int) -> None:
    """Refuse what k-means cannot cluster: not (N, D) float32, k outside [1, N], NaN/Inf rows."""
    if X.ndim != 2 or X.dtype != np.float32:
        raise ClusterInputError(f"kmeans wants a 2-D float32 array, got {X.dtype} {X.shape}")
    if not 1 <= k <= len(X):
        raise ClusterInputError(
            f"k={k} clusters asked for {len(X)} points: k must be between 1 and the number of points"
        )
    bad = nonfinite_rows(X)
    if bad:
        raise ClusterInputError(f"{bad} of {len(X)} embedding rows contain NaN or Inf")


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
    n_init: int | None = None,
    copy: bool = True,
    progress: bool = False,
) -> KMeansResult:
    """FAISS k-means of X (N, D) float32 into k clusters, k-means++ seeded; all N points labelled.

    normalize: L2-normalise rows and run spherical k-means (unit centroids, cosine assignment).
    sample: train on this many random points (None: default_sample(k, D); 0: all); every point is assigned.
    init_sample: seed on this many random training points; None: seeding_size(...) (at least
        max(INIT_MIN, INIT_PER_CENTROID k)); 0: all.
    n_init: with n_init > 1, run n_init seedings + capped Lloyd on the seeding subset (in its top 2k
        principal directions), then swap moves from the best one, and refine it on the whole training
        set; None: as many as fit SEED_BUDGET next to the swap moves (seeding_plan), at most N_INIT.
    copy: False lets normalize work in place on X (saves memory on big caches).
    """
    t0 = time.perf_counter()
    X = np.asarray(X)
    check_points(X, k)
    n, d = X.shape
    used, reason = faiss_device(device)
    log.info("k-means k=%d on %d x %d points, faiss device %s (%s)", k, n, d, used, reason)
    if normalize:
        X = l2_normalize_(X.copy() if copy else X)
    size = default_sample(k, d) if sample is None else sample or n
    train_idx = sample_indices(n, max(size, k), sample_rng(seed))
    rng = np.random.default_rng(seed)
    Xt = X if train_idx is None else X[train_idx]
    fit = train(Xt, k, rng, seed, normalize, used, max_iter, tol, init_sample, n_init, progress)
    labels, d2 = assign(X, fit.centroids, used)
    return KMeansResult(
        centroids=fit.centroids,
        labels=labels,
        distances=np.sqrt(d2).astype(np.float32),
        inertia=float(d2.sum(dtype=np.float64)),
        n_iter=len(fit.objective),
        objective=fit.objective,
        device=used,
        device_reason=reason,
        train_points=len(Xt),
        init_points=fit.init_points,
        seconds=time.perf_counter() - t0,
    )
