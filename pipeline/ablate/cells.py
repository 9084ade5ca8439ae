"""One unit of a grid: a cell (train with ssondo_distill.trainer.train, then probe its student with
ssondo_eval.evaluate.run_evaluation) or the reference (the teacher and the log-mel baseline, probed
once for every cell's retention). Each ends in a status file, done or failed with its error.

DIR/runs/<cell>/            the RUN folder (the trainer's files) + cell.json + ablate.json
DIR/runs/<cell>/eval-<E>/   the cell's evaluation report (E: hash of the eval settings)
DIR/reference-<E>/          teacher + baseline report, ablate.json
DIR/embeddings/             (model, task) embeddings shared by every unit
"""

from __future__ import annotations

import json
import os
import socket
import time
import traceback
from pathlib import Path
from typing import Any

from pipeline.ablate.grid import Cell, Grid, eval_key
from ssondo_cache import lifecycle
from ssondo_cache.atomic import write_json, write_text
from ssondo_cache.provenance import code_version, now_iso
from ssondo_cache.typed_config import ConfigError, to_dict

STATUS = "ablate.json"
REFERENCE = "reference"


def run_dir(out: Path, cell: Cell) -> Path:
    return out / "runs" / cell.name


def eval_dir(out: Path, cell: Cell, grid: Grid) -> Path:
    return run_dir(out, cell) / f"eval-{eval_key(grid)}"


def reference_dir(out: Path, grid: Grid) -> Path:
    return out / f"{REFERENCE}-{eval_key(grid)}"


def has_reference(grid: Grid) -> bool:
    e = grid.config.eval
    return e.teacher is not None or e.cache is not None or e.baseline != "none"


def read_status(folder: Path) -> dict[str, Any] | None:
    try:
        return json.loads((folder / STATUS).read_text())
    except (OSError, ValueError):
        return None


def is_done(folder: Path, grid: Grid) -> bool:
    status = read_status(folder)
    return bool(status) and status.get("status") == "done" and status.get("eval_key") == eval_key(grid)


def failed_before(folder: Path, grid: Grid, since: float) -> bool | None:
    """None: not failed; True: failed before ``since`` (a re-run retries it); False: failed since
    (another launch of this session tried it: not repeated)."""
    status = read_status(folder)
    if not status or status.get("status") != "failed" or status.get("eval_key") != eval_key(grid):
        return None
    return float(status.get("finished_at", 0.0)) < since


def _record(
    folder: Path, grid: Grid, started: tuple[float, float], outcome: dict[str, Any]
) -> dict[str, Any]:
    status = {
        **outcome,
        "eval_key": eval_key(grid),
        "seconds": time.time() - started[0],
        "cpu_seconds": time.process_time() - started[1],  # this process, all its threads
        "finished": now_iso(),
        "finished_at": time.time(),
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "code_version": code_version(),
    }
    write_json(folder / STATUS, status)
    return status


def _failure(folder: Path, err: BaseException) -> dict[str, Any]:
    write_text(folder / "error.txt", traceback.format_exc())
    first = (str(err).strip().splitlines() or [""])[0]
    return {
        "status": "failed",
        "error": f"{type(err).__name__}: {first}",
        "traceback": str(folder / "error.txt"),
    }


def _scores(report: dict[str, Any], kind: str) -> dict[str, dict[str, Any]]:
    """label -> task -> {mean, ci95, scores} for the models of ``kind`` in an evaluate() report."""
    labels = [m["label"] for m in report["models"] if m["kind"] == kind]
    return {
        lab: {t: {k: r[k] for k in ("mean", "ci95", "scores")} for t, r in report["scores"][lab].items()}
        for lab in labels
    }


def _probe(grid: Grid):
    return grid.config.eval.probe


def run_cell(grid: Grid, cell: Cell, out: Path, progress: bool = False) -> dict[str, Any]:
    """Train (resuming an interrupted run exactly; a finished one is a no-op), evaluate, record."""
    from ssondo_distill.trainer import train
    from ssondo_eval.evaluate import run_evaluation

    run = run_dir(out, cell)
    run.mkdir(parents=True, exist_ok=True)
    started = time.time(), time.process_time()
    e = grid.config.eval
    try:
        known = run / "cell.json"
        if known.is_file() and json.loads(known.read_text())["key"] != cell.key:
            raise ConfigError(f"{known} belongs to another config than cell {cell.name}")
        write_json(known, cell.to_dict())
        cfg = cell.train_config(grid.workspace, run)
        result = train(cfg, progress=progress)
        report = run_evaluation(
            [run],
            e.tasks,
            eval_dir(out, cell, grid),
            baseline="none",
            ts=e.ts if e.ts is not None else cfg.clip_seconds,
            device=e.device,
            batch_size=e.batch_size,
            probe_config=_probe(grid),
            cache_dir=out / "embeddings",
            progress=progress,
        )
        (scores,) = _scores(report, "student").values()
        outcome = {"status": "done", "scores": scores, "train": _plain(result)}
    except lifecycle.Stopped:  # preemption: not a failure, the cell resumes on the next launch
        raise
    except Exception as err:  # recorded; the grid goes on with the next cell
        outcome = _failure(run, err)
    return _record(run, grid, started, {"unit": cell.name, "key": cell.key, **outcome})


def run_reference(grid: Grid, out: Path, progress: bool = False) -> dict[str, Any]:
    """Probe the teacher (live or from its cache) and the log-mel baseline once for the grid."""
    from ssondo_eval.evaluate import run_evaluation

    folder = reference_dir(out, grid)
    folder.mkdir(parents=True, exist_ok=True)
    started = time.time(), time.process_time()
    e = grid.config.eval
    try:
        report = run_evaluation(
            [],
            e.tasks,
            folder,
            teacher=e.teacher,
            checkpoint=e.checkpoint,
            work=grid.workspace if e.cache else None,
            cache=e.cache,
            baseline=e.baseline,
            teacher_ts=e.teacher_ts,
            device=e.device,
            batch_size=e.batch_size,
            probe_config=_probe(grid),
            cache_dir=out / "embeddings",
            teacher_options=e.teacher_options,
            progress=progress,
        )
        outcome = {
            "status": "done",
            "teacher": _scores(report, "teacher"),
            "baseline": _scores(report, "baseline"),
        }
    except lifecycle.Stopped:  # preemption: not a failure, the cell resumes on the next launch
        raise
    except Exception as err:  # recorded: the report then has no retention figures, and says why
        outcome = _failure(folder, err)
    return _record(folder, grid, started, {"unit": REFERENCE, "eval": to_dict(e), **outcome})


def _plain(result: Any) -> dict[str, Any]:
    from dataclasses import asdict

    return json.loads(json.dumps(asdict(result), default=str))
