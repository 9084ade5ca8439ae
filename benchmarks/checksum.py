"""What verifying every packed member's CRC-32C costs on WAV-shard read throughput (target: < 5 %).

    python benchmarks/checksum.py                  # 10-s clips at 32 kHz, 4 shards of 64
    python benchmarks/checksum.py --clips 32 --repeats 3

Two read paths, each timed with and without the check (``shards.audio_member``), in the same run,
in alternating pairs, median of ``--repeats`` (CPU time), from the page cache (the worst case for the check: no disk time
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

import google_crc32c
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


def paired(
    fn: Callable[[list[Path], bool], int], shards: list[Path], repeats: int
) -> tuple[float, float, float]:
    """(unchecked s, checked s, median of the per-pair cost ratios) in CPU seconds of this process:
    pairs run back to back in alternating order, so a busy shared machine (the wall clock of two
    cores shared by five jobs varied 20 % between identical runs) hits both sides of a pair alike."""
    plain, checked, ratios = [], [], []
    for r in range(repeats):
        pair = {}
        for check in (False, True) if r % 2 == 0 else (True, False):
            t0 = time.process_time()
            fn(shards, check)
            pair[check] = time.process_time() - t0
        plain.append(pair[False])
        checked.append(pair[True])
        ratios.append(pair[True] / pair[False])
    return float(np.median(plain)), float(np.median(checked)), float(np.median(ratios))


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
        t0 = time.process_time()
        for _ in range(args.repeats):
            member_checksum(blob)
        t_crc = (time.process_time() - t0) / args.repeats
        print(f"{n_clips} WAV clips of {args.seconds:g} s at {args.sample_rate} Hz, {size / 2**20:.0f} MiB")
        print(
            f"crc32c alone: {len(blob) / t_crc / 1e9:.2f} GB/s (google-crc32c {google_crc32c.implementation})"
        )
        for name, fn in (("extract", extract_path), ("train", train_path)):
            plain, checked, ratio = paired(fn, shards, args.repeats)
            print(
                f"{name:8s} read: {n_clips / plain:8.0f} clips/s unchecked, {n_clips / checked:8.0f} clips/s "
                f"checked (CPU time, median of {args.repeats}): cost {100 * (ratio - 1):+.1f} %"
            )


if __name__ == "__main__":
    main()
