"""Launching a grid: check the inputs (make missing balanced manifests with ssondo_cache.cluster,
refuse missing caches with the `ssondo extract` command that makes them), write DIR/plan.json
first, then run the units this launch owns, claiming each one, in this process, in ``jobs`` local
processes, or as one SLURM array task (or torchrun rank); the report is written at the end."""

from __future__ import annotations

import json
import logging
import os
import re
import shlex
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from queue import Empty
from typing import Any

from pipeline.ablate import cells as units
from pipeline.ablate.grid import Grid, eval_key, load_grid
from ssondo_cache import lifecycle
from ssondo_cache.atomic import write_json
from ssondo_cache.claims import STALE_AFTER, try_claim
from ssondo_cache.provenance import code_version, now_iso
from ssondo_cache.typed_config import ConfigError, to_dict
from ssondo_cache.workspace import Workspace

log = logging.getLogger(__name__)
BALANCED = re.compile(r"balanced-k(\d+)$")
CACHE_NAME = re.compile(r"(?:^|/)ts([^/-]+)-hop([^/]+?)(?:\.zarr)?$")


@dataclass
class LaunchResult:
    out: Path
    ran: list[str] = field(default_factory=list)  # units this launch ran (done or failed)
    skipped: list[str] = field(default_factory=list)  # finished already
    busy: list[str] = field(default_factory=list)  # claimed by another live launch
    failed: list[str] = field(default_factory=list)
    report: Path | None = None

    def summary(self) -> str:
        fail = f" ({len(self.failed)} failed: {', '.join(self.failed)})" if self.failed else ""
        busy = f", {len(self.busy)} claimed by other launches" if self.busy else ""
        where = f"; report {self.report}" if self.report else ""
        return f"ablate: ran {len(self.ran)}{fail}, {len(self.skipped)} already done{busy}{where}"


# ---------------------------------------------------------------- inputs


def extract_command(work: Path, cache: str, teacher: str | None) -> str:
    m = CACHE_NAME.search(cache)
    ts, hop = (m.group(1), m.group(2)) if m else ("TS", "HOP")
    return f"ssondo extract {work} --teacher {teacher or 'TEACHER'} --ts {ts} --hop {hop}"


def check_caches(grid: Grid) -> None:
    """Every cache the cells train on exists and is complete; else the extract command that makes it."""
    from ssondo_cache.cache_index import open_cache

    work = grid.workspace
    if not Workspace(work).clips_manifest.is_file():
        raise FileNotFoundError(
            f"{grid.source}: workspace {work} has no packed corpus: run `ssondo pack` (or, for the demo grids, `ssondo demo`) first"
        )
    for cache, teacher in sorted({(c.config["cache"], c.config.get("teacher")) for c in grid.cells}, key=str):
        try:
            store = open_cache(work, cache)
        except FileNotFoundError:
            raise FileNotFoundError(
                f"{grid.source}: cache {cache!r} is not in {work}/cache: make it with "
                f"`{extract_command(work, cache, teacher)}`, then re-run"
            ) from None
        if not store.is_complete():
            raise FileNotFoundError(
                f"{grid.source}: cache {cache!r} misses {store.missing_rows()} rows: finish it with "
                f"`{extract_command(work, cache, teacher)}` (it resumes), then re-run"
            )


