"""The clips and rejects manifests (Parquet): schemas, atomic writing, reading with clear errors.

``clips.parquet`` has one row per packed clip, in shard order; ``rejects.parquet`` one row
per input (or segment of an input) that was refused, with the reason. Both carry a JSON
blob under the schema metadata key ``b"ssondo"`` (pack parameters, code version, counts).
See manifests/README.md for the column meanings.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from ssondo_cache.atomic import atomic_path
from ssondo_cache.workspace import Workspace

META_KEY = b"ssondo"

CLIPS_SCHEMA = pa.schema(
    [
        pa.field("key", pa.string(), nullable=False),
        pa.field("row", pa.int64(), nullable=False),  # 0..N-1, global position in shard order
        pa.field("shard", pa.int32(), nullable=False),
        pa.field("index_in_shard", pa.int32(), nullable=False),
        pa.field("offset_s", pa.float64(), nullable=False),  # where the clip starts in its source
        pa.field("duration_s", pa.float64(), nullable=False),
        pa.field("num_samples", pa.int64(), nullable=False),
        pa.field("sample_rate", pa.int32(), nullable=False),
        pa.field("labels", pa.list_(pa.string()), nullable=False),
        pa.field("split", pa.string()),  # null when the input gave none
        pa.field("source", pa.string(), nullable=False),
        pa.field("sha256", pa.string(), nullable=False),  # of the source file's bytes
        pa.field("silent", pa.bool_(), nullable=False),
        pa.field("crc32c", pa.string()),  # of the audio member's bytes; null: packed before checksums
    ]
)

REJECTS_SCHEMA = pa.schema(
    [
        pa.field("path", pa.string(), nullable=False),
        pa.field("reason", pa.string(), nullable=False),  # one of REASONS
        pa.field("detail", pa.string(), nullable=False),
        pa.field("key", pa.string()),  # the key it would have had, when one was assigned
        pa.field("offset_s", pa.float64()),  # null: the whole input; else the refused segment's start
        pa.field("sha256", pa.string()),  # of the source bytes, when they could be read
    ]
)

REASONS: dict[str, str] = {
    "missing": "listed path does not exist",
    "unsupported_format": "not an audio format soundfile can decode (by extension)",
    "unreadable": "not audio, or a corrupt file soundfile cannot decode",
    "empty": "0 bytes, or an audio header with no samples",
    "too_short": "shorter than --min-duration (also the short tail of a split long file)",
    "nan_inf": "NaN or infinite sample values",
    "silent": "loudest sample below -70 dBFS (refused only with --reject-silent; else flagged)",
    "duplicate": "same bytes (sha256) as an input already kept, or the same path listed twice",
    "duplicate_key": "a list gave a key already given to another row",
    "changed": "the file changed between planning and packing",
    "not_a_file": "not a regular file (FIFO, socket, device, folder): skipped before opening it",
    "truncated": "a WAV whose header claims more audio than the file holds (cut short by a copy?)",
}


class ManifestError(RuntimeError):
    """A manifest is missing or does not belong with the rest of WORK."""


def clips_table(rows: Sequence[dict[str, Any]], meta: dict[str, Any]) -> pa.Table:
    return _table(rows, CLIPS_SCHEMA, meta)


def rejects_table(rows: Sequence[dict[str, Any]], meta: dict[str, Any]) -> pa.Table:
    return _table(rows, REJECTS_SCHEMA, meta)


def write_table(path: str | Path, table: pa.Table) -> None:
    """Write a Parquet file atomically (readers see the old file or the new one, never half)."""
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")


def read_clips(work: str | Path) -> pa.Table:
    """The clips manifest of a packed WORK folder."""
    return _read(Workspace(work).clips_manifest, "clips")


def read_rejects(work: str | Path) -> pa.Table:
    return _read(Workspace(work).rejects_manifest, "rejects")


def clips_meta(work: str | Path) -> dict[str, Any]:
    """The JSON metadata of clips.parquet (pack parameters, code version, n_shards ...)."""
    path = Workspace(work).clips_manifest
    _require(path, "clips")
    return table_meta(pq.read_schema(path))


def table_meta(table_or_schema: pa.Table | pa.Schema) -> dict[str, Any]:
    schema = table_or_schema.schema if isinstance(table_or_schema, pa.Table) else table_or_schema
    raw = (schema.metadata or {}).get(META_KEY)
    return json.loads(raw) if raw else {}


def clips_fingerprint(work_or_table: str | Path | pa.Table) -> str:
    """sha256 over (key, row, shard, sha256) of every clip: which clips sit where, nothing else.

    Stable under metadata changes; caches and sampling manifests store it to refuse a
    WORK folder that was re-packed differently."""
    table = work_or_table if isinstance(work_or_table, pa.Table) else read_clips(work_or_table)
    h = hashlib.sha256()
    cols = [table.column(c).to_pylist() for c in ("key", "row", "shard", "sha256")]
    for key, row, shard, sha in zip(*cols, strict=True):
        h.update(f"{key}\t{row}\t{shard}\t{sha}\n".encode())
    return h.hexdigest()


def with_meta(table: pa.Table, meta: dict[str, Any]) -> pa.Table:
    """The table with ``meta`` as its ``b"ssondo"`` JSON schema metadata (replacing any)."""
    blob = json.dumps(meta, sort_keys=True, separators=(",", ":"), default=str).encode()
    return table.replace_schema_metadata({META_KEY: blob})


def _table(rows: Sequence[dict[str, Any]], schema: pa.Schema, meta: dict[str, Any]) -> pa.Table:
    columns = {f.name: [r.get(f.name) for r in rows] for f in schema}
    return with_meta(pa.Table.from_pydict(columns, schema=schema), meta)


def _require(path: Path, kind: str) -> None:
    if not path.is_file():
        raise ManifestError(
            f"no {kind} manifest at {path}: pack the corpus first (`ssondo pack INPUT... --out {path.parent.parent}`)"
            + (" and let it finish (or run it with --finalize)" if kind == "clips" else "")
        )


def _read(path: Path, kind: str) -> pa.Table:
    _require(path, kind)
    return pq.read_table(path)
