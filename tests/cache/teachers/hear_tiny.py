"""A minimal HEAR-API module (load_model, get_timestamp_embeddings) for the adapter tests."""

from __future__ import annotations

import torch
from torch import nn

__version__ = "0.0.1"

HOP = 800  # 50 ms at 16 kHz


class _Model(nn.Module):
    sample_rate = 16000
    scene_embedding_size = 6
    timestamp_embedding_size = 6

    def __init__(self, scale: float = 1.0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(3)
        self.proj = nn.Parameter(torch.randn(HOP, 6, generator=g) * scale)


def load_model(model_file_path: str = "", scale: float = 1.0) -> _Model:
    model = _Model(scale)
    if model_file_path:
        model.load_state_dict(torch.load(model_file_path, weights_only=True))
    return model


def get_timestamp_embeddings(audio: torch.Tensor, model: _Model) -> tuple[torch.Tensor, torch.Tensor]:
    frames = audio[:, : audio.shape[1] // HOP * HOP].reshape(audio.shape[0], -1, HOP)  # (B, T, HOP)
    emb = frames @ model.proj  # (B, T, 6)
    t = (torch.arange(emb.shape[1], dtype=torch.float32) + 0.5) * HOP / model.sample_rate * 1000
    return emb, t.expand(audio.shape[0], -1)


def get_scene_embeddings(audio: torch.Tensor, model: _Model) -> torch.Tensor:
    return get_timestamp_embeddings(audio, model)[0].mean(1)
