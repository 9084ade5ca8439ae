"""The balanced stream: audio paired with the right cached targets, workers, resume, refusals.

The corpus is packed by `ssondo_cache.pack` and its cache written through the store API with
targets that encode what the audio is: clip r is a sine at ``freq(r)`` Hz whose amplitude steps
up window by window, clip target = (freq, 0, ...), window target j = (freq, amplitude of j, ...).
So every emitted (audio, target) pair can be checked from the audio alone."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from torch.utils.data import DataLoader

from ssondo_cache import cache_index, cluster, store
from ssondo_cache.manifests import clips_fingerprint, read_clips, write_table
from ssondo_cache.pack import pack
from ssondo_cache.shards import CorruptShardError, decode_audio, encode_audio, pcm16
from ssondo_distill import sampling
from ssondo_distill.stream import BalancedStream, StreamConfig
from ssondo_distill.training_data import DataMismatchError, load_validation, open_training_data

SR = 8000
TS = 0.25  # seconds per window
N_WIN = 4  # 1-s clips


def freq(row) -> float:
    return 200.0 + 25.0 * np.asarray(row)


def amplitude(window) -> float:
    return 0.15 * (1 + np.asarray(window))


def make_corpus(
    root: Path,
    n_clips: int = 36,
    shard_size: int = 4,
    dim: int = 8,
    teacher: str = "tiny",
    complete: bool = True,
) -> Path:
    """WORK with packed shards + a cache `<teacher>-000000000000/ts0.25-hop0.25` (see module doc)."""
    src = root / "audio"
    src.mkdir(parents=True)
    t = np.arange(SR) / SR
    for i in range(n_clips):
        env = amplitude(np.minimum(np.arange(SR) // int(TS * SR), N_WIN - 1))
        sf.write(
            src / f"clip{i:03d}.wav",
            (env * np.sin(2 * np.pi * freq(i) * t)).astype(np.float32),
            SR,
            subtype="PCM_16",
        )
    work = root / "work"
    pack([src], work, sample_rate=SR, fmt="wav", shard_size=shard_size, progress=False)
    assert read_clips(work).column("key").to_pylist() == [f"clip{i:03d}" for i in range(n_clips)]
    write_cache(work, teacher, dim, shard_size, complete)
    return work


def write_cache(work: Path, teacher: str, dim: int, shard_size: int, complete: bool = True) -> str:
    """A cache `<teacher>-000000000000/ts0.25-hop0.25` through the store API; returns its name."""
    clips = read_clips(work)
    n_clips = clips.num_rows
    offsets = [0, *np.cumsum(np.bincount(clips.column("shard").to_numpy())).tolist()]
    cache = store.create_or_open(
        store.cache_path(work, f"{teacher}-000000000000", "ts0.25-hop0.25"),
        {
            "teacher": teacher,
            "teacher_id": f"{teacher}-000000000000",
            "ts": TS,
            "hop": TS,
            "window_samples": int(TS * SR),
            "hop_samples": int(TS * SR),
            "sample_rate": SR,
            "teacher_sample_rate": SR,
            "clips_fingerprint": clips_fingerprint(clips),
            "n_rows": n_clips,
            "max_windows": N_WIN,
            "embed_dim": dim,
            "shard_offsets": offsets,
            "zarr_shard_rows": shard_size,
        },
    )
    for block in range(cache.n_blocks - (0 if complete else 1)):
        rows = np.arange(*cache.block_rows(block))
        emb = np.zeros((len(rows), N_WIN, dim), dtype=np.float32)
        emb[:, :, 0] = freq(rows)[:, None] / 1000
        emb[:, :, 1] = amplitude(np.arange(N_WIN))[None, :]
        clip = np.zeros((len(rows), dim), dtype=np.float32)
        clip[:, 0] = freq(rows) / 1000
        clip[:, 2] = rows / 100
        clip[:, 3:] = np.sin(rows[:, None] * np.arange(1, dim - 2)[None, :] * 0.7)  # something to learn
        cache.write_block(block, emb, clip, np.full(len(rows), N_WIN, dtype=np.int32))
    return cache.name


def write_manifest(work: Path, name: str, weights=None, clusters=None, meta=None, keys=None) -> Path:
    clips = read_clips(work)
    n = clips.num_rows
    table = cluster.sampling_table(
        keys or clips.column("key").to_pylist(),
        clips.column("row").to_numpy(),
        clips.column("shard").to_numpy(),
        np.zeros(n, dtype=np.int32) if clusters is None else clusters,
        np.zeros(n, dtype=np.float32),
        np.full(n, 1 / n) if weights is None else weights,
        {
            "kind": "balanced",
            "teacher_id": "tiny-000000000000",
            "clips_fingerprint": clips_fingerprint(clips),
            **(meta or {}),
        },
    )
    path = work / "manifests" / f"{name}.parquet"
    write_table(path, table)
    return path


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return make_corpus(tmp_path_factory.mktemp("stream"))


def dominant_freq(x: np.ndarray) -> float:
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.argmax(spec) * SR / len(x))


def _batches(ds, epoch: int, step: int = 0, num_workers: int = 0) -> list[dict]:
    ds.set_position(epoch, step)
    loader = DataLoader(ds, batch_size=None, num_workers=num_workers)
    return list(loader)


def test_clip_targets_pair_with_their_audio(corpus):
    data = open_training_data(corpus, "ts0.25-hop0.25", "random", "clip", clip_seconds=0.5)
    cfg = StreamConfig(seed=0, steps_per_epoch=9, batch_size=4, workers=2, shuffle_buffer=10)
    batches = _batches(BalancedStream(data.view, data.table, cfg), epoch=1)
    assert [b["step"] for b in batches] == list(range(9))
    rows = torch.cat([b["row"] for b in batches]).numpy()
    assert np.array_equal(np.sort(rows), np.arange(36))  # 36 samples of 36 clips: each exactly once
    assert not np.array_equal(rows, np.sort(rows))  # shuffled
    for b in batches:
        assert (
            b["audio"].shape == (4, SR // 2)
            and b["audio"].dtype == torch.int16
            and b["target"].shape == (4, 8)
        )
        for x, y, r in zip(b["audio"].numpy(), b["target"].numpy(), b["row"].numpy(), strict=True):
            assert y[2] == pytest.approx(r / 100, abs=1e-2)  # target row = audio row
            assert dominant_freq(x) == pytest.approx(y[0] * 1000, abs=3)  # the audio is that clip's


def test_window_targets_pair_with_the_window_audio(corpus):
    data = open_training_data(corpus, "ts0.25-hop0.25", "random", "window", clip_seconds=10.0)
    assert data.view.crop_samples == int(TS * SR)
    cfg = StreamConfig(seed=1, steps_per_epoch=6, batch_size=6, workers=1, shuffle_buffer=36)
    seen_windows = set()
    for b in _batches(BalancedStream(data.view, data.table, cfg), epoch=0):
        for x, y in zip(b["audio"].numpy(), b["target"].numpy(), strict=True):
            assert dominant_freq(x) == pytest.approx(y[0] * 1000, abs=5)
            assert np.sqrt(2 * np.mean((x / 32768.0) ** 2)) == pytest.approx(
                y[1], abs=0.03
            )  # the window the target is for
            seen_windows.add(round(float(y[1]), 2))
    assert len(seen_windows) == N_WIN


def test_dataloader_workers_and_resume_give_the_same_batches(corpus):
    data = open_training_data(corpus, "ts0.25-hop0.25", "random", "clip", clip_seconds=0.5)
    cfg = StreamConfig(
        seed=4, steps_per_epoch=7, batch_size=4, rank=1, world_size=2, workers=2, shuffle_buffer=5
    )
    ds = BalancedStream(data.view, data.table, cfg)
    inline = _batches(ds, epoch=2)
    workers = _batches(ds, epoch=2, num_workers=2)
    resumed = _batches(ds, epoch=2, step=3, num_workers=2)
    assert [b["step"] for b in workers] == list(range(7)) and [b["step"] for b in resumed] == list(
        range(3, 7)
    )
    for a, b in zip(inline[3:], resumed, strict=True):
        assert torch.equal(a["audio"], b["audio"]) and torch.equal(a["target"], b["target"])
    for a, b in zip(inline, workers, strict=True):
        assert torch.equal(a["audio"], b["audio"]) and torch.equal(a["row"], b["row"])
    other_epoch = _batches(ds, epoch=3)
    assert not all(torch.equal(a["row"], b["row"]) for a, b in zip(inline, other_epoch, strict=True))
    # the two ranks read disjoint data in an epoch of 2 x 7 x 4 = 56 samples of 36 clips
    rank0 = BalancedStream(data.view, data.table, StreamConfig(**{**cfg.__dict__, "rank": 0}))
    both = torch.cat([b["row"] for b in inline + _batches(rank0, epoch=2)])
    assert np.array_equal(np.bincount(both.numpy(), minlength=36), ds.plan(2).counts)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_reused_buffers_give_the_same_batches_to_a_consumer_done_with_each(corpus, num_workers):
    data = open_training_data(corpus, "ts0.25-hop0.25", "random", "clip", clip_seconds=0.5)
    cfg = StreamConfig(seed=2, steps_per_epoch=12, batch_size=3, workers=2, shuffle_buffer=6, prefetch=1)
    fresh = _batches(BalancedStream(data.view, data.table, cfg), epoch=0)
    reusing = BalancedStream(data.view, data.table, StreamConfig(**{**cfg.__dict__, "reuse_buffers": True}))
    held, copies = [], []
    for batch in reusing.loader(num_workers):  # like the trainer: done with a batch before the next
        time.sleep(0.02)  # a slow step: the workers run ahead meanwhile
        held.append(batch)
        copies.append({k: v.clone() if torch.is_tensor(v) else v for k, v in batch.items()})
    for a, b in zip(fresh, copies, strict=True):
        assert a["step"] == b["step"]
        for key in ("audio", "target", "cluster", "row"):
            assert torch.equal(a[key], b[key]), key
    # the ring (prefetch + 2 = 3 slots) is really reused: a batch kept too long shows the last
    # batch written into its slot: worker 0's batches are steps 0, 2, .., 10 (slot 0: steps 0
    # and 6); in-process every step takes the next slot (slot 0: steps 0, 3, 6, 9)
    later = 6 if num_workers else 9
    assert torch.equal(held[0]["audio"], copies[later]["audio"])
    assert not torch.equal(held[0]["audio"], copies[0]["audio"])
    with pytest.raises(ValueError, match="planned for 2 workers"):
        reusing.loader(3)


def test_balanced_manifest_drives_the_stream(corpus):
    clusters = np.array([0] * 30 + [1] * 6, dtype=np.int32)
    w = 1.0 / np.bincount(clusters)[clusters]
    path = write_manifest(corpus, "balanced-k2", weights=w / w.sum(), clusters=clusters)
    data = open_training_data(corpus, "ts0.25-hop0.25", "balanced-k2", "clip", clip_seconds=0.5)
    assert data.manifest == str(path) and data.table.cluster_targets() == pytest.approx({0: 0.5, 1: 0.5})
    cfg = StreamConfig(seed=0, steps_per_epoch=10, batch_size=6, workers=1, shuffle_buffer=20)
    clusters_seen = torch.cat([b["cluster"] for b in _batches(BalancedStream(data.view, data.table, cfg), 0)])
    assert np.bincount(clusters_seen.numpy()).tolist() == [30, 30]


def test_validation_clips_are_read_once_and_paired(corpus):
    data = open_training_data(corpus, "ts0.25-hop0.25", "random", "clip", clip_seconds=0.5)
    train, val = sampling.split_holdout(data.table, 6, seed=0)
    v = load_validation(data, val)
    assert v["audio"].shape == (6, SR // 2) and v["target"].shape == (6, 8)
    for x, y in zip(v["audio"].numpy(), v["target"].numpy(), strict=True):
        assert dominant_freq(x) == pytest.approx(y[0] * 1000, abs=3)


def test_refusals_name_what_does_not_belong(corpus, tmp_path):
    name = "ts0.25-hop0.25"
    with pytest.raises(DataMismatchError, match=r"teacher 'tiny'.*teacher 'matpac'"):
        open_training_data(corpus, name, "random", "clip", 0.5, teacher="matpac")
    write_manifest(corpus, "other-teacher", meta={"teacher_id": "m2d-0123456789ab"})
    with pytest.raises(DataMismatchError, match="m2d-0123456789ab.*tiny-000000000000"):
        open_training_data(corpus, name, "other-teacher", "clip", 0.5)
    keys = read_clips(corpus).column("key").to_pylist()
    write_manifest(corpus, "bad-keys", keys=keys[:5] + ["elsewhere"] + keys[6:])
    with pytest.raises(DataMismatchError, match="'elsewhere' at row 5"):
        open_training_data(corpus, name, "bad-keys", "clip", 0.5)
    with pytest.raises(FileNotFoundError, match="ssondo cluster"):
        open_training_data(corpus, name, "balanced-k99", "clip", 0.5)
    partial = make_corpus(tmp_path, n_clips=8, complete=False)
    with pytest.raises(DataMismatchError, match="4 of 8 rows missing"):
        open_training_data(partial, name, "random", "clip", 0.5)


def test_pcm16_matches_the_packed_audio_exactly():
    rng = np.random.default_rng(0)
    pcm = rng.integers(-32768, 32767, 4001, dtype=np.int16)
    for fmt in ("wav", "flac"):
        data = encode_audio(pcm, 16000, fmt)
        got, sr = pcm16(data, fmt)
        assert sr == 16000 and got.dtype == np.int16 and np.array_equal(got, pcm), fmt
        assert np.array_equal(got / 32768.0, decode_audio(data, fmt)[0].astype(np.float64)), fmt


def test_flipped_audio_is_refused_by_the_stream_and_the_validation_set(tmp_path):
    import tarfile

    work = make_corpus(tmp_path, n_clips=8)
    shard = work / "shards" / "clips-000001.tar"
    with tarfile.open(shard) as tar:
        info = tar.getmember("clip005.wav")
    with open(shard, "r+b") as f:  # 400 PCM bytes inverted: the tar stays valid, the audio does not
        f.seek(info.offset_data + info.size // 2)
        data = bytes(b ^ 0xFF for b in f.read(400))
        f.seek(info.offset_data + info.size // 2)
        f.write(data)
    want = read_clips(work).to_pylist()[5]["crc32c"]
    data = open_training_data(work, "ts0.25-hop0.25", "random", "clip", clip_seconds=0.5)
    with pytest.raises(
        CorruptShardError, match=f"{shard}: member clip005.wav has crc32c .*, pack recorded {want}"
    ):
        load_validation(data, np.arange(8))
    cfg = StreamConfig(seed=0, steps_per_epoch=2, batch_size=4, workers=1, shuffle_buffer=8)
    with pytest.raises(CorruptShardError, match="clip005.wav"):
        _batches(BalancedStream(data.view, data.table, cfg), epoch=0)


def test_missing_or_nan_targets_are_refused_before_the_first_step(tmp_path):
    work = make_corpus(tmp_path, n_clips=12)
    name = "ts0.25-hop0.25"
    cache = cache_index.open_cache(work, name)
    a, b = cache.block_rows(1)
    clip = cache.read_clip(a, b)
    emb, n_windows = cache.read_windows(a, b)
    clip[2, 3] = np.nan  # a block that decodes but holds a NaN target
    store.CacheStore(cache.path, mode="r+").write_block(1, emb, clip, n_windows)
    data = open_training_data(work, name, "random", "clip", clip_seconds=0.5)
    with pytest.raises(store.CacheBlockError, match=f"NaN/Inf target.*row {a + 2}"):
        load_validation(data, np.arange(12))
    lost = cache.block_file("clip", 2)
    lost.unlink()  # a deleted zarr shard file reads back as NaN: refused when the data is opened
    with pytest.raises(store.CacheBlockError, match=f"first {lost}: its targets would read back as NaN"):
        open_training_data(work, name, "random", "clip", clip_seconds=0.5)


def test_manifest_of_another_cache_of_the_same_pack_is_refused_unless_allowed(corpus):
    name = "ts0.25-hop0.25"
    theirs = {"cache": "tiny-000000000000/ts0.5-hop0.5", "ts": 0.5, "hop": 0.5}
    write_manifest(corpus, "other-ts", meta={"teacher_id": "tiny-000000000000", **theirs})
    with pytest.raises(DataMismatchError) as err:
        open_training_data(corpus, name, "other-ts", "clip", 0.5)
    msg = str(err.value)
    assert "cache 'tiny-000000000000/ts0.5-hop0.5', ts 0.5, hop 0.5" in msg
    assert (
        "cache 'tiny-000000000000/ts0.25-hop0.25', ts 0.25, hop 0.25" in msg
        and "--allow-foreign-manifest" in msg
    )
    data = open_training_data(corpus, name, "other-ts", "clip", 0.5, allow_foreign_manifest=True)
    assert data.table.kind == "balanced"
    same = {"cache": "tiny-000000000000/ts0.25-hop0.25", "ts": TS, "hop": TS}
    write_manifest(corpus, "same-cache", meta={"teacher_id": "tiny-000000000000", **same})
    open_training_data(corpus, name, "same-cache", "clip", 0.5)


def test_allow_foreign_manifest_reaches_the_config_from_the_command_line():
    from click.testing import CliRunner

    from pipeline.commands.train import train
    from ssondo_distill.config import load_train_config

    assert load_train_config(None, {"allow_foreign_manifest": True}).allow_foreign_manifest
    assert not load_train_config(None, {}).allow_foreign_manifest
    assert "--allow-foreign-manifest" in CliRunner().invoke(train, ["--help"]).output


def test_a_2000_shard_corpus_starts_without_reading_every_shard(monkeypatch):
    """Issue 18 item 4: the epoch plan and the first batch of a 2,000-shard corpus read only the
    segments of the first shuffle window(s), never every shard (reads counted: no audio, no cache)."""
    import ssondo_distill.stream as stream_mod
    from ssondo_distill.training_data import CorpusView

    n_shards, per_shard, dim = 2000, 5, 4
    n = n_shards * per_shard
    rng = np.random.default_rng(0)
    clusters = rng.choice(20, n, p=np.arange(1, 21) / 210)  # skewed cluster sizes, as k-means gives
    weights = 1.0 / np.bincount(clusters, minlength=20)[clusters]  # balanced: small clusters repeat
    rows = np.arange(n)
    table = sampling.make_table(
        np.array([f"k{r:06d}" for r in rows], dtype=object), rows, rows // per_shard, weights, clusters
    )
    view = CorpusView(
        shard_paths=tuple(f"/nowhere/clips-{s:06d}.tar" for s in range(n_shards)),
        cache_path="",
        shard_offsets=tuple(range(0, n + 1, per_shard)),
        sample_rate=SR,
        target="clip",
        crop_samples=SR // 4,
        window_hop=0,
    )
    reads: list[int] = []

    def counted_read(view, store, table, segment):
        reads.append(segment.shard)
        k = len(segment.positions)
        return [(b"", ".wav")] * k, np.zeros((k, dim), np.float32), None

    monkeypatch.setattr(stream_mod, "read_segment", counted_read)
    monkeypatch.setattr(stream_mod, "pcm16", lambda raw, ext: (np.zeros(SR // 2, np.int16), SR))
    cfg = StreamConfig(seed=0, steps_per_epoch=n // 32, batch_size=32, workers=2, shuffle_buffer=200)
    ds = BalancedStream(view, table, cfg)
    ds.plan(0)
    assert reads == []  # planning reads nothing
    batch = next(iter(ds))
    assert batch["audio"].shape == (32, SR // 4)
    # reader 0's first shuffle window (200 samples) holds at most 200 segments, whatever the corpus size
    assert 0 < len(set(reads)) <= len(reads) <= cfg.shuffle_buffer < n_shards
