"""Extraction run other ways gives the reference run's bits: resumed after kill -9, two ranks,
spawned decode workers, resampling on the device path, the CUDA path across ranks."""

from __future__ import annotations

import os
import shutil
import signal
import time
from pathlib import Path

import pytest
import torch
import zarr

from ssondo_cache.cache_index import open_cache
from ssondo_cache.extract import extract
from tests.cache import test_extract as _core
from tests.cache.test_extract import (  # the corpus, its reference run and the helpers
    OPTS,
    TINY,
    _arrays,
    _assert_identical,
    _copy,
    _spawn,
)

# test_extract's module-scoped fixtures (the packed corpus, the uninterrupted reference run), here too
corpus, reference = _core.corpus, _core.reference


@pytest.mark.slow
def test_kill_9_then_resume_is_bit_identical(corpus: Path, reference, tmp_path: Path):
    work = _copy(corpus, tmp_path)
    proc = _spawn(work, "py:tests.cache.test_extract:slow_tiny")
    done_dir = None
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        found = list((work / "cache").glob("*/ts1-hop1.zarr/done/c/*"))
        if found:
            done_dir = found[0].parent
            break
        time.sleep(0.05)
    assert proc.poll() is None, (
        f"the run ended before it could be killed: {proc.stderr.read().decode()[-2000:]}"
    )
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert done_dir is not None
    n_done = len(list(done_dir.iterdir()))
    assert 1 <= n_done < 4, "killed too late to test resuming"
    result = extract(
        work, TINY, ts=1, device="cpu", batch_size=8, workers=0, progress=False, teacher_options=OPTS
    )
    assert result.blocks_skipped >= 1 and result.cache_complete
    _assert_identical(_arrays(result.cache), reference)


@pytest.mark.slow
def test_two_ranks_in_parallel_are_bit_identical(corpus: Path, reference, tmp_path: Path):
    work = _copy(corpus, tmp_path)
    procs = [_spawn(work, TINY, rank=r, world_size=2) for r in range(2)]
    try:
        for p in procs:
            _, err = p.communicate(timeout=180)
            assert p.returncode == 0, err.decode()[-2000:]
    finally:
        for p in procs:
            p.kill()  # neither rank outlives the test (no-op once exited)
    store = open_cache(work, "ts1-hop1")
    assert store.is_complete() and store.attrs["finished"]
    _assert_identical(_arrays(store.path), reference)


@pytest.mark.slow
def test_spawned_decode_workers_are_bit_identical(corpus: Path, reference, tmp_path: Path):
    work = _copy(corpus, tmp_path)
    result = extract(
        work, TINY, ts=1, device="cpu", batch_size=8, workers=2, progress=False, teacher_options=OPTS
    )
    assert result.cache_complete
    _assert_identical(_arrays(result.cache), reference)


def test_resampling_on_the_device_path_gives_the_same_bits(corpus: Path, reference, tmp_path: Path):
    """The GPU path (int16 to the device, resampled there) run on the CPU: same numbers as the workers."""
    work = _copy(corpus, tmp_path)
    r = extract(
        work,
        TINY,
        ts=1,
        device="cpu",
        batch_size=8,
        workers=0,
        progress=False,
        teacher_options=OPTS,
        resample_on="device",
    )
    _assert_identical(_arrays(r.cache), reference)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_path_bf16_is_deterministic_across_ranks(corpus: Path, tmp_path: Path):
    """On a GPU: int16 to the device, resampling there, bf16 autocast; 1 vs 2 ranks give the same bits."""
    work = _copy(corpus, tmp_path)
    one = extract(
        work, TINY, ts=1, device="cuda", batch_size=8, workers=2, progress=False, teacher_options=OPTS
    )
    g = zarr.open_group(str(one.cache), mode="r")
    assert one.cache_complete and g.attrs["precision"] == "cuda-bf16-autocast"
    ref = _arrays(one.cache)
    shutil.rmtree(work / "cache")
    for rank in (1, 0):
        extract(
            work,
            TINY,
            ts=1,
            device="cuda",
            batch_size=8,
            workers=0,
            rank=rank,
            world_size=2,
            progress=False,
            teacher_options=OPTS,
        )
    _assert_identical(_arrays(one.cache), ref)
