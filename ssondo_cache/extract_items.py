"""What the teacher is fed during extraction: items planned from the manifest, decoded from tar shards.

An item is a run of consecutive clips of ONE tar shard, as many whole clips as fit in ``batch_size``
windows (``plan_items``). Items are planned from the manifest alone, per tar shard, so a clip meets
the same batch-mates whatever the number of workers, processes or ranks, or where a killed run
resumes; that is what keeps the cache bit-identical to one uninterrupted run (see extract.py).
``BlockItems`` is the DataLoader dataset: its workers decode whole blocks to int16 PCM (or to
resampled float32 when the teacher runs on the CPU) and check every clip against the manifest.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import torch
from torch.utils.data import IterableDataset, get_worker_info

from ssondo_cache.shards import REPACK, CorruptShardError, audio_member, iter_members
from ssondo_cache.windows import TemporalSupport, n_windows_array, resampled_length
from ssondo_cache.workspace import Workspace

PCM16_SCALE = 1.0 / 32768  # what libsndfile multiplies PCM_16 by to give float (exact in float32)


# ---------------------------------------------------------------- planning (manifest only)
@dataclass(frozen=True)
class Plan:
    """Everything fixed before any audio is decoded."""

    n_rows: int
    shard_offsets: list[int]  # rows of tar shard s: [offsets[s], offsets[s+1])
    keys: list[str]
    num_samples: np.ndarray  # (N,) samples at the pack rate, as decoded from the shards
    lengths: np.ndarray  # (N,) samples at the teacher rate
    n_windows: np.ndarray  # (N,) int32
    pack_rate: int

    @property
    def n_shards(self) -> int:
        return len(self.shard_offsets) - 1

    @property
    def max_windows(self) -> int:
        return int(self.n_windows.max()) if self.n_rows else 1


def make_plan(clips, teacher_rate: int, support: TemporalSupport) -> Plan:
    """Rows, tar-shard offsets and window counts from the clips manifest (a pyarrow table)."""
    rows = np.asarray(clips.column("row").to_numpy(), dtype=np.int64)
    shards = np.asarray(clips.column("shard").to_numpy(), dtype=np.int64)
    if not np.array_equal(rows, np.arange(len(rows))):
        raise ValueError("manifests/clips.parquet: rows are not 0..N-1 in order; re-pack the corpus")
    if len(shards) and np.any(np.diff(shards) < 0):
        raise ValueError("manifests/clips.parquet: rows are not in tar-shard order; re-pack the corpus")
    rates = np.unique(clips.column("sample_rate").to_numpy())
    if len(rates) > 1:
        raise ValueError(f"manifests/clips.parquet mixes sample rates {rates.tolist()}; a pack has one rate")
    pack_rate = int(rates[0]) if len(rates) else teacher_rate
    n_shards = int(shards.max()) + 1 if len(shards) else 0
    offsets = np.searchsorted(shards, np.arange(n_shards + 1), side="left").tolist()
    num = np.asarray(clips.column("num_samples").to_numpy(), dtype=np.int64)
    lengths = np.array([resampled_length(n, pack_rate, teacher_rate) for n in num], dtype=np.int64)
    win_hop = support.in_samples(teacher_rate)
    win, hop = win_hop if win_hop else (None, None)
    return Plan(
        n_rows=len(rows),
        shard_offsets=[int(o) for o in offsets],
        keys=clips.column("key").to_pylist(),
        num_samples=num,
        lengths=lengths,
        n_windows=n_windows_array(lengths, win, hop),
        pack_rate=pack_rate,
    )


def plan_items(
    n_windows: np.ndarray, lengths: np.ndarray, batch_size: int, full: bool
) -> list[tuple[int, int]]:
    """Split one tar shard's clips (in tar order) into items of consecutive clips, (start, stop) in the shard.

    An item holds as many whole clips as fit in ``batch_size`` windows (at least one clip; a longer
    clip is run in several forwards). With TS ``full`` the windows are whole clips, so an item
    only holds clips of one length (they are stacked, never padded with silence)."""
    items: list[tuple[int, int]] = []
    start, used = 0, 0
    for i, nw in enumerate(n_windows.tolist()):
        fits = used + nw <= batch_size and (not full or lengths[i] == lengths[start])
        if i > start and not fits:
            items.append((start, i))
            start, used = i, 0
        used += nw
    if len(n_windows):
        items.append((start, len(n_windows)))
    return items


@dataclass(frozen=True)
class Segment:
    """The part of one tar shard a block needs: plan items (start, stop) in tar order, shard-local."""

    shard: int
    path: str
    row0: int  # global row of the tar shard's first clip
    items: list[tuple[int, int]]
    keys: list[str]  # of the whole tar shard, for checking what is decoded
    num_samples: list[int]


@dataclass(frozen=True)
class BlockWork:
    block: int
    segments: list[Segment]


def block_work(
    plan: Plan, block: int, rows: tuple[int, int], ws: Workspace, batch_size: int, full: bool
) -> BlockWork:
    """Which tar shards, and which of their planned items, block ``block`` (global rows) needs."""
    u0, u1 = rows
    segments = []
    offsets = plan.shard_offsets
    first = int(np.searchsorted(offsets, u0, side="right")) - 1
    for s in range(max(first, 0), plan.n_shards):
        a, b = offsets[s], offsets[s + 1]
        if a >= u1:
            break
        if b <= u0:
            continue
        items = plan_items(plan.n_windows[a:b], plan.lengths[a:b], batch_size, full)
        needed = [(i, j) for i, j in items if a + j > u0 and a + i < u1]
        segments.append(
            Segment(s, str(ws.shard_path(s)), a, needed, plan.keys[a:b], plan.num_samples[a:b].tolist())
        )
    return BlockWork(block, segments)


# ---------------------------------------------------------------- workers: decode (and resample)
class Resampler:
    """Batched sinc resampling with the kernel built once (torchaudio's defaults)."""

    def __init__(self, orig: int, new: int) -> None:
        import torchaudio

        self.orig, self.new = orig, new
        self._fn = torchaudio.transforms.Resample(orig, new) if orig != new else None

    def to(self, device: torch.device) -> Resampler:
        if self._fn is not None:
            self._fn = self._fn.to(device)
        return self

    def batch(self, audio: torch.Tensor) -> torch.Tensor:
        """(n, S) clips of one length -> (n, resampled_length(S))."""
        if self._fn is None:
            return audio
        return self._fn(audio)[:, : resampled_length(audio.shape[-1], self.orig, self.new)]

    def __call__(self, clips: list[torch.Tensor]) -> list[torch.Tensor]:
        """Resample each clip; clips of equal length go through together. Output lengths are
        exactly ``resampled_length`` of the inputs."""
        if self._fn is None:
            return clips
        out: list[torch.Tensor | None] = [None] * len(clips)
        by_length: dict[int, list[int]] = {}
        for i, c in enumerate(clips):
            by_length.setdefault(c.shape[-1], []).append(i)
        for n, idx in by_length.items():
            y = self._fn(torch.stack([clips[i] for i in idx]))[:, : resampled_length(n, self.orig, self.new)]
            for j, i in enumerate(idx):
                out[i] = y[j]
        return out  # type: ignore[return-value]


class BlockItems(IterableDataset):
    """Yields items (dicts) of consecutive decoded clips of one tar shard, block after block.

    Workers take whole blocks round-robin, so each block's items come from one worker, in order;
    the last item of a block is flagged so the main process knows the block is complete. An item's
    clips travel as ONE flat tensor (``audio``, split by ``lengths``): int16 PCM when the device
    resamples (half the bytes through shared memory, pinning and the bus), else float32 resampled here.
    """

    def __init__(self, blocks: list[BlockWork], resample: tuple[int, int] | None) -> None:
        self.blocks = blocks
        self.resample = resample  # (orig, new): resample here, in the worker; None: on the device

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        mine = self.blocks if info is None else self.blocks[info.id :: info.num_workers]
        resampler = Resampler(*self.resample) if self.resample else None
        for work in mine:
            yield from block_items(work, resampler)


def block_items(work: BlockWork, resampler: Resampler | None) -> Iterator[dict[str, Any]]:
    """The items of one block, in order, its last one flagged (see ``BlockItems``)."""
    n_items = sum(len(seg.items) for seg in work.segments)
    n = 0
    for seg in work.segments:
        for a, _, audio in _decode_items(seg):
            if resampler is not None:
                audio = resampler([x.float() * PCM16_SCALE for x in audio])
            n += 1
            yield {
                "block": work.block,
                "start": seg.row0 + a,
                "last": n == n_items,
                "audio": torch.cat(audio),
                "lengths": [len(x) for x in audio],
            }


def _decode_items(seg: Segment) -> Iterator[tuple[int, int, list[torch.Tensor]]]:
    """Decode the clips of ``seg``'s items to int16 PCM, one item at a time, checking each clip against
    the manifest; clips before the first item are skipped undecoded and reading stops after the last."""
    first = seg.items[0][0]
    members = iter_members(seg.path)
    try:
        for i in range(first):  # not needed by this block: check the key, don't decode
            _next_member(members, seg, i)
        for a, b in seg.items:
            audio = []
            for i in range(a, b):
                key, group = _next_member(members, seg, i)
                ext, data, _ = audio_member(seg.path, key, group)  # checks the pack's checksum
                x = _read_pcm16(seg.path, f"{key}.{ext}", data)
                if len(x) != seg.num_samples[i]:
                    raise ValueError(
                        f"{seg.path}: clip {key!r} has {len(x)} samples, the manifest says "
                        f"{seg.num_samples[i]}: shards and manifest disagree (re-pack?)"
                    )
                audio.append(torch.from_numpy(x))
            yield a, b, audio
    finally:
        members.close()


def _read_pcm16(path: Path, member: str, data: bytes) -> np.ndarray:
    """(samples,) int16 of one mono PCM_16 member; an undecodable one is a CorruptShardError naming it."""
    try:
        with sf.SoundFile(io.BytesIO(data)) as f:
            if f.subtype != "PCM_16" or f.channels != 1:
                raise ValueError(
                    f"{path}: member {member} is {f.subtype} x{f.channels}, shards hold mono PCM_16 (re-pack?)"
                )
            return f.read(dtype="int16")
    except (sf.SoundFileError, TypeError, RuntimeError, EOFError) as err:  # libsndfile's many faces
        raise CorruptShardError(
            f"{path}: member {member} cannot be decoded ({type(err).__name__}: {str(err) or 'no detail'}); "
            f"{REPACK}"
        ) from None


def _next_member(members: Iterator[tuple[str, dict[str, bytes]]], seg: Segment, i: int) -> tuple[str, dict]:
    got = next(members, None)
    if got is None or got[0] != seg.keys[i]:
        found = "the end of the shard" if got is None else repr(got[0])
        raise ValueError(
            f"{seg.path}: clip {i} should be {seg.keys[i]!r} as in manifests/clips.parquet, "
            f"found {found}: shards and manifest disagree (re-pack?)"
        )
    return got
