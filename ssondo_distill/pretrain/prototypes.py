"""Unsupervised classification onto K prototypes (MATPAC's second pretext task, after DINO): a
projection head maps predicted and target latents to K logits; the student's tempered softmax is
matched (cross-entropy) to the teacher's sharpened, centred softmax. Also the collapse statistics."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

from ssondo_distill.pretrain.config import PrototypeConfig


class PrototypeHead(nn.Module):
    """MLP (GELU) to a bottleneck, L2-normalise, weight-normalised linear onto K prototypes
    (its norm parameter starts at 1, trainable, as the official head)."""

    def __init__(self, in_dim: int, cfg: PrototypeConfig) -> None:
        super().__init__()
        dims = [in_dim] + [cfg.hidden_dim] * (cfg.layers - 1) + [cfg.bottleneck_dim]
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(dims[:-1], dims[1:], strict=True)):
            layers += [nn.Linear(a, b)] + ([nn.GELU()] if i < len(dims) - 2 else [])
        self.mlp = nn.Sequential(*layers)
        for m in self.mlp:
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        self.last_layer = weight_norm(nn.Linear(cfg.bottleneck_dim, cfg.prototypes, bias=False))
        with torch.no_grad():
            self.last_layer.parametrizations.weight.original0.fill_(1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., D) -> (..., K) logits
        x = F.normalize(self.mlp(x), dim=-1, eps=1e-6 if x.dtype != torch.float32 else 1e-12)
        return self.last_layer(x)


def teacher_distribution(logits: torch.Tensor, center: torch.Tensor, temperature: float) -> torch.Tensor:
    """softmax((logits - center) / temperature) over the last dim: centred, then sharpened."""
    return torch.softmax((logits.float() - center) / temperature, dim=-1)


def classification_loss(
    student_logits: torch.Tensor, teacher_probs: torch.Tensor, student_temp: float
) -> torch.Tensor:
    """Mean over tokens of -sum_k q_k log softmax(s / student_temp)_k; inputs (..., K)."""
    log_p = F.log_softmax(student_logits.float() / student_temp, dim=-1)
    return -(teacher_probs * log_p).sum(-1).mean()


@torch.no_grad()
def collapse_stats(teacher_probs: torch.Tensor, target_latents: torch.Tensor) -> dict[str, torch.Tensor]:
    """teacher_probs (..., K), target_latents (..., D), over this rank's tokens:
    usage_entropy: H(mean distribution) / log K (0: every token on one prototype);
    target_entropy: mean H(distribution) / log K (1: uniform, nothing learnt);
    latent_std: per-dimension std of the L2-normalised latents, mean over dims, x sqrt(D)
    (about 1 for isotropic latents, 0 when every latent is the same)."""
    q = teacher_probs.reshape(-1, teacher_probs.shape[-1]).float()
    log_k = math.log(q.shape[-1])
    usage = q.mean(0)
    z = F.normalize(target_latents.reshape(-1, target_latents.shape[-1]).float(), dim=-1)
    return {
        "usage_entropy": -(usage * torch.log(usage + 1e-12)).sum() / log_k,
        "target_entropy": -(q * torch.log(q + 1e-12)).sum(-1).mean() / log_k,
        "latent_std": z.std(0).mean() * math.sqrt(z.shape[-1]),
    }
