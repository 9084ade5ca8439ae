"""What a training run keeps in its RUN folder, apart from the final student: provenance
(config.json), resumable checkpoints, metrics.jsonl, the curves PNG, and result.json.

Checkpoints hold plain containers and tensors only (read with ``torch.load(weights_only=True)``)
and are written atomically; a run is identified by every setting that changes its weights, and
a checkpoint or finished run with another identity is refused, naming what differs.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from ssondo_cache.atomic import atomic_path, write_text
from ssondo_cache.provenance import code_version, now_iso
from ssondo_cache.typed_config import to_dict
from ssondo_distill.checkpoint import CheckpointMismatch, read_torch, write_torch

FORMAT = "ssondo-train-state"
VERSION = 1
CKPT = re.compile(r"step-(\d+)\.pt$")
# settings that do not change the weights: they may differ between a run and its resumption
NOT_IDENTITY = (
    "work",
    "out",
    "resume",
    "dry_run",
    "max_steps",
    "val_every",
    "log_every",
    "checkpoint_every",
    "keep_checkpoints",
    "device",
    "num_workers",
    "teacher",
    "allow_foreign_manifest",  # which manifest is used is part of the identity already
)


def _plain(x: Any) -> Any:
    return json.loads(json.dumps(x, sort_keys=True, default=str))


def identity(cfg: Any, data: Any, world_size: int) -> dict[str, Any]:
    """Every setting the weights depend on (JSON-plain, comparable)."""
    out = {k: v for k, v in to_dict(cfg).items() if k not in NOT_IDENTITY}
    cache = Path(data.view.cache_path)
    out.update(
        cache=f"{cache.parent.name}/{cache.name.removesuffix('.zarr')}",  # resolved: a suffix may name it
        manifest=data.manifest,
        readers_per_rank=max(1, cfg.num_workers),
        world_size=world_size,
        teacher_id=data.cache_attrs.get("teacher_id"),
        teacher_dim=data.embed_dim,
        clips_fingerprint=data.cache_attrs.get("clips_fingerprint"),
    )
    return _plain(out)


def provenance(cfg: Any, data: Any, ident: dict[str, Any], world_size: int) -> dict[str, Any]:
    """RUN/config.json: the config plus what it resolved to (teacher, cache, TS, manifest)."""
    a = data.cache_attrs
    return _plain(
        {
            "config": to_dict(cfg),
            "teacher": a.get("teacher"),
            "teacher_id": a.get("teacher_id"),
            "teacher_dim": data.embed_dim,
            "cache": cfg.cache,
            "cache_path": data.view.cache_path,
            "ts": a.get("ts"),
            "hop": a.get("hop"),
            "manifest": data.manifest,
            "manifest_kind": data.table.kind,
            "manifest_meta": data.table.meta,
            "clips_fingerprint": a.get("clips_fingerprint"),
            "student": cfg.student,
            "loss": cfg.loss,
            "seed": cfg.seed,
            "world_size": world_size,
            "target": cfg.target,
            "clip_seconds": data.view.crop_samples / data.view.sample_rate,
            "identity": ident,
            "code_version": code_version(),
            "written": now_iso(),
        }
    )


def _differences(have: dict[str, Any], want: dict[str, Any]) -> list[str]:
    keys = sorted(set(have) | set(want))
    return [f"{k}: {have.get(k)!r} there, {want.get(k)!r} now" for k in keys if have.get(k) != want.get(k)]


def check_identity(source: Path, have: dict[str, Any], want: dict[str, Any]) -> None:
    if (have.get("student"), have.get("teacher_dim")) != (want.get("student"), want.get("teacher_dim")):
        raise CheckpointMismatch(
            f"{source} holds student {have.get('student')!r} for a {have.get('teacher_dim')}-d teacher "
            f"({have.get('teacher_id')}); this run trains student {want.get('student')!r} for a "
            f"{want.get('teacher_dim')}-d teacher ({want.get('teacher_id')})"
        )
    diff = _differences(have, want)
    if diff:
        raise CheckpointMismatch(
            f"{source} belongs to a run with other settings ({'; '.join(diff)}): "
            "use the same settings to resume, or another --out"
        )


def finished_result(run: Path, ident: dict[str, Any], end_step: int) -> dict[str, Any] | None:
    """The stored result when this exact run already finished (re-running is a no-op)."""
    path = run / "result.json"
    if not path.is_file():
        return None
    done = json.loads(path.read_text())
    check_identity(path, done["identity"], ident)
    return done["result"] if done["result"]["steps"] >= end_step else None


# ---------------------------------------------------------------- checkpoints


def latest_checkpoint(run: Path) -> Path | None:
    found = [
        (int(m.group(1)), p) for p in (run / "checkpoints").glob("step-*.pt") if (m := CKPT.search(p.name))
    ]
    return max(found)[1] if found else None


def _rng_state(parts: Any) -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "mixup": parts.mixup_gen.get_state()}
    if parts.device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(parts.device)
    return state


def save(
    run: Path,
    step: int,
    steps_per_epoch: int,
    ident: dict[str, Any],
    parts: Any,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    rank: int,
    world_size: int,
    keep: int,
) -> Path | None:
    """Rank 0 writes RUN/checkpoints/step-N.pt with every rank's RNG state; older ones beyond
    ``keep`` are removed only after the new one is in place."""
    rng = [None] * world_size
    if world_size > 1:
        dist.all_gather_object(rng, _rng_state(parts))
    else:
        rng = [_rng_state(parts)]
    if rank != 0:
        return None
    path = run / "checkpoints" / f"step-{step:09d}.pt"
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "step": step,
        "identity": json.dumps(ident, sort_keys=True),
        # the data position: batches are a pure function of (seed, epoch, step in epoch), so this is all
        # a resumed stream needs (it skips whole shuffle windows without reading them)
        "data_position": {"epoch": step // steps_per_epoch, "step_in_epoch": step % steps_per_epoch},
        "model": {
            k: v.detach().cpu() if isinstance(v, torch.Tensor) else v
            for k, v in parts.student.state_dict().items()
        },
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng": [{k: v.cpu() for k, v in r.items()} for r in rng],
        "written": now_iso(),
    }
    resume = f"resume with `ssondo train ... --resume` (from the last checkpoint in {path.parent})"
    write_torch(payload, path, f"the checkpoint of step {step}", resume)
    old = sorted((int(m.group(1)), p) for p in path.parent.glob("step-*.pt") if (m := CKPT.search(p.name)))
    for _, p in old[:-keep]:
        p.unlink(missing_ok=True)
    return path


def load(
    path: Path,
    ident: dict[str, Any],
    parts: Any,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    rank: int,
    world_size: int,
) -> int:
    """Restore a checkpoint into this process; returns the step to continue from."""
    fix = f"delete it to resume from the checkpoint before it (or drop --resume to start {path.parent.parent} anew)"
    ckpt = read_torch(path, "the training checkpoint", fix)
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT or ckpt.get("version") != VERSION:
        raise CheckpointMismatch(f"{path} is not an ssondo training checkpoint (version {VERSION})")
    check_identity(path, json.loads(ckpt["identity"]), ident)
    parts.student.load_state_dict(ckpt["model"], strict=True)
    optimizer.load_state_dict(ckpt["optimizer"])
    scheduler.load_state_dict(ckpt["scheduler"])
    rng = ckpt["rng"][rank]
    torch.set_rng_state(rng["torch"])
    parts.mixup_gen.set_state(rng["mixup"])
    if "cuda" in rng and parts.device.type == "cuda":
        torch.cuda.set_rng_state(rng["cuda"], parts.device)
    return int(ckpt["step"])


def mean_over_ranks(value: torch.Tensor, world_size: int) -> float:
    if world_size > 1:
        value = value.detach().clone()
        dist.all_reduce(value)
        value /= world_size
    return float(value)


# ---------------------------------------------------------------- metrics and curves


class MetricsLog:
    """Append-only JSON lines (only rank 0 writes)."""

    def __init__(self, path: Path, enabled: bool = True) -> None:
        self.path, self.enabled = path, enabled

    def write(self, record: dict[str, Any]) -> None:
        if self.enabled:
            with open(self.path, "a") as f:
                f.write(json.dumps(record, sort_keys=True) + "\n")

    def records(self) -> list[dict[str, Any]]:
        if not self.path.is_file():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]

    def last_value(self, key: str, at_step: int | None = None) -> float | None:
        hits = [r[key] for r in self.records() if key in r and (at_step is None or r["step"] == at_step)]
        return hits[-1] if hits else None


def truncate_metrics(path: Path, step: int) -> None:
    """Drop lines past ``step`` (written after the checkpoint a resumed run starts from); a run
    starting from scratch starts a new file."""
    if not path.is_file():
        return
    if step == 0:
        path.unlink()
        return
    keep = [
        line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step
    ]
    write_text(path, "".join(line + "\n" for line in keep))


def plot_curves(metrics: Path, png: Path) -> None:
    """Training loss and validation cosine distance against steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = MetricsLog(metrics).records()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
    train = [(r["step"], r["loss"]) for r in records if "loss" in r]
    val = [(r["step"], r["val_cosine_distance"]) for r in records if r.get("val_cosine_distance") is not None]
    for ax, points, title in ((ax1, train, "training loss"), (ax2, val, "validation cosine distance")):
        if points:
            ax.plot(*zip(*points, strict=True), marker="." if len(points) < 50 else None)
        ax.set_xlabel("step")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    baseline = [r["val_mean_baseline"] for r in records if r.get("val_mean_baseline") is not None]
    if baseline:
        ax2.axhline(baseline[-1], color="gray", linestyle="--", label="predict the mean target")
        ax2.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    with atomic_path(png) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
