"""`ssondo ablate` with real trainings and evaluations on a tiny workspace (the packed corpus and
cache of tests/distill/test_stream, tiny students of tests/distill/test_trainer): a finished cell
skipped, a failing cell recorded, a missing balanced manifest made, SIGKILL mid-grid then re-run
ending in the same report, two concurrent launches splitting the cells."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from pipeline.ablate.launch import run_grid
from tests.distill.test_stream import make_corpus
from tests.distill.test_trainer import CACHE, FRONTEND

REPO = Path(__file__).resolve().parents[2]
BASE = {
    "cache": CACHE,
    "student": "mn04",
    "frontend": FRONTEND,
    "clip_seconds": 0.5,
    "epochs": 2,
    "samples_per_epoch": 40,
    "batch_size": 8,
    "num_workers": 0,
    "val_clips": 8,
    "val_every": 4,
    "log_every": 2,
    "checkpoint_every": 3,
    "shuffle_buffer": 16,
    "device": "cpu",
    "lr": 3e-3,
    "augment": {"freq_mask": 8, "time_mask": 10},
    "schedule": {"warmup_epochs": 0.5, "rampdown_start": 1.0, "rampdown_epochs": 1.0, "last_value": 0.1},
}


@pytest.fixture(scope="module")
def space(tmp_path_factory) -> Path:
    """A packed 40-clip corpus with its cache, and a two-class task over the same audio (by key)."""
    root = tmp_path_factory.mktemp("ablate")
    make_corpus(root, n_clips=40, shard_size=4, dim=8)
    lines = ["path,label,split,key"]
    for i in range(40):
        split = ("test", "valid", "train", "train", "train")[i % 5]
        lines.append(f"{root}/audio/clip{i:03d}.wav,{'low' if i < 20 else 'high'},{split},clip{i:03d}")
    (root / "tones.csv").write_text("\n".join(lines) + "\n")
    return root


def grid_file(space: Path, path: Path, axes: dict, **base) -> Path:
    grid = {
        "workspace": str(space / "work"),
        "base": {**BASE, **base},
        "axes": axes,
        "eval": {
            "tasks": [f"csv:{space}/tones.csv"],
            "cache": CACHE,
            "device": "cpu",
            "batch_size": 16,
            "probe": {"max_epochs": 30, "patience": 5, "seeds": [0, 1]},
        },
        "cluster": {"device": "cpu", "n_init": 1},
    }
    path.write_text(yaml.safe_dump(grid))
    return path


def status(out: Path, prefix: str) -> dict:
    (run,) = (out / "runs").glob(f"{prefix}-*")
    return json.loads((run / "ablate.json").read_text())


def launches(out: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((out / "launches").glob("*.json"))]


def test_failed_cell_recorded_grid_goes_on_finished_cell_skipped(space, tmp_path):
    # cluster_contrastive on a uniform manifest is refused by the trainer: a failure only training finds
    grid = grid_file(space, tmp_path / "g.yaml", {}, epochs=1, mixup_alpha=0.0)
    data = yaml.safe_load(grid.read_text())
    data["zip"] = [{"loss": ["cluster_contrastive", "cosine"], "manifest": ["random", "balanced-k4"]}]
    grid.write_text(yaml.safe_dump(data))
    out = tmp_path / "out"
    first = run_grid(grid, out, progress=False)
    assert (space / "work" / "manifests" / "balanced-k4.parquet").is_file()  # made as `ssondo cluster -k 4`
    bad, good = (
        status(out, "loss-cluster-contrastive_manifest-random"),
        status(out, "loss-cosine_manifest-balanced-k4"),
    )
    assert bad["status"] == "failed" and "needs clusters" in bad["error"] and Path(bad["traceback"]).is_file()
    assert good["status"] == "done" and set(good["scores"]) == {"tones"}  # the grid went on
    assert first.failed == [next((out / "runs").glob("loss-cluster-contrastive_*")).name]
    md = (out / "report" / "ablation.md").read_text()
    assert "1 of 2 cells done" in md and "needs clusters" in md
    (good_run,) = (out / "runs").glob("loss-cosine_*")
    stamp = (good_run / "student.pt").stat().st_mtime_ns, (good_run / "ablate.json").read_text()
    again = run_grid(grid, out, progress=False)
    assert good_run.name in again.skipped and "reference" in again.skipped
    assert again.ran == first.failed  # only the failed cell is tried again
    assert ((good_run / "student.pt").stat().st_mtime_ns, (good_run / "ablate.json").read_text()) == stamp


def _launch(grid: Path, out: Path, jobs: int = 1) -> subprocess.Popen:
    code = (
        "import sys, torch; torch.set_num_threads(1); from pipeline.ablate.launch import run_grid; "
        "run_grid(sys.argv[1], sys.argv[2], jobs=int(sys.argv[3]), threads=1, progress=False)"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-c", code, str(grid), str(out), str(jobs)], cwd=REPO, env=env,
                            stderr=subprocess.PIPE)  # fmt: skip


def _report_files(out: Path) -> dict[str, list[dict]]:
    """The report's tables, less the code version (other commits may land between two runs)."""
    tables = {}
    for name in ("cells.csv", "settings.csv", "axes.csv"):
        with open(out / "report" / name) as f:
            tables[name] = [
                {k: v for k, v in row.items() if k != "code_version"} for row in csv.DictReader(f)
            ]
    return tables


