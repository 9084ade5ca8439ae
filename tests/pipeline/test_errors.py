"""Every error names its file and says what to do (issue 14, item 4): through the `ssondo` CLI, a
damaged shard, member or cache file, a full disk and an unsafe student file each end as ONE line
(what, which file and member/block, why, next step), exit status 1, no traceback unless --debug or
SSONDO_DEBUG=1."""

from __future__ import annotations

import errno
import json
import os
import pickle
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from click.testing import CliRunner

from pipeline.cli import main
from ssondo_cache.pack import pack
from ssondo_cache.shards import member_checksum
from ssondo_cache.typed_config import to_dict
from tests.cache.conftest import write_audio
from tests.distill.test_stream import make_corpus, write_cache
from tests.distill.test_trainer import CACHE, tiny_cfg

REPO = Path(__file__).resolve().parents[2]
TINY = "py:tests.helpers.tiny_teacher:make"
EXTRACT = [
    "--teacher",
    TINY,
    "-o",
    "dim=8",
    "--ts",
    "1",
    "--device",
    "cpu",
    "--workers",
    "0",
    "--no-progress",
]


def _pack(tmp: Path, fmt: str = "wav") -> Path:
    for i in range(6):
        write_audio(tmp / "audio" / f"c{i}.wav", 0.6 + 0.2 * i, 16000, seed=i)
    work = tmp / "work"
    pack([tmp / "audio"], work, shard_size=2, fmt=fmt, progress=False)
    return work


def _run(*args: str, env: dict[str, str] | None = None):
    return CliRunner().invoke(main, list(args), env={"SSONDO_DEBUG": "", **(env or {})})


def _one_line(result, *must: str) -> str:
    """The error line of a failed command: exit 1, no traceback, every piece of ``must`` in it."""
    assert result.exit_code == 1, (result.exit_code, result.output, result.exception)
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit)
    lines = [ln for ln in result.output.splitlines() if ln.startswith("Error: ")]
    assert len(lines) == 1, result.output
    assert "Traceback" not in result.output and "weights_only" not in result.output, result.output
    for piece in must:
        assert piece in lines[0], (piece, lines[0])
    return lines[0]


def _members(shard: Path) -> list[tarfile.TarInfo]:
    with tarfile.open(shard) as tar:
        return tar.getmembers()


def test_truncated_tar_shard_names_it_and_says_repack(tmp_path: Path):
    work = _pack(tmp_path)
    shard = work / "shards" / "clips-000001.tar"
    size = shard.stat().st_size
    with open(shard, "r+b") as f:
        f.truncate(size // 2)
    line = _one_line(_run("extract", str(work), *EXTRACT), str(shard), "truncated", "ssondo pack")
    assert "after member" in line
    # --debug (or SSONDO_DEBUG=1) keeps the traceback
    debug = _run("--debug", "extract", str(work), *EXTRACT)
    assert debug.exit_code == 1 and type(debug.exception).__name__ == "CorruptShardError"
    env = _run("extract", str(work), *EXTRACT, env={"SSONDO_DEBUG": "1"})
    assert type(env.exception).__name__ == "CorruptShardError"


@pytest.mark.slow
def test_a_decode_workers_error_is_one_line_and_the_process_ends(tmp_path: Path):
    """A real `ssondo extract` whose spawned decode worker raises: torch puts the worker's traceback
    into the message (reduced to its last line), and the process must exit, not wait on its workers."""
    work = _pack(tmp_path)
    shard = work / "shards" / "clips-000002.tar"
    with open(shard, "r+b") as f:
        f.truncate(shard.stat().st_size // 2)
    args = [a if a != "0" else "2" for a in EXTRACT]  # --workers 2
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "SSONDO_DEBUG": ""}
    cmd = [sys.executable, "-m", "pipeline.cli", "extract", str(work), *args]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=150)
    assert proc.returncode == 1, proc.stderr[-3000:]
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("Error: ")]
    assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert str(shard) in errors[0] and "truncated" in errors[0] and "DataLoader worker" not in errors[0]


def _flac_member(work: Path) -> tuple[Path, tarfile.TarInfo, tarfile.TarInfo]:
    shard = work / "shards" / "clips-000000.tar"
    members = _members(shard)
    audio = next(m for m in members if m.name.endswith(".flac"))
    meta = next(m for m in members if m.name == audio.name.replace(".flac", ".json"))
    return shard, audio, meta


