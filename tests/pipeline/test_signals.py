"""Preemption is a clean stop: real `ssondo` processes get SIGTERM / SIGINT / SIGUSR1 (to their whole
process group, workers included, as SLURM sends it), stop within seconds at a resumable point with
one line saying what was saved, exit 128 + the signal, and a resume ends bit-identical to a run
that was never interrupted."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from ssondo_cache import lifecycle
from ssondo_cache.extract import extract
from ssondo_cache.pack import pack
from ssondo_cache.typed_config import to_dict
from ssondo_distill.trainer import train
from ssondo_eval.embedders import LogMelStatsEmbedder, TeacherEmbedder, embed_task
from ssondo_eval.tasks.base import Task, TaskItem
from tests.cache.conftest import tree_digest, write_audio
from tests.cache.test_lifecycle import descendants, kill_tree, start, wait_gone
from tests.distill.test_stream import make_corpus, write_cache
from tests.distill.test_trainer import CACHE, tiny_cfg

REPO = Path(__file__).resolve().parents[2]
STOP_WITHIN = 15.0  # seconds from the signal to the exit, on a loaded 2-core machine
ARRAYS = ("emb", "clip", "n_windows", "done")


def _signal_group(proc: subprocess.Popen, sig: signal.Signals) -> float:
    os.killpg(proc.pid, sig)  # the whole job: workers too, as SLURM does
    return time.monotonic()


def _wait_for(proc: subprocess.Popen, ready, what: str, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"{what} never happened: {proc.stderr.read().decode()[-3000:]}")
        time.sleep(0.05)


def _stopped(proc: subprocess.Popen, sig: signal.Signals, sent: float) -> str:
    """Wait for the exit; check the status, the time it took and that one line says it all."""
    kids = descendants(proc.pid)
    try:
        proc.wait(timeout=STOP_WITHIN)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"no stop within {STOP_WITHIN} s of {sig.name}") from None
    took = time.monotonic() - sent
    err = proc.stderr.read().decode()
    assert proc.returncode == 128 + sig, f"exit {proc.returncode}, took {took:.1f} s:\n{err[-3000:]}"
    lines = [line for line in err.splitlines() if "stopped by" in line]
    assert len(lines) == 1 and f"stopped by {sig.name}" in lines[0] and "to resume" in lines[0], err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    assert wait_gone(kids, timeout=10.0) == []  # the workers went with it
    print(f"{sig.name}: stopped {took:.1f} s after the signal")  # shown with pytest -s
    return lines[0]


# ---------------------------------------------------------------- extract
@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("signals")
    for i in range(16):
        write_audio(root / "audio" / f"c{i:02d}.wav", 0.5 + 0.25 * (i % 5), 16000, seed=i)
    pack([root / "audio"], root / "work", shard_size=2, progress=False)
    return root / "work"


def _arrays(cache: Path) -> dict[str, bytes]:
    g = zarr.open_group(str(cache), mode="r")
    return {name: g[name][:].tobytes() for name in ARRAYS}


@pytest.fixture(scope="module")
def reference(corpus: Path):
    """One uninterrupted run (in place: the interrupted ones work on copies without the cache)."""
    return extract(corpus, "py:tests.helpers.tiny_teacher:make", workers=0, **EXTRACT)


EXTRACT = dict(ts=1, device="cpu", batch_size=8, progress=False, teacher_options={"dim": 8})


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=lambda s: s.name)
def test_extract_stops_cleanly_and_resumes_bit_identical(corpus: Path, reference, tmp_path: Path, sig):
    work = tmp_path / "work"
    subprocess.run(["cp", "-r", str(corpus), str(work)], check=True)
    subprocess.run(["rm", "-rf", str(work / "cache")], check=True)
    proc = start(
        [
            *(sys.executable, "-m", "pipeline.cli", "extract", str(work), "--ts", "1", "--device", "cpu"),
            *("--teacher", "py:tests.cache.test_extract:slow_tiny", "-o", "dim=8", "--batch-size", "8"),
            *("--workers", "2", "--no-progress"),
        ]
    )
    try:
        cache = work / reference.cache.relative_to(corpus)
        done = cache / "done" / "c" / "0"  # written with the first block
        _wait_for(proc, done.exists, "a first finished block")
        line = _stopped(proc, sig, _signal_group(proc, sig))
    finally:
        kill_tree(proc)
    assert "finished blocks written" in line and "run the same command again" in line
    g = zarr.open_group(str(cache), mode="r")
    assert 1 <= int(g["done"][:].sum()) < g["done"].shape[0]  # stopped mid-way, what was done is kept
    resumed = extract(work, "py:tests.helpers.tiny_teacher:make", workers=0, **EXTRACT)
    assert resumed.blocks_skipped >= 1 and resumed.cache_complete
    assert _arrays(resumed.cache) == _arrays(reference.cache)


# ---------------------------------------------------------------- pack
SLOW_PACK = """
import sys, time
from ssondo_cache import audio
prepare = audio.prepare_clip
def slow(*args, **kwargs):
    time.sleep(0.2)
    return prepare(*args, **kwargs)
