"""Killing `pack` with SIGKILL in the middle of a shard, then re-running, gives the same bytes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ssondo_cache.pack import pack
from tests.cache.conftest import tree_digest, write_audio

REPO = Path(__file__).resolve().parents[2]
OPTS = dict(shard_size=6, max_duration=None, fmt="flac")


def make_corpus(root: Path) -> Path:
    # Resampling 44.1 kHz stereo keeps each clip busy long enough to catch a shard half-written.
    for i in range(24):
        write_audio(root / f"clip{i:02d}.wav", 1.5, 44100, 2, seed=i)
    return root


def start_pack(corpus: Path, work: Path) -> subprocess.Popen:
    code = (
        f"from ssondo_cache.pack import pack; pack([{str(corpus)!r}], {str(work)!r}, progress=False, "
        f"**{OPTS!r})"
    )
    return subprocess.Popen(
        [sys.executable, "-c", code], cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )


def kill_mid_shard(corpus: Path, work: Path, timeout: float = 60.0) -> list[Path]:
    """Run pack in a subprocess and SIGKILL it while a shard after the first is half-written.

    Returns the temporary files it left behind (empty if the kill missed the middle of a shard)."""
    proc = start_pack(corpus, work)
    shards = work / "shards"
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            tmps = [p for p in shards.glob(".clips-*.tar.tmp-*") if not p.name.startswith(".clips-000000")]
            if any(_size(p) > 0 for p in tmps):
                os.kill(proc.pid, signal.SIGKILL)
                break
            time.sleep(0.002)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    return list(shards.glob(".clips-*.tmp-*"))


def _size(p: Path) -> int:
    try:
        return p.stat().st_size
    except FileNotFoundError:
        return 0


@pytest.mark.slow
def test_sigkill_mid_shard_then_resume_is_byte_identical(tmp_path: Path) -> None:
    corpus = make_corpus(tmp_path / "corpus")
    reference = tmp_path / "reference"
    pack([corpus], reference, progress=False, **OPTS)

    for attempt in range(3):  # the kill races the writer; a miss is retried, never counted as a pass
        work = tmp_path / f"killed{attempt}"
        leftovers = kill_mid_shard(corpus, work)
        if leftovers:
            break
    else:
        pytest.fail("could not kill pack in the middle of a shard in 3 attempts")

    half = leftovers[0].name.split(".tar")[0].lstrip(".")  # e.g. clips-000002
    assert not (work / "shards" / f"{half}.tar").exists()  # never visible under its final name
    assert not (work / "manifests" / "clips.parquet").exists()
    done_before = sorted(p.name for p in (work / "shards").glob("clips-*.tar"))

    res = pack([corpus], work, progress=False, **OPTS)
    assert res.complete
    assert res.shards_skipped == len(done_before) and res.shards_built == res.n_shards - len(done_before)
    assert not list(work.rglob(".*.tmp-*"))  # the killed run's temporaries are cleaned up
    assert tree_digest(work) == tree_digest(reference)


def test_interrupted_rank_leaves_no_manifest_and_resumes(tmp_path: Path) -> None:
    corpus = tmp_path / "c"
    for i in range(5):
        write_audio(corpus / f"{i}.wav", 0.2, 32000, seed=i)
    work = tmp_path / "w"
    partial = pack([corpus], work, shard_size=2, rank=1, world_size=2, progress=False)
    assert not partial.complete and partial.shards_missing == 2
    (work / "shards" / "clips-000001.tar").unlink()  # a shard lost after the fact is rebuilt
    full = pack([corpus], work, shard_size=2, progress=False)
    assert full.complete and full.shards_built == 3
    ref = tmp_path / "ref"
    pack([corpus], ref, shard_size=2, progress=False)
    assert tree_digest(work) == tree_digest(ref)


@pytest.mark.slow
def test_two_ranks_at_once_end_like_one_process(tmp_path: Path) -> None:
    corpus = tmp_path / "c"
    for i in range(10):
        write_audio(corpus / f"{i:02d}.wav", 0.3, 22050, seed=i)
    opts = dict(shard_size=2, progress=False)
    work = tmp_path / "w"
    procs = []
    for rank in range(2):  # like a SLURM array: same command, its own rank, both may finalize
        code = (
            f"from ssondo_cache.pack import pack; r = pack([{str(corpus)!r}], {str(work)!r}, rank={rank}, "
            f"world_size=2, **{opts!r}); print('complete' if r.complete else 'waiting')"
        )
        procs.append(
            subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE, text=True)
        )
    outs = [p.communicate(timeout=120)[0].strip() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert "complete" in outs  # the rank that finished last wrote the manifests
    ref = tmp_path / "ref"
    pack([corpus], ref, **opts)
    assert tree_digest(work) == tree_digest(ref)


def test_a_2000_shard_pack_resumes_from_stats_without_reading_a_shard(tmp_path: Path, monkeypatch) -> None:
    """Issue 18 item 4: re-running pack over a finished 2,000-shard plan decides from one stat per tar
    and sidecar: no shard is opened, none rebuilt (a synthetic plan: no audio needed)."""
    import builtins

    import ssondo_cache.pack as pack_mod
    import ssondo_cache.pack_shards as pack_shards
    from ssondo_cache.plan import PackParams, Plan, PlanItem
    from ssondo_cache.workspace import Workspace

    params = PackParams(16000, "wav", 1, 0.1, None, False)
    items = [
        PlanItem(f"k{i:05d}", f"/nowhere/k{i:05d}.wav", "0" * 64, 0, 1600, 16000, 1, (), None)
        for i in range(2000)
    ]
    plan = Plan(params, items, [], n_inputs=2000)
    ws = Workspace(tmp_path / "work")
    ws.shards_dir.mkdir(parents=True)
    (ws.manifests_dir / "parts").mkdir(parents=True)
    for s in range(plan.n_shards):
        ws.shard_path(s).touch()
        pack_mod.part_path(ws, s, plan.shard_fingerprint(s)).touch()
    monkeypatch.setattr(pack_mod, "make_plan", lambda *a, **k: plan)
    monkeypatch.setattr(
        pack_shards, "build_shard", lambda *a, **k: pytest.fail("a complete shard was rebuilt")
    )
    opened: list[str] = []
    real_open = builtins.open

    def counting_open(file, *args, **kwargs):
        if str(ws.root) in str(file):
            opened.append(str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", counting_open)
    result = pack(
        [tmp_path], ws.root, sample_rate=16000, fmt="wav", shard_size=1, finalize=False, progress=False
    )
    assert (plan.n_shards, result.shards_skipped, result.shards_built, result.shards_missing) == (
        2000,
        2000,
        0,
        0,
    )
    assert opened == []
