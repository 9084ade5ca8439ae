"""What every teacher is: mono audio at its own rate -> frame embeddings."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


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

    def forward(self, audio: torch.Tensor) -> torch.Tensor:  # (B, S) -> (B, T, D)
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        """JSON-able facts recorded in the cache attributes (front-end constants, dims)."""
        return {
            "name": self.name,
            "teacher_id": self.teacher_id,
            "sample_rate": self.sample_rate,
            "embed_dim": self.embed_dim,
            "chunk_seconds": self.chunk_seconds,
        }
