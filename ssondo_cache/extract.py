"""Run a teacher once over the packed corpus into the zarr cache (see store.py), resumably.

Data path:
  DataLoader workers (spawn)          main process, on the device
  tar shard -> decode -> item    ->   [resample] -> cut TS windows -> teacher (bf16 autocast on CUDA)
  (consecutive clips of ONE tar       -> mean over frames = window embeddings (W, D)
   shard, int16 or resampled f32)     -> float32 mean over valid windows = clip embedding
                                      -> block complete: write it whole (background thread), mark done
Work is split by block (= tar shard when packing kept shards full): rank r of w owns blocks
k % w == r; of those, a process computes the blocks no other job on the workspace has claimed
(``block_feed``: a double-submitted job splits the work instead of repeating it), and its DataLoader
workers take whole blocks from a queue.

Determinism: what goes into each teacher forward is planned from the manifest alone, per tar
shard (``extract_items.plan_items``), so a clip meets the same batch-mates whatever the number of
workers, processes or ranks, or where a killed run resumes: the cache ends bit-identical (on the
same hardware and software) to one uninterrupted run. Batch size, precision and compile are part of the
cache's identity for that reason.
"""

from __future__ import annotations

import logging
import queue
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset
from tqdm.auto import tqdm

from ssondo_cache import lifecycle
from ssondo_cache.block_feed import BlockFeed, QueuedBlocks
from ssondo_cache.devices import resolve_device
from ssondo_cache.errors import SsondoError
from ssondo_cache.extract_items import Plan, Resampler, block_work, make_plan
from ssondo_cache.manifests import clips_fingerprint, read_clips, table_meta
from ssondo_cache.provenance import code_version
from ssondo_cache.store import CacheStore, cache_path, create_or_open
from ssondo_cache.teachers import build_teacher
from ssondo_cache.teachers.base import Teacher
from ssondo_cache.window_embed import BlockBuffer, Embedded, WindowEmbedder, embed_item
from ssondo_cache.windows import TemporalSupport
from ssondo_cache.workspace import Workspace

log = logging.getLogger("ssondo.extract")
MAX_PENDING_WRITES = 2  # blocks being compressed and written in background threads


@dataclass(frozen=True)
class ExtractResult:
    cache: Path
    name: str  # <teacher_id>/ts<TS>-hop<HOP>, what `--cache` takes later
    device: str
    blocks_written: int  # by this process, this run (a block = a tar shard when packing kept them full)
    blocks_skipped: int  # of this rank's share, done before this run or by another job meanwhile
    clips: int  # clips embedded by this process, this run
    seconds: float  # the whole loop: worker start-up, compilation and writing included
    warmup_seconds: float  # until the first item was embedded (worker start-up, first forward / compilation)
    warmup_clips: int  # clips in that first item
    rank_complete: bool  # every block of this rank is done
    cache_complete: bool  # every block of every rank is done

    @property
    def clips_per_second(self) -> float:
        return self.clips / self.seconds if self.seconds > 0 else 0.0

    @property
    def steady_clips_per_second(self) -> float:
        """Throughput after the first item (start-up and compilation left out)."""
        dt = self.seconds - self.warmup_seconds
        return (self.clips - self.warmup_clips) / dt if dt > 0 else 0.0


