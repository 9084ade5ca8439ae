"""compiling: every torch.compile of the project goes through compile_module / compile_in_place,
which keep inductor's CPU kernels at 256-bit vectors where the CPU offers wider ones."""

from __future__ import annotations

import types

import pytest
import torch
from torch import nn
from torch._inductor import config as inductor_config
from torch._inductor import cpu_vec_isa

from ssondo_cache import compiling
from ssondo_cache.teachers import base as teacher_base
from ssondo_distill import step
from ssondo_distill.pretrain import model as pretrain_model


@pytest.fixture(autouse=True)
def _restore_simdlen():
    """inductor's config is a proxy monkeypatch cannot restore: save and put back by assignment."""
    saved = inductor_config.cpp.simdlen
    yield
    inductor_config.cpp.simdlen = saved


def _isa(bits: int) -> types.SimpleNamespace:
    return types.SimpleNamespace(bit_width=lambda: bits)


@pytest.mark.parametrize(("bits", "want"), [(512, 256), (256, None), (0, None)])
def test_wider_than_256_bits_is_limited(monkeypatch, bits: int, want: int | None) -> None:
    inductor_config.cpp.simdlen = None
    monkeypatch.setattr(cpu_vec_isa, "pick_vec_isa", lambda: _isa(bits))
    assert compiling.limit_cpu_vector_width() == want
    assert inductor_config.cpp.simdlen == want


def test_a_simdlen_the_caller_set_is_kept(monkeypatch) -> None:
    inductor_config.cpp.simdlen = 512
    monkeypatch.setattr(cpu_vec_isa, "pick_vec_isa", lambda: _isa(512))
    assert compiling.limit_cpu_vector_width() == 512


def test_compile_module_limits_then_compiles(monkeypatch) -> None:
    inductor_config.cpp.simdlen = None
    monkeypatch.setattr(cpu_vec_isa, "pick_vec_isa", lambda: _isa(512))
    seen = []
    monkeypatch.setattr(torch, "compile", lambda m, **kw: seen.append((inductor_config.cpp.simdlen, kw)) or m)
    module = nn.Linear(2, 2)
    assert compiling.compile_module(module, dynamic=False) is module
    assert seen == [(256, {"dynamic": False})]


def test_the_project_compiles_only_through_compiling() -> None:
    """The teacher, student-step and pretraining compile sites call compiling's functions."""
    import inspect

    for where, name in (
        (teacher_base, "compile_module"),
        (step, "compile_module"),
        (pretrain_model, "compile_in_place"),
    ):
        src = inspect.getsource(where)
        assert f"{name}(" in src, where.__name__
        assert "torch.compile(" not in src.replace("`torch.compile(", ""), where.__name__
        assert ".compile()" not in src, where.__name__
