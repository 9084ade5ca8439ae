"""Random unstructured masking of patch tokens and the fixed 2-D sin-cos positional embeddings.

Token order is the ViT's (ssondo_cache/teachers/vit.py): frequency-major, token = f * grid_t + t."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Mask:
    keep: torch.Tensor  # (B, n_keep) indices of the visible tokens (the online encoder's input)
    masked: torch.Tensor  # (B, n_mask) indices of the masked tokens (the target encoder's input)
    restore: torch.Tensor  # (B, N): [visible ; masked] order -> original token order

    @property
    def n_keep(self) -> int:
        return self.keep.shape[1]


def random_mask(batch: int, n_tokens: int, ratio: float, generator: torch.Generator) -> Mask:
    """Each sample keeps int(N (1 - ratio)) tokens chosen uniformly (the official
    ``random_unstructured_mask``); the rest are masked. Drawn on the CPU from ``generator``."""
    n_keep = int(n_tokens * (1 - ratio))
    if not 1 <= n_keep < n_tokens:
        raise ValueError(f"mask ratio {ratio} leaves {n_keep} of {n_tokens} tokens visible")
    shuffle = torch.argsort(torch.rand(batch, n_tokens, generator=generator), dim=1)  # (B, N)
    return Mask(shuffle[:, :n_keep], shuffle[:, n_keep:], torch.argsort(shuffle, dim=1))


def gather_tokens(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """x (B, N, D), index (B, n) -> (B, n, D)."""
    return torch.gather(x, 1, index.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


def sincos_1d(dim: int, pos: torch.Tensor) -> torch.Tensor:  # (M,) -> (M, dim): [sin | cos]
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2))
    angle = pos.to(torch.float64)[:, None] * omega[None, :]
    return torch.cat([torch.sin(angle), torch.cos(angle)], dim=1)


def sincos_2d(dim: int, grid: tuple[int, int], cls_token: bool = True) -> torch.Tensor:
    """(1, [1 +] F*T, dim) float32: half the channels encode the frequency band, half the time step
    (MAE / M2D / MATPAC's fixed embedding); the CLS position is zeros."""
    n_f, n_t = grid
    f, t = torch.meshgrid(torch.arange(n_f), torch.arange(n_t), indexing="ij")  # (F, T) each
    emb = torch.cat([sincos_1d(dim // 2, f.reshape(-1)), sincos_1d(dim // 2, t.reshape(-1))], dim=1)
    if cls_token:
        emb = torch.cat([torch.zeros(1, dim, dtype=emb.dtype), emb], dim=0)
    return emb.float().unsqueeze(0)
