"""Where each artifact lives inside a WORK folder (one place, so stages agree)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Workspace:
    root: Path

    def __init__(self, root: str | Path) -> None:
        object.__setattr__(self, "root", Path(root))

    @property
    def shards_dir(self) -> Path:
        return self.root / "shards"

    @property
    def manifests_dir(self) -> Path:
        return self.root / "manifests"

    @property
    def cache_dir(self) -> Path:
        return self.root / "cache"

    @property
    def clips_manifest(self) -> Path:
        return self.manifests_dir / "clips.parquet"

    @property
    def rejects_manifest(self) -> Path:
        return self.manifests_dir / "rejects.parquet"

    def shard_path(self, shard: int) -> Path:
        return self.shards_dir / f"clips-{shard:06d}.tar"

    def balanced_manifest(self, k: int) -> Path:
        return self.manifests_dir / f"balanced-k{k}.parquet"

    @property
    def random_manifest(self) -> Path:
        return self.manifests_dir / "random.parquet"
