"""Augmentations that keep the cached teacher targets valid: mixup (the loss, not the target,
is mixed: see ``losses.mixup_loss``) and SpecAugment masking. Both run on the device batch."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn


def mixup(
    x: Tensor, alpha: float = 0.3, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """Mix each sample with a random partner: x'_i = lam_i x_i + (1 - lam_i) x_perm[i].

    x: (B, ...) audio (B, S) or mel (B, 1, F, T) -> (mixed like x, perm (B,) long, lam (B,)).
    lam_i ~ Beta(alpha, alpha), then lam_i = max(lam_i, 1 - lam_i) so each mixed sample stays
    closest to its own target. ``generator`` (CPU) makes the draw reproducible.
    """
    if alpha <= 0:
        raise ValueError(f"mixup alpha must be > 0, got {alpha}")
    b = x.shape[0]
    # numpy has a Beta sampler that takes a seed; the seed comes from torch's RNG (global or
    # ``generator``), so torch.manual_seed makes the whole draw reproducible.
    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    lam = torch.from_numpy(np.random.default_rng(seed).beta(alpha, alpha, size=b)).float()
    lam = torch.maximum(lam, 1.0 - lam)
    perm = torch.randperm(b, generator=generator)
    lam, perm = lam.to(x.device), perm.to(x.device)
    shape = (b,) + (1,) * (x.ndim - 1)
    w = lam.to(x.dtype).reshape(shape)
    return w * x + (1 - w) * x[perm], perm, lam


def mixup_label_loss(logits: Tensor, labels: Tensor, perm: Tensor, lam: Tensor) -> Tensor:
    """Multi-label BCE of predictions on mixed inputs, lam-weighted against both label sets.

    logits, labels: (B, C) (labels multi-hot, float); perm, lam: (B,) -> scalar.
    """
    y = labels.float()
    first = F.binary_cross_entropy_with_logits(logits.float(), y, reduction="none").mean(dim=1)
    second = F.binary_cross_entropy_with_logits(logits.float(), y[perm], reduction="none").mean(dim=1)
    lam = lam.float()
    return (lam * first + (1 - lam) * second).mean()


class SpecAugment(nn.Module):
    """Time and frequency masking of a mel batch (B, 1, F, T), independently per sample, in
    training mode only. Each of ``n_freq_masks`` masks spans [0, freq_mask) bands, each of
    ``n_time_masks`` spans [0, time_mask) frames; masked cells are set to ``mask_value``."""

    def __init__(
        self,
        freq_mask: int = 48,
        time_mask: int = 192,
        n_freq_masks: int = 1,
        n_time_masks: int = 1,
        mask_value: float = 0.0,
    ) -> None:
        super().__init__()
        self.freq_mask, self.time_mask = freq_mask, time_mask
        self.n_freq_masks, self.n_time_masks = n_freq_masks, n_time_masks
        self.mask_value = mask_value

    @staticmethod
    def _masks(b: int, size: int, max_width: int, n: int, device: torch.device) -> Tensor:
        """(B, size) bool: the union of ``n`` random spans per sample."""
        pos = torch.arange(size, device=device)
        mask = torch.zeros(b, size, dtype=torch.bool, device=device)
        for _ in range(n):
            width = (torch.rand(b, device=device) * min(max_width, size)).long()  # [0, max_width)
            start = (torch.rand(b, device=device) * (size - width + 1)).long()  # span fits
            mask |= (pos >= start[:, None]) & (pos < (start + width)[:, None])
        return mask

    def forward(self, mel: Tensor) -> Tensor:  # (B, 1, F, T) -> same
        if not self.training:
            return mel
        b, _, f, t = mel.shape
        fm = self._masks(b, f, self.freq_mask, self.n_freq_masks, mel.device)[:, None, :, None]
        tm = self._masks(b, t, self.time_mask, self.n_time_masks, mel.device)[:, None, None, :]
        return mel.masked_fill(fm | tm, self.mask_value)
