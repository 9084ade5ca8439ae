"""FAISS k-means on float32 points: greedy k-means++ seeding, Lloyd iterations on a training sample,
nearest-centroid assignment of every point in fixed tiles. Knows nothing about caches or manifests
(ssondo_cache/cluster.py streams a cache through `train` and `TiledAssigner`).

Choices that are deliberate, not accidents:
- Lloyd iterations run on a random training sample (default_sample: SAMPLE_PER_CENTROID points per
  centroid, at most SAMPLE_BYTES of float32), then every point is assigned. Measured (benchmarks/
  cluster.py --sample-sweep, 200k x 768, k=50, Lloyd from the same seeds, inertia on ALL points vs
  training on all): 512 per centroid +0.37 % / +0.74 %, 1024 per centroid -0.26 % / -0.54 % (two
  seedings; which local optimum a run lands in moves the figure by more than the sampling does).
  FAISS itself would subsample to 256 points per centroid: `max_points_per_centroid` is set to the
  training-set size so the sample is ours, not FAISS's.
- Seeding is greedy k-means++ (the variant scikit-learn uses: 2 + ln k candidates per step, keep the one
  that lowers the potential most), vectorised with one GEMM per step. FAISS 1.15's own k-means++ is a
  plain single-threaded D^2 sampler over every point. Seeding runs on a fixed random subset of
  max(INIT_MIN, INIT_PER_CENTROID k) training points because each step reads every seeding point once.
  `n_init` seedings (N_INIT) each get Lloyd iterations on that subset; the one with the lowest inertia
  there is refined on the training sample. Many cheap restarts are what reaches MiniBatchKMeans'
  inertia: on benchmarks/cluster.py's data, single full-data Lloyd runs ended 1.9-2.5 % above it, best
  of 4 on 20k points +0.8 to +1.1 %, best of 16 on 5k points -0.5 to +0.2 %, best of 32 -0.5 %.
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

log = logging.getLogger(__name__)

SAMPLE_PER_CENTROID = 1024  # training points per centroid by default (measured: see the module docstring)
SAMPLE_MIN_PER_CENTROID = 256  # the byte cap never cuts below this
SAMPLE_BYTES = 1 << 30  # the default training sample holds at most this much float32 (1 GiB)
INIT_MIN, INIT_PER_CENTROID = 5_000, 100  # seeding subset: max(INIT_MIN, INIT_PER_CENTROID k) points
N_INIT = 32  # seedings tried on the seeding subset (each: k-means++ + Lloyd there)
N_INIT_WHOLE = 4  # ... when the seeding subset is the whole training set (each try a full run: fewer)
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


def default_sample(k: int, d: int) -> int:
    """Training points when none are given: SAMPLE_PER_CENTROID per centroid, at most SAMPLE_BYTES of
    float32 (a floor of SAMPLE_MIN_PER_CENTROID per centroid wins over the byte cap)."""
    cap = SAMPLE_BYTES // (4 * d)
    return max(min(SAMPLE_PER_CENTROID * k, cap), SAMPLE_MIN_PER_CENTROID * k)


def sample_rng(seed: int, stream: int = 0) -> np.random.Generator:
    """The generator of sample keys (stream 0: training sample, 1: metric sample): a stream of `seed` of
    its own, independent of the generator seeding uses, and of data made with default_rng(seed) (whose
    first uniforms would otherwise pick a biased sample, e.g. numpy's choice(p=...) in benchmarks)."""
    return np.random.default_rng([0x55A3, stream, seed])


def sample_indices(n: int, size: int, rng: np.random.Generator) -> np.ndarray | None:
    """Sorted indices of the `size` points of smallest key among n, keys = rng.random(n) (one draw per
    point, always taken), or None when size >= n (all points). StreamSample picks the same points from a
    stream; with one seed a smaller sample is a subset of a larger one."""
    keys = rng.random(n)  # (n,)
    return None if size >= n else np.sort(np.argpartition(keys, size - 1)[:size])


class StreamSample:
    """sample_indices' points, picked from points fed in blocks (one rng.random draw per point, in the
    order fed) while holding at most 2.5 `size` of them (pruned back to `size` when 1.5 `size` pile up)."""

    def __init__(self, size: int, rng: np.random.Generator) -> None:
        self.size, self.rng = size, rng
        self.seen = 0  # points fed so far
        self.threshold = np.inf  # keys at or above it can no longer be among the `size` smallest
        self.parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []  # (keys, positions, points)
        self.held = 0

    def add(self, X: np.ndarray) -> None:
        """Feed the next points, X (m, D) float32."""
        keys = self.rng.random(len(X))  # (m,)
        keep = np.flatnonzero(keys < self.threshold)
        if len(keep):
            self.parts.append((keys[keep], keep + self.seen, X[keep].astype(np.float32, copy=True)))
            self.held += len(keep)
        self.seen += len(X)
        if self.held > self.size + max(self.size // 2, 1):
            self._prune(self.size)

    def _prune(self, size: int) -> None:
        keys = np.concatenate([p[0] for p in self.parts])
        if len(keys) > size:
            cut = np.partition(keys, size - 1)[size - 1]
            self.parts = [(k[k <= cut], i[k <= cut], x[k <= cut]) for k, i, x in self.parts]
            self.threshold = cut
        self.held = sum(len(p[0]) for p in self.parts)

    def result(self, size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The `size` (default and at most: self.size) smallest-key points in point order (parts are
        appended in stream order and pruning keeps it): (positions (s,) int64, points (s, D) float32)."""
        size = self.size if size is None else min(size, self.size)
        keys = np.concatenate([p[0] for p in self.parts]) if self.parts else np.empty(0)
        cut = np.inf if size >= len(keys) else np.partition(keys, size - 1)[size - 1]
        pos = np.concatenate([i[k <= cut] for k, i, _ in self.parts]) if self.parts else np.empty(0, np.int64)
        pts = [x[k <= cut] for k, _, x in self.parts]
        return pos, np.concatenate(pts) if len(pts) != 1 else pts[0]


@dataclass
class Trained:
    centroids: np.ndarray  # (k, D) float32
    objective: list[float]  # FAISS objective per Lloyd iteration on the training set
    init_points: int


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
    """Seed (best of n_init greedy k-means++ + Lloyd on a seeding subset) and run Lloyd on all of Xt (nt, D)
    float32 (already normalised when `normalize`)."""
    nt, d = Xt.shape
    m = max(INIT_MIN, INIT_PER_CENTROID * k) if init_sample is None else init_sample or nt
    m = nt if m >= nt else max(m, k)
    n_init = (N_INIT if m < nt else N_INIT_WHOLE) if n_init is None else n_init
    init_idx = sample_indices(nt, m, rng)
    Xi = Xt if init_idx is None else Xt[init_idx]
    index = _flat_index(d, device, inner_product=normalize)  # Lloyd's assignments (cosine when spherical)
    l2 = _flat_index(d, device)
    best = None  # (inertia on the seeding subset, centroids): n_init short runs there, keep the best
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
    return Trained(centroids, objective, m)


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
    init_sample: seed on this many random training points; None: max(INIT_MIN, INIT_PER_CENTROID k); 0: all.
    n_init: with n_init > 1, run n_init seedings + Lloyd on the seeding subset and refine the best one
        (lowest inertia there) on the whole training set; None: N_INIT, or N_INIT_WHOLE when the seeding
        subset is the whole training set (small inputs: each try is then a full run).
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
