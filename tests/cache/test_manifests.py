"""Manifest schemas, reading with clear errors, the fingerprint; clip keys."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ssondo_cache import manifests as M
from ssondo_cache.keys import disambiguate, is_valid_key, key_from_relpath, sanitize, segment_key
from ssondo_cache.workspace import Workspace


def clip_row(key: str, row: int, shard: int = 0, sha: str = "ab") -> dict:
    return {
        "key": key,
        "row": row,
        "shard": shard,
        "index_in_shard": row,
        "offset_s": 0.0,
        "duration_s": 1.0,
        "num_samples": 32000,
        "sample_rate": 32000,
        "labels": ["x"],
        "split": None,
        "source": f"/{key}.wav",
        "sha256": sha,
        "silent": False,
    }


def test_schemas_match_the_interface() -> None:
    assert M.CLIPS_SCHEMA.names == [
        "key",
        "row",
        "shard",
        "index_in_shard",
        "offset_s",
        "duration_s",
        "num_samples",
        "sample_rate",
        "labels",
        "split",
        "source",
        "sha256",
        "silent",
        "crc32c",
    ]
    assert M.CLIPS_SCHEMA.field("row").type == pa.int64() and M.CLIPS_SCHEMA.field("shard").type == pa.int32()
    assert M.CLIPS_SCHEMA.field("labels").type == pa.list_(pa.string())
    assert M.REJECTS_SCHEMA.names == ["path", "reason", "detail", "key", "offset_s", "sha256"]


def test_write_read_meta_and_fingerprint(tmp_path: Path) -> None:
    ws = Workspace(tmp_path)
    rows = [clip_row("a", 0), clip_row("b", 1)]
    M.write_table(ws.clips_manifest, M.clips_table(rows, {"n_shards": 1, "note": "first"}))
    assert not list(ws.manifests_dir.glob(".*"))  # atomic: no temporary left behind
    table = M.read_clips(tmp_path)
    assert table.column("key").to_pylist() == ["a", "b"] and table.schema.field("key").nullable is False
    assert M.clips_meta(tmp_path) == {"n_shards": 1, "note": "first"}
    fp = M.clips_fingerprint(tmp_path)
    assert fp == M.clips_fingerprint(table) and len(fp) == 64
    M.write_table(ws.clips_manifest, M.clips_table(rows, {"n_shards": 1, "note": "other metadata"}))
    assert M.clips_fingerprint(tmp_path) == fp  # metadata does not change which clips sit where
    M.write_table(ws.clips_manifest, M.clips_table([clip_row("a", 0), clip_row("b", 1, shard=1)], {}))
    assert M.clips_fingerprint(tmp_path) != fp
    assert pq.read_table(ws.clips_manifest).schema.metadata[M.META_KEY] == b"{}"


def test_missing_manifest_error_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(M.ManifestError, match="ssondo pack"):
        M.read_clips(tmp_path)
    with pytest.raises(M.ManifestError, match="ssondo pack"):
        M.clips_meta(tmp_path)


def test_bad_row_is_refused_by_the_schema() -> None:
    with pytest.raises((pa.ArrowInvalid, pa.ArrowTypeError)):
        M.clips_table([{**clip_row("a", 0), "row": "zero"}], {})


def test_keys_from_paths() -> None:
    assert key_from_relpath("dogs/bark 01.wav") == "dogs__bark_01"
    assert key_from_relpath("a.b.c/d.e.flac") == "a_b_c__d_e"
    assert key_from_relpath("x/.wav") == "x__wav"
    assert sanitize("../évil/ key") == "vil_key" and sanitize("...") == "clip"
    assert segment_key("k", 3) == "k-s0003"
    long = sanitize("z" * 500)
    assert len(long) <= 160 and long != sanitize("z" * 501)


@given(st.lists(st.text(min_size=1, max_size=30), min_size=1, max_size=30, unique=True))
def test_keys_valid_unique_and_independent_of_order(paths: list[str]) -> None:
    keys = disambiguate([key_from_relpath(p) for p in paths], paths)
    assert len(set(keys)) == len(keys) and all(is_valid_key(k) for k in keys)
    rev = disambiguate([key_from_relpath(p) for p in paths[::-1]], paths[::-1])
    assert dict(zip(paths, keys, strict=True)) == dict(zip(paths[::-1], rev, strict=True))


def test_given_keys_are_kept_and_others_move_aside() -> None:
    keys = disambiguate(["a", "a", "b"], ["/given", "/derived", "/b"], fixed=[0])
    assert keys[0] == "a" and keys[1].startswith("a-") and keys[2] == "b"
    with pytest.raises(ValueError, match="same clip key"):
        disambiguate(["a", "a"], ["/1", "/2"], fixed=[0, 1])
