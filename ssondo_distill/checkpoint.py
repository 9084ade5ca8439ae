"""The student checkpoint: one file a user can deploy.

``{format, version, student (build_student args), frontend (LogMelConfig), teacher_id,
teacher_dim, backbone_dim, state_dict, target_norm, init_info, extra, code_version, created}``,
written atomically with torch.save and read back with ``torch.load(weights_only=True)`` (plain
containers and tensors only: no pickled code runs on load).

The projection always speaks the teacher's space: a student trained on normalised targets
(target_norm center / standardize) is saved with the normalisation folded into the head's last
Linear (``fold_target_norm``), and ``target_norm`` records what was folded. Version 1 files
kept it unfolded in ``extra.target_norm``: they are folded when loaded.

``load_student`` / ``read_meta`` also read the paper authors' ``ssondo`` package checkpoints
(``.ckpt``, mapped strictly by ``ssondo_ckpt``), so every stage that takes a student takes those.
"""

from __future__ import annotations

import dataclasses
import io
import json
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ssondo_cache.atomic import write_bytes
from ssondo_cache.errors import SsondoError, UnsafeFileError, writing
from ssondo_cache.provenance import code_version, now_iso
from ssondo_cache.typed_config import to_dict

from . import ssondo_ckpt
from .frontend import LogMelConfig, StudentFrontEnd
from .students import Student, build_student

FORMAT = "ssondo-student"
VERSION = 2  # 2: target_norm folded into the projection (1: unfolded, folded on load)
READABLE = (1, 2)


class CheckpointMismatch(ValueError):
    """A checkpoint that does not belong where it is being loaded."""


def write_torch(payload: Any, path: Path, what: str, resume: str = "run the same command again") -> None:
    """torch.save ``payload`` to ``path`` atomically. Serialised in memory first: torch's own file
    writer reports a full disk as "unexpected pos" (no errno, no file name), a Python write as ENOSPC."""
    buf = io.BytesIO()
    torch.save(payload, buf)
    with writing(path, what, resume):
        write_bytes(path, buf.getvalue())


_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")


