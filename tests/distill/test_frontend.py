"""Front-ends vs independent computations: a numpy log-mel written from the formulas, and the
golden output of EfficientAT's own front-end."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from ssondo_cache.typed_config import ConfigError
from ssondo_distill.frontend import FRONTENDS, LogMelConfig, StudentFrontEnd

GOLDEN = Path(__file__).resolve().parent.parent / "fixtures" / "official" / "efficientat_tiny_official.pt"
SR = 32000


def _test_audio(n: int, seed: int = 0) -> np.ndarray:
    """A chirp, a tone and a little noise: energy spread over the whole mel range."""
    rng = np.random.default_rng(seed)
    t = np.arange(n) / SR
    chirp = np.sin(2 * np.pi * (100 * t + 0.5 * (15000 - 100) / t[-1] * t**2))
    return (0.5 * chirp + 0.3 * np.sin(2 * np.pi * 440 * t) + 0.01 * rng.standard_normal(n)).astype(
        np.float32
    )


def _slaney_hz_to_mel(f: np.ndarray) -> np.ndarray:
    f = np.asarray(f, dtype=np.float64)
    lin = f / (200.0 / 3)
    log = 15.0 + np.log(np.maximum(f, 1e-10) / 1000.0) / (np.log(6.4) / 27.0)
    return np.where(f >= 1000.0, log, lin)


def _slaney_mel_to_hz(m: np.ndarray) -> np.ndarray:
    lin = m * (200.0 / 3)
    log = 1000.0 * np.exp((np.log(6.4) / 27.0) * (m - 15.0))
    return np.where(m >= 15.0, log, lin)


def _numpy_logmel(
    audio: np.ndarray, n_fft=1024, hop=512, n_mels=128, fmin=50.0, fmax=16000.0, offset=1e-3
) -> np.ndarray:
    """Frames without centering, periodic Hann, |rfft|^2, triangular Slaney mel filters with
    area normalisation 2 / (f_{m+1} - f_{m-1}), log(x + offset). Returns (n_mels, T)."""
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)
    n_frames = 1 + (len(audio) - n_fft) // hop
    frames = np.stack([audio[i * hop : i * hop + n_fft] for i in range(n_frames)]).astype(np.float64)
    power = np.abs(np.fft.rfft(frames * window, axis=1)) ** 2  # (T, n_fft/2+1)
    freqs = np.linspace(0, SR / 2, n_fft // 2 + 1)
    edges = _slaney_mel_to_hz(np.linspace(_slaney_hz_to_mel(fmin), _slaney_hz_to_mel(fmax), n_mels + 2))
    banks = np.zeros((n_mels, len(freqs)))
    for m in range(n_mels):
        lo, mid, hi = edges[m], edges[m + 1], edges[m + 2]
        up = (freqs - lo) / (mid - lo)
        down = (hi - freqs) / (hi - mid)
        banks[m] = np.maximum(0, np.minimum(up, down)) * 2.0 / (hi - lo)
    return np.log(banks @ power.T + offset)


def test_kd_logmel_matches_an_independent_computation() -> None:
    audio = np.stack([_test_audio(SR), _test_audio(SR, seed=1)[::-1].copy()])
    fe = StudentFrontEnd()  # the paper's KD settings are the defaults
    out = fe(torch.from_numpy(audio))
    assert out.shape == (2, 1, 128, fe.n_frames(SR)) == (2, 1, 128, 61)
    for i in range(2):
        ref = _numpy_logmel(audio[i])
        np.testing.assert_allclose(out[i, 0].numpy(), ref, atol=2e-3, rtol=1e-4)


def test_paper_defaults_and_configurability() -> None:
    cfg = LogMelConfig()
    assert (cfg.sample_rate, cfg.n_fft, cfg.win_length, cfg.hop_length, cfg.n_mels) == (
        32000,
        1024,
        1024,
        512,
        128,
    )
    assert (cfg.f_min, cfg.f_max, cfg.log_offset, cfg.kind) == (50.0, 16000.0, 1e-3, "logmel")
    fe = StudentFrontEnd(n_mels=64, hop_length=256, f_min=0.0, f_max=8000.0, log_offset=1e-5)
    audio = _test_audio(16000)
    out = fe(torch.from_numpy(audio)[None])
    assert out.shape == (1, 1, 64, fe.n_frames(16000))
    ref = _numpy_logmel(audio, hop=256, n_mels=64, fmin=0.0, fmax=8000.0, offset=1e-5)
    np.testing.assert_allclose(out[0, 0].numpy(), ref, atol=5e-3, rtol=1e-3)


def test_efficientat_frontend_reproduces_the_official_output() -> None:
    """EfficientAT's ``AugmentMelSTFT`` (eval) on the golden audio. NOTE: the fixture matches
    f_max = 16000 exactly (max error 0); the official code at a425fdc, with fmax=None, uses
    sr/2 - fmax_aug_range/2 = 15000 in eval, which is the preset's default."""
    golden = torch.load(GOLDEN, weights_only=True)
    fe = StudentFrontEnd.from_config(LogMelConfig.efficientat(f_max=16000.0))
    out = fe(golden["audio_32k"])
    ref = golden["efficientat_mel_eval"]
    assert out.shape == ref.shape == (2, 1, 128, fe.n_frames(golden["audio_32k"].shape[1]))
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    assert LogMelConfig.efficientat().f_max == 15000.0


def test_frontend_interface() -> None:
    assert set(FRONTENDS.names()) == {"logmel", "efficientat"}
    fe = StudentFrontEnd()
    assert fe.sample_rate == 32000 and fe.n_mels == 128
    assert fe.state_dict() == {}  # window and banks are derived from the config, never saved
    assert StudentFrontEnd(**fe.config()).config() == fe.config()
    # mixed-precision input and autocast still give an fp32 mel
    audio = torch.from_numpy(_test_audio(8000))[None]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = fe(audio.bfloat16())
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    with pytest.raises(ConfigError, match="unknown key"):
        StudentFrontEnd(n_mel=64)
    with pytest.raises(ValueError, match="f_max"):
        StudentFrontEnd(f_max=20000.0)
    with pytest.raises(KeyError, match="unknown front-end"):
        StudentFrontEnd(kind="mfcc")
    with pytest.raises(ValueError, match="shorter than one frame"):
        fe(torch.zeros(1, 100))
    with pytest.raises(ValueError, match=r"\(B, samples\)"):
        fe(torch.zeros(100))
