"""The EMA (mean teacher) update and the linear annealing the official schedules use."""

from __future__ import annotations

import torch
from torch import nn


def annealed(start: float, end: float, step: int, total: int) -> float:
    """Linear from ``start`` at step 0 to ``end`` at ``total`` (and after)."""
    if total <= 0 or step >= total:
        return end
    return start + (end - start) * step / total


@torch.no_grad()
def ema_update(target: nn.Module, online: nn.Module, decay: float) -> None:
    """target <- decay * target + (1 - decay) * online, parameter by parameter (same structure)."""
    t_params, o_params = list(target.parameters()), list(online.parameters())
    if len(t_params) != len(o_params):
        raise ValueError(f"EMA of modules with {len(o_params)} and {len(t_params)} parameters")
    torch._foreach_lerp_(t_params, [p.detach() for p in o_params], 1.0 - decay)
