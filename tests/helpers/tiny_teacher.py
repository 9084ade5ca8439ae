"""A tiny deterministic teacher for tests that need a teacher but no real model.

Use it as ``build_teacher("py:tests.helpers.tiny_teacher:make", dim=8)``: frames of ``hop_seconds``,
log power spectrum of each frame, a fixed random projection (seeded) to ``dim`` values, tanh.
Different audio gives different embeddings; the same audio gives the same ones."""

from __future__ import annotations

import hashlib

import torch
from torch import nn

from ssondo_cache.teachers.base import Teacher, make_teacher_id, state_dict_sha256


class TinyTeacher(Teacher):
    def __init__(
        self,
        dim: int = 16,
        sample_rate: int = 16000,
        hop_seconds: float = 0.1,
        win_seconds: float = 0.1,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.name = "tiny"
        self.sample_rate = int(sample_rate)
        self.embed_dim = int(dim)
        self.hop = max(1, round(hop_seconds * sample_rate))
        self.win = max(2, round(win_seconds * sample_rate))
        self.chunk_seconds = self.win / self.sample_rate
        n_bins = self.win // 2 + 1
        g = torch.Generator().manual_seed(seed)
        self.register_buffer("window", torch.hann_window(self.win, periodic=True))
        self.proj = nn.Linear(n_bins, dim)
        with torch.no_grad():
            self.proj.weight.copy_(torch.randn(dim, n_bins, generator=g) / n_bins**0.5)
            self.proj.bias.copy_(torch.randn(dim, generator=g) * 0.1)
        # the weights fix everything but the hop, so the id hashes both
        ident = hashlib.sha256(f"{state_dict_sha256(self)}|hop={self.hop}".encode()).hexdigest()
        self.teacher_id = make_teacher_id(self.name, ident)

    def forward(self, audio: torch.Tensor) -> torch.Tensor:  # (B, S) -> (B, T, D)
        if audio.shape[-1] < self.win:  # short clip: one zero-padded frame
            audio = nn.functional.pad(audio, (0, self.win - audio.shape[-1]))
        frames = audio.unfold(-1, self.win, self.hop) * self.window  # (B, T, win)
        power = torch.fft.rfft(frames, dim=-1).abs().pow(2)  # (B, T, win//2+1)
        return torch.tanh(self.proj(torch.log(power + 1e-6)) * 0.1)  # (B, T, D)

    def describe(self) -> dict:
        return {**super().describe(), "hop": self.hop, "win": self.win}


def make(**opts) -> TinyTeacher:
    """Factory for ``py:tests.helpers.tiny_teacher:make`` (options: dim, sample_rate, hop_seconds, win_seconds, seed)."""
    return TinyTeacher(**opts)
