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
A refusal found while decoding leaves the shard one clip shorter, never shifts other shards.
Two jobs on one WORK split the shards: a shard is built under a claim (``claims.py``,
``manifests/claims/shard-NNNNNN.json``); a shard another live job holds is skipped, then waited for
(or taken over once its claim is stale) so that each job ends with every shard of its rank built.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import mmap
import os
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from ssondo_cache import audio as A
from ssondo_cache import lifecycle
from ssondo_cache.atomic import atomic_path, write_json
from ssondo_cache.claims import try_claim
from ssondo_cache.manifests import clips_table, rejects_table, table_meta, with_meta, write_table
from ssondo_cache.plan import (
    DEFAULT_MIN_DURATION,
    PackParams,
    Plan,
    PlanItem,
    make_plan,
    reject,
    reject_order,
)
from ssondo_cache.provenance import code_version
from ssondo_cache.shards import CHECKSUM, ShardWriter, encode_audio, member_checksum
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
            return _complete(ws, s, fps[s])

        owned = [s for s in range(plan.n_shards) if s % world_size == rank]
        todo = [s for s in owned if not done(s)] if pack_shards else []
        if todo and not _manifest_current(ws, plan.fingerprint):
            # Shards are about to change: a manifest of an earlier pack must not outlive them.
            ws.clips_manifest.unlink(missing_ok=True)
        tasks = [(str(ws.root), s, plan.shard_items(s), plan.params, fps[s]) for s in todo]
        bar = tqdm(
            total=sum(len(t[2]) for t in tasks),
            unit="clip",
            desc="pack shards" if world_size == 1 else f"pack shards, rank {rank}/{world_size}",
            disable=not progress or not tasks,
        )
        results = pool.imap_unordered(_build_shard_task, tasks) if pool else map(_build_shard_task, tasks)
        for n in lifecycle.until_stopped(results):  # a stop signal: the shards in flight are abandoned
            bar.update(n)
        held = [t for t in tasks if not done(t[1])]  # claimed by other live jobs
        while held and lifecycle.stop_requested() is None:
            time.sleep(CLAIM_POLL)
            for task in held:
                bar.update(_build_shard_task(task))
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
        n_packed=0,  # counted by _finalize from the shards' sidecars
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
    return _finalize(ws, plan, fps, result, provenance)


CLAIM_POLL = 1.0  # seconds between looks at shards other jobs are building


# ---- 2. shards -------------------------------------------------------------------------------


def part_path(ws: Workspace, shard: int, fingerprint: str) -> Path:
    """Sidecar of a shard built from the plan slice with this fingerprint: what it holds and
    what decoding refused (read by finalize). The fingerprint in the name makes checking
    completeness one stat, not a read."""
    return ws.manifests_dir / "parts" / f"clips-{shard:06d}-{fingerprint[:20]}.json"


def shard_complete(ws: Workspace, plan: Plan, shard: int) -> bool:
    return _complete(ws, shard, plan.shard_fingerprint(shard))


def _complete(ws: Workspace, shard: int, fingerprint: str) -> bool:
    return ws.shard_path(shard).is_file() and part_path(ws, shard, fingerprint).is_file()


