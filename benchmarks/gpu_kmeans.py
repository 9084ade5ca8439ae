"""FAISS k-means on the GPU vs the CPU: `ssondo_cache.kmeans.kmeans` (what `ssondo cluster` runs) on
the same synthetic clustered embeddings (benchmarks/cluster.py's generator), measured in one run.

Prints seconds on each device, the GPU's speed-up, and the inertia ratio GPU / CPU (about 1: the same
seeding and Lloyd iterations; the GPU's float sums round differently). The check that the GPU really
ran is ``device`` of the result: FAISS's own ``gpu=True`` quietly runs on the CPU without a GPU.

    .venv/bin/python benchmarks/gpu_kmeans.py                    # 200k x 768, k = 50
    .venv/bin/python benchmarks/gpu_kmeans.py --n 2000000 --d 3840
    .venv/bin/python benchmarks/gpu_kmeans.py --cpu-smoke-test   # checks the script only: no figures
Without a FAISS GPU it exits with status 2. `--json PATH` writes the rows of `make gpu-check`'s table.
"""

from __future__ import annotations

import argparse
import sys

import faiss
from cluster import synthetic_embeddings  # benchmarks/cluster.py: the same data
from gpu_check import row, write_rows  # benchmarks/gpu_check.py: the table's rows

from ssondo_cache.kmeans import kmeans


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=200_000, help="points (default 200000)")
    ap.add_argument("--d", type=int, default=768, help="dimensions (default 768)")
    ap.add_argument("--k", type=int, default=50, help="clusters (default 50)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None, help="also write the figures as table rows (gpu_check.py)")
    ap.add_argument("--cpu-smoke-test", action="store_true", help="tiny, both runs on the CPU: no figures")
    a = ap.parse_args()
    gpu = "cuda"
    if a.cpu_smoke_test:
        a.n, a.d, a.k, gpu = 2000, 32, 8, "cpu"
        print("CPU SMOKE TEST: checks this script runs; the numbers below mean nothing")
    elif faiss.get_num_gpus() == 0:
        print(
            "gpu_kmeans.py: FAISS sees no GPU (faiss.get_num_gpus() == 0); run it on a GPU host",
            file=sys.stderr,
        )
        return 2
    X = synthetic_embeddings(a.n, a.d, seed=a.seed)
    cpu = kmeans(X, a.k, seed=a.seed, device="cpu")
    on_gpu = kmeans(X, a.k, seed=a.seed, device=gpu)
    if on_gpu.device != gpu:
        raise SystemExit(f"k-means asked for {gpu} ran on {on_gpu.device} ({on_gpu.device_reason})")
    speedup, ratio = cpu.seconds / on_gpu.seconds, on_gpu.inertia / cpu.inertia
    setting = f"{a.n} x {a.d}, k={a.k}"
    print(
        f"{setting}: CPU {cpu.seconds:.1f} s ({cpu.n_iter} iterations, {faiss.omp_get_max_threads()} threads)"
    )
    print(
        f"{setting}: GPU {on_gpu.seconds:.1f} s ({on_gpu.n_iter} iterations) = {speedup:.1f}x; inertia ratio {ratio:.4f}"
    )
    write_rows(
        a.json,
        [
            row("FAISS k-means", f"CPU, {setting}", cpu.seconds, "s", f"{faiss.omp_get_max_threads()} threads"),
            row("FAISS k-means", f"GPU ({on_gpu.device}), {setting}", on_gpu.seconds, "s",
                f"{speedup:.1f}x the CPU; inertia GPU/CPU {ratio:.4f}"),
        ],
    )  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
