"""The seeding's search tools (ssondo_cache/kmeans.py seed_centroids uses them): greedy k-means++ seeds,
the principal subspace the seedings run in, and swap search, which leaves a poor local optimum of k-means
by moving the centroid that matters least into the cluster that costs most (Fritzke's k-means-u*),
keeping each move only when the inertia drops.

Lloyd stops in the nearest local optimum of its seeding, and on clustered data its usual defect is
structural: two centroids share one dense region while two regions share one centroid. A move removes the
centroid of smallest utility (the inertia its points would add by falling back to their second-nearest
centroid), splits the cluster of largest inertia along its principal direction with it, and lets Lloyd
settle; the move is kept when the inertia of the points searched drops, else the next smallest utility
is tried, and the search ends after `patience` rejected moves in a row or `moves` moves in all.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import faiss
import numpy as np

SPLIT = 0.8  # the two halves start this many standard deviations (along the split direction) apart / 2
POWER_STEPS = 4  # power iterations for a cluster's principal direction


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


def pca_basis(
    X: np.ndarray, p: int, rng: np.random.Generator, power: int = 2
) -> tuple[np.ndarray, np.ndarray]:
    """Top-p principal directions of X (m, D) by a randomised range finder (`power` power iterations):
    (mean (D,), basis V (D, p) with orthonormal columns). Cost: about 2 (power + 1) m D (p + 10) flops."""
    mu = X.mean(axis=0, dtype=np.float64).astype(np.float32)  # (D,)
    Xc = X - mu  # (m, D)
    q, _ = np.linalg.qr(Xc @ rng.standard_normal((X.shape[1], p + 10)).astype(np.float32))  # (m, p+10)
    for _ in range(power):
        q, _ = np.linalg.qr(Xc @ (Xc.T @ q))
    vt = np.linalg.svd(q.T @ Xc, full_matrices=False)[2]  # (p+10, D)
    return mu, np.ascontiguousarray(vt[:p].T)


def two_nearest(Y: np.ndarray, C: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Squared distances (m, 2) of every row of Y to its two nearest centroids of C (k >= 2), and their
    indices (m, 2)."""
    index = faiss.IndexFlatL2(C.shape[1])
    index.add(np.ascontiguousarray(C, dtype=np.float32))
    d2, idx = index.search(Y, 2)
    return np.maximum(d2, 0.0), idx


def split_move(Y: np.ndarray, C: np.ndarray, d2: np.ndarray, idx: np.ndarray, rank: int,
               rng: np.random.Generator) -> np.ndarray:  # fmt: skip
    """Centroids after moving the `rank`-th least useful centroid into the cluster of largest inertia:
    both then sit SPLIT standard deviations either side of that cluster's centroid, along its principal
    direction. Y (m, p), C (k, p), d2/idx from two_nearest(Y, C) -> (k, p)."""
    k = len(C)
    labels = idx[:, 0]
    utility = np.bincount(labels, d2[:, 1] - d2[:, 0], k)  # (k,) inertia added if the centroid went
    cost = np.bincount(labels, d2[:, 0], k)  # (k,) inertia of each cluster
    move = int(np.argsort(utility, kind="stable")[rank])
    cost[move] = -np.inf
    big = int(np.argmax(cost))
    P = Y[labels == big] - C[big]  # (n_big, p) the cluster, centred
    if cost[big] <= 0:  # every cluster is a single point (or empty): nothing to split
        return C
    v = rng.standard_normal(C.shape[1]).astype(np.float32)  # (p,)
    for _ in range(POWER_STEPS):
        v = P.T @ (P @ v)
        v /= max(float(np.linalg.norm(v)), 1e-30)
    step = SPLIT * float(np.sqrt(np.mean((P @ v) ** 2))) * v  # (p,)
    out = C.copy()
    out[big], out[move] = C[big] + step, C[big] - step
    return out


def swap_search(Y: np.ndarray, C: np.ndarray, settle: Callable[[np.ndarray], np.ndarray], moves: int,
                patience: int, rng: np.random.Generator) -> tuple[np.ndarray, int, int]:  # fmt: skip
    """Swap search from Lloyd-converged centroids C (k, p) of the points Y (m, p); `settle(C)` runs Lloyd
    on Y from C. -> (centroids (k, p), moves tried, moves kept)."""
    if len(C) < 2 or moves <= 0:
        return C, 0, 0
    d2, idx = two_nearest(Y, C)
    inertia = float(d2[:, 0].sum(dtype=np.float64))
    rejected = tried = kept = 0
    while tried < moves and rejected < min(patience, len(C)):
        tried += 1
        cand = settle(split_move(Y, C, d2, idx, rejected, rng))
        cd2, cidx = two_nearest(Y, cand)
        score = float(cd2[:, 0].sum(dtype=np.float64))
        if score < inertia * (1.0 - 1e-7):
            C, d2, idx, inertia, rejected, kept = cand, cd2, cidx, score, 0, kept + 1
        else:
            rejected += 1
    return C, tried, kept
