"""What MATPAC++ and M2D have in common: a log-mel front-end, the shared ViT encoder, chunked
inference, strict checkpoint loading, and bf16 on CUDA (compiling: ``base.compile_teacher``).
Subclasses give key names and front-end constants."""

from __future__ import annotations

import argparse
import hashlib
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import torch

from ssondo_cache.logmel import LogMel
from ssondo_cache.provenance import sha256_file
from ssondo_cache.teachers.base import Teacher
from ssondo_cache.teachers.vit import ViTConfig, ViTEncoder, encode_chunks


def output_digest(weights_sha256: str, **variant: Any) -> str:
    """The teacher id's digest: the weights' sha256, or, when an option changes the outputs (fast mode,
    other normalisation statistics), a hash of both, so the two never share a cache folder."""
    variant = {k: v for k, v in variant.items() if v is not None}
    if not variant:
        return weights_sha256
    text = weights_sha256 + "|" + "|".join(f"{k}={variant[k]}" for k in sorted(variant))
    return hashlib.sha256(text.encode()).hexdigest()


class CheckpointError(ValueError):
    """A checkpoint that does not fit the model exactly (the message names the keys)."""


def load_checkpoint_file(path: str | Path, trust_checkpoint: bool = False) -> dict[str, Any]:
    """torch.load with weights_only=True (argparse.Namespace allowed: M2D stores its 'args').
    ``trust_checkpoint=True`` permits full unpickling of a file you trust."""
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            obj = torch.load(path, map_location="cpu", weights_only=not trust_checkpoint)
    except Exception as err:  # noqa: BLE001 - re-raised with the remedy
        raise CheckpointError(
            f"cannot load {path} with weights_only=True ({type(err).__name__}: {err}); "
            "if you trust the file, pass the option trust_checkpoint=True"
        ) from err
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a state_dict (dict), got {type(obj).__name__}")
    return obj