def build_shard(
    ws: Workspace, shard: int, items: list[PlanItem], params: PackParams, fingerprint: str
) -> int:
    """Decode, check and write one shard (tar + sidecar). Returns the number of plan items handled."""
    tar_path = ws.shard_path(shard)
    part = part_path(ws, shard, fingerprint)
    # Whatever is there belongs to another plan or was cut short by a kill. The old tar goes
    # first: the new sidecar must never sit beside a tar it does not describe.
    tar_path.unlink(missing_ok=True)
    for stale in [*tar_path.parent.glob(f".{tar_path.name}.tmp-*"), *_parts_of(ws, shard)]:
        stale.unlink(missing_ok=True)
    clips: list[dict[str, Any]] = []
    rejects: list[dict[str, Any]] = []
    with atomic_path(tar_path) as tmp, open(tmp, "wb") as f, ShardWriter(f) as writer:
        for item, sha, src in _with_sources(items):
            lifecycle.raise_if_stopped(
                f"shard {shard} abandoned; finished shards are kept in {tar_path.parent}"
            )
            clip = _clip_or_reject(item, sha, src, params, rejects)
            if clip is None:
                continue
            data = encode_audio(clip.pcm, params.sample_rate, params.fmt)
            meta = {
                "key": item.key,
                "source": item.source,
                "orig_sample_rate": item.orig_sample_rate,
                "orig_channels": item.orig_channels,
                "offset_s": item.start / item.orig_sample_rate,
                "duration_s": len(clip.pcm) / params.sample_rate,
                "num_samples": len(clip.pcm),
                "sample_rate": params.sample_rate,
                "labels": list(item.labels),
                "split": item.split,
                "sha256": item.sha256,
                "silent": clip.silent,
                CHECKSUM: member_checksum(data),  # checked whenever the member is decoded
            }
            writer.add(item.key, data, params.fmt, meta)
            clips.append({**meta, "index_in_shard": len(clips)})
        writer.close()
        f.flush()
        os.fsync(f.fileno())
        # The sidecar lands first: a tar under its final name always has one.
        write_json(part, {"fingerprint": fingerprint, "shard": shard, "clips": clips, "rejects": rejects})
    return len(items)


def _clip_or_reject(
    item: PlanItem, sha: str | None, src: A.AudioSource, params: PackParams, rejects: list[dict[str, Any]]
) -> A.Clip | None:
    def refuse(reason: str, detail: str) -> None:
        offset = item.start / item.orig_sample_rate
        rejects.append(reject(item.source, reason, detail, key=item.key, sha=item.sha256, offset_s=offset))

    if sha != item.sha256:
        return refuse("changed", "file missing or changed since planning; re-run pack")
    try:
        clip = A.prepare_clip(src, item.start, item.stop, params.sample_rate, params.min_duration)
    except A.AudioReject as rej:
        return refuse(rej.reason, rej.detail)
    if clip.silent and params.reject_silent:
        return refuse("silent", "loudest sample below -70 dBFS (--reject-silent)")
    return clip


READ_WHOLE_MAX = 256 << 20  # bytes; a larger source is memory-mapped (page cache, not this process's heap)


def _with_sources(items: list[PlanItem]) -> Iterator[tuple[PlanItem, str | None, A.AudioSource]]:
    """Each item with its source's sha256 now and the bytes that hash was taken of, read once for
    consecutive segments of one file: what is decoded is what was hashed (a read file, exactly; a
    memory-mapped one, unless it is rewritten in place meanwhile), never a second read of the path."""
    path, sha, data = None, None, b""
    with contextlib.ExitStack() as held:
        for item in items:
            if item.source != path:
                held.close()  # the previous source's bytes or mapping go
                path, sha, data = item.source, None, b""
                try:
                    data = held.enter_context(_source_bytes(path))
                    sha = hashlib.sha256(data).hexdigest()
                except OSError:
                    pass
            yield item, sha, data


@contextlib.contextmanager
def _source_bytes(path: str) -> Iterator[bytes | mmap.mmap]:
    with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size <= READ_WHOLE_MAX:
            yield f.read()
            return
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
            yield mapped


def _build_shard_task(task: tuple) -> int:
    """Build one shard under its claim; 0 when another live job holds it or has just finished it."""
    work, shard, items, params, fingerprint = task
    ws = Workspace(work)
    claim = try_claim(ws.manifests_dir / "claims", f"shard-{shard:06d}")
    if claim is None:
        return 0
    with claim:
        if _complete(ws, shard, fingerprint):
            return 0
        return build_shard(ws, shard, items, params, fingerprint)


def _parts_of(ws: Workspace, shard: int) -> list[Path]:
    """Sidecars of a shard, of any plan, and their temporaries."""
    return list((ws.manifests_dir / "parts").glob(f"*clips-{shard:06d}-*"))


# ---- 3. finalize -----------------------------------------------------------------------------


