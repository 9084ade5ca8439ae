"""ssondo's FAISS k-means vs scikit-learn MiniBatchKMeans with the reference code's parameters.

Reference (S-SONDO's balanced sampling): MiniBatchKMeans(k=50, init="k-means++", max_iter=100,
batch_size=10000, n_init=10, reassignment_ratio=0). Target: equal or lower inertia, at least 2x faster,
on 200k x 768 and 200k x 3840 float32 embeddings. Both fits run in this process on the same data;
inertia is recomputed for both on ALL points with the same exact search.

The data is a synthetic but clustered stand-in for teacher embeddings: a Gaussian mixture of 200
components with Zipf-like sizes (a few huge, many tiny, like AudioSet's classes) and per-component
spreads, living in a 64-d subspace projected to D dimensions, plus isotropic noise.

    .venv/bin/python benchmarks/cluster.py                  # 200k x 768 and 200k x 3840, CPU
    .venv/bin/python benchmarks/cluster.py --n 50000        # smaller
    .venv/bin/python benchmarks/cluster.py --gpu            # also 2M x 3840 with FAISS on the GPU
"""

from __future__ import annotations

import argparse
import os
import time

import faiss
import numpy as np

from ssondo_cache.kmeans import assign, kmeans


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


def run_sklearn(X: np.ndarray, k: int, seed: int) -> tuple[float, np.ndarray]:
    from sklearn.cluster import MiniBatchKMeans

    t0 = time.perf_counter()
    mbk = MiniBatchKMeans(
        n_clusters=k, init="k-means++", max_iter=100, batch_size=10000, n_init=10,
        reassignment_ratio=0, random_state=seed,
    ).fit(X)  # fmt: skip
    return time.perf_counter() - t0, mbk.cluster_centers_.astype(np.float32)


def run_ssondo(X: np.ndarray, k: int, seed: int, device: str) -> tuple[float, np.ndarray, int]:
    t0 = time.perf_counter()
    res = kmeans(X, k, seed=seed, device=device, progress=False)
    return time.perf_counter() - t0, res.centroids, res.n_iter


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=200_000, help="points per CPU case (default 200000)")
    ap.add_argument("--dims", default="768,3840", help="comma-separated dimensions (default 768,3840)")
    ap.add_argument("--k", type=int, default=50, help="clusters (default 50)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--gpu", action="store_true", help="also time FAISS on the GPU on --gpu-n x 3840")
    ap.add_argument("--gpu-n", type=int, default=2_000_000, help="points of the GPU case (default 2000000)")
    args = ap.parse_args()

    print(f"threads: faiss/OpenMP {faiss.omp_get_max_threads()}, cpus {os.cpu_count()}, "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '(unset)')}, load {os.getloadavg()[0]:.1f}")  # fmt: skip
    print(
        f"k={args.k}, seed={args.seed}; sklearn = MiniBatchKMeans(k-means++, max_iter=100, batch_size=10000,"
    )
    print("n_init=10, reassignment_ratio=0); ssondo = FAISS Lloyd on all points, greedy k-means++ seeding")
    header = f"{'n x d':>14} {'sklearn s':>10} {'ssondo s':>9} {'speed-up':>9} {'sklearn inertia':>16} {'ssondo inertia':>15} {'inertia ratio':>14} {'iters':>6}"
    print(header)
    for d in (int(x) for x in args.dims.split(",")):
        X = synthetic_embeddings(args.n, d, seed=args.seed)
        t_sk, c_sk = run_sklearn(X, args.k, args.seed)
        t_ss, c_ss, iters = run_ssondo(X, args.k, args.seed, "cpu")
        i_sk, i_ss = inertia(X, c_sk), inertia(X, c_ss)
        print(
            f"{f'{args.n} x {d}':>14} {t_sk:10.1f} {t_ss:9.1f} {t_sk / t_ss:8.2f}x {i_sk:16.6g} {i_ss:15.6g} "
            f"{i_ss / i_sk:14.4f} {iters:6d}",
            flush=True,
        )
        del X
    if args.gpu:
        if faiss.get_num_gpus() == 0:
            raise SystemExit("--gpu: FAISS sees no GPU")
        X = synthetic_embeddings(args.gpu_n, 3840, seed=args.seed)
        t_g, c_g, iters = run_ssondo(X, args.k, args.seed, "cuda")
        print(
            f"GPU {args.gpu_n} x 3840: ssondo {t_g:.1f} s, {iters} iterations, inertia {inertia(X, c_g, 'cuda'):.6g}"
        )


if __name__ == "__main__":
    main()
