"""What a downstream task is: a list of labelled audio items with a split protocol.

A task is data, not code: adapters (``tasks/datasets.py``, ``tasks/generic.py``) turn a dataset's own
metadata into a :class:`Task`; the probe never sees file formats.

Split protocol, read from the items' ``split`` values:
- ``train`` / ``valid`` (or ``val``) / ``test``: one fold; without ``valid`` the probe carves a validation
  part from ``train`` (never from ``test``);
- ``fold1`` ... ``foldK`` (K >= 2): K folds; fold k is the test set, the other folds train (and the probe
  carves validation from them), scores averaged over the K folds, as EVAR does for ESC-50 / UrbanSound8K.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from ssondo_eval.decoded_audio import DecodedAudio

_FOLD = re.compile(r"^fold(\d+)$")
_SPLIT_ALIASES = {"train": "train", "valid": "valid", "val": "valid", "validation": "valid", "test": "test"}


@dataclass(frozen=True)
class TaskItem:
    """One clip: where its audio is, its labels, its split."""

    path: Path | None  # audio file (None when the clip lives only in a packed corpus)
    labels: tuple[str, ...]  # positive labels
    split: str  # train | valid | test | fold<k>
    key: str | None = None  # clip key in a packed corpus
    annotated: tuple[str, ...] | None = None  # labels whose presence/absence is known; None = all


@dataclass
class Task:
    name: str
    items: list[TaskItem]
    classes: list[str]
    multilabel: bool
    clip_seconds: float | None  # audio is cropped from its start / zero-padded to this; None = whole file
    source: str = ""  # what it was built from (a folder, a CSV)
    notes: str = ""  # protocol details worth printing in a report
    meta: dict = field(default_factory=dict)
    refused: list[dict] = field(default_factory=list)  # items left out: {"path", "reason", "detail"}
    outside_root: list[str] = field(default_factory=list)  # audio paths outside the task's folder (kept)
    spec: str = ""  # the --task value that rebuilds it (ADAPTER:PATH)
    renamed: bool = False  # its name was given (--task-name), not made by the adapter
    audio_cache: DecodedAudio | None = field(default=None, repr=False, compare=False)  # decoded_audio

    def __post_init__(self) -> None:
        if not self.items:
            raise ValueError(f"task {self.name!r} has no items")
        known = set(self.classes)
        for item in self.items:
            bad = [lab for lab in item.labels if lab not in known]
            if bad:
                raise ValueError(f"task {self.name!r}: item {item.path or item.key} has unknown labels {bad}")
            if not self.multilabel and len(item.labels) != 1:
                raise ValueError(
                    f"task {self.name!r} is single-label but {item.path or item.key} has labels {item.labels}"
                )
            _check_split(self.name, item.split)
        self.protocol  # raises on a mix of folds and named splits  # noqa: B018

    @property
    def metric(self) -> str:
        return "mAP" if self.multilabel else "accuracy"

    @property
    def protocol(self) -> str:
        """``splits`` (train/valid/test) or ``folds`` (fold1..foldK)."""
        kinds = {"fold" if _FOLD.match(i.split) else "split" for i in self.items}
        if kinds == {"fold", "split"}:
            raise ValueError(f"task {self.name!r} mixes fold<k> and train/valid/test splits")
        return "folds" if kinds == {"fold"} else "splits"

    def targets(self) -> np.ndarray:
        """Single-label: int64 (N,) class index. Multi-label: float32 (N, C), NaN where not annotated."""
        index = {c: i for i, c in enumerate(self.classes)}
        if not self.multilabel:
            return np.array([index[i.labels[0]] for i in self.items], dtype=np.int64)
        y = np.zeros((len(self.items), len(self.classes)), dtype=np.float32)
        for r, item in enumerate(self.items):
            if item.annotated is not None:
                y[r, :] = np.nan
                y[r, [index[a] for a in item.annotated if a in index]] = 0.0
            y[r, [index[lab] for lab in item.labels]] = 1.0
        return y

    def folds(self) -> list[tuple[np.ndarray, np.ndarray | None, np.ndarray]]:
        """(train, valid or None, test) row indices for each fold of the protocol."""
        splits = np.array([_SPLIT_ALIASES.get(i.split, i.split) for i in self.items])
        if self.protocol == "folds":
            names = sorted(set(splits), key=lambda s: int(s[4:]))
            if len(names) < 2:
                raise ValueError(f"task {self.name!r} has a single fold: nothing to train on")
            return [(np.flatnonzero(splits != k), None, np.flatnonzero(splits == k)) for k in names]
        train, valid, test = (np.flatnonzero(splits == s) for s in ("train", "valid", "test"))
        if len(train) == 0 or len(test) == 0:
            raise ValueError(
                f"task {self.name!r} needs train and test items (got {len(train)} / {len(test)})"
            )
        return [(train, valid if len(valid) else None, test)]

    def fingerprint(self) -> str:
        """sha256 over what decides the embeddings: each item's audio identity and the clip length."""
        h = hashlib.sha256(f"{self.clip_seconds}".encode())
        for item in self.items:
            h.update(f"\n{item.key or ''}|{item.path or ''}".encode())
        return h.hexdigest()

    def describe(self) -> dict:
        counts: dict[str, int] = {}
        for item in self.items:
            counts[item.split] = counts.get(item.split, 0) + 1
        return {
            "name": self.name,
            "metric": self.metric,
            "multilabel": self.multilabel,
            "n_items": len(self.items),
            "n_classes": len(self.classes),
            "clip_seconds": self.clip_seconds,
            "protocol": self.protocol,
            "splits": dict(sorted(counts.items())),
            "source": self.source,
            "notes": self.notes,
            "fingerprint": self.fingerprint(),
            "refused": list(self.refused),
            "outside_root": list(self.outside_root),
            "spec": self.spec,
            "renamed": self.renamed,
        }


