"""Starting weights for a student from a file another tool wrote (``ssondo train --init PATH``).

Each format in ``INIT_FORMATS`` is a class with ``detect(obj) -> bool`` (does the object
``torch.load`` read from the file look like this format) and ``load(student, obj, path) -> Loaded``
(put its weights into the student, strictly; say which keys were set and which were left out on
purpose). :func:`apply_init` reads the file once, picks the one format that claims it, loads, and
records ``{init, format, sha256, loaded, dropped_keys}`` in ``student.init_info`` (it travels in
``student.pt``, so a later stage can rebuild the same start). Anything that does not fit is one
line naming the file and the keys: never a partial load.

Formats: ``efficientat`` (``mn10_im.pt``, ``mn10_as.pt``, ``dymn10_as.pt``...: EfficientAT's plain
state dicts; the backbone loads strictly, the 527-class classifier is dropped).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from torch import Tensor

from ssondo_cache.provenance import sha256_file
from ssondo_cache.registry import Registry
from ssondo_distill import ssondo_ckpt
from ssondo_distill.checkpoint import read_torch
from ssondo_distill.students.head import Student
from ssondo_distill.students.mobilenetv3 import (
    EFFICIENTAT_CLASSIFIER_PREFIX,
    load_efficientat_state_dict,
    make_divisible,
)

log = logging.getLogger(__name__)


class InitMismatch(ValueError):
    """A starting-weights file that does not fit the student (one line, naming the file)."""


@dataclass
class Loaded:
    loaded: list[str]  # student state_dict keys set from the file
    dropped: list[str] = field(default_factory=list)  # file keys left out on purpose (a classifier)
    note: str = ""  # what the format wants the user to know (shown in the log line)


@dataclass
class InitReport:
    path: str
    format: str
    sha256: str
    loaded: list[str]
    dropped: list[str]
    note: str = ""

    def record(self) -> dict[str, Any]:
        """JSON-plain: ``student.init_info`` and the run's config.json."""
        return {
            "init": self.path,
            "format": self.format,
            "sha256": self.sha256,
            "loaded": len(self.loaded),
            "dropped_keys": list(self.dropped),
            "note": self.note,
        }

    def summary(self) -> str:
        return describe_init(self.record())


def describe_init(record: dict[str, Any]) -> str:
    """One line for an :meth:`InitReport.record` (the log line, the train summary)."""
    dropped = record["dropped_keys"]
    dropped = f"; dropped {len(dropped)} key(s): {_names(dropped)}" if dropped else ""
    note = f" ({record['note']})" if record.get("note") else ""
    return f"started from {record['init']} ({record['format']}): {record['loaded']} tensors loaded{dropped}{note}"


class InitFormat(Protocol):
    def detect(self, obj: Any) -> bool: ...

    def load(self, student: Student, obj: Any, path: Path) -> Loaded: ...


INIT_FORMATS: Registry[InitFormat] = Registry("init format")


