"""Step 3 of `ssondo pack`: once every shard is complete, gather the shards' sidecars into
rejects.parquet, then clips.parquet (its presence means "packed"), and remove what an earlier pack
into the same WORK left beyond this plan."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.parquet as pq

from ssondo_cache.manifests import clips_table, rejects_table, table_meta, with_meta, write_table
from ssondo_cache.pack_shards import part_path, parts_of
from ssondo_cache.plan import Plan, reject_order
from ssondo_cache.provenance import code_version
from ssondo_cache.workspace import Workspace

if TYPE_CHECKING:
    from ssondo_cache.pack import PackResult


def finalize(
    ws: Workspace, plan: Plan, fps: list[str], result: PackResult, provenance: dict[str, Any]
) -> PackResult:
    """Gather the shards' sidecars into rejects.parquet and clips.parquet (unless already current)."""
    meta = table_meta(pq.read_schema(ws.clips_manifest)) if manifest_current(ws, plan.fingerprint) else {}
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


def manifest_current(ws: Workspace, plan_fingerprint: str) -> bool:
    """Both manifests exist and clips.parquet was written for this plan."""
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
            for part in parts_of(ws, int(idx)):
                part.unlink(missing_ok=True)
    for scan in (ws.manifests_dir / "scan").glob("scan-*.json"):
        if scan.name not in plan.scan_cache:
            scan.unlink(missing_ok=True)
