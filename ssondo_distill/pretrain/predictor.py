"""The predictor of masked latents (the official "decoder"): the online encoder's visible tokens,
projected to the predictor width, mask tokens in the masked positions, fixed sin-cos positions,
transformer blocks (the ViT's own ``Block``), then one linear head (MATPAC) or several (MATPAC++'s
multiple choice) back to the encoder width, at the masked positions only."""

from __future__ import annotations

import torch
from torch import nn

from ssondo_cache.teachers.vit import Block, ViTConfig
from ssondo_distill.pretrain.config import PredictorConfig
from ssondo_distill.pretrain.masking import Mask, gather_tokens, sincos_2d


class Predictor(nn.Module):
    def __init__(self, vit: ViTConfig, cfg: PredictorConfig, heads: int = 1) -> None:
        super().__init__()
        d = cfg.embed_dim
        self.embed = nn.Linear(vit.embed_dim, d)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, d))
        self.register_buffer("pos_embed", sincos_2d(d, vit.grid), persistent=False)  # (1, 1 + N, d)
        self.blocks = nn.ModuleList(Block(d, cfg.num_heads, cfg.mlp_ratio) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(d, eps=1e-6)
        self.heads = nn.ModuleList(nn.Linear(d, vit.embed_dim) for _ in range(heads))

    def forward(self, z_visible: torch.Tensor, mask: Mask) -> torch.Tensor:
        """z_visible (B, 1 + n_keep, D) with CLS first -> predictions (B, n_mask, H, D) of the
        masked tokens' latents, in ``mask.masked`` order, one per head."""
        x = self.embed(z_visible)  # (B, 1 + n_keep, d)
        b, n_total = mask.restore.shape
        fill = self.mask_token.expand(b, n_total - mask.n_keep, -1)
        tokens = gather_tokens(torch.cat([x[:, 1:], fill], dim=1), mask.restore)  # (B, N, d) in place
        x = torch.cat([x[:, :1], tokens], dim=1) + self.pos_embed
        for blk in self.blocks:
            x = blk(x)
        y = gather_tokens(self.norm(x)[:, 1:], mask.masked)  # (B, n_mask, d)
        return torch.stack([head(y) for head in self.heads], dim=2)  # (B, n_mask, H, D)
