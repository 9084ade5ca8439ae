"""Collapse guards: the per-step statistics a user watches (prototype usage entropy, target-distribution
entropy, latent standard deviation; see ``prototypes.collapse_stats``), a warning the first time one
crosses its threshold, and the curves PNG."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ssondo_cache.atomic import atomic_path
from ssondo_distill.pretrain.config import PretrainConfig
from ssondo_distill.run_state import MetricsLog

log = logging.getLogger(__name__)

STATS = ("loss", "loss_pred", "loss_cls", "usage_entropy", "target_entropy", "latent_std")


@dataclass
class CollapseGuard:
    """``check(step, stats)`` per step; each kind of collapse warns once per invocation."""

    min_usage_entropy: float
    max_target_entropy: float
    min_latent_std: float
    warned: dict[str, dict[str, float]] = field(default_factory=dict)

    @classmethod
    def from_config(cls, cfg: PretrainConfig) -> CollapseGuard:
        return cls(cfg.min_usage_entropy, cfg.max_target_entropy, cfg.min_latent_std)

    def check(self, step: int, stats: dict[str, float]) -> list[dict[str, Any]]:
        """The new warnings of this step (also logged), as metrics records."""
        found = []
        rules = (
            ("usage_entropy", stats["usage_entropy"] < self.min_usage_entropy, self.min_usage_entropy,
             "few prototypes take every token"),
            ("target_entropy", stats["target_entropy"] > self.max_target_entropy, self.max_target_entropy,
             "the teacher's distributions are near uniform"),
            ("latent_std", stats["latent_std"] < self.min_latent_std, self.min_latent_std,
             "the target latents are nearly all the same"),
        )  # fmt: skip
        for name, bad, threshold, meaning in rules:
            if bad and name not in self.warned:
                value = float(stats[name])
                self.warned[name] = {"step": step, "value": value}
                log.warning(
                    "collapse at step %d: %s %.4f crossed %.4g (%s); lower the lr, raise the "
                    "teacher temperature warm-up or the EMA decay",
                    step, name, value, threshold, meaning,
                )  # fmt: skip
                found.append({"step": step, "collapse": name, "value": value, "threshold": threshold})
        return found


def plot_curves(metrics: Path, png: Path) -> None:
    """Losses and the three collapse statistics against steps (warnings as vertical lines)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = MetricsLog(metrics).records()
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.6))
    panels = (
        ("losses", ("loss", "loss_pred", "loss_cls")),
        ("prototype usage / target entropy (/ log K)", ("usage_entropy", "target_entropy")),
        ("latent std x sqrt(D)", ("latent_std",)),
        ("learning rate", ("lr",)),
    )
    for ax, (title, keys) in zip(axes, panels, strict=True):
        for key in keys:
            points = [(r["step"], r[key]) for r in records if key in r]
            if points:
                ax.plot(*zip(*points, strict=True), label=key)
        for r in records:
            if r.get("collapse") in keys:
                ax.axvline(r["step"], color="red", linestyle=":", label=f"collapse: {r['collapse']}")
        ax.set_xlabel("step")
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
        if len(keys) > 1 or any(r.get("collapse") in keys for r in records):
            ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(png) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
