"""Clustering in bounded memory: tiled assignment, the streamed training sample, and cluster_cache reading a
cache one tar shard at a time without ever holding the (N, D) float32 array."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from ssondo_cache.cache_index import open_cache
from ssondo_cache.cluster import cluster_cache, read_sampling_manifest
from ssondo_cache.cluster_stream import scan_points
from ssondo_cache.kmeans import TiledAssigner, assign, kmeans
from ssondo_cache.kmeans_sample import default_sample, pick_smallest, sample_indices
from ssondo_cache.manifests import clips_fingerprint, clips_table, write_table
from ssondo_cache.store import CacheStore, cache_path, create_or_open
from ssondo_cache.workspace import Workspace


def _splits(n: int, rng: np.random.Generator) -> list[int]:
    """Uneven block boundaries over n points (blocks of 1 point, shorter and longer than a tile)."""
    cuts = {0, n, 1, 2, 9}
    cuts |= set(rng.integers(0, n, 12).tolist())
    return sorted(c for c in cuts if c <= n)


def _feed(tiles: TiledAssigner, X: np.ndarray, cuts: list[int]) -> tuple[np.ndarray, np.ndarray]:
    for a, b in zip(cuts[:-1], cuts[1:], strict=True):
        tiles.add(X[a:b])
    return tiles.result()


@pytest.mark.parametrize("tile", [None, 64])
def test_chunked_assignment_equals_one_chunk_to_the_bit(tile: int | None):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((9000, 40)).astype(np.float32)  # more than two default tiles
    C = rng.standard_normal((13, 40)).astype(np.float32)
    opts = {} if tile is None else {"tile": tile}
    one_l, one_d = _feed(TiledAssigner(C, **opts), X, [0, len(X)])
    for _ in range(3):
        lab, d2 = _feed(TiledAssigner(C, **opts), X, _splits(len(X), rng))
        assert np.array_equal(lab, one_l) and np.array_equal(d2, one_d)  # exact, not close
    if tile is None:
        assert all(np.array_equal(a, b) for a, b in zip(assign(X, C), (one_l, one_d), strict=True))
    # and it is the nearest centroid
    ref = ((X[:, None, :].astype(np.float64) - C[None]) ** 2).sum(-1)  # (N, k)
    assert (ref[np.arange(len(X)), one_l] <= ref.min(1) * (1 + 1e-5) + 1e-6).all()


def test_streamed_sample_picks_sample_indices_points_from_blocks():
    rng = np.random.default_rng(1)
    X = rng.standard_normal((5000, 6)).astype(np.float32)
    for size in (1, 300, 4999, 5000, 9000):
        want = sample_indices(len(X), size, np.random.default_rng(7))
        want = np.arange(len(X)) if want is None else want
        cuts = _splits(len(X), rng)
        s = pick_smallest(np.diff(cuts).tolist(), size, np.random.default_rng(7), X.shape[1])
        assert s.X.shape == (len(want), 6)  # allocated once, at its final size, before any point is fed
        for a, b in zip(cuts[:-1], cuts[1:], strict=True):
            s.add(X[a:b])
        pos, pts = s.result()
        assert np.array_equal(pos, want) and np.array_equal(pts, X[want])
        assert pts is s.X  # the whole sample is handed over as held, not copied
        if size < len(X):  # a smaller sample of the same seed is a subset: one pass serves a k sweep
            small = sample_indices(len(X), size // 2 or 1, np.random.default_rng(7))
            assert np.array_equal(s.result(size // 2 or 1)[0], small)


def test_default_sample_grows_with_k_and_caps_bytes():
    assert default_sample(50, 768) > default_sample(10, 768)
    assert default_sample(200, 3840) * 3840 * 4 <= 1 << 30  # 1 GiB cap at MATPAC/M2D width
    assert default_sample(50, 3840) >= 256 * 50


# ---------------------------------------------------------------- a cache of many clips, no audio


def make_cache(tmp: Path, n: int, dim: int, shard: int = 1000, windows: int = 2, k: int = 8) -> Path:
    """A WORK folder with a clips manifest of n clips (no tar shards: clustering never reads audio) and a
    complete cache of k Gaussian blobs."""
    work = tmp / "work"
    rows = [
        {"key": f"c{i:06d}", "row": i, "shard": i // shard, "index_in_shard": i % shard, "offset_s": 0.0,
         "duration_s": 1.0, "num_samples": 16000, "sample_rate": 16000, "labels": [f"b{i % k}"],
         "split": None, "source": f"/nowhere/c{i}.wav", "sha256": f"{i:064x}", "silent": False,
         "crc32c": None}
        for i in range(n)
    ]  # fmt: skip
    table = clips_table(rows, {"shard_size": shard})
    write_table(Workspace(work).clips_manifest, table)
    offsets = list(range(0, n, shard)) + [n]
    attrs = {
        "teacher": "synthetic", "teacher_id": "synthetic-0123456789ab", "ts": 1.0, "hop": 1.0,
        "sample_rate": 16000, "teacher_sample_rate": 16000, "frontend": {}, "dtype": "float16",
        "clips_fingerprint": clips_fingerprint(table), "code_version": "test", "n_rows": n,
        "max_windows": windows, "embed_dim": dim, "shard_offsets": offsets,
    }  # fmt: skip
    store = create_or_open(cache_path(work, attrs["teacher_id"], "ts1-hop1"), attrs)
    rng = np.random.default_rng(0)
    centers = rng.standard_normal((k, dim)) * 2
    for block in range(store.n_blocks):
        a, b = store.block_rows(block)
        nw = rng.integers(1, windows + 1, size=b - a).astype(np.int32)
        emb = centers[np.arange(a, b) % k, None, :] + rng.standard_normal((b - a, windows, dim))  # (n, W, D)
        emb[np.arange(windows)[None, :] >= nw[:, None]] = np.nan
        store.write_block(block, emb.astype(np.float16), np.nanmean(emb, 1).astype(np.float16), nw)
    store.mark_finished()
    return work


DIM = 384


@pytest.fixture(scope="module")
def caches(tmp_path_factory) -> dict[int, Path]:
    return {n: make_cache(tmp_path_factory.mktemp(f"n{n}"), n=n, dim=DIM) for n in (4000, 12_000)}


def _traced_peak(work: Path) -> int:
    """Peak Python-heap bytes (numpy registers its arrays with tracemalloc) of one cluster_cache run."""
    tracemalloc.start()
    cluster_cache(work, "ts1-hop1", 8, sample=1000, metric_sample=300, seed=1, device="cpu", force=True,
                  progress=False)  # fmt: skip
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak


def test_cluster_cache_never_allocates_n_by_d(caches: dict[int, Path], tmp_path: Path, monkeypatch):
    import shutil

    works = {n: Path(shutil.copytree(w, tmp_path / f"w{n}")) for n, w in caches.items()}
    reads: list[int] = []
    real = CacheStore.read_clip

    def counting(self, start, stop):
        reads.append(stop - start)
        return real(self, start, stop)

    monkeypatch.setattr(CacheStore, "read_clip", counting)
    cluster_cache(works[4000], "ts1-hop1", 8, device="cpu", progress=False)  # imports, caches warmed up
    reads.clear()
    peaks = {n: _traced_peak(w) for n, w in works.items()}
    assert max(reads) <= 1000 and len(reads) == 2 * (4 + 12)  # one block per tar shard, two passes each
    # 8000 more clips would add 12 MB of N x D float32; what grows is only per-clip bookkeeping (keys,
    # labels), and the blocks, tiles and samples held are the same size at both N
    grew, full = peaks[12_000] - peaks[4000], 8000 * DIM * 4
    assert grew < full / 4, (
        f"peak grew {grew / 1e6:.1f} MB for 8000 clips; their float32 is {full / 1e6:.1f} MB"
    )
    assert peaks[12_000] < 12_000 * DIM * 4  # and never the whole array


def test_scan_holds_each_sample_once_plus_a_few_blocks(caches: dict[int, Path]):
    """Pass 1 keeps the training and metric samples in arrays of their final size, chosen before reading:
    no candidate rows past the sample (the old stream held up to 1.5x the sample and copied it to prune),
    so at N >> sample its traced peak is the samples plus a few block reads' worth (zarr's float16, its
    float32 copy, the picked rows): here 11.4 MB against 19.5 MB before, for a 14.2 MB bound."""
    store = open_cache(caches[12_000], "ts1-hop1")
    size, metric = 4000, 300
    scan_points(store, "clip", size, 1, metric, False)  # warm-up: zarr's and numpy's own first allocations
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    points = scan_points(store, "clip", size, 1, metric, False)
    peak = tracemalloc.get_traced_memory()[1] - base
    tracemalloc.stop()
    assert points.train.X.shape == (size, DIM) and points.metric_x.shape == (metric, DIM)
    samples = (size + metric) * DIM * 4
    block = 1000 * DIM * (2 + 4)
    bookkeeping = 12_000 * (8 + 4 + 16) * 2  # rows, windows and the keys of the pick, plus concatenations
    assert peak <= samples + 3 * block + bookkeeping, (
        f"scan peak {peak / 1e6:.1f} MB; samples {samples / 1e6:.1f} MB, a block {block / 1e6:.1f} MB"
    )


def test_streamed_cluster_cache_equals_kmeans_on_the_whole_array(caches: dict[int, Path], tmp_path: Path):
    import shutil

    work = Path(shutil.copytree(caches[12_000], tmp_path / "w"))
    store = open_cache(work, "ts1-hop1")
    X = store.read_clip(0, store.n_rows)  # the test may hold it; the library never does
    summary = cluster_cache(work, "ts1-hop1", [5, 8], sample=2000, seed=4, device="cpu", progress=False)
    for out in summary.outcomes:
        ref = kmeans(X, out.k, seed=4, sample=2000, device="cpu")
        table, meta = read_sampling_manifest(out.manifest)
        assert np.array_equal(table["row"].to_numpy(), np.arange(len(X)))
        assert np.array_equal(np.load(out.files["centroids"]), ref.centroids)
        assert np.array_equal(table["cluster"].to_numpy(), ref.labels)
        assert np.array_equal(table["distance"].to_numpy(), ref.distances)
        assert meta["train_points"] == 2000 and meta["inertia"] == ref.inertia

    emb, nw = store.read_windows(0, store.n_rows)
    r, w = np.nonzero(np.arange(emb.shape[1])[None, :] < nw[:, None])
    Xw = np.ascontiguousarray(emb[r, w])  # (P, D) every valid window, row-major
    out = cluster_cache(work, "ts1-hop1", 6, level="window", normalize=True, sample=3000, seed=2,
                        device="cpu", progress=False).outcomes[0]  # fmt: skip
    ref = kmeans(Xw, 6, seed=2, sample=3000, normalize=True, device="cpu")
    table, _ = read_sampling_manifest(out.manifest)
    assert np.array_equal(table["row"].to_numpy(), r) and np.array_equal(table["window"].to_numpy(), w)
    assert np.array_equal(table["cluster"].to_numpy(), ref.labels)
    assert np.array_equal(table["distance"].to_numpy(), ref.distances)
