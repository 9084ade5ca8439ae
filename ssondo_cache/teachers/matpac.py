"""MATPAC++ (aurianworld/matpac, ``inference_matpac``) as a teacher.

Official checkpoints (e.g. ``matpac_plus_6s_2048_enconly.pt``) are flat state_dicts of the official
``matpac_wrapper``: ``cls_token``, ``pos_embed``, ``patch_embed.proj.*``, ``student_encoder.blocks.*``,
``student_encoder.norm.*`` and, possibly, the two torchaudio front-end buffers
(``log_mel.MelSpectrogram.spectrogram.window`` and ``...mel_scale.fb``) which, when present, must equal
the front-end computed here. Output per time step (160 ms): the 5 frequency-band tokens of the last
layer after the final norm, concatenated (5 x 768 = 3840)."""

from __future__ import annotations

from pathlib import Path

import torch

from ssondo_cache.logmel import build_logmel
from ssondo_cache.teachers.base import make_teacher_id, state_dict_sha256
from ssondo_cache.teachers.frontends import MATPAC_FRONTEND
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

WINDOW_KEY = "log_mel.MelSpectrogram.spectrogram.window"
FB_KEY = "log_mel.MelSpectrogram.mel_scale.fb"
ENCODER_PREFIX = "student_encoder."


def to_official_key(key: str) -> str:
    """Our encoder's key -> the official matpac_wrapper key."""
    return ENCODER_PREFIX + key if key.startswith(("blocks.", "norm.")) else key


class MatpacTeacher(ViTTeacher):
    def __init__(self, vit: ViTConfig, mode: str = "precise", amp: bool = True) -> None:
        super().__init__(build_logmel(MATPAC_FRONTEND), vit, mode=mode, amp=amp)
        self.name = "matpac"

    def official_layout(self) -> dict[str, torch.Size]:
        """{official key: shape} this model expects, front-end buffers included."""
        layout = {to_official_key(k): v.shape for k, v in self.encoder.state_dict().items()}
        layout[WINDOW_KEY] = self.frontend.window.shape
        layout[FB_KEY] = self.frontend.banks.T.shape  # torchaudio keeps (n_fft//2+1, n_mels)
        return layout

    def load_official_state_dict(self, state: dict[str, torch.Tensor], what: str = "checkpoint") -> None:
        """Strict: every encoder key present with its shape, nothing else; buffers optional but checked."""
        check_state_dict(self.official_layout(), state, optional={WINDOW_KEY, FB_KEY}, what=what)
        for key, ours in ((WINDOW_KEY, self.frontend.window), (FB_KEY, self.frontend.banks.T)):
            if key in state and not torch.allclose(state[key].float(), ours.cpu(), rtol=1e-4, atol=1e-6):
                raise CheckpointError(
                    f"{what}: {key} differs from the MATPAC front-end (another mel configuration?)"
                )
        encoder_state = {k: state[to_official_key(k)] for k in self.encoder.state_dict()}
        self.encoder.load_state_dict(encoder_state, strict=True)


def build_matpac(
    checkpoint: str | Path | None = None,
    mode: str = "precise",
    amp: bool = True,
    random_init: bool = False,
    seed: int = 0,
    trust_checkpoint: bool = False,
    embed_dim: int | None = None,
    depth: int | None = None,
    num_heads: int | None = None,
    mlp_ratio: float | None = None,
    input_size: tuple[int, int] | None = None,
) -> MatpacTeacher:
    """MATPAC++ from an official checkpoint (architecture read from its shapes; explicit sizes override),
    or with random weights (``random_init=True``, for benchmarks and tests: sizes default to ViT-B)."""
    if checkpoint is None:
        if not random_init:
            raise ValueError(
                "matpac needs a checkpoint (official file, e.g. matpac_plus_6s_2048_enconly.pt); "
                "pass random_init=True for random weights"
            )
        vit = random_vit_config(
            embed_dim=embed_dim, depth=depth, num_heads=num_heads, mlp_ratio=mlp_ratio, input_size=input_size
        )
        teacher = seeded_random_teacher(lambda: MatpacTeacher(vit, mode=mode, amp=amp), seed)
        digest = output_digest(state_dict_sha256(teacher), mode=None if mode == "precise" else mode)
        teacher.teacher_id = make_teacher_id("matpac-random", digest)
        return teacher
    state = load_checkpoint_file(checkpoint, trust_checkpoint)
    vit = infer_vit_config(
        state,
        ENCODER_PREFIX + "blocks.",
        n_mels=MATPAC_FRONTEND.n_mels,
        num_heads=num_heads,
        embed_dim=embed_dim,
        depth=depth,
        mlp_ratio=mlp_ratio,
        input_size=input_size,
    )
    teacher = MatpacTeacher(vit, mode=mode, amp=amp)
    load_official_checkpoint(teacher, state, checkpoint)
    digest = output_digest(teacher.checkpoint_sha256, mode=None if mode == "precise" else mode)
    teacher.teacher_id = make_teacher_id("matpac", digest)
    return teacher
