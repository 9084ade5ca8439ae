"""How the pipeline's stages grow with the corpus: synthetic workspaces in the real formats at several sizes,
and how pack and extract scale with worker processes on one machine.

Each size gets generated 0.2-s WAV inputs (16 kHz) and goes through every stage, each in a fresh process
(its seconds, CPU seconds and peak RSS are its own; a stage that needs set-up, e.g. opening the training
data, times only its own part, its RSS includes the set-up):
  pack shards (tar shards of 1,000 clips, AudioSet's layout), pack --finalize (re-plan from the scan cache +
  clips/rejects.parquet), extract with the tiny `py:` teacher (so the figure is the pipeline's, not a model's)
  at TS 0.1 s (2 windows per clip) and D = 768 and 3840, cache info, cluster (k = 50) clip and window level at
  both widths (each writes its balanced manifest), the random manifest, opening the training data
  (cache + manifest + shards, cross-checked), the sampler's epoch plan (an epoch of N samples, 64 a batch,
  2 readers), validation-set assembly (256 held-out clips), stream start-up to the first batch (DataLoader
  with 2 spawned workers), and eval over a cached task (the cached teacher's embeddings of a task holding
  every 10th clip of the corpus; the probe's cost is the task's, not the corpus', and is left out).
Printed per stage: seconds, seconds per 1,000 clips, peak RSS, the growth exponent between consecutive
sizes (1 = linear), and an EXTRAPOLATION to 2 M clips (the larger of a power law and an affine fit
through the two largest sizes). Flagged: per-clip cost growing more than 1.5x between sizes, extrapolated
peak RSS at 2 M above 8 GB. A log-log PNG and a JSON are written to --out.

--parallel N (item 4 of issue 18) packs the same N inputs with 1 and 2 pack workers, and extracts them in
one process and in 2 rank processes (world size 2, started together), and prints the speed-ups and the
per-worker efficiency (speed-up / workers); --start-shards S times how a corpus of S shards x 1,000 clips
starts, on synthetic plans (no audio): pack's resume decision and the train stream's epoch plan and first
batch, with the shards it reads counted (benchmarks/scale_parallel.py). --cluster-memory SIZES measures
clustering's peak RSS on cache-only workspaces and extrapolates it to 2 M (benchmarks/scale_memory.py).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/scale.py --sizes 10000,100000 --parallel 10000 --start-shards 2000 \
        --out /tmp/scale
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import queue
import resource
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the py: teacher lives in tests/helpers

from ssondo_cache import lifecycle  # noqa: E402

TEACHER = "py:tests.helpers.tiny_teacher:make"
SR = 16000
K = 50
TARGET = 2_000_000
RSS_LIMIT_GB = 8.0
GROWTH_LIMIT = 1.5
BATCH, READERS, VAL_CLIPS = 64, 2, 256


def make_inputs(root: Path, n: int, seconds: float = 0.2) -> Path:
    """n short WAV clips (a tone per clip plus noise), 16 kHz mono, 10,000 to a folder."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    t = np.arange(int(seconds * SR)) / SR
    for i in range(n):
        sub = root / f"{i // 10_000:03d}"
        sub.mkdir(exist_ok=True)
        x = 0.3 * np.sin(2 * np.pi * (100 + (i % 4000)) * t) + 0.05 * rng.standard_normal(len(t))
        sf.write(sub / f"c{i:07d}.wav", x.astype(np.float32), SR, subtype="PCM_16")
    return root


# ---------------------------------------------------------------- stages (each runs in its own process)
# A stage returns None (the whole call is timed) or the seconds of its own part (after its set-up).


def st_pack(work: Path, src: Path, workers: int = 1) -> None:
    from ssondo_cache.pack import pack

    pack([src], work, sample_rate=SR, shard_size=1000, workers=workers, finalize=False, progress=False)


def st_finalize(work: Path, src: Path) -> None:
    from ssondo_cache.pack import pack

    result = pack([src], work, sample_rate=SR, shard_size=1000, pack_shards=False, progress=False)
    if not result.complete:
        raise RuntimeError(f"pack --finalize left {work} incomplete: {result.summary()}")


def st_extract(work: Path, dim: int, rank: int = 0, world_size: int = 1) -> None:
    from ssondo_cache.extract import extract

    extract(work, TEACHER, ts=0.1, device="cpu", batch_size=512, workers=0, rank=rank,
            world_size=world_size, progress=False, teacher_options={"dim": dim})  # fmt: skip


