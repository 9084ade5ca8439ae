"""Every byte that is trusted is checked; nothing hangs; a bad input is recorded, not fatal (issue 14).

Faults are injected the way they happen: PCM bytes flipped inside a packed WAV shard, a zarr shard
file of a finished cache deleted or overwritten, a source rewritten with the same size and mtime, a
WAV cut short after its header, a FIFO among the inputs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import google_crc32c
import numpy as np
import pyarrow.parquet as pq
import pytest
import soundfile as sf
from click.testing import CliRunner

from pipeline.cli import main as cli
from ssondo_cache.cache_index import list_caches, open_cache, verify_cache
from ssondo_cache.extract import extract
from ssondo_cache.manifests import read_clips, read_rejects
from ssondo_cache.pack import pack
from ssondo_cache.shards import CorruptShardError, iter_shard
from ssondo_cache.store import CacheBlockError
from ssondo_cache.workspace import Workspace
from tests.cache.conftest import write_audio

REPO = Path(__file__).resolve().parents[2]
TINY = "py:tests.helpers.tiny_teacher:make"


def _corpus(root: Path, n: int = 8) -> Path:
    for i in range(n):
        write_audio(root / "audio" / f"c{i:02d}.wav", 0.5, 16000, seed=i)
    work = root / "work"
    pack([root / "audio"], work, sample_rate=16000, fmt="wav", shard_size=4, progress=False)
    return work


def _flip(tar_path: Path, member: str, n_bytes: int = 400) -> None:
    """Invert ``n_bytes`` in the middle of a member's data, in place (the tar itself stays valid)."""
    with tarfile.open(tar_path) as tar:
        info = tar.getmember(member)
    with open(tar_path, "r+b") as f:
        at = info.offset_data + info.size // 2
        f.seek(at)
        data = bytes(b ^ 0xFF for b in f.read(n_bytes))
        f.seek(at)
        f.write(data)


def test_every_member_checksum_is_recorded_in_its_json_and_the_manifest(tmp_path: Path) -> None:
    work = _corpus(tmp_path)
    clips = read_clips(work).to_pylist()
    assert all(r["crc32c"] is not None for r in clips)
    for shard in range(2):
        with tarfile.open(Workspace(work).shard_path(shard)) as tar:
            for r in (r for r in clips if r["shard"] == shard):
                audio = tar.extractfile(f"{r['key']}.wav").read()
                meta = json.loads(tar.extractfile(f"{r['key']}.json").read())
                assert meta["crc32c"] == r["crc32c"] == f"{google_crc32c.value(audio):08x}"


def test_flipped_pcm_is_refused_by_the_shard_reader_and_extract(tmp_path: Path) -> None:
    work = _corpus(tmp_path)
    shard = Workspace(work).shard_path(1)
    key = read_clips(work).to_pylist()[5]["key"]
    want = read_clips(work).to_pylist()[5]["crc32c"]
    _flip(shard, f"{key}.wav")
    with pytest.raises(CorruptShardError) as err:
        list(iter_shard(shard))
    msg = str(err.value)
    assert (
        str(shard) in msg and f"{key}.wav" in msg and want in msg and "re-run the same `ssondo pack`" in msg
    )
    got = msg.split("has crc32c ")[1].split(",")[0]
    assert got != want and len(got) == 8
    with pytest.raises(CorruptShardError, match=f"{key}.wav has crc32c {got}, pack recorded {want}"):
        extract(work, TINY, ts=0.25, device="cpu", batch_size=8, workers=0, progress=False)
    list(iter_shard(Workspace(work).shard_path(0)))  # the intact shard still reads


def test_members_packed_before_checksums_are_read_unchecked(tmp_path: Path) -> None:
    """An older pack has no crc32c in its jsons: documented as unchecked (manifests/README.md)."""
    from ssondo_cache.shards import write_shard_file

    pcm = (np.arange(800) % 200 - 100).astype(np.int16)
    buf = tmp_path / "a.wav"
    sf.write(buf, pcm, 16000, subtype="PCM_16")
    path = tmp_path / "old.tar"
    write_shard_file(path, [("old", buf.read_bytes(), "wav", {"key": "old"})])
    (clip,) = iter_shard(path)
    assert clip.key == "old" and len(clip.audio) == 800


# ---------------------------------------------------------------- the teacher cache


@pytest.fixture
def extracted(tmp_path: Path) -> tuple[Path, str]:
    work = _corpus(tmp_path, n=12)
    res = extract(work, TINY, ts=0.25, device="cpu", batch_size=8, workers=0, progress=False)
    assert res.cache_complete
    return work, res.cache.name


def test_deleted_zarr_shard_of_a_done_block_is_named_by_info_and_refused_by_readers(extracted) -> None:
    work, name = extracted
    store = open_cache(work, name)
    lost = store.block_file("clip", 2)
    assert lost.is_file() and lost.relative_to(store.path).as_posix() == "clip/c/2/0"
    lost.unlink()
    (info,) = list_caches(work)
    assert info.missing_files == (lost,) and not info.complete
    res = CliRunner().invoke(cli, ["cache", "info", str(work)])
    assert res.exit_code == 1 and "file(s) MISSING" in res.output
    assert f"{lost} is missing but block 2 is marked done" in res.output
    a, b = store.block_rows(2)
    with pytest.raises(CacheBlockError, match=f"{lost} is missing but block 2 is marked done"):
        store.read_clip(a, b)
    store.read_clip(0, a)  # the other blocks still read
    store.read_windows(a, b)  # emb of block 2 is still there


