"""A log-mel written from the formulas in float64 numpy: the independent reference the front-end
tests (teachers' and students') compare ssondo_cache.logmel against."""

from __future__ import annotations

import numpy as np


def slaney_hz_to_mel(f: np.ndarray) -> np.ndarray:
    """Slaney's Auditory Toolbox mel scale: linear below 1 kHz, logarithmic above."""
    f = np.asarray(f, dtype=np.float64)
    log = 15.0 + np.log(np.maximum(f, 1e-10) / 1000.0) / (np.log(6.4) / 27.0)
    return np.where(f >= 1000.0, log, f / (200.0 / 3))


def slaney_mel_to_hz(m: np.ndarray) -> np.ndarray:
    m = np.asarray(m, dtype=np.float64)
    return np.where(m >= 15.0, 1000.0 * np.exp((np.log(6.4) / 27.0) * (m - 15.0)), m * (200.0 / 3))


def slaney_banks(n_fft: int, sr: int, n_mels: int, fmin: float, fmax: float) -> np.ndarray:
    """(n_mels, n_fft//2 + 1) triangles between Slaney-mel-spaced corners, area-normalised by
    2 / (f_{m+1} - f_{m-1})."""
    freqs = np.linspace(0, sr / 2, n_fft // 2 + 1)
    edges = slaney_mel_to_hz(np.linspace(slaney_hz_to_mel(fmin), slaney_hz_to_mel(fmax), n_mels + 2))
    lo, mid, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    tri = np.maximum(0.0, np.minimum((freqs - lo) / (mid - lo), (hi - freqs) / (hi - mid)))
    return tri * 2.0 / (hi - lo)


def numpy_log_mel(
    audio: np.ndarray, n_fft: int, hop: int, banks: np.ndarray, center: bool, offset: float
) -> np.ndarray:
    """Frames of n_fft (reflect-padded by n_fft // 2 when centred), periodic Hann, |rfft|^2, banks,
    log(x + offset). Returns (n_mels, T)."""
    x = audio.astype(np.float64)
    if center:
        x = np.pad(x, n_fft // 2, mode="reflect")
    n = 1 + (len(x) - n_fft) // hop
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)
    frames = np.stack([x[i * hop : i * hop + n_fft] * window for i in range(n)])  # (T, n_fft)
    power = np.abs(np.fft.rfft(frames, axis=1)) ** 2  # (T, n_fft//2+1)
    return np.log(banks @ power.T + offset)
