"""The zarr v3 teacher cache: layout, whole-shard writes, resumable progress, refusing mismatches."""

from __future__ import annotations

import json
import multiprocessing as mp

import numpy as np
import pytest
import zarr

from ssondo_cache import cache_index
from ssondo_cache.cache_index import list_caches, resolve_cache
from ssondo_cache.store import (
    CacheMismatchError,
    CacheStore,
    block_rows,
    cache_path,
    create_or_open,
)


def _attrs(offsets, w=3, d=4, fingerprint="f" * 64, **extra):
    return {
        "teacher": "tiny",
        "teacher_id": "tiny-0123456789ab",
        "ts": 1.0,
        "hop": 1.0,
        "sample_rate": 32000,
        "teacher_sample_rate": 16000,
        "frontend": {},
        "dtype": "float16",
        "clips_fingerprint": fingerprint,
        "code_version": "test",
        "n_rows": offsets[-1],
        "max_windows": w,
        "embed_dim": d,
        "shard_offsets": offsets,
        **extra,
    }


def _rows(start, stop, w=3, d=4):
    n = stop - start
    rng = np.random.default_rng(start)
    nw = rng.integers(1, w + 1, size=n).astype(np.int32)
    emb = rng.standard_normal((n, w, d)).astype(np.float16)
    for i, k in enumerate(nw):
        emb[i, k:] = np.nan
    clip = np.nanmean(emb.astype(np.float32), axis=1).astype(np.float16)
    return emb, clip, nw


def _fill(store, blocks):
    for k in blocks:
        a, b = store.block_rows(k)
        store.write_block(k, *_rows(a, b))


def test_block_size():
    assert block_rows([0, 1000, 2000, 2017]) == 1000
    assert block_rows([0, 4, 7, 11], shard_size=4) == 4  # the pack's shard size wins
    assert block_rows([0, 3, 7, 8]) == 4  # else the largest tar shard


def test_layout_readable_with_plain_zarr(tmp_path):
    path = cache_path(tmp_path, "tiny-0123456789ab", "ts1-hop1")
    store = create_or_open(path, _attrs([0, 4, 8, 10]))
    _fill(store, [0, 1, 2])
    assert store.mark_finished()

    g = zarr.open_group(str(path), mode="r")  # no ssondo code from here on
    assert g["emb"].shape == (10, 3, 4) and g["emb"].dtype == np.float16
    assert g["clip"].shape == (10, 4) and g["clip"].dtype == np.float16
    assert g["n_windows"].shape == (10,) and g["n_windows"].dtype == np.int32
    assert g["done"].shape == (3,) and g["done"].dtype == bool and g["done"][:].all()
    for key in (
        "teacher",
        "teacher_id",
        "ts",
        "hop",
        "sample_rate",
        "teacher_sample_rate",
        "frontend",
        "dtype",
        "clips_fingerprint",
        "code_version",
        "started",
        "finished",
    ):
        assert key in g.attrs, key
    assert g.attrs["finished"]
    emb, clip, nw = _rows(4, 8)
    np.testing.assert_array_equal(g["emb"][4:8], emb)
    np.testing.assert_array_equal(g["clip"][4:8], clip)
    np.testing.assert_array_equal(g["n_windows"][4:8], nw)
    # one zarr shard per tar shard: the outer shard shape is the tar shard's row count
    meta = json.loads((path / "emb" / "zarr.json").read_text())
    assert meta["chunk_grid"]["configuration"]["chunk_shape"] == [4, 3, 4]
    assert meta["codecs"][0]["name"] == "sharding_indexed"


def test_reading_api(tmp_path):
    store = create_or_open(tmp_path / "c.zarr", _attrs([0, 4, 8, 10]))
    assert store.n_rows == 10 and store.embed_dim == 4 and store.n_shards == 3
    assert store.shard_rows(1) == (4, 8) and store.shard_rows(2) == (8, 10)
    with pytest.raises(IndexError):
        store.shard_rows(3)
    assert store.n_blocks == 3 and store.block_rows(2) == (8, 10)
    assert store.missing_rows() == 10 and not store.is_complete() and store.pending_blocks() == [0, 1, 2]
    _fill(store, [1])
    assert store.missing_rows() == 6 and store.pending_blocks() == [0, 2]
    assert store.shard_done(1) and not store.shard_done(0)
    assert not store.mark_finished()
    _fill(store, [2])
    assert store.missing_rows() == 4 and store.rows_done() == 6

    reader = CacheStore(tmp_path / "c.zarr")
    emb, nw = reader.read_windows(4, 8)
    want_emb, want_clip, want_nw = _rows(4, 8)
    assert emb.dtype == np.float32 and emb.shape == (4, 3, 4)
    np.testing.assert_array_equal(nw, want_nw)
    np.testing.assert_array_equal(emb, want_emb.astype(np.float32))
    np.testing.assert_array_equal(reader.read_clip(4, 8), want_clip.astype(np.float32))
    assert np.isnan(reader.read_clip(0, 4)).all()  # not written yet