def _finalize(
    ws: Workspace, plan: Plan, fps: list[str], result: PackResult, provenance: dict[str, Any]
) -> PackResult:
    """Gather the shards' sidecars into rejects.parquet and clips.parquet (unless already current)."""
    meta = table_meta(pq.read_schema(ws.clips_manifest)) if _manifest_current(ws, plan.fingerprint) else {}
    if all(k in meta for k in ("n_clips", "n_rejected", "n_silent", "reasons")):  # finished: write nothing
        result.n_packed, result.n_rejected = meta["n_clips"], meta["n_rejected"]
        result.n_silent, result.reasons = meta["n_silent"], meta["reasons"]
    else:
        _write_manifests(ws, plan, fps, result, provenance)
    _remove_stale(ws, plan)
    result.complete = True
    return result


def _write_manifests(
    ws: Workspace, plan: Plan, fps: list[str], result: PackResult, provenance: dict[str, Any]
) -> None:
    tables, rejects, n_rows, n_silent = [], list(plan.rejects), 0, 0
    for shard in range(plan.n_shards):  # one Arrow table per shard: no 2M-row list of dicts
        part = json.loads(part_path(ws, shard, fps[shard]).read_text())
        rows = [{**clip, "row": n_rows + i, "shard": shard} for i, clip in enumerate(part["clips"])]
        n_rows += len(rows)
        n_silent += sum(r["silent"] for r in rows)
        tables.append(clips_table(rows, {}))
        rejects.extend(part["rejects"])
    rejects.sort(key=reject_order)
    reasons = dict(sorted(Counter(r["reason"] for r in rejects).items()))
    result.n_packed, result.n_rejected, result.n_silent, result.reasons = (
        n_rows,
        len(rejects),
        n_silent,
        reasons,
    )
    if result.n_packed + result.n_rejected != result.n_seen:  # an internal bug, never user error
        raise RuntimeError(f"pack lost track of items: {result.n_seen} seen != {n_rows} + {len(rejects)}")
    meta = {
        "kind": "clips",
        "plan_fingerprint": plan.fingerprint,
        "params": asdict(plan.params),
        "format": plan.params.fmt,
        "shard_size": plan.params.shard_size,
        "n_shards": plan.n_shards,
        "n_clips": n_rows,
        "n_rejected": len(rejects),
        "n_silent": n_silent,
        "n_inputs": plan.n_inputs,
        "n_seen": result.n_seen,
        "reasons": reasons,
        "code_version": code_version(),
        "labels_unmatched": len(plan.labels_unmatched),
        **provenance,
    }
    clips = pa.concat_tables(tables).combine_chunks() if tables else clips_table([], {})
    write_table(ws.rejects_manifest, rejects_table(rejects, {**meta, "kind": "rejects"}))
    write_table(ws.clips_manifest, with_meta(clips, meta))  # last: its presence means "packed"


def _manifest_current(ws: Workspace, plan_fingerprint: str) -> bool:
    if not (ws.clips_manifest.is_file() and ws.rejects_manifest.is_file()):
        return False
    try:
        return table_meta(pq.read_schema(ws.clips_manifest)).get("plan_fingerprint") == plan_fingerprint
    except (OSError, ValueError, pa.ArrowException):  # unreadable old manifest: rewrite it
        return False


def _remove_stale(ws: Workspace, plan: Plan) -> None:
    """Shards past the end and scan-cache files of other inputs, left by an earlier pack into this WORK."""
    for tar in ws.shards_dir.glob("clips-*.tar"):
        idx = tar.stem.split("-")[-1]
        if idx.isdigit() and int(idx) >= plan.n_shards:
            tar.unlink(missing_ok=True)
            for part in _parts_of(ws, int(idx)):
                part.unlink(missing_ok=True)
    for scan in (ws.manifests_dir / "scan").glob("scan-*.json"):
        if scan.name not in plan.scan_cache:
            scan.unlink(missing_ok=True)


# ---- helpers ---------------------------------------------------------------------------------


@contextlib.contextmanager
def _pool(workers: int) -> Iterator[Any]:
    if workers <= 1:
        yield None
        return
    # libsoxr resamples on one thread in every process: workers need no torch (seconds per spawn)
    with lifecycle.child_context("spawn").Pool(workers) as pool:  # die with us
        yield pool