def _names(keys: list[str], limit: int = 6) -> str:
    more = f" (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def read_init_file(path: str | Path) -> Any:
    """The object in a starting-weights file (plain containers and tensors only: never a pickle
    that could run code)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such starting-weights file (--init)")
    return read_torch(path, "the starting weights", "give another --init file")


def detect_format(obj: Any, path: str | Path) -> str:
    """The one registered format that claims ``obj``; an error naming the file otherwise."""
    claims = [name for name in INIT_FORMATS if INIT_FORMATS.build(name).detect(obj)]
    if len(claims) == 1:
        return claims[0]
    if not claims:
        raise InitMismatch(
            f"{path}: not a known starting-weights format (known: {', '.join(INIT_FORMATS.names())})"
        )
    raise InitMismatch(f"{path}: ambiguous starting-weights file, claimed by {', '.join(claims)}")


def apply_init(student: Student, path: str | Path) -> InitReport:
    """Load the weights of ``path`` into ``student`` (format detected); sets ``student.init_info``."""
    path = Path(path).resolve()
    obj = read_init_file(path)
    name = detect_format(obj, path)
    got = INIT_FORMATS.build(name).load(student, obj, path)
    report = InitReport(str(path), name, sha256_file(path), got.loaded, got.dropped, got.note)
    student.init_info = report.record()
    log.info("%s", report.summary())
    return report


# ---------------------------------------------------------------- EfficientAT


def _plain_state(obj: Any) -> Mapping[str, Tensor] | None:
    """A flat {str: Tensor} mapping (optionally under ``"model"``), else None."""
    if isinstance(obj, Mapping) and "model" in obj and isinstance(obj["model"], Mapping):
        obj = obj["model"]
    if not isinstance(obj, Mapping) or not obj:
        return None
    if not all(isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items()):
        return None
    return obj


# EfficientAT's model families: the key of the first conv, the key of the last (6 x last width) conv
_EFFICIENTAT_FAMILIES = {
    "mobilenetv3": ("features.0.0.weight", "features.16.0.weight"),
    "dymn": ("in_c.0.weight", "out_c.0.weight"),
}
# EfficientAT's published widths (mn01 ... mn40, dymn04 / dymn10 / dymn20)
_EFFICIENTAT_WIDTHS = (0.1, 0.2, 0.4, 0.5, 0.6, 1.0, 2.0, 3.0, 4.0)


def _file_family(state: Mapping[str, Tensor]) -> str | None:
    for family, (first, last) in _EFFICIENTAT_FAMILIES.items():
        if first in state and last in state:
            return family
    return None


def _width_of(state: Mapping[str, Tensor], family: str) -> str:
    dim = state[_EFFICIENTAT_FAMILIES[family][1]].shape[0]  # 6 * make_divisible(160 * width)
    widths = [w for w in _EFFICIENTAT_WIDTHS if 6 * make_divisible(160 * w) == dim]
    return f"width_mult {widths[0]} ({dim}-d)" if widths else f"a {dim}-d embedding"


@INIT_FORMATS.register("efficientat")
class EfficientATFormat:
    """EfficientAT's ``mn*`` / ``dymn*`` checkpoints: their ``features.*`` (or ``in_c``/``layers``/
    ``out_c``) keys are our backbone's; ``classifier.*`` (the 527-class MLP) is dropped."""

    def detect(self, obj: Any) -> bool:
        state = _plain_state(obj)
        return state is not None and _file_family(state) is not None

    def load(self, student: Student, obj: Any, path: Path) -> Loaded:
        state = _plain_state(obj)
        assert state is not None  # detect() said so
        file_family = _file_family(state)
        family = getattr(student.backbone, "family", student.name)
        if family not in _EFFICIENTAT_FAMILIES:
            raise InitMismatch(
                f"{path}: EfficientAT weights start a MobileNetV3 or DyMN student, not {student.name!r}"
            )
        width = student.config().get("width_mult")
        if file_family != family:
            raise InitMismatch(
                f"{path}: EfficientAT {file_family} weights ({_width_of(state, file_family)}) cannot start "
                f"student {student.name!r} ({family}, width_mult {width})"
            )
        want = student.backbone.state_dict()
        kept = {k: v for k, v in state.items() if not k.startswith(EFFICIENTAT_CLASSIFIER_PREFIX)}
        missing = sorted(set(want) - set(kept))
        unexpected = sorted(set(kept) - set(want))
        shapes = [
            f"{k} {tuple(kept[k].shape)} vs {tuple(want[k].shape)}"
            for k in sorted(set(kept) & set(want))
            if kept[k].shape != want[k].shape
        ]
        problems = [
            f"{len(missing)} missing: {_names(missing)}" if missing else "",
            f"{len(unexpected)} unexpected: {_names(unexpected)}" if unexpected else "",
            f"{len(shapes)} of another shape (file vs student): {_names(shapes, 3)}" if shapes else "",
        ]
        if any(problems):
            raise InitMismatch(
                f"{path}: EfficientAT {file_family} weights ({_width_of(state, file_family)}) do not fit student "
                f"{student.name!r} (width_mult {width}, {student.backbone_dim}-d): "
                + "; ".join(p for p in problems if p)
            )
        dropped = load_efficientat_state_dict(student.backbone, state)
        notes = (
            ["classifier dropped: the projection head starts from its own initialisation"] if dropped else []
        )
        t_max = getattr(getattr(student.backbone, "schedule", None), "t_max", 1.0)
        if family == "dymn" and t_max > 1:  # EfficientAT's released DyMNs finished the schedule at 1
            notes.append(
                f"DyMN attention temperature starts at {t_max:g}: temperature_max 1 keeps the file's"
            )
        return Loaded(sorted(f"backbone.{k}" for k in kept), dropped, "; ".join(notes))


# ---------------------------------------------------------------- the paper authors' ssondo package


@INIT_FORMATS.register(ssondo_ckpt.FORMAT)
class SsondoCkptFormat:
    """The ``ssondo`` package's ``.ckpt`` (``ssondo_ckpt``'s strict mapping) starts a student of its
    architecture (``ssondo_ckpt.architecture``: MobileNetV3 / DyMN of its width, ERes2Net of its depths):
    the backbone loads strictly, the projection head too when it has the student's shape (same teacher
    dimension), else it is dropped and said so."""

    def detect(self, obj: Any) -> bool:
        return ssondo_ckpt.is_ssondo_ckpt(obj)

    def load(self, student: Student, obj: Any, path: Path) -> Loaded:
        payload = ssondo_ckpt.student_payload(obj, path)
        theirs = ssondo_ckpt.architecture(payload["extra"][ssondo_ckpt.FORMAT]["family"], payload["student"])
        mine = ssondo_ckpt.architecture(getattr(student.backbone, "family", student.name), student.config())
        if mine != theirs:
            raise InitMismatch(
                f"{path}: an ssondo-package student ({theirs}) cannot start student {student.name!r} ({mine})"
            )
        want = student.state_dict()
        head = sorted(k for k in payload["state_dict"] if k.startswith("head."))
        fits = all(payload["state_dict"][k].shape == want[k].shape for k in head)
        state = {k: v for k, v in payload["state_dict"].items() if fits or k not in head}
        student.load_state_dict(state, strict=fits)  # the mapping checked every backbone key and shape
        fe = payload["frontend"]
        note = (
            f"the file's front-end: win {fe['win_length']}, hop {fe['hop_length']}, {fe['n_mels']} mel "
            f"{fe['f_min']:g}-{fe['f_max']:g} Hz at {fe['sample_rate']} Hz"
        )
        if not fits:
            note += f"; head dropped: the file projects to {payload['teacher_dim']} dims, the student to {student.teacher_dim}"
        return Loaded(sorted(k for k in state if k != "_extra_state"), [] if fits else head, note)
