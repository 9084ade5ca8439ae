"""k-means on arrays (ssondo_cache/kmeans.py): what it finds, determinism, spherical mode, k-means++, the
seeding's bounded cost, refusals, devices. Cache-level clustering and manifests: test_cluster.py."""

from __future__ import annotations

import faiss
import numpy as np
import pytest
from sklearn import metrics as skm

import ssondo_cache.kmeans as km
from ssondo_cache.devices import DeviceError
from ssondo_cache.kmeans import ClusterInputError, kmeans, kmeans_plusplus, l2_normalize_


def blobs(sizes: list[int], d: int = 16, spread: float = 0.3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Well separated Gaussian blobs of uneven sizes -> (X (n, d) float32, truth (n,) int)."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((len(sizes), d)) * 4
    X = np.concatenate(
        [c + spread * rng.standard_normal((s, d)) for c, s in zip(centers, sizes, strict=True)]
    )
    return X.astype(np.float32), np.repeat(np.arange(len(sizes)), sizes)


def test_kmeans_finds_uneven_blobs_and_uses_every_point():
    X, truth = blobs([900, 300, 120, 40, 12], seed=1)  # 1372 points > 256 per centroid x 5
    res = kmeans(X, 5, seed=0, device="cpu", tol=0)
    assert skm.adjusted_rand_score(truth, res.labels) == 1.0
    assert res.train_points == len(X) and res.labels.shape == (len(X),)
    # Lloyd's fixed point on ALL points: each centroid is the mean of every point assigned to it
    # (FAISS's default 256 points per centroid would leave centroids = means of a subsample)
    for j in range(5):
        assert np.allclose(res.centroids[j], X[res.labels == j].mean(0), atol=1e-5)
    assert res.inertia == pytest.approx(
        ((X - res.centroids[res.labels]) ** 2).sum(dtype=np.float64), rel=1e-5
    )
    assert np.allclose(res.distances, np.linalg.norm(X - res.centroids[res.labels], axis=1), atol=1e-4)


def test_kmeans_same_seed_same_result_and_sample_option():
    X, _ = blobs([500, 200, 80], d=8, spread=1.5, seed=2)
    a, b = kmeans(X, 6, seed=3, device="cpu"), kmeans(X, 6, seed=3, device="cpu")
    assert np.array_equal(a.labels, b.labels) and np.array_equal(a.centroids, b.centroids)
    s = kmeans(X, 6, seed=3, device="cpu", sample=100)
    assert s.train_points == 100 and s.labels.shape == (len(X),)  # trained on 100, every point assigned


def test_kmeans_normalize_is_spherical_and_leaves_input_alone():
    X, truth = blobs([200, 100, 50], d=8, seed=3)
    X0 = X.copy()
    res = kmeans(X, 3, seed=0, device="cpu", normalize=True)
    assert np.array_equal(X, X0)
    assert np.allclose(np.linalg.norm(res.centroids, axis=1), 1.0, atol=1e-5)
    assert skm.adjusted_rand_score(truth, res.labels) == 1.0
    Xn = l2_normalize_(X.copy())
    assert np.array_equal(l2_normalize_(Xn.copy()), Xn)  # idempotent to the bit (k sweeps normalise once)


def test_kmeans_plusplus_seeds_every_blob_once():
    X, truth = blobs([1000, 100, 10, 5], seed=4)
    for seed in range(5):
        idx, potential = kmeans_plusplus(X, 4, np.random.default_rng(seed))
        assert sorted(truth[idx]) == [0, 1, 2, 3]  # a random init would mostly miss the 5-point blob
        assert potential == pytest.approx(((X[:, None] - X[idx][None]) ** 2).sum(-1).min(1).sum(), rel=1e-4)


def test_kmeans_refusals():
    X, _ = blobs([10, 10], d=4)
    with pytest.raises(ClusterInputError, match="k=21"):
        kmeans(X, 21, device="cpu")
    bad = X.copy()
    bad[[1, 5, 7], 2] = np.nan
    with pytest.raises(ClusterInputError, match="^3 of 20 embedding rows contain NaN"):
        kmeans(bad, 2, device="cpu")
    with pytest.raises(ClusterInputError, match="float32"):
        kmeans(X.astype(np.float64), 2, device="cpu")


@pytest.mark.skipif(faiss.get_num_gpus() > 0, reason="checks the no-GPU refusal")
def test_cuda_without_gpu_is_an_error_and_auto_says_cpu():
    X, _ = blobs([30, 30], d=4)
    with pytest.raises(DeviceError, match=r"FAISS \(faiss.get_num_gpus\(\)\) sees no CUDA device"):
        kmeans(X, 2, device="cuda")
    res = kmeans(X, 2, device="auto")
    assert res.device == "cpu" and "no GPU" in res.device_reason


@pytest.mark.gpu
@pytest.mark.skipif(faiss.get_num_gpus() == 0, reason="needs a FAISS GPU")
def test_gpu_matches_cpu():
    X, _ = blobs([3000, 1000, 300], d=32, seed=5)
    cpu, gpu = kmeans(X, 3, device="cpu"), kmeans(X, 3, device="cuda")
    assert gpu.device == "cuda" and skm.adjusted_rand_score(cpu.labels, gpu.labels) == 1.0


def test_seeding_work_is_bounded_and_single_threaded(monkeypatch):
    """A 10k-point cluster used to spend 32 full-width seedings of up to 100 Lloyd iterations each on
    half of its points (115 s under load): the seeding (k-means++ and capped Lloyd per seeding, then the
    swap moves, each a capped Lloyd) now costs at most SEED_BUDGET Lloyd iterations on the training set,
    counted here from every k-means++ and Lloyd call (this case fits more than N_INIT_MIN seedings but
    not N_INIT, next to SWAP_MOVES moves), and runs on one FAISS thread."""
    calls: list[tuple[str, int, int, int, int]] = []  # (kind, rows, dims, iterations or trials, threads)
    real_pp, real_lloyd = km.kmeans_plusplus, km._lloyd

    def pp(X, k, rng):
        calls.append(("pp", *X.shape, 2 + int(np.log(k)), faiss.omp_get_max_threads()))
        return real_pp(X, k, rng)

    def lloyd(X, *a, **kw):
        threads = faiss.omp_get_max_threads()
        c, obj = real_lloyd(X, *a, **kw)
        calls.append(("lloyd", *X.shape, len(obj) + 1, threads))  # + 1: the scoring assignment
        return c, obj

    monkeypatch.setattr(km, "kmeans_plusplus", pp)
    monkeypatch.setattr(km, "_lloyd", lloyd)
    X, _ = blobs([4000, 3000, 2000, 600, 300, 100] * 2, d=128, spread=2.0, seed=7)  # 20k points
    nt, d, k = 16_000, X.shape[1], 10
    faiss.omp_set_num_threads(2)
    try:
        res = kmeans(
            X, k, seed=0, sample=nt, device="cpu", tol=0
        )  # tol 0: every capped run goes the distance
    finally:
        faiss.omp_set_num_threads(1)
    final = calls.pop()
    assert final[:3] == ("lloyd", nt, d) and final[4] == 2  # the full run keeps the caller's threads
    assert all(c[4] == km.SEED_THREADS == 1 for c in calls)
    work = sum(rows * dims * n for _, rows, dims, n, _ in calls)
    assert km.SEED_BUDGET <= 16 and work <= km.SEED_BUDGET * nt * d
    seedings = sum(c[0] == "pp" for c in calls)
    assert km.N_INIT_MIN < seedings < km.N_INIT  # fewer where they would not fit
    moves = sum(c[0] == "lloyd" for c in calls) - seedings  # Lloyd runs that follow no k-means++
    n_init, plan = km.seeding_plan(nt, d, res.init_points, km.seeding_dims(res.init_points, d, k), k)
    assert seedings == n_init and 0 < moves <= plan <= km.SWAP_MOVES  # the swap moves ran, within plan
    assert res.train_points == nt


def test_pca_basis_spans_a_low_rank_subspace_and_seeding_runs_there():
    rng = np.random.default_rng(8)
    A = rng.standard_normal((6, 96)).astype(np.float32)  # (6, D) the subspace
    X = (rng.standard_normal((3000, 6)) @ A + 0.01 * rng.standard_normal((3000, 96))).astype(np.float32)
    mu, V = km.pca_basis(X, 6, np.random.default_rng(0))
    assert np.allclose(V.T @ V, np.eye(6), atol=1e-4) and mu.shape == (96,)
    resid = A - (A @ V) @ V.T
    assert np.linalg.norm(resid) < 1e-2 * np.linalg.norm(A)
    Xb, truth = blobs([900, 300, 120, 40, 12], d=96, seed=9)  # 96 dims > 2 k + 10: seeded in 10 dims
    fit = km.train(Xb, 5, np.random.default_rng(0), init_sample=0, n_init=4)
    assert fit.init_dims == 2 * 5 and fit.n_init == 4
    labels = km.assign(Xb, fit.centroids)[0]
    assert skm.adjusted_rand_score(truth, labels) == 1.0


def test_seeding_subset_grows_where_the_budget_allows():
    """Wide points (MATPAC++/M2D's 3840) leave seeding budget to spare on the default subset: it grows (up to
    INIT_MAX_PER_CENTROID k) to where N_INIT seedings and SWAP_MOVES swap moves just fit SEED_BUDGET."""
    nt, k = 51_200, 50  # benchmarks/cluster.py's training sample
    base = max(km.INIT_MIN, km.INIT_PER_CENTROID * k)
    assert km.seeding_size(nt, 768, k) == base
    m = km.seeding_size(nt, 3840, k)
    assert base < m <= km.INIT_MAX_PER_CENTROID * k
    assert km.seeding_plan(nt, 3840, m, km.seeding_dims(m, 3840, k), k) == (km.N_INIT, km.SWAP_MOVES)
    assert km.seeding_plan(nt, 3840, m + 100, km.seeding_dims(m, 3840, k), k)[0] < km.N_INIT  # just fits
    assert km.seeding_size(10**9, 3840, k) == km.INIT_MAX_PER_CENTROID * k
