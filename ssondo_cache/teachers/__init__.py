"""Teachers: audio (B, samples) at the teacher's rate -> frame embeddings (B, T, D).

``build_teacher(spec)`` accepts a registry name (``matpac``, ``m2d``, ``yamnet``), ``hear:<module>``
(any HEAR-API module) or ``py:<module>:<callable>`` (any factory returning a teacher-like module).
Registering a name imports nothing heavy: each factory imports its implementation when called.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from ssondo_cache.devices import resolve_device
from ssondo_cache.registry import Registry
from ssondo_cache.teachers.base import Teacher

TEACHERS: Registry[Teacher] = Registry("teacher")
log = logging.getLogger(__name__)


@TEACHERS.register("matpac")
def _matpac(checkpoint: str | Path | None = None, **options: Any) -> Teacher:
    from ssondo_cache.teachers.matpac import build_matpac

    return build_matpac(checkpoint=checkpoint, **options)


@TEACHERS.register("m2d")
def _m2d(checkpoint: str | Path | None = None, **options: Any) -> Teacher:
    from ssondo_cache.teachers.m2d import build_m2d

    return build_m2d(checkpoint=checkpoint, **options)


@TEACHERS.register("yamnet")
def _yamnet(checkpoint: str | Path | None = None, **options: Any) -> Teacher:
    from ssondo_cache.teachers.yamnet import build_yamnet

    return build_yamnet(checkpoint=checkpoint, **options)


def build_teacher(
    spec: str, checkpoint: str | Path | None = None, device: str | torch.device = "cpu", **options: Any
) -> Teacher:
    """Build a teacher in eval mode, gradients off, on ``device``.

    spec: registry name | ``hear:<module>`` | ``py:<module>:<callable>``. ``options`` go to the factory
    (e.g. architecture sizes, ``inference_type`` for MATPAC)."""
    dev = resolve_device(device)
    if checkpoint is not None and not Path(checkpoint).is_file():
        raise FileNotFoundError(f"teacher checkpoint not found: {checkpoint}")
    if spec.startswith("hear:"):
        from ssondo_cache.teachers.adapters import load_hear_teacher

        teacher = load_hear_teacher(spec, checkpoint, **options)
    elif spec.startswith("py:"):
        from ssondo_cache.teachers.adapters import load_factory_teacher

        teacher = load_factory_teacher(spec, checkpoint, **options)
    else:
        teacher = TEACHERS.build(spec, checkpoint=checkpoint, **options)
    if not teacher.teacher_id:
        raise ValueError(f"teacher {spec!r} did not set a teacher_id")
    if teacher.cpu_only and dev.type != "cpu":
        if str(device) != "auto":
            raise RuntimeError(
                f"teacher {spec!r} runs on the CPU only; device {dev} was requested (use --device cpu)"
            )
        log.info("device auto -> cpu: teacher %r runs on the CPU only", spec)
        dev = torch.device("cpu")
    teacher.spec = spec
    teacher.requires_grad_(False)
    return teacher.to(dev).eval()


def teacher_info(spec: str, checkpoint: str | Path | None = None, **options: Any) -> dict[str, Any]:
    """Build a teacher on the CPU and report what it is: ``describe()`` plus its parameter count."""
    teacher = build_teacher(spec, checkpoint=checkpoint, device="cpu", **options)
    n_params = sum(p.numel() for p in teacher.parameters())
    return {**teacher.describe(), "parameters": n_params, "class": type(teacher).__name__}


__all__ = ["TEACHERS", "Teacher", "build_teacher", "teacher_info"]
