"""Real audio files written by the tests (tones + noise through soundfile), kept tiny."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf


def tone(
    seconds: float, sr: int, channels: int = 1, freq: float = 440.0, seed: int = 0, amp: float = 0.3
) -> np.ndarray:
    """(frames, channels) float32: a sine plus a little noise, different per channel and seed."""
    n = int(round(seconds * sr))
    t = np.arange(n) / sr
    rng = np.random.default_rng(seed)
    cols = [
        amp * np.sin(2 * np.pi * (freq + 37 * c + 11 * seed) * t) + 0.02 * rng.standard_normal(n)
        for c in range(channels)
    ]
    return np.stack(cols, axis=1).astype(np.float32)


def write_audio(
    path: Path,
    seconds: float = 0.5,
    sr: int = 32000,
    channels: int = 1,
    seed: int = 0,
    subtype: str = "PCM_16",
    data: np.ndarray | None = None,
) -> np.ndarray:
    """Write a file (format from the extension) and return the samples as written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    x = tone(seconds, sr, channels, seed=seed) if data is None else data
    sf.write(path, x, sr, subtype=subtype)
    return x


def tree_digest(root: Path) -> dict[str, str]:
    """{relative path: sha256} of every non-hidden file under root (shards + manifests)."""
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts):
            out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


@pytest.fixture
def small_corpus(tmp_path: Path) -> Path:
    """A folder of 9 mixed clips: rates, channels, formats, nested folders, one long file."""
    root = tmp_path / "corpus"
    write_audio(root / "a" / "tone1.wav", 0.5, 32000, 1, seed=1)
    write_audio(root / "a" / "tone2.flac", 0.4, 16000, 1, seed=2)
    write_audio(root / "a" / "stereo.wav", 0.3, 44100, 2, seed=3)
    write_audio(root / "b" / "float.wav", 0.6, 22050, 1, seed=4, subtype="FLOAT")
    write_audio(root / "b" / "c" / "deep.ogg", 0.5, 48000, 2, seed=5, subtype="VORBIS")
    write_audio(root / "b" / "pcm24.flac", 0.3, 32000, 3, seed=6, subtype="PCM_24")
    write_audio(root / "long.wav", 2.5, 8000, 1, seed=7)  # split into 1 s segments in the tests
    write_audio(root / "x.aiff", 0.2, 32000, 1, seed=8)
    write_audio(root / "y.wav", 0.25, 32000, 1, seed=9)
    return root
