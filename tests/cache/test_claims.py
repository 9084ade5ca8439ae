"""Claims: two jobs on one workspace split the blocks of an extraction instead of repeating them;
a killed job's claims do not block a resubmit (issue 14, item 7)."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import zarr

from ssondo_cache import claims
from ssondo_cache.extract import extract
from ssondo_cache.pack import pack
from tests.cache.conftest import write_audio
from tests.helpers.tiny_teacher import TinyTeacher

REPO = Path(__file__).resolve().parents[2]
TINY = "py:tests.helpers.tiny_teacher:make"
OPTS = {"dim": 8}
ARRAYS = ("emb", "clip", "n_windows", "done")
N_CLIPS = 8  # packed one per shard: 8 blocks


def gated_tiny(gate: str, **opts) -> TinyTeacher:
    """The tiny teacher (same weights, same id), whose forwards wait until the file ``gate`` exists:
    a test lets both jobs claim their first blocks before either computes anything."""

    class Gated(TinyTeacher):
        def forward(self, audio: torch.Tensor) -> torch.Tensor:
            deadline = time.time() + 120
            while not os.path.exists(gate) and time.time() < deadline:
                time.sleep(0.05)
            return super().forward(audio)

    return Gated(**opts)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("claims")
    for i in range(N_CLIPS):
        write_audio(tmp / "audio" / f"c{i}.wav", 0.5 + 0.25 * i, 16000, seed=i)
    pack([tmp / "audio"], tmp / "work", shard_size=1, progress=False)
    return tmp / "work"


@pytest.fixture(scope="module")
def reference(corpus: Path, tmp_path_factory) -> dict[str, bytes]:
    work = _copy(corpus, tmp_path_factory.mktemp("ref"))
    result = extract(
        work, TINY, ts=1, device="cpu", batch_size=8, workers=0, progress=False, teacher_options=OPTS
    )
    assert result.cache_complete and result.blocks_written == N_CLIPS
    return _arrays(result.cache)


def _copy(corpus: Path, tmp: Path) -> Path:
    work = tmp / "work"
    shutil.copytree(corpus, work, ignore=shutil.ignore_patterns("cache"))
    return work


def _arrays(path: Path) -> dict[str, bytes]:
    g = zarr.open_group(str(path), mode="r")
    return {name: np.asarray(g[name][:]).tobytes() for name in ARRAYS}


def _ssondo_extract(work: Path, teacher: str, *opts: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "pipeline.cli", "extract", str(work), "--teacher", teacher, "-o", "dim=8"]
    cmd += [*opts, "--ts", "1", "--device", "cpu", "--batch-size", "8", "--workers", "0", "--no-progress"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _computed(log: str) -> list[int]:
    return [int(k) for k in re.findall(r"^block (\d+): claimed, computing it$", log, re.M)]


@pytest.mark.slow
def test_two_concurrent_extracts_compute_each_block_once(corpus: Path, reference, tmp_path: Path):
    work = _copy(corpus, tmp_path)
    gate = tmp_path / "gate"
    teacher = "py:tests.cache.test_claims:gated_tiny"
    procs = [_ssondo_extract(work, teacher, "-o", f"gate={gate}") for _ in range(2)]
    try:
        # both jobs hold claims before either computes: the split cannot depend on start-up times
        owners: set[int] = set()
        deadline = time.time() + 120
        while len(owners) < 2 and time.time() < deadline and all(p.poll() is None for p in procs):
            owners = {
                info["pid"]
                for f in work.glob("cache/*/ts1-hop1.claims/block-*.json")
                if (info := claims.read_claim(f))
            }
            time.sleep(0.05)
        assert owners == {p.pid for p in procs}, [p.communicate()[1][-2000:] for p in procs if p.poll()]
        gate.touch()
        outs = [p.communicate(timeout=180) for p in procs]
    finally:
        for p in procs:
            p.kill()
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err[-2000:]
    per_job = [_computed(err) for _, err in outs]
    counts = Counter(k for blocks in per_job for k in blocks)
    assert sorted(counts) == list(range(N_CLIPS)) and set(counts.values()) == {1}, per_job
    assert all(per_job), f"one job computed nothing: {per_job}"
    cache = next(work.glob("cache/*/ts1-hop1.zarr"))
    assert _arrays(cache) == reference
    assert not list(claims_folder(cache).glob("*.json")), "claims left behind after a finished run"


def claims_folder(cache: Path) -> Path:
    return cache.with_name(cache.stem + ".claims")


def _killed_owner_claim(folder: Path, unit: str) -> dict:
    """A claim taken by a real process that was then SIGKILLed (it never released it)."""
    code = (
        "import os, signal; from pathlib import Path; from ssondo_cache.claims import try_claim; "
        f"try_claim(Path({str(folder)!r}), {unit!r}); os.kill(os.getpid(), signal.SIGKILL)"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code], cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}
    )
    assert proc.wait(timeout=60) == -9
    info = claims.read_claim(folder / f"{unit}.json")
    assert info is not None and info["pid"] == proc.pid
    return info


def test_a_killed_jobs_claim_is_taken_over(corpus: Path, reference, tmp_path: Path, caplog):
    work = _copy(corpus, tmp_path)
    first = extract(
        work, TINY, ts=1, device="cpu", batch_size=8, workers=0, progress=False, teacher_options=OPTS
    )
    cache = first.cache
    g = zarr.open_group(str(cache), mode="r+")
    g["done"][2] = False  # as if the killed job had claimed block 2 and died computing it
    _killed_owner_claim(claims_folder(cache), "block-000002")
    with caplog.at_level("INFO", logger="ssondo.extract"):
        result = extract(
            work, TINY, ts=1, device="cpu", batch_size=8, workers=0, progress=False, teacher_options=OPTS
        )
    assert result.blocks_written == 1 and result.cache_complete
    assert _computed("\n".join(caplog.messages)) == [2]
    assert _arrays(cache) == reference
    assert not (claims_folder(cache) / "block-000002.json").exists()


def test_a_live_claim_is_waited_for_not_repeated(
    corpus: Path, reference, tmp_path: Path, caplog, monkeypatch
):
    """Another live job holds block 5: this job does the rest, waits, and does not compute block 5."""
    from ssondo_cache import block_feed

    work = _copy(corpus, tmp_path)
    seed = extract(
        work, TINY, ts=1, device="cpu", batch_size=8, workers=0, progress=False, teacher_options=OPTS
    )
    g = zarr.open_group(str(seed.cache), mode="r+")
    g["done"][:] = False
    held = claims.try_claim(claims_folder(seed.cache), "block-000005")  # this test is the live owner
    assert held is not None
    waits = []

    def other_job_finishes(seconds: float) -> bool:  # the other job writes block 5 while we wait
        waits.append(seconds)
        g["done"][5] = True
        held.release()
        return False

    monkeypatch.setattr(block_feed.BlockFeed, "_wait", lambda self: other_job_finishes(block_feed.WAIT_POLL))
    with caplog.at_level("INFO", logger="ssondo.extract"):
        result = extract(
            work, TINY, ts=1, device="cpu", batch_size=8, workers=0, progress=False, teacher_options=OPTS
        )
    assert waits and 5 not in _computed("\n".join(caplog.messages))
    assert sorted(_computed("\n".join(caplog.messages))) == [k for k in range(N_CLIPS) if k != 5]
    assert result.blocks_written == N_CLIPS - 1 and result.rank_complete
    assert "1 blocks claimed by other jobs" in caplog.text


def test_staleness_rule(tmp_path: Path):
    folder = tmp_path / "claims"
    folder.mkdir()
    path = folder / "block-000000.json"
    # another host: its pid means nothing here, only the heartbeat's age counts
    path.write_text(json.dumps({"host": socket.gethostname() + "-other", "pid": 1, "token": "x"}))
    assert not claims.is_stale(path)
    assert claims.try_claim(folder, "block-000000") is None
    assert claims.is_stale(path, now=time.time() + claims.STALE_AFTER + 1)
    taken = claims.try_claim(folder, "block-000000", stale_after=0.0)
    assert taken is not None and taken.owned()
    taken.release()
    assert not path.exists()


def test_pack_skips_a_shard_another_job_builds_then_waits_for_it(tmp_path: Path, monkeypatch):
    from ssondo_cache import pack as pack_module

    for i in range(6):
        write_audio(tmp_path / "audio" / f"c{i}.wav", 0.5, 16000, seed=i)
    work = tmp_path / "work"
    held = claims.try_claim(work / "manifests" / "claims", "shard-000001")  # this test: the other job
    assert held is not None
    waited = []

    def other_job_gives_up(seconds: float) -> None:
        waited.append(sorted(p.name for p in (work / "shards").glob("*.tar")))
        held.release()  # (killed, or done elsewhere: either way the shard is free now)

    monkeypatch.setattr(pack_module, "time", SimpleNamespace(sleep=other_job_gives_up))  # pack's only
    result = pack([tmp_path / "audio"], work, shard_size=2, progress=False)
    assert waited == [["clips-000000.tar", "clips-000002.tar"]], "shard 1 was built while another job held it"
    assert result.complete and result.shards_missing == 0
    ref = tmp_path / "ref"
    pack([tmp_path / "audio"], ref, shard_size=2, progress=False)
    for shard in sorted((ref / "shards").glob("*.tar")):
        assert (work / "shards" / shard.name).read_bytes() == shard.read_bytes()
