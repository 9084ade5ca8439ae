"""MATPAC and M2D log-mel front-ends against a plain numpy computation and the official outputs."""

from pathlib import Path

import numpy as np
import pytest
import torch
import torchaudio

from ssondo_cache.teachers.frontends import (
    M2D_FRONTEND,
    MATPAC_FRONTEND,
    LogMelFrontEnd,
    slaney_mel_filterbank,
)

OFFICIAL = Path(__file__).parents[2] / "fixtures" / "official"


def numpy_log_mel(audio: np.ndarray, center: bool) -> np.ndarray:
    """The formula, in float64: frames of 400 (reflect-padded by 200 when centred), periodic Hann,
    |rfft|^2, Slaney mel (torchaudio's filterbank as an independent reference), log(x + eps32)."""
    x = np.pad(audio.astype(np.float64), 200, mode="reflect") if center else audio.astype(np.float64)
    n = 1 + (x.size - 400) // 160
    win = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(400) / 400)
    frames = np.stack([x[i * 160 : i * 160 + 400] * win for i in range(n)])  # (n, 400)
    power = np.abs(np.fft.rfft(frames, axis=1)) ** 2  # (n, 201)
    fb = (
        torchaudio.functional.melscale_fbanks(201, 50.0, 8000.0, 80, 16000, norm="slaney", mel_scale="slaney")
        .double()
        .numpy()
    )
    return np.log(power @ fb + np.finfo(np.float32).eps).T  # (80, n)


def test_filterbank_matches_torchaudio_slaney():
    ref = torchaudio.functional.melscale_fbanks(
        201, 50.0, 8000.0, 80, 16000, norm="slaney", mel_scale="slaney"
    )
    np.testing.assert_allclose(slaney_mel_filterbank(400, 16000, 80, 50.0, 8000.0), ref.numpy(), atol=5e-7)


@pytest.mark.parametrize(
    ("cfg", "frames"), [(MATPAC_FRONTEND, 1 + (8000 - 400) // 160), (M2D_FRONTEND, 1 + 8000 // 160)]
)
def test_log_mel_matches_numpy_formula(cfg, frames):
    rng = np.random.default_rng(0)
    t = np.arange(8000) / 16000
    audio = (0.3 * np.sin(2 * np.pi * 440 * t) + 0.05 * rng.standard_normal(t.size)).astype(np.float32)
    fe = LogMelFrontEnd(cfg)
    ours = fe.log_mel(torch.from_numpy(audio)[None])[0].numpy()
    assert ours.shape == (80, frames) and fe.n_frames(8000) == frames
    np.testing.assert_allclose(ours, numpy_log_mel(audio, cfg.center), atol=2e-4, rtol=1e-5)
    norm = fe(torch.from_numpy(audio)[None])[0].numpy()
    np.testing.assert_allclose(norm, (ours - cfg.mean) / cfg.std, rtol=1e-6, atol=1e-6)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def test_matpac_log_mel_matches_official():
    d = torch.load(OFFICIAL / "matpac_tiny_official.pt", weights_only=True)
    ours = LogMelFrontEnd(MATPAC_FRONTEND).log_mel(d["audio"])
    assert ours.shape == d["log_mel"].shape == (2, 80, 928)
    assert _rel(ours, d["log_mel"]) < 2e-5  # fp32 FFT noise; ours is the closer of the two to fp64
    # the official torchaudio buffers are the same window and filterbank
    sd = d["state_dict"]
    torch.testing.assert_close(
        sd["log_mel.MelSpectrogram.mel_scale.fb"],
        LogMelFrontEnd(MATPAC_FRONTEND).mel_fb,
        rtol=1e-4,
        atol=1e-6,
    )


def test_m2d_log_mel_matches_official_nnaudio():
    d = torch.load(OFFICIAL / "m2d_tiny_official.pt", weights_only=True)
    ours = LogMelFrontEnd(M2D_FRONTEND).log_mel(d["audio"])
    assert ours.shape == d["log_mel"][:, 0].shape == (2, 80, 931)
    assert _rel(ours, d["log_mel"][:, 0]) < 2e-5
