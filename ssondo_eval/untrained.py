"""The untrained student: the baseline that says whether distillation taught the student anything.

A randomly initialised convolutional network already gives features a linear probe can use, so a
student's score means something only beside the SAME network before its first step. It is rebuilt
from the student's checkpoint alone, as the trainer built it (``ssondo_distill.step.build_parts``):
``torch.manual_seed(seed)`` then ``build_student(name, teacher_dim, **options)`` from the student
registry, with the checkpoint's build arguments and training seed, and its EfficientAT starting
weights when it had some (refused with a message when that file is gone or changed: another start is
another baseline). The global RNG is left as it was.

:func:`with_untrained` adds one untrained column per distinct (architecture, options, seed, start
weights, front-end, window) among the evaluated students, and says which student it belongs to.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import torch

from ssondo_cache.provenance import sha256_file
from ssondo_cache.windows import format_seconds
from ssondo_eval.embedders import Embedder, StudentEmbedder

log = logging.getLogger("ssondo.eval")


def has_known_start(meta: dict) -> bool:
    """Whether checkpoint ``meta`` records what :func:`initial_student` needs (its training seed)."""
    return (meta.get("extra") or {}).get("seed") is not None


def initial_student(meta: dict):
    """The AudioStudent of checkpoint ``meta`` (``checkpoint.read_meta``) as it was at step 0, in eval mode."""
    from ssondo_distill.checkpoint import AudioStudent
    from ssondo_distill.frontend import StudentFrontEnd
    from ssondo_distill.students import build_student

    seed = (meta.get("extra") or {}).get("seed")
    if seed is None:
        raise ValueError("the student checkpoint records no training seed: its initialisation is unknown")
    cfg = dict(meta["student"])
    name, teacher_dim = cfg.pop("name"), cfg.pop("teacher_dim")
    init = meta.get("init_info") or {}
    # train --init, or (checkpoints before it) the removed student option efficientat_weights
    start = init.get("init") or init.get("efficientat_weights")
    if start is not None:
        if not Path(start).is_file():
            raise FileNotFoundError(f"{start}: the student's starting weights are gone (untrained baseline)")
        if sha256_file(start) != init.get("sha256"):
            raise ValueError(f"{start} changed since the student started from it (sha256 differs)")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        student = build_student(name, int(teacher_dim), **cfg)
    if start is not None:  # as the trainer does: built from the seed, then the file's weights loaded
        from ssondo_distill.init_weights import apply_init

        apply_init(student, start)
    return AudioStudent(StudentFrontEnd(**meta["frontend"]), student).eval()


def untrained_id(meta: dict, ts: float) -> str:
    """Filesystem-safe identity of the untrained twin of checkpoint ``meta`` embedded at window ``ts``."""
    init = meta.get("init_info") or {}
    ident = {
        "student": meta["student"],
        "seed": (meta.get("extra") or {}).get("seed"),
        "start": init.get("sha256"),
        "frontend": meta["frontend"],
    }
    digest = hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:12]
    return f"untrained-{meta['student']['name']}-{digest}-ts{format_seconds(ts)}"


class UntrainedStudentEmbedder(StudentEmbedder):
    """A student's architecture and initialisation without its training (see module doc)."""

    kind = "untrained"

    def __init__(self, student: StudentEmbedder) -> None:
        self.path = student.path
        self.device = student.device
        self.meta = student.meta
        self.model = initial_student(student.meta).to(self.device)
        self.ts, self.batch_size = student.ts, student.batch_size
        self.teacher_id = student.teacher_id
        seed = student.meta["extra"]["seed"]
        self.name = f"untrained {student.meta['student']['name']} (seed {seed})"
        self.cache_id = untrained_id(student.meta, self.ts)

    def describe(self) -> dict:
        return {**super().describe(), "untrained_of": str(self.path), "seed": self.meta["extra"]["seed"]}


def with_untrained(models: list[Embedder]) -> list[Embedder]:
    """``models`` with the untrained twin of each checkpoint student (StudentEmbedder) inserted after
    the last student, one per distinct twin, unless it is there already."""
    present = {m.cache_id for m in models if m.kind == "untrained"}
    twins: dict[str, UntrainedStudentEmbedder] = {}
    for m in models:
        if isinstance(m, StudentEmbedder) and m.kind == "student":
            if not has_known_start(m.meta):
                log.warning(
                    "%s: no untrained baseline, its checkpoint records no training seed (e.g. an imported "
                    ".ckpt that started from weights this machine cannot rebuild)",
                    m.name,
                )
                continue
            key = untrained_id(m.meta, m.ts)
            if key not in twins and key not in present:
                twins[key] = UntrainedStudentEmbedder(m)
    last = max([i for i, m in enumerate(models) if m.kind in ("student", "untrained")], default=-1)
    return [*models[: last + 1], *twins.values(), *models[last + 1 :]]


def pair_untrained(models: list[Embedder]) -> dict[int, int]:
    """{student position: untrained twin position} among ``models`` as given (no twin added)."""
    position = {m.cache_id: j for j, m in enumerate(models) if m.kind == "untrained"}
    return {
        i: position[untrained_id(m.meta, m.ts)]
        for i, m in enumerate(models)
        if isinstance(m, StudentEmbedder) and m.kind == "student" and untrained_id(m.meta, m.ts) in position
    }
