"""Balanced sampling as a pure function of (seed, epoch): which clips an epoch emits, how often,
from which tar shards, in which order, and which reader (rank x worker) emits them.

No I/O here: `stream.py` turns a plan into audio + targets. Everything below is
deterministic given its arguments, which is what makes an interrupted run resume exactly.

The scheme (equivalent to sampling with replacement by the manifest weights, minus the noise):
1. per-clip repeat counts by systematic rounding of ``weight * n_samples`` over a seeded
   permutation of the clips: every count is floor or ceil of its expectation (no clip is
   repeated more than needed), the counts sum exactly to ``n_samples``, and every cluster gets
   its target share up to rounding;
2. a seeded permutation of the shards that hold any sampled clip (shard order changes each epoch);
3. the epoch's read sequence: shards in that order, clips in tar order, and each clip's repeats
   spread over the epoch in passes of about one shuffle window (copy k of a clip emitted c times
   in the pass at fraction (k + u) / c of the epoch, u where the clip sits in the sequence), each
   pass reading its shards in order. A clip's copies are then 1/c of the epoch apart, in every
   reader's part, as under i.i.d. weighted sampling on average (read back to back, its copies
   shared one reader and one shuffle window, and so several of them one batch);
4. that sequence is cut into contiguous pieces, one per reader, each exactly
   ``batches * batch_size`` samples long, so every rank runs the same number of steps (a shard
   may be shared by two neighbouring readers);
5. each reader's sequence is shuffled in consecutive windows of ``shuffle_buffer`` samples (a
   block shuffle instead of webdataset's reservoir, so that the position inside an epoch is
   a plain sample count and resuming mid-epoch needs no replay).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# salts so that the random streams for counts, shard order, shuffles and crops never coincide
_COUNTS, _SHARDS, _SHUFFLE, _CROP = 11, 13, 17, 19
_GOLDEN = (5**0.5 - 1) / 2  # low-discrepancy step of the rounding offset between epochs


@dataclass(frozen=True)
class SamplingTable:
    """The training clips of a sampling manifest, in row order (all arrays (N,))."""

    keys: np.ndarray  # str
    rows: np.ndarray  # int64, global row in clips.parquet and in the cache
    shards: np.ndarray  # int64, tar shard index
    clusters: np.ndarray  # int64, -1 when the manifest has no clusters (uniform)
    weights: np.ndarray  # float64, sums to 1
    kind: str = "random"
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.rows)
        for name in ("keys", "shards", "clusters", "weights"):
            if len(getattr(self, name)) != n:
                raise ValueError(
                    f"sampling table: {name} has {len(getattr(self, name))} entries, rows has {n}"
                )
        if n == 0:
            raise ValueError("sampling table is empty: no clip to train on")
        if np.any(np.diff(self.rows) <= 0):
            raise ValueError("sampling table rows must be strictly increasing (tar order)")
        if not np.all(np.isfinite(self.weights)) or np.any(self.weights < 0) or self.weights.sum() <= 0:
            raise ValueError("sampling weights must be finite, >= 0 and not all zero")

    def __len__(self) -> int:
        return len(self.rows)

    def cluster_targets(self) -> dict[int, float]:
        """Target share of each cluster: the sum of its clips' weights (normalised)."""
        total = self.weights.sum()
        return {
            int(c): float(self.weights[self.clusters == c].sum() / total) for c in np.unique(self.clusters)
        }


def make_table(
    keys, rows, shards, weights=None, clusters=None, kind: str = "random", meta: dict | None = None
) -> SamplingTable:
    """Build a table sorted by row; ``weights=None`` means uniform, ``clusters=None`` means -1."""
    rows = np.asarray(rows, dtype=np.int64)
    order = np.argsort(rows, kind="stable")
    n = len(rows)
    w = np.full(n, 1.0 / max(n, 1)) if weights is None else np.asarray(weights, dtype=np.float64)
    c = np.full(n, -1, dtype=np.int64) if clusters is None else np.asarray(clusters, dtype=np.int64)
    w = w[order]
    return SamplingTable(
        keys=np.asarray(keys, dtype=object)[order],
        rows=rows[order],
        shards=np.asarray(shards, dtype=np.int64)[order],
        clusters=c[order],
        weights=w / w.sum() if n and w.sum() > 0 else w,
        kind=kind,
        meta=dict(meta or {}),
    )


