"""Student front-ends: audio (B, S) -> log-mel (B, 1, n_mels, T), computed ON THE DEVICE after the
batch is moved there (mel on CPU workers costs ~40 ms per 10-s clip per core).

Two kinds, chosen by ``LogMelConfig.kind`` from ``FRONTENDS``:
- ``logmel`` (default): the S-SONDO KD front-end, a plain torchaudio-convention log-mel:
  periodic Hann window, power spectrum, Slaney-scale / Slaney-normalised mel banks,
  ``log(mel + log_offset)``. Paper settings: 32 kHz, n_fft = win 1024, hop 512, 128 mel,
  50-16000 Hz, offset 1e-3, center=False.
- ``efficientat``: EfficientAT's own ``AugmentMelSTFT`` in eval mode (pre-emphasis 0.97,
  symmetric Hann window 800 in n_fft 1024, hop 320, center=True, Kaldi mel banks 0-15000 Hz,
  ``log(mel + 1e-5)``, then ``(x + 4.5) / 5``): what EfficientAT's pretrained weights expect.
  Use ``LogMelConfig.efficientat()``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

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

    kind: ``logmel`` or ``efficientat`` (see module docstring).
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
        if not 0 <= self.f_min < self.f_max <= self.sample_rate / 2:
            raise ValueError(
                f"need 0 <= f_min < f_max <= sample_rate/2, got {self.f_min}, {self.f_max}, "
                f"{self.sample_rate}"
            )


class _MelBase(nn.Module):
    """Shared STFT -> power -> mel -> log -> normalise; subclasses choose window and banks."""

    def __init__(self, cfg: LogMelConfig, window: Tensor, banks: Tensor) -> None:
        super().__init__()
        self.cfg = cfg
        # derived from the config, never saved: a checkpoint carries the config instead
        self.register_buffer("window", window, persistent=False)  # (win_length,)
        self.register_buffer("banks", banks, persistent=False)  # (n_mels, n_fft // 2 + 1)

    def forward(self, audio: Tensor) -> Tensor:  # (B, S) -> (B, 1, n_mels, T)
        c = self.cfg
        x = audio.float()
        if c.preemphasis:
            x = x[:, 1:] - c.preemphasis * x[:, :-1]
        with torch.autocast(device_type=x.device.type, enabled=False):  # mel in fp32 always
            spec = torch.stft(
                x,
                c.n_fft,
                c.hop_length,
                c.win_length,
                self.window,
                center=c.center,
                pad_mode="reflect",
                return_complex=True,
            )
            power = spec.real.square() + spec.imag.square()  # (B, n_fft//2+1, T)
            mel = torch.matmul(self.banks, power)  # (B, n_mels, T)
            logmel = torch.log(mel + c.log_offset)
        return ((logmel - c.norm_mean) / c.norm_std).unsqueeze(1)


@FRONTENDS.register("logmel")
class LogMel(_MelBase):
    def __init__(self, cfg: LogMelConfig) -> None:
        banks = torchaudio.functional.melscale_fbanks(
            cfg.n_fft // 2 + 1,
            cfg.f_min,
            cfg.f_max,
            cfg.n_mels,
            cfg.sample_rate,
            norm="slaney",
            mel_scale="slaney",
        )
        super().__init__(cfg, torch.hann_window(cfg.win_length, periodic=True), banks.T.contiguous())


@FRONTENDS.register("efficientat")
class EfficientATMel(_MelBase):
    def __init__(self, cfg: LogMelConfig) -> None:
        banks, _ = torchaudio.compliance.kaldi.get_mel_banks(
            cfg.n_mels, cfg.n_fft, float(cfg.sample_rate), cfg.f_min, cfg.f_max, 100.0, -500.0, 1.0
        )
        banks = F.pad(banks, (0, 1))  # Kaldi banks omit the Nyquist bin
        super().__init__(cfg, torch.hann_window(cfg.win_length, periodic=False), banks)


class StudentFrontEnd(nn.Module):
    """audio (B, S) at ``sample_rate`` -> (B, 1, n_mels, T); ``StudentFrontEnd(**LogMelConfig fields)``.

    Move it to the device with the student and call it on the device-side batch.
    """

    def __init__(self, **cfg: Any) -> None:
        super().__init__()
        self.cfg = from_dict(LogMelConfig, cfg)
        self.mel = FRONTENDS.build(self.cfg.kind, cfg=self.cfg)
        self.sample_rate = self.cfg.sample_rate
        self.n_mels = self.cfg.n_mels

    @classmethod
    def from_config(cls, cfg: LogMelConfig) -> StudentFrontEnd:
        return cls(**to_dict(cfg))

    def config(self) -> dict[str, Any]:
        return to_dict(self.cfg)

    def n_frames(self, n_samples: int) -> int:
        """Frames produced for ``n_samples`` of audio."""
        c = self.cfg
        n = n_samples - (1 if c.preemphasis else 0)
        return n // c.hop_length + 1 if c.center else 1 + (n - c.n_fft) // c.hop_length

    def forward(self, audio: Tensor) -> Tensor:  # (B, S) -> (B, 1, n_mels, T)
        if audio.ndim != 2:
            raise ValueError(f"front-end expects audio (B, samples), got {tuple(audio.shape)}")
        need = self.cfg.n_fft if not self.cfg.center else self.cfg.n_fft // 2 + 1
        if audio.shape[1] < need:
            raise ValueError(f"audio of {audio.shape[1]} samples is shorter than one frame ({need})")
        return self.mel(audio)


__all__ = ["FRONTENDS", "LogMelConfig", "StudentFrontEnd"]
