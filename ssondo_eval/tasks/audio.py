"""Reading a task's audio: decode, mix to mono, resample, crop or pad to the task's clip length.

Mixing down and resampling are the packer's (``ssondo_cache.audio``: float32 channel mean, libsoxr HQ), so
a task clip and a packed clip of the same file hold the same samples. A task whose ``audio_cache`` is
set (``decoded_audio.with_decoded_audio``) reads each clip decoded once for all the models of a run.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import soundfile as sf

from ssondo_cache.audio import resample, to_mono
from ssondo_eval.tasks.base import Task, TaskItem


def read_audio(path: str | Path, sample_rate: int, clip_seconds: float | None = None) -> np.ndarray:
    """float32 (samples,) mono at ``sample_rate``; cropped from the start / zero-padded to ``clip_seconds``."""
    try:
        data, sr = sf.read(str(path), dtype="float32", always_2d=True)  # (S, C)
    except Exception as err:  # libsndfile's own message says what is wrong with the file
        raise ValueError(f"cannot decode {path}: {err}") from err
    return fit_length(resample(to_mono(data), sr, sample_rate), sample_rate, clip_seconds)


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
    read = task.audio_cache.read if task.audio_cache is not None else read_audio
    return read(item.path, sample_rate, task.clip_seconds)