def _cache(work: Path, dim: int) -> str:
    from ssondo_cache.cache_index import list_caches

    (cache,) = [c for c in list_caches(work) if c.embed_dim == dim]
    return cache.name


def st_cache_info(work: Path) -> None:
    from ssondo_cache.cache_index import list_caches

    if not all(c.complete and not c.missing_files for c in list_caches(work)):
        raise RuntimeError(f"cache info: a cache of {work} is incomplete")


def st_cluster(work: Path, dim: int, level: str) -> None:
    from ssondo_cache.cluster import cluster_cache

    cluster_cache(work, _cache(work, dim), K, level=level, device="cpu", force=True, progress=False)


def st_random_manifest(work: Path) -> None:
    from ssondo_cache.cluster import write_random_manifest

    write_random_manifest(work, _cache(work, 768), force=True)


def _training_data(work: Path) -> Any:
    from ssondo_distill.training_data import open_training_data

    return open_training_data(work, _cache(work, 768), f"balanced-k{K}", "clip", 0.2)


def st_open_training(work: Path) -> None:
    _training_data(work)


def _stream(work: Path) -> tuple[Any, Any, Any]:
    from ssondo_distill.sampling import split_holdout
    from ssondo_distill.stream import BalancedStream, StreamConfig

    data = _training_data(work)
    train, val = split_holdout(data.table, VAL_CLIPS, 0)
    steps = max(len(data.table) // BATCH, 1)  # an epoch of about N samples
    cfg = StreamConfig(seed=0, steps_per_epoch=steps, batch_size=BATCH, workers=READERS, reuse_buffers=True)
    return data, val, BalancedStream(data.view, train, cfg)


def st_epoch_plan(work: Path) -> float:
    _, _, stream = _stream(work)
    t0 = time.perf_counter()
    stream.plan(0)
    return time.perf_counter() - t0


def st_validation(work: Path) -> float:
    from ssondo_distill.training_data import load_validation

    data, val, _ = _stream(work)
    t0 = time.perf_counter()
    load_validation(data, val)
    return time.perf_counter() - t0


def st_first_batch(work: Path) -> float:
    """From the trainer's plan() call to the first batch out of a DataLoader with spawned workers."""
    _, _, stream = _stream(work)
    t0 = time.perf_counter()
    stream.set_position(0, 0)
    stream.plan(0)
    loader = stream.loader(READERS, multiprocessing_context=lifecycle.child_context("spawn"),
                           worker_init_fn=lifecycle.WorkerInit())  # fmt: skip
    next(iter(loader))
    return time.perf_counter() - t0


def st_eval_cached(work: Path) -> float:
    from ssondo_cache.manifests import read_clips
    from ssondo_eval.cached_teacher import CachedTeacherEmbedder
    from ssondo_eval.tasks.base import Task, TaskItem

    keys = read_clips(work).column("key").to_pylist()[::10]
    items = [TaskItem(None, (f"c{i % 5}",), "train" if i % 5 else "test", key=k) for i, k in enumerate(keys)]
    task = Task("scale", items, [f"c{i}" for i in range(5)], multilabel=False, clip_seconds=None)
    t0 = time.perf_counter()
    X, _ = CachedTeacherEmbedder(work, _cache(work, 768)).embed_task(task, progress=False)
    if X.shape != (len(items), 768):
        raise RuntimeError(f"eval over a cached task: got {X.shape}")
    return time.perf_counter() - t0


def stages(work: Path, src: Path) -> list[tuple[str, Callable, tuple]]:
    return [
        ("pack shards", st_pack, (work, src)),
        ("pack --finalize", st_finalize, (work, src)),
        ("extract D=768", st_extract, (work, 768)),
        ("extract D=3840", st_extract, (work, 3840)),
        ("cache info", st_cache_info, (work,)),
        ("cluster clip D=3840", st_cluster, (work, 3840, "clip")),
        ("cluster window D=3840", st_cluster, (work, 3840, "window")),
        ("cluster clip D=768", st_cluster, (work, 768, "clip")),  # last: balanced-k50 is D=768's
        ("cluster window D=768", st_cluster, (work, 768, "window")),
        ("random manifest", st_random_manifest, (work,)),
        ("open training data", st_open_training, (work,)),
        ("sampler epoch plan", st_epoch_plan, (work,)),
        ("validation set", st_validation, (work,)),
        ("stream to 1st batch", st_first_batch, (work,)),
        ("eval cached task", st_eval_cached, (work,)),
    ]


# ---------------------------------------------------------------- running a stage


def _child(fn: Callable, args: tuple, q: Any) -> None:
    t0, c0 = time.perf_counter(), time.process_time()
    own = fn(*args)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)  # pool workers, once joined
    cpu += kids.ru_utime + kids.ru_stime
    rss = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, kids.ru_maxrss) * 1024
    extra = own if isinstance(own, dict) else {"seconds": wall if own is None else own}
    q.put({"wall": wall, "cpu": cpu, "rss": rss, **extra})


