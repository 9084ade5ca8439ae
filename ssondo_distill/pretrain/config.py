"""The MATPAC / MATPAC++ pretraining configuration: typed dataclasses, unknown keys refused.

Defaults are the published settings, read from the authors' training code (aurianworld/matpac,
``training_matpac/config/matpac.yaml`` and ``matpac_plusplus.yaml``, the "best model of the paper",
and the dataclass defaults of ``training_matpac/models/*.py``); the official counts in steps are given
here in epochs of its corpus (2,012,615 AudioSet clips of >= 6 s, global batch 8 GPUs x 256 = 2048, so
983 steps per epoch). Each field names its source; "ours" marks a choice of this implementation."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ssondo_cache.teachers.frontends import MATPAC_FRONTEND
from ssondo_cache.teachers.vit import ViTConfig
from ssondo_cache.typed_config import ConfigError, from_dict, load_config

DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "fp32", "bf16")


@dataclass(frozen=True)
class EncoderConfig:
    """The ViT of the MATPAC++ teacher (ssondo_cache/teachers/vit.py); ViT-B (model.encoder)."""

    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12  # extraction infers embed_dim // 64 from a checkpoint: keep that ratio
    mlp_ratio: float = 4.0
    patch_size: tuple[int, int] = (16, 16)  # task.patch_size
    frames: int = 608  # crop length in log-mel frames (task.max_sample_size = min_sample_size)

    def vit(self) -> ViTConfig:
        return ViTConfig(
            embed_dim=self.embed_dim,
            depth=self.depth,
            num_heads=self.num_heads,
            mlp_ratio=self.mlp_ratio,
            patch_size=tuple(self.patch_size),
            input_size=(MATPAC_FRONTEND.n_mels, self.frames),
        )


@dataclass(frozen=True)
class PredictorConfig:
    """The predictor ("decoder") of masked latents: models/decoder.py decoder_config."""

    embed_dim: int = 512
    depth: int = 8
    num_heads: int = 16
    mlp_ratio: float = 4.0
    mask_ratio: float = 0.7  # general_config.mask_ratio (random unstructured masking)


@dataclass(frozen=True)
class PrototypeConfig:
    """The unsupervised classification head and its loss (models/cls_head.py, cls_head_cfg)."""

    prototypes: int = 2048  # K, head_dim_out
    hidden_dim: int = 2048  # hidden_dim
    bottleneck_dim: int = 256  # Cls_Head bottleneck_dim (weight-normalised last layer after it)
    layers: int = 3  # Cls_Head nlayers
    student_temp: float = 0.1  # Cls_Head_Config.student_temp
    teacher_temp: float = 0.07  # teacher_temp, reached after the warm-up
    warmup_teacher_temp: float = 0.04  # warmup_teacher_temp
    warmup_teacher_temp_epochs: float = 10.0  # warmup_n_steps 9827 = 10 epochs (linear)
    center_momentum: float = 0.9  # center_momentum
    # the official code centres the teacher's logits with a running mean of its *probabilities*
    # (Cls_Loss.update_center receives the softmax); DINO's running mean of logits when true
    center_logits: bool = False
    ema_decay: float = 0.998  # teacher head EMA, linear to ema_end_decay over the run
    ema_end_decay: float = 1.0  # Cls_Head_Config.ema_end_decay


@dataclass(frozen=True)
class MclConfig:
    """MATPAC++'s multiple-choice predictor (models/mcl.py, matpac_plusplus.yaml mcl_heads): several
    linear heads, each masked token's loss goes to its best head (soft at first, annealed)."""

    enabled: bool = False  # use_mcl (False: MATPAC, True: MATPAC++)
    heads: int = 5  # n_head
    temperature_start: float = 0.1  # temperature_start (matpac_plusplus.yaml)
    temperature_end: float = 1e-4  # below it the assignment is the hard minimum
    decay_rate: float = 0.99997  # temperature = start * decay_rate ** step


