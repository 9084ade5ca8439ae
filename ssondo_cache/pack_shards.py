"""Step 2 of `ssondo pack`: build one shard (tar + sidecar) from its slice of the plan.

Each owned shard is decoded, checked (NaN/Inf, silence), downmixed, resampled and written to a
temporary name, then renamed. A sidecar ``manifests/parts/clips-NNNNNN-<fingerprint of the plan
slice>.json``, written just before the rename, records the clips it holds and those refused while
decoding; a shard whose tar and current sidecar both exist is complete. A shard is built under a claim
(``claims.py``) so that two jobs on one WORK never build the same shard at once.
Durability, per shard (not per clip): the tar is fsynced once, the sidecar once, then the rename.
"""

from __future__ import annotations

import contextlib
import hashlib
import mmap
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ssondo_cache import audio as A
from ssondo_cache import lifecycle
from ssondo_cache.atomic import atomic_path, write_json
from ssondo_cache.claims import try_claim
from ssondo_cache.plan import PackParams, Plan, PlanItem, reject
from ssondo_cache.shards import CHECKSUM, ShardWriter, encode_audio, member_checksum
from ssondo_cache.workspace import Workspace


def part_path(ws: Workspace, shard: int, fingerprint: str) -> Path:
    """Sidecar of a shard built from the plan slice with this fingerprint: what it holds and
    what decoding refused (read by finalize). The fingerprint in the name makes checking
    completeness one stat, not a read."""
    return ws.manifests_dir / "parts" / f"clips-{shard:06d}-{fingerprint[:20]}.json"


def shard_complete(ws: Workspace, plan: Plan, shard: int) -> bool:
    return is_complete(ws, shard, plan.shard_fingerprint(shard))


def is_complete(ws: Workspace, shard: int, fingerprint: str) -> bool:
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
    for stale in [*tar_path.parent.glob(f".{tar_path.name}.tmp-*"), *parts_of(ws, shard)]:
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


def build_shard_task(task: tuple) -> int:
    """Build one shard under its claim; 0 when another live job holds it or has just finished it."""
    work, shard, items, params, fingerprint = task
    ws = Workspace(work)
    claim = try_claim(ws.manifests_dir / "claims", f"shard-{shard:06d}")
    if claim is None:
        return 0
    with claim:
        if is_complete(ws, shard, fingerprint):
            return 0
        return build_shard(ws, shard, items, params, fingerprint)


def parts_of(ws: Workspace, shard: int) -> list[Path]:
    """Sidecars of a shard, of any plan, and their temporaries."""
    return list((ws.manifests_dir / "parts").glob(f"*clips-{shard:06d}-*"))