def split_holdout(table: SamplingTable, n_val: int, seed: int) -> tuple[SamplingTable, np.ndarray]:
    """Hold ``n_val`` clips out of training for validation, stratified and fixed by ``seed``.

    Each cluster (the whole table when the manifest has none) gets its share of ``n_val`` by size
    (largest remainder); inside a cluster its clips are taken round robin over its shards, in a
    seeded shard order that moves on from one cluster to the next. Validation then covers the
    corpus's kinds of sound and many shards, never one (clips next to each other in key order
    tend to share a source: one shard could be all speech). Returns the training table (weights
    renormalised) and the held-out positions into ``table`` (sorted).
    """
    if n_val <= 0:
        return table, np.zeros(0, dtype=np.int64)
    if n_val >= len(table):
        raise ValueError(f"cannot hold out {n_val} validation clips from {len(table)}: keep some to train on")
    rng = np.random.default_rng([seed, 23])
    shards = np.unique(table.shards)
    shard_rank = np.zeros(int(shards.max()) + 1, dtype=np.int64)
    shard_rank[rng.permutation(shards)] = np.arange(len(shards))
    key = rng.random(len(table))  # random order inside a shard
    clusters, sizes = np.unique(table.clusters, return_counts=True)
    exact = n_val * sizes / len(table)
    quotas = np.floor(exact).astype(np.int64)
    quotas[np.argsort(-(exact - quotas), kind="stable")[: n_val - quotas.sum()]] += 1
    picked: list[np.ndarray] = []
    offset = 0
    for cluster, quota in zip(clusters, quotas, strict=True):
        inside = np.flatnonzero(table.clusters == cluster)
        order = inside[np.lexsort((key[inside], table.shards[inside]))]  # by shard, random inside
        shard = table.shards[order]
        starts = np.flatnonzero(np.r_[True, np.diff(shard) != 0])
        rank = np.arange(len(order)) - np.repeat(starts, np.diff(np.r_[starts, len(order)]))  # in shard
        turn = (shard_rank[shard] - offset) % len(shards)  # this cluster's shard order
        picked.append(order[np.lexsort((turn, rank))][:quota])
        offset += int(quota)
    val = np.sort(np.concatenate(picked))
    keep = np.ones(len(table), dtype=bool)
    keep[val] = False
    w = table.weights[keep]
    if w.sum() <= 0:
        raise ValueError("all sampling weight is on the validation clips; use fewer validation clips")
    train = SamplingTable(
        keys=table.keys[keep],
        rows=table.rows[keep],
        shards=table.shards[keep],
        clusters=table.clusters[keep],
        weights=w / w.sum(),
        kind=table.kind,
        meta=table.meta,
    )
    return train, val


def clip_counts(weights: np.ndarray, n_samples: int, seed: int, epoch: int) -> np.ndarray:
    """Per-clip repeat counts (N,) int64 summing to ``n_samples``, each floor or ceil of
    ``weight * n_samples``.

    Systematic rounding over a seeded permutation of the clips (fixed for the run) with an offset
    that moves by the golden ratio each epoch: over several epochs every clip's total stays within
    about one of its expectation (with a fresh offset per epoch a uniform manifest would leave some
    clips unseen for many epochs while others repeat)."""
    w = np.asarray(weights, dtype=np.float64)
    rng = np.random.default_rng([seed, _COUNTS])
    perm = rng.permutation(len(w))
    u = (rng.random() + epoch * _GOLDEN) % 1.0
    cum = np.cumsum(w[perm] / w.sum()) * n_samples
    cum[-1] = n_samples  # no float drift on the total
    marks = np.floor(cum + u).astype(np.int64)
    counts = np.empty(len(w), dtype=np.int64)
    counts[perm] = np.diff(marks, prepend=0)  # floor(0 + u) == 0
    return counts