def make_manifests(grid: Grid, out: Path, progress: bool, stale_after: float) -> list[Path]:
    """Missing balanced-kK manifests, made by the code `ssondo cluster` runs (under a claim: one
    launch makes each, the others wait for it); other missing manifests are refused."""
    work, made = grid.workspace, []
    needs: dict[str, set[str]] = {}
    for c in grid.cells:
        needs.setdefault(c.config["manifest"], set()).add(c.config["cache"])
    for name, caches in sorted(needs.items()):
        if name == "random":
            continue  # uniform sampling: the trainer needs no file
        path = Workspace(work).manifests_dir / f"{name}.parquet" if "/" not in name else Path(name)
        m = BALANCED.fullmatch(name)
        if path.is_file():
            continue
        if m is None:
            raise FileNotFoundError(f"{grid.source}: manifest {name!r} is not in {work}/manifests ({path})")
        cs = grid.config.cluster
        cache = cs.cache or (caches.pop() if len(caches) == 1 else None)
        if cache is None:
            raise ConfigError(
                f"{grid.source}: {name} is trained with caches {sorted(caches)}: say which one to cluster "
                "(cluster.cache)"
            )
        while not path.is_file():
            claim = try_claim(out / "claims", f"manifest-{name}", stale_after)
            if claim is None:
                time.sleep(2.0)  # another launch is clustering it
                continue
            with claim:
                if not path.is_file():
                    from ssondo_cache.cluster import cluster_cache  # FAISS loads only when needed

                    log.info("making %s from cache %s (as `ssondo cluster -k %s`)", path, cache, m.group(1))
                    cluster_cache(
                        work, cache, int(m.group(1)), seed=cs.seed, normalize=cs.normalize, sample=cs.sample,
                        device=cs.device, max_iter=cs.max_iter, n_init=cs.n_init, progress=progress,
                    )  # fmt: skip
                    made.append(path)
    return made


# ---------------------------------------------------------------- plan


def plan_dict(grid: Grid) -> dict[str, Any]:
    return {
        "grid": grid.name,
        "source": str(grid.source),
        "workspace": str(grid.workspace),
        "grid_config": to_dict(grid.config),
        "axes": grid.axes,
        "eval_key": eval_key(grid),
        "cells": [c.to_dict() for c in grid.cells],
    }


def _plan_differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    diff = []
    if old.get("workspace") != new["workspace"]:
        diff.append(f"workspace {old.get('workspace')} -> {new['workspace']}")
    before = {c["slug"]: c for c in old.get("cells", [])}
    for c in new["cells"]:
        was = before.get(c["slug"])
        if was is not None and was["key"] != c["key"]:
            a, b = was["config"], c["config"]
            changed = [
                f"{k} {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)
            ]
            diff.append(f"cell {c['slug']}: {', '.join(changed)}")
    gone = sorted(set(before) - {c["slug"] for c in new["cells"]})
    if gone:
        diff.append(f"cells no longer in the grid: {', '.join(gone)}")
    if old.get("eval_key") != new["eval_key"]:
        diff.append("the evaluation settings")
    return diff


def write_plan(grid: Grid, out: Path, force: bool = False) -> Path:
    """DIR/plan.json, first; a plan that differs from the one there is refused unless ``force``."""
    path = out / "plan.json"
    new = plan_dict(grid)
    if path.is_file():
        old = json.loads(path.read_text())
        diff = _plan_differences(old, new)
        if diff and not force:
            raise ConfigError(
                f"{path} was planned with another grid ({'; '.join(diff)}): pass --force to run the new plan "
                "(finished cells of the old one stay on disk), or choose another --out"
            )
    write_json(path, {**new, "code_version": code_version(), "written": now_iso()})
    return path


# ---------------------------------------------------------------- running units


def _unit_list(grid: Grid, rank: int, world_size: int, static: bool) -> list[str]:
    """Units this launch tries, in order: the reference first, then the cells. ``static`` (array task,
    torchrun rank): cell i belongs to rank i mod world_size, the reference to rank 0."""
    names = [c.name for c in grid.cells]
    if static:
        names = [n for i, n in enumerate(names) if i % world_size == rank]
    ref = [units.REFERENCE] if units.has_reference(grid) and (not static or rank == 0) else []
    return ref + names


