"""Issue 18 item 1, run by benchmarks/scale.py (--cluster-memory SIZES): clustering's peak RSS against N.

Each size gets a cache-only workspace (a clips manifest and a complete cache of Gaussian blobs written
with the store API, 1,000 clips a tar shard, 2 windows a clip: clustering never reads audio, so none is
made), and `cluster_cache` (k = 50, the default training sample) runs at clip and window level, each in
a fresh process (peak RSS = ru_maxrss). Peak RSS = a fixed part (imports, the training sample, which stops
growing once N reaches it, the seeding subset) + a part proportional to N (rows, labels, distances, keys,
the manifest): the 2 M figure is EXTRAPOLATED linearly from the two largest sizes, which must both be past
the sample's cap for the slope to be the N-proportional part alone.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

from scale import TARGET, K, run_stages

# ---------------------------------------------------------------- stage (its own process)


def st_cluster_cache_only(work: Path, level: str, max_iter: int) -> None:
    from ssondo_cache.cluster import cluster_cache

    cluster_cache(
        work, "ts1-hop1", K, level=level, device="cpu", max_iter=max_iter, force=True, progress=False
    )


def cluster_memory(sizes: list[int], dim: int, root: Path, levels: tuple[str, ...] = ("clip", "window"),
                   max_iter: int = 100) -> dict[str, Any]:  # fmt: skip
    """Peak RSS of cluster_cache at each size and level, and the labelled 2 M extrapolation. Every array
    of the run exists by the first Lloyd iteration, so a small `max_iter` measures the same peak, cheaper."""
    from ssondo_cache.kmeans_sample import default_sample
    from tests.cache.test_kmeans_stream import make_cache  # scale.py put the repository on sys.path

    cap = default_sample(K, dim)
    got: dict[str, dict[int, dict[str, float]]] = {level: {} for level in levels}
    for n in sizes:
        shutil.rmtree(root, ignore_errors=True)
        t0 = time.perf_counter()
        work = make_cache(root, n=n, dim=dim, k=8)
        print(f"{n:,} x {dim}: cache written in {time.perf_counter() - t0:.1f} s", flush=True)
        for level in got:
            (m,) = run_stages([(st_cluster_cache_only, (work, level, max_iter))])
            got[level][n] = m
            print(f"  cluster {level} D={dim}: {m['seconds']:.1f} s (CPU {m['cpu']:.1f}), "
                  f"peak RSS {m['rss'] / 2**30:.2f} GB", flush=True)  # fmt: skip
        shutil.rmtree(root, ignore_errors=True)
    out: dict[str, Any] = {"dim": dim, "k": K, "max_iter": max_iter, "training_sample": cap, "by_level": {}}
    print(f"\nclustering peak RSS, D = {dim}, k = {K}, training sample {cap:,} points "
          f"({cap * dim * 4 / 2**30:.2f} GB float32)")  # fmt: skip
    for level, by_n in got.items():
        ns = sorted(by_n)
        row = {n: by_n[n]["rss"] / 2**30 for n in ns}
        entry: dict[str, Any] = {"rss_gb": row}
        if len(ns) > 1:
            (n1, n2), points = ns[-2:], 1 if level == "clip" else 1.5  # make_cache: 1-2 windows a clip
            slope = (row[n2] - row[n1]) / (n2 - n1)  # GB per clip, past the sample's cap
            entry |= {"gb_per_million_clips": slope * 1e6, "rss_gb_2M_extrapolated": row[n2] + slope * (TARGET - n2),
                      "slope_sizes": [n1, n2], "sample_capped": n1 * points >= cap}  # fmt: skip
        out["by_level"][level] = entry
        cells = "  ".join(f"{n:,}: {gb:.2f} GB" for n, gb in row.items())
        tail = (f"  -> {entry['gb_per_million_clips']:.2f} GB per 1 M clips; 2 M EXTRAPOLATED "
                f"{entry['rss_gb_2M_extrapolated']:.2f} GB" if len(ns) > 1 else "")  # fmt: skip
        print(f"  {level:<7}{cells}{tail}")
    return out