def test_flipped_flac_member_names_shard_and_member(tmp_path: Path):
    work = _pack(tmp_path, fmt="flac")
    shard, audio, _ = _flac_member(work)
    with open(shard, "r+b") as f:
        f.seek(audio.offset_data + audio.size // 2)
        chunk = f.read(64)
        f.seek(audio.offset_data + audio.size // 2)
        f.write(bytes(b ^ 0xFF for b in chunk))
    _one_line(_run("extract", str(work), *EXTRACT), str(shard), audio.name, "crc32c", "ssondo pack")


def test_undecodable_flac_member_names_shard_and_member(tmp_path: Path):
    """A member whose checksum matches (packed so) but that libsndfile cannot decode."""
    work = _pack(tmp_path, fmt="flac")
    shard, audio, meta = _flac_member(work)
    with open(shard, "r+b") as f:
        f.seek(audio.offset_data)
        data = bytearray(f.read(audio.size))
        data[:4] = b"XXXX"  # no fLaC magic
        f.seek(audio.offset_data)
        f.write(data)
        f.seek(meta.offset_data)
        text = f.read(meta.size)
        old = json.loads(text)["crc32c"]  # same length: the json is patched in place
        f.seek(meta.offset_data)
        f.write(text.replace(old.encode(), member_checksum(bytes(data)).encode()))
    _one_line(
        _run("extract", str(work), *EXTRACT), str(shard), audio.name, "cannot be decoded", "ssondo pack"
    )


def test_corrupt_cache_block_says_redo_block_and_redo_repairs_it(tmp_path: Path):
    work = _pack(tmp_path)
    assert _run("extract", str(work), *EXTRACT).exit_code == 0
    cache = next((work / "cache").glob("*/ts1-hop1.zarr"))
    before = {
        a: np.asarray(zarr.open_group(str(cache))[a][:]).tobytes() for a in ("emb", "clip", "n_windows")
    }
    block_file = cache / "clip" / "c" / "1" / "0"
    data = bytearray(block_file.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 32] = bytes(32)
    block_file.write_bytes(data)
    line = _one_line(
        _run("cluster", str(work), "--cache", "ts1-hop1", "-k", "2", "--no-progress"), str(block_file)
    )
    assert "--redo-block 1" in line
    redo = _run("extract", str(work), *EXTRACT, "--redo-block", "1")
    assert redo.exit_code == 0, redo.output
    assert "1 blocks written" in redo.output
    after = {a: np.asarray(zarr.open_group(str(cache))[a][:]).tobytes() for a in before}
    assert after == before
    _one_line(_run("extract", str(work), *EXTRACT, "--redo-block", "9"), "--redo-block 9", str(cache))


@pytest.fixture(scope="module")
def train_work(tmp_path_factory) -> Path:
    w = make_corpus(tmp_path_factory.mktemp("errors-train"), n_clips=40, shard_size=4, dim=8)
    write_cache(w, "wide", 16, 4)
    return w


def _train_args(work: Path, tmp: Path, run: Path) -> list[str]:
    cfg = to_dict(tiny_cfg(work, run, epochs=1, checkpoint_every=2))
    config = tmp / "cfg.json"
    config.write_text(json.dumps({k: v for k, v in cfg.items() if k not in ("work", "out", "cache")}))
    return ["train", str(work), "--cache", CACHE, "--config", str(config), "--out", str(run), "--no-progress"]


def test_full_disk_during_a_checkpoint_names_file_and_device(train_work: Path, tmp_path: Path, monkeypatch):
    from ssondo_cache import atomic

    real = atomic.os.replace

    def full(src, dst):  # the checkpoint's bytes went out, the disk refused them (as write() would)
        if "checkpoints" in str(dst):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(src))
        return real(src, dst)

    monkeypatch.setattr(atomic.os, "replace", full)
    run = tmp_path / "run"
    line = _one_line(_run(*_train_args(train_work, tmp_path, run)), "no space left", str(run / "checkpoints"))
    assert "free space there" in line and "--resume" in line and "filesystem" in line
    assert not list((run / "checkpoints").glob("*.pt")), "a half-written checkpoint was left as finished"


@pytest.mark.slow
def test_full_tmpfs_during_a_checkpoint(train_work: Path, tmp_path: Path):
    """A real full disk: the RUN folder on a 256-KiB tmpfs (needs mount rights: skipped otherwise)."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    if os.system(f"mount -t tmpfs -o size=256k tmpfs {mnt} 2>/dev/null") != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        run = mnt / "run"
        _one_line(
            _run(*_train_args(train_work, tmp_path, run)), "no space left", str(run), "free space there"
        )
        assert not list((run / "checkpoints").glob("*.pt")) if (run / "checkpoints").exists() else True
    finally:
        os.system(f"umount {mnt}")


def test_truncated_tar_shard_in_train_names_it(train_work: Path, tmp_path: Path):
    work = tmp_path / "work"
    shutil.copytree(train_work, work)
    shard = work / "shards" / "clips-000003.tar"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    _one_line(_run(*_train_args(work, tmp_path, tmp_path / "run")), str(shard), "truncated", "ssondo pack")


class _Payload:
    def __reduce__(self):
        return (shutil.rmtree, ("/nonexistent-ssondo-test",))


def test_unsafe_student_file_is_refused_without_unsafe_advice(tmp_path: Path):
    run = tmp_path / "run"
    run.mkdir()
    student = run / "student.pt"
    torch.save({"format": "ssondo-student", "x": _Payload()}, student)
    line = _one_line(_run("export", str(run), "--format", "torchscript"), str(student), "refused")
    assert "shutil.rmtree" in line and "could run code" in line
    torch.save({"x": _Payload()}, student, pickle_protocol=pickle.HIGHEST_PROTOCOL)  # another refusal text
    _one_line(_run("export", str(run), "--format", "torchscript"), str(student), "refused", "could run code")
    student.write_bytes(b"not a checkpoint at all")
    _one_line(_run("export", str(run), "--format", "torchscript"), str(student), "damaged")
