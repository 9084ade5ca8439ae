"""GPU: does the whole extraction path keep up with the teacher? Full-size MATPAC++ (ViT-B, random weights).

Measures, in one run on one CUDA device:
  1. the teacher forward alone on device-resident random audio windows, bf16 autocast, eager;
  2. the same, torch.compile'd;
  3. the whole path, `ssondo_cache.extract.extract(..., compile=True)`: packed shards -> DataLoader
     workers decoding (spawn) -> device (resample if needed, TS windows, mel, ViT, pooling) -> zarr cache;
and prints windows/s for each and the ratio whole path / compiled forward (target >= 0.80). The whole
path's rate is its steady state (after the first item: worker start-up and compilation left out); the
end-to-end rate is printed too.

The corpus: `--unique` clips of tones + noise are packed for real (`ssondo pack`, WAV at 16 kHz by
default: the fastest to decode, see DESIGN.md), then the tar shards are hard-linked `--repeat` times
and the manifest rows repeated to make a large corpus quickly (keys repeat across copies, which the
extractor does not mind; every clip is still decoded from its tar). Files are read from the page cache.

    python benchmarks/gpu_extract.py                          # 1024 unique x 16 = 16,384 clips of 10 s, TS 5 s
    python benchmarks/gpu_extract.py --format flac --sample-rate 32000 --repeat 8
    python benchmarks/gpu_extract.py --json rows.json         # also the rows of `make gpu-check`'s table
    python benchmarks/gpu_extract.py --cpu-smoke-test          # check this script's logic on the CPU (tiny ViT,
                                                              # numbers meaningless; NOT a GPU measurement)
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from gpu_check import row, write_rows  # benchmarks/gpu_check.py: the table's rows

from ssondo_cache.extract import extract
from ssondo_cache.manifests import clips_table, read_clips, table_meta, write_table
from ssondo_cache.pack import pack
from ssondo_cache.teachers import build_teacher
from ssondo_cache.teachers.base import compile_teacher
from ssondo_cache.windows import TemporalSupport
from ssondo_cache.workspace import Workspace

FULL_SIZE: dict = {"random_init": True}  # ViT-B defaults: 768-d, 12 blocks, 12 heads -> 3840-d output
SMOKE_SIZE: dict = {"random_init": True, "embed_dim": 64, "depth": 1, "num_heads": 1}


def make_corpus(
    root: Path, unique: int, repeat: int, seconds: float, sr: int, fmt: str, shard_size: int, workers: int
) -> tuple[Path, int]:
    """Pack ``unique`` clips for real, then repeat the shards ``repeat`` times (hard links + manifest rows)."""
    src = root / "audio"
    src.mkdir(parents=True)
    rng = np.random.default_rng(0)
    t = np.arange(int(seconds * sr)) / sr
    for i in range(unique):
        f0 = 110 * 2 ** (rng.integers(0, 36) / 12)
        x = 0.2 * np.sin(2 * np.pi * f0 * t) + 0.05 * rng.standard_normal(len(t))
        sf.write(src / f"clip{i:06d}.wav", x.astype(np.float32), sr, subtype="PCM_16")
    work = root / "work"
    pack([src], work, sample_rate=sr, fmt=fmt, shard_size=shard_size, workers=workers, progress=False)
    ws = Workspace(work)
    clips = read_clips(work)
    meta = table_meta(clips)
    n_shards = int(meta["n_shards"])
    rows = clips.to_pylist()
    big = []
    for r in range(repeat):
        for clip in rows:
            big.append({**clip, "row": len(big), "shard": clip["shard"] + r * n_shards})
        if r:
            for s in range(n_shards):
                os.link(ws.shard_path(s), ws.shard_path(s + r * n_shards))
    meta.update({"n_shards": n_shards * repeat, "n_clips": len(big), "benchmark_repeat": repeat})
    write_table(ws.clips_manifest, clips_table(big, meta))
    return work, len(big)


def time_forward(teacher: torch.nn.Module, batch: int, win: int, device: torch.device, iters: int) -> float:
    """Windows per second of ``teacher`` (eager or compiled) on random audio already on the device."""
    x = torch.randn(batch, win, device=device) * 0.1
    with (
        torch.inference_mode(),
        torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"),
    ):
        for _ in range(3):  # warm-up (and compilation)
            teacher(x).float().mean(dim=1)
        sync(device)
        t0 = time.perf_counter()
        for _ in range(iters):
            teacher(x).float().mean(dim=1)
        sync(device)
    return batch * iters / (time.perf_counter() - t0)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--unique", type=int, default=1024, help="clips packed for real")
    ap.add_argument("--repeat", type=int, default=16, help="copies of the packed shards")
    ap.add_argument("--seconds", type=float, default=10.0, help="clip length")
    ap.add_argument("--ts", type=float, default=5.0, help="temporal support (s)")
    ap.add_argument("--batch-size", type=int, default=256, help="windows per forward")
    ap.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 2), help="decode workers")
    ap.add_argument("--sample-rate", type=int, default=16000, help="pack rate (16000: no resampling)")
    ap.add_argument("--format", choices=["wav", "flac"], default="wav")
    ap.add_argument("--shard-size", type=int, default=256)
    ap.add_argument("--iters", type=int, default=30, help="timed forwards for the forward-alone figures")
    ap.add_argument("--json", default=None, help="also write the figures as table rows (gpu_check.py)")
    ap.add_argument(
        "--cpu-smoke-test",
        action="store_true",
        help="run the script's logic on the CPU with a tiny ViT and a tiny corpus (not a measurement)",
    )
    args = ap.parse_args()

    if args.cpu_smoke_test:
        device, size = torch.device("cpu"), SMOKE_SIZE
        args.unique, args.repeat, args.seconds, args.batch_size, args.iters = 8, 2, 2.0, 4, 2
        args.workers, args.shard_size = min(args.workers, 2), 4
        print("CPU SMOKE TEST: checks this script runs; the numbers below mean nothing")
    elif not torch.cuda.is_available():
        print(
            "gpu_extract.py measures a CUDA GPU and none is visible here (torch.cuda.is_available() is False).\n"
            "Run it on a GPU host; `--cpu-smoke-test` only checks the script's logic.",
            file=sys.stderr,
        )
        sys.exit(2)
    else:
        device, size = torch.device("cuda"), FULL_SIZE
        torch.backends.cuda.matmul.allow_tf32 = True

    teacher = build_teacher("matpac", device=device, **size)
    win, _ = TemporalSupport.parse(args.ts).in_samples(teacher.sample_rate)
    per_clip = int(np.ceil(args.seconds / args.ts - 1e-9))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(
        f"device {name}; teacher {teacher.teacher_id} ({teacher.embed_dim}-d); TS {args.ts:g} s = {win} samples; "
        f"batch {args.batch_size} windows; {per_clip} windows per {args.seconds:g}-s clip"
    )

    eager = time_forward(teacher, args.batch_size, win, device, args.iters)
    print(f"forward alone, eager bf16:    {eager:10.0f} windows/s = {eager / per_clip:8.0f} clips/s")
    compiled_teacher = compile_teacher(teacher)
    compiled = time_forward(compiled_teacher, args.batch_size, win, device, args.iters)
    print(
        f"forward alone, compiled bf16: {compiled:10.0f} windows/s = {compiled / per_clip:8.0f} clips/s "
        f"({compiled / eager:.2f}x eager)"
    )
    del compiled_teacher

    with tempfile.TemporaryDirectory(prefix="ssondo-gpu-bench-") as tmp:
        t0 = time.perf_counter()
        work, n = make_corpus(
            Path(tmp),
            args.unique,
            args.repeat,
            args.seconds,
            args.sample_rate,
            args.format,
            args.shard_size,
            args.workers,
        )
        print(
            f"corpus: {n} clips ({args.unique} packed x {args.repeat}), {args.format.upper()} "
            f"{args.sample_rate} Hz, shards of {args.shard_size}; built in {time.perf_counter() - t0:.0f} s"
        )
        r = extract(
            work,
            "matpac",
            ts=args.ts,
            device=str(device),
            batch_size=args.batch_size,
            compile=True,
            workers=args.workers,
            progress=True,
            teacher_options=size,
        )
        assert r.cache_complete and r.clips == n, r
    steady = r.steady_clips_per_second * per_clip
    print(
        f"whole path, compiled bf16:    {steady:10.0f} windows/s = {r.steady_clips_per_second:8.0f} clips/s steady "
        f"({r.clips_per_second:.0f} clips/s end to end, {r.seconds:.0f} s incl. {r.warmup_seconds:.0f} s start-up; "
        f"{args.workers} workers)"
    )
    print(f"\nratio whole path / compiled forward alone: {steady / compiled:.2f} (target >= 0.80)")
    print(f"ratio whole path / eager forward alone:    {steady / eager:.2f}")
    met = "met" if steady / compiled >= 0.8 else "NOT met"
    write_rows(
        args.json,
        [
            row("extraction", f"forward alone, eager bf16, TS {args.ts:g} s", eager, "windows/s"),
            row("extraction", "forward alone, compiled bf16", compiled, "windows/s", f"{compiled / eager:.2f}x eager"),
            row(
                "extraction", f"whole path steady ({n} clips, {args.workers} workers)", steady, "windows/s",
                f"{steady / compiled:.2f}x compiled forward (target >= 0.80: {met})",
            ),
            row(
                "extraction", "whole path end to end", r.clips_per_second, "clips/s",
                f"{r.seconds:.0f} s incl. {r.warmup_seconds:.0f} s start-up and compile",
            ),
        ],
    )  # fmt: skip


if __name__ == "__main__":
    main()
