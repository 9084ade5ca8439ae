"""ssondo extraction vs a reference-style path (the paper's code), on the CPU, same teacher, same clips.

Reference style (as in S-SONDO's extraction script): one process, clips read one by one, resampled one
by one on load, batches of 8 clips, fp32 forward, one .npz file per clip (window embeddings and clip
mean, float32). ssondo: `ssondo_cache.extract.extract` into the zarr cache (float16, whole-shard
writes), decoding in DataLoader workers. Both cut the same TS windows and pool the same way, and both
read the same packed FLAC shards, so the difference is the data path and the storage.

The default teacher is a small MATPAC-architecture ViT with random weights (192-d, 4 blocks) so the
run stays short on a laptop CPU; `--teacher tiny` uses the tests' tiny spectral teacher (data path only).

    .venv/bin/python benchmarks/extract.py                 # 64 clips of 10 s, TS 1 s
    .venv/bin/python benchmarks/extract.py --clips 256 --ts 2 --workers 4
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # for py:tests.helpers.tiny_teacher:make

from ssondo_cache.extract import extract  # noqa: E402
from ssondo_cache.manifests import read_clips  # noqa: E402
from ssondo_cache.pack import pack  # noqa: E402
from ssondo_cache.shards import iter_shard  # noqa: E402
from ssondo_cache.teachers import build_teacher  # noqa: E402
from ssondo_cache.windows import TemporalSupport, cut_windows  # noqa: E402
from ssondo_cache.workspace import Workspace  # noqa: E402

TEACHERS = {
    "matpac-small": ("matpac", {"random_init": True, "embed_dim": 192, "depth": 4, "num_heads": 3}),
    "tiny": ("py:tests.helpers.tiny_teacher:make", {"dim": 64}),
}


def make_corpus(root: Path, n: int, seconds: float, sr: int = 32000, shard_size: int = 16) -> Path:
    """n clips of tones + noise (WAV in), packed as FLAC shards at 32 kHz, like `ssondo pack` defaults."""
    rng = np.random.default_rng(0)
    t = np.arange(int(seconds * sr)) / sr
    for i in range(n):
        f0 = 110 * 2 ** (rng.integers(0, 36) / 12)
        x = 0.2 * np.sin(2 * np.pi * f0 * t) * (1 + np.sin(2 * np.pi * rng.uniform(0.2, 3) * t)) / 2
        x += 0.05 * rng.standard_normal(len(t))
        sf.write(root / "audio" / f"clip{i:05d}.wav", x.astype(np.float32), sr, subtype="PCM_16")
    work = root / "work"
    pack([root / "audio"], work, shard_size=shard_size, progress=False, workers=2)
    return work


def reference_extract(
    work: Path, spec: str, options: dict, ts: float, out: Path, batch_clips: int = 8
) -> int:
    """The reference-style loop: per clip load + resample, 8 clips per batch, fp32, one .npz per clip."""
    teacher = build_teacher(spec, device="cpu", **options)
    win, hop = TemporalSupport.parse(ts).in_samples(teacher.sample_rate)
    out.mkdir(parents=True, exist_ok=True)
    n_shards = int(read_clips(work).column("shard").to_numpy().max()) + 1
    batch: list[tuple[str, torch.Tensor]] = []
    done = 0

    def flush() -> None:
        windows = [cut_windows(a, win, hop) for _, a in batch]
        with torch.inference_mode():
            emb = teacher(torch.cat(windows)).mean(dim=1)  # (sum W, D) fp32
        for (key, _), e in zip(batch, emb.split([len(w) for w in windows]), strict=True):
            np.savez(out / f"{key}.npz", emb=e.numpy(), clip=e.mean(dim=0).numpy())
        batch.clear()

    for s in range(n_shards):
        for clip in iter_shard(Workspace(work).shard_path(s)):
            audio = AF.resample(torch.from_numpy(clip.audio), clip.sample_rate, teacher.sample_rate)
            batch.append((clip.key, audio))
            done += 1
            if len(batch) == batch_clips:
                flush()
    if batch:
        flush()
    return done


def du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clips", type=int, default=64)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--ts", type=float, default=1.0)
    ap.add_argument("--teacher", choices=sorted(TEACHERS), default="matpac-small")
    ap.add_argument("--workers", type=int, default=2, help="ssondo's decoding workers")
    ap.add_argument("--threads", type=int, default=0, help="torch threads for both (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    spec, options = TEACHERS[args.teacher]
    windows_per_clip = int(np.ceil(args.seconds / args.ts))
    batch_size = 8 * windows_per_clip  # the same forward size as the reference's 8 clips
    with tempfile.TemporaryDirectory(prefix="ssondo-bench-") as tmp:
        root = Path(tmp)
        (root / "audio").mkdir()
        t0 = time.perf_counter()
        work = make_corpus(root, args.clips, args.seconds)
        print(
            f"corpus: {args.clips} clips x {args.seconds:g} s, FLAC 32 kHz shards of 16 "
            f"({time.perf_counter() - t0:.1f} s to build); teacher {args.teacher}; TS {args.ts:g} s; "
            f"{torch.get_num_threads()} torch threads"
        )

        t0 = time.perf_counter()
        n = reference_extract(work, spec, options, args.ts, root / "npz")
        ref_s = time.perf_counter() - t0
        ref_rate = n / ref_s
        npz_bytes = du(root / "npz")
        print(f"reference (fp32, 8 clips/batch, .npz per clip): {ref_rate:7.2f} clips/s  ({ref_s:.1f} s)")

        rows = []
        for workers in sorted({0, args.workers}):
            shutil.rmtree(work / "cache", ignore_errors=True)
            t0 = time.perf_counter()
            r = extract(
                work,
                spec,
                ts=args.ts,
                device="cpu",
                batch_size=batch_size,
                workers=workers,
                progress=False,
                teacher_options=options,
            )
            call_s = time.perf_counter() - t0
            assert r.cache_complete and r.clips == n
            rows.append((workers, n / call_s, r.steady_clips_per_second, du(r.cache)))
            print(
                f"ssondo extract, {workers} decode workers: {n / call_s:7.2f} clips/s end to end "
                f"({call_s:.1f} s; {r.warmup_seconds:.1f} s to the first batch, then "
                f"{r.steady_clips_per_second:.2f} clips/s)"
            )

    print("\nratios (ssondo / reference, same run):")
    for workers, rate, steady, _ in rows:
        print(
            f"  speed, {workers} workers: {rate / ref_rate:.2f}x end to end, {steady / ref_rate:.2f}x after start-up"
        )
    size = rows[-1][3]
    print(
        f"  storage: {size / n / 1024:.1f} KiB/clip (zarr, float16) vs {npz_bytes / n / 1024:.1f} KiB/clip "
        f"(.npz float32) = {size / npz_bytes:.2f}x the size"
    )


if __name__ == "__main__":
    main()
