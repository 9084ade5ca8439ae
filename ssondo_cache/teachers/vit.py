"""The one ViT encoder shared by MATPAC++ and M2D (timm-compatible parameter names), and the chunked
encoding of a long log-mel into per-time-step embeddings.

Tokens are 16x16 patches of a (F=80, T=608) log-mel chunk, flattened frequency-major: token index
= f * grid_t + t. A time step's embedding concatenates its F/16 frequency-band tokens: (f d) order.
Attention uses ``scaled_dot_product_attention`` (flash / memory-efficient kernels on CUDA)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class ViTConfig:
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    patch_size: tuple[int, int] = (16, 16)
    input_size: tuple[int, int] = (80, 608)  # (mel bins, frames) of one chunk

    @property
    def grid(self) -> tuple[int, int]:  # (frequency bands, time steps) per chunk
        return self.input_size[0] // self.patch_size[0], self.input_size[1] // self.patch_size[1]

    @property
    def num_patches(self) -> int:
        return self.grid[0] * self.grid[1]


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embed_dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, N, D) -> (B, N, D)
        b, n, d = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each (B, H, N, D/H)
        x = F.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(D/H)) v
        return self.proj(x.transpose(1, 2).reshape(b, n, d))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))  # exact (erf) GELU, as timm's nn.GELU


class Block(nn.Module):
    """Pre-norm transformer block (timm ``Block`` with qkv_bias, LayerNorm eps 1e-6, no layer scale)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    def __init__(self, patch_size: tuple[int, int], embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(1, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 1, F, T) -> (B, F/16 * T/16, D)
        return self.proj(x).flatten(2).transpose(1, 2)


class ViTEncoder(nn.Module):
    """Parameter names: cls_token, pos_embed, patch_embed.proj.*, blocks.{i}.*, norm.* (timm's)."""

    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.embed_dim
        self.patch_embed = PatchEmbed(cfg.patch_size, d)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.num_patches + 1, d), requires_grad=False)
        self.blocks = nn.ModuleList(Block(d, cfg.num_heads, cfg.mlp_ratio) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(d, eps=1e-6)

    def forward(self, x: torch.Tensor, all_layers: bool = False) -> torch.Tensor:
        """x (B, 1, F, t<=T) one chunk -> (B, L, n_tokens + 1, D): every block's output with the final
        norm applied to the last one (L = depth), or only that last one (L = 1). Token 0 is CLS."""
        x = self.patch_embed(x)  # (B, grid_f * t', D)
        grid_f, grid_t = self.cfg.grid
        pos = self.pos_embed[:, 1:, :]
        if x.shape[1] < pos.shape[1]:  # a shorter last chunk: keep the first t' time positions of each band
            t = x.shape[1] // grid_f
            pos = pos.reshape(1, grid_f, grid_t, -1)[:, :, :t, :].reshape(1, grid_f * t, -1)
        x = x + pos
        cls = (self.cls_token + self.pos_embed[:, :1, :]).expand(x.shape[0], -1, -1)
        x = torch.cat((cls, x), dim=1)  # (B, 1 + N, D)
        outs = []
        for blk in self.blocks:
            x = blk(x)
            if all_layers:
                outs.append(x)
        x = self.norm(x)
        if all_layers:
            outs[-1] = x
            return torch.stack(outs, dim=1)
        return x.unsqueeze(1)


def _tokens_to_steps(tokens: torch.Tensor, grid_f: int) -> torch.Tensor:
    """(B, L, 1 + grid_f * t, D) -> (B, L, t, grid_f * D): drop CLS, concatenate each step's bands."""
    b, n_layers, n, d = tokens.shape
    x = tokens[:, :, 1:, :].reshape(b, n_layers, grid_f, (n - 1) // grid_f, d)  # (B, L, f, t, D)
    return x.permute(0, 1, 3, 2, 4).reshape(b, n_layers, (n - 1) // grid_f, grid_f * d)


def encode_chunks(
    encoder: ViTEncoder, x: torch.Tensor, mode: str = "precise", all_layers: bool = False
) -> torch.Tensor:
    """Normalised log-mel x (B, F, frames) -> (B, L, steps, grid_f * D), in time order.

    precise: zero-pad to a multiple of the patch width, run each chunk of T frames in turn (the last one
    shorter, with truncated positional embeddings); steps = ceil(frames / patch_t).
    fast: zero-pad to a multiple of T and run all chunks as one batch; steps = n_chunks * grid_t
    (the steps past ceil(frames / patch_t) embed padding)."""
    unit = encoder.cfg.input_size[1]
    patch_t = encoder.cfg.patch_size[1]
    grid_f = encoder.cfg.grid[0]
    b, _, frames = x.shape
    n_chunks = -(-frames // unit)
    if mode == "precise":
        x = F.pad(x, (0, -frames % patch_t)).unsqueeze(1)  # (B, 1, F, frames')
        steps = [
            _tokens_to_steps(encoder(x[..., i * unit : (i + 1) * unit], all_layers), grid_f)
            for i in range(n_chunks)
        ]
        return torch.cat(steps, dim=2)
    if mode == "fast":
        x = F.pad(x, (0, n_chunks * unit - frames))  # (B, F, n*T)
        x = x.reshape(b, x.shape[1], n_chunks, unit).permute(0, 2, 1, 3).reshape(b * n_chunks, 1, -1, unit)
        out = _tokens_to_steps(encoder(x, all_layers), grid_f)  # (B*n, L, grid_t, F')
        _, n_layers, grid_t, dim = out.shape
        out = out.reshape(b, n_chunks, n_layers, grid_t, dim).permute(0, 2, 1, 3, 4)
        return out.reshape(b, n_layers, n_chunks * grid_t, dim)
    raise ValueError(f"inference mode must be 'precise' or 'fast', not {mode!r}")
