"""Issue 18 item 3: validation-set assembly (sampling.split_holdout picks the clips,
training_data.load_validation reads them) reads what the validation clips need, not the corpus: reads
counted on synthetic tables of AudioSet's layout (1,000 clips a tar shard), no audio, no timing."""

from __future__ import annotations

import numpy as np

import ssondo_distill.training_data as td
from ssondo_distill import sampling

PER_SHARD, K, N_VAL, DIM, SR = 1000, 50, 256, 4, 8000


def _data(n_shards: int) -> td.TrainingData:
    n = n_shards * PER_SHARD
    rng = np.random.default_rng(n_shards)
    clusters = rng.choice(K, n, p=np.arange(1, K + 1) / (K * (K + 1) / 2))  # skewed, as k-means gives
    rows = np.arange(n)
    table = sampling.make_table(
        np.array([f"k{r:07d}" for r in rows], dtype=object), rows, rows // PER_SHARD,
        1.0 / np.bincount(clusters, minlength=K)[clusters], clusters, kind="balanced",
    )  # fmt: skip
    view = td.CorpusView(
        shard_paths=tuple(f"/nowhere/clips-{s:06d}.tar" for s in range(n_shards)),
        cache_path="/nowhere/cache.zarr",
        shard_offsets=tuple(range(0, n + 1, PER_SHARD)),
        sample_rate=SR,
        target="clip",
        crop_samples=SR // 4,
        window_hop=0,
    )
    return td.TrainingData(view, table, "balanced-k50", {}, DIM)


def _reads(monkeypatch, data: td.TrainingData) -> list[tuple[int, np.ndarray]]:
    """(shard, rows) of every segment load_validation asks read_segment for."""
    reads: list[tuple[int, np.ndarray]] = []

    def counted(view, store, table, segment):
        reads.append((segment.shard, table.rows[segment.positions]))
        n = len(segment.positions)
        return [(b"", "wav")] * n, np.zeros((n, DIM), np.float32), None

    monkeypatch.setattr(td, "CacheStore", lambda path: None)
    monkeypatch.setattr(td, "read_segment", counted)
    monkeypatch.setattr(td, "pcm16", lambda raw, ext: (np.zeros(SR // 2, np.int16), SR))
    _, val = sampling.split_holdout(data.table, N_VAL, seed=0)
    out = td.load_validation(data, val)
    assert len(out["row"]) == N_VAL
    return reads


def test_validation_reads_are_bounded_by_the_validation_clips_not_the_corpus(monkeypatch):
    """read_segment parses a shard's tar headers up to its last clip asked for and reads the cache rows
    between its first and last: that work, summed, stays under N_VAL shards' worth whatever N, so per
    corpus clip it falls as N grows (the 10k -> 100k growth measured in scale.md is not in these reads)."""
    work = {}
    for n_shards in (10, 100, 400):
        reads = _reads(monkeypatch, _data(n_shards))
        shards = [s for s, _ in reads]
        assert len(shards) == len(set(shards)) >= 0.9 * min(N_VAL, n_shards)  # each shard once, spread
        parsed = sum(int(r[-1]) - s * PER_SHARD + 1 for s, r in reads)  # tar members up to the last one
        rows = sum(int(r[-1] - r[0]) + 1 for _, r in reads)  # cache rows of the one block read
        assert rows <= parsed <= min(N_VAL, n_shards) * PER_SHARD
        work[n_shards] = parsed / (n_shards * PER_SHARD)
    assert work[100] <= work[10] * 1.05 and work[400] <= work[100] * 1.05, work
