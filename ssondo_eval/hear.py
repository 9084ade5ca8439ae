"""HEAR API for trained students, so any ``student.pt`` drops into hear-eval-kit.

    import ssondo_eval.hear as hear
    model = hear.load_model("runs/mn/student.pt")          # a RUN folder works too; "" reads $SSONDO_STUDENT
    scene = hear.get_scene_embeddings(audio, model)          # audio (n, samples) at model.sample_rate
    emb, ts = hear.get_timestamp_embeddings(audio, model)    # (n, T, D), (n, T) milliseconds

Scene embedding: the student's backbone embedding of each ``scene_window_s`` (10 s, the training input
length) window, averaged. A clip no longer than the window is embedded whole (zero-padded only up to
1 s, not to 10 s); a longer one is cut at 0, 10, 20 s ... with the last window ending at the clip's
end (``ssondo_eval.embedders.student_windows``: the same cut ``ssondo eval`` uses for students).

Timestamp embeddings: the backbone embedding of a ``timestamp_window_s`` (1 s) window centred on
each timestamp; timestamps every ``timestamp_hop_s`` (50 ms, the HEAR suggestion) from 0 to the end of
the clip, the audio zero-padded by half a window on both sides so the windows stay centred.
Timestamps are computed as ``k * hop`` in float (no rounded hop accumulating drift).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch
from torch import nn

SCENE_WINDOW_S = 10.0
TIMESTAMP_WINDOW_S = 1.0
TIMESTAMP_HOP_S = 0.05
MAX_BATCH = 64  # windows per forward
STUDENT_ENV = "SSONDO_STUDENT"  # the student load_model("") takes


class HearStudent(nn.Module):
    def __init__(self, student: nn.Module, meta: dict) -> None:
        super().__init__()
        self.student = student.eval()
        self.meta = meta
        self.sample_rate = int(student.sample_rate)
        self.scene_window_s = SCENE_WINDOW_S
        self.timestamp_window_s = TIMESTAMP_WINDOW_S
        self.timestamp_hop_s = TIMESTAMP_HOP_S
        with torch.inference_mode():  # the backbone width, measured rather than trusted from metadata
            dim = student.embed(torch.zeros(1, self.sample_rate)).shape[-1]
        self.scene_embedding_size = int(dim)
        self.timestamp_embedding_size = int(dim)

    def embed_windows(self, windows: torch.Tensor) -> torch.Tensor:
        """(n, win) -> (n, D) float32, in batches of MAX_BATCH."""
        return torch.cat(
            [
                self.student.embed(windows[i : i + MAX_BATCH]).float()
                for i in range(0, len(windows), MAX_BATCH)
            ]
        )


def load_model(model_file_path: str = "") -> HearStudent:
    """A student checkpoint (``student.pt``, or the RUN folder holding it) as a HEAR model.

    An empty path (what HEAR tools pass for a model that needs no file, e.g. ``hear-validator
    ssondo_eval.hear`` without ``--model``) takes the student from the environment variable
    ``SSONDO_STUDENT``."""
    from ssondo_distill.checkpoint import load_student

    given = model_file_path or os.environ.get(STUDENT_ENV, "")
    if not given:
        raise ValueError(
            "ssondo_eval.hear.load_model: no student given: pass the path of a student.pt (or of its "
            f"RUN folder), or set {STUDENT_ENV}=PATH for callers that pass an empty path "
            f"(e.g. {STUDENT_ENV}=runs/mn/student.pt hear-validator ssondo_eval.hear)"
        )
    source = "" if model_file_path else f" (from {STUDENT_ENV})"
    path = Path(given)
    path = path / "student.pt" if path.is_dir() else path
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}{source}: no student checkpoint there (a student.pt or its RUN folder)"
        )
    student, meta = load_student(path, map_location="cpu")
    return HearStudent(student, meta)


def _as_batch(audio: torch.Tensor, model: HearStudent) -> torch.Tensor:
    if not isinstance(audio, torch.Tensor) or audio.dim() != 2:
        raise ValueError(
            f"audio must be a (n_sounds, n_samples) tensor, got {getattr(audio, 'shape', type(audio))}"
        )
    device = next(model.parameters()).device
    return audio.to(device=device, dtype=torch.float32)


@torch.inference_mode()
def get_scene_embeddings(audio: torch.Tensor, model: HearStudent) -> torch.Tensor:
    """(n_sounds, n_samples) -> (n_sounds, scene_embedding_size) float32."""
    from ssondo_eval.embedders import MIN_STUDENT_SECONDS, student_windows

    audio = _as_batch(audio, model)
    win, min_len = (
        round(model.scene_window_s * model.sample_rate),
        round(MIN_STUDENT_SECONDS * model.sample_rate),
    )
    windows = torch.stack([student_windows(a, win, min_len) for a in audio])  # (n, W, L): same S, same cut
    emb = model.embed_windows(windows.reshape(-1, windows.shape[-1]))  # (n * W, D)
    return emb.reshape(audio.shape[0], windows.shape[1], -1).mean(dim=1)


@torch.inference_mode()
def get_timestamp_embeddings(audio: torch.Tensor, model: HearStudent) -> tuple[torch.Tensor, torch.Tensor]:
    """(n_sounds, n_samples) -> ((n_sounds, T, D) float32 embeddings, (n_sounds, T) timestamps in ms)."""
    audio = _as_batch(audio, model)
    n, length = audio.shape
    sr = model.sample_rate
    win = round(model.timestamp_window_s * sr)
    half = win // 2
    # centres 0, hop, 2 hop, ... up to the end of the clip (epsilon: 4.0 s / 0.05 s must give 80, not 79.999)
    n_frames = math.floor(length / sr / model.timestamp_hop_s + 1e-9) + 1
    centres_s = torch.arange(n_frames, dtype=torch.float64) * model.timestamp_hop_s
    starts = torch.round(centres_s * sr).long()  # window k covers [c_k - half, c_k - half + win) in the clip
    padded = nn.functional.pad(audio, (half, win - half))
    offsets = torch.arange(win, device=audio.device)
    starts = starts.to(audio.device)
    step = max(1, MAX_BATCH // n)  # frames per forward: long audio is never cut into all its windows at once
    parts = []
    for f in range(0, n_frames, step):
        idx = starts[f : f + step, None] + offsets[None, :]  # (t, win) into the padded audio
        windows = padded[:, idx]  # (n, t, win)
        parts.append(model.embed_windows(windows.reshape(-1, win)).reshape(n, idx.shape[0], -1))
    emb = torch.cat(parts, dim=1)  # (n, T, D)
    timestamps = (centres_s * 1000.0).to(torch.float32).to(audio.device).expand(n, n_frames)
    return emb, timestamps.contiguous()
