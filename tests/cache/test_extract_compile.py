"""Extraction with --compile: part of the cache identity, one compile path, the full-clip recompile
limit, and the compiled CPU forward giving the eager embeddings."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from ssondo_cache.cache_index import open_cache
from ssondo_cache.extract import _refuse_many_full_lengths, extract
from ssondo_cache.extract_items import make_plan
from ssondo_cache.manifests import read_clips
from ssondo_cache.store import CacheMismatchError
from ssondo_cache.teachers import build_teacher
from ssondo_cache.window_embed import WindowEmbedder
from ssondo_cache.windows import TemporalSupport
from tests.cache import test_extract as _core
from tests.cache.test_extract import (  # the corpus, its reference run and the helpers
    OPTS,
    TINY,
    _arrays,
    _copy,
    _spawn,
)

# test_extract's module-scoped fixtures (the packed corpus, the uninterrupted reference run), here too
corpus, reference = _core.corpus, _core.reference


def test_compile_is_part_of_the_cache_identity(corpus: Path, reference, tmp_path: Path):
    """A compiled forward rounds differently from the eager one: resuming an eager cache compiled is
    refused before anything runs, as another batch size or precision is."""
    work = _copy(corpus, tmp_path)
    shutil.copytree(corpus / "cache", work / "cache")
    with pytest.raises(CacheMismatchError, match="compile is False in the cache, True now"):
        extract(
            work, TINY, ts=1, device="cpu", batch_size=8, compile=True, workers=0, progress=False,
            teacher_options=OPTS,
        )  # fmt: skip


def test_teachers_are_compiled_one_way(monkeypatch):
    """compile_teacher is the one compile path (whole forward, static shapes): extraction uses it,
    and the ViT teachers no longer compile themselves."""
    calls = []
    monkeypatch.setattr(torch, "compile", lambda module, **kw: calls.append((module, kw)) or module)
    teacher = build_teacher(TINY, **OPTS)
    assert WindowEmbedder(teacher, torch.device("cpu"), 4, compile=True).forward is teacher
    assert calls == [(teacher, {"dynamic": False})]
    with pytest.raises(TypeError, match="compile"):
        build_teacher("matpac", random_init=True, compile=True, embed_dim=64, depth=1, num_heads=1)


def test_full_clip_compile_is_refused_past_the_recompile_limit(corpus: Path, tmp_path: Path, monkeypatch):
    """--ts full --compile: one graph per distinct clip length; past dynamo's limit it is refused
    (the corpus has 7 lengths), before the cache is created."""
    work = _copy(corpus, tmp_path)
    monkeypatch.setattr(torch._dynamo.config, "recompile_limit", 6)
    with pytest.raises(ValueError, match="7 distinct clip lengths.*past 6"):
        extract(
            work, TINY, ts="full", device="cpu", compile=True, workers=0, progress=False, teacher_options=OPTS
        )
    assert not (work / "cache").exists()
    monkeypatch.setattr(torch._dynamo.config, "recompile_limit", 7)
    plan = make_plan(read_clips(work), 16000, TemporalSupport.parse("full"))
    _refuse_many_full_lengths(plan)  # 7 lengths, 7 graphs: accepted


@pytest.mark.slow
@pytest.mark.inductor
def test_compiled_teacher_on_the_cpu_gives_the_eager_embeddings(corpus: Path, tmp_path: Path, reference):
    """--compile pads every forward to batch_size rows (one static shape); the padding rows must not
    leak into the embeddings. Runs torch.compile (inductor) on the CPU: the GPU path's logic, here.
    In a child process: after torch.compile, processes forked by later tests could not run autograd."""
    work = _copy(corpus, tmp_path)
    proc = _spawn(work, TINY, compile=True)
    try:
        _, err = proc.communicate(timeout=600)
    finally:
        proc.kill()  # a compile that hangs past the timeout must not outlive the test (no-op once exited)
    assert proc.returncode == 0, err.decode()[-3000:]
    got = _arrays(open_cache(work, "ts1-hop1").path)
    assert got["done"].all()
    assert np.array_equal(got["n_windows"], reference["n_windows"])
    np.testing.assert_allclose(got["emb"], reference["emb"], rtol=2e-3, atol=1e-3)  # float16 rounding
    np.testing.assert_allclose(got["clip"], reference["clip"], rtol=2e-3, atol=1e-3)
