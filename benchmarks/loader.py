"""Samples/s delivered to the training step: ssondo's balanced stream vs a reference-style loader.

Same clips, same targets, same weights, same batch size and number of workers, both measured in
this run:
- ssondo: WebDataset tar shards (WAV inside) + ONE zarr block of targets per shard, per-clip repeats
  from the sampling plan, shuffle windows, batches assembled in the workers into reused
  shared-memory buffers (stream.BalancedStream, as the trainer runs it);
- reference style: one WAV file + one .npz of targets per clip, a map-style Dataset read at random
  with WeightedRandomSampler, default collation.
Both deliver fixed-length audio crops (B, L) and targets (B, D) to the step; neither computes the
mel (the step does, on the device). Steady state is timed, from the first batch to the last
(worker start-up left out of both). The stream's shuffle window is small here (64 samples per
reader, production uses 1000) so that its shard reads keep happening inside the timed part, and
the run draws about two samples per clip, so neither loader lives off a few cached clips.

    .venv/bin/python benchmarks/loader.py                   # 512 clips of 10 s at 32 kHz, 0 and 2 workers
    .venv/bin/python benchmarks/loader.py --clips 128 --batches 8     # quick
Target: ratio >= 5x. Note: on a warm page cache and a local disk, per-file random access costs
far less than on the network filesystems of GPU clusters; this machine measures the former.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from torch.utils.data import DataLoader, Dataset, WeightedRandomSampler

from ssondo_cache import cluster, store
from ssondo_cache.manifests import clips_fingerprint, read_clips, write_table
from ssondo_cache.pack import pack
from ssondo_distill.stream import BalancedStream, StreamConfig
from ssondo_distill.training_data import open_training_data


def make_data(root: Path, n: int, seconds: float, sr: int, dim: int, windows: int, k: int, seed: int = 0):
    """WAV files + .npz targets (reference layout) and the same clips packed + cached (ssondo layout)."""
    rng = np.random.default_rng(seed)
    src = root / "wav"
    src.mkdir(parents=True)
    t = np.arange(int(seconds * sr)) / sr
    emb = rng.standard_normal((n, windows, dim)).astype(np.float16)
    for i in range(n):  # tones + noise: nothing silent, nothing the packer would refuse
        x = 0.3 * np.sin(2 * np.pi * (110 + 7 * i) * t) + 0.05 * rng.standard_normal(len(t))
        sf.write(src / f"clip{i:05d}.wav", x.astype(np.float32), sr, subtype="PCM_16")
        np.savez(
            src / f"clip{i:05d}.npz", emb=emb[i], clip=emb[i].astype(np.float32).mean(0).astype(np.float16)
        )
    work = root / "work"
    pack([src], work, sample_rate=sr, fmt="wav", shard_size=max(8, n // 16), progress=False, workers=1)
    clips = read_clips(work)
    assert clips.num_rows == n, f"pack kept {clips.num_rows} of {n} clips"
    shards = clips.column("shard").to_numpy()
    offsets = [0, *np.cumsum(np.bincount(shards)).tolist()]
    cache = store.create_or_open(
        store.cache_path(work, "bench-000000000000", "ts1-hop1"),
        {
            "teacher": "bench",
            "teacher_id": "bench-000000000000",
            "ts": 1.0,
            "hop": 1.0,
            "window_samples": sr,
            "hop_samples": sr,
            "sample_rate": sr,
            "teacher_sample_rate": sr,
            "clips_fingerprint": clips_fingerprint(clips),
            "n_rows": n,
            "max_windows": windows,
            "embed_dim": dim,
            "shard_offsets": offsets,
        },
    )
    for b in range(cache.n_blocks):
        lo, hi = cache.block_rows(b)
        cache.write_block(
            b, emb[lo:hi], emb[lo:hi].astype(np.float32).mean(1), np.full(hi - lo, windows, np.int32)
        )
    labels = rng.integers(0, k, n).astype(np.int32)
    weights = 1.0 / np.bincount(labels, minlength=k)[labels]
    write_table(
        work / "manifests" / f"balanced-k{k}.parquet",
        cluster.sampling_table(
            clips.column("key").to_pylist(),
            clips.column("row").to_numpy(),
            shards,
            labels,
            np.zeros(n, np.float32),
            weights / weights.sum(),
            {
                "kind": "balanced",
                "teacher_id": "bench-000000000000",
                "clips_fingerprint": clips_fingerprint(clips),
            },
        ),
    )
    files = [(src / f"{key}.wav", src / f"{key}.npz") for key in clips.column("key").to_pylist()]
    return work, files, weights / weights.sum()


class ReferenceDataset(Dataset):
    """One WAV + one .npz per clip, read whole, then a random crop (the usual per-clip loader)."""

    def __init__(self, files: list[tuple[Path, Path]], length: int) -> None:
        self.files, self.length = files, length

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        wav, npz = self.files[i]
        x, _ = sf.read(wav, dtype="float32")
        target = np.load(npz)["clip"].astype(np.float32)
        offset = np.random.randint(0, max(len(x) - self.length, 0) + 1)
        x = x[offset : offset + self.length]
        if len(x) < self.length:
            x = np.pad(x, (0, self.length - len(x)))
        return torch.from_numpy(x), torch.from_numpy(target)


def rate(batches, n_batches: int, batch_size: int) -> float:
    """Steady-state samples/s: from the first batch to the last (worker start-up left out of both)."""
    it = iter(batches)
    next(it)
    t0 = time.perf_counter()
    for _ in range(n_batches - 1):
        next(it)
    return (n_batches - 1) * batch_size / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clips", type=int, default=512)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--sample-rate", type=int, default=32000)
    p.add_argument("--dim", type=int, default=768)
    p.add_argument("--windows", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--batches", type=int, default=32)
    p.add_argument(
        "--shuffle-buffer", type=int, default=64, help="ssondo's shuffle window (samples per reader)"
    )
    p.add_argument(
        "--workers",
        type=lambda t: [int(x) for x in t.split(",")],
        default=[0, 2],
        help="comma-separated data-loader worker counts to measure (0 = in the training process)",
    )
    p.add_argument("--root", type=Path, default=None, help="keep the data here (default: a temporary folder)")
    a = p.parse_args()
    torch.set_num_threads(1)
    root = a.root or Path(tempfile.mkdtemp(prefix="ssondo-bench-loader-"))
    try:
        t0 = time.perf_counter()
        work, files, weights = make_data(root, a.clips, a.seconds, a.sample_rate, a.dim, a.windows, k=8)
        print(
            f"data: {a.clips} clips of {a.seconds} s at {a.sample_rate} Hz (PCM_16 WAV in both layouts), "
            f"targets {a.windows}x{a.dim}; built in {time.perf_counter() - t0:.1f} s"
        )
        length = int(a.seconds * a.sample_rate)
        data = open_training_data(work, "ts1-hop1", "balanced-k8", "clip", a.seconds)
        for workers in a.workers:
            cfg = StreamConfig(
                seed=0,
                steps_per_epoch=a.batches,
                batch_size=a.batch_size,
                workers=max(1, workers),
                reuse_buffers=True,  # like the trainer: done with each batch before the next
                shuffle_buffer=a.shuffle_buffer,
            )
            ours = rate(
                BalancedStream(data.view, data.table, cfg).loader(workers),
                a.batches,
                a.batch_size,
            )
            sampler = WeightedRandomSampler(
                torch.from_numpy(weights), num_samples=a.batches * a.batch_size, replacement=True
            )
            ref = rate(
                DataLoader(
                    ReferenceDataset(files, length),
                    batch_size=a.batch_size,
                    sampler=sampler,
                    num_workers=workers,
                ),
                a.batches,
                a.batch_size,
            )
            ratio = ours / ref
            where = "in the training process" if workers == 0 else f"{workers} worker processes"
            print(
                f"{where}: ssondo stream {ours:7.1f} samples/s, reference-style {ref:7.1f} samples/s "
                f"(WAV + .npz per clip, WeightedRandomSampler) -> ratio {ratio:.2f}x "
                f"(target >= 5x: {'met' if ratio >= 5 else 'NOT met'})"
            )
    finally:
        if a.root is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