@dataclass(frozen=True)
class Segment:
    """Consecutive clips of one tar shard read by one reader: positions into the table
    (increasing, i.e. tar order) and how many times each is emitted."""

    shard: int
    positions: np.ndarray  # (n,) int64
    counts: np.ndarray  # (n,) int64, all > 0

    @property
    def n_samples(self) -> int:
        return int(self.counts.sum())


@dataclass(frozen=True)
class EpochPlan:
    epoch: int
    counts: np.ndarray  # (N,) repeats per clip this epoch
    shard_order: np.ndarray  # shards in reading order
    readers: list[list[Segment]]  # index rank * workers + worker
    batches: list[int]  # batches each reader emits (same index)
    steps: int
    batch_size: int  # per rank


def reader_batches(steps: int, workers: int) -> list[int]:
    """Batches of worker w in an epoch: step s is served by worker s % workers."""
    return [len(range(w, steps, workers)) for w in range(workers)]


def plan_epoch(
    table: SamplingTable,
    *,
    seed: int,
    epoch: int,
    steps: int,
    batch_size: int,
    world_size: int,
    workers: int,
    shuffle_buffer: int,
) -> EpochPlan:
    """The whole epoch for every rank and worker. ``batch_size`` is per rank; the epoch emits
    ``steps * batch_size * world_size`` samples; ``shuffle_buffer`` sizes the passes of step 4."""
    if steps < 1:
        raise ValueError(f"an epoch needs at least one step, got {steps}")
    n_readers = world_size * workers
    n_samples = steps * batch_size * world_size
    counts = clip_counts(table.weights, n_samples, seed, epoch)
    used = np.unique(table.shards[counts > 0])
    if len(used) < n_readers:
        raise ValueError(
            f"too few shards: epoch {epoch} reads {len(used)} tar shard(s) for {world_size} rank(s) x "
            f"{workers} worker(s) = {n_readers} readers; need at least {n_readers} (pack with a smaller "
            f"--shard-size, or use fewer workers/ranks)"
        )
    shard_order = np.random.default_rng([seed, epoch, _SHARDS]).permutation(used)
    # the read sequence: shards in epoch order, clips in tar order, only clips with count > 0
    rank_of_shard = np.empty(int(table.shards.max()) + 1, dtype=np.int64)
    rank_of_shard[shard_order] = np.arange(len(shard_order))
    live = np.flatnonzero(counts > 0)
    seq = live[np.lexsort((table.rows[live], rank_of_shard[table.shards[live]]))]
    per_worker = reader_batches(steps, workers)
    quotas = [per_worker[w] * batch_size for _ in range(world_size) for w in range(workers)]
    passes = -(-n_samples // shuffle_buffer)  # of about one shuffle window each
    readers = _cut(table, *_spread_repeats(table, seq, counts[seq], rank_of_shard, passes), quotas)
    return EpochPlan(epoch, counts, shard_order, readers, per_worker * world_size, steps, batch_size)


def _cut(
    table: SamplingTable, seq: np.ndarray, seq_counts: np.ndarray, quotas: list[int]
) -> list[list[Segment]]:
    """Cut the read sequence into consecutive pieces of exactly ``quotas`` samples each."""
    ends = np.cumsum(seq_counts)
    starts = ends - seq_counts
    readers: list[list[Segment]] = []
    lo = 0
    for quota in quotas:
        hi = lo + quota
        i0 = int(np.searchsorted(ends, lo, side="right"))
        i1 = int(np.searchsorted(starts, hi, side="left"))
        pos = seq[i0:i1]
        c = np.minimum(ends[i0:i1], hi) - np.maximum(starts[i0:i1], lo)
        segments: list[Segment] = []
        if len(pos):
            shards, rows = table.shards[pos], table.rows[pos]
            breaks = np.flatnonzero((np.diff(shards) != 0) | (np.diff(rows) <= 0)) + 1  # new shard or pass
            for p, k in zip(np.split(pos, breaks), np.split(c, breaks), strict=True):
                segments.append(Segment(int(table.shards[p[0]]), p, k))
        readers.append(segments)
        lo = hi
    return readers


def _spread_repeats(
    table: SamplingTable, seq: np.ndarray, seq_counts: np.ndarray, rank_of_shard: np.ndarray, passes: int
) -> tuple[np.ndarray, np.ndarray]:
    """The read sequence with each clip's repeats spread over the epoch (module docstring, step 3).

    Copy k of a clip emitted c times, starting at fraction u of the one-pass sequence, goes to
    pass floor((k + u) / c * passes): the copies are 1/c of the epoch apart, and a clip emitted
    once stays where it was (clips of one shard stay together, so reads stay few). Each pass reads
    its shards in epoch order, clips in tar order. Returns (positions, counts), counts > 0, with
    the same position several times when its copies are in several passes."""
    total = int(seq_counts.sum())
    if passes <= 1 or seq_counts.max() <= 1:
        return seq, seq_counts
    u = (np.cumsum(seq_counts) - seq_counts) / total  # (n,) where each clip starts
    item = np.repeat(np.arange(len(seq)), seq_counts)  # (total,) the clip of each copy
    copy = np.arange(total) - np.repeat(np.cumsum(seq_counts) - seq_counts, seq_counts)  # k
    which = np.minimum(((copy + u[item]) / seq_counts[item] * passes).astype(np.int64), passes - 1)
    keys, copies = np.unique(which * len(seq) + item, return_counts=True)  # by pass, then clip
    pass_of, item_of = keys // len(seq), keys % len(seq)
    pos = seq[item_of]
    order = np.lexsort((table.rows[pos], rank_of_shard[table.shards[pos]], pass_of))
    return pos[order], copies[order]


def expand(segments: list[Segment]) -> tuple[np.ndarray, np.ndarray]:
    """Read-order sample sequence of a reader: (segment index, item index) arrays (n_samples,)."""
    seg = np.concatenate([np.full(s.n_samples, i, dtype=np.int64) for i, s in enumerate(segments)] or [[]])
    item = np.concatenate([np.repeat(np.arange(len(s.counts)), s.counts) for s in segments] or [[]])
    return seg.astype(np.int64), item.astype(np.int64)


def window_order(n: int, *, seed: int, epoch: int, reader: int, window: int) -> np.ndarray:
    """Emission order (a permutation of range(n)) of one shuffle window."""
    return np.random.default_rng([seed, epoch, reader, window, _SHUFFLE]).permutation(n)


def crop_rng(*, seed: int, epoch: int, reader: int, window: int) -> np.random.Generator:
    """Generator for the random crops of one shuffle window (drawn in emission order)."""
    return np.random.default_rng([seed, epoch, reader, window, _CROP])


def reader_stream(
    segments: list[Segment], *, seed: int, epoch: int, reader: int, shuffle_buffer: int, skip: int = 0
):
    """Yield ``(window, drop, [(segment, item), ...])``: each shuffle window's samples in emission
    order. Resuming after ``skip`` emitted samples skips whole windows without I/O; in the first
    window yielded, the first ``drop`` samples were already emitted (the caller discards them, so
    per-window random draws stay aligned)."""
    seg, item = expand(segments)
    n = len(seg)
    first = skip // shuffle_buffer
    for w in range(first, -(-n // shuffle_buffer)):
        lo, hi = w * shuffle_buffer, min(n, (w + 1) * shuffle_buffer)
        order = lo + window_order(hi - lo, seed=seed, epoch=epoch, reader=reader, window=w)
        drop = skip - lo if w == first else 0
        yield w, drop, list(zip(seg[order].tolist(), item[order].tolist(), strict=True))
