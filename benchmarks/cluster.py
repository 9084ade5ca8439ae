"""ssondo's k-means (ssondo_cache/kmeans.py, defaults) vs scikit-learn MiniBatchKMeans with the reference's
parameters, on the same data in one run; inertia recomputed for both on ALL points with the same exact search.

Reference (training_ssondo/cluster_teachers_embeddings/learn_kmeans.py + config.py, `use_fit=True` on the
whole set): MiniBatchKMeans(n_clusters=50, init="k-means++", max_iter=100, batch_size=10000, tol=0.0,
max_no_improvement=100, init_size=None, n_init=10, reassignment_ratio=0.0, compute_labels=True,
random_state=42). Target (issue 18): >= 10x faster at <= its inertia on 200k x 768 and 200k x 3840.

The data is a synthetic but clustered stand-in for teacher embeddings: a Gaussian mixture of 200
components with Zipf-like sizes (a few huge, many tiny, like AudioSet's classes) and per-component
spreads, living in a 64-d subspace projected to D dimensions, plus isotropic noise.

    .venv/bin/python benchmarks/cluster.py                  # 200k x 768 and 200k x 3840, CPU
    .venv/bin/python benchmarks/cluster.py --n 50000        # smaller
    .venv/bin/python benchmarks/cluster.py --seeds 42,1,2   # ssondo at three seeds, MiniBatchKMeans at 42
    .venv/bin/python benchmarks/cluster.py --sample-sweep   # the default training sample, measured
    .venv/bin/python benchmarks/cluster.py --gpu            # also 2M x 3840 with FAISS on the GPU
    nice -n 15 .venv/bin/python benchmarks/cluster.py --threads 1   # a shared machine: compare CPU seconds

On a machine shared with other work, wall times measure the neighbours; with --threads 1 the CPU
seconds of this process (the CPU speed-up column) are the figure.
"""

from __future__ import annotations

import argparse
import os
import resource
import time

import faiss
import numpy as np

from ssondo_cache.kmeans import (
    INIT_MAX_ITER,
    INIT_MIN,
    INIT_PER_CENTROID,
    N_INIT,
    SEED_BUDGET,
    SWAP_MOVES,
    assign,
    kmeans,
)
from ssondo_cache.kmeans_sample import SAMPLE_PER_CENTROID


def synthetic_embeddings(
    n: int, d: int, seed: int = 0, components: int = 200, latent: int = 64, block: int = 50_000
) -> np.ndarray:
    """(n, d) float32 points of an uneven Gaussian mixture in a `latent`-d subspace plus noise."""
    rng = np.random.default_rng(seed)
    sizes = 1.0 / np.arange(1, components + 1) ** 1.1  # Zipf-like cluster sizes
    comp = rng.choice(components, size=n, p=sizes / sizes.sum())  # (n,)
    means = rng.standard_normal((components, latent)).astype(np.float32) * 1.5  # (C, latent)
    spread = rng.uniform(0.4, 1.2, components).astype(np.float32)  # (C,)
    proj = rng.standard_normal((latent, d)).astype(np.float32) / np.sqrt(latent)  # (latent, d)
    X = np.empty((n, d), np.float32)
    for a in range(0, n, block):  # blocks keep the temporaries small
        c = comp[a : a + block]
        z = means[c] + rng.standard_normal((len(c), latent), dtype=np.float32) * spread[c, None]
        X[a : a + block] = z @ proj
        X[a : a + block] += rng.standard_normal((len(c), d), dtype=np.float32) * 0.3
    return X


def inertia(X: np.ndarray, centroids: np.ndarray, device: str = "cpu") -> float:
    _, d2 = assign(X, centroids, device)
    return float(d2.sum(dtype=np.float64))


REFERENCE = {"init": "k-means++", "max_iter": 100, "batch_size": 10000, "tol": 0.0, "max_no_improvement": 100,
             "init_size": None, "n_init": 10, "reassignment_ratio": 0.0, "compute_labels": True}  # fmt: skip


def run_sklearn(X: np.ndarray, k: int, seed: int, threads: int) -> tuple[float, float, np.ndarray]:
    """-> (wall seconds, CPU seconds of this process, centroids)."""
    from sklearn.cluster import MiniBatchKMeans
    from threadpoolctl import threadpool_limits

    t0, c0 = time.perf_counter(), time.process_time()
    with threadpool_limits(threads):
        mbk = MiniBatchKMeans(n_clusters=k, random_state=seed, **REFERENCE).fit(X)
    return time.perf_counter() - t0, time.process_time() - c0, mbk.cluster_centers_.astype(np.float32)