audio.prepare_clip = slow
from pipeline.cli import main
sys.exit(main())
"""


@pytest.mark.slow
def test_pack_stops_cleanly_and_resumes_identical(tmp_path: Path):
    for i in range(24):
        write_audio(tmp_path / "audio" / f"c{i:02d}.wav", 0.5, 16000, seed=i)
    pack([tmp_path / "audio"], tmp_path / "ref", shard_size=2, progress=False)
    work = tmp_path / "work"
    args = ["pack", str(tmp_path / "audio"), "--out", str(work), "--shard-size", "2", "--no-progress"]
    proc = start([sys.executable, "-c", SLOW_PACK, *args])
    try:
        _wait_for(proc, lambda: any((work / "shards").glob("clips-*.tar")), "a first shard")
        line = _stopped(proc, signal.SIGUSR1, _signal_group(proc, signal.SIGUSR1))
    finally:
        kill_tree(proc)
    assert "shards" in line
    assert not (work / "manifests" / "clips.parquet").exists()
    assert not list((work / "shards").glob(".*tmp*"))  # the shard in flight left nothing behind
    pack([tmp_path / "audio"], work, shard_size=2, progress=False)
    assert tree_digest(work / "shards") == tree_digest(tmp_path / "ref" / "shards")


# ---------------------------------------------------------------- train
@pytest.fixture(scope="module")
def train_work(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("train-signals")
    w = make_corpus(root, n_clips=40, shard_size=4, dim=8)
    write_cache(w, "wide", 16, 4)
    return w


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


@pytest.mark.slow
def test_train_checkpoints_the_current_step_and_resumes_bit_identical(train_work: Path, tmp_path: Path):
    over = dict(epochs=4, checkpoint_every=1000, num_workers=2)
    cfg = to_dict(tiny_cfg(train_work, tmp_path / "ref", **over))
    config = tmp_path / "cfg.json"
    config.write_text(json.dumps({k: v for k, v in cfg.items() if k not in ("work", "out", "cache")}))
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "pipeline.cli", "train", str(train_work), "--cache", CACHE]
    cmd += ["--config", str(config), "--out", str(run), "--no-progress"]
    proc = start(cmd, env={"OMP_NUM_THREADS": "1"})
    ref = train(tiny_cfg(train_work, tmp_path / "ref", **over), progress=False)  # meanwhile
    metrics = run / "metrics.jsonl"

    def trained_a_few_steps() -> bool:
        steps = (
            [json.loads(line).get("step", 0) for line in metrics.read_text().splitlines()]
            if metrics.exists()
            else []
        )
        return max(steps, default=0) >= 4

    try:
        _wait_for(proc, trained_a_few_steps, "4 training steps")
        line = _stopped(proc, signal.SIGUSR1, _signal_group(proc, signal.SIGUSR1))
    finally:
        kill_tree(proc)
    ckpts = sorted((run / "checkpoints").glob("step-*.pt"))
    assert len(ckpts) == 1 and not (run / "student.pt").exists()
    step = int(ckpts[0].stem.split("-")[-1])
    assert 4 <= step < ref.steps and f"step {step} of {ref.steps}" in line and "--resume" in line
    resumed = train(tiny_cfg(train_work, run, resume=True, **over), progress=False)
    assert resumed.resumed_from == step and resumed.steps == ref.steps
    a, b = _weights(tmp_path / "ref" / "student.pt"), _weights(run / "student.pt")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a if isinstance(a[k], torch.Tensor)), "resume is not exact"
    assert np.isfinite(resumed.final_loss)


# ---------------------------------------------------------------- eval
@pytest.mark.parametrize("kind", ["log-mel", "teacher"])
def test_eval_embedding_stops_between_clips_and_caches_nothing_partial(tmp_path: Path, kind: str):
    items = [TaskItem(tmp_path / f"c{i}.wav", ("a",), "train") for i in range(3)]
    for item in items:
        write_audio(item.path, 0.5, 16000, seed=len(item.path.name))
    task = Task("tiny", items, ["a"], False, 0.5)
    embedder = (
        LogMelStatsEmbedder()
        if kind == "log-mel"
        else TeacherEmbedder("py:tests.helpers.tiny_teacher:make", ts=0.25, dim=8)
    )
    with lifecycle.stop_on_signals():
        os.kill(os.getpid(), signal.SIGTERM)  # arrives before the first clip is read
        time.sleep(0.01)
        with pytest.raises(lifecycle.Stopped, match="abandoned"):
            embed_task(embedder, task, tmp_path / "emb", progress=False)
    assert not list((tmp_path / "emb").rglob("*.npy"))
    X, _ = embed_task(embedder, task, tmp_path / "emb", progress=False)  # no stop asked: it runs
    assert X.shape[0] == 3 and list((tmp_path / "emb").rglob("*.npy"))
