"""MATPAC and M2D log-mel front-ends against a plain numpy computation and the official outputs."""

from pathlib import Path

import numpy as np
import pytest
import torch

from ssondo_cache.logmel import build_logmel
from ssondo_cache.teachers.frontends import EPS32, M2D_FRONTEND, MATPAC_FRONTEND
from tests.cache.numpy_logmel import numpy_log_mel, slaney_banks

OFFICIAL = Path(__file__).parents[2] / "fixtures" / "official"


@pytest.mark.parametrize(
    ("cfg", "frames"), [(MATPAC_FRONTEND, 1 + (8000 - 400) // 160), (M2D_FRONTEND, 1 + 8000 // 160)]
)
def test_log_mel_matches_numpy_formula(cfg, frames):
    rng = np.random.default_rng(0)
    t = np.arange(8000) / 16000
    audio = (0.3 * np.sin(2 * np.pi * 440 * t) + 0.05 * rng.standard_normal(t.size)).astype(np.float32)
    fe = build_logmel(cfg)
    ours = fe.log_mel(torch.from_numpy(audio)[None])[0].numpy()
    assert ours.shape == (80, frames) and fe.n_frames(8000) == frames
    ref = numpy_log_mel(audio, 400, 160, slaney_banks(400, 16000, 80, 50.0, 8000.0), cfg.center, EPS32)
    np.testing.assert_allclose(ours, ref, atol=2e-4, rtol=1e-5)
    norm = fe(torch.from_numpy(audio)[None])[0, 0].numpy()
    np.testing.assert_allclose(norm, (ours - cfg.norm_mean) / cfg.norm_std, rtol=1e-6, atol=1e-6)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def test_matpac_log_mel_matches_official():
    d = torch.load(OFFICIAL / "matpac_tiny_official.pt", weights_only=True)
    fe = build_logmel(MATPAC_FRONTEND)
    ours = fe.log_mel(d["audio"])
    assert ours.shape == d["log_mel"].shape == (2, 80, 928)
    assert _rel(ours, d["log_mel"]) < 2e-5  # fp32 FFT noise; ours is the closer of the two to fp64
    # the official torchaudio buffers are the same window and filterbank
    sd = d["state_dict"]
    torch.testing.assert_close(sd["log_mel.MelSpectrogram.mel_scale.fb"], fe.banks.T, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(sd["log_mel.MelSpectrogram.spectrogram.window"], fe.window)


def test_m2d_log_mel_matches_official_nnaudio():
    d = torch.load(OFFICIAL / "m2d_tiny_official.pt", weights_only=True)
    ours = build_logmel(M2D_FRONTEND).log_mel(d["audio"])
    assert ours.shape == d["log_mel"][:, 0].shape == (2, 80, 931)
    assert _rel(ours, d["log_mel"][:, 0]) < 2e-5
