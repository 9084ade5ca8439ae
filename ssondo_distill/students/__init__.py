"""Students by name: ``build_student(name, teacher_dim, **options) -> Student``.

Names: ``mobilenetv3`` (EfficientAT MobileNetV3, ``width_mult`` 1.0 = mn10), fixed-width
aliases ``mn10`` / ``mn05`` / ``mn04``; ``dymn`` (``dymn10`` / ``dymn04``); ``eres2net``.
Starting weights (a user's EfficientAT ``mn10_im.pt``...) are not a student option: they come
from ``ssondo_distill.init_weights`` (``init:`` in the train config, ``ssondo train --init``).
"""

from __future__ import annotations

import inspect
from functools import partial
from typing import Any

from ssondo_cache.registry import Registry

from .dymn import DyMNBackbone, TemperatureSchedule
from .eres2net import ERes2NetBackbone
from .head import ProjectionHead, Student
from .mobilenetv3 import MobileNetV3Backbone, last_channel

__all__ = [
    "STUDENTS",
    "Student",
    "ProjectionHead",
    "build_student",
    "count_parameters",
    "PAPER_BACKBONE_PARAMS",
]

STUDENTS: Registry[Student] = Registry("student")

# Backbone parameter counts reported by the S-SONDO paper (classifier / projection head excluded).
PAPER_BACKBONE_PARAMS = {"mobilenetv3": 2.9e6, "dymn": 8.7e6, "eres2net": 1.4e6}


# options that are gone, each with what replaces it (a config that still names one fails in one line)
REMOVED_OPTIONS = {
    "efficientat_weights": "starting weights are given as `init: PATH` in the train config "
    "(or `ssondo train --init PATH`), read once by a fresh run and recorded with their sha256",
}


def _mobilenetv3(
    name: str,
    teacher_dim: int,
    width_mult: float = 1.0,
    hidden_dim: int | None = None,
    dropout: float = 0.2,
) -> Student:
    """``hidden_dim``: the head's hidden width; None = EfficientAT's ``last_channel(width_mult)``
    (512 / 640 / 1280 for mn04 / mn05 / mn10). The resolved width is recorded, so checkpoints of
    any width (older 1280-wide mn04 included) rebuild as they were saved."""
    hidden_dim = last_channel(width_mult) if hidden_dim is None else int(hidden_dim)
    opts = dict(width_mult=width_mult, hidden_dim=hidden_dim, dropout=dropout)
    return Student(name, MobileNetV3Backbone(width_mult), teacher_dim, opts, hidden_dim, dropout)


def _dymn(
    name: str,
    teacher_dim: int,
    width_mult: float = 1.0,
    hidden_dim: int | None = None,
    dropout: float = 0.2,
    temperature_max: float = 30.0,
    temperature_min: float = 1.0,
    temperature_slope0: float = 1.0,
    temperature_slope1: float = 0.02,
) -> Student:
    """``temperature_*``: the attention-temperature schedule over epochs; start from
    ``temperature_max=1`` when fine-tuning weights trained to the end of it (``dymn*_as``).
    ``hidden_dim`` None = EfficientAT's last_channel, as for MobileNetV3 (the authors' package
    builds DyMN heads at that width only)."""
    hidden_dim = last_channel(width_mult) if hidden_dim is None else int(hidden_dim)
    sched = TemperatureSchedule(temperature_max, temperature_min, temperature_slope0, temperature_slope1)
    opts = dict(
        width_mult=width_mult,
        hidden_dim=hidden_dim,
        dropout=dropout,
        temperature_max=temperature_max,
        temperature_min=temperature_min,
        temperature_slope0=temperature_slope0,
        temperature_slope1=temperature_slope1,
    )
    return Student(name, DyMNBackbone(width_mult, sched), teacher_dim, opts, hidden_dim, dropout)