@dataclass
class PretrainConfig:
    work: Path | None = None  # WORK folder (packed shards + clips manifest)
    out: Path | None = None  # RUN folder
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    predictor: PredictorConfig = field(default_factory=PredictorConfig)
    prototypes: PrototypeConfig = field(default_factory=PrototypeConfig)
    mcl: MclConfig = field(default_factory=MclConfig)
    ema_decay: float = 0.99995  # target encoder EMA (general_config.ema_decay) ...
    ema_end_decay: float = 0.99999  # ... linear to this over the run (ema_end_decay, anneal to max_update)
    loss_weight_pred: float = 0.5  # criterion.loss_weights.loss_pred
    loss_weight_cls: float = 0.5  # criterion.loss_weights.loss_cls
    # optimisation (optimizer / optimization / lr_scheduler sections)
    seed: int = 1337  # common.seed
    epochs: int = 300  # max_update 294816 = 300 epochs of 983 steps
    samples_per_epoch: int = 2_012_615  # the official corpus; set it to your corpus' size
    max_steps: int | None = None  # stop early (schedules still span `epochs`)
    batch_size: int = 2048  # global (8 x 256), split over ranks
    base_lr: float = 3e-4  # optimization.lr at the official global batch ...
    base_batch_size: int = 2048  # ... lr = base_lr * batch_size / base_batch_size (ours: linear scaling)
    betas: tuple[float, float] = (0.9, 0.95)  # adam_betas
    eps: float = 1e-6  # adam_eps
    weight_decay: float = 0.05  # decoupled, on every parameter (fairseq's adam is AdamW)
    grad_clip: float | None = 3.0  # clip_norm
    warmup_epochs: float = 20.0  # cosine schedule, warmup_updates 19654 = 20 epochs, then cosine to 0
    # data path (ours)
    shuffle_buffer: int = 1000
    num_workers: int = 4
    # collapse guards (ours): a warning when a step's value crosses the threshold
    min_usage_entropy: float = 0.1  # entropy of the batch-mean teacher distribution / log K
    max_target_entropy: float = 0.99  # mean entropy of the teacher distributions / log K (uniform)
    min_latent_std: float = 0.05  # per-dimension std of unit target latents x sqrt(D) (1: isotropic)
    # bookkeeping
    log_every: int = 20
    checkpoint_every: int = 1000
    keep_checkpoints: int = 2
    device: str = "auto"
    precision: str = "auto"  # auto: bf16 autocast on CUDA (the official runs in fp16), fp32 on CPU
    compile: bool = False  # torch.compile each transformer block (model.compile_blocks)
    resume: bool = False

    def __post_init__(self) -> None:
        p, c, e = self.predictor, self.prototypes, self.encoder
        checks = [
            (self.device in DEVICES, f"device must be one of {DEVICES}, got {self.device!r}"),
            (self.precision in PRECISIONS, f"precision must be one of {PRECISIONS}, got {self.precision!r}"),
            (0 < p.mask_ratio < 1, f"predictor.mask_ratio must be in (0, 1), got {p.mask_ratio}"),
            (e.frames % e.patch_size[1] == 0, f"encoder.frames {e.frames} is not a multiple of the patch"),
            (e.embed_dim % e.num_heads == 0, "encoder.embed_dim must be divisible by encoder.num_heads"),
            (p.embed_dim % p.num_heads == 0, "predictor.embed_dim must be divisible by predictor.num_heads"),
            (e.embed_dim % 4 == 0 and p.embed_dim % 4 == 0, "embed dims must be multiples of 4 (sin-cos)"),
            (c.prototypes >= 2, f"prototypes.prototypes must be >= 2, got {c.prototypes}"),
            (min(c.student_temp, c.teacher_temp, c.warmup_teacher_temp) > 0, "temperatures must be > 0"),
            (0 <= c.center_momentum < 1, "prototypes.center_momentum must be in [0, 1)"),
            (not self.mcl.enabled or self.mcl.heads >= 2, "mcl.heads must be >= 2 when mcl.enabled"),
            (
                0 <= self.ema_decay <= self.ema_end_decay <= 1 and 0 <= c.ema_decay <= c.ema_end_decay <= 1,
                "EMA decays must satisfy 0 <= start <= end <= 1",
            ),
            (min(self.loss_weight_pred, self.loss_weight_cls) >= 0, "loss weights must be >= 0"),
            (self.epochs >= 1 and self.samples_per_epoch >= 1 and self.batch_size >= 1, "sizes must be >= 1"),
            (self.max_steps is None or self.max_steps >= 1, f"max_steps must be >= 1, got {self.max_steps}"),
            (self.base_lr > 0 and self.base_batch_size >= 1, "base_lr must be > 0, base_batch_size >= 1"),
            (self.grad_clip is None or self.grad_clip > 0, "grad_clip must be > 0 or null"),
            (self.num_workers >= 0 and self.shuffle_buffer >= 1, "num_workers >= 0, shuffle_buffer >= 1"),
            (
                min(self.log_every, self.checkpoint_every, self.keep_checkpoints) >= 1,
                "log_every, checkpoint_every and keep_checkpoints must be >= 1",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(f"PretrainConfig: {message}")

    @property
    def lr(self) -> float:
        return self.base_lr * self.batch_size / self.base_batch_size

    @property
    def steps_per_epoch(self) -> int:
        return self.samples_per_epoch // self.batch_size

    @property
    def total_steps(self) -> int:  # what the schedules span
        return self.epochs * self.steps_per_epoch

    @property
    def end_step(self) -> int:
        return self.total_steps if self.max_steps is None else min(self.max_steps, self.total_steps)

    def require_paths(self) -> None:
        missing = [name for name in ("work", "out") if not getattr(self, name)]
        if missing:
            raise ConfigError(f"PretrainConfig: missing {', '.join(missing)} (config file or flags)")
        if self.steps_per_epoch < 1:
            raise ConfigError(
                f"PretrainConfig: samples_per_epoch {self.samples_per_epoch} is less than one batch "
                f"of {self.batch_size}"
            )


def load_pretrain_config(
    path: str | Path | None = None, overrides: dict[str, Any] | None = None, mcl_enabled: bool | None = None
) -> PretrainConfig:
    """PretrainConfig from a YAML/JSON file (defaults when ``path`` is None); non-None overrides win,
    ``mcl_enabled`` (the --mcl flag) over the file's ``mcl.enabled`` only."""
    if path is not None:
        cfg = load_config(PretrainConfig, path, overrides)
    else:
        cfg = from_dict(PretrainConfig, {k: v for k, v in (overrides or {}).items() if v is not None})
    if mcl_enabled is not None:
        cfg.mcl = dataclasses.replace(cfg.mcl, enabled=mcl_enabled)
        cfg.__post_init__()
    return cfg
