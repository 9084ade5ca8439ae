"""One training step and validation, the per-step machinery `trainer.train` loops over.

One step: audio batch (B, S) -> device -> [resample] -> log-mel (fp32) -> SpecAugment -> mixup
(the reference's order) -> student under autocast (bf16 on CUDA, fp32 on CPU) -> loss against the cached targets (mixup
mixes the loss, not the targets); backward, clip, Adam and the schedule stay in the loop.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ssondo_cache.compiling import compile_module
from ssondo_distill.augment import SpecAugment, mixup
from ssondo_distill.config import TrainConfig
from ssondo_distill.frontend import StudentFrontEnd
from ssondo_distill.losses import build_loss, mixup_loss
from ssondo_distill.students import build_student
from ssondo_distill.training_data import target_statistics


@dataclass
class Parts:
    """What a training step needs, built once per process."""

    student: nn.Module  # the bare student (checkpoints, validation)
    model: nn.Module  # what the step calls: the student, DDP-wrapped and/or compiled
    frontend: StudentFrontEnd
    loss: nn.Module
    specaug: SpecAugment | None  # None: no SpecAugment
    device: torch.device
    autocast_dtype: torch.dtype | None  # None: fp32
    resample_from: int | None  # stream sample rate when it differs from the front-end's
    mixup_alpha: float
    mixup_gen: torch.Generator
    target_shift: Tensor | None = None  # (D,) subtracted from the targets before the loss (target_norm)
    target_scale: Tensor | None = None  # (D,) then divided by this

    def normalise_target(self, target: Tensor) -> Tensor:
        """(B, D) raw teacher targets -> the space the student is trained in."""
        if self.target_shift is None:
            return target
        return (target - self.target_shift) / self.target_scale


def build_parts(
    cfg: TrainConfig,
    teacher_dim: int,
    stream_rate: int,
    device: torch.device,
    rank: int = 0,
    world_size: int = 1,
) -> Parts:
    torch.manual_seed(cfg.seed)  # same initial weights on every rank
    student = build_student(cfg.student, teacher_dim, **cfg.student_options).to(device)
    if cfg.bn_momentum is not None:
        for module in student.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.momentum = cfg.bn_momentum
    frontend = StudentFrontEnd(**cfg.frontend).to(device)
    model: nn.Module = student
    if world_size > 1:
        model = nn.parallel.DistributedDataParallel(
            student, device_ids=[device.index] if device.type == "cuda" else None
        )
    if cfg.compile:
        model = compile_module(model)
    bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and device.type == "cuda")
    torch.manual_seed(cfg.seed * 1000 + rank + 1)  # dropout / masks differ between ranks, fixed by seed
    return Parts(
        student=student,
        model=model,
        frontend=frontend,
        loss=build_loss(cfg.loss, **cfg.loss_options).to(device),
        specaug=None if cfg.augment is None else SpecAugment(**cfg.augment).to(device),
        device=device,
        autocast_dtype=torch.bfloat16 if bf16 else None,
        resample_from=None if stream_rate == frontend.sample_rate else stream_rate,
        mixup_alpha=cfg.mixup_alpha,
        mixup_gen=torch.Generator().manual_seed(cfg.seed * 1000 + rank + 7),
    )


def to_mel(parts: Parts, audio: Tensor) -> Tensor:
    """(B, S) audio at the stream's rate (int16 PCM or float) -> (B, 1, F, T) fp32 log-mel, on the device."""
    audio = audio.to(parts.device, non_blocking=True)
    with torch.no_grad():
        if audio.dtype == torch.int16:  # the stream ships PCM: half the bytes of float32
            audio = audio.float() / 32768.0
        if parts.resample_from is not None:
            import torchaudio.functional as AF

            audio = AF.resample(audio, parts.resample_from, parts.frontend.sample_rate)
        return parts.frontend(audio)


def batch_loss(parts: Parts, batch: dict[str, Any], augment: bool = True) -> Tensor:
    """Scalar training loss of one batch (mixup + SpecAugment when ``augment``)."""
    mel = to_mel(parts, batch["audio"])
    target = parts.normalise_target(batch["target"].to(parts.device, non_blocking=True).float())  # (B, D)
    clusters = batch["cluster"].to(parts.device, non_blocking=True)  # (B,)
    perm = lam = None
    if augment and parts.specaug is not None:
        mel = parts.specaug(mel)
    if augment and parts.mixup_alpha > 0:
        mel, perm, lam = mixup(mel, parts.mixup_alpha, generator=parts.mixup_gen)
    with torch.autocast(
        parts.device.type,
        dtype=parts.autocast_dtype or torch.float32,
        enabled=parts.autocast_dtype is not None,
    ):
        pred = parts.model(mel)
    pred = pred.float()  # (B, D): losses in fp32
    if perm is not None:
        return mixup_loss(parts.loss, pred, target, perm, lam, clusters=clusters)
    return parts.loss(pred, target, clusters=clusters)


@torch.no_grad()
def validate(parts: Parts, val: dict[str, Tensor], batch_size: int) -> float | None:
    """1 - mean cosine(student(audio), teacher target) over the held-out clips."""
    if not val:
        return None
    was_training = parts.student.training
    parts.student.eval()
    cos = []
    for i in range(0, len(val["audio"]), batch_size):
        mel = to_mel(parts, val["audio"][i : i + batch_size])
        with torch.autocast(
            parts.device.type,
            dtype=parts.autocast_dtype or torch.float32,
            enabled=parts.autocast_dtype is not None,
        ):
            pred = parts.student(mel).float()
        target = parts.normalise_target(val["target"][i : i + batch_size].to(parts.device).float())
        cos.append(nn.functional.cosine_similarity(pred, target, dim=-1))
    parts.student.train(was_training)
    return 1.0 - torch.cat(cos).mean().item()


def mean_target_baseline(val: dict[str, Tensor]) -> float | None:
    """1 - mean_i cos(target_i, mean of the other held-out targets): the validation score of a
    student that only learnt the average direction (teacher embeddings are often far from
    centred, so this is well below 1 and a trained student must beat it to mean anything)."""
    if not val or len(val["target"]) < 2:
        return None
    t = val["target"].double()  # (n, D)
    others = (t.sum(0, keepdim=True) - t) / (len(t) - 1)  # (n, D) leave-one-out means
    return 1.0 - nn.functional.cosine_similarity(t, others, dim=-1).mean().item()


def apply_target_norm(cfg: TrainConfig, data: Any, train_table: Any, parts: Parts) -> dict[str, Any]:
    """Set the target normalisation of ``parts`` from the training clips; returns what the
    checkpoint records so the projection can be mapped back to the teacher's space."""
    if cfg.target_norm == "none":
        return {"kind": "none"}
    positions = np.searchsorted(data.table.rows, train_table.rows)
    mean, std = target_statistics(data, positions)
    if cfg.target_norm == "center":
        std = np.ones_like(std)
    parts.target_shift = torch.as_tensor(mean, dtype=torch.float32, device=parts.device)
    parts.target_scale = torch.as_tensor(std, dtype=torch.float32, device=parts.device)
    return {"kind": cfg.target_norm, "mean": mean.tolist(), "std": std.tolist()}