def run_units(
    grid: Grid,
    out: Path,
    names: list[str],
    since: float,
    progress: bool = False,
    stale_after: float = STALE_AFTER,
    result: LaunchResult | None = None,
) -> LaunchResult:
    """Run every unit of ``names`` that is not finished and not claimed by a live launch, filling
    ``result``; a stop signal (within lifecycle.stop_on_signals) ends it between or inside units."""
    result = result if result is not None else LaunchResult(out)
    by_name = {c.name: c for c in grid.cells}
    pace: list[float] = []  # seconds per cell run here
    for name in names:
        lifecycle.raise_if_stopped(lambda: f"{len(result.ran)} unit(s) finished in {out}")
        folder = (
            units.reference_dir(out, grid) if name == units.REFERENCE else units.run_dir(out, by_name[name])
        )
        if units.is_done(folder, grid) or units.failed_before(folder, grid, since) is False:
            result.skipped.append(name)
            continue
        claim = try_claim(out / "claims", name, stale_after)
        if claim is None:
            result.busy.append(name)
            continue
        with claim:
            if units.is_done(folder, grid):  # finished between the check and the claim
                result.skipped.append(name)
                continue
            log.info("ablate: %s", name)
            if name == units.REFERENCE:
                status = units.run_reference(grid, out, progress)
            else:
                status = units.run_cell(grid, by_name[name], out, progress)
        result.ran.append(name)
        if name != units.REFERENCE:
            pace.append(status["seconds"])
        left = len(names) - len(result.ran) - len(result.skipped) - len(result.busy)
        eta = f" (about {left * sum(pace) / len(pace) / 60:.0f} min at this pace)" if pace else ""
        log.info("ablate: %s %s in %.0f s; at most %d more in this launch%s",
                 name, status["status"], status["seconds"], left, eta)  # fmt: skip
        if status["status"] != "done":
            result.failed.append(name)
            log.warning("ablate: %s failed: %s", name, status["error"])
    return result


def _job(source: str, overrides: dict[str, Any], out: str, names: list[str], since: float, threads: int,
         gpu: str | None, progress: bool, stale_after: float, queue: Any) -> None:  # fmt: skip
    logging.basicConfig(level=logging.INFO, format=f"[job {os.getpid()}] %(message)s")
    os.environ["OMP_NUM_THREADS"] = str(threads)
    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu
    import torch

    torch.set_num_threads(threads)
    res = LaunchResult(Path(out))
    try:
        with lifecycle.stop_on_signals():  # SLURM signals every process of the job: each stops cleanly
            res = run_units(load_grid(source, overrides), Path(out), names, since, progress, stale_after, res)
    except lifecycle.Stopped as stop:
        queue.put({k: getattr(res, k) for k in ("ran", "skipped", "busy", "failed")})
        sys.exit(stop.exit_code)
    queue.put({k: getattr(res, k) for k in ("ran", "skipped", "busy", "failed")})


def _gpus() -> list[str]:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [g for g in visible.split(",") if g.strip()]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