def _eres2net(
    name: str,
    teacher_dim: int,
    n_mels: int = 128,
    m_channels: int = 16,
    num_blocks: tuple[int, ...] | list[int] = (3, 4, 6, 3, 3),
    hidden_dim: int = 1280,
    dropout: float = 0.2,
) -> Student:
    blocks = tuple(int(b) for b in num_blocks)
    opts = dict(
        n_mels=n_mels, m_channels=m_channels, num_blocks=list(blocks), hidden_dim=hidden_dim, dropout=dropout
    )
    return Student(name, ERes2NetBackbone(n_mels, m_channels, blocks), teacher_dim, opts, hidden_dim, dropout)


def _register_width(name: str, family: Any, **fixed: Any) -> None:
    def factory(teacher_dim: int, **options: Any) -> Student:
        clash = {k for k in set(options) & set(fixed) if options.pop(k) != fixed[k]}
        if clash:
            raise ValueError(f"student {name!r} fixes {sorted(clash)}; use the family name to change it")
        return family(name, teacher_dim, **fixed, **options)

    factory.__signature__ = inspect.signature(partial(family, name, **fixed))  # type: ignore[attr-defined]
    STUDENTS.register(name)(factory)


_register_width("mobilenetv3", _mobilenetv3)
_register_width("mn10", _mobilenetv3, width_mult=1.0)
_register_width("mn05", _mobilenetv3, width_mult=0.5)
_register_width("mn04", _mobilenetv3, width_mult=0.4)
_register_width("dymn", _dymn)
_register_width("dymn10", _dymn, width_mult=1.0)
_register_width("dymn04", _dymn, width_mult=0.4)
_register_width("eres2net", _eres2net)


def build_student(name: str, teacher_dim: int, **options: Any) -> Student:
    """Build student ``name`` whose head maps into a ``teacher_dim``-d teacher space."""
    factory = STUDENTS.get(name)
    removed = sorted(set(options) & set(REMOVED_OPTIONS))
    if removed:
        key = removed[0]
        raise ValueError(
            f"student option {key}={options[key]!s}: no longer an option; {REMOVED_OPTIONS[key]}"
        )
    allowed = [p for p in inspect.signature(factory).parameters if p not in ("teacher_dim", "name")]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(f"student {name!r}: unknown option(s) {unknown}; allowed: {sorted(allowed)}")
    return factory(teacher_dim=teacher_dim, **options)


def _family(student: Student) -> str:
    return getattr(student.backbone, "family", student.name)


def _is_paper_setting(student: Student) -> bool:
    opts = student.config()
    family = _family(student)
    if family == "eres2net":
        return (
            opts["n_mels"] == 128 and opts["m_channels"] == 16 and list(opts["num_blocks"]) == [3, 4, 6, 3, 3]
        )
    return opts.get("width_mult") == 1.0


def count_parameters(student: Student) -> dict[str, Any]:
    """Parameter counts for ``ssondo train --dry-run``.

    ``backbone``: everything before the embedding (no EfficientAT classifier, no head),
    the figure the paper reports; ``head``: the projection MLP into the teacher space;
    ``total`` = both. ``paper_backbone`` is the paper's figure when the student has the
    paper's settings (mn10 width, dymn10 width, ERes2Net m16 / 128 mel), else None.
    """
    backbone = sum(p.numel() for p in student.backbone.parameters())
    head = sum(p.numel() for p in student.head.parameters())
    paper = PAPER_BACKBONE_PARAMS.get(_family(student)) if _is_paper_setting(student) else None
    return {
        "student": student.name,
        "backbone_dim": student.backbone_dim,
        "teacher_dim": student.teacher_dim,
        "backbone": backbone,
        "head": head,
        "total": backbone + head,
        "trainable": sum(p.numel() for p in student.parameters() if p.requires_grad),
        "paper_backbone": paper,
        "covers": "backbone = feature extractor up to the pooled embedding (no classifier); "
        "head = projection MLP backbone_dim -> hidden -> teacher_dim",
    }
