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
        """Per item its manifest rows; plus each row's tar shard and duration (the averaging weight)."""
        from ssondo_cache.manifests import read_clips

        table = read_clips(self.work).select(["key", "row", "shard", "source", "duration_s"]).to_pydict()
        by_key = dict(zip(table["key"], table["row"], strict=True))
        by_source: dict[str, list[int]] = {}
        for src, row in zip(table["source"], table["row"], strict=True):
            by_source.setdefault(str(Path(src).resolve()), []).append(row)
        rows, missing = [], []
        for item in task.items:
            if item.key is not None and item.key in by_key:
                rows.append([by_key[item.key]])
            elif item.path is not None and str(item.path.resolve()) in by_source:
                rows.append(by_source[str(item.path.resolve())])
            else:
                missing.append(item.key or str(item.path))
        if missing:
            raise ValueError(
                f"task {task.name!r}: {len(missing)} item(s) are not in the packed corpus {self.work} "
                f"(e.g. {missing[:3]}); evaluate the teacher live (--teacher NAME) instead"
            )
        shard = dict(zip(table["row"], table["shard"], strict=True))
        duration = dict(zip(table["row"], table["duration_s"], strict=True))
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
            needed = sorted({r for rs in rows for r in rs})
            by_shard: dict[int, list[int]] = {}
            for r in needed:  # grouped once: a scan of every row per shard is O(shards x items)
                by_shard.setdefault(shard_of[r], []).append(r)
            clip: dict[int, np.ndarray] = {}
            for s in sorted(by_shard):  # one block read per tar shard
                a, b = self.store.shard_rows(s)
                block = self.store.read_clip(a, b)  # (b - a, D)
                for r in by_shard[s]:
                    clip[r] = block[r - a]
            X = np.stack(
                [
                    np.average([clip[r] for r in rs], axis=0, weights=[max(duration[r], 1e-9) for r in rs])
                    for rs in rows
                ]
            )
        return X.astype(np.float32), stats

    def describe(self) -> dict:
        return {
            **super().describe(),
            "work": str(self.work),
            "cache": self.cache_name,
            "attrs": {k: v for k, v in self.store.attrs.items() if isinstance(v, (str, int, float, bool))},
        }
