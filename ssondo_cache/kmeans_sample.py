"""Which points k-means trains on: the default training-sample size, and a random sample picked the same
way from a whole array (sample_indices) or from points streamed in blocks (pick_smallest + Picked), so
clustering a cache one tar shard at a time trains on exactly the points clustering the whole array would.
"""

from __future__ import annotations

from collections.abc import Iterable

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
    point, always taken), or None when size >= n (all points). pick_smallest picks the same points from a
    stream; with one seed a smaller sample is a subset of a larger one."""
    keys = rng.random(n)  # (n,)
    return None if size >= n else np.sort(np.argpartition(keys, size - 1)[:size])


class Picked:
    """The points sample_indices(n, size, rng) picks from a stream of n points fed in blocks of known sizes,
    and their rows gathered as the blocks go by into ONE (s, D) float32 array, allocated once: the sample is
    never held twice, nor any candidate beyond it (only their keys are, 16 bytes a point).

    pick_smallest chooses the positions before any embedding is read; `add` copies each block's picked rows."""

    def __init__(self, positions: np.ndarray, keys: np.ndarray, dim: int) -> None:
        self.positions, self.keys = positions, keys  # (s,) int64 sorted, (s,) float64 their keys
        self.X = np.empty((len(positions), dim), np.float32)  # (s, D)
        self.seen = self.filled = 0

    def add(self, X: np.ndarray) -> None:
        """Feed the next points, X (m, D) float32 (the blocks in stream order)."""
        stop = int(np.searchsorted(self.positions, self.seen + len(X)))
        self.X[self.filled : stop] = X[self.positions[self.filled : stop] - self.seen]
        self.filled, self.seen = stop, self.seen + len(X)

    def result(self, size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The `size` (default and at most: all) smallest-key points in point order: (positions (s,) int64,
        points (s, D) float32). The whole sample is returned as held (no copy); a smaller one is a copy."""
        if self.filled != len(self.positions):
            raise RuntimeError(f"sample incomplete: {self.filled} of {len(self.positions)} points fed")
        if size is None or size >= len(self.keys):
            return self.positions, self.X
        keep = self.keys <= np.partition(self.keys, size - 1)[size - 1]
        return self.positions[keep], self.X[keep]


def pick_smallest(counts: Iterable[int], size: int, rng: np.random.Generator, dim: int) -> Picked:
    """sample_indices' pick over sum(counts) points with one rng.random(c) draw per block of c points (the
    same stream as one draw of all keys), holding at most 3 `size` keys (pruned to `size` when 2 `size`
    pile up) -> an empty Picked of those points' rows."""
    keys: list[np.ndarray] = []
    pos: list[np.ndarray] = []
    threshold, seen, held = np.inf, 0, 0
    for c in counts:
        u = rng.random(c)  # (c,)
        keep = np.flatnonzero(u < threshold)
        keys.append(u[keep])
        pos.append(keep + seen)
        held, seen = held + len(keep), seen + c
        if held > 2 * size:
            keys, pos, threshold = _prune(keys, pos, size)
            held = len(keys[0])
    if held > size:
        keys, pos, _ = _prune(keys, pos, size)
    cat = (np.concatenate(keys), np.concatenate(pos)) if keys else (np.empty(0), np.empty(0, np.int64))
    return Picked(cat[1].astype(np.int64), cat[0], dim)


def _prune(keys: list[np.ndarray], pos: list[np.ndarray], size: int) -> tuple[list, list, float]:
    """Keep the `size` smallest keys (in stream order) -> ([keys], [positions], the cut)."""
    k, p = np.concatenate(keys), np.concatenate(pos)
    if size <= 0:
        return [k[:0]], [p[:0]], -np.inf
    best = np.sort(np.argpartition(k, size - 1)[:size])  # stream order kept
    return [k[best]], [p[best]], float(k[best].max())
