"""Swap search (ssondo_cache/kmeans_search.py): it leaves a Lloyd fixed point that covers two blobs with one
centroid and one blob with two, never raises the inertia, and stops after `patience` rejections."""

from __future__ import annotations

import numpy as np

import ssondo_cache.kmeans as km
from ssondo_cache.kmeans_search import swap_search, two_nearest


def _stuck() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """4 blobs on a line (0, 20, 28, 50), 300 points each, and a Lloyd fixed point of 4 centroids that
    splits blob 0 in two and covers blobs 20 and 28 with one -> (Y (1200, 2), C (4, 2), truth (1200,))."""
    rng = np.random.default_rng(0)
    centres = np.array([[0.0, 0.0], [20.0, 0.0], [28.0, 0.0], [50.0, 0.0]])
    Y = np.concatenate([c + rng.standard_normal((300, 2)) for c in centres]).astype(np.float32)
    truth = np.repeat(np.arange(4), 300)
    C = np.array([[-0.8, 0.0], [0.8, 0.0], [24.0, 0.0], [50.0, 0.0]], np.float32)
    return Y, settle(Y)(C), truth


def settle(Y: np.ndarray):
    index = km._flat_index(Y.shape[1], "cpu")
    return lambda C: km._lloyd(Y, C, index, False, 0, 50, 0.0, False, "")[0]


def _inertia(Y: np.ndarray, C: np.ndarray) -> float:
    return float(two_nearest(Y, C)[0][:, 0].sum(dtype=np.float64))


def test_swap_search_leaves_a_stuck_lloyd_fixed_point():
    Y, C, truth = _stuck()
    labels0 = two_nearest(Y, C)[1][:, 0]
    assert len(np.unique(labels0[truth == 0])) == 2  # Lloyd alone stays stuck: blob 0 split ...
    assert labels0[truth == 1][0] == labels0[truth == 2][0]  # ... and blobs 1, 2 share a centroid
    out, tried, kept = swap_search(Y, C, settle(Y), moves=10, patience=3, rng=np.random.default_rng(0))
    labels = two_nearest(Y, out)[1][:, 0]
    assert all(len(np.unique(labels[truth == b])) == 1 for b in range(4))
    assert len(np.unique(labels)) == 4  # one centroid per blob
    assert kept >= 1 and kept + 3 <= tried < 10  # it stopped after `patience` rejections in a row
    assert _inertia(Y, out) < 0.5 * _inertia(Y, C)


def test_swap_search_never_raises_the_inertia_and_respects_its_caps():
    rng = np.random.default_rng(1)
    Y = rng.standard_normal((2000, 8)).astype(np.float32)  # no structure: few moves can help
    C = settle(Y)(np.ascontiguousarray(Y[:12]))
    out, tried, kept = swap_search(Y, C, settle(Y), moves=5, patience=2, rng=np.random.default_rng(0))
    assert tried <= 5 and _inertia(Y, out) <= _inertia(Y, C)
    if kept == 0:
        assert np.array_equal(out, C) and tried == 2
    same = swap_search(Y, C, settle(Y), moves=0, patience=2, rng=np.random.default_rng(0))
    assert same[1:] == (0, 0) and same[0] is C
