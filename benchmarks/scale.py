"""How the pipeline's stages grow with the corpus: synthetic workspaces in the real formats at several sizes.

Each size gets generated 0.2-s WAV inputs, `pack` into tar shards of 1,000 clips (AudioSet's layout) with
clips.parquet, `extract` with the tiny `py:` teacher (so the figure is the pipeline's, not a model's) into
the Zarr cache at D = 768 and 3840, `cache info`, and `cluster` (k = 50, clip and window level) writing
the sampling manifests. Every stage runs in a fresh process: its seconds and its peak RSS are its own.
Printed per stage: seconds, seconds per 1,000 clips, peak RSS, the growth exponent between consecutive
sizes (1 = linear), and an EXTRAPOLATION to 2 M clips (power law through the two largest sizes); a log-log
PNG is written beside the JSON. Stages flagged: per-clip cost growing more than 1.5x between sizes, or
extrapolated peak RSS at 2 M above 8 GB.

Not measured here (yet): the sampler's epoch plan, stream start-up to the first batch, validation-set
assembly, eval over a cached task.

    nice -n 19 .venv/bin/python benchmarks/scale.py --sizes 10000,100000 --out /tmp/scale
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import resource
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

TEACHER = "py:tests.helpers.tiny_teacher:make"
SR = 16000
TARGET = 2_000_000
RSS_LIMIT_GB = 8.0


def make_inputs(root: Path, n: int, seconds: float = 0.2) -> Path:
    """n short WAV clips (a tone per clip plus noise), 16 kHz mono."""
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


def st_pack(work: Path, src: Path) -> None:
    from ssondo_cache.pack import pack

    pack([src], work, sample_rate=SR, shard_size=1000, progress=False)


def st_extract(work: Path, dim: int) -> None:
    from ssondo_cache.extract import extract

    extract(work, TEACHER, ts=0.1, device="cpu", batch_size=512, workers=0, progress=False,
            teacher_options={"dim": dim})  # fmt: skip


def st_cache_info(work: Path) -> None:
    from ssondo_cache.cache_index import list_caches

    list_caches(work)


def st_cluster(work: Path, dim: int, level: str) -> None:
    from ssondo_cache.cache_index import list_caches
    from ssondo_cache.cluster import cluster_cache

    (cache,) = [c for c in list_caches(work) if c.embed_dim == dim]
    cluster_cache(work, cache.name, 50, level=level, device="cpu", force=True, progress=False)


def _child(fn: Callable, args: tuple, q: Any) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the py: teacher lives in tests/helpers
    t0 = time.perf_counter()
    fn(*args)
    q.put((time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024))


def run_stage(fn: Callable, *args: Any) -> tuple[float, int]:
    """(seconds, peak RSS bytes) of fn(*args) in a fresh process."""
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_child, args=(fn, args, q), daemon=True)  # dies with us
    p.start()
    p.join()
    if p.exitcode != 0:
        raise SystemExit(f"stage {fn.__name__}{args[1:]} failed (exit {p.exitcode})")
    return q.get()


def stages(work: Path, src: Path) -> list[tuple[str, Callable, tuple]]:
    return [
        ("pack", st_pack, (work, src)),
        ("extract D=768", st_extract, (work, 768)),
        ("extract D=3840", st_extract, (work, 3840)),
        ("cache info", st_cache_info, (work,)),
        ("cluster clip D=768", st_cluster, (work, 768, "clip")),
        ("cluster window D=768", st_cluster, (work, 768, "window")),
        ("cluster clip D=3840", st_cluster, (work, 3840, "clip")),
        ("cluster window D=3840", st_cluster, (work, 3840, "window")),
    ]


def report(results: dict[int, dict[str, tuple[float, int]]], out: Path) -> None:
    sizes = sorted(results)
    names = list(results[sizes[0]])
    print(f"{'stage':<24}" + "".join(f"{f'{n} clips: s, s/1k, GB':>30}" for n in sizes)
          + f"{'exponent':>10}{'2M (EXTRAPOLATED) s, GB':>26}  flags")  # fmt: skip
    summary = {}
    for name in names:
        row, flags = f"{name:<24}", []
        for n in sizes:
            s, rss = results[n][name]
            row += f"{s:12.2f}{s / n * 1000:9.3f}{rss / 2**30:9.2f}"
        exp = gb2 = s2 = None
        if len(sizes) > 1:
            (n1, n2), (a, b) = sizes[-2:], (results[sizes[-2]][name], results[sizes[-1]][name])
            exp = math.log(max(b[0], 1e-6) / max(a[0], 1e-6)) / math.log(n2 / n1)
            exp_m = math.log(b[1] / a[1]) / math.log(n2 / n1)
            s2 = b[0] * (TARGET / n2) ** max(exp, 0.0)
            gb2 = b[1] * (TARGET / n2) ** max(exp_m, 0.0) / 2**30
            if (b[0] / n2) / max(a[0] / n1, 1e-9) > 1.5:
                flags.append("per-clip cost grows > 1.5x")
            if gb2 > RSS_LIMIT_GB:
                flags.append("2M RSS > 8 GB")
            row += f"{exp:10.2f}{s2:14.0f}{gb2:12.2f}  {', '.join(flags)}"
        print(row)
        summary[name] = {"by_size": {n: {"seconds": results[n][name][0], "peak_rss": results[n][name][1]}
                                     for n in sizes},
                         "exponent": exp, "extrapolated_2M": {"seconds": s2, "peak_rss_gb": gb2}, "flags": flags}  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    (out / "scale.json").write_text(json.dumps(summary, indent=1))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.5))
    for name in names:
        ax1.loglog(sizes, [results[n][name][0] for n in sizes], "o-", label=name)
        ax2.loglog(sizes, [results[n][name][1] / 2**30 for n in sizes], "o-", label=name)
    ax1.set(xlabel="clips", ylabel="seconds", title="stage time")
    ax2.set(xlabel="clips", ylabel="peak RSS (GB)", title="stage peak memory")
    ax1.legend(fontsize=7)
    fig.savefig(out / "scale.png", dpi=100, bbox_inches="tight")
    print(f"wrote {out / 'scale.json'} and {out / 'scale.png'}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--sizes", default="10000,100000", help="comma-separated clip counts (default 10000,100000)"
    )
    ap.add_argument("--out", type=Path, default=Path("scale-out"), help="workspaces, JSON and PNG go here")
    ap.add_argument("--keep", action="store_true", help="keep each size's workspace (default: delete it)")
    args = ap.parse_args()
    results: dict[int, dict[str, tuple[float, int]]] = {}
    for n in (int(x) for x in args.sizes.split(",")):
        root = args.out / f"n{n}"
        shutil.rmtree(root, ignore_errors=True)
        t0 = time.perf_counter()
        src = make_inputs(root / "inputs", n)
        print(f"{n} clips: inputs generated in {time.perf_counter() - t0:.1f} s", flush=True)
        results[n] = {}
        for name, fn, a in stages(root / "work", src):
            results[n][name] = run_stage(fn, *a)
            print(f"  {name}: {results[n][name][0]:.2f} s, {results[n][name][1] / 2**30:.2f} GB", flush=True)
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    report(results, args.out)


if __name__ == "__main__":
    main()
