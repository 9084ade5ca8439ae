"""`ssondo pack` end to end on real audio written by the tests.

The round trip reads the shards back with plain webdataset + soundfile and the manifest with
pyarrow (no ssondo code), and compares to samples computed here from the source files."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import soundfile as sf
import soxr
import webdataset as wds
from click.testing import CliRunner

from ssondo_cache.pack import pack
from tests.cache.conftest import tone, tree_digest, write_audio

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


def make_gauntlet(root: Path) -> dict[str, str]:
    """Good clips plus every kind of bad input; returns {file name: expected reason}."""
    root.mkdir(parents=True)
    write_audio(root / "good1.wav", 0.3, 16000, seed=1)
    write_audio(root / "good2.flac", 0.3, 32000, 2, seed=2)
    write_audio(root / "all_zeros.wav", 0.3, 32000, data=np.zeros((9600, 1), np.float32))
    (root / "not_audio.wav").write_text("this is not a wav file\n" * 20)
    (root / "truncated.flac").write_bytes((root / "good2.flac").read_bytes()[:30])
    (root / "empty.wav").write_bytes(b"")
    sf.write(root / "zero_frames.wav", np.zeros((0, 1), np.float32), 16000)
    write_audio(root / "short.wav", 0.05, 16000, seed=3)
    nan = tone(0.3, 16000, seed=4)
    nan[100, 0] = np.nan
    write_audio(root / "nan.wav", 0.3, 16000, subtype="FLOAT", data=nan)
    inf = tone(0.3, 16000, seed=5)
    inf[7, 0] = np.inf
    write_audio(root / "inf.wav", 0.3, 16000, subtype="FLOAT", data=inf)
    write_audio(root / "silent.wav", 0.3, 16000, data=np.zeros((4800, 1), np.float32))
    shutil.copy(root / "good1.wav", root / "zz_copy_of_good1.wav")
    (root / "movie.m4a").write_bytes(b"\x00\x00\x00\x20ftypM4A " + bytes(100))
    (root / "notes.txt").write_text("hello\n")
    write_audio(root / "long_tail.wav", 1.02, 16000, seed=6)  # 1 s segment + a 0.02 s tail
    listed = root.parent / "listed"  # a CSV list beside the folder, with given keys
    write_audio(listed / "audio" / "k1.wav", 0.3, 16000, seed=7)
    write_audio(listed / "audio" / "k2.wav", 0.3, 16000, seed=8)
    with open(listed / "list.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "key", "labels", "split"])
        w.writerow(["audio/k1.wav", "same_key", "dog;bark", "train"])
        w.writerow(["audio/k2.wav", "same_key", "cat", "test"])
        w.writerow(["audio/nowhere.wav", "gone", "", ""])
    return {
        "not_audio.wav": "unreadable",
        "truncated.flac": "unreadable",
        "empty.wav": "empty",
        "zero_frames.wav": "empty",
        "short.wav": "too_short",
        "nan.wav": "nan_inf",
        "inf.wav": "nan_inf",
        "silent.wav": "silent",
        "zz_copy_of_good1.wav": "duplicate",
        "movie.m4a": "unsupported_format",
        "notes.txt": "unsupported_format",
        "long_tail.wav": "too_short",
        "k2.wav": "duplicate_key",
        "nowhere.wav": "missing",
        "all_zeros.wav": "silent",
    }


def test_gauntlet_of_bad_inputs(tmp_path: Path) -> None:
    data = tmp_path / "data"
    expected = make_gauntlet(data)
    work = tmp_path / "work"
    # The folder (recursively), the list, and one file of the folder again.
    res = pack(
        [data, tmp_path / "listed" / "list.csv", data / "good1.wav"],
        work,
        shard_size=3,
        max_duration=1.0,
        reject_silent=True,
        progress=False,
    )
    assert res.complete
    rejects = pq.read_table(work / "manifests" / "rejects.parquet").to_pylist()
    clips = pq.read_table(work / "manifests" / "clips.parquet").to_pylist()
    got = {(Path(r["path"]).name, r["reason"]) for r in rejects}
    for name, reason in expected.items():
        assert (name, reason) in got, (name, reason, sorted(got))
    assert len({reason for reason in expected.values()}) >= 9
    assert ("good1.wav", "duplicate") in got  # listed by the folder and on its own
    tail = next(r for r in rejects if Path(r["path"]).name == "long_tail.wav")
    assert tail["offset_s"] == 1.0 and tail["key"] == "long_tail-s0001"
    assert all(r["detail"] for r in rejects)
    # Counts add up: every item is packed or rejected, and the manifests say the same.
    assert res.n_seen == res.n_packed + res.n_rejected
    assert (res.n_packed, res.n_rejected) == (len(clips), len(rejects))
    assert {Path(c["source"]).name for c in clips} == {"good1.wav", "good2.flac", "long_tail.wav", "k1.wav"}
    assert f"{res.n_seen} seen = {res.n_packed} packed + {res.n_rejected} rejected" in res.summary()
    assert res.reasons["nan_inf"] == 2 and sum(res.reasons.values()) == res.n_rejected
    # A given key is kept as given, with the list's labels and split.
    k1 = next(c for c in clips if c["key"] == "same_key")
    assert k1["labels"] == ["dog", "bark"] and k1["split"] == "train"


def test_silent_is_flagged_not_refused_by_default(tmp_path: Path) -> None:
    write_audio(tmp_path / "in" / "hush.wav", 0.3, 32000, data=np.full((9600, 1), 1e-5, np.float32))
    write_audio(tmp_path / "in" / "loud.wav", 0.3, 32000)
    res = pack([tmp_path / "in"], tmp_path / "w", progress=False)
    clips = {c["key"]: c for c in pq.read_table(tmp_path / "w/manifests/clips.parquet").to_pylist()}
    assert res.n_rejected == 0 and res.n_silent == 1
    assert clips["hush"]["silent"] and not clips["loud"]["silent"]


def test_keys_are_unique_dotless_and_labels_csv_applies(tmp_path: Path) -> None:
    write_audio(tmp_path / "in" / "x.y" / "clip.wav", 0.2, seed=1)
    write_audio(tmp_path / "in" / "x.y" / "clip.flac", 0.2, seed=2)
    write_audio(tmp_path / "in" / "sp ace" / "é.wav", 0.2, seed=3)
    labels = tmp_path / "labels.csv"
    labels.write_text(
        f"path,labels,split\n{tmp_path / 'in' / 'sp ace' / 'é.wav'},speech;french,dev\n/nowhere.wav,x,\n"
    )
    res = pack([tmp_path / "in"], tmp_path / "w", labels_csv=labels, progress=False)
    clips = pq.read_table(tmp_path / "w/manifests/clips.parquet").to_pylist()
    keys = [c["key"] for c in clips]
    assert res.n_packed == 3 and len(set(keys)) == 3
    assert all("." not in k and k.replace("_", "").replace("-", "").isalnum() and k.isascii() for k in keys)
    assert sum(k.startswith("x_y__clip-") for k in keys) == 2  # the collision is resolved by a path hash
    accent = next(c for c in clips if c["source"].endswith(".wav") and "sp ace" in c["source"])
    assert accent["key"] == "sp_ace" and accent["labels"] == ["speech", "french"] and accent["split"] == "dev"
    assert res.labels_unmatched == ["/nowhere.wav"] and "1 --labels rows matched no" in res.summary()


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


def test_parquet_list_with_list_labels(tmp_path: Path) -> None:
    import pyarrow as pa

    write_audio(tmp_path / "data" / "one.flac", 0.3, 16000, seed=1)
    write_audio(tmp_path / "data" / "two.wav", 0.3, 16000, seed=2)
    table = pa.table(
        {
            "path": ["data/one.flac", str(tmp_path / "data" / "two.wav")],
            "labels": [["a", "b"], []],
            "split": ["train", None],
        }
    )
    pq.write_table(table, tmp_path / "list.parquet")
    res = pack([tmp_path / "list.parquet"], tmp_path / "w", progress=False)
    clips = {c["key"]: c for c in pq.read_table(tmp_path / "w/manifests/clips.parquet").to_pylist()}
    assert res.n_packed == 2 and set(clips) == {"data__one", "data__two"}
    assert clips["data__one"]["labels"] == ["a", "b"] and clips["data__one"]["split"] == "train"
    assert clips["data__two"]["labels"] == [] and clips["data__two"]["split"] is None


def test_scan_cache_is_reused_and_a_broken_one_is_rebuilt(small_corpus: Path, tmp_path: Path) -> None:
    work = tmp_path / "w"
    pack([small_corpus], work, progress=False)
    scans = sorted((work / "manifests" / "scan").glob("scan-*.json"))
    assert len(scans) == 1 and len(json.loads(scans[0].read_text())) == 9
    before = tree_digest(work)
    scans[0].write_text("{not json")
    again = pack([small_corpus], work, progress=False)
    assert again.complete and again.shards_built == 0 and tree_digest(work) == before


def test_symlinked_folders_are_followed_once(tmp_path: Path) -> None:
    write_audio(tmp_path / "store" / "x" / "a.wav", 0.2, 32000, seed=1)
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "linked").symlink_to(tmp_path / "store")
    (tmp_path / "store" / "x" / "loop").symlink_to(tmp_path / "store")  # a cycle
    res = pack([tmp_path / "in"], tmp_path / "w", progress=False)
    clips = pq.read_table(tmp_path / "w/manifests/clips.parquet").column("key").to_pylist()
    assert res.n_packed == 1 and res.n_rejected == 0 and clips == ["linked__x__a"]


def test_file_changed_between_plan_and_pack_is_refused(tmp_path: Path) -> None:
    from ssondo_cache.pack import build_shard, part_path
    from ssondo_cache.plan import PackParams, make_plan
    from ssondo_cache.workspace import Workspace

    for i in range(3):
        write_audio(tmp_path / "in" / f"{i}.wav", 0.2, 32000, seed=i)
    plan = make_plan([tmp_path / "in"], PackParams(32000, "wav", 10, 0.1, 10.0, False))
    write_audio(tmp_path / "in" / "1.wav", 0.2, 32000, seed=42)  # edited while packing
    ws = Workspace(tmp_path / "w")
    fp = plan.shard_fingerprint(0)
    build_shard(ws, 0, plan.shard_items(0), plan.params, fp)
    part = json.loads(part_path(ws, 0, fp).read_text())
    assert [c["key"] for c in part["clips"]] == ["0", "2"]
    assert [(Path(r["path"]).name, r["reason"]) for r in part["rejects"]] == [("1.wav", "changed")]
    assert [s["__key__"] for s in wds.WebDataset([str(ws.shard_path(0))], shardshuffle=False)] == ["0", "2"]


def test_build_reads_each_source_once_and_decodes_the_hashed_bytes(tmp_path: Path, monkeypatch) -> None:
    """Issue 17: one open per source (its segments included) and one resample per clip; what is decoded
    is the buffer that was hashed, never the path again (a file changed between the two reads used to
    be decoded under the sha256 of its old bytes)."""
    from ssondo_cache import audio as A
    from ssondo_cache.pack import build_shard
    from ssondo_cache.plan import PackParams, make_plan
    from ssondo_cache.workspace import Workspace

    write_audio(tmp_path / "in" / "a.flac", 0.3, 44100, 2, seed=1)
    write_audio(tmp_path / "in" / "b.wav", 0.3, 48000, 1, seed=2)
    write_audio(tmp_path / "in" / "long.wav", 2.5, 44100, 2, seed=3)  # 3 segments of one file
    plan = make_plan([tmp_path / "in"], PackParams(32000, "flac", 10, 0.1, 1.0, False))
    sources = {it.source for it in plan.items}
    opened, decoded_from, resampled = [], [], []
    real_open, real_soundfile, real_resample = open, A.sf.SoundFile, A.soxr.resample
    monkeypatch.setattr("builtins.open", lambda f, *a, **k: (opened.append(str(f)), real_open(f, *a, **k))[1])

    def soundfile(f, mode="r", *a, **k):  # reads only: encoding a FLAC member opens one to write
        if "r" in mode:
            decoded_from.append(f)
        return real_soundfile(f, mode, *a, **k)

    monkeypatch.setattr(A.sf, "SoundFile", soundfile)
    monkeypatch.setattr(A.soxr, "resample", lambda *a, **k: (resampled.append(1), real_resample(*a, **k))[1])
    ws = Workspace(tmp_path / "w")
    assert build_shard(ws, 0, plan.shard_items(0), plan.params, plan.shard_fingerprint(0)) == 5
    assert sorted(p for p in opened if p in sources) == sorted(sources)  # each exactly once
    assert len(decoded_from) == 5 and not any(isinstance(f, str | Path) for f in decoded_from)
    assert len(resampled) == 5


def test_a_memory_mapped_source_packs_the_same_bytes(small_corpus: Path, tmp_path: Path, monkeypatch) -> None:
    """Sources above READ_WHOLE_MAX are mapped, not read into memory: the shards do not change."""
    import ssondo_cache.pack as pack_mod

    pack([small_corpus], tmp_path / "read", shard_size=4, progress=False)
    monkeypatch.setattr(pack_mod, "READ_WHOLE_MAX", 0)
    pack([small_corpus], tmp_path / "mapped", shard_size=4, progress=False)
    assert tree_digest(tmp_path / "read") == tree_digest(tmp_path / "mapped")


def test_each_shard_fingerprint_is_computed_once_per_pack(
    small_corpus: Path, tmp_path: Path, monkeypatch
) -> None:
    """A fingerprint hashes its whole plan slice (~0.2 ms per clip): pack used to compute each one 4-5 times."""
    from ssondo_cache.plan import Plan

    calls: list[int] = []
    real = Plan.shard_fingerprint
    monkeypatch.setattr(Plan, "shard_fingerprint", lambda self, s: (calls.append(s), real(self, s))[1])
    res = pack([small_corpus], tmp_path / "w", shard_size=2, progress=False)
    assert res.complete and sorted(calls) == list(range(res.n_shards))


def test_plan_fingerprints_do_not_copy_every_item(monkeypatch) -> None:
    """A 2,000-shard plan's start-up hashed 2 M items through ``dataclasses.asdict`` twice (120 s
    measured in benchmarks/scale.py): the fingerprints now encode each item as one JSON line, and
    still tell any change of an item, of the parameters or of the rejects."""
    import dataclasses

    import ssondo_cache.plan as plan_mod
    from ssondo_cache.plan import PackParams, Plan, PlanItem

    calls = []
    real = dataclasses.asdict
    monkeypatch.setattr(plan_mod, "asdict", lambda obj: (calls.append(type(obj).__name__), real(obj))[1])
    params = PackParams(32000, "flac", 4, 0.1, None, False)
    items = [
        PlanItem(f"k{i:03d}", f"/d/{i}.wav", "0" * 64, 0, 100 * i + 1, 44100, 2, ("a",), None)
        for i in range(12)
    ]

    def plan(items=items, params=params, rejects=()):
        return Plan(params, list(items), list(rejects), n_inputs=len(items))

    base = plan()
    shards = [base.shard_fingerprint(s) for s in range(base.n_shards)]
    assert calls == ["PackParams"] * base.n_shards  # the parameters only, never an item
    calls.clear()
    _ = base.fingerprint
    assert calls == ["PackParams"]

    moved = plan(items[:5] + [dataclasses.replace(items[5], stop=7)] + items[6:])
    assert moved.fingerprint != base.fingerprint
    assert [moved.shard_fingerprint(s) == f for s, f in enumerate(shards)] == [True, False, True]
    assert plan(params=dataclasses.replace(params, fmt="wav")).fingerprint != base.fingerprint
    assert plan(rejects=[{"path": "/d/x.wav", "reason": "too short"}]).fingerprint != base.fingerprint
    assert plan().fingerprint == base.fingerprint and plan().shard_fingerprint(2) == shards[2]
