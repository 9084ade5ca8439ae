"""The one log-mel front-end, for teachers and students: audio (B, S) -> normalised log-mel image
(B, 1, n_mels, frames) (what a student's first convolution and a ViT's patch embedding take),
computed in fp32 on the device the audio is on.

    [pre-emphasis] -> STFT (window, centring) -> |X|^power -> mel banks -> log(x + log_offset)
    -> (x - norm_mean) / norm_std

Three kinds of mel banks and window, chosen by ``LogMelConfig.kind`` from ``FRONTENDS``:
- ``logmel``: periodic Hann window, Slaney-scale, Slaney-normalised banks (torchaudio's, which is
  what MATPAC's official code uses). The S-SONDO KD front-end (the defaults: 32 kHz, n_fft = win 1024,
  hop 512, 128 mel, 50-16000 Hz, offset 1e-3, no centring) and the MATPAC / M2D teacher front-ends
  (teachers/frontends.py) are settings of it.
- ``efficientat``: EfficientAT's ``AugmentMelSTFT`` in eval mode (pre-emphasis 0.97, symmetric Hann
  800 in n_fft 1024, hop 320, centred, Kaldi banks 0-15000 Hz, log(x + 1e-5), then (x + 4.5) / 5):
  what EfficientAT's pretrained weights expect. ``LogMelConfig.efficientat()``.
- ``htk``: periodic Hann window, HTK-scale triangles without normalisation: YAMNet's front-end
  (magnitude, power 1; teachers/yamnet.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import torchaudio
from torch import Tensor, nn

from ssondo_cache.registry import Registry
from ssondo_cache.typed_config import from_dict, to_dict

FRONTENDS: Registry[nn.Module] = Registry("front-end")


@dataclass(frozen=True)
class LogMelConfig:
    """Front-end settings (defaults: the S-SONDO paper's KD log-mel).

    kind: ``logmel`` or ``efficientat`` (see the module docstring).
    center: frames centred on their sample, with reflection padding of n_fft // 2.
    power: the spectrum's exponent, 2 = power spectrum, 1 = magnitude (YAMNet).
    preemphasis: coefficient c of y[n] = x[n+1] - c x[n] (0 = none; efficientat uses 0.97).
    norm_mean / norm_std: the log-mel is returned as (x - norm_mean) / norm_std.
    """

    kind: str = "logmel"
    sample_rate: int = 32000
    n_fft: int = 1024
    win_length: int = 1024
    hop_length: int = 512
    n_mels: int = 128
    f_min: float = 50.0
    f_max: float = 16000.0
    log_offset: float = 1e-3
    center: bool = False
    power: float = 2.0
    preemphasis: float = 0.0
    norm_mean: float = 0.0
    norm_std: float = 1.0

    @classmethod
    def efficientat(cls, **overrides: Any) -> LogMelConfig:
        """EfficientAT's front-end (``AugmentMelSTFT`` eval mode, fmax None -> sr/2 - 1000)."""
        base = dict(
            kind="efficientat",
            sample_rate=32000,
            n_fft=1024,
            win_length=800,
            hop_length=320,
            n_mels=128,
            f_min=0.0,
            f_max=15000.0,
            log_offset=1e-5,
            center=True,
            preemphasis=0.97,
            norm_mean=-4.5,
            norm_std=5.0,
        )
        return from_dict(cls, {**base, **overrides})

    def __post_init__(self) -> None:
        if self.win_length > self.n_fft:
            raise ValueError(f"win_length {self.win_length} > n_fft {self.n_fft}")
        if self.power <= 0:
            raise ValueError(f"power must be > 0, got {self.power}")
        if not 0 <= self.f_min < self.f_max <= self.sample_rate / 2:
            raise ValueError(
                f"need 0 <= f_min < f_max <= sample_rate/2, got {self.f_min}, {self.f_max}, "
                f"{self.sample_rate}"
            )

    def n_frames(self, n_samples: int) -> int:
        """Frames produced for ``n_samples`` of audio."""
        n = n_samples - (1 if self.preemphasis else 0)
        return 1 + n // self.hop_length if self.center else 1 + (n - self.n_fft) // self.hop_length


class LogMel(nn.Module):
    """audio (B, S) -> normalised log-mel image (B, 1, n_mels, frames); a kind gives its window and banks.
    ``normalize(log_mel(audio))`` is the same without the channel axis."""

    window_name = ""
    banks_name = ""

    def __init__(self, cfg: LogMelConfig, window: Tensor, banks: Tensor) -> None:
        super().__init__()
        self.cfg = cfg
        # derived from the config, never saved: a checkpoint carries the config instead
        self.register_buffer("window", window, persistent=False)  # (win_length,)
        self.register_buffer("banks", banks, persistent=False)  # (n_mels, n_fft // 2 + 1)

    def log_mel(self, audio: Tensor) -> Tensor:  # (B, S) -> (B, n_mels, frames), before normalising
        with torch.autocast(audio.device.type, enabled=False):  # the spectrum stays fp32 under bf16 autocast
            return torch.log(self.project(self.power_spectrum(audio)) + self.cfg.log_offset)

    def power_spectrum(self, audio: Tensor) -> Tensor:  # (B, S) -> (B, n_fft // 2 + 1, frames)
        c = self.cfg
        x = audio.float()
        if c.preemphasis:
            x = x[:, 1:] - c.preemphasis * x[:, :-1]
        spec = torch.stft(
            x,
            c.n_fft,
            hop_length=c.hop_length,
            win_length=c.win_length,
            window=self.window,
            center=c.center,
            pad_mode="reflect",
            return_complex=True,
        )  # (B, n_fft//2+1, frames)
        if c.power == 2:  # |X|^2 exactly, without a square root
            return spec.real.square() + spec.imag.square()
        return spec.abs() if c.power == 1 else spec.abs().pow(c.power)

    def project(self, power: Tensor) -> Tensor:  # (B, n_bins, frames) -> (B, n_mels, frames)
        return torch.matmul(self.banks, power)

    def normalize(self, log_mel: Tensor) -> Tensor:
        return (log_mel - self.cfg.norm_mean) / self.cfg.norm_std

    def forward(self, audio: Tensor) -> Tensor:  # (B, S) -> (B, 1, n_mels, frames)
        return self.normalize(self.log_mel(audio)).unsqueeze(1)

    def n_frames(self, n_samples: int) -> int:
        return self.cfg.n_frames(n_samples)

    def describe(self) -> dict[str, Any]:
        """The settings and what they mean, JSON-able (goes into cache attrs)."""
        return {
            **to_dict(self.cfg),
            "window": self.window_name,
            "mel": self.banks_name,
            "pad_mode": "reflect" if self.cfg.center else None,
        }


@FRONTENDS.register("logmel")
class SlaneyLogMel(LogMel):
    window_name = "hann_periodic"
    banks_name = "slaney scale, slaney norm"

    def __init__(self, cfg: LogMelConfig) -> None:
        with torch.device("cpu"):  # constants: real values even when the module is built on "meta"
            banks = torchaudio.functional.melscale_fbanks(
                cfg.n_fft // 2 + 1,
                cfg.f_min,
                cfg.f_max,
                cfg.n_mels,
                cfg.sample_rate,
                norm="slaney",
                mel_scale="slaney",
            )  # (n_fft//2+1, n_mels)
            window = torch.hann_window(cfg.win_length, periodic=True)
        super().__init__(cfg, window, banks.T.contiguous())


@FRONTENDS.register("efficientat")
class EfficientATMel(LogMel):
    window_name = "hann_symmetric"
    banks_name = "kaldi mel banks (EfficientAT AugmentMelSTFT, eval)"

    def __init__(self, cfg: LogMelConfig) -> None:
        with torch.device("cpu"):
            banks, _ = torchaudio.compliance.kaldi.get_mel_banks(
                cfg.n_mels, cfg.n_fft, float(cfg.sample_rate), cfg.f_min, cfg.f_max, 100.0, -500.0, 1.0
            )
            banks = F.pad(banks, (0, 1))  # Kaldi banks omit the Nyquist bin
            window = torch.hann_window(cfg.win_length, periodic=False)
        super().__init__(cfg, window, banks)


def htk_banks(n_fft: int, sample_rate: int, n_mels: int, f_min: float, f_max: float) -> np.ndarray:
    """(n_mels, n_fft//2 + 1) triangles on the linear-frequency axis, corners evenly spaced in HTK mel,
    not normalised. In float64: torchaudio's float32 banks differ by ~6e-6, enough to move YAMNet's
    uint8-quantised input (and its embeddings by ~2 %)."""

    def hz_to_mel(f: np.ndarray) -> np.ndarray:
        return 2595.0 * np.log10(1.0 + np.asarray(f, dtype=np.float64) / 700.0)

    freqs = np.linspace(0.0, sample_rate / 2, n_fft // 2 + 1)  # (n_freqs,)
    corners = 700.0 * (10.0 ** (np.linspace(hz_to_mel(f_min), hz_to_mel(f_max), n_mels + 2) / 2595.0) - 1.0)
    lo, mid, hi = corners[:-2, None], corners[1:-1, None], corners[2:, None]  # (n_mels, 1) each
    return np.maximum(0.0, np.minimum((freqs - lo) / (mid - lo), (hi - freqs) / (hi - mid)))


@FRONTENDS.register("htk")
class HtkLogMel(LogMel):
    window_name = "hann_periodic"
    banks_name = "htk scale, no norm"

    def __init__(self, cfg: LogMelConfig) -> None:
        banks = htk_banks(cfg.n_fft, cfg.sample_rate, cfg.n_mels, cfg.f_min, cfg.f_max)
        with torch.device("cpu"):
            window = torch.hann_window(cfg.win_length, periodic=True)
        super().__init__(cfg, window, torch.from_numpy(banks.astype(np.float32)))


def build_logmel(cfg: LogMelConfig) -> LogMel:
    """The front-end of kind ``cfg.kind``."""
    return FRONTENDS.build(cfg.kind, cfg=cfg)
