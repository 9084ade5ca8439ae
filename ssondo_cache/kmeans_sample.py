"""Which points k-means trains on: the default training-sample size, and a random sample picked the same
way from a whole array (sample_indices) or from points streamed in blocks (StreamSample), so clustering a
cache one tar shard at a time trains on exactly the points clustering the whole array would.
"""

from __future__ import annotations

import numpy as np

SAMPLE_PER_CENTROID = 1024  # training points per centroid by default (measured: see the module docstring)
SAMPLE_MIN_PER_CENTROID = 256  # the byte cap never cuts below this
SAMPLE_BYTES = 1 << 30  # the default training sample holds at most this much float32 (1 GiB)


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