@pytest.mark.slow
def test_sigkill_mid_grid_then_rerun_gives_the_uninterrupted_report(space, tmp_path):
    grid = grid_file(space, tmp_path / "g.yaml", {"loss": ["cosine", "mse"], "seed": [0]})
    killed, ref = tmp_path / "killed", tmp_path / "ref"
    proc = _launch(grid, killed)
    run_grid(grid, ref, progress=False)  # uninterrupted, meanwhile
    deadline = time.time() + 300
    while not any((killed / "runs").glob("loss-mse*/checkpoints/step-*.pt")):  # second cell mid-training
        assert proc.poll() is None and time.time() < deadline, proc.stderr.read().decode()[-2000:]
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    (mse,) = (killed / "runs").glob("loss-mse*")
    assert not (mse / "student.pt").exists() and not (mse / "ablate.json").exists()
    assert (killed / "claims" / f"{mse.name}.json").exists()  # left by the dead launch: stale at once
    again = run_grid(grid, killed, progress=False)
    assert again.ran == [mse.name] and len(again.skipped) == 2  # the cosine cell and the reference
    assert status(killed, "loss-mse_seed-0")["train"]["resumed_from"] is not None  # resumed, not restarted
    assert _report_files(killed) == _report_files(ref)
    for run in (ref / "runs").iterdir():
        a = torch.load(run / "student.pt", weights_only=True)["state_dict"]
        b = torch.load(killed / "runs" / run.name / "student.pt", weights_only=True)["state_dict"]
        assert all(torch.equal(a[k], b[k]) for k in a if isinstance(a[k], torch.Tensor))


@pytest.mark.slow
def test_two_concurrent_launches_split_the_cells(space, tmp_path):
    # one loader worker per cell: a local job must be able to start processes of its own
    grid = grid_file(
        space, tmp_path / "g.yaml", {"loss": ["cosine", "mse"], "seed": [0, 1]}, epochs=1, num_workers=1
    )
    out = tmp_path / "out"
    procs = [_launch(grid, out, jobs=2), _launch(grid, out)]  # three workers in all
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err.decode()[-2000:]
    records = launches(out)
    assert len(records) == 2
    ran = [name for r in records for name in r["ran"]]
    units = {"reference", *(p.name for p in (out / "runs").iterdir())}
    assert len(units) == 5 and sorted(ran) == sorted(units)  # every unit once: none repeated
    assert all(r["ran"] for r in records)  # both launches did part of the work
    assert "4 of 4 cells done" in (out / "report" / "ablation.md").read_text()


def test_sigterm_stops_cleanly_and_the_cell_resumes(space, tmp_path):
    grid = grid_file(space, tmp_path / "g.yaml", {"seed": [0]}, epochs=3)
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "pipeline.cli", "ablate", str(grid), "--out", str(out), "--no-progress"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not any((out / "runs").glob("*/checkpoints/step-*.pt")):
        assert proc.poll() is None and time.time() < deadline, proc.stderr.read()[-2000:]
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    (run,) = (out / "runs").iterdir()
    if (run / "student.pt").exists():  # the signal came after the last step: nothing left to stop
        pytest.skip("the cell finished before the stop")
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    assert "ssondo ablate: stopped by SIGTERM" in err
    assert not (run / "ablate.json").exists()  # not recorded as failed
    assert not (out / "claims" / f"{run.name}.json").exists()  # its claim released
    again = run_grid(grid, out, progress=False)
    assert again.ran == [run.name] and status(out, "seed-0")["train"]["resumed_from"] is not None
