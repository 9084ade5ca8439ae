"""Downstream tasks, chosen by name: ``TASKS`` maps an adapter name to a factory ``(root) -> [Task]``.

On the command line a task is ``NAME:PATH`` (e.g. ``esc50:/data/ESC-50-master``, ``csv:my_task.csv``,
``folder:/data/my_classes``, ``demo:demo-out``); a bare path to a ``.csv`` file means ``csv:PATH``.
An adapter may yield several tasks (``demo`` yields one per development-task CSV).
"""

from __future__ import annotations

from pathlib import Path

from ssondo_cache.registry import Registry
from ssondo_eval.tasks import datasets, generic
from ssondo_eval.tasks.base import Task, TaskItem

TASKS: Registry[list[Task]] = Registry("task")

TASKS.register("esc50")(lambda root: [datasets.esc50(root)])
TASKS.register("us8k")(lambda root: [datasets.us8k(root)])
TASKS.register("gtzan")(lambda root: [datasets.gtzan(root)])
TASKS.register("nsynth")(lambda root: [datasets.nsynth(root)])
TASKS.register("openmic")(lambda root: [datasets.openmic(root)])
TASKS.register("mtt")(lambda root: [datasets.mtt(root)])
TASKS.register("fsd50k")(lambda root: [datasets.fsd50k(root)])
TASKS.register("folder")(lambda root: [generic.folder_task(root)])
TASKS.register("csv")(lambda root: [generic.csv_task(root)])
TASKS.register("demo")(generic.demo_tasks)


def parse_task_spec(spec: str) -> tuple[str, Path]:
    """``NAME:PATH`` -> (name, path); a bare ``*.csv`` path -> ("csv", path)."""
    name, sep, path = spec.partition(":")
    if sep and name in TASKS:
        return name, Path(path)
    if spec.lower().endswith(".csv"):
        return "csv", Path(spec)
    raise ValueError(
        f"task {spec!r}: expected NAME:PATH with NAME one of {', '.join(TASKS.names())} "
        "(e.g. esc50:/data/ESC-50-master), or a path to a task CSV"
    )


def load_tasks(specs: list[str]) -> list[Task]:
    """Build every task named in ``specs``; task names must come out unique."""
    tasks: list[Task] = []
    for spec in specs:
        name, path = parse_task_spec(spec)
        tasks.extend(TASKS.build(name, root=path))
    names = [t.name for t in tasks]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"task names must be unique; repeated: {dupes}")
    return tasks


__all__ = ["TASKS", "Task", "TaskItem", "load_tasks", "parse_task_spec"]