def run_jobs(grid: Grid, out: Path, names: list[str], since: float, jobs: int, threads: int | None,
             progress: bool, stale_after: float) -> LaunchResult:  # fmt: skip
    """``jobs`` local processes claiming units from the same list; each gets ``threads`` torch
    threads (default: the cores split evenly) and, when there are GPUs, one of them in turn."""
    threads = threads or max(1, (os.cpu_count() or 1) // jobs)
    gpus = _gpus()
    ctx = lifecycle.child_context("spawn", workers=False)  # no forked torch state; dies with this process
    queue = ctx.Queue()
    procs = [
        ctx.Process(
            target=_job,
            args=(
                str(grid.source),
                grid.overrides,
                str(out),
                names,
                since,
                threads,
                gpus[j % len(gpus)] if gpus else None,
                progress and j == 0,
                stale_after,
                queue,
            ),
            daemon=False,  # a daemon cannot start the trainer's DataLoader workers; PDEATHSIG ends it
        )  # fmt: skip
        for j in range(jobs)
    ]
    for p in procs:
        p.start()
        time.sleep(0.5)  # staggered: the first job claims the first unit before the next one looks
    forwarded = False
    while any(p.is_alive() for p in procs):
        for p in procs:
            p.join(0.5)
        if lifecycle.stop_requested() and not forwarded:  # a stop sent to this process alone
            for p in procs:
                if p.is_alive():
                    os.kill(p.pid, lifecycle.stop_requested())
            forwarded = True
    result = LaunchResult(out)
    while True:
        try:
            part = queue.get(timeout=0.1)
        except Empty:
            break
        for k, v in part.items():
            getattr(result, k).extend(v)
    lifecycle.raise_if_stopped(
        lambda: f"{len(result.ran)} unit(s) finished in {out}; the one in flight resumes"
    )
    crashed = [j for j, p in enumerate(procs) if p.exitcode != 0]
    if crashed:
        raise RuntimeError(
            f"ablate: local job(s) {crashed} of {out} died (exit codes "
            f"{[procs[j].exitcode for j in crashed]}); re-run to resume"
        )
    result.busy = [n for n in result.busy if n not in result.ran and n not in result.skipped]
    return result


def run_grid(
    grid_file: str | Path,
    out: str | Path,
    *,
    jobs: int = 1,
    threads: int | None = None,
    rank: int = 0,
    world_size: int = 1,
    static: bool = False,
    force: bool = False,
    report: bool = True,
    progress: bool = True,
    stale_after: float = STALE_AFTER,
    overrides: dict[str, Any] | None = None,
) -> LaunchResult:
    """Everything `ssondo ablate GRID --out DIR` does (see the module doc); ``overrides``: dotted
    GRID keys over the file (`--set`).

    ``static``: one share of a SLURM array or torchrun (``rank`` of ``world_size``) runs only its
    cells; otherwise every unit not finished and not claimed is run."""
    since = time.time()
    grid = load_grid(grid_file, overrides)
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    check_caches(grid)  # quick refusals before anything is written
    write_plan(grid, out, force)
    make_manifests(grid, out, progress, stale_after)
    names = _unit_list(grid, rank, world_size, static)
    if jobs > 1:
        result = run_jobs(grid, out, names, since, jobs, threads, progress, stale_after)
    else:
        result = run_units(grid, out, names, since, progress, stale_after)
    record = {k: getattr(result, k) for k in ("ran", "skipped", "busy", "failed")}
    host = socket.gethostname()
    write_json(out / "launches" / f"{int(since)}-{host}-{os.getpid()}.json",
               {**record, "host": host, "pid": os.getpid(), "jobs": jobs, "rank": rank,
                "world_size": world_size, "static": static, "started": since, "finished": now_iso()})  # fmt: skip
    if report:
        from pipeline.ablate.report import write_ablation_report

        result.report = write_ablation_report(out)
    return result


def sbatch_script(
    grid_file: str | Path,
    out: str | Path,
    options: dict[str, Any] | None = None,
    overrides: dict[str, Any] | None = None,
) -> str:
    """The sbatch script running one cell per array task, with the array sized to the grid."""
    grid = load_grid(grid_file, overrides)
    out = Path(out).resolve()
    n = len(grid.cells)
    settings = {
        "job-name": f"ablate-{grid.name}",
        "array": f"0-{n - 1}",
        "cpus-per-task": 8,
        "gres": "gpu:1",
        "output": f"{out}/slurm/%A_%a.out",
        **(options or {}),
    }
    sets = "".join(f" --set {shlex.quote(f'{k}={json.dumps(v)}')}" for k, v in grid.overrides.items())
    lines = ["#!/bin/bash", *[f"#SBATCH --{k}={v}" for k, v in settings.items()]]
    lines += [
        f"# {n} cells of {grid.source}; the reference (teacher + baseline probes) runs in task 0.",
        f"# mkdir -p {out}/slurm && sbatch this.sh; afterwards (or as a dependent job):",
        f"#   ssondo ablate report {out}",
        "set -euo pipefail",
        f"ssondo ablate {grid.source} --out {out} --array{sets}",
        "",
    ]
    return "\n".join(lines)