def read_torch(path: Path, what: str, fix: str, map_location: Any = "cpu") -> Any:
    """torch.load with weights_only=True, its refusals as one line naming ``path``. The unpickler's
    own advice (weights_only=False) would run whatever code the file holds: never given."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        if not zipfile.is_zipfile(path):  # torch.save writes zip archives: these bytes are no checkpoint
            raise SsondoError(
                f"cannot read {what} {path}: truncated or damaged (not a torch zip archive); {fix}"
            ) from None
        found = _GLOBAL.search(str(err))
        holds = f"a reference to {found.group(1)}" if found else "objects other than tensors and plain data"
        raise UnsafeFileError(
            f"refused to load {what} {path}: it holds {holds}, and unpickling it could run code; "
            f"ssondo never writes such files, so it is not one of ours or was altered: {fix}"
        ) from None
    except (RuntimeError, KeyError, EOFError, ValueError) as err:  # not a zip, truncated, damaged
        reason = str(err).split(".")[0][:120]
        raise SsondoError(
            f"cannot read {what} {path}: truncated or damaged ({type(err).__name__}: {reason}); {fix}"
        ) from None


class AudioStudent(nn.Module):
    """Front-end + student: audio (B, S) at ``sample_rate`` -> (B, teacher_dim) / (B, backbone_dim)."""

    def __init__(self, frontend: StudentFrontEnd, student: Student) -> None:
        super().__init__()
        self.frontend = frontend
        self.student = student
        self.sample_rate = frontend.sample_rate
        self.teacher_dim = student.teacher_dim
        self.backbone_dim = student.backbone_dim

    def forward(self, audio: Tensor) -> Tensor:  # (B, S) -> (B, teacher_dim)
        return self.student(self.frontend(audio))

    def embed(self, audio: Tensor) -> Tensor:  # (B, S) -> (B, backbone_dim)
        return self.student.embed(self.frontend(audio))


def _frontend_dict(frontend_cfg: LogMelConfig | StudentFrontEnd | dict[str, Any]) -> dict[str, Any]:
    if isinstance(frontend_cfg, StudentFrontEnd):
        return frontend_cfg.config()
    if dataclasses.is_dataclass(frontend_cfg):
        return to_dict(frontend_cfg)
    return StudentFrontEnd(**frontend_cfg).config()  # validates, fills defaults


def fold_target_norm(
    state_dict: dict[str, Any], student: Student, target_norm: dict[str, Any] | None
) -> dict[str, Any]:
    """``state_dict`` of ``student`` with ``target_norm`` ({kind, mean (D,), std (D,)}, as the
    trainer records it) folded into the head's last Linear, y = W h + b -> std * y + mean:
    W' = diag(std) W, b' = std * b + mean. kind none (or no target_norm): unchanged."""
    if target_norm is None or target_norm.get("kind", "none") == "none":
        return state_dict
    last = f"head.{len(student.head) - 1}"
    weight, bias = state_dict[f"{last}.weight"], state_dict[f"{last}.bias"]  # (D, H), (D,)
    mean = torch.as_tensor(target_norm["mean"], dtype=torch.float64)
    std = torch.as_tensor(target_norm["std"], dtype=torch.float64)
    if mean.shape != bias.shape or std.shape != bias.shape:
        raise CheckpointMismatch(
            f"target_norm has {tuple(mean.shape)} / {tuple(std.shape)} statistics for a {tuple(bias.shape)} projection"
        )
    folded = dict(state_dict)
    folded[f"{last}.weight"] = (std[:, None] * weight.double()).to(weight.dtype)
    folded[f"{last}.bias"] = (std * bias.double() + mean).to(bias.dtype)
    return folded


def save_student(
    path: str | Path,
    student: Student,
    frontend_cfg: LogMelConfig | StudentFrontEnd | dict[str, Any],
    teacher_id: str,
    teacher_dim: int,
    extra: dict[str, Any] | None = None,
    target_norm: dict[str, Any] | None = None,
) -> Path:
    """Write ``student`` (weights + rebuild config), its front-end and its teacher to ``path``;
    ``target_norm`` (the statistics the student's targets were normalised with) is folded into
    the projection, which then outputs teacher-space vectors."""
    if teacher_dim != student.teacher_dim:
        raise CheckpointMismatch(
            f"student {student.name!r} projects to {student.teacher_dim} dims, "
            f"but teacher {teacher_id!r} has {teacher_dim}"
        )
    extra = dict(extra or {})
    try:  # plain data only: weights_only loading refuses anything else
        json.dumps(extra, allow_nan=True)
    except TypeError as e:
        raise ValueError(f"checkpoint extra must be JSON-like plain data: {e}") from None
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "student": student.config(),
        "frontend": _frontend_dict(frontend_cfg),
        "teacher_id": str(teacher_id),
        "teacher_dim": int(teacher_dim),
        "backbone_dim": student.backbone_dim,
        "state_dict": fold_target_norm(
            {k: v.detach().cpu() if isinstance(v, Tensor) else v for k, v in student.state_dict().items()},
            student,
            target_norm,
        ),
        "target_norm": json.loads(json.dumps(target_norm or {"kind": "none"})),
        "init_info": json.loads(json.dumps(student.init_info)),
        "extra": extra,
        "code_version": code_version(),
        "created": now_iso(),
    }
    path = Path(path)
    write_torch(payload, path, "the student checkpoint")
    return path


def read_meta(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Everything in the checkpoint but the weights."""
    ckpt = _read(path, map_location)
    return {k: v for k, v in ckpt.items() if k != "state_dict"}


def _read(path: str | Path, map_location: str | torch.device) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no student checkpoint at {path}")
    fix = "use a student.pt written by `ssondo train` (or train it again), or an ssondo-package .ckpt"
    ckpt = read_torch(path, "the student checkpoint", fix, map_location)
    if isinstance(ckpt, dict) and "format" not in ckpt and ssondo_ckpt.is_ssondo_ckpt(ckpt):
        ckpt = ssondo_ckpt.student_payload(ckpt, path)  # the paper authors' package's .ckpt
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointMismatch(
            f"{path} is not an ssondo student checkpoint (format "
            f"{ckpt.get('format') if isinstance(ckpt, dict) else type(ckpt).__name__!r})"
        )
    if ckpt.get("version") not in READABLE:
        raise CheckpointMismatch(
            f"{path}: checkpoint version {ckpt.get('version')}, this code reads {READABLE}"
        )
    return ckpt


def load_student(
    path: str | Path,
    expect_student: str | None = None,
    expect_teacher_dim: int | None = None,
    map_location: str | torch.device = "cpu",
) -> tuple[AudioStudent, dict[str, Any]]:
    """Rebuild the student of ``path`` with its front-end, weights loaded strictly, in eval mode.

    ``expect_student`` / ``expect_teacher_dim``: refuse (CheckpointMismatch naming both sides)
    a checkpoint of another student or trained for another teacher dimension.
    """
    ckpt = _read(path, map_location)
    cfg = dict(ckpt["student"])
    name, teacher_dim = cfg.pop("name"), cfg.pop("teacher_dim")
    if expect_student is not None and expect_student != name:
        raise CheckpointMismatch(f"{path} holds student {name!r}, but {expect_student!r} was expected")
    if expect_teacher_dim is not None and int(expect_teacher_dim) != int(teacher_dim):
        raise CheckpointMismatch(
            f"{path} was trained for a {teacher_dim}-d teacher ({ckpt['teacher_id']}), "
            f"but a {expect_teacher_dim}-d teacher was expected"
        )
    student = build_student(name, teacher_dim, **cfg)
    state = ckpt["state_dict"]
    if ckpt["version"] == 1:  # the projection was saved in the normalised space
        ckpt["target_norm"] = ckpt.get("extra", {}).get("target_norm", {"kind": "none"})
        state = fold_target_norm(state, student, ckpt["target_norm"])
    student.load_state_dict(state, strict=True)
    student.init_info = ckpt.get("init_info", {})
    model = AudioStudent(StudentFrontEnd(**ckpt["frontend"]), student).to(map_location).eval()
    return model, {k: v for k, v in ckpt.items() if k != "state_dict"}


def source_record(meta: dict[str, Any], path: Path, sha256: str) -> dict[str, Any]:
    """What an export's JSON says of the student.pt it came from (``meta``: ``read_meta`` / ``load_student``)."""
    return {
        "student": meta["student"],
        "frontend": meta["frontend"],
        "teacher_id": meta["teacher_id"],
        "teacher_dim": meta["teacher_dim"],
        "backbone_dim": meta["backbone_dim"],
        "checkpoint": {
            "path": str(path.resolve()),
            "sha256": sha256,
            "code_version": meta.get("code_version"),
            "created": meta.get("created"),
            "extra": meta.get("extra", {}),
        },
    }
