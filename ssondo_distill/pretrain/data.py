"""Pretraining audio: the packed shards of WORK read by the student trainer's stream without a teacher
cache (``CorpusView.cache_path`` empty: targets are (n, 0)), uniform over clips, random crops of the
audio one MATPAC chunk needs; resampled to 16 kHz on the device."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ssondo_cache.extract_items import Resampler
from ssondo_cache.manifests import clips_fingerprint, read_clips
from ssondo_cache.teachers.frontends import MATPAC_FRONTEND
from ssondo_cache.windows import resampled_length
from ssondo_cache.workspace import Workspace
from ssondo_distill import sampling
from ssondo_distill.training_data import CorpusView, DataMismatchError


@dataclass(frozen=True)
class AudioCorpus:
    view: CorpusView
    table: sampling.SamplingTable
    clips_fingerprint: str

    @property
    def sample_rate(self) -> int:
        return self.view.sample_rate

    def resampler(self) -> Resampler:
        return Resampler(self.view.sample_rate, MATPAC_FRONTEND.sample_rate)


def chunk_samples(frames: int, sample_rate: int) -> int:
    """Samples at ``sample_rate`` whose 16-kHz version gives ``frames`` MATPAC log-mel frames
    (no centring: n_fft + (frames - 1) hop samples)."""
    fe = MATPAC_FRONTEND
    need = fe.n_fft + (frames - 1) * fe.hop_length
    n = -(-need * sample_rate // fe.sample_rate)
    while resampled_length(n, sample_rate, fe.sample_rate) < need:
        n += 1
    return n


def open_audio_corpus(work: str | Path, frames: int) -> AudioCorpus:
    """Every packed clip of ``work`` (clips manifest + tar shards), cropped for ``frames`` frames."""
    clips = read_clips(work)  # a clear error when WORK is not packed
    rates = np.unique(clips.column("sample_rate").to_numpy())
    if len(rates) != 1:
        raise DataMismatchError(f"{Workspace(work).clips_manifest}: clips at several sample rates {rates}")
    shards = clips.column("shard").to_numpy()
    counts = np.bincount(shards)
    ws = Workspace(work)
    view = CorpusView(
        shard_paths=tuple(str(ws.shard_path(s)) for s in range(len(counts))),
        cache_path="",  # no teacher targets
        shard_offsets=tuple(int(x) for x in np.concatenate([[0], np.cumsum(counts)])),
        sample_rate=int(rates[0]),
        target="clip",
        crop_samples=chunk_samples(frames, int(rates[0])),
        window_hop=0,
    )
    missing = [p for p in view.shard_paths if not Path(p).is_file()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} tar shard(s) missing, first {missing[0]}")
    table = sampling.make_table(
        clips.column("key").to_pylist(), clips.column("row").to_numpy(), shards, kind="random"
    )
    return AudioCorpus(view, table, clips_fingerprint(clips))