# ---------------------------------------------------------------- the loop
def extract(
    work: str | Path,
    teacher_spec: str,
    checkpoint: str | Path | None = None,
    ts: str | float = 1.0,
    hop: str | float | None = None,
    device: str = "auto",
    batch_size: int = 64,
    compile: bool = False,
    workers: int = 2,
    rank: int = 0,
    world_size: int = 1,
    progress: bool = True,
    teacher_options: dict[str, Any] | None = None,
    resample_on: str = "auto",
    redo_blocks: Sequence[int] = (),
) -> ExtractResult:
    """Embed every clip of WORK's packed corpus with a teacher at temporal support ``ts``/``hop``.

    batch_size: windows per teacher forward. workers: DataLoader processes decoding tar shards
    (0 = decode in this process). rank/world_size: this process owns blocks (= tar shards when the
    pack kept every shard full) k with k % world_size == rank. Finished blocks are skipped, so
    re-running resumes and re-running a finished extraction is a no-op. resample_on: where audio is
    resampled to the teacher's rate, "workers", "device" or "auto" (the device when it is a GPU).
    redo_blocks: blocks marked done to compute again (e.g. one whose file was damaged)."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside world size {world_size}")
    if resample_on not in ("auto", "workers", "device"):
        raise ValueError(f"resample_on must be auto, workers or device, not {resample_on!r}")
    if batch_size < 1 or workers < 0:
        raise ValueError(f"batch_size must be >= 1 and workers >= 0 (got {batch_size}, {workers})")
    support = TemporalSupport.parse(ts, hop)
    dev = resolve_device(device)  # cuda without a GPU raises here: never a quiet CPU run
    # "auto" goes to build_teacher as is: a CPU-only teacher (onnxruntime) then stays on the CPU
    teacher = build_teacher(
        teacher_spec, checkpoint, device=device if device == "auto" else dev, **(teacher_options or {})
    )
    if teacher.cpu_only:
        dev = torch.device("cpu")
    if device == "auto":
        log.info("device auto -> %s", dev)

    ws = Workspace(work)
    clips = read_clips(work)
    plan = make_plan(clips, teacher.sample_rate, support)
    if compile and support.is_full:
        _refuse_many_full_lengths(plan)
    win_hop = support.in_samples(teacher.sample_rate)
    win, hop_n = win_hop if win_hop else (None, None)
    embedder = WindowEmbedder(teacher, dev, batch_size, compile)
    store = create_or_open(
        cache_path(work, teacher.teacher_id, support.name),
        {
            "teacher": teacher.name,
            "teacher_id": teacher.teacher_id,
            "teacher_spec": teacher_spec,
            "checkpoint": str(checkpoint) if checkpoint else None,
            "ts": support.ts if support.ts is not None else "full",
            "hop": support.hop if support.hop is not None else "full",
            "window_samples": win,
            "hop_samples": hop_n,
            "sample_rate": plan.pack_rate,
            "teacher_sample_rate": teacher.sample_rate,
            "frontend": teacher.describe(),
            "dtype": "float16",
            "pooling": "window = mean of teacher frames over time; clip = float32 mean over valid windows",
            "batch_size": batch_size,
            "precision": embedder.precision,
            "compile": compile,
            "clips_fingerprint": clips_fingerprint(clips),
            "code_version": code_version(),
            "n_rows": plan.n_rows,
            "max_windows": plan.max_windows,
            "embed_dim": teacher.embed_dim,
            "shard_offsets": plan.shard_offsets,
            "zarr_shard_rows": _pack_shard_size(clips, plan),
        },
        identity=("batch_size", "precision", "compile"),
    )
    for k in redo_blocks:
        if not 0 <= k < store.n_blocks:
            raise ValueError(f"--redo-block {k}: {store.path} has blocks 0..{store.n_blocks - 1}")
        store.mark_undone(k)
    mine = [k for k in range(store.n_blocks) if k % world_size == rank]
    done = store.done()
    todo = [k for k in mine if not done[k]]
    log.info("%s: %d of this rank's %d blocks to do", store.path, len(todo), len(mine))
    started = time.perf_counter()
    n_clips, warmup, written = _run(
        store, plan, todo, ws, embedder, support, win, hop_n, teacher, workers, progress, resample_on
    )
    seconds = time.perf_counter() - started
    cache_complete = store.mark_finished()
    return ExtractResult(
        cache=store.path,
        name=store.name,
        device=str(dev),
        blocks_written=len(written),
        blocks_skipped=len(mine) - len(written),
        clips=n_clips,
        seconds=seconds,
        warmup_seconds=warmup[0] - started if warmup else 0.0,
        warmup_clips=warmup[1] if warmup else 0,
        rank_complete=bool(store.done()[mine].all()),
        cache_complete=cache_complete,
    )


def _refuse_many_full_lengths(plan: Plan) -> None:
    """``--ts full --compile`` is accepted only while every clip length can have its own graph.

    With TS full a forward's shape is (batch_size, clip length): each distinct length compiles a
    graph, and past dynamo's recompile limit torch falls back to eager with a warning. Padding clips
    to a few bucket lengths would bound the graphs, but a full-clip embedding would then include the
    padding (the teacher hears it, and its attention mixes it in), so it would no longer be the
    clip's embedding: refusing is the correct choice, and it costs one np.unique over the manifest."""
    lengths = np.unique(plan.lengths)
    limit = int(torch._dynamo.config.recompile_limit)
    if len(lengths) > limit:
        raise ValueError(
            f"--ts full --compile: manifests/clips.parquet has {len(lengths)} distinct clip lengths, and "
            f"torch.compile builds one graph per length and runs eagerly past {limit}; padding clips to "
            "shared lengths would change full-clip embeddings. Drop --compile, or give --ts SECONDS"
        )


def _pack_shard_size(clips, plan: Plan) -> int:
    """The pack's nominal shard size (manifest metadata), else the largest tar shard."""
    size = table_meta(clips).get("shard_size")
    sizes = np.diff(plan.shard_offsets)
    return int(size) if size else max(int(sizes.max()) if len(sizes) else 1, 1)


def _one_thread(worker_id: int) -> None:
    """Decode workers are many: one torch thread each, or they fight the teacher for the cores."""
    torch.set_num_threads(1)


def decode_loader(items: IterableDataset, workers: int, device: torch.device) -> DataLoader:
    """The DataLoader of decoded items. On CUDA its batches are pinned by a thread that works on the
    device current when iteration starts: ``resolve_device`` made ``device`` current, so pinning
    opens no context on GPU 0 (the test fakes CUDA and checks which device each pin lands on)."""
    return DataLoader(
        items,
        batch_size=None,
        num_workers=workers,
        multiprocessing_context=lifecycle.child_context("spawn") if workers else None,  # die with us
        pin_memory=device.type == "cuda",
        worker_init_fn=lifecycle.WorkerInit(_one_thread) if workers else None,
    )


