"""The paper authors' checkpoint format (``.ckpt``, what their ``ssondo.get_ssondo(path)`` loads), both ways.

Their file is a dict ``{training_config, state_dict, ...}`` (a Lightning checkpoint of their distillation
system: their loader reads those two keys only). For a MobileNetV3, DyMN or ERes2Net student, strictly:

    ours (student.pt)                      theirs (.ckpt)
    backbone.*                             state_dict student_model.model.* (same module names)
    head.0 / head.3 (Linear, Hardswish,    state_dict student_model.classification_head.mlp.0 / .3
      Dropout, Linear)                       (same MLP)
    student options, teacher_dim           training_config student_model {model_name, ...} (per family:
                                             ``ssondo_ckpt_students``), classification_head {n_classes, ...}
    frontend (LogMelConfig, samples)       training_config preprocess.logmelspec (seconds) + student_model.sr

What their model computes: audio is cut into ``slice_audio.win_len``-second windows every
``step_size`` seconds, the tail that does not fill a window is dropped (a clip shorter than one window
gives zero segments, which their code does not survive), each window is embedded, and
``get_embeddings`` is the mean of the window embeddings; the output (their ``return_logits``) is the
mean over windows of the MLP's output. Ours embeds the whole clip in one pass. Both agree exactly on a
clip of one window; :func:`sliced` computes their slicing with our model. (Their DyMN takes clips of one
window only: it does not fold the windows into the batch, so two or more raise in their code.)

Settings one side cannot represent are refused, naming the setting (:class:`SsondoCkptError`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from torch import Tensor

from ssondo_cache.logmel import LogMelConfig
from ssondo_cache.provenance import code_version, now_iso, sha256_file
from ssondo_cache.typed_config import to_dict

from .ssondo_ckpt_students import (
    SsondoCkptError,
    StudentMap,
    architecture,
    refuse,
    setting,
    student_map,
    their_family,
)
from .students import build_student

if TYPE_CHECKING:
    from .checkpoint import AudioStudent

FORMAT = "ssondo-ckpt"
PREFIX = "student_model."  # their loader keeps the state_dict keys under it, and strips it
KEY_MAP = (("backbone.", "model."), ("head.", "classification_head.mlp."))  # ours -> theirs, after PREFIX
PROVENANCE_KEY = "ssondo_pipeline"  # what we add to an exported file (their loader ignores it)

# What their LogMelSpectrogram always does (get_ssondo passes it only sr, win/hop seconds, n_mels,
# f_min, f_max): torchaudio's Slaney mel of the periodic-Hann power spectrum, n_fft = win, no centring.
FIXED_FRONTEND = {
    "kind": "logmel",
    "center": False,
    "power": 2.0,
    "preemphasis": 0.0,
    "log_offset": 1e-3,
    "norm_mean": 0.0,
    "norm_std": 1.0,
}
# Their MLP head as our projection: mean pooling over windows, no output activation.
FIXED_HEAD = {"head_type": "mlp", "pooling": "mean", "last_activation": ""}
DROPOUT = 0.2  # their MLPClassifer's default (get_ssondo does not set it)


def is_ssondo_ckpt(obj: Any) -> bool:
    """Whether ``obj`` (what torch.load read) has the shape of their checkpoint."""
    return isinstance(obj, Mapping) and "training_config" in obj and "state_dict" in obj


def _seconds(samples: int, sr: int, what: str) -> float:
    sec = samples / sr
    if int(np.round(sr * sec)) != samples:  # their loader turns seconds back into samples this way
        raise SsondoCkptError(
            f"{what} of {samples} samples at {sr} Hz is not exact in seconds (their format)"
        )
    return sec


# ---------------------------------------------------------------- ours -> theirs


def to_ssondo_ckpt(model: AudioStudent, meta: Mapping[str, Any], slice_seconds: float) -> dict[str, Any]:
    """The checkpoint their ``get_ssondo`` loads strictly for the student ``model`` (as
    ``load_student`` returns it: the projection already speaks the teacher's space, any target
    normalisation folded), slicing audio into ``slice_seconds`` windows."""
    student, fe = model.student, model.frontend.cfg
    name, opts = student.name, student.config()
    family = student_map(getattr(student.backbone, "family", name))
    for key, want in FIXED_FRONTEND.items():
        if getattr(fe, key) != want:
            what = (
                "EfficientAT-style front-end" if key == "kind" and fe.kind == "efficientat" else "front-end"
            )
            raise SsondoCkptError(
                f"{what} {key}={getattr(fe, key)!r}: the ssondo package's log-mel has {key}={want!r}"
            )
    if fe.n_fft != fe.win_length:
        raise SsondoCkptError(
            f"front-end n_fft={fe.n_fft} != win_length={fe.win_length}: the ssondo package's log-mel "
            f"uses n_fft = win length"
        )
    sr = fe.sample_rate
    window = int(slice_seconds * sr)
    if window < fe.n_fft:
        raise SsondoCkptError(f"slice of {slice_seconds:g} s is shorter than one front-end frame")
    state = {}
    for key, value in student.state_dict().items():
        if key == "_extra_state":
            continue  # MobileNetV3 has none (DyMN's temperature lives here)
        ours, theirs = next((o, t) for o, t in KEY_MAP if key.startswith(o))
        state[PREFIX + theirs + key[len(ours) :]] = value.detach().cpu().clone()
    config = {
        "student_model": {"sr": sr, **family.to_theirs(student, fe.n_mels, fe.n_frames(window))},
        "preprocess": {
            "logmelspec": {
                "win_len": _seconds(fe.win_length, sr, "front-end win_length"),
                "hop_len": _seconds(fe.hop_length, sr, "front-end hop_length"),
                "n_mels": fe.n_mels,
                "f_min": fe.f_min,
                "f_max": fe.f_max,
            },
            "slice_audio": {"win_len": float(slice_seconds), "step_size": float(slice_seconds)},
            "normalize": {"mean": 0.0, "std": 1.0},
        },
        "classification_head": {
            **FIXED_HEAD,
            "n_classes": student.teacher_dim,
            "hidden_features_size": int(opts["hidden_dim"]),
            "activation_att": None,
        },
    }
    provenance = {
        "student": opts,
        "frontend": to_dict(fe),
        "teacher_id": meta["teacher_id"],
        "teacher_dim": student.teacher_dim,
        "target_norm_folded": meta.get("target_norm", {"kind": "none"}),
        "code_version": code_version(),
        "created": now_iso(),
    }
    return {"training_config": config, "state_dict": state, PROVENANCE_KEY: provenance}


# ---------------------------------------------------------------- theirs -> ours


def _student_config(
    conf: Mapping[str, Any], family: StudentMap, path: Path, ours: Mapping[str, Any]
) -> dict[str, Any]:
    """Our student options for their config (``ours``: what a file we exported recorded of its student)."""
    for key, want in FIXED_HEAD.items():
        got = setting(conf, f"classification_head.{key}", path)
        if got != want:
            raise refuse(path, f"classification_head.{key}", got, f"our projection head is {key}={want!r}")
    norm = conf.get("preprocess", {}).get("normalize", {"mean": 0.0, "std": 1.0})
    if (norm.get("mean", 0.0), norm.get("std", 1.0)) != (0.0, 1.0):
        raise refuse(path, "preprocess.normalize", norm, "the ssondo package's get_ssondo does not apply it")
    options = family.from_theirs(conf, path, ours)
    name = options.pop("name")
    return {
        "name": name,
        "teacher_dim": int(setting(conf, "classification_head.n_classes", path)),
        **options,
        "hidden_dim": family.hidden_dim(conf, path),  # what their loader builds
        "dropout": DROPOUT,
    }


def _frontend_config(conf: Mapping[str, Any], path: Path) -> dict[str, Any]:
    sr = int(setting(conf, "student_model.sr", path))
    mel = setting(conf, "preprocess.logmelspec", path)
    win = int(np.round(sr * setting(conf, "preprocess.logmelspec.win_len", path)))
    hop_s = mel.get("hop_len")
    hop = win // 2 if hop_s is None else int(np.round(sr * hop_s))  # their LogMelSpectrogram's rules
    f_max = mel.get("f_max")
    cfg = {
        **FIXED_FRONTEND,
        "sample_rate": sr,
        "n_fft": win,
        "win_length": win,
        "hop_length": hop,
        "n_mels": int(setting(conf, "preprocess.logmelspec.n_mels", path)),
        "f_min": float(mel.get("f_min", 0.0)),
        "f_max": float(sr // 2 if f_max is None else f_max),
    }
    try:
        return to_dict(LogMelConfig(**cfg))
    except ValueError as e:
        raise SsondoCkptError(f"{path}: preprocess.logmelspec: {e}") from None


def _state_dict(
    ckpt: Mapping[str, Any], student_cfg: dict[str, Any], extra_state: dict[str, float], path: Path
) -> dict[str, Any]:
    theirs = {k[len(PREFIX) :]: v for k, v in ckpt["state_dict"].items() if k.startswith(PREFIX)}
    state: dict[str, Any] = {}
    foreign = []
    for key, value in theirs.items():
        hit = next(((o, t) for o, t in KEY_MAP if key.startswith(t)), None)
        if hit is None:
            foreign.append(key)
            continue
        state[hit[0] + key[len(hit[1]) :]] = value
    cfg = dict(student_cfg)
    want = build_student(cfg.pop("name"), cfg.pop("teacher_dim"), **cfg).state_dict()
    if "_extra_state" in want:
        state["_extra_state"] = extra_state
    missing, unexpected = sorted(set(want) - set(state)), sorted(set(state) - set(want))
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(want[k].shape)}" for k in want if k in state and
              isinstance(want[k], Tensor) and state[k].shape != want[k].shape]  # fmt: skip
    problems = [
        f"{what}: {', '.join(keys[:4])}{' ...' if len(keys) > 4 else ''}"
        for what, keys in (
            ("not a key of ours", foreign),
            ("missing", missing),
            ("unexpected", unexpected),
            ("shape", shapes),
        )
        if keys
    ]
    if problems:
        raise SsondoCkptError(f"{path}: state_dict does not fit {student_cfg['name']}: {'; '.join(problems)}")
    return state


def student_payload(ckpt: Mapping[str, Any], path: str | Path) -> dict[str, Any]:
    """Their checkpoint as our student.pt payload (``checkpoint.load_student`` reads it as its own)."""
    path = Path(path)
    conf = ckpt["training_config"]
    ours = ckpt.get(PROVENANCE_KEY, {})  # a file we exported: its teacher is known
    model_name = str(setting(conf, "student_model.model_name", path))
    family = student_map(their_family(model_name))  # their loader's own dispatch
    student = _student_config(conf, family, path, ours.get("student", {}))
    frontend = _frontend_config(conf, path)
    state = _state_dict(ckpt, student, family.extra_state(conf, path), path)
    slice_audio = conf.get("preprocess", {}).get("slice_audio")
    return {
        "format": "ssondo-student",
        "version": 2,
        "student": student,
        "frontend": frontend,
        "teacher_id": ours.get("teacher_id", f"ssondo-ckpt-{sha256_file(path)[:12]}"),
        "teacher_dim": student["teacher_dim"],
        "backbone_dim": state["head.0.weight"].shape[1],
        "state_dict": state,
        "target_norm": {"kind": "none"},  # their output is the teacher-space vector already
        "init_info": {},
        "extra": {
            FORMAT: {
                "path": str(path),
                "model_name": model_name,
                "family": family.family,
                "slice_audio": dict(slice_audio) if isinstance(slice_audio, Mapping) else None,
                "target_norm_folded": ours.get("target_norm_folded"),
            }
        },
        "code_version": ours.get("code_version"),
        "created": ours.get("created"),
    }


# ---------------------------------------------------------------- their slicing, and their package


def sliced(fn: Callable[[Tensor], Tensor], audio: Tensor, window: int, step: int) -> Tensor:
    """``fn`` as their wrapper applies it: mean over the whole ``window``-sample windows of ``audio``
    (B, S) every ``step`` samples, the tail dropped. (B, S) -> (B, D)."""
    b, n_samples = audio.shape
    n = 1 + (n_samples - window) // step
    if n < 1:
        raise ValueError(
            f"audio of {n_samples} samples is shorter than one {window}-sample window: "
            f"the ssondo package gives it no segment"
        )
    segments = audio.unfold(1, window, step)[:, :n]  # (B, n, window)
    return fn(segments.reshape(b * n, window)).reshape(b, n, -1).mean(dim=1)


__all__ = [
    "FORMAT",
    "SsondoCkptError",
    "architecture",
    "is_ssondo_ckpt",
    "sliced",
    "student_payload",
    "to_ssondo_ckpt",
]
