"""A teacher evaluated from its existing cache: clip embeddings of the packed corpus read straight from
``WORK/cache/<teacher_id>/ts..-hop...zarr`` instead of running the teacher again.

:class:`CachedTeacherEmbedder` is the :class:`~ssondo_eval.embedders.Embedder` for tasks whose audio
is the packed corpus (items matched by key, or by source file); the live teacher is
:class:`~ssondo_eval.embedders.TeacherEmbedder`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ssondo_cache.windows import TemporalSupport
from ssondo_eval.embedders import ComputeStats, Embedder, measure
from ssondo_eval.tasks.base import Task


class CachedTeacherEmbedder(Embedder):
    """Clip embeddings of the packed corpus, straight from ``WORK/cache/<teacher_id>/ts..-hop...zarr``.

    Task items are matched to manifest rows by ``key``, else by source file (the packed clip's
    ``source``); a file packed as several clips gets the window-count-weighted mean of its clips.
    The embedding covers the packed clip: the task's ``clip_seconds`` does not crop it.
    """

    kind = "teacher"

    def __init__(self, work: str | Path, cache: str) -> None:
        from ssondo_cache.cache_index import open_cache

        self.work = Path(work)
        self.store = open_cache(work, cache)
        self.teacher_id = self.store.attrs.get("teacher_id")
        self.cache_name = self.store.name
        self.name = f"teacher:{self.store.attrs.get('teacher', self.teacher_id)}"
        ts, hop = self.store.attrs.get("ts"), self.store.attrs.get("hop")
        self.support = TemporalSupport.parse(ts if ts is not None else "full", hop)
        self.cache_id = f"{self.teacher_id}-{self.support.name}-cached"

    def rows_for(self, task: Task) -> tuple[list[list[int]], dict[int, int], dict[int, float]]:
        """Per item its manifest rows; plus each needed row's tar shard and duration (the averaging
        weight). The manifest is read in record batches and only the task's rows are kept: memory
        follows the task, not the corpus (a 2 M-row manifest as Python dicts is gigabytes)."""
        import pyarrow as pa
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        from ssondo_cache.manifests import read_clips
        from ssondo_cache.workspace import Workspace

        path = Workspace(self.work).clips_manifest
        if not path.is_file():
            read_clips(self.work)  # raises the manifest's own message
        rows: list[list[int]] = [[] for _ in task.items]
        shard: dict[int, int] = {}
        duration: dict[int, float] = {}

        def scan(column: str, wanted: dict[str, list[int]], norm=lambda v: v) -> None:
            """Append the row of every manifest entry whose ``column`` (normalised) is wanted."""
            for batch in pq.ParquetFile(path).iter_batches(
                batch_size=65536, columns=[column, "row", "shard", "duration_s"]
            ):
                if column == "key":  # matched inside Arrow: no Python string per corpus row
                    batch = batch.filter(pc.is_in(batch.column(column), value_set=pa.array(list(wanted))))
                values = [norm(v) for v in batch.column(column).to_pylist()]
                hits = [j for j, v in enumerate(values) if v in wanted]
                found = batch.select(["row", "shard", "duration_s"]).take(pa.array(hits, pa.int64()))
                for j, r, s, d in zip(hits, *found.to_pydict().values(), strict=True):
                    for i in wanted[values[j]]:
                        rows[i].append(r)
                    shard[r], duration[r] = s, d

        by_key: dict[str, list[int]] = {}
        for i, item in enumerate(task.items):
            if item.key is not None:
                by_key.setdefault(item.key, []).append(i)
        if by_key:
            scan("key", by_key)
        by_source: dict[str, list[int]] = {}  # items whose key is not in the corpus: matched by file
        for i, item in enumerate(task.items):
            if not rows[i] and item.path is not None:
                by_source.setdefault(str(item.path.resolve()), []).append(i)
        if by_source:
            scan("source", by_source, lambda src: str(Path(src).resolve()))
        missing = [item.key or str(item.path) for item, rs in zip(task.items, rows, strict=True) if not rs]
        if missing:
            raise ValueError(
                f"task {task.name!r}: {len(missing)} item(s) are not in the packed corpus {self.work} "
                f"(e.g. {missing[:3]}); evaluate the teacher live (--teacher NAME) instead"
            )
        return rows, shard, duration

    def embed_task(self, task: Task, progress: bool = True) -> tuple[np.ndarray, ComputeStats]:
        if not self.store.is_complete():
            raise RuntimeError(
                f"cache {self.store.path} is incomplete ({self.store.missing_rows()} rows "
                "missing): finish `ssondo extract` first"
            )
        stats = ComputeStats()
        with measure(torch.device("cpu"), stats):
            rows, shard_of, duration = self.rows_for(task)
            users: dict[int, list[int]] = {}  # row -> the items it is part of
            for i, rs in enumerate(rows):
                for r in rs:
                    users.setdefault(r, []).append(i)
            by_shard: dict[int, list[int]] = {}
            for r in sorted(users):  # grouped once: a scan of every row per shard is O(shards x items)
                by_shard.setdefault(shard_of[r], []).append(r)
            X: np.ndarray | None = None  # (items, D) float32, made at the first block
            acc: dict[int, np.ndarray] = {}  # items of several clips: float64 weighted sums, in row order
            for s in sorted(by_shard):  # one block read per tar shard; only task rows are kept
                a, b = self.store.shard_rows(s)
                block = self.store.read_clip(a, b)  # (b - a, D) float32
                X = np.empty((len(rows), block.shape[1]), dtype=np.float32) if X is None else X
                for r in by_shard[s]:
                    for i in users[r]:
                        if len(rows[i]) == 1:
                            X[i] = block[r - a]
                            continue
                        part = max(duration[r], 1e-9) * block[r - a].astype(np.float64)
                        acc[i] = acc[i] + part if i in acc else part
            for i, total in acc.items():  # np.average's arithmetic: sum of w x, over the sum of w
                X[i] = total / np.sum([max(duration[r], 1e-9) for r in rows[i]])
        return X, stats

    def describe(self) -> dict:
        return {
            **super().describe(),
            "work": str(self.work),
            "cache": self.cache_name,
            "attrs": {k: v for k, v in self.store.attrs.items() if isinstance(v, (str, int, float, bool))},
        }
