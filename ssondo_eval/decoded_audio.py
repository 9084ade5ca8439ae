"""Task clips decoded once per sample rate for every model of a run: an on-disk cache under the report.

Every model of a report reads the same task files, at one of a few sample rates (the log-mel baseline
and YAMNet at 16 kHz, the students at 32 kHz ...). Without this, each model decodes, mixes down and
resamples every file again. :class:`DecodedAudio` keeps what ``tasks.audio.read_audio`` returns, as
float32 ``.npy`` files:

    DIR/sr<rate>/<key[:2]>/<key>.npy      key = sha256 of (absolute path, size, mtime in ns, rate,
                                                 clip length, resampler)

so an entry is found again by any model (and any later run writing into the same report), and is
never used once its file changed (another size or modification time gives another key; the old entry
is left behind, harmless). Entries are written atomically; one that cannot be read back (a disk fault)
is decoded again and replaced.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from ssondo_cache.atomic import write_bytes
from ssondo_cache.audio import RESAMPLER
from ssondo_eval.tasks.audio import read_audio
from ssondo_eval.tasks.base import Task

LAYOUT = 1  # bump when what an entry holds changes for the same key


@dataclass
class DecodedAudio:
    """``read(path, sample_rate, clip_seconds)``: ``read_audio``'s result, decoded only on a miss."""

    root: Path
    hits: int = 0
    misses: int = 0

    def __post_init__(self) -> None:
        self.root = Path(self.root)

    def entry(self, path: str | Path, sample_rate: int, clip_seconds: float | None) -> Path:
        """Where the decoded clip of ``path`` (as the file is now) at ``sample_rate`` lives."""
        path = Path(path).absolute()
        try:
            st = path.stat()
        except OSError as err:
            raise ValueError(f"cannot read task audio {path}: {err.strerror}") from None
        ident = [LAYOUT, str(path), st.st_size, st.st_mtime_ns, int(sample_rate), clip_seconds, RESAMPLER]
        key = hashlib.sha256(json.dumps(ident).encode()).hexdigest()
        return self.root / f"sr{int(sample_rate)}" / key[:2] / f"{key}.npy"

    def read(self, path: str | Path, sample_rate: int, clip_seconds: float | None = None) -> np.ndarray:
        """float32 (samples,) mono at ``sample_rate``, cropped / zero-padded to ``clip_seconds``."""
        entry = self.entry(path, sample_rate, clip_seconds)
        audio = _load(entry, None if clip_seconds is None else round(clip_seconds * sample_rate))
        if audio is not None:
            self.hits += 1
            return audio
        self.misses += 1
        audio = read_audio(path, sample_rate, clip_seconds)
        buf = io.BytesIO()
        np.save(buf, audio, allow_pickle=False)
        write_bytes(entry, buf.getvalue())
        return audio


def _load(entry: Path, n_samples: int | None) -> np.ndarray | None:
    """The entry's samples, or None when it is absent or not what an entry holds."""
    try:
        audio = np.load(entry, allow_pickle=False)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, EOFError):
        return None  # unreadable: decoded again and replaced
    ok = audio.dtype == np.float32 and audio.ndim == 1 and n_samples in (None, audio.shape[0])
    return audio if ok else None


def with_decoded_audio(tasks: list[Task], root: str | Path) -> list[Task]:
    """The same tasks, their clips read through one :class:`DecodedAudio` at ``root``."""
    cache = DecodedAudio(Path(root))
    return [replace(t, audio_cache=cache) for t in tasks]
