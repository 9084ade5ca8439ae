"""The training configuration: one typed dataclass, loadable from YAML/JSON, overridable by CLI
flags, unknown keys rejected (ssondo_cache.typed_config)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ssondo_cache.typed_config import ConfigError, from_dict, load_config
from ssondo_distill.losses import LOSSES
from ssondo_distill.schedule import ScheduleConfig
from ssondo_distill.students import REMOVED_OPTIONS

TARGETS = ("clip", "window")
TARGET_NORMS = ("none", "center", "standardize")
DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "fp32", "bf16")


@dataclass
class TrainConfig:
    # what to train on
    work: Path | None = None  # WORK folder (shards, manifests, cache)
    cache: str = ""  # cache NAME: <teacher_id>/ts<TS>-hop<HOP> or a unique suffix (e.g. ts10-hop10)
    teacher: str | None = None  # expected teacher (registry name); a cache of another teacher is refused
    manifest: str = "random"  # random (uniform) | a manifest name in WORK/manifests (balanced-k50) | a path
    allow_foreign_manifest: bool = False  # sample with a manifest clustered on another cache (teacher/TS/hop)
    target: str = "clip"  # clip: the clip embedding; window: one TS window (audio cropped to it)
    clip_seconds: float = 10.0  # audio length for target=clip (random crop, zero pad)
    # none: the teacher's raw embeddings (the paper). center / standardize: subtract the training
    # clips' mean (and divide by the per-dimension std) before the loss, for teachers whose
    # embeddings share one dominant direction (e.g. YAMNet's post-ReLU features), where the raw cosine
    # mostly rewards predicting the mean. Validation is measured in the same (normalised) space.
    target_norm: str = "none"
    out: Path | None = None  # RUN folder
    # what to train
    student: str = "mobilenetv3"
    student_options: dict[str, Any] = field(default_factory=dict)  # e.g. {width_mult: 1.0}
    # starting weights of a fresh run (a format of init_weights.INIT_FORMATS: EfficientAT's mn10_im.pt,
    # dymn10_as.pt ...); never read on resume (the checkpoint holds the weights)
    init: Path | None = None
    # BatchNorm running-statistics momentum for every BN layer; null keeps the student's own
    # (EfficientAT's 0.01 needs thousands of steps before eval-mode outputs settle: short runs want 0.1)
    bn_momentum: float | None = None
    frontend: dict[str, Any] = field(default_factory=dict)  # StudentFrontEnd options (paper's KD log-mel)
    loss: str = "cosine"
    loss_options: dict[str, Any] = field(default_factory=dict)
    # optimisation
    seed: int = 0
    epochs: int = 200
    samples_per_epoch: int = 100_000
    max_steps: int | None = None  # stop early (the schedule still spans `epochs`)
    batch_size: int = 120  # global: split evenly over ranks
    lr: float = 8e-4  # peak learning rate (Adam)
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float | None = 5.0  # max gradient norm; null = no clipping
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    mixup_alpha: float = 0.3  # Beta(a, a) mixup of the log-mel and of the loss; 0 = off
    # SpecAugment options ({} = augment.SpecAugment's defaults); null = no SpecAugment
    augment: dict[str, Any] | None = field(default_factory=dict)
    # data path
    shuffle_buffer: int = 1000  # samples per shuffle window, per reader
    num_workers: int = 4  # data-loader workers per rank (0 = in the training process)
    val_clips: int = 256  # held-out clips (excluded from training) for the validation cosine
    # bookkeeping
    val_every: int = 500  # steps between validations (also at the start and the end)
    log_every: int = 20  # steps between metrics lines
    checkpoint_every: int = 500  # steps between checkpoints (also one at the end)
    keep_checkpoints: int = 2
    device: str = "auto"  # auto | cpu | cuda (cuda without a GPU is an error)
    precision: str = "auto"  # auto: bf16 autocast on CUDA, fp32 on CPU
    compile: bool = False  # torch.compile the student
    resume: bool = False  # continue the run in `out` exactly where its last checkpoint stopped
    dry_run: bool = False  # build the student, print parameter counts, train nothing
    teacher_dim: int | None = None  # dry run without a cache: the teacher's embedding dimension

    def __post_init__(self) -> None:
        checks = [
            (self.target in TARGETS, f"target must be one of {TARGETS}, got {self.target!r}"),
            (
                self.target_norm in TARGET_NORMS,
                f"target_norm must be one of {TARGET_NORMS}, got {self.target_norm!r}",
            ),
            (self.device in DEVICES, f"device must be one of {DEVICES}, got {self.device!r}"),
            (self.precision in PRECISIONS, f"precision must be one of {PRECISIONS}, got {self.precision!r}"),
            (self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}"),
            (self.samples_per_epoch >= 1, f"samples_per_epoch must be >= 1, got {self.samples_per_epoch}"),
            (self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}"),
            (self.max_steps is None or self.max_steps >= 1, f"max_steps must be >= 1, got {self.max_steps}"),
            (self.lr > 0, f"lr must be > 0, got {self.lr}"),
            (
                self.bn_momentum is None or 0 < self.bn_momentum <= 1,
                f"bn_momentum must be in (0, 1], got {self.bn_momentum}",
            ),
            (self.clip_seconds > 0, f"clip_seconds must be > 0, got {self.clip_seconds}"),
            (self.mixup_alpha >= 0, f"mixup_alpha must be >= 0, got {self.mixup_alpha}"),
            (self.shuffle_buffer >= 1, f"shuffle_buffer must be >= 1, got {self.shuffle_buffer}"),
            (self.num_workers >= 0, f"num_workers must be >= 0, got {self.num_workers}"),
            (self.val_clips >= 0, f"val_clips must be >= 0, got {self.val_clips}"),
            (
                min(self.val_every, self.log_every, self.checkpoint_every, self.keep_checkpoints) >= 1,
                "val_every, log_every, checkpoint_every and keep_checkpoints must be >= 1",
            ),
            (
                self.teacher_dim is None or (self.dry_run and self.teacher_dim >= 1),
                f"teacher_dim ({self.teacher_dim}) is for a dry run (>= 1); a training reads it from its cache",
            ),
            (
                self.grad_clip is None or self.grad_clip > 0,
                f"grad_clip must be > 0 or null, got {self.grad_clip}",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(f"TrainConfig: {message}")
        removed = sorted(set(self.student_options) & set(REMOVED_OPTIONS))  # refused before any workspace
        if removed:
            raise ConfigError(
                f"TrainConfig: student_options.{removed[0]}: no longer an option; {REMOVED_OPTIONS[removed[0]]}"
            )
        if self.mixup_alpha > 0 and self.loss in LOSSES and not LOSSES.get(self.loss).mixup_ok:
            raise ConfigError(
                f"TrainConfig: mixup (mixup_alpha {self.mixup_alpha}) with the contrastive loss "
                f"{self.loss!r}: a mixed sample's own target would be a negative; set mixup_alpha: 0"
            )

    def require_paths(self) -> None:
        """`work`, `cache` and `out` have no sensible default: say which one is missing."""
        missing = [name for name in ("work", "cache", "out") if not getattr(self, name)]
        if missing:
            raise ConfigError(
                f"TrainConfig: missing {', '.join(missing)} (give them in the config file or as flags)"
            )


def load_train_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """TrainConfig from a YAML/JSON file (or defaults when ``path`` is None); non-None
    ``overrides`` (CLI flags) win over the file."""
    if path is not None:
        return load_config(TrainConfig, path, overrides)
    return from_dict(TrainConfig, {k: v for k, v in (overrides or {}).items() if v is not None})


def shipped_configs() -> list[Path]:
    """The paper settings and the CPU demo shipped in configs/ (next to the packages)."""
    return sorted((Path(__file__).resolve().parent.parent / "configs").glob("*.yaml"))