def run_stages(calls: list[tuple[Callable, tuple]]) -> list[dict[str, float]]:
    """Run the calls at once, each in a fresh process (dies with us): their measures, in order."""
    ctx = lifecycle.child_context("spawn", workers=False)
    queues = [ctx.Queue() for _ in calls]
    procs = [ctx.Process(target=_child, args=(fn, a, q)) for (fn, a), q in zip(calls, queues, strict=True)]
    for p in procs:
        p.start()
    out = [_result(p, q, fn, a) for p, q, (fn, a) in zip(procs, queues, calls, strict=True)]
    for p in procs:
        p.join()
    return out  # type: ignore[return-value]


def _result(p: Any, q: Any, fn: Callable, a: tuple) -> dict[str, float]:
    while True:
        try:
            return q.get(timeout=0.5)
        except queue.Empty:
            if not p.is_alive() and q.empty():
                raise SystemExit(f"stage {fn.__name__}{a[1:]} failed (exit {p.exitcode})") from None


# ---------------------------------------------------------------- report


def growth(a: dict[str, float], b: dict[str, float], n1: int, n2: int) -> dict[str, Any]:
    """Exponent, per-clip growth and the 2 M extrapolation from two sizes' measures."""
    exp = math.log(max(b["seconds"], 1e-6) / max(a["seconds"], 1e-6)) / math.log(n2 / n1)
    per_clip = (b["seconds"] / n2) / max(a["seconds"] / n1, 1e-12)

    def extrapolate(x1: float, x2: float) -> float:
        power = x2 * (TARGET / n2) ** max(math.log(max(x2, 1e-9) / max(x1, 1e-9)) / math.log(n2 / n1), 0.0)
        affine = x2 + max(x2 - x1, 0.0) / (n2 - n1) * (TARGET - n2)
        return max(power, affine)

    s2 = extrapolate(a["seconds"], b["seconds"])
    gb2 = extrapolate(a["rss"], b["rss"]) / 2**30
    flags = []
    if per_clip > GROWTH_LIMIT:
        flags.append(
            f"per-clip cost x{per_clip:.1f}" + (" (under 1 s: timer level)" if b["seconds"] < 1 else "")
        )
    if gb2 > RSS_LIMIT_GB:
        flags.append("2M RSS > 8 GB")
    return {"exponent": exp, "per_clip_growth": per_clip, "seconds_2M": s2, "rss_gb_2M": gb2, "flags": flags}


def report(results: dict[int, dict[str, dict[str, float]]], out: Path) -> dict[str, Any]:
    sizes = sorted(results)
    names = list(results[sizes[0]])
    head = f"{'stage':<22}" + "".join(f"{f'{n:,}: s  s/1k  GB':>26}" for n in sizes)
    if len(sizes) > 1:
        head += f"{'exp':>6}{'2M EXTRAPOLATED: s':>20}{'GB':>7}  flags"
    print(head)
    summary: dict[str, Any] = {}
    for name in names:
        row = f"{name:<22}"
        for n in sizes:
            m = results[n][name]
            row += f"{m['seconds']:10.2f}{m['seconds'] / n * 1000:8.3f}{m['rss'] / 2**30:8.2f}"
        g = growth(results[sizes[-2]][name], results[sizes[-1]][name], *sizes[-2:]) if len(sizes) > 1 else {}
        steps = [
            growth(results[a][name], results[b][name], a, b)["flags"] for a, b in itertools.pairwise(sizes)
        ]
        flags = sorted({f for fl in steps for f in fl})
        if g:
            row += f"{g['exponent']:6.2f}{g['seconds_2M']:20.0f}{g['rss_gb_2M']:7.2f}  {'; '.join(flags)}"
        print(row)
        summary[name] = {"by_size": {n: results[n][name] for n in sizes}, **g, "flags": flags}
    out.mkdir(parents=True, exist_ok=True)
    plot(results, out / "scale.png")
    return summary


