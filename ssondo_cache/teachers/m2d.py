"""M2D (nttcslab/m2d, ``examples/portable_m2d.py``) as a teacher.

Encoder-only checkpoints (``m2d_vit_base-80x608p16x16-*/checkpoint-*.pth``) hold the ``LocalViT``
weights (timm names: ``cls_token``, ``pos_embed``, ``patch_embed.proj.*``, ``blocks.*``, ``norm.*``,
optionally ``norm_stats`` = [mean, std] of the log-mel), either flat or as
``{'model': {'backbone.' + key: tensor}}``. Front-end: centred STFT (reflection), 80 Slaney mel bands
50-8000 Hz, log(x + eps), normalised with ``norm_stats`` (default [-7.1, 4.2]). The architecture (input
80x608, patch 16x16) is read from the tensors, or given explicitly; never parsed from the folder name."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from ssondo_cache.logmel import build_logmel
from ssondo_cache.teachers.base import make_teacher_id, state_dict_sha256
from ssondo_cache.teachers.frontends import M2D_FRONTEND, M2D_FRONTEND_32K
from ssondo_cache.teachers.vit import ViTConfig
from ssondo_cache.teachers.vit_teacher import (
    CheckpointError,
    ViTTeacher,
    check_state_dict,
    infer_vit_config,
    load_checkpoint_file,
    load_official_checkpoint,
    output_digest,
    random_vit_config,
    seeded_random_teacher,
)

NORM_STATS_KEY = "norm_stats"
DEFAULT_NORM_STATS = (-7.1, 4.2)  # the 2022 models' statistics, used when a checkpoint has none
BACKBONE_PREFIX = "backbone."
M2D_FRONTENDS = {16000: M2D_FRONTEND, 32000: M2D_FRONTEND_32K}  # the official "16k" and "32k" settings


def unwrap_m2d_checkpoint(obj: dict) -> dict[str, torch.Tensor]:
    """{'model': ...} -> its content; 'backbone.' prefixes removed. A file mixing prefixed and
    unprefixed weights is refused (the official loader would silently drop the unprefixed ones)."""
    state = obj["model"] if "model" in obj and isinstance(obj["model"], dict) else obj
    prefixed = [k for k in state if k.startswith(BACKBONE_PREFIX)]
    if not prefixed:
        return dict(state)
    others = [k for k in state if not k.startswith(BACKBONE_PREFIX)]
    if others:
        raise CheckpointError(f"checkpoint mixes '{BACKBONE_PREFIX}' keys with others: {sorted(others)[:12]}")
    return {k[len(BACKBONE_PREFIX) :]: v for k, v in state.items()}


class M2DTeacher(ViTTeacher):
    def __init__(
        self,
        vit: ViTConfig,
        norm_stats: tuple[float, float] = DEFAULT_NORM_STATS,
        mode: str = "precise",
        amp: bool = True,
        sample_rate: int = 16000,
    ) -> None:
        if sample_rate not in M2D_FRONTENDS:
            raise ValueError(f"M2D runs at {sorted(M2D_FRONTENDS)} Hz, not {sample_rate}")
        mean, std = (float(v) for v in norm_stats)
        frontend = build_logmel(dataclasses.replace(M2D_FRONTENDS[sample_rate], norm_mean=mean, norm_std=std))
        super().__init__(frontend, vit, mode=mode, amp=amp)
        self.name = "m2d"

    def official_layout(self) -> dict[str, torch.Size]:
        return {**{k: v.shape for k, v in self.encoder.state_dict().items()}, NORM_STATS_KEY: torch.Size([2])}

    def load_official_state_dict(self, state: dict[str, torch.Tensor], what: str = "checkpoint") -> None:
        check_state_dict(self.official_layout(), state, optional={NORM_STATS_KEY}, what=what)
        self.encoder.load_state_dict({k: state[k] for k in self.encoder.state_dict()}, strict=True)

    def get_scene_embeddings(self, audio: torch.Tensor) -> torch.Tensor:  # (B, S) -> (B, D)
        return self(audio).mean(1)


def build_m2d(
    checkpoint: str | Path | None = None,
    mode: str = "precise",
    amp: bool = True,
    random_init: bool = False,
    seed: int = 0,
    trust_checkpoint: bool = False,
    norm_stats: tuple[float, float] | None = None,
    embed_dim: int | None = None,
    depth: int | None = None,
    num_heads: int | None = None,
    mlp_ratio: float | None = None,
    input_size: tuple[int, int] | None = None,
    patch_size: tuple[int, int] | None = None,
    sample_rate: int = 16000,
) -> M2DTeacher:
    """M2D from an encoder-only checkpoint, or random weights (``random_init=True``).
    ``norm_stats`` overrides the checkpoint's (or the default [-7.1, 4.2]). ``sample_rate`` 32000 for the
    official 32 kHz models: their tensors look like the 16 kHz ones, so it must be said explicitly."""
    sr_variant = None if sample_rate == 16000 else sample_rate
    if checkpoint is None:
        if not random_init:
            raise ValueError(
                "m2d needs a checkpoint (an encoder-only checkpoint-*.pth); "
                "pass random_init=True for random weights"
            )
        vit = random_vit_config(
            embed_dim=embed_dim,
            depth=depth,
            num_heads=num_heads,
            mlp_ratio=mlp_ratio,
            input_size=input_size,
            patch_size=patch_size,
        )
        teacher = seeded_random_teacher(
            lambda: M2DTeacher(
                vit,
                norm_stats or DEFAULT_NORM_STATS,
                mode=mode,
                amp=amp,
                sample_rate=sample_rate,
            ),
            seed,
        )
        digest = output_digest(
            state_dict_sha256(teacher),
            mode=None if mode == "precise" else mode,
            norm_stats=norm_stats,
            sr=sr_variant,
        )
        teacher.teacher_id = make_teacher_id("m2d-random", digest)
        return teacher
    state = unwrap_m2d_checkpoint(load_checkpoint_file(checkpoint, trust_checkpoint))
    vit = infer_vit_config(
        state,
        "blocks.",
        n_mels=M2D_FRONTEND.n_mels,
        num_heads=num_heads,
        embed_dim=embed_dim,
        depth=depth,
        mlp_ratio=mlp_ratio,
        input_size=input_size,
        patch_size=patch_size,
    )
    stats = state.get(NORM_STATS_KEY)
    stored = tuple(stats.tolist()) if stats is not None else DEFAULT_NORM_STATS
    teacher = M2DTeacher(vit, norm_stats or stored, mode=mode, amp=amp, sample_rate=sample_rate)
    load_official_checkpoint(teacher, state, checkpoint)
    override = tuple(float(v) for v in norm_stats) if norm_stats is not None else None
    if override is not None and max(abs(a - b) for a, b in zip(override, stored, strict=True)) < 1e-6:
        override = None  # the same statistics the checkpoint (or the default) gives: same outputs, same id
    digest = output_digest(
        teacher.checkpoint_sha256,
        mode=None if mode == "precise" else mode,
        norm_stats=override,
        sr=sr_variant,
    )
    teacher.teacher_id = make_teacher_id("m2d", digest)
    return teacher
