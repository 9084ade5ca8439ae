"""Log-mel batches/s delivered to the training step: ssondo's balanced stream vs the reference's loader.

Same clips, same targets, same sampling weights, same batch size and number of workers, both measured
in this run, both ending at what the student consumes: a log-mel batch (B, 1, 128, T) float32 and its
targets (B, D), in the training process.

- ssondo (as `ssondo train` runs it): WebDataset tar shards (PCM_16 WAV inside) + ONE zarr block of
  targets per shard, per-clip repeats from the sampling plan, shuffle windows, int16 audio batches
  assembled in the workers into reused shared-memory buffers (stream.BalancedStream); then, in the
  training process, int16 -> float32 and the log-mel front-end (frontend.StudentFrontEnd, the paper's
  KD log-mel), which is where the trainer computes it: on the device, after the batch is moved there
  (on this CPU-only run the device is the CPU, so the timed loop pays for the mel).
- reference (mirrors training_ssondo/knowledge_distillation_training/{dataset,data_pipeline,config}.py
  of MedAliAdlouni/ssondo): one WAV + one .npz per clip; a map-style Dataset whose __getitem__ reads
  the whole file as float32 (the reference calls torchaudio.load(normalize=True); torchaudio here
  needs torchcodec, so soundfile.read(dtype="float32") stands in: the same int16 / 32768 values for
  PCM_16), averages channels to mono, resamples when the rate differs, pads or trims to the first
  10 s (no random crop), then computes the log-mel IN THE WORKER, on the CPU, per clip: slicing into
  one 10-s segment, MelSpectrogram (win 0.032 s, hop 0.016 s, 128 mels, 50-16000 Hz, center=False,
  Slaney mel scale and norm, power 2), log(x + 0.001), normalise with mean 0 / std 1; loads the
  teacher target `embed` (1, D) float32 from the .npz and squeezes it to (D,), builds the 527-d label
  vector and looks up the clip's cluster label; DataLoader with WeightedRandomSampler over inverse
  cluster-frequency weights (replacement, the same generator), shuffle=False, num_workers as given,
  persistent_workers=True, pin_memory=True, prefetch_factor=3 (the reference's common config) and a
  worker_init_fn seeding numpy from torch's seed. With 0 workers torch refuses persistent_workers
  and prefetch_factor, so they are left out there; pin_memory only acts with CUDA (none here).

The stream alone (int16 audio batches, before the mel) is printed beside, to tell the two costs apart.
Steady state is timed, from the first batch to the last (worker start-up left out of both). The
stream's shuffle window is small here (64 samples per reader, production uses 1000) so that its shard
reads keep happening inside the timed part, and the run draws about two samples per clip, so neither
loader lives off a few cached clips.

    .venv/bin/python benchmarks/loader.py                   # 512 clips of 10 s at 32 kHz, 0 and 2 workers
    .venv/bin/python benchmarks/loader.py --clips 128 --batches 8     # quick
Note: on a warm page cache and a local disk, per-file random access costs far less than on the
network filesystems of GPU clusters; this machine measures the former. On a GPU host ssondo's mel
runs on the GPU, the reference's stays in its CPU workers: this CPU run is the reference's best case.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from torch.utils.data import DataLoader, Dataset, WeightedRandomSampler

from ssondo_cache import cluster, store
from ssondo_cache.manifests import clips_fingerprint, read_clips, write_table
from ssondo_cache.pack import pack
from ssondo_distill.frontend import StudentFrontEnd
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
        # the reference's layout: one `embed` array per clip, float32, (1, D) for a 10-s window
        np.savez(src / f"clip{i:05d}.npz", embed=emb[i].astype(np.float32).mean(0, keepdims=True))
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
    return work, files, weights / weights.sum(), labels


class ReferenceMel(torch.nn.Module):
    """The reference's preprocess: 10-s slice, log-mel (its KD configs' settings), mean 0 / std 1."""

    def __init__(self, sr: int, seconds: float = 10.0) -> None:
        super().__init__()
        import torchaudio

        self.segment = int(seconds * sr)
        win, hop = round(0.032 * sr), round(0.016 * sr)
        self.mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=sr,
            n_fft=win,
            win_length=win,
            hop_length=hop,
            f_min=50,
            f_max=16000,
            n_mels=128,
            power=2.0,
            center=False,
            norm="slaney",
            mel_scale="slaney",
        )

    def forward(self, audio: torch.Tensor) -> torch.Tensor:  # (1, S) -> (n_segments, 128, T)
        n = 1 + (audio.shape[-1] - self.segment) // self.segment
        segments = torch.stack([audio[0, i * self.segment : (i + 1) * self.segment] for i in range(n)])
        return (torch.log(self.mel(segments) + 0.001) - 0.0) / 1.0


class ReferenceDataset(Dataset):
    """The reference's per-clip Dataset (see the module doc): audio, labels, target, cluster label."""

    def __init__(self, files: list[tuple[Path, Path]], clusters: np.ndarray, sr: int, seconds: float) -> None:
        self.files, self.sr, self.seconds = files, sr, seconds
        self.cluster_of = {str(wav)[:-4]: int(c) for (wav, _), c in zip(files, clusters, strict=True)}
        self.preprocess = ReferenceMel(sr, seconds)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        wav, npz = self.files[i]
        x, sr = sf.read(wav, dtype="float32", always_2d=True)
        audio = torch.from_numpy(x.T.copy())  # (channels, S)
        if audio.shape[0] > 1:
            audio = audio.mean(dim=0, keepdim=True)
        if sr != self.sr:
            import torchaudio.functional as AF

            audio = AF.resample(audio, sr, self.sr)
        expected = int(self.seconds * self.sr)
        if audio.shape[-1] < expected:
            audio = torch.nn.functional.pad(audio, (0, expected - audio.shape[-1]))
        audio = audio[:, :expected]
        labels = torch.zeros(527)
        labels[[0]] = 1
        target = torch.from_numpy(np.load(npz)["embed"]).squeeze(0)  # (D,)
        cluster = torch.tensor(self.cluster_of[str(wav)[:-4]], dtype=torch.long)
        return self.preprocess(audio), labels, target, cluster


