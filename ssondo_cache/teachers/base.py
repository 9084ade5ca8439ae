"""What every teacher is: mono audio at its own rate -> frame embeddings."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ssondo_cache.compiling import compile_module


class Teacher(nn.Module):
    """Base class of all teachers.

    Subclasses set ``name``, ``sample_rate``, ``embed_dim``, ``chunk_seconds`` and ``teacher_id``
    and implement ``forward``. Temporal support (windowing, pooling) is applied outside the teacher.
    """

    name: str = ""
    sample_rate: int = 16000
    embed_dim: int = 0
    chunk_seconds: float = 0.0  # the model's native window length
    teacher_id: str = ""  # "<name>-<12 hex>", filesystem safe; goes into the cache path
    cpu_only: bool = False  # True for teachers that cannot run on an accelerator (e.g. onnxruntime CPU)
    spec: str = (
        ""  # how build_teacher was asked for it (registry name, hear:..., py:...); set by build_teacher
    )

    def forward(self, audio: torch.Tensor) -> torch.Tensor:  # (B, S) -> (B, T, D)
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        """JSON-able facts recorded in the cache attributes (front-end constants, dims)."""
        return {
            "name": self.name,
            "spec": self.spec or self.name,
            "teacher_id": self.teacher_id,
            "sample_rate": self.sample_rate,
            "embed_dim": self.embed_dim,
            "chunk_seconds": self.chunk_seconds,
        }


def compile_teacher(teacher: Teacher) -> Callable[[torch.Tensor], torch.Tensor]:
    """The one way a teacher is compiled (extraction, the GPU benchmarks and tests): its whole forward,
    front-end and chunking included, for static shapes (one graph per input shape, which is why
    extraction pads every forward to batch_size rows)."""
    if teacher.cpu_only:
        raise ValueError(
            f"teacher {teacher.spec or teacher.name!r} does not run in PyTorch (cpu_only): "
            "--compile cannot apply"
        )
    return compile_module(teacher, dynamic=False)


_UNSAFE = re.compile(r"[^A-Za-z0-9_.+-]+")


def safe_name(text: str) -> str:
    """A filesystem-safe form of a teacher name ("py:pkg.mod:make" -> "py-pkg.mod-make")."""
    return _UNSAFE.sub("-", text).strip("-.") or "teacher"


def make_teacher_id(name: str, hex_digest: str) -> str:
    """``<name>-<12 hex>``: the folder name of this teacher's caches."""
    return f"{safe_name(name)}-{hex_digest[:12]}"


def state_dict_sha256(module: nn.Module) -> str:
    """sha256 over a module's parameters and buffers (names, shapes, dtypes and bytes), in key order.

    Used for teachers that have no checkpoint file (factories, HEAR modules): two models with the same
    weights get the same id, any changed weight gives another."""
    h = hashlib.sha256()
    for key, value in sorted(module.state_dict().items()):
        if not isinstance(value, torch.Tensor):
            continue
        h.update(f"{key}|{tuple(value.shape)}|{value.dtype}|".encode())
        flat = value.detach().to("cpu").contiguous().reshape(-1)
        h.update(flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b"")
    return h.hexdigest()
