"""`ssondo pack` end to end on real audio written by the tests: the shard format and manifest, the
CLI, and the same bytes on a re-run, after a changed input, with workers and ranks.

The round trip reads the shards back with plain webdataset + soundfile and the manifest with
pyarrow (no ssondo code), and compares to samples computed here from the source files."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import soundfile as sf
import soxr
import webdataset as wds
from click.testing import CliRunner

from ssondo_cache.pack import pack
from tests.cache.conftest import tree_digest, write_audio

INTERFACE_COLUMNS = {
    "key": "string",
    "row": "int64",
    "shard": "int32",
    "index_in_shard": "int32",
    "offset_s": "double",
    "duration_s": "double",
    "num_samples": "int64",
    "sample_rate": "int32",
    "labels": "list<element: string>",
    "split": "string",
    "source": "string",
    "sha256": "string",
    "silent": "bool",
    "crc32c": "string",
}


def expected_pcm(source: str, offset_s: float, n_frames_max: int | None, sr: int) -> np.ndarray:
    """Reference: decode, float32 mean over channels (summed in channel order), libsoxr HQ resample in
    float32, round to int16."""
    info = sf.info(source)
    start = int(round(offset_s * info.samplerate))
    stop = info.frames if n_frames_max is None else min(info.frames, start + n_frames_max)
    x, orig = sf.read(source, start=start, stop=stop, dtype="float32", always_2d=True)
    y = sum(x[:, c] for c in range(x.shape[1])) / np.float32(x.shape[1])  # float32 throughout
    if orig != sr:
        y = soxr.resample(y, orig, sr, quality="HQ")
    return np.clip(np.rint(y.astype(np.float64) * 32768), -32768, 32767).astype(np.int16)


@pytest.mark.parametrize("fmt", ["wav", "flac"])
def test_round_trip_with_plain_webdataset_and_pyarrow(small_corpus: Path, tmp_path: Path, fmt: str) -> None:
    work = tmp_path / "work"
    res = pack([small_corpus], work, fmt=fmt, shard_size=4, max_duration=1.0, progress=False)
    assert res.complete and res.n_rejected == 0
    table = pq.read_table(work / "manifests" / "clips.parquet")
    assert {f.name: str(f.type) for f in table.schema} == INTERFACE_COLUMNS
    meta = json.loads(table.schema.metadata[b"ssondo"])
    assert meta["format"] == fmt and meta["shard_size"] == 4 and meta["n_shards"] == res.n_shards
    rows = table.to_pylist()
    assert [r["row"] for r in rows] == list(range(len(rows)))
    assert [r["key"] for r in rows] == sorted(r["key"] for r in rows)
    assert len(rows) == 11  # 8 short files + long.wav (2.5 s) in 3 one-second segments

    shards = sorted(str(p) for p in (work / "shards").glob("clips-*.tar"))
    assert len(shards) == res.n_shards == 3
    samples = list(wds.WebDataset(shards, shardshuffle=False))
    assert [s["__key__"] for s in samples] == [r["key"] for r in rows]
    for r, s in zip(rows, samples, strict=True):
        assert s["__url__"].endswith(f"clips-{r['shard']:06d}.tar")
        assert sorted(k for k in s if not k.startswith("__")) == sorted([fmt, "json"])
        pcm, sr = sf.read(io.BytesIO(s[fmt]), dtype="int16")
        assert sr == r["sample_rate"] == 32000 and pcm.ndim == 1 and len(pcm) == r["num_samples"]
        assert r["duration_s"] == pytest.approx(len(pcm) / sr)
        seg_frames = None if r["offset_s"] == 0 and "long" not in r["key"] else 8000
        np.testing.assert_array_equal(pcm, expected_pcm(r["source"], r["offset_s"], seg_frames, 32000))
        assert r["sha256"] == hashlib.sha256(Path(r["source"]).read_bytes()).hexdigest()
        side = json.loads(s["json"])
        assert side["source"] == r["source"] and side["offset_s"] == r["offset_s"]
        assert side["orig_sample_rate"] == sf.info(r["source"]).samplerate
        assert side["orig_channels"] == sf.info(r["source"]).channels
    # A 32 kHz mono PCM_16 input comes back sample for sample, untouched.
    one = next(s for s in samples if s["__key__"] == "a__tone1")
    src, _ = sf.read(small_corpus / "a" / "tone1.wav", dtype="int16")
    np.testing.assert_array_equal(sf.read(io.BytesIO(one[fmt]), dtype="int16")[0], src)
    # Long file: segments at 0, 1, 2 s, the last one half a second.
    segs = [r for r in rows if r["key"].startswith("long-s")]
    assert [(r["offset_s"], r["num_samples"]) for r in segs] == [(0.0, 32000), (1.0, 32000), (2.0, 16000)]


def test_repack_is_identical_and_rerun_is_a_noop(small_corpus: Path, tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    first = pack([small_corpus], a, shard_size=4, progress=False)
    pack([small_corpus], b, shard_size=4, progress=False)
    assert tree_digest(a) == tree_digest(b)
    mtimes = {p: p.stat().st_mtime_ns for p in a.rglob("*") if p.is_file()}
    again = pack([small_corpus], a, shard_size=4, progress=False)
    assert again.complete and again.shards_built == 0 and again.shards_skipped == again.n_shards
    assert again.summary() == first.summary().replace(
        f"({first.n_shards} written now, 0 already", f"(0 written now, {first.n_shards} already"
    )
    assert {p: p.stat().st_mtime_ns for p in a.rglob("*") if p.is_file()} == mtimes


def test_changed_input_rebuilds_only_affected_shards(small_corpus: Path, tmp_path: Path) -> None:
    work = tmp_path / "w"
    first = pack([small_corpus], work, shard_size=4, progress=False)
    write_audio(small_corpus / "y.wav", 0.25, 32000, seed=99)  # new content, same key
    only_rank1 = pack([small_corpus], work, shard_size=4, rank=1, world_size=2, progress=False)
    assert only_rank1.shards_built == 0  # y.wav sits in shard 2, not rank 1's
    partial = pack([small_corpus], work, shard_size=4, rank=0, world_size=2, finalize=False, progress=False)
    assert partial.shards_built == 1  # the old manifest no longer describes the shards: it is gone
    assert not (work / "manifests" / "clips.parquet").exists()
    second = pack([small_corpus], work, shard_size=4, progress=False)
    assert second.complete and second.shards_built == 0 and second.n_packed == first.n_packed
    fresh = tmp_path / "fresh"
    pack([small_corpus], fresh, shard_size=4, progress=False)
    assert tree_digest(work) == tree_digest(fresh)
    for name in ("x.aiff", "y.wav", "long.wav"):  # fewer clips: shard 2 and its sidecar must go
        (small_corpus / name).unlink()
    third = pack([small_corpus], work, shard_size=4, progress=False)
    assert third.complete and third.n_shards == 2
    smaller = tmp_path / "smaller"
    pack([small_corpus], smaller, shard_size=4, progress=False)
    assert tree_digest(work) == tree_digest(smaller)


@pytest.mark.slow
def test_two_workers_and_two_ranks_match_one_process(small_corpus: Path, tmp_path: Path) -> None:
    opts = dict(shard_size=2, max_duration=1.0, progress=False)
    one = tmp_path / "one"
    pack([small_corpus], one, workers=1, **opts)
    two = tmp_path / "two"
    pack([small_corpus], two, workers=2, **opts)
    assert tree_digest(one) == tree_digest(two)

    ranks = tmp_path / "ranks"
    r0 = pack([small_corpus], ranks, rank=0, world_size=2, **opts)
    assert not r0.complete and r0.own_missing == 0 and r0.shards_missing == r0.n_shards // 2
    assert not (ranks / "manifests" / "clips.parquet").exists()
    r1 = pack([small_corpus], ranks, rank=1, world_size=2, finalize=False, **opts)
    assert not r1.complete and r1.shards_missing == 0
    done = pack([small_corpus], ranks, pack_shards=False, **opts)
    assert done.complete and done.shards_built == 0
    assert tree_digest(one) == tree_digest(ranks)


def test_cli_pack_prints_summary_and_exit_status(small_corpus: Path, tmp_path: Path, monkeypatch) -> None:
    from pipeline.cli import main

    for var in ("RANK", "WORLD_SIZE", "SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT"):
        monkeypatch.delenv(var, raising=False)
    runner = CliRunner()
    work = tmp_path / "w"
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    out = runner.invoke(
        main, ["pack", str(small_corpus), "--out", str(work), "--shard-size", "3", "--no-progress"]
    )
    assert out.exit_code == 0, out.output  # this rank's shards are done; the manifest waits for rank 1
    out = runner.invoke(
        main, ["pack", str(small_corpus), "--out", str(work), "--shard-size", "3", "--finalize"]
    )
    assert out.exit_code == 1 and "Manifests not written yet" in out.output
    monkeypatch.delenv("RANK")
    monkeypatch.delenv("WORLD_SIZE")
    out = runner.invoke(
        main, ["pack", str(small_corpus), "--out", str(work), "--shard-size", "3", "--no-progress"]
    )
    assert out.exit_code == 0, out.output
    assert "9 seen = 9 packed + 0 rejected" in out.output and "complete" in out.output
    out = runner.invoke(main, ["pack", str(tmp_path / "nope"), "--out", str(work)])
    assert out.exit_code != 0 and "does not exist" in out.output
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "a.txt").write_text("x")
    out = runner.invoke(
        main, ["pack", str(tmp_path / "junk"), "--out", str(tmp_path / "w2"), "--no-progress"]
    )
    assert out.exit_code == 1 and "nothing was packed" in out.output
    (tmp_path / "bad.csv").write_text("file,labels\na.wav,x\n")
    out = runner.invoke(main, ["pack", str(tmp_path / "bad.csv"), "--out", str(tmp_path / "w3")])
    assert out.exit_code == 1 and "needs a `path` column" in out.output and out.exception is not None
    assert not isinstance(out.exception, ValueError)  # a clean message, not a traceback