def _listing(keys, limit: int = 12) -> str:
    keys = sorted(keys)
    more = f" ... (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def infer_vit_config(
    state: dict[str, torch.Tensor],
    block_prefix: str,
    n_mels: int = 80,
    num_heads: int | None = None,
    **explicit: Any,
) -> ViTConfig:
    """Architecture from the tensor shapes: width (pos_embed), depth (block indices), MLP ratio (fc1),
    patch (patch_embed.proj), chunk frames (positions / frequency bands). The head count is not in the
    shapes: ``num_heads`` (default: width // 64, the ViT convention). Explicit options override."""
    need = [
        k
        for k in ("pos_embed", "patch_embed.proj.weight", f"{block_prefix}0.mlp.fc1.weight")
        if k not in state
    ]
    if need:
        raise CheckpointError(f"cannot infer the architecture: missing keys {_listing(need)}")
    n_pos, dim = state["pos_embed"].shape[-2:]
    patch = tuple(int(s) for s in state["patch_embed.proj.weight"].shape[-2:])
    pattern = re.compile(re.escape(block_prefix) + r"(\d+)\.")
    depth = 1 + max(int(m.group(1)) for k in state if (m := pattern.match(k)))
    mlp_ratio = state[f"{block_prefix}0.mlp.fc1.weight"].shape[0] / dim
    grid_f = n_mels // patch[0]
    if (n_pos - 1) % grid_f:
        raise CheckpointError(
            f"pos_embed has {n_pos - 1} patch positions, not a multiple of {grid_f} bands "
            f"({n_mels} mels / patch {patch[0]}): give input_size explicitly"
        )
    cfg = {
        "embed_dim": int(dim),
        "depth": depth,
        "num_heads": num_heads or max(1, int(dim) // 64),
        "mlp_ratio": float(mlp_ratio),
        "patch_size": patch,
        "input_size": (n_mels, (n_pos - 1) // grid_f * patch[1]),
    }
    cfg.update({k: tuple(v) if isinstance(v, list) else v for k, v in explicit.items() if v is not None})
    return ViTConfig(**cfg)


def check_state_dict(
    expected: dict[str, torch.Size],
    state: dict[str, torch.Tensor],
    optional: set[str] = frozenset(),
    what: str = "checkpoint",
) -> None:
    """Refuse anything but an exact fit: missing keys, unexpected keys, shape mismatches, and an
    all-zero positional embedding (a fresh, untrained one). ``optional`` keys may be absent."""
    problems = []
    missing = [k for k in expected if k not in state and k not in optional]
    unexpected = [k for k in state if k not in expected]
    if missing:
        problems.append(f"missing keys: {_listing(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_listing(unexpected)}")
    wrong = [
        f"{k} {tuple(state[k].shape)} != {tuple(expected[k])}"
        for k in expected
        if k in state and tuple(state[k].shape) != tuple(expected[k])
    ]
    if wrong:
        problems.append(f"shape mismatches: {_listing(wrong)}")
    for k in state:
        if k.endswith("pos_embed") and k in expected and not torch.count_nonzero(state[k]):
            problems.append(f"{k} is all zeros (an untrained positional embedding)")
    if problems:
        raise CheckpointError(f"{what} does not fit the model: " + "; ".join(problems))


def random_vit_config(**sizes: Any) -> ViTConfig:
    """ViTConfig for random weights: the sizes given (input_size / patch_size as tuples), ViT-B for the rest."""
    for key in ("input_size", "patch_size"):
        if key in sizes:
            sizes[key] = tuple(sizes[key]) if sizes[key] else None
    return ViTConfig(**{k: v for k, v in sizes.items() if v is not None})


T = TypeVar("T", bound="ViTTeacher")


def seeded_random_teacher(make: Callable[[], T], seed: int) -> T:
    """``make()`` under ``seed`` with a random positional embedding: same seed, same weights."""
    with torch.random.fork_rng(devices=[]):  # the global RNG is left alone
        torch.manual_seed(seed)
        teacher = make()
        with torch.no_grad():  # a fresh official wrapper has a zero pos_embed; random weights need one
            teacher.encoder.pos_embed.normal_(0.0, 0.02)
    return teacher


def load_official_checkpoint(
    teacher: ViTTeacher, state: dict[str, torch.Tensor], checkpoint: str | Path
) -> None:
    """Strict-load ``state`` (read from ``checkpoint``) into ``teacher`` and record the file's sha256."""
    teacher.load_official_state_dict(state, what=str(checkpoint))
    teacher.checkpoint_sha256 = sha256_file(checkpoint)


class ViTTeacher(Teacher):
    """audio (B, S) -> (B, steps, grid_f * D) per-time-step embeddings (5 bands x 768 = 3840 for ViT-B).

    mode "precise" (the papers' results) or "fast" (all chunks in one batch, padded to whole chunks)."""

    def __init__(
        self,
        frontend: LogMel,
        vit: ViTConfig,
        mode: str = "precise",
        amp: bool = True,
    ) -> None:
        super().__init__()
        if mode not in ("precise", "fast"):
            raise ValueError(f"inference mode must be 'precise' or 'fast', not {mode!r}")
        if frontend.cfg.n_mels != vit.input_size[0]:
            raise ValueError(
                f"front-end gives {frontend.cfg.n_mels} mels, the ViT expects {vit.input_size[0]}"
            )
        self.frontend = frontend
        self.encoder = ViTEncoder(vit)
        self.mode = mode
        self.amp = amp
        self.sample_rate = frontend.cfg.sample_rate
        self.embed_dim = vit.grid[0] * vit.embed_dim
        self.chunk_seconds = vit.input_size[1] * frontend.cfg.hop_length / frontend.cfg.sample_rate
        self.checkpoint_sha256 = ""

    def load_official_state_dict(self, state: dict[str, torch.Tensor], what: str = "checkpoint") -> None:
        """Strict-load an official state_dict (each subclass knows its key names)."""
        raise NotImplementedError

    def encode_log_mel(
        self, x: torch.Tensor, all_layers: bool = False, mode: str | None = None
    ) -> torch.Tensor:
        """Normalised log-mel (B, F, frames) -> (B, L, steps, grid_f * D), steps of the padded input."""
        use_amp = self.amp and x.device.type == "cuda"
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_amp):
            out = encode_chunks(self.encoder, x, mode or self.mode, all_layers)
        return out.float()

    def _valid_steps(self, frames: int) -> int:
        return -(-frames // self.encoder.cfg.patch_size[1])

    def _prepare(self, audio: torch.Tensor) -> torch.Tensor:  # (B, S) -> normalised log-mel (B, F, frames)
        if audio.dim() != 2:
            raise ValueError(f"audio must be (batch, samples), got shape {tuple(audio.shape)}")
        n_fft = self.frontend.cfg.n_fft
        if audio.shape[-1] < n_fft:  # shorter than one STFT window: zero-pad to one frame
            audio = torch.nn.functional.pad(audio, (0, n_fft - audio.shape[-1]))
        return self.frontend.normalize(self.frontend.log_mel(audio))

    def forward_layers(self, audio: torch.Tensor) -> torch.Tensor:  # (B, S) -> (B, depth, steps, D)
        x = self._prepare(audio)
        return self.encode_log_mel(x, all_layers=True)[:, :, : self._valid_steps(x.shape[-1])]

    def forward(self, audio: torch.Tensor) -> torch.Tensor:  # (B, S) -> (B, steps, D)
        x = self._prepare(audio)
        return self.encode_log_mel(x)[:, 0, : self._valid_steps(x.shape[-1])]

    def describe(self) -> dict[str, Any]:
        c = self.encoder.cfg
        return {
            **super().describe(),
            "checkpoint_sha256": self.checkpoint_sha256,
            "mode": self.mode,
            "frontend": self.frontend.describe(),
            "vit": {
                "embed_dim": c.embed_dim,
                "depth": c.depth,
                "num_heads": c.num_heads,
                "mlp_ratio": c.mlp_ratio,
                "patch_size": list(c.patch_size),
                "input_size": list(c.input_size),
            },
            "step_seconds": c.patch_size[1] * self.frontend.cfg.hop_length / self.sample_rate,
        }