def _check_split(task: str, split: str) -> None:
    if split not in _SPLIT_ALIASES and not _FOLD.match(split):
        raise ValueError(f"task {task!r}: split {split!r} is neither train/valid/test nor fold<k>")


def normalise_split(value: object) -> str:
    """'1' / 1 / 'fold1' -> 'fold1'; 'val' / 'validation' -> 'valid'; train/test unchanged."""
    text = str(value).strip().lower()
    if text.isdigit():
        return f"fold{int(text)}"
    return _SPLIT_ALIASES.get(text, text)


def require_files(task: str, paths: list[Path], limit: int = 5) -> None:
    """Refuse a task whose metadata lists audio that is not on disk (say which, and how many)."""
    missing = [p for p in paths if not p.is_file()]
    if missing:
        shown = ", ".join(str(p) for p in missing[:limit])
        raise FileNotFoundError(
            f"task {task!r}: {len(missing)} audio file(s) listed but missing, e.g. {shown}"
        )


def screen_items(
    task: str, items: list[TaskItem], root: Path
) -> tuple[list[TaskItem], list[dict], list[str]]:
    """(items whose audio soundfile can open, refused items with reasons, paths outside ``root``).

    One unreadable file (not audio, a broken header) must not abort an evaluation after minutes of
    work: it is left out and listed in the report. A split all of whose items are refused is an error.
    Only the header is read here; paths outside the task's folder are kept, and listed."""
    import soundfile as sf

    base = root.resolve()
    kept, refused, outside = [], [], []
    for item in items:
        if item.path is None:
            kept.append(item)
            continue
        if not item.path.resolve().is_relative_to(base):
            outside.append(str(item.path))
        try:
            sf.info(str(item.path))
        except Exception as err:  # libsndfile raises several types; its message says what is wrong
            refused.append(
                {"path": str(item.path), "split": item.split, "reason": "unreadable", "detail": str(err)}
            )
            continue
        kept.append(item)
    emptied = sorted({i.split for i in items} - {i.split for i in kept})
    if emptied:
        first = next(r for r in refused if r["split"] == emptied[0])
        raise ValueError(
            f"task {task!r}: every {emptied[0]} item was refused as unreadable, e.g. {first['path']} "
            f"({first['detail']}); fix or replace those files"
        )
    return kept, refused, outside


def require(path: Path, what: str) -> Path:
    if not path.exists():
        raise FileNotFoundError(f"{what} not found: {path}")
    return path
