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
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from ssondo_cache.shards import pcm16
from ssondo_cache.store import CacheStore
from ssondo_distill import sampling
from ssondo_distill.training_data import CorpusView, DataMismatchError, read_segment


@dataclass(frozen=True)
class StreamConfig:
    seed: int
    steps_per_epoch: int
    batch_size: int  # per rank
    rank: int = 0
    world_size: int = 1
    workers: int = 1  # readers per rank (= DataLoader workers, or emulated in-process)
    shuffle_buffer: int = 1000
    prefetch: int = 2  # batches each DataLoader worker prepares ahead (its prefetch_factor)
    # Each worker fills its batches into a ring of prefetch + 2 shared-memory buffers instead of
    # new shared memory per batch: the page faults of fresh shared memory (20 MB per batch of
    # 10-s clips) were the workers' main cost, 4x slower than reading. A batch is then
    # overwritten prefetch + 2 batches of its worker later, so set it only for a consumer that is
    # done with a batch when it asks for the next one, with ``loader()`` (the trainer's loop). In
    # the training process (num_workers=0) the batches cycle through such a ring too.
    reuse_buffers: bool = False


class BalancedStream(IterableDataset):
    """Batches for one rank: ``{"audio": (B, L) int16 PCM (the step scales it by 1/32768 on the
    device: half the bytes through the worker queues), "target": (B, D) float32, "cluster": (B,),
    "row": (B,), "epoch": int, "step": int}``, step by step from ``set_position(epoch, step)``
    to the end of the epoch.

    Use with ``loader()`` (or ``DataLoader(batch_size=None, num_workers=cfg.workers or 0)``):
    DataLoader worker j serves the steps s with (s - start) % workers == j, which is the round
    robin the DataLoader does. With num_workers=0 the readers are interleaved in-process, giving
    the same batches."""

    def __init__(self, view: CorpusView, table: sampling.SamplingTable, cfg: StreamConfig) -> None:
        super().__init__()
        if not 0 <= cfg.rank < cfg.world_size or cfg.workers < 1:
            raise ValueError(f"bad rank/world/workers: {cfg.rank}/{cfg.world_size}/{cfg.workers}")
        self.view, self.table, self.cfg = view, table, cfg
        self.epoch, self.start_step = 0, 0
        self._plans: dict[int, sampling.EpochPlan] = {}
        self._ring: tuple[torch.Tensor, ...] | None = None  # made where it is used, on first use

    def __getstate__(self) -> dict[str, Any]:  # a spawned worker makes its own (shared) ring
        return {**self.__dict__, "_ring": None}

    def loader(self, num_workers: int, **kwargs: Any) -> DataLoader:
        """The DataLoader this stream is planned for: ``num_workers`` 0 or ``cfg.workers``, the
        configured prefetch (which the ring of reused buffers relies on)."""
        if num_workers not in (0, self.cfg.workers):
            raise ValueError(f"stream planned for {self.cfg.workers} workers, not {num_workers} (or 0)")
        return DataLoader(
            self,
            batch_size=None,
            num_workers=num_workers,
            prefetch_factor=self.cfg.prefetch if num_workers else None,
            **kwargs,
        )

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
                    shuffle_buffer=self.cfg.shuffle_buffer,
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
        # opened in the worker process; no cache: audio only (MATPAC pretraining, ssondo_distill/pretrain)
        store = CacheStore(self.view.cache_path) if self.view.cache_path else None
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
                loaded[s] = read_segment(self.view, store, self.table, segments[s])
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
        audio_t, target_t, ids_t = self._buffers(len(batch), len(batch[0][2]), step)
        audio, target, ids = audio_t.numpy(), target_t.numpy(), ids_t.numpy()
        for i, (pcm, offset, vector, cluster, row) in enumerate(batch):
            crop = pcm[offset : offset + self.view.crop_samples]
            audio[i, : len(crop)] = crop
            audio[i, len(crop) :] = 0  # zero padding
            target[i], ids[0, i], ids[1, i] = vector, cluster, row
        return {
            "audio": audio_t,
            "target": target_t,
            "cluster": ids_t[0],
            "row": ids_t[1],
            "epoch": epoch,
            "step": step,
        }

    def _buffers(self, n: int, dim: int, step: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(audio, target, cluster+row) tensors to fill for batch ``step``: a slot of the ring when
        ``cfg.reuse_buffers``, else new ones; in shared memory in a DataLoader worker, so that the
        batch leaves the worker without a copy."""
        worker = get_worker_info() is not None
        shapes = (
            ((n, self.view.crop_samples), torch.int16),
            ((n, dim), torch.float32),
            ((2, n), torch.int64),
        )
        if not self.cfg.reuse_buffers:
            fresh = tuple(torch.empty(shape, dtype=dtype) for shape, dtype in shapes)
            return tuple(t.share_memory_() for t in fresh) if worker else fresh  # type: ignore[return-value]
        ring = self.cfg.prefetch + 2  # see StreamConfig.reuse_buffers
        if self._ring is None or self._ring[0].is_shared() != worker:  # one per worker process
            self._ring = tuple(torch.zeros((ring, *shape), dtype=dtype) for shape, dtype in shapes)
            if worker:
                self._ring = tuple(t.share_memory_() for t in self._ring)
        # a worker serves every cfg.workers-th step: consecutive batches of it take consecutive slots
        slot = (step // self.cfg.workers if worker else step) % ring
        return tuple(t[slot] for t in self._ring)  # type: ignore[return-value]