def sample_sweep(X: np.ndarray, k: int, seed: int, per_centroid: list[int]) -> None:
    """Inertia on ALL points of Lloyd trained on p points per centroid vs on all points, from the SAME
    seeds (so the figure is the sampling's, not a different local optimum's)."""
    from ssondo_cache import kmeans as km

    rng = np.random.default_rng(seed)
    n, d = X.shape
    index = km._flat_index(d, "cpu")
    for rep in range(2):
        Xi = X[np.sort(rng.choice(n, min(n, 20_000), replace=False))]
        c0 = np.ascontiguousarray(Xi[km.kmeans_plusplus(Xi, k, rng)[0]])  # (k, D) shared seeds
        c_all, _ = km._lloyd(X, c0.copy(), index, False, seed, 100, 1e-4, False, "")
        i_all = inertia(X, c_all)
        line = [f"seeds {rep}: all {n} points inertia {i_all:.6g};"]
        for p in per_centroid:
            idx = np.sort(rng.choice(n, min(n, p * k), replace=False))
            c, _ = km._lloyd(X[idx], c0.copy(), index, False, seed, 100, 1e-4, False, "")
            line.append(f"{p}/centroid {inertia(X, c) / i_all - 1:+.3%}")
        print(" ".join(line), flush=True)


def run_ssondo(X: np.ndarray, k: int, seed: int, device: str) -> tuple[float, float, np.ndarray, int]:
    """-> (wall seconds, CPU seconds of this process, centroids, Lloyd iterations)."""
    t0, c0 = time.perf_counter(), time.process_time()
    res = kmeans(X, k, seed=seed, device=device, progress=False)
    return time.perf_counter() - t0, time.process_time() - c0, res.centroids, res.n_iter


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=200_000, help="points per CPU case (default 200000)")
    ap.add_argument("--dims", default="768,3840", help="comma-separated dimensions (default 768,3840)")
    ap.add_argument("--k", type=int, default=50, help="clusters (default 50)")
    ap.add_argument("--seed", type=int, default=42, help="random_state of both (default 42, the reference's)")
    ap.add_argument("--seeds", default=None, help="ssondo's seeds, comma-separated (default: --seed); "
                    "MiniBatchKMeans runs once, at --seed")  # fmt: skip
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="BLAS/OpenMP threads of both")
    ap.add_argument("--sample-sweep", action="store_true", help="measure the training sample's cost instead")
    ap.add_argument("--gpu", action="store_true", help="also time FAISS on the GPU on --gpu-n x 3840")
    ap.add_argument("--gpu-n", type=int, default=2_000_000, help="points of the GPU case (default 2000000)")
    args = ap.parse_args()

    faiss.omp_set_num_threads(args.threads)
    print(f"threads {args.threads} (faiss/OpenMP {faiss.omp_get_max_threads()}), cpus {os.cpu_count()}, "
          f"load {os.getloadavg()[0]:.1f}; k={args.k}, seed={args.seed}")  # fmt: skip
    print(f"sklearn = MiniBatchKMeans({', '.join(f'{a}={v!r}' for a, v in REFERENCE.items())})")
    print(f"ssondo = ssondo_cache.kmeans.kmeans defaults: {SAMPLE_PER_CENTROID} training points per centroid, "
          f"up to {N_INIT} seedings (<= {INIT_MAX_ITER} Lloyd iterations each, in 2k principal directions) on "
          f"max({INIT_MIN}, {INIT_PER_CENTROID} k) points, then up to {SWAP_MOVES} swap moves, within "
          f"{SEED_BUDGET} training-set iterations, every point assigned")  # fmt: skip
    header = f"{'n x d':>14} {'sklearn s':>10} {'ssondo s':>9} {'speed-up':>9} {'CPU s':>13} {'CPU speed-up':>13} {'sklearn inertia':>16} {'ssondo inertia':>15} {'inertia ratio':>14} {'iters':>6} {'seed':>5}"
    if not args.sample_sweep:
        print(header)
    for d in (int(x) for x in args.dims.split(",")):
        X = synthetic_embeddings(args.n, d, seed=0)
        if args.sample_sweep:
            print(f"{args.n} x {d}:", flush=True)
            sample_sweep(X, args.k, args.seed, [128, 256, 512, 1024])
            continue
        t_sk, u_sk, c_sk = run_sklearn(X, args.k, args.seed, args.threads)
        i_sk = inertia(X, c_sk)
        for seed in [int(s) for s in (args.seeds or str(args.seed)).split(",")]:
            t_ss, u_ss, c_ss, iters = run_ssondo(X, args.k, seed, "cpu")
            i_ss, cpu = inertia(X, c_ss), f"{u_sk:.1f}/{u_ss:.2f}"
            print(
                f"{f'{args.n} x {d}':>14} {t_sk:10.1f} {t_ss:9.2f} {t_sk / t_ss:8.2f}x {cpu:>13} "
                f"{u_sk / u_ss:12.2f}x {i_sk:16.6g} {i_ss:15.6g} {i_ss / i_sk:14.4f} {iters:6d} {seed:5d}",
                flush=True,
            )
        del X
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GB")
    if args.gpu:
        if faiss.get_num_gpus() == 0:
            raise SystemExit("--gpu: FAISS sees no GPU")
        X = synthetic_embeddings(args.gpu_n, 3840, seed=args.seed)
        t_g, _, c_g, iters = run_ssondo(X, args.k, args.seed, "cuda")
        print(
            f"GPU {args.gpu_n} x 3840: ssondo {t_g:.1f} s, {iters} iterations, inertia {inertia(X, c_g, 'cuda'):.6g}"
        )


if __name__ == "__main__":
    main()
