"""Issue 18 item 4, run by benchmarks/scale.py (--parallel, --start-shards): pack and extract with 1 and 2
worker processes on one machine, and how a 2,000-shard corpus starts (pack's resume decision, the train
stream's epoch plan and first batch) on synthetic plans, reads counted."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
from scale import BATCH, READERS, SR, K, make_inputs, run_stages, st_extract, st_finalize, st_pack

# ---------------------------------------------------------------- item 4: workers on one machine


def parallel(n: int, root: Path) -> dict[str, Any]:
    """pack with 1 and 2 workers, extract with 1 and 2 rank processes, on the same n inputs."""
    shutil.rmtree(root, ignore_errors=True)
    src = make_inputs(root / "inputs", n)
    m: dict[str, dict[str, float]] = {}
    for workers in (1, 2):
        work = root / f"pack{workers}"
        (m[f"pack, {workers} worker(s)"],) = run_stages([(st_pack, (work, src, workers))])
        run_stages([(st_finalize, (work, src))])
    base = root / "pack1"
    for world in (1, 2):
        shutil.rmtree(base / "cache", ignore_errors=True)
        got = run_stages([(st_extract, (base, 768, r, world)) for r in range(world)])
        wall = max(g["wall"] for g in got)  # started together: done when the last rank is
        m[f"extract, {world} rank process(es)"] = {"seconds": wall, "wall": wall,
                                                   "cpu": sum(g["cpu"] for g in got), "rss": max(g["rss"] for g in got)}  # fmt: skip
    out: dict[str, Any] = {"clips": n, "runs": m}
    print(f"\nworkers on one machine, {n:,} clips: seconds, CPU seconds, speed-up, per-worker efficiency")
    for what in ("pack", "extract"):
        one, two = [v for k, v in m.items() if k.startswith(what)]
        speedup = one["seconds"] / two["seconds"]
        out[what] = {"speedup": speedup, "efficiency": speedup / 2}
        print(f"  {what:<8} 1: {one['seconds']:8.2f} s ({one['cpu']:.1f} CPU s)   2: {two['seconds']:8.2f} s "
              f"({two['cpu']:.1f} CPU s)   speed-up {speedup:.2f}x   efficiency {speedup / 2:.2f}")  # fmt: skip
    shutil.rmtree(root, ignore_errors=True)
    return out


# ---------------------------------------------------------------- item 4: a 2,000-shard corpus starts


def st_pack_start(root: Path, n_shards: int) -> dict[str, float]:
    """pack's start on a finished synthetic plan of n_shards x 1,000 clips (no audio): the plan's
    fingerprint and one completeness check per shard, what a re-run or a rank decides its work from."""
    import ssondo_cache.pack as pack_mod
    from ssondo_cache.plan import PackParams, Plan, PlanItem
    from ssondo_cache.workspace import Workspace

    items = [PlanItem(f"k{i:07d}", f"/corpus/{i // 10_000:03d}/c{i:07d}.wav", f"{i:064x}", 0, 160_000,
                      SR, 1, (), None) for i in range(n_shards * 1000)]  # fmt: skip
    plan = Plan(PackParams(SR, "wav", 1000, 0.1, 10.0, False), items, [], len(items))
    ws = Workspace(root)
    (ws.manifests_dir / "parts").mkdir(parents=True, exist_ok=True)
    ws.shards_dir.mkdir(parents=True, exist_ok=True)
    for s in range(n_shards):
        ws.shard_path(s).touch()
        pack_mod.part_path(ws, s, plan.shard_fingerprint(s)).touch()
    t0 = time.perf_counter()
    _ = Plan(plan.params, plan.items, [], plan.n_inputs).fingerprint
    complete = sum(pack_mod.shard_complete(ws, plan, s) for s in range(n_shards))
    if complete != n_shards:
        raise RuntimeError(f"pack start: {complete} of {n_shards} shards seen complete")
    return {"seconds": time.perf_counter() - t0, "shards": n_shards}


def st_stream_start(n_shards: int) -> dict[str, float]:
    """Epoch plan + first batch of a synthetic n_shards x 1,000-clip balanced table, reads counted
    (they return silence: the cost measured is the planning and the reading pattern, not I/O)."""
    import ssondo_distill.stream as stream_mod
    from ssondo_distill import sampling
    from ssondo_distill.training_data import CorpusView

    n = n_shards * 1000
    rng = np.random.default_rng(0)
    sizes = np.sort(rng.pareto(1.0, K) + 1)  # skewed cluster sizes
    clusters = rng.choice(K, n, p=sizes / sizes.sum())
    weights = 1.0 / np.bincount(clusters, minlength=K)[clusters]
    rows = np.arange(n)
    table = sampling.make_table(np.array([f"k{r:07d}" for r in rows], dtype=object), rows, rows // 1000,
                                weights, clusters, kind="balanced")  # fmt: skip
    view = CorpusView(tuple(f"/corpus/clips-{s:06d}.tar" for s in range(n_shards)), "",
                      tuple(range(0, n + 1, 1000)), SR, "clip", 3200, 0)  # fmt: skip
    reads: list[int] = []

    def counted(view: Any, store: Any, table: Any, segment: Any) -> tuple:
        reads.append(segment.shard)
        k = len(segment.positions)
        return [(b"", ".wav")] * k, np.zeros((k, 768), np.float32), None

    stream_mod.read_segment = counted  # this process only
    stream_mod.pcm16 = lambda raw, ext: (np.zeros(3200, np.int16), SR)
    cfg = stream_mod.StreamConfig(seed=0, steps_per_epoch=n // BATCH, batch_size=BATCH, workers=READERS)
    stream = stream_mod.BalancedStream(view, table, cfg)
    t0 = time.perf_counter()
    stream.plan(0)
    t1 = time.perf_counter()
    next(iter(stream))
    t2 = time.perf_counter()
    return {"seconds": t2 - t0, "plan_s": t1 - t0, "first_batch_s": t2 - t1, "reads": len(reads),
            "shards_read": len(set(reads)), "shards": n_shards}  # fmt: skip


def starts(n_shards: int, root: Path) -> dict[str, Any]:
    shutil.rmtree(root, ignore_errors=True)
    pack_m, stream_m = run_stages([(st_pack_start, (root, n_shards))]) + run_stages(
        [(st_stream_start, (n_shards,))]
    )
    print(f"\n{n_shards:,}-shard corpus (x 1,000 clips, synthetic): pack start (plan fingerprint + "
          f"completeness of every shard) {pack_m['seconds']:.1f} s, {pack_m['rss'] / 2**30:.2f} GB; train "
          f"stream epoch plan {stream_m['plan_s']:.1f} s + first batch {stream_m['first_batch_s']:.2f} s "
          f"reading {stream_m['shards_read']} of {n_shards} shards, {stream_m['rss'] / 2**30:.2f} GB")  # fmt: skip
    shutil.rmtree(root, ignore_errors=True)
    return {"pack_start": pack_m, "stream_start": stream_m}
