"""The projection head into the teacher's space, and the ``Student`` = backbone + head."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn


class ProjectionHead(nn.Sequential):
    """(B, backbone_dim) -> Linear -> Hardswish -> Dropout -> Linear -> (B, teacher_dim).

    The paper's MLP (960 -> 1280 -> D for mn10); the same shape as EfficientAT's classifier
    minus its pooling, so a 527-class AudioSet head and a D-dim teacher head look alike. The
    MobileNetV3 students default ``hidden_dim`` to EfficientAT's ``last_channel`` (384 -> 512 for
    mn04, 480 -> 640 for mn05), which is also what the paper authors' ``ssondo`` package builds.
    """

    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int = 1280, dropout: float = 0.2) -> None:
        super().__init__(
            nn.Linear(in_dim, hidden_dim),
            nn.Hardswish(),
            nn.Dropout(dropout),
            nn.Linear(hidden_dim, out_dim),
        )


class Student(nn.Module):
    """A student: mel (B, 1, F, T) -> backbone embedding (B, backbone_dim) -> head (B, teacher_dim).

    ``backbone`` must offer ``embed(mel) -> (B, out_dim)`` and ``out_dim``; it may offer
    ``set_epoch(epoch)`` (a training-time schedule, DyMN's attention temperature) and
    ``temperature`` / ``set_temperature`` (state that is saved with the weights).
    """

    def __init__(
        self,
        name: str,
        backbone: nn.Module,
        teacher_dim: int,
        options: dict[str, Any],
        hidden_dim: int = 1280,
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        if teacher_dim < 1:
            raise ValueError(f"teacher_dim must be positive, got {teacher_dim}")
        self.name = name
        self.backbone = backbone
        self.backbone_dim: int = backbone.out_dim
        self.teacher_dim = int(teacher_dim)
        self.head = ProjectionHead(self.backbone_dim, self.teacher_dim, hidden_dim, dropout)
        self._options = dict(options)
        self.init_info: dict[str, Any] = {}  # where initial weights came from (not a rebuild arg)

    def _check(self, mel: Tensor) -> None:
        if mel.ndim != 4 or mel.shape[1] != 1:
            raise ValueError(f"student {self.name!r} expects mel (B, 1, F, T), got {tuple(mel.shape)}")

    def embed(self, mel: Tensor) -> Tensor:  # (B, 1, F, T) -> (B, backbone_dim)
        self._check(mel)
        return self.backbone.embed(mel)

    def forward(self, mel: Tensor) -> Tensor:  # (B, 1, F, T) -> (B, teacher_dim)
        return self.head(self.embed(mel))

    def config(self) -> dict[str, Any]:
        """Arguments that rebuild this student: ``build_student(**config())``."""
        return {"name": self.name, "teacher_dim": self.teacher_dim, **self._options}

    def set_step(self, step: int, steps_per_epoch: int) -> None:
        """Called by the trainer every optimisation step: advances training-time schedules
        (DyMN's kernel-attention temperature); a no-op for students without one."""
        if steps_per_epoch < 1:
            raise ValueError(f"steps_per_epoch must be positive, got {steps_per_epoch}")
        set_epoch = getattr(self.backbone, "set_epoch", None)
        if set_epoch is not None:
            set_epoch(step / steps_per_epoch)

    # DyMN's temperature is state the weights depend on: it travels in the state_dict.
    def get_extra_state(self) -> dict[str, float]:
        t = getattr(self.backbone, "temperature", None)
        return {} if t is None else {"temperature": float(t)}

    def set_extra_state(self, state: dict[str, float]) -> None:
        if "temperature" in state:
            self.backbone.set_temperature(state["temperature"])
