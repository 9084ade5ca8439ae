"""Which share of the work this process owns: torchrun, a SLURM array, or alone."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class RankInfo:
    rank: int
    world_size: int
    source: str  # "torchrun", "slurm-array", "single"

    def owns(self, item: int) -> bool:
        """Round-robin ownership of work item ``item`` (e.g. a tar shard index)."""
        return item % self.world_size == self.rank


def detect_rank(env: Mapping[str, str] | None = None) -> RankInfo:
    """Rank and world size from torchrun (RANK/WORLD_SIZE) or a SLURM array
    (SLURM_ARRAY_TASK_ID relative to SLURM_ARRAY_TASK_MIN, SLURM_ARRAY_TASK_COUNT)."""
    env = os.environ if env is None else env
    if "RANK" in env and "WORLD_SIZE" in env:
        info = RankInfo(int(env["RANK"]), int(env["WORLD_SIZE"]), "torchrun")
    elif "SLURM_ARRAY_TASK_ID" in env and "SLURM_ARRAY_TASK_COUNT" in env:
        first = int(env.get("SLURM_ARRAY_TASK_MIN", "0"))
        info = RankInfo(
            int(env["SLURM_ARRAY_TASK_ID"]) - first,
            int(env["SLURM_ARRAY_TASK_COUNT"]),
            "slurm-array",
        )
    else:
        info = RankInfo(0, 1, "single")
    if not 0 <= info.rank < info.world_size:
        raise ValueError(f"rank {info.rank} is outside world size {info.world_size} ({info.source})")
    return info
