"""Front-ends vs independent computations: a numpy log-mel written from the formulas, and the
golden output of EfficientAT's own front-end."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from ssondo_cache.typed_config import ConfigError
from ssondo_distill.frontend import FRONTENDS, LogMelConfig, StudentFrontEnd
from tests.cache.numpy_logmel import numpy_log_mel, slaney_banks

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


def _numpy_logmel(
    audio: np.ndarray, n_fft=1024, hop=512, n_mels=128, fmin=50.0, fmax=16000.0, offset=1e-3
) -> np.ndarray:
    """The KD log-mel from the formulas: no centring, periodic Hann, Slaney banks. (n_mels, T)."""
    return numpy_log_mel(audio, n_fft, hop, slaney_banks(n_fft, SR, n_mels, fmin, fmax), False, offset)


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
    assert set(FRONTENDS.names()) == {"logmel", "efficientat", "htk"}
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


def test_students_and_teachers_share_one_front_end() -> None:
    """One config class and one implementation (ssondo_cache.logmel): a student front-end given a
    teacher's settings computes exactly that teacher's normalised log-mel."""
    from ssondo_cache.logmel import LogMelConfig as SharedConfig
    from ssondo_cache.teachers import build_teacher

    teacher = build_teacher("m2d", random_init=True, embed_dim=64, depth=1, num_heads=1)
    assert LogMelConfig is SharedConfig and isinstance(teacher.frontend.cfg, SharedConfig)
    student = StudentFrontEnd.from_config(teacher.frontend.cfg)
    audio = torch.from_numpy(np.stack([_test_audio(16000), _test_audio(16000, seed=1)]))
    assert torch.equal(student(audio), teacher.frontend(audio))
    assert student(audio).shape == (2, 1, 80, 1 + 16000 // 160)