def _run(
    store: CacheStore,
    plan: Plan,
    todo: list[int],
    ws: Workspace,
    embedder: WindowEmbedder,
    support: TemporalSupport,
    win: int | None,
    hop: int | None,
    teacher: Teacher,
    workers: int,
    progress: bool,
    resample_on: str = "auto",
) -> tuple[int, tuple[float, int] | None, set[int]]:
    """Embed and write those of blocks ``todo`` no other job claims; returns (clips embedded,
    (time, clips) when the first item was done, blocks written)."""
    if not todo:
        return 0, None, set()
    dev = embedder.device
    # Resample in the CPU workers when the teacher runs on the CPU; on a GPU the device does it far
    # faster (DESIGN: ~107 clips/s per CPU thread for 32 -> 16 kHz would starve the teacher).
    rates = (plan.pack_rate, teacher.sample_rate)
    device_side = resample_on == "device" or (resample_on == "auto" and dev.type == "cuda")
    on_device = device_side and rates[0] != rates[1]
    resampler = Resampler(*rates).to(dev) if on_device else None
    blocks = {
        k: block_work(plan, k, store.block_rows(k), ws, embedder.batch_size, support.is_full) for k in todo
    }
    n_workers = min(workers, len(todo))
    # the queue of claimed blocks: a process queue for spawned workers, a plain one in this process
    q = lifecycle.child_context("spawn").Queue() if n_workers else queue.Queue()
    feed = BlockFeed(store, todo, q, max(n_workers, 1), ahead=max(n_workers, 1) + MAX_PENDING_WRITES + 1)
    loader = decode_loader(QueuedBlocks(blocks, None if on_device else rates, q), n_workers, dev)
    buffers: dict[int, BlockBuffer] = {}
    written: set[int] = set()
    total = sum(b - a for a, b in map(store.block_rows, todo))

    def write(k: int, buf: BlockBuffer) -> None:
        store.write_block(k, buf.emb, buf.clip, buf.n_windows)
        log.info("block %d: written", k)
        feed.finished(k)

    n_clips = 0
    warmup = None
    writes: list[Future] = []

    def finish(done: Embedded) -> int:
        k = done.block
        if k not in buffers:
            buffers[k] = BlockBuffer(*store.block_rows(k), plan.max_windows, store.embed_dim)
        n = done.store(buffers[k])
        if done.last:  # write in the background: compressing a block must not stall the device
            buf = buffers.pop(k)
            writes.append(writer.submit(write, k, buf))
            written.add(k)
            while len(writes) > 2 * MAX_PENDING_WRITES or (writes and writes[0].done()):
                writes.pop(0).result()  # re-raises a failed write
        return n

    with (
        _closing(feed.start()),
        tqdm(
            total=total, unit="clip", desc=f"extract {store.name}", disable=not progress, smoothing=0.1
        ) as bar,
        ThreadPoolExecutor(MAX_PENDING_WRITES) as writer,
        _workers_ended(loader) as batches,
    ):
        pending: Embedded | None = None
        for item in lifecycle.until_stopped(batches):  # a stop signal: finish the queued blocks
            queued = embed_item(item, embedder, resampler, win, hop)
            done = [pending] if pending is not None else []  # one item in flight: the device runs it
            pending = queued  # while we store the previous one...
            if queued.last:  # ...but a block's end is stored now: the next block may be another job's
                done, pending = [*done, queued], None  # to finish first, and it may wait for this one
            for e in done:
                n = finish(e)
                n_clips += n
                bar.update(n)
                if warmup is None:
                    warmup = (time.perf_counter(), n)
        if pending is not None:
            n = finish(pending)
            n_clips += n
            bar.update(n)
        for f in writes:
            f.result()
    lifecycle.raise_if_stopped(
        lambda: (
            f"{len(written)} finished blocks written by this run, {int((~store.done()).sum())} "
            f"blocks left to do (those in flight abandoned) in {store.path}"
        )
    )
    missing = sorted(set(feed.taken) - written)
    if missing:
        raise SsondoError(
            f"extract: blocks {missing[:10]} of {store.path} produced no complete output (their decode "
            "worker ended early); run the same command again to compute them"
        )
    return n_clips, warmup, written


@contextmanager
def _workers_ended(loader: DataLoader) -> Iterator[Any]:
    """The loader's iterator, its workers shut down however the loop ends. An error propagating
    keeps the iterator alive through its traceback until the interpreter exits, where
    multiprocessing's exit hook SIGTERMs the workers (who ignore it: lifecycle.py) and waits forever."""
    it = iter(loader) if lifecycle.stop_requested() is None else iter(())  # iter() starts the workers
    try:
        yield it
    finally:
        shutdown = getattr(it, "_shutdown_workers", None)  # a multi-process iterator: join, then kill
        if shutdown is not None:
            shutdown()


@contextmanager
def _closing(feed: BlockFeed) -> Iterator[BlockFeed]:
    """Stop claiming and release the claims still held, however the loop ends."""
    try:
        yield feed
    finally:
        feed.close()
