"""The training stream: WebDataset tar shards paired with cached teacher targets, in the balanced
order planned by ``sampling.py``.

Per reader (one DataLoader worker of one rank), per epoch:
    plan segments (shard, clips, repeats)      sampling.plan_epoch: explicit node + worker split
    -> shuffle windows of emitted samples      sampling.reader_stream (encoded audio is shuffled,
                                                 decoding happens after: a window holds no decoded audio)
    -> per segment: ONE target block per tar shard (CacheStore.read_clip / read_windows, rows in
       tar order) + the tar's members (memory-mapped, see ssondo_cache.shards.tar_clips), paired by position, checked by key
    -> decode, random crop / zero pad to a fixed length (or the audio of one TS window)
    -> batches of ``batch_size`` dicts of tensors, tagged with their step
The stream of step s of epoch e is a pure function of (seed, e, s): resuming mid-epoch skips
whole shuffle windows without reading them.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.compute as pc
import torch
from torch.utils.data import IterableDataset, get_worker_info

from ssondo_cache.cluster import read_sampling_manifest
from ssondo_cache.manifests import read_clips
from ssondo_cache.shards import FORMATS, pcm16, tar_clips
from ssondo_cache.store import CacheStore, open_cache
from ssondo_cache.workspace import Workspace
from ssondo_distill import sampling


class DataMismatchError(ValueError):
    """Cache, manifest and shards that do not belong together."""


@dataclass(frozen=True)
class CorpusView:
    """What the readers need to find audio and targets (picklable: paths, not open handles)."""

    shard_paths: tuple[str, ...]
    cache_path: str
    shard_offsets: tuple[int, ...]  # rows of tar shard s: offsets[s]:offsets[s+1]
    sample_rate: int  # of the audio in the shards
    target: str  # clip | window
    crop_samples: int  # emitted audio length
    window_hop: int  # samples between TS windows (target=window)

    def shard_rows(self, shard: int) -> tuple[int, int]:
        return self.shard_offsets[shard], self.shard_offsets[shard + 1]


@dataclass(frozen=True)
class TrainingData:
    """A checked (cache, manifest, shards) triple, ready to stream."""

    view: CorpusView
    table: sampling.SamplingTable  # every clip of the manifest (training + held out)
    manifest: str  # "random" or the manifest path
    cache_attrs: dict[str, Any]
    embed_dim: int


def resolve_manifest(work: str | Path, manifest: str) -> Path | None:
    """``random`` -> None (uniform), a bare name -> WORK/manifests/<name>.parquet, else a path."""
    if manifest == "random":
        return None
    path = Path(manifest)
    if path.suffix != ".parquet" and "/" not in manifest:
        path = Workspace(work).manifests_dir / f"{manifest}.parquet"
    return path


def open_training_data(
    work: str | Path, cache: str, manifest: str, target: str, clip_seconds: float, teacher: str | None = None
) -> TrainingData:
    """Open and cross-check the cache, the sampling manifest and the packed shards of ``work``."""
    store = open_cache(work, cache)  # refuses a cache made from another clips manifest
    attrs = store.attrs
    if teacher is not None and attrs.get("teacher") != teacher:
        raise DataMismatchError(
            f"cache {store.name} holds teacher {attrs.get('teacher')!r} embeddings; this "
            f"configuration distils teacher {teacher!r}"
        )
    if not store.is_complete():
        raise DataMismatchError(
            f"cache {store.name} is not complete: {store.missing_rows()} of {store.n_rows} "
            "rows missing; finish `ssondo extract` first"
        )
    clips = read_clips(work)
    keys = np.asarray(clips.column("key").to_pylist(), dtype=object)
    path = resolve_manifest(work, manifest)
    if path is None:
        table = sampling.make_table(
            keys,
            clips.column("row").to_numpy(),
            clips.column("shard").to_numpy(),
            kind="random",
            meta={"kind": "random"},
        )
    else:
        table = _manifest_table(path, keys, clips.column("shard").to_numpy(), attrs, store.name)
    sample_rate = int(attrs["sample_rate"])
    if target == "window":
        if attrs.get("ts") == "full":
            raise DataMismatchError(f"cache {store.name} has one full-clip window per clip: use target=clip")
        crop, hop = int(attrs["window_samples"]), int(attrs["hop_samples"])
        if attrs.get("teacher_sample_rate") != sample_rate:  # windows were cut at the teacher's rate
            crop, hop = round(float(attrs["ts"]) * sample_rate), round(float(attrs["hop"]) * sample_rate)
    else:
        crop, hop = round(clip_seconds * sample_rate), 0
    ws = Workspace(work)
    view = CorpusView(
        shard_paths=tuple(str(ws.shard_path(s)) for s in range(store.n_shards)),
        cache_path=str(store.path),
        shard_offsets=tuple(int(store.shard_rows(s)[0]) for s in range(store.n_shards)) + (store.n_rows,),
        sample_rate=sample_rate,
        target=target,
        crop_samples=crop,
        window_hop=hop,
    )
    missing = [p for p in view.shard_paths if not Path(p).is_file()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} tar shard(s) missing, first {missing[0]}")
    return TrainingData(view, table, "random" if path is None else str(path), attrs, store.embed_dim)


def _manifest_table(
    path: Path, keys: np.ndarray, shard_of_row: np.ndarray, attrs: dict, cache_name: str
) -> sampling.SamplingTable:
    table, meta = read_sampling_manifest(path)
    for field, have in (
        ("teacher_id", attrs.get("teacher_id")),
        ("clips_fingerprint", attrs.get("clips_fingerprint")),
    ):
        if meta.get(field) is not None and meta[field] != have:
            raise DataMismatchError(
                f"manifest {path} was built for {field} {meta[field]!r}, but cache "
                f"{cache_name} has {field} {have!r}: they do not belong together"
            )
    rows = table.column("row").to_numpy()
    if "window" in table.column_names or len(np.unique(rows)) != len(rows):
        raise DataMismatchError(
            f"manifest {path} has one row per window; training samples clips: cluster with --level clip"
        )
    if len(rows) and (rows.min() < 0 or rows.max() >= len(keys)):
        raise DataMismatchError(
            f"manifest {path} points at rows up to {rows.max()}; the shards hold {len(keys)}"
        )
    mkeys = np.asarray(table.column("key").to_pylist(), dtype=object)
    bad = np.flatnonzero(keys[rows] != mkeys)
    if len(bad):
        raise DataMismatchError(
            f"manifest {path}: {len(bad)} key(s) are not in the shards at their rows, first "
            f"{mkeys[bad[0]]!r} at row {rows[bad[0]]} (shards have {keys[rows[bad[0]]]!r})"
        )
    shards = table.column("shard").to_numpy()
    moved = np.flatnonzero(shard_of_row[rows] != shards)
    if len(moved):
        raise DataMismatchError(
            f"manifest {path}: row {rows[moved[0]]} is in tar shard {shard_of_row[rows[moved[0]]]}, "
            f"the manifest says {shards[moved[0]]} ({len(moved)} such rows)"
        )
    if (
        pc.any(pc.is_null(table.column("cluster"))).as_py()
        or pc.any(pc.is_null(table.column("weight"))).as_py()
    ):
        raise DataMismatchError(f"manifest {path} has clips without a cluster or a weight")
    weights = table.column("weight").to_numpy()
    clusters = table.column("cluster").to_numpy()
    return sampling.make_table(
        mkeys, rows, shards, weights, clusters, kind=str(meta.get("kind", "balanced")), meta=meta
    )


# ---------------------------------------------------------------- reading one segment


def _read_segment(
    view: CorpusView, store: CacheStore, table: sampling.SamplingTable, segment: sampling.Segment
) -> tuple[list[tuple[memoryview, str]], np.ndarray, np.ndarray | None]:
    """Audio bytes of the segment's clips (tar order) and their targets, from one block read.

    Returns (audio [(bytes, ext)] per item, targets (n, D) or (n, W, D) float32, n_windows (n,) or None)."""
    start, stop = view.shard_rows(segment.shard)
    rows = table.rows[segment.positions]
    if rows[0] < start or rows[-1] >= stop:
        raise DataMismatchError(
            f"manifest rows {rows[0]}..{rows[-1]} are not in tar shard {segment.shard} "
            f"(rows {start}..{stop - 1} in the cache)"
        )
    lo, hi = int(rows[0]), int(rows[-1]) + 1
    if view.target == "window":
        targets, n_windows = store.read_windows(lo, hi)
    else:
        targets, n_windows = store.read_clip(lo, hi), None
    want = {int(r) - start: i for i, r in enumerate(rows)}  # index in tar -> item
    audio: list[tuple[memoryview, str] | None] = [None] * len(rows)
    url = view.shard_paths[segment.shard]
    for index, key, members in tar_clips(url, stop=hi - start):
        item = want.get(index)
        if item is None:
            continue
        if key != table.keys[segment.positions[item]]:
            raise DataMismatchError(
                f"{url}: clip {index} is {key!r}, the manifest says row {start + index} is "
                f"{table.keys[segment.positions[item]]!r}: shards and manifest do not belong together"
            )
        ext = next((e for e in FORMATS if e in members), None)
        if ext is None:
            raise DataMismatchError(f"{url}: clip {key!r} has no audio member (has {sorted(members)})")
        audio[item] = (members[ext], ext)
    if any(a is None for a in audio):
        raise DataMismatchError(f"{url} ends before row {hi - 1}: the shard is shorter than the cache says")
    return audio, targets[rows - lo], None if n_windows is None else n_windows[rows - lo]  # type: ignore[return-value]


def fit_length(x: np.ndarray, length: int, offset: int) -> np.ndarray:
    """x[offset:offset+length], zero-padded at the end when too short."""
    out = x[offset : offset + length]
    return out if len(out) == length else np.pad(out, (0, length - len(out)))


# ---------------------------------------------------------------- the dataset


@dataclass(frozen=True)
class StreamConfig:
    seed: int
    steps_per_epoch: int
    batch_size: int  # per rank
    rank: int = 0
    world_size: int = 1
    workers: int = 1  # readers per rank (= DataLoader workers, or emulated in-process)
    shuffle_buffer: int = 1000


class BalancedStream(IterableDataset):
    """Batches for one rank: ``{"audio": (B, L) int16 PCM (the step scales it by 1/32768 on the
    device: half the bytes through the worker queues), "target": (B, D) float32, "cluster": (B,),
    "row": (B,), "epoch": int, "step": int}``, step by step from ``set_position(epoch, step)``
    to the end of the epoch.

    Use with ``DataLoader(batch_size=None, num_workers=cfg.workers or 0)``: DataLoader worker j
    serves the steps s with (s - start) % workers == j, which is the round robin the DataLoader
    does. With num_workers=0 the readers are interleaved in-process, giving the same batches."""

    def __init__(self, view: CorpusView, table: sampling.SamplingTable, cfg: StreamConfig) -> None:
        super().__init__()
        if not 0 <= cfg.rank < cfg.world_size or cfg.workers < 1:
            raise ValueError(f"bad rank/world/workers: {cfg.rank}/{cfg.world_size}/{cfg.workers}")
        self.view, self.table, self.cfg = view, table, cfg
        self.epoch, self.start_step = 0, 0
        self._plans: dict[int, sampling.EpochPlan] = {}

    def set_position(self, epoch: int, step: int = 0) -> None:
        if not 0 <= step < self.cfg.steps_per_epoch:
            raise ValueError(f"step {step} outside epoch of {self.cfg.steps_per_epoch} steps")
        self.epoch, self.start_step = int(epoch), int(step)

    def plan(self, epoch: int) -> sampling.EpochPlan:
        if epoch not in self._plans:
            self._plans = {
                epoch: sampling.plan_epoch(
                    self.table,
                    seed=self.cfg.seed,
                    epoch=epoch,
                    steps=self.cfg.steps_per_epoch,
                    batch_size=self.cfg.batch_size,
                    world_size=self.cfg.world_size,
                    workers=self.cfg.workers,
                )
            }
        return self._plans[epoch]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        workers, start = self.cfg.workers, self.start_step
        if info is not None:
            if info.num_workers != workers:
                raise ValueError(
                    f"stream planned for {workers} reader(s) per rank, DataLoader has "
                    f"{info.num_workers} workers: use the same number (or 0)"
                )
            yield from self.reader_batches((info.id + start) % workers)
            return
        readers = {w: self.reader_batches(w) for w in range(workers)}  # in-process round robin
        for step in range(start, self.cfg.steps_per_epoch):
            yield next(readers[step % workers])

    def reader_batches(self, worker: int) -> Iterator[dict[str, Any]]:
        """Batches of reader ``worker`` of this rank, from ``start_step`` to the end of the epoch."""
        cfg, epoch = self.cfg, self.epoch
        plan = self.plan(epoch)
        reader = cfg.rank * cfg.workers + worker
        done = len(range(worker, self.start_step, cfg.workers))  # batches this reader already gave
        segments = plan.readers[reader]
        store = CacheStore(self.view.cache_path)  # opened in the worker process
        loaded: dict[int, tuple] = {}
        batch: list[tuple[np.ndarray, np.ndarray, int, int]] = []
        k = done
        for window, drop, draws in sampling.reader_stream(
            segments,
            seed=cfg.seed,
            epoch=epoch,
            reader=reader,
            shuffle_buffer=cfg.shuffle_buffer,
            skip=done * cfg.batch_size,
        ):
            need = {s for s, _ in draws[drop:]}
            loaded = {s: v for s, v in loaded.items() if s >= min(need)}  # read order: older ones are done
            for s in sorted(need - set(loaded)):
                loaded[s] = _read_segment(self.view, store, self.table, segments[s])
            u = sampling.crop_rng(seed=cfg.seed, epoch=epoch, reader=reader, window=window).random(
                (len(draws), 2)
            )
            for j in range(drop, len(draws)):
                s, i = draws[j]
                batch.append(self._sample(loaded[s], i, u[j], segments[s].positions[i]))
                if len(batch) == cfg.batch_size:
                    yield self._collate(batch, epoch, worker + k * cfg.workers)
                    batch, k = [], k + 1
        if batch or k != plan.batches[reader]:
            raise RuntimeError(
                f"reader {reader} gave {k} batches (+{len(batch)} samples), planned "
                f"{plan.batches[reader]}: sampling plan and stream disagree"
            )

    def _sample(self, segment_data: tuple, item: int, u: np.ndarray, position: int):
        """(int16 audio (n,), crop offset, target, cluster, row) of one emitted sample."""
        audio_items, targets, n_windows = segment_data
        pcm, sr = pcm16(*audio_items[item])
        if sr != self.view.sample_rate:
            raise DataMismatchError(
                f"clip at row {self.table.rows[position]} is at {sr} Hz, the cache says "
                f"{self.view.sample_rate}"
            )
        if n_windows is None:  # clip target: random crop of the clip
            offset = int(u[0] * (max(len(pcm) - self.view.crop_samples, 0) + 1))
            target = targets[item]
        else:  # window target: the audio of one random valid TS window
            w = int(u[1] * max(int(n_windows[item]), 1))
            offset, target = w * self.view.window_hop, targets[item, w]
        return pcm, offset, target, int(self.table.clusters[position]), int(self.table.rows[position])

    def _collate(self, batch: list, epoch: int, step: int) -> dict[str, Any]:
        audio_t = torch.empty((len(batch), self.view.crop_samples), dtype=torch.int16)
        if get_worker_info() is not None:  # filled in place in shared memory: no copy on the way out
            audio_t.share_memory_()
        audio = audio_t.numpy()
        for i, (pcm, offset, *_) in enumerate(batch):
            crop = pcm[offset : offset + self.view.crop_samples]
            audio[i, : len(crop)] = crop
            audio[i, len(crop) :] = 0  # zero padding
        _, _, target, cluster, row = zip(*batch, strict=True)
        return {
            "audio": audio_t,
            "target": torch.from_numpy(np.stack(target)),
            "cluster": torch.tensor(cluster),
            "row": torch.tensor(row),
            "epoch": epoch,
            "step": step,
        }


def target_statistics(data: TrainingData, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std (each (D,), float64) of the clip embeddings of the clips at ``positions`` of
    the sampling table, read one block per tar shard. Clip-level statistics serve window targets
    too. A constant dimension gets std 1 (nothing to scale)."""
    store = CacheStore(data.view.cache_path)
    rows = np.sort(data.table.rows[positions])
    total = np.zeros(data.embed_dim)
    squares = np.zeros(data.embed_dim)
    for shard in np.unique(data.table.shards[positions]):
        start, stop = data.view.shard_rows(int(shard))
        mine = rows[(rows >= start) & (rows < stop)]
        block = store.read_clip(int(mine[0]), int(mine[-1]) + 1).astype(np.float64)[mine - mine[0]]
        total += block.sum(0)
        squares += np.square(block).sum(0)
    n = len(rows)
    mean = total / n
    std = np.sqrt(np.maximum(squares / n - np.square(mean), 0.0))
    return mean, np.where(std > 1e-6, std, 1.0)


def load_validation(data: TrainingData, positions: np.ndarray) -> dict[str, torch.Tensor]:
    """The held-out clips, read once: fixed crops from the start of each clip (window 0 for
    target=window). ``{"audio": (n, L) int16, "target": (n, D), "row": (n,)}``."""
    if len(positions) == 0:
        return {}
    view, table = data.view, data.table
    store = CacheStore(view.cache_path)
    audio, target = [], []
    for shard in np.unique(table.shards[positions]):
        pos = positions[table.shards[positions] == shard]
        seg = sampling.Segment(int(shard), pos, np.ones(len(pos), dtype=np.int64))
        items, targets, n_windows = _read_segment(view, store, table, seg)
        for i, (raw, ext) in enumerate(items):
            audio.append(fit_length(pcm16(raw, ext)[0], view.crop_samples, 0))
            target.append(targets[i] if n_windows is None else targets[i, 0])
    return {
        "audio": torch.from_numpy(np.stack(audio)),
        "target": torch.from_numpy(np.stack(target)),
        "row": torch.from_numpy(table.rows[positions]),
    }
