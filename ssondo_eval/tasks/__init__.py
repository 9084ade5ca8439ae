"""Downstream tasks, chosen by name: ``TASKS`` maps an adapter name to a factory ``(root) -> [Task]``.

On the command line a task is ``ADAPTER:PATH`` (e.g. ``esc50:/data/ESC-50-master``, ``csv:my_task.csv``,
``folder:/data/my_classes``, ``demo:demo-out``); a bare path to a ``.csv`` file means ``csv:PATH``.
An adapter may yield several tasks (``demo`` yields one per development-task CSV). The adapter name is
not the task's name: ``load_tasks(specs, names)`` gives a task a display name (``--task-name``).
"""

from __future__ import annotations

from collections.abc import Sequence
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


FORMS = (
    "ADAPTER:PATH with ADAPTER one of {names} (e.g. esc50:/data/ESC-50-master, csv:/data/drums.csv), "
    "or a bare path to a .csv file; a display name goes in --task-name (e.g. --task csv:/data/drums.csv "
    "--task-name drums)"
)


def parse_task_spec(spec: str) -> tuple[str, Path]:
    """``ADAPTER:PATH`` -> (adapter, path); a bare ``*.csv`` path -> ("csv", path).

    ``NAME:PATH`` with NAME not an adapter (a label, ``drums:/x.csv``) is refused, naming the accepted
    forms, unless the whole spec is an existing file (a path with a colon in it)."""
    name, sep, path = spec.partition(":")
    if sep and name in TASKS:
        return name, Path(path)
    forms = FORMS.format(names=", ".join(TASKS.names()))
    if sep and name and "/" not in name and not Path(spec).exists():
        raise ValueError(f"task {spec!r}: {name!r} is not a task adapter; a task is {forms}")
    if spec.lower().endswith(".csv"):
        return "csv", Path(spec)
    raise ValueError(f"task {spec!r}: a task is {forms}")


def load_tasks(specs: list[str], names: Sequence[str] = ()) -> list[Task]:
    """Build every task named in ``specs``; ``names[i]`` renames the task of ``specs[i]`` (a spec that
    yields several tasks cannot be renamed). Task names must come out unique."""
    if len(names) > len(specs):
        raise ValueError(f"{len(names)} task names for {len(specs)} --task specs: at most one name per task")
    tasks: list[Task] = []
    for i, spec in enumerate(specs):
        adapter, path = parse_task_spec(spec)
        built = TASKS.build(adapter, root=path)
        if i < len(names):
            if len(built) != 1:
                raise ValueError(
                    f"--task-name {names[i]!r}: {spec!r} yields {len(built)} tasks "
                    f"({', '.join(t.name for t in built)}); only a single task can be renamed"
                )
            built[0].name, built[0].renamed = names[i], True
        tasks.extend(built)
    names_out = [t.name for t in tasks]
    dupes = sorted({n for n in names_out if names_out.count(n) > 1})
    if dupes:
        raise ValueError(f"task names must be unique; repeated: {dupes} (rename with --task-name)")
    return tasks


__all__ = ["TASKS", "Task", "TaskItem", "load_tasks", "parse_task_spec"]