def _seed_worker(_: int) -> None:
    np.random.seed(int(torch.initial_seed() % 2**32))


def reference_loader(dataset: ReferenceDataset, weights: np.ndarray, n: int, batch_size: int, workers: int):
    """The reference's DataLoader settings (module doc); the worker-only ones only with workers."""
    generator = torch.Generator().manual_seed(42)
    sampler = WeightedRandomSampler(
        torch.from_numpy(weights), num_samples=n, replacement=True, generator=generator
    )
    extra = dict(persistent_workers=True, prefetch_factor=3) if workers else {}
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        sampler=sampler,
        num_workers=workers,
        pin_memory=True,
        worker_init_fn=_seed_worker,
        generator=generator,
        **extra,
    )


def with_mel(batches, frontend: StudentFrontEnd):
    """ssondo's step-side part of the data path: int16 (B, L) -> float32 -> log-mel (B, 1, F, T)."""
    with torch.no_grad():
        for batch in batches:
            yield frontend(batch["audio"].float() / 32768.0), batch["target"]


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
    # the reference's pin_memory=True only acts with CUDA; the module doc says so once
    warnings.filterwarnings("ignore", message=".*'pin_memory' argument is set as true but no accelerator")
    root = a.root or Path(tempfile.mkdtemp(prefix="ssondo-bench-loader-"))
    try:
        t0 = time.perf_counter()
        work, files, weights, clusters = make_data(
            root, a.clips, a.seconds, a.sample_rate, a.dim, a.windows, k=8
        )
        print(
            f"data: {a.clips} clips of {a.seconds} s at {a.sample_rate} Hz (PCM_16 WAV in both layouts), "
            f"targets {a.windows}x{a.dim}; built in {time.perf_counter() - t0:.1f} s"
        )
        frontend = StudentFrontEnd(sample_rate=a.sample_rate)
        dataset = ReferenceDataset(files, clusters, a.sample_rate, a.seconds)
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
                with_mel(BalancedStream(data.view, data.table, cfg).loader(workers), frontend),
                a.batches,
                a.batch_size,
            )
            alone = rate(BalancedStream(data.view, data.table, cfg).loader(workers), a.batches, a.batch_size)
            ref = rate(
                reference_loader(dataset, weights, a.batches * a.batch_size, a.batch_size, workers),
                a.batches,
                a.batch_size,
            )
            ratio = ours / ref
            where = "in the training process" if workers == 0 else f"{workers} worker processes"
            print(
                f"{where}: ssondo stream + step-side mel {ours:7.1f} samples/s, reference loader "
                f"(WAV + .npz per clip, mel in its workers) {ref:7.1f} samples/s -> ratio {ratio:.2f}x "
                f"(ssondo stream alone, int16 audio, no mel: {alone:7.1f} samples/s)"
            )
    finally:
        if a.root is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
