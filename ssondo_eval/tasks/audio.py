"""Reading a task's audio: decode, mix to mono, resample, crop or pad to the task's clip length."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF

from ssondo_eval.tasks.base import Task, TaskItem


def read_audio(path: str | Path, sample_rate: int, clip_seconds: float | None = None) -> np.ndarray:
    """float32 (samples,) mono at ``sample_rate``; cropped from the start / zero-padded to ``clip_seconds``."""
    try:
        data, sr = sf.read(str(path), dtype="float32", always_2d=True)  # (S, C)
    except Exception as err:  # libsndfile's own message says what is wrong with the file
        raise ValueError(f"cannot decode {path}: {err}") from err
    audio = data.mean(axis=1)
    if sr != sample_rate:
        audio = AF.resample(torch.from_numpy(audio), sr, sample_rate).numpy()
    return fit_length(audio, sample_rate, clip_seconds)


def fit_length(audio: np.ndarray, sample_rate: int, clip_seconds: float | None) -> np.ndarray:
    if clip_seconds is None:
        return np.ascontiguousarray(audio, dtype=np.float32)
    n = round(clip_seconds * sample_rate)
    out = np.zeros(n, dtype=np.float32)
    out[: min(n, len(audio))] = audio[:n]
    return out


def iter_task_audio(task: Task, sample_rate: int) -> Iterator[tuple[int, np.ndarray]]:
    """(row, audio) for every item of ``task``, in item order. Items must have a file path."""
    for row, item in enumerate(task.items):
        yield row, read_item(item, task, sample_rate)


def read_item(item: TaskItem, task: Task, sample_rate: int) -> np.ndarray:
    if item.path is None:
        raise ValueError(
            f"task {task.name!r}: item {item.key!r} has no audio file (it lives only in a packed corpus); "
            "evaluate it from that corpus's teacher cache instead"
        )
    return read_audio(item.path, sample_rate, task.clip_seconds)
