"""Log-mel front-ends of the ViT teachers. MATPAC++ and M2D share the constants (16 kHz, n_fft 400,
hop 160, 80 Slaney mel bands 50-8000 Hz, power spectrogram, log(x + float32 eps)) and differ in
framing (MATPAC: no centring, torchaudio; M2D: centred with reflection padding, nnAudio) and in the
normalisation statistics. Computed on the device the audio is on, always in fp32."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

EPS32 = float(np.finfo(np.float32).eps)  # both official codes use log(x + torch.finfo().eps)


def slaney_hz_to_mel(f: np.ndarray) -> np.ndarray:
    """Slaney's Auditory Toolbox mel scale: linear below 1 kHz, logarithmic above."""
    f = np.asarray(f, dtype=np.float64)
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, np.log(6.4) / 27.0
    return np.where(
        f >= min_log_hz, min_log_mel + np.log(np.maximum(f, 1e-10) / min_log_hz) / logstep, f / f_sp
    )


def slaney_mel_to_hz(m: np.ndarray) -> np.ndarray:
    m = np.asarray(m, dtype=np.float64)
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, np.log(6.4) / 27.0
    return np.where(m >= min_log_mel, min_log_hz * np.exp(logstep * (m - min_log_mel)), f_sp * m)


def slaney_mel_filterbank(
    n_fft: int, sample_rate: int, n_mels: int, f_min: float, f_max: float
) -> np.ndarray:
    """(n_fft//2 + 1, n_mels) triangles in Hz between Slaney-mel-spaced corners, each divided by
    half its bandwidth (area normalisation, "slaney"). Computed in float64."""
    freqs = np.linspace(0.0, sample_rate / 2, n_fft // 2 + 1)
    corners = slaney_mel_to_hz(np.linspace(slaney_hz_to_mel(f_min), slaney_hz_to_mel(f_max), n_mels + 2))
    lo, mid, hi = corners[:-2], corners[1:-1], corners[2:]
    rising = (freqs[:, None] - lo) / (mid - lo)
    falling = (hi - freqs[:, None]) / (hi - mid)
    tri = np.maximum(0.0, np.minimum(rising, falling))
    return tri * (2.0 / (hi - lo))


@dataclass(frozen=True)
class LogMelConfig:
    sample_rate: int = 16000
    n_fft: int = 400
    win_length: int = 400
    hop_length: int = 160
    n_mels: int = 80
    f_min: float = 50.0
    f_max: float = 8000.0
    center: bool = False  # MATPAC: False; M2D: True (reflection padding of n_fft // 2)
    log_offset: float = EPS32
    mean: float = -7.056  # x_norm = (log_mel - mean) / std
    std: float = 4.193


MATPAC_FRONTEND = LogMelConfig()
M2D_FRONTEND = LogMelConfig(center=True, mean=-7.1, std=4.2)
# M2D's 32 kHz models ("...p32k" folders): same mel count and hop in time, twice the samples
M2D_FRONTEND_32K = LogMelConfig(
    sample_rate=32000,
    n_fft=800,
    win_length=800,
    hop_length=320,
    f_max=16000.0,
    center=True,
    mean=-7.1,
    std=4.2,
)


class LogMelFrontEnd(nn.Module):
    """audio (B, S) -> normalised log-mel (B, n_mels, frames).

    frames = 1 + (S - n_fft) // hop without centring, 1 + S // hop with it."""

    def __init__(self, cfg: LogMelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.register_buffer("window", torch.hann_window(cfg.win_length, periodic=True), persistent=False)
        fb = slaney_mel_filterbank(cfg.n_fft, cfg.sample_rate, cfg.n_mels, cfg.f_min, cfg.f_max)
        self.register_buffer("mel_fb", torch.from_numpy(fb).float(), persistent=False)  # (n_fft//2+1, n_mels)

    def log_mel(
        self, audio: torch.Tensor
    ) -> torch.Tensor:  # (B, S) -> (B, n_mels, frames), before normalising
        c = self.cfg
        with torch.autocast(audio.device.type, enabled=False):  # the spectrum stays fp32 under bf16 autocast
            spec = torch.stft(
                audio.float(),
                c.n_fft,
                hop_length=c.hop_length,
                win_length=c.win_length,
                window=self.window,
                center=c.center,
                pad_mode="reflect",
                return_complex=True,
            )  # (B, n_fft//2+1, frames)
            power = spec.real.square() + spec.imag.square()
            mel = torch.matmul(self.mel_fb.T, power)  # (B, n_mels, frames)
            return torch.log(mel + c.log_offset)

    def normalize(self, log_mel: torch.Tensor) -> torch.Tensor:
        return (log_mel - self.cfg.mean) / self.cfg.std

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        return self.normalize(self.log_mel(audio))

    def n_frames(self, n_samples: int) -> int:
        c = self.cfg
        return 1 + n_samples // c.hop_length if c.center else 1 + (n_samples - c.n_fft) // c.hop_length

    def describe(self) -> dict[str, Any]:
        return {
            **asdict(self.cfg),
            "window": "hann_periodic",
            "mel": "slaney scale, slaney norm",
            "power": 2.0,
            "pad_mode": "reflect" if self.cfg.center else None,
        }
