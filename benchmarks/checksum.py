"""What verifying every packed member's CRC-32C costs on WAV-shard read throughput (target: < 5 %).

    python benchmarks/checksum.py                  # 10-s clips at 32 kHz, 4 shards of 64
    python benchmarks/checksum.py --clips 32 --repeats 3

Two read paths, each timed with and without the check (``shards.audio_member``), in the same run,
interleaved, best of ``--repeats``, from the page cache (the worst case for the check: no disk time
to hide behind):
- extract: ``iter_members`` + soundfile decode to int16 (what extraction's workers do);
- train:   ``tar_clips`` (memory-mapped) + the ``pcm16`` view + the float conversion of a full
           10-s crop (what the training stream does with clip_seconds=10).
"""

from __future__ import annotations

import argparse
import io
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import soundfile as sf

from ssondo_cache.shards import (
    FORMATS,
    audio_member,
    encode_audio,
    iter_members,
    member_checksum,
    pcm16,
    tar_clips,
    write_shard_file,
)


def make_shards(root: Path, n_shards: int, clips: int, seconds: float, sr: int) -> list[Path]:
    rng = np.random.default_rng(0)
    paths = []
    for s in range(n_shards):
        members = []
        for i in range(clips):
            pcm = (rng.standard_normal(int(seconds * sr)) * 3000).astype(np.int16)
            data = encode_audio(pcm, sr, "wav")
            key = f"s{s}c{i:04d}"
            members.append((key, data, "wav", {"key": key, "crc32c": member_checksum(data)}))
        paths.append(root / f"clips-{s:06d}.tar")
        write_shard_file(paths[-1], members)
    return paths


def extract_path(shards: list[Path], check: bool) -> int:
    n = 0
    for path in shards:
        for key, group in iter_members(path):
            if check:
                ext, data, _ = audio_member(path, key, group)
            else:
                ext = next(e for e in FORMATS if e in group)
                data = group[ext]
            with sf.SoundFile(io.BytesIO(data)) as f:
                n += len(f.read(dtype="int16"))
    return n


def train_path(shards: list[Path], check: bool) -> int:
    n = 0
    for path in shards:
        for _, key, group in tar_clips(str(path), stop=1 << 30):
            if check:
                ext, data, _ = audio_member(path, key, group)
            else:
                ext = next(e for e in FORMATS if e in group)
                data = group[ext]
            x, _ = pcm16(data, ext)
            n += len(x.astype(np.float32))  # the crop the stream converts (touches every sample)
    return n


def best(fn: Callable[[], int], repeats: int) -> tuple[float, int]:
    times, out = [], 0
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--clips", type=int, default=64, help="clips per shard")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--sample-rate", type=int, default=32000)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        shards = make_shards(Path(tmp), args.shards, args.clips, args.seconds, args.sample_rate)
        size = sum(p.stat().st_size for p in shards)
        n_clips = args.shards * args.clips
        blob = shards[0].read_bytes()
        t_crc, _ = best(lambda: len(member_checksum(blob)), args.repeats)
        print(f"{n_clips} WAV clips of {args.seconds:g} s at {args.sample_rate} Hz, {size / 2**20:.0f} MiB")
        print(f"crc32c alone: {len(blob) / t_crc / 1e9:.2f} GB/s")
        for name, fn in (("extract", extract_path), ("train", train_path)):
            results = {}
            for _ in range(args.repeats):  # interleaved: drift on a shared machine hits both alike
                for check in (False, True):
                    t, _ = best(lambda fn=fn, check=check: fn(shards, check), 1)
                    results[check] = min(results.get(check, float("inf")), t)
            plain, checked = n_clips / results[False], n_clips / results[True]
            print(
                f"{name:8s} read: {plain:8.0f} clips/s unchecked, {checked:8.0f} clips/s checked: "
                f"cost {100 * (results[True] / results[False] - 1):+.1f} %"
            )


if __name__ == "__main__":
    main()
