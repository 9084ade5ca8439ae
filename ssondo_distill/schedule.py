"""Learning-rate schedule of EfficientAT's training scripts: exponential warm-up, a constant
phase, a linear ramp-down, then a constant tail at ``last_value`` x the peak rate.

Lengths are in epochs (fractional: the factor is evaluated every step at step / steps_per_epoch,
where EfficientAT steps its scheduler once per epoch; ``per_epoch=True`` reproduces that).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ScheduleConfig:
    warmup_epochs: float = 8.0  # exponential ramp-up length (EfficientAT warm_up_len)
    rampdown_start: float = 80.0  # epoch at which the linear decay starts (ramp_down_start)
    rampdown_epochs: float = 95.0  # length of the linear decay (ramp_down_len)
    last_value: float = 0.01  # final factor of the peak rate (last_lr_value)
    per_epoch: bool = False  # True: factor constant within an epoch, as EfficientAT does


def exp_warmup(epoch: float, warmup: float) -> float:
    """exp(-5 (1 - t)^2) with t = epoch / warmup, t clipped to [0.5 / warmup, 1] (Laine & Aila 2017)."""
    if warmup <= 0 or epoch >= warmup:
        return 1.0
    t = min(max(epoch, 0.5), warmup) / warmup
    return math.exp(-5.0 * (1.0 - t) ** 2)


def linear_rampdown(epoch: float, start: float, length: float, last_value: float) -> float:
    """1 until ``start``, then linear to ``last_value`` over ``length`` epochs, then constant."""
    if epoch <= start:
        return 1.0
    if length > 0 and epoch - start < length:
        return last_value + (1.0 - last_value) * (length - (epoch - start)) / length
    return last_value


def lr_factor(epoch: float, cfg: ScheduleConfig) -> float:
    """Multiplier of the peak learning rate at (fractional) ``epoch``."""
    if cfg.per_epoch:
        epoch = math.floor(epoch)
    return exp_warmup(epoch, cfg.warmup_epochs) * linear_rampdown(
        epoch, cfg.rampdown_start, cfg.rampdown_epochs, cfg.last_value
    )


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: ScheduleConfig, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR stepped once per optimisation step; its state_dict holds only the step count,
    so a checkpoint restores it exactly."""
    if steps_per_epoch < 1:
        raise ValueError(f"steps_per_epoch must be >= 1, got {steps_per_epoch}")
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step / steps_per_epoch, cfg))
