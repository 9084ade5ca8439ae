"""`ssondo pack`: any pile of audio -> WebDataset tar shards + clips/rejects manifests.

Three steps, each deterministic:
1. plan    list the inputs, hash every file's bytes and read its header (soundfile.info,
           no decoding), assign keys, drop duplicates, split long files into segments.
           The plan is a sorted list of clips; shard i is plan[i*shard_size:(i+1)*shard_size].
           Every rank computes the same plan on its own, so ranks never talk.
2. shards  decode, check (NaN/Inf, silence), downmix, resample and write each owned shard
           (shard % world_size == rank) to a temporary name, then rename. A sidecar
           ``manifests/parts/clips-NNNNNN-<fingerprint of the plan slice>.json``, written
           just before the rename, records the clips it holds and those refused while
           decoding; a shard whose tar and current sidecar both exist is complete.
3. finalize  once every shard is complete, write rejects.parquet then clips.parquet.
This module runs the three; step 2 is ``pack_shards.py``, step 3 ``pack_finalize.py``.
A refusal found while decoding leaves the shard one clip shorter, never shifts other shards.
Two jobs on one WORK split the shards: a shard is built under a claim (``claims.py``,
``manifests/claims/shard-NNNNNN.json``); a shard another live job holds is skipped, then waited for
(or taken over once its claim is stale) so that each job ends with every shard of its rank built.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from ssondo_cache import lifecycle, pack_finalize
from ssondo_cache.pack_shards import build_shard, build_shard_task, is_complete, part_path, shard_complete
from ssondo_cache.plan import DEFAULT_MIN_DURATION, PackParams, make_plan
from ssondo_cache.workspace import Workspace

__all__ = [
    "DEFAULT_MIN_DURATION",
    "PackResult",
    "build_shard",
    "make_plan",
    "pack",
    "part_path",
    "shard_complete",
]


@dataclass
class PackResult:
    work: Path
    n_inputs: int
    n_seen: int  # plan items + refused items: a split long file counts once per segment
    n_packed: int
    n_rejected: int
    n_silent: int
    n_shards: int
    shards_built: int
    shards_skipped: int  # complete before this call (written by an earlier run or another rank)
    shards_missing: int  # not yet complete, all ranks together (others may still be running)
    own_missing: int  # not complete among this rank's shards (0 unless building one failed)
    complete: bool  # all shards exist and both manifests are written
    reasons: dict[str, int] = field(default_factory=dict)
    labels_unmatched: list[str] = field(default_factory=list)  # --labels keys/paths matching no input

    def summary(self) -> str:
        if not self.complete:
            return (
                f"{self.n_seen} items planned from {self.n_inputs} inputs; {self.n_shards} shards, "
                f"{self.shards_built} written now, {self.shards_skipped} already there, "
                f"{self.shards_missing} still missing (other ranks?).\nManifests not written yet: "
                "the last rank to finish writes them, or run `ssondo pack ... --finalize`."
            )
        why = ", ".join(f"{k} {v}" for k, v in sorted(self.reasons.items())) or "none"
        if self.labels_unmatched:
            why += (
                f"\nwarning: {len(self.labels_unmatched)} --labels rows matched no packed input "
                f"(first: {self.labels_unmatched[0]!r})"
            )
        return (
            f"{self.n_seen} seen = {self.n_packed} packed + {self.n_rejected} rejected "
            f"(from {self.n_inputs} inputs; {self.n_silent} packed clips flagged silent)\n"
            f"rejected by reason: {why}\n"
            f"{self.n_shards} shards ({self.shards_built} written now, {self.shards_skipped} already there); "
            f"complete; manifests in {Workspace(self.work).manifests_dir}"
        )


def pack(
    inputs: Sequence[str | Path],
    work: str | Path,
    *,
    labels_csv: str | Path | None = None,
    sample_rate: int = 32000,
    fmt: str = "flac",
    shard_size: int = 1000,
    min_duration: float = DEFAULT_MIN_DURATION,
    max_duration: float | None = 10.0,
    reject_silent: bool = False,
    verify_sources: bool = False,
    workers: int = 1,
    rank: int = 0,
    world_size: int = 1,
    pack_shards: bool = True,
    finalize: bool = True,
    progress: bool = True,
) -> PackResult:
    """Pack ``inputs`` (folders, audio files, CSV/Parquet lists) into ``work``.

    ``rank``/``world_size`` pick this process's shards (shard % world_size == rank);
    ``workers`` processes pack them in parallel. With ``finalize`` the manifests are written
    once every shard exists (by whichever rank sees that last); ``pack_shards=False`` with
    ``finalize=True`` only writes the manifests. Re-running resumes; a finished run is a no-op.
    The scan cache trusts a file whose path, size and mtime are unchanged; ``verify_sources`` hashes
    every input again, so a same-size same-mtime rewrite is seen (and its shard re-packed).
    """
    if isinstance(inputs, str | Path):  # one input given bare, not in a list
        inputs = [inputs]
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside world size {world_size}")
    if workers < 1:
        raise ValueError("workers must be >= 1")
    params = PackParams(sample_rate, fmt, shard_size, min_duration, max_duration, reject_silent)
    ws = Workspace(work)
    with _pool(workers) as pool:
        plan = make_plan(
            inputs,
            params,
            labels_csv=labels_csv,
            exclude=ws.root,
            cache_dir=ws.manifests_dir / "scan",
            reuse_scans=not verify_sources,
            rank=rank,
            world_size=world_size,
            pool=pool,
            progress=progress,
        )
        fps = [plan.shard_fingerprint(s) for s in range(plan.n_shards)]  # once each: hashes a plan slice

        def done(s: int) -> bool:
            return is_complete(ws, s, fps[s])

        owned = [s for s in range(plan.n_shards) if s % world_size == rank]
        todo = [s for s in owned if not done(s)] if pack_shards else []
        if todo and not pack_finalize.manifest_current(ws, plan.fingerprint):
            # Shards are about to change: a manifest of an earlier pack must not outlive them.
            ws.clips_manifest.unlink(missing_ok=True)
        tasks = [(str(ws.root), s, plan.shard_items(s), plan.params, fps[s]) for s in todo]
        bar = tqdm(
            total=sum(len(t[2]) for t in tasks),
            unit="clip",
            desc="pack shards" if world_size == 1 else f"pack shards, rank {rank}/{world_size}",
            disable=not progress or not tasks,
        )
        results = pool.imap_unordered(build_shard_task, tasks) if pool else map(build_shard_task, tasks)
        for n in lifecycle.until_stopped(results):  # a stop signal: the shards in flight are abandoned
            bar.update(n)
        held = [t for t in tasks if not done(t[1])]  # claimed by other live jobs
        while held and lifecycle.stop_requested() is None:
            time.sleep(CLAIM_POLL)
            for task in held:
                bar.update(build_shard_task(task))
            held = [t for t in held if not done(t[1])]
        lifecycle.raise_if_stopped(
            lambda: (
                f"{sum(map(done, todo))} of this rank's {len(todo)} shards "
                f"written by this run, the rest left to do in {ws.shards_dir}"
            )
        )
        bar.close()
    missing = [s for s in range(plan.n_shards) if not done(s)]
    result = PackResult(
        work=ws.root,
        n_inputs=plan.n_inputs,
        n_seen=len(plan.items) + len(plan.rejects),
        n_packed=0,  # counted by finalize from the shards' sidecars
        n_rejected=0,
        n_silent=0,
        n_shards=plan.n_shards,
        shards_built=len(todo),
        shards_skipped=plan.n_shards - len(missing) - len(todo),
        shards_missing=len(missing),
        own_missing=len(set(owned) & set(missing)) if pack_shards else 0,
        complete=False,
        labels_unmatched=plan.labels_unmatched,
    )
    if missing or not finalize:
        return result
    provenance = {
        "inputs": [os.path.abspath(p) for p in inputs],
        "labels_csv": os.path.abspath(labels_csv) if labels_csv else None,
    }
    return pack_finalize.finalize(ws, plan, fps, result, provenance)


CLAIM_POLL = 1.0  # seconds between looks at shards other jobs are building


# ---- helpers ---------------------------------------------------------------------------------


@contextlib.contextmanager
def _pool(workers: int) -> Iterator[Any]:
    if workers <= 1:
        yield None
        return
    # libsoxr resamples on one thread in every process: workers need no torch (seconds per spawn)
    with lifecycle.child_context("spawn").Pool(workers) as pool:  # die with us
        yield pool