def test_wrong_shapes_are_refused(tmp_path):
    store = create_or_open(tmp_path / "c.zarr", _attrs([0, 4, 8]))
    emb, clip, nw = _rows(0, 3)
    with pytest.raises(ValueError, match="expected"):
        store.write_block(0, emb, clip, nw)
    emb, clip, nw = _rows(0, 4)
    nw[1] = 0
    with pytest.raises(ValueError, match="not computed"):
        store.write_block(0, emb, clip, nw)
    assert not store.done().any()


def test_reopening_with_other_settings_is_refused(tmp_path):
    path = tmp_path / "c.zarr"
    create_or_open(path, _attrs([0, 4, 8]))
    create_or_open(path, _attrs([0, 4, 8]))  # same settings: fine (resume)
    with pytest.raises(CacheMismatchError, match="clips_fingerprint.*Delete"):
        create_or_open(path, _attrs([0, 4, 8], fingerprint="0" * 64))
    with pytest.raises(CacheMismatchError, match="max_windows"):
        create_or_open(path, _attrs([0, 4, 8], w=5))


def test_uneven_tar_shards_map_to_blocks(tmp_path):
    """Tar shards left short by decode-time refusals: blocks keep the pack's shard size."""
    store = create_or_open(tmp_path / "c.zarr", _attrs([0, 4, 7, 11], zarr_shard_rows=4))
    assert store.n_shards == 3 and store.n_blocks == 3
    assert [store.block_rows(k) for k in range(3)] == [(0, 4), (4, 8), (8, 11)]
    _fill(store, [1])  # rows 4..8: all of tar shard 1 (4..7) and the first row of tar shard 2 (7..11)
    assert store.shard_done(1) and not store.shard_done(2) and not store.shard_done(0)
    _fill(store, [2])
    assert store.shard_done(2) and not store.shard_done(0) and store.rows_done() == 7
    meta = json.loads((tmp_path / "c.zarr" / "clip" / "zarr.json").read_text())
    assert meta["chunk_grid"]["configuration"]["chunk_shape"] == [4, 4]


def _create_and_write(path, block):
    store = create_or_open(path, _attrs([0, 4, 8, 12, 16]))
    _fill(store, [block])


def test_concurrent_creation_and_disjoint_shard_writes(tmp_path):
    """Four processes create the same cache at once and each writes its own tar shard: nothing lost."""
    path = tmp_path / "c.zarr"
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_create_and_write, args=(path, s)) for s in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    store = CacheStore(path)
    assert store.is_complete()
    emb, nw = store.read_windows(0, 16)
    want = [_rows(a, a + 4) for a in (0, 4, 8, 12)]
    np.testing.assert_array_equal(emb, np.concatenate([w[0] for w in want]).astype(np.float32))
    np.testing.assert_array_equal(nw, np.concatenate([w[2] for w in want]))
    assert not list(tmp_path.glob(".*tmp*"))  # no temporary folders left behind


def test_names_and_listing(tmp_path, monkeypatch):
    monkeypatch.setattr(cache_index, "_workspace_fingerprint", lambda work: "f" * 64)
    a = create_or_open(cache_path(tmp_path, "tiny-0123456789ab", "ts1-hop1"), _attrs([0, 4, 8]))
    _fill(a, [0])
    create_or_open(
        cache_path(tmp_path, "tiny-0123456789ab", "ts0.5-hop0.5"), _attrs([0, 4, 8], ts=0.5, hop=0.5)
    )
    create_or_open(
        cache_path(tmp_path, "other-aaaaaaaaaaaa", "ts1-hop1"),
        _attrs([0, 4, 8], teacher_id="other-aaaaaaaaaaaa", fingerprint="0" * 64),
    )

    assert resolve_cache(tmp_path, "tiny-0123456789ab/ts1-hop1").name == "ts1-hop1.zarr"
    assert resolve_cache(tmp_path, "ts0.5-hop0.5").parent.name == "tiny-0123456789ab"
    with pytest.raises(ValueError, match="ambiguous"):
        resolve_cache(tmp_path, "ts1-hop1")
    with pytest.raises(FileNotFoundError, match="caches there"):
        resolve_cache(tmp_path, "ts9-hop9")

    infos = {i.name: i for i in list_caches(tmp_path)}
    assert sorted(infos) == [
        "other-aaaaaaaaaaaa/ts1-hop1",
        "tiny-0123456789ab/ts0.5-hop0.5",
        "tiny-0123456789ab/ts1-hop1",
    ]
    one = infos["tiny-0123456789ab/ts1-hop1"]
    assert (one.rows_done, one.rows_total, one.complete) == (4, 8, False)
    assert one.size_bytes > 0 and one.matches_manifest is True and one.ts == 1.0
    assert infos["other-aaaaaaaaaaaa/ts1-hop1"].matches_manifest is False

    monkeypatch.setattr(cache_index, "_workspace_fingerprint", lambda work: "0" * 64)
    assert cache_index.open_cache(tmp_path, "other-aaaaaaaaaaaa/ts1-hop1").n_rows == 8
    with pytest.raises(CacheMismatchError, match="another clips manifest"):
        cache_index.open_cache(tmp_path, "tiny-0123456789ab/ts1-hop1")
