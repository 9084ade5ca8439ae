"""Temporal support: how a clip is cut into windows of TS seconds with hop HOP.

All arithmetic is in samples at the teacher's sample rate, computed from the manifest alone
(``num_samples`` at the pack rate), so every process agrees on the cache shape before any audio
is decoded. Rules:
- a clip of L samples gets ``1 + ceil((L - win) / hop)`` windows (at least 1): windows start at
  0, hop, 2*hop, ... until one reaches the end of the clip;
- the last window is zero-padded when it runs past the end, and it counts;
- a clip shorter than TS gives one padded window;
- TS ``full`` gives one window per clip: the whole clip, whatever its length.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

FULL = "full"


def parse_seconds(value: str | float | int | None, what: str = "--ts") -> float | None:
    """``"full"`` -> None; a positive finite number (or its text) -> float; anything else is an error."""
    if value is None or (isinstance(value, str) and value.strip().lower() == FULL):
        return None
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be a positive number of seconds or 'full', got {value!r}") from None
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"{what} must be a positive number of seconds or 'full', got {value!r}")
    return seconds


def format_seconds(seconds: float | None) -> str:
    """Short, exact, filesystem-safe text for a duration: 1.0 -> "1", 0.5 -> "0.5", None -> "full"."""
    if seconds is None:
        return FULL
    text = repr(float(seconds))  # shortest text that reads back to the same float
    return text[:-2] if text.endswith(".0") else text


@dataclass(frozen=True)
class TemporalSupport:
    """TS and hop in seconds (None = the full clip)."""

    ts: float | None
    hop: float | None

    @classmethod
    def parse(cls, ts: str | float | None, hop: str | float | None = None) -> TemporalSupport:
        ts_s = parse_seconds(ts, "--ts")
        hop_s = parse_seconds(hop, "--hop") if hop is not None else ts_s
        if ts_s is None and hop_s is not None:
            raise ValueError("--hop makes no sense with --ts full (one window per clip)")
        if ts_s is not None and hop_s is None:
            raise ValueError("--hop full needs --ts full")
        if ts_s is not None and hop_s is not None and hop_s > ts_s:
            raise ValueError(f"--hop {hop_s} is longer than --ts {ts_s}: windows would skip audio")
        return cls(ts_s, hop_s)

    @property
    def name(self) -> str:
        """The cache file stem, e.g. ``ts1-hop1``, ``ts0.5-hop0.25``, ``tsfull-hopfull``."""
        return f"ts{format_seconds(self.ts)}-hop{format_seconds(self.hop)}"

    @property
    def is_full(self) -> bool:
        return self.ts is None

    def in_samples(self, sample_rate: int) -> tuple[int, int] | None:
        """(win, hop) in samples at ``sample_rate``; None for ``full``."""
        if self.ts is None or self.hop is None:
            return None
        win, hop = round(self.ts * sample_rate), round(self.hop * sample_rate)
        if win < 1 or hop < 1:
            raise ValueError(f"TS {self.ts} s / hop {self.hop} s is less than one sample at {sample_rate} Hz")
        return win, hop


def resampled_length(num_samples: int, orig_rate: int, new_rate: int) -> int:
    """Samples after resampling ``num_samples`` from ``orig_rate`` to ``new_rate`` (ceil, as torchaudio)."""
    if orig_rate == new_rate:
        return int(num_samples)
    return -(-int(num_samples) * int(new_rate) // int(orig_rate))


def n_windows(length: int, win: int | None, hop: int | None) -> int:
    """Windows for a clip of ``length`` samples (``win`` None = full clip: 1)."""
    if win is None or length <= win:
        return 1
    assert hop is not None and hop >= 1
    return 1 + -(-(length - win) // hop)


def n_windows_array(lengths: np.ndarray, win: int | None, hop: int | None) -> np.ndarray:
    """Vectorised :func:`n_windows` over clip lengths; int32."""
    lengths = np.asarray(lengths, dtype=np.int64)
    if win is None:
        return np.ones(lengths.shape, dtype=np.int32)
    extra = np.maximum(lengths - win, 0)
    return (1 + -(-extra // hop)).astype(np.int32)


def window_starts(length: int, win: int | None, hop: int | None) -> np.ndarray:
    """Start sample of each window (int64)."""
    n = n_windows(length, win, hop)
    return np.arange(n, dtype=np.int64) * (hop or 0)


def padded_length(length: int, win: int | None, hop: int | None) -> int:
    """Length the clip is zero-padded to so that every window is whole."""
    if win is None:
        return int(length)
    assert hop is not None
    return (n_windows(length, win, hop) - 1) * hop + win


def cut_windows(audio: torch.Tensor, win: int | None, hop: int | None) -> torch.Tensor:
    """(..., S) audio -> (..., n_windows, win) windows, the last one zero-padded; ``win`` None -> (..., 1, S)."""
    if win is None:
        return audio.unsqueeze(-2)
    assert hop is not None
    pad = padded_length(audio.shape[-1], win, hop) - audio.shape[-1]
    if pad:
        audio = torch.nn.functional.pad(audio, (0, pad))
    return audio.unfold(-1, win, hop)  # (..., n, win), a view
