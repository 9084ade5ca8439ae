"""BandedLogMel (the int8 export's front-end) computes the log-mel of LogMel with less work."""

from __future__ import annotations

import pytest
import torch

from ssondo_cache.logmel import LogMelConfig, build_logmel
from ssondo_distill.banded_mel import BandedLogMel, bands

CONFIGS = {
    "logmel": LogMelConfig(),
    "efficientat": LogMelConfig.efficientat(),
    "htk": LogMelConfig(
        kind="htk",
        sample_rate=16000,
        n_fft=512,
        win_length=400,
        hop_length=160,
        n_mels=64,
        f_min=125.0,
        f_max=7500.0,
        power=1.0,
    ),
}


@pytest.mark.parametrize("kind", sorted(CONFIGS))
def test_same_log_mel_as_the_dense_one(kind: str) -> None:
    mel = build_logmel(CONFIGS[kind])
    banded = BandedLogMel(mel)
    gen = torch.Generator().manual_seed(0)
    audio = torch.cat(
        [0.3 * torch.randn(1, 24000, generator=gen), 1e-4 * torch.randn(1, 24000, generator=gen)]
    )
    with torch.inference_mode():
        want, got = mel(audio), banded(audio)
        traced = torch.jit.trace(banded, audio[:1], check_trace=False)(audio)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=0, atol=1e-4)  # log values: float summation order only
    torch.testing.assert_close(traced, got, rtol=0, atol=1e-6)  # the trace runs at another batch too


def test_bands_hold_every_filter_and_skip_most_zeros() -> None:
    banks = build_logmel(LogMelConfig()).banks  # (128, 513)
    spans = bands(banks, 16)
    assert len(spans) == 8
    for g, (a, b) in enumerate(spans):
        rows = banks[16 * g : 16 * (g + 1)]
        assert rows[:, :a].abs().sum() == 0 and rows[:, b:].abs().sum() == 0
    work = sum(16 * (b - a) for a, b in spans) / banks.numel()
    assert work < 0.2  # 13 % of the dense product for the S-SONDO front-end


def test_refuses_what_is_not_a_log_mel() -> None:
    with pytest.raises(TypeError, match=r"BandedLogMel wraps a LogMel, got Identity"):
        BandedLogMel(torch.nn.Identity())
