"""Any embedding model as a teacher: HEAR-API modules (``hear:<module>``) and Python factories
(``py:<module>:<callable>``). These keep the pipeline architecture-agnostic."""

from __future__ import annotations

import hashlib
import importlib
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ssondo_cache.provenance import sha256_file
from ssondo_cache.teachers.base import Teacher, make_teacher_id, state_dict_sha256


def _import(module_name: str, spec: str):
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        raise ValueError(f"teacher {spec!r}: cannot import module {module_name!r} ({err})") from err


def _fingerprint(module: nn.Module | None, checkpoint: str | Path | None, extra: dict[str, Any]) -> str:
    """sha256 of the checkpoint file if there is one, else of the weights; plus the build options."""
    if checkpoint is not None:
        base = sha256_file(checkpoint)
    elif module is not None:
        base = state_dict_sha256(module)
    else:
        base = ""
    blob = json.dumps(extra, sort_keys=True, default=str).encode()
    return hashlib.sha256(base.encode() + b"|" + blob).hexdigest()


def _as_frames(out: torch.Tensor, spec: str) -> torch.Tensor:
    # A model giving one vector per clip (B, D) is a teacher with a single frame: (B, 1, D).
    if out.dim() == 2:
        return out.unsqueeze(1)
    if out.dim() != 3:
        raise ValueError(f"teacher {spec!r} returned shape {tuple(out.shape)}; expected (B, T, D) or (B, D)")
    return out


class FactoryTeacher(Teacher):
    """Wraps a plain ``nn.Module`` mapping (B, S) -> (B, T, D) (or (B, D)) that declares
    ``sample_rate`` and ``embed_dim`` attributes."""

    def __init__(self, model: nn.Module, name: str, spec: str) -> None:
        super().__init__()
        missing = [a for a in ("sample_rate", "embed_dim") if not hasattr(model, a)]
        if missing:
            raise ValueError(
                f"teacher {spec!r}: the factory's module lacks {', '.join(missing)}; a teacher must declare "
                "its sample_rate and embed_dim (or subclass ssondo_cache.teachers.base.Teacher)"
            )
        self.model = model
        self.name = name
        self.sample_rate = int(model.sample_rate)
        self.embed_dim = int(model.embed_dim)
        self.chunk_seconds = float(getattr(model, "chunk_seconds", 0.0))
        self._spec_for_errors = spec

    def forward(self, audio: torch.Tensor) -> torch.Tensor:  # (B, S) -> (B, T, D)
        return _as_frames(self.model(audio), self._spec_for_errors)


def load_factory_teacher(spec: str, checkpoint: str | Path | None = None, **options: Any) -> Teacher:
    """``py:<module>:<callable>``: call ``callable(**options)`` (plus ``checkpoint=`` when given)."""
    body = spec[len("py:") :]
    module_name, sep, attr = body.rpartition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"teacher spec {spec!r} must look like py:<module>:<callable>")
    factory = getattr(_import(module_name, spec), attr, None)
    if not callable(factory):
        raise ValueError(f"teacher {spec!r}: {module_name} has no callable {attr!r}")
    kwargs = dict(options)
    if checkpoint is not None:
        kwargs["checkpoint"] = checkpoint
    model = factory(**kwargs)
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"teacher {spec!r}: the factory returned {type(model).__name__}, not a torch.nn.Module"
        )
    name = f"py-{module_name}-{attr}"
    teacher = model if isinstance(model, Teacher) else FactoryTeacher(model, name, spec)
    if not teacher.name:
        teacher.name = name
    if not teacher.teacher_id:
        teacher.teacher_id = make_teacher_id(teacher.name, _fingerprint(teacher, checkpoint, options))
    return teacher


class HearTeacher(Teacher):
    """A HEAR-API module as a teacher: ``load_model(path?)`` once, then ``get_timestamp_embeddings``."""

    def __init__(self, hear_module, model, name: str, chunk_seconds: float = 0.0) -> None:
        super().__init__()
        for attr in ("sample_rate", "timestamp_embedding_size"):
            if not hasattr(model, attr):
                raise ValueError(
                    f"HEAR module {hear_module.__name__}: its model lacks the attribute {attr!r}"
                )
        self._hear = hear_module
        self.model = model  # registered as a submodule when it is an nn.Module, so .to(device) moves it
        self.name = name
        self.sample_rate = int(model.sample_rate)
        self.embed_dim = int(model.timestamp_embedding_size)
        self.chunk_seconds = float(chunk_seconds or getattr(model, "chunk_seconds", 0.0))
        self.last_timestamps: torch.Tensor | None = None  # (B, T) ms, from the last forward

    def forward(self, audio: torch.Tensor) -> torch.Tensor:  # (B, S) -> (B, T, D)
        emb, timestamps = self._hear.get_timestamp_embeddings(audio, self.model)
        self.last_timestamps = timestamps
        return _as_frames(emb, self.name)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "hear_module": self._hear.__name__}


def load_hear_teacher(spec: str, checkpoint: str | Path | None = None, **options: Any) -> Teacher:
    """``hear:<module>``: the HEAR 2021 API (``load_model(model_file_path)``, ``get_timestamp_embeddings``)."""
    module_name = spec[len("hear:") :]
    if not module_name:
        raise ValueError(f"teacher spec {spec!r} must look like hear:<module>")
    hear = _import(module_name, spec)
    for fn in ("load_model", "get_timestamp_embeddings"):
        if not callable(getattr(hear, fn, None)):
            raise ValueError(f"teacher {spec!r}: {module_name} has no {fn}() (not a HEAR-API module)")
    chunk_seconds = float(options.pop("chunk_seconds", 0.0))
    model = (
        hear.load_model(str(checkpoint), **options) if checkpoint is not None else hear.load_model(**options)
    )
    teacher = HearTeacher(hear, model, name=f"hear-{module_name}", chunk_seconds=chunk_seconds)
    source = getattr(hear, "__file__", None)
    extra = {
        "options": options,
        "module": module_name,
        "version": getattr(hear, "__version__", ""),
        "source_sha256": sha256_file(source) if source else "",
    }
    weights = model if isinstance(model, nn.Module) else None
    teacher.teacher_id = make_teacher_id(teacher.name, _fingerprint(weights, checkpoint, extra))
    return teacher
