"""The one way this project calls torch.compile: inductor's CPU kernels limited to 256-bit vectors.

Why: with torch 2.14.1, inductor's AVX-512 C++ kernels corrupt the heap on an AVX-512 CPU (2-core
AMD EPYC with AVX-512/VNNI, g++ of this image): one compiled training step of mn04 aborts with
"malloc(): unaligned tcache chunk detected", a compiled tiny MATPAC extraction with
"malloc_consolidate(): invalid chunk size"; the same code compiled for AVX2 (``cpp.simdlen = 256``,
or ``ATEN_CPU_CAPABILITY=avx2``) runs and matches eager. The limit only touches inductor's CPU C++
code generation: GPU kernels (Triton) and eager kernels are unchanged, and a ``simdlen`` the caller
set is left alone.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

CPU_SIMDLEN = 256  # bits per vector in inductor's CPU kernels where the CPU offers more (module doc)


def limit_cpu_vector_width() -> int | None:
    """Set inductor's ``cpp.simdlen`` to ``CPU_SIMDLEN`` when it is unset and the vector ISA inductor
    would pick is wider. -> the ``simdlen`` now in force (None: inductor's own choice)."""
    from torch._inductor import config
    from torch._inductor.cpu_vec_isa import pick_vec_isa

    if config.cpp.simdlen is None and pick_vec_isa().bit_width() > CPU_SIMDLEN:
        config.cpp.simdlen = CPU_SIMDLEN
    return config.cpp.simdlen


def compile_module(module: nn.Module, **options: Any) -> Any:
    """``torch.compile(module, **options)`` with inductor's CPU vectors limited (module doc)."""
    limit_cpu_vector_width()
    return torch.compile(module, **options)


def compile_in_place(module: nn.Module, **options: Any) -> None:
    """``module.compile(**options)`` (keeps the module and its state_dict keys), vectors limited."""
    limit_cpu_vector_width()
    module.compile(**options)


__all__ = ["CPU_SIMDLEN", "compile_in_place", "compile_module", "limit_cpu_vector_width"]
