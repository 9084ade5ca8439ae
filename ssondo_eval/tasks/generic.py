"""Tasks from plain layouts: a folder with one sub-folder per class, or a CSV (path, labels, split|fold).

CSV format (header required, UTF-8):
- ``path``: audio file, absolute or relative to ``root`` (default: the CSV's own folder);
- ``labels``: one label, or several joined by ``;`` (multi-label); a ``label`` column is accepted too;
- ``split`` (train / valid / test) or ``fold`` (1..K, or fold1..foldK);
- optional ``key``: the clip's key in a packed corpus (lets a teacher cache of that corpus serve the task).
The task is multi-label when any row has other than exactly one label. Clip length: the whole file.
"""

from __future__ import annotations

import csv
from pathlib import Path

from ssondo_eval.tasks.base import Task, TaskItem, normalise_split, require, require_files, screen_items

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3", ".au", ".aiff", ".aif")
LABEL_SEP = ";"


def folder_task(
    root: str | Path,
    name: str | None = None,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    seed: int = 0,
    clip_seconds: float | None = None,
) -> Task:
    """``root/<class>/*.wav`` -> a single-label task.

    With ``root/train``, ``root/valid`` and ``root/test`` folders (each holding class folders) those splits
    are used; otherwise each class is split deterministically (``seed``) into train / valid / test by file
    name order shuffled once, so every run of every model sees the same split.
    """
    import numpy as np

    root = require(Path(root), "task folder")
    named = [root / s for s in ("train", "valid", "test")]
    items: list[TaskItem] = []
    if all(p.is_dir() for p in (named[0], named[2])):
        for split_dir in (p for p in named if p.is_dir()):
            for cls_dir in sorted(d for d in split_dir.iterdir() if d.is_dir()):
                for f in _audio_files(cls_dir):
                    items.append(TaskItem(path=f, labels=(cls_dir.name,), split=split_dir.name))
    else:
        rng = np.random.default_rng(seed)
        for cls_dir in sorted(d for d in root.iterdir() if d.is_dir()):
            files = _audio_files(cls_dir)
            order = rng.permutation(len(files))
            n_test = max(1, round(test_fraction * len(files)))
            n_val = max(1, round(val_fraction * len(files))) if len(files) >= 3 else 0
            for rank, i in enumerate(order):
                split = "test" if rank < n_test else "valid" if rank < n_test + n_val else "train"
                items.append(TaskItem(path=files[i], labels=(cls_dir.name,), split=split))
    if not items:
        raise ValueError(f"no audio files ({', '.join(AUDIO_SUFFIXES)}) in class sub-folders of {root}")
    items, refused, _ = screen_items(name or root.name, items, root)
    classes = sorted({i.labels[0] for i in items})
    return Task(
        name=name or root.name,
        items=items,
        classes=classes,
        multilabel=False,
        clip_seconds=clip_seconds,
        source=str(root),
        notes="folder task: one sub-folder per class",
        refused=refused,
        spec=f"folder:{root}",
    )


def _audio_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES)


def csv_task(
    path: str | Path,
    name: str | None = None,
    root: str | Path | None = None,
    clip_seconds: float | None = None,
    label_sep: str = LABEL_SEP,
    folder: str | Path | None = None,
) -> Task:
    """A CSV with columns path, labels (or label), split (or fold) -> a task (see the module docstring).

    Audio outside ``folder`` (default: where relative paths start) is used and listed in the report."""
    path = require(Path(path), "task CSV")
    base = Path(root) if root is not None else path.parent
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        cols = set(reader.fieldnames or [])
        label_col = "labels" if "labels" in cols else "label" if "label" in cols else None
        split_col = "split" if "split" in cols else "fold" if "fold" in cols else None
        if "path" not in cols or label_col is None or split_col is None:
            raise ValueError(
                f"{path}: a task CSV needs columns path, labels (or label) and split (or fold); got {sorted(cols)}"
            )
        items = []
        for n, row in enumerate(reader, start=2):
            labels = tuple(s.strip() for s in (row[label_col] or "").split(label_sep) if s.strip())
            if not row["path"]:
                raise ValueError(f"{path}:{n}: empty path")
            audio = Path(row["path"])
            items.append(
                TaskItem(
                    path=audio if audio.is_absolute() else base / audio,
                    labels=labels,
                    split=normalise_split(row[split_col]),
                    key=row.get("key") or None,
                )
            )
    if not items:
        raise ValueError(f"{path}: no rows")
    require_files(name or path.stem, [i.path for i in items if i.path is not None])
    items, refused, outside = screen_items(name or path.stem, items, Path(folder) if folder else base)
    multilabel = any(len(i.labels) != 1 for i in items)
    classes = sorted({lab for i in items for lab in i.labels})
    return Task(
        name=name or path.stem,
        items=items,
        classes=classes,
        multilabel=multilabel,
        clip_seconds=clip_seconds,
        source=str(path),
        notes=f"CSV task ({split_col} column)",
        refused=refused,
        outside_root=outside,
        spec=f"csv:{path}",
    )


def demo_tasks(root: str | Path) -> list[Task]:
    """The demo set's development tasks: the task CSVs in ``DIR/manifests/demo/`` (``ssondo demo-data``).

    ``root`` is that DIR (or the ``manifests/demo`` folder itself). Only CSVs with ``labels`` and ``split``
    columns are tasks (``all``, ``distill`` and ``sources`` are plain lists). Paths are relative to the CSV's
    own folder; the ``key`` column (the clip key the corpus is packed under) lets a teacher cache of the
    packed demo corpus serve the task. Task names are ``demo-<csv stem>``; clip length: the whole file.
    """
    root = require(Path(root), "demo folder")
    folder = root if root.name == "demo" and root.parent.name == "manifests" else root / "manifests" / "demo"
    csvs = [p for p in sorted(require(folder, "demo task folder").glob("*.csv")) if _is_task_csv(p)]
    if not csvs:
        raise FileNotFoundError(
            f"no task CSVs (with labels and split columns) in {folder}; build them with "
            f"`ssondo demo-data --out {folder.parent.parent}`"
        )
    tasks = [csv_task(p, name=f"demo-{p.stem}", folder=folder.parent.parent) for p in csvs]
    for task in tasks:
        task.spec = f"demo:{root}"
    return tasks


def _is_task_csv(path: Path) -> bool:
    with open(path, newline="", encoding="utf-8") as f:
        header = set(next(csv.reader(f), []))
    return {"path", "split"} <= header and bool({"labels", "label"} & header)