def plot(results: dict[int, dict[str, dict[str, float]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = sorted(results)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 5))
    for name in results[sizes[0]]:
        ax1.loglog(sizes, [results[n][name]["seconds"] for n in sizes], "o-", label=name)
        ax2.loglog(sizes, [results[n][name]["rss"] / 2**30 for n in sizes], "o-", label=name)
    ax1.set(xlabel="clips", ylabel="seconds", title="stage time (log-log)")
    ax2.set(xlabel="clips", ylabel="peak RSS (GB)", title="stage peak memory (log-log)")
    ax1.legend(fontsize=7)
    fig.savefig(path, dpi=100, bbox_inches="tight")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="10000,100000", help="comma-separated clip counts ('' for none)")
    ap.add_argument("--parallel", type=int, default=0, help="clips for the 1-vs-2-workers runs (0: skip)")
    ap.add_argument("--out", type=Path, default=Path("scale-out"), help="workspaces, JSON and PNG go here")
    ap.add_argument("--keep", action="store_true", help="keep each size's workspace (default: delete it)")
    ap.add_argument(
        "--start-shards", type=int, default=0, help="shards of the synthetic start-up check (0: skip)"
    )
    ap.add_argument(
        "--cluster-memory", default="", help="clip counts of the clustering peak-RSS runs (scale_memory.py)"
    )
    ap.add_argument(
        "--memory-dim", type=int, default=3840, help="embedding width of the --cluster-memory runs"
    )
    ap.add_argument("--memory-levels", default="clip,window", help="levels of the --cluster-memory runs")
    ap.add_argument(
        "--memory-max-iter",
        type=int,
        default=100,
        help="Lloyd iterations at most (the peak is reached in the first)",
    )
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # torch, FAISS, BLAS: one core per stage process
    meta = {
        "commit": _commit(),
        "machine": _machine(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    results: dict[int, dict[str, dict[str, float]]] = {}
    out: dict[str, Any] = {"meta": meta}
    for i, n in enumerate(int(x) for x in args.sizes.split(",") if x):
        results[n] = measure_size(n, args.out / f"n{n}", args.keep)
        out["stages"] = report(results, args.out)
        save(out, args.out)
        if i == 0:  # the small runs before the larger sizes: a run cut short still has them
            item4(args, out)
    if not results:
        item4(args, out)
    if args.cluster_memory:
        from scale_memory import cluster_memory

        sizes = [int(x) for x in args.cluster_memory.split(",")]
        levels = tuple(args.memory_levels.split(","))
        out["cluster_memory"] = cluster_memory(
            sizes, args.memory_dim, args.out / "memory", levels, args.memory_max_iter
        )
        save(out, args.out)
    print(f"wrote {args.out / 'scale.json'}" + (f" and {args.out / 'scale.png'}" if results else ""))


def measure_size(n: int, root: Path, keep: bool) -> dict[str, dict[str, float]]:
    shutil.rmtree(root, ignore_errors=True)
    t0 = time.perf_counter()
    src = make_inputs(root / "inputs", n)
    print(f"{n:,} clips: inputs generated in {time.perf_counter() - t0:.1f} s", flush=True)
    got: dict[str, dict[str, float]] = {}
    for name, fn, a in stages(root / "work", src):
        try:
            (got[name],) = run_stages([(fn, a)])
        except SystemExit as err:  # a failed stage is reported (NaN), the others still run
            print(f"  {name}: FAILED: {err}", flush=True)
            got[name] = {k: math.nan for k in ("seconds", "wall", "cpu", "rss")}
            continue
        m = got[name]
        print(f"  {name}: {m['seconds']:.2f} s (wall {m['wall']:.2f}, CPU {m['cpu']:.2f}), "
              f"{m['rss'] / 2**30:.2f} GB", flush=True)  # fmt: skip
    if not keep:
        shutil.rmtree(root, ignore_errors=True)
    return got


def item4(args: argparse.Namespace, out: dict[str, Any]) -> None:
    from scale_parallel import parallel, starts

    if args.parallel:
        out["parallel"] = parallel(args.parallel, args.out / "parallel")
        save(out, args.out)
    if args.start_shards:
        out["starts"] = starts(args.start_shards, args.out / "starts")
        save(out, args.out)


def save(out: dict[str, Any], folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "scale.json").write_text(json.dumps(out, indent=1, default=str))


def _commit() -> str:
    from ssondo_cache.provenance import code_version

    return str(code_version(mark_dirty=True))


def _machine() -> str:
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), "?")  # fmt: skip
    return f"{os.cpu_count()} CPUs ({model}), {os.sysconf('SC_PHYS_PAGES') * os.sysconf('SC_PAGE_SIZE') / 2**30:.0f} GiB"


if __name__ == "__main__":
    main()
