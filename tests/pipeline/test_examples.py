"""The examples run as shipped: their defaults name files that exist, torchrun trains with 2 CPU
processes (gloo), and the SLURM array script with SLURM_ARRAY_* set by hand for 2 local processes
ends in the same cache, bit for bit, as one process."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import zarr

from ssondo_cache.extract import extract
from ssondo_cache.pack import pack
from ssondo_cache.typed_config import to_dict
from ssondo_distill.checkpoint import load_student
from ssondo_distill.config import load_train_config
from tests.cache.conftest import write_audio
from tests.cache.test_lifecycle import kill_tree, start
from tests.distill.test_stream import make_corpus, write_cache
from tests.distill.test_trainer import CACHE, tiny_cfg

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
BIN = Path(sys.executable).parent  # the venv's ssondo and torchrun
ARRAYS = ("emb", "clip", "n_windows", "done")


def _env(**over: str) -> dict[str, str]:
    return {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": str(REPO),  # the tiny teacher lives in tests/
        "OMP_NUM_THREADS": "1",
        **over,
    }


def _run(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=cwd, env=_env(**env), capture_output=True, text=True, timeout=600)


def _recorder(tmp_path: Path) -> tuple[Path, Path]:
    """A stand-in for torchrun / ssondo that writes its arguments to a file."""
    log = tmp_path / "args.txt"
    fake = tmp_path / "record"
    fake.write_text(f'#!/usr/bin/env bash\nprintf "%s\\n" "$@" > {shlex.quote(str(log))}\n')
    fake.chmod(0o755)
    return fake, log


def _option(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


def test_torchrun_example_defaults_name_files_that_exist(tmp_path: Path):
    """Run from another folder with the defaults a user gets: the config it names loads."""
    fake, log = _recorder(tmp_path)
    out = _run(["bash", str(EXAMPLES / "torchrun_train.sh"), "W", "C", "R"], tmp_path, TORCHRUN=str(fake))
    assert out.returncode == 0, out.stderr
    args = log.read_text().splitlines()
    assert _option(args, "--nproc_per_node") == "8" and args[args.index("-m") + 1] == "pipeline.cli"
    config = Path(_option(args, "--config"))
    assert config.is_file(), f"{config} does not exist"
    cfg = load_train_config(config, {"work": "W", "cache": "C", "out": "R"})
    assert (cfg.student, cfg.teacher) == ("mn10", "matpac")
    assert _option(args, "--manifest") == "W/manifests/balanced-k50.parquet" and "--resume" in args


def test_slurm_example_defaults_are_the_paper_run(tmp_path: Path):
    fake, log = _recorder(tmp_path)
    script = str(EXAMPLES / "slurm_extract.sh")
    out = _run(["bash", script, "W", "/models/m.pt"], tmp_path, SSONDO=str(fake))
    assert out.returncode == 0, out.stderr
    args = log.read_text().splitlines()
    assert args[:2] == ["extract", "W"] and "--compile" in args
    expected = {"--teacher": "matpac", "--ts": "6", "--device": "cuda", "--batch-size": "256"}
    assert {k: _option(args, k) for k in expected} == expected
    assert _option(args, "--checkpoint") == "/models/m.pt" and _option(args, "--workers") == "1"
    missing = _run(["bash", script, "W"], tmp_path, SSONDO=str(fake))
    assert missing.returncode != 0 and "checkpoint" in missing.stderr  # forgetting it is an error


@pytest.mark.slow
def test_torchrun_example_trains_with_two_cpu_processes_through_a_preemption(tmp_path: Path):
    """SIGTERM to the whole job (torchrun forwards it to ranks that already have it): both ranks stop
    at the same step with its checkpoint; the same command then finishes the run."""
    work = make_corpus(tmp_path / "data", n_clips=40, shard_size=4, dim=8)
    write_cache(work, "wide", 16, 4)
    cfg = to_dict(tiny_cfg(work, tmp_path / "unused", epochs=2, checkpoint_every=100, mixup_alpha=0.0))
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps({k: v for k, v in cfg.items() if k not in ("work", "out", "cache")}))
    run = tmp_path / "run"
    args = ["bash", str(EXAMPLES / "torchrun_train.sh"), str(work), CACHE, str(run)]
    env = dict(NPROC="2", CONFIG=str(config), MANIFEST="random")
    proc = start(args, env=_env(**env))
    metrics = run / "metrics.jsonl"

    def trained_a_few_steps() -> bool:
        lines = metrics.read_text().splitlines() if metrics.exists() else []
        return max((json.loads(x).get("step", 0) for x in lines), default=0) >= 4

    try:
        deadline = time.monotonic() + 300
        while not trained_a_few_steps():
            assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
            assert time.monotonic() < deadline, "no training steps"
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGTERM)  # what SLURM does on preemption
        _, err = proc.communicate(timeout=60)
    finally:
        kill_tree(proc)
    assert proc.returncode != 0
    stops = re.findall(r"stopped by SIGTERM: checkpoint of step (\d+) of 10", err.decode())
    assert len(stops) == 2 and stops[0] == stops[1], err.decode()[-3000:]  # both ranks, one step
    assert [p.name for p in (run / "checkpoints").glob("step-*.pt")] == [f"step-{int(stops[0]):09d}.pt"]
    out = _run(args, tmp_path, **env)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    result = json.loads((run / "result.json").read_text())
    assert result["result"]["steps"] == 10 and result["result"]["resumed_from"] == int(stops[0])
    assert result["identity"]["world_size"] == 2
    model, meta = load_student(run / "student.pt", expect_student="mn04", expect_teacher_dim=8)
    assert meta["teacher_id"] == "tiny-000000000000"
    assert out.stdout.count("10 steps") == 1  # one summary, from rank 0


@pytest.fixture(scope="module")
def packed(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("slurm")
    for i in range(10):
        write_audio(root / "audio" / f"c{i}.wav", 0.4 + 0.3 * (i % 4), 16000, seed=i)
    pack([root / "audio"], root / "work", shard_size=2, progress=False)
    return root / "work"


def _arrays(cache: Path) -> dict[str, bytes]:
    g = zarr.open_group(str(cache), mode="r")
    return {name: g[name][:].tobytes() for name in ARRAYS}


@pytest.mark.slow
def test_slurm_array_of_two_tasks_ends_in_the_one_process_cache(packed: Path, tmp_path: Path):
    subprocess.run(["cp", "-r", str(packed), str(tmp_path / "work")], check=True)
    work = tmp_path / "work"
    settings = dict(
        TEACHER="py:tests.helpers.tiny_teacher:make",
        TEACHER_OPTIONS="dim=8",
        TS="1",
        DEVICE="cpu",
        BATCH_SIZE="8",
        WORKERS="0",
        COMPILE="",
        SLURM_ARRAY_TASK_COUNT="2",
        SLURM_ARRAY_TASK_MIN="3",  # an array --array=3-4: task ids are relative to the first
    )
    script = ["bash", str(EXAMPLES / "slurm_extract.sh"), str(work), ""]
    tasks = [
        subprocess.Popen(
            script,
            cwd=tmp_path,
            env=_env(**settings, SLURM_ARRAY_TASK_ID=str(3 + i)),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    outs = [t.communicate(timeout=600) for t in tasks]
    assert [t.returncode for t in tasks] == [0, 0], outs
    assert all("blocks written" in out for out, _ in outs)
    one = extract(
        packed,
        settings["TEACHER"],
        ts=1,
        device="cpu",
        batch_size=8,
        workers=0,
        progress=False,
        teacher_options={"dim": 8},
    )
    assert _arrays(work / one.cache.relative_to(packed)) == _arrays(one.cache)