def test_verify_reads_every_block_and_names_the_bad_ones(extracted) -> None:
    work, name = extracted
    store = open_cache(work, name)
    assert verify_cache(store.path) == []
    assert CliRunner().invoke(cli, ["cache", "info", str(work), "--verify"]).exit_code == 0
    emb_file = store.block_file("emb", 1)
    emb_file.write_bytes(b"\0" * emb_file.stat().st_size)  # overwritten: no longer zstd
    a, b = store.block_rows(0)
    emb, n_windows = store.read_windows(a, b)
    clip = store.read_clip(a, b)
    clip[1, 0] = np.nan  # a block that decodes but holds a NaN
    store_rw = type(store)(store.path, mode="r+")
    store_rw.write_block(0, emb, clip, n_windows)
    problems = verify_cache(store.path)
    assert len(problems) == 2
    assert "block 0" in problems[0] and "1 non-finite" in problems[0]
    assert str(emb_file) in problems[1] and "unreadable" in problems[1]
    res = CliRunner().invoke(cli, ["cache", "info", str(work), "--verify"])
    assert res.exit_code == 1 and "2 damaged" in res.output
    assert "file(s) MISSING" not in res.output  # every file is there: only --verify sees this


# ---------------------------------------------------------------- pack inputs


def test_same_size_same_mtime_rewrite_needs_verify_sources(tmp_path: Path) -> None:
    work = _corpus(tmp_path, n=4)
    src = tmp_path / "audio" / "c02.wav"
    before = read_clips(work).to_pylist()[2]
    st = src.stat()
    write_audio(src, 0.5, 16000, seed=99)  # same length, same format: same size
    os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert src.stat().st_size == st.st_size
    pack([tmp_path / "audio"], work, sample_rate=16000, fmt="wav", shard_size=4, progress=False)
    assert read_clips(work).to_pylist()[2]["sha256"] == before["sha256"]  # the documented default
    args = [str(tmp_path / "audio"), "--out", str(work), "--sample-rate", "16000", "--format", "wav"]
    res = CliRunner().invoke(cli, ["pack", *args, "--shard-size", "4", "--verify-sources", "--no-progress"])
    assert res.exit_code == 0, res.output
    assert "1 written now, 0 already there" in res.output
    after = read_clips(work).to_pylist()[2]
    assert after["sha256"] != before["sha256"] and after["crc32c"] != before["crc32c"]
    clip = next(c for c in iter_shard(Workspace(work).shard_path(0)) if c.key == after["key"])
    np.testing.assert_array_equal(clip.audio, sf.read(src, dtype="float32")[0])


def test_wav_cut_short_after_its_header_is_refused_as_truncated(tmp_path: Path) -> None:
    write_audio(tmp_path / "audio" / "ok.wav", 0.5, 16000)
    full = tmp_path / "long.wav"
    write_audio(full, 12.0, 16000)
    (tmp_path / "audio" / "cut.wav").write_bytes(full.read_bytes()[: 44 + 2 * 16000])  # header says 12 s
    res = pack([tmp_path / "audio"], tmp_path / "work", sample_rate=16000, progress=False)
    assert res.n_packed == 1 and res.reasons == {"truncated": 1}
    (rej,) = read_rejects(tmp_path / "work").to_pylist()
    assert (
        rej["path"].endswith("cut.wav") and "claims 12.000 s" in rej["detail"] and "1.000 s" in rej["detail"]
    )


def test_fifo_in_the_input_folder_is_skipped_without_opening_it(tmp_path: Path) -> None:
    write_audio(tmp_path / "audio" / "ok.wav", 0.5, 16000)
    os.mkfifo(tmp_path / "audio" / "pipe.wav")
    code = (
        "from ssondo_cache.pack import pack; import sys; "
        "r = pack([sys.argv[1]], sys.argv[2], sample_rate=16000, progress=False); print(r.reasons, r.n_packed)"
    )
    try:  # in a child: on a hang the test fails after the timeout instead of blocking the suite
        out = subprocess.run(
            [sys.executable, "-c", code, str(tmp_path / "audio"), str(tmp_path / "work")],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
        )
    except subprocess.TimeoutExpired:
        pytest.fail("pack hung on a FIFO among its inputs")
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["{'not_a_file':", "1}", "1"]
    (rej,) = read_rejects(tmp_path / "work").to_pylist()
    assert rej["path"].endswith("pipe.wav") and "FIFO" in rej["detail"]
    assert pq.read_schema(Workspace(tmp_path / "work").clips_manifest).field("crc32c") is not None


@pytest.mark.timeout(60)  # before the fix, open() blocked here forever
def test_a_fifo_given_as_a_list_or_labels_table_is_refused_without_opening_it(tmp_path: Path) -> None:
    from ssondo_cache.inputs import PackInputError, list_sources, read_labels_csv

    os.mkfifo(tmp_path / "list.csv")  # opening it for reading would block until a writer comes
    with pytest.raises(PackInputError, match=r"list\.csv is a FIFO"):
        list_sources([tmp_path / "list.csv"])
    with pytest.raises(PackInputError, match=r"labels table .*list\.csv is a FIFO"):
        read_labels_csv(tmp_path / "list.csv")
