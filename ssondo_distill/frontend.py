"""Student front-ends: audio (B, S) -> log-mel (B, 1, n_mels, T), computed ON THE DEVICE after the
batch is moved there (mel on CPU workers costs ~40 ms per 10-s clip per core).

The log-mel itself, its config and its kinds (``logmel``: the S-SONDO KD front-end, the default;
``efficientat``: what EfficientAT's pretrained weights expect) are ssondo_cache.logmel's, shared
with the teachers; this module adds what a student needs around it: the channel axis, input checks,
and a config that travels in checkpoints. ``.mel`` is the bare log-mel (no checks: traceable).
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from ssondo_cache.logmel import FRONTENDS, LogMelConfig, build_logmel
from ssondo_cache.typed_config import from_dict, to_dict


class StudentFrontEnd(nn.Module):
    """audio (B, S) at ``sample_rate`` -> (B, 1, n_mels, T); ``StudentFrontEnd(**LogMelConfig fields)``.

    Move it to the device with the student and call it on the device-side batch.
    """

    def __init__(self, **cfg: Any) -> None:
        super().__init__()
        self.cfg = from_dict(LogMelConfig, cfg)
        self.mel = build_logmel(self.cfg)
        self.sample_rate = self.cfg.sample_rate
        self.n_mels = self.cfg.n_mels

    @classmethod
    def from_config(cls, cfg: LogMelConfig) -> StudentFrontEnd:
        return cls(**to_dict(cfg))

    def config(self) -> dict[str, Any]:
        return to_dict(self.cfg)

    def n_frames(self, n_samples: int) -> int:
        """Frames produced for ``n_samples`` of audio."""
        return self.cfg.n_frames(n_samples)

    def forward(self, audio: Tensor) -> Tensor:  # (B, S) -> (B, 1, n_mels, T)
        if audio.ndim != 2:
            raise ValueError(f"front-end expects audio (B, samples), got {tuple(audio.shape)}")
        need = self.cfg.n_fft if not self.cfg.center else self.cfg.n_fft // 2 + 1
        if audio.shape[1] < need:
            raise ValueError(f"audio of {audio.shape[1]} samples is shorter than one frame ({need})")
        return self.mel(audio)


__all__ = ["FRONTENDS", "LogMelConfig", "StudentFrontEnd"]
