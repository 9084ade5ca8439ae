"""`make gpu-check`: every GPU check in one command, one table, a non-zero exit on any failure.

Runs, one after the other (one GPU, so nothing overlaps a measurement), each in a child process
with its share of an 8-minute budget (SHARES):
  1. ``pytest -m gpu``: the gpu-marked tests (faiss-gpu and torch computing in one process among them);
  2. every ``benchmarks/gpu_*.py`` but this one, at the sizes in CHECK_ARGS, each writing its rows
     (``--json``) for the table: teacher forward eager / compiled, extraction end to end, the
     training step vs the whole loop, FAISS k-means on the GPU vs the CPU.
Then prints ONE table. Exit status 1 when no GPU is visible (one line, nothing run), or when any part
exits non-zero, runs past its share, skips a gpu test, or prints a CUDA error (some CUDA failures are
only warnings, e.g. torch's "CUDA initialization: ..." before a quiet CPU run). Each part's full
output is kept in the log folder named under the table; a failed part's last lines go to stderr.

    .venv/bin/python benchmarks/gpu_check.py                   # on a GPU host (= make gpu-check)
    .venv/bin/python benchmarks/gpu_check.py --cpu-smoke-test  # checks this logic on a CPU: no figures
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
BUDGET_S = 480  # the whole check, on one GPU
# seconds per part (sum <= BUDGET_S, the rest is start-up); a part may also use what the parts
# before it left of theirs, and one that runs past that fails
SHARES = {
    "pytest -m gpu": 110,
    "gpu_teachers.py": 90,
    "gpu_extract.py": 130,
    "gpu_train.py": 90,
    "gpu_kmeans.py": 45,
}
SMOKE_SLOWDOWN = 4  # a shared CPU running the tiny smoke versions is slower than the GPU at full size
# the check's sizes: big enough for steady-state figures, small enough for the budget (NOT yet timed
# on a GPU). gpu_extract uses TS 6 s at batch 256, the shape gpu_teachers compiles (inductor may reuse it).
CHECK_ARGS = {
    "gpu_teachers.py": ["--batch-size", "256", "--iters", "10", "--no-fast"],
    "gpu_extract.py": ["--unique", "256", "--repeat", "32", "--seconds", "12", "--ts", "6", "--iters", "10"],
    "gpu_train.py": ["--clips", "480", "--steps", "80", "--iters", "20"],
    "gpu_kmeans.py": ["--n", "100000", "--d", "768", "--k", "50"],
    "gpu_pretrain.py": ["--batch-size", "128", "--iters", "5"],  # ViT-B MATPAC++ step (60-s default share)
}
CUDA_ERROR = re.compile(
    r"CUDA error|cudaError|CUBLAS_STATUS_|CUDNN_STATUS_|CUFFT_|NCCL error|illegal memory access|"
    r"device-side assert|CUDA initialization|CUDA out of memory|no kernel image is available"
)
COLUMNS = ("check", "setting", "value", "unit", "vs baseline / note")


def write_rows(path: str | None, rows: list[dict[str, Any]]) -> None:
    """What a gpu_*.py benchmark gives the table: rows {check, setting, value, unit, note}."""
    if path:
        Path(path).write_text(json.dumps(rows, indent=1))


def row(check: str, setting: str, value: float | str, unit: str, note: str = "") -> dict[str, Any]:
    return {"check": check, "setting": setting, "value": value, "unit": unit, "note": note}


def _no_gpu() -> str | None:
    """Why this host cannot run the check, or None."""
    try:
        import faiss
        import torch
    except ImportError as err:  # e.g. a CUDA library of faiss-gpu missing
        return f"cannot import torch and faiss ({err})"
    if not torch.cuda.is_available():
        return "PyTorch sees no CUDA device (torch.cuda.is_available() is False)"
    if faiss.get_num_gpus() == 0:
        return "FAISS sees no GPU (faiss.get_num_gpus() == 0) although PyTorch does"
    return None


def _run(cmd: list[str], timeout: float, log: Path) -> tuple[int | None, str]:
    """Run one part; (exit status or None when it ran past ``timeout``, its output)."""
    from ssondo_cache.lifecycle import die_with_parent

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    with open(log, "w") as out:
        proc = subprocess.Popen(
            cmd,
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its whole group (DataLoader workers too) is killed on a timeout
            preexec_fn=functools.partial(die_with_parent, os.getpid()),
        )
        try:
            status: int | None = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait()
            status = None
    return status, log.read_text(errors="replace")


def _pytest_row(output: str, smoke: bool) -> tuple[dict[str, Any], str | None]:
    """The table's row from pytest's last summary line, and what is wrong (None: nothing)."""
    summary = re.compile(r"(\d+) (passed|failed|skipped|deselected|errors?)\b")
    lines = [line for line in output.splitlines() if summary.search(line)]
    found = summary.findall(lines[-1]) if lines else []
    counts = {("error" if k.startswith("error") else k): int(n) for n, k in found}
    passed, failed = counts.get("passed", 0), counts.get("failed", 0) + counts.get("error", 0)
    skipped = counts.get("skipped", 0)
    note = f"{failed} failed, {skipped} skipped"
    problem = None
    if failed:
        problem = f"{failed} gpu test(s) failed"
    elif skipped and not smoke:
        problem = f"{skipped} gpu test(s) skipped on a GPU host"
    elif not passed and not skipped:
        problem = "no gpu test ran"
    return row("pytest -m gpu", "gpu-marked tests", passed, "passed", note), problem


def _table(rows: list[dict[str, Any]]) -> str:
    def cell(r: dict[str, Any], key: str) -> str:
        v = r[key if key != "vs baseline / note" else "note"]
        return f"{v:,.1f}" if isinstance(v, float) else str(v)

    cells = [[cell(r, k) for k in COLUMNS] for r in rows]
    widths = [max(len(c), *(len(x[i]) for x in cells)) for i, c in enumerate(COLUMNS)]
    line = "  ".join(("{:<%d}" if i != 2 else "{:>%d}") % w for i, w in enumerate(widths))
    out = [line.format(*COLUMNS), line.format(*("-" * w for w in widths))]
    return "\n".join(out + [line.format(*c) for c in cells])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cpu-smoke-test", action="store_true", help="run every part's CPU smoke mode")
    args = ap.parse_args()
    smoke = args.cpu_smoke_test
    if not smoke and (why := _no_gpu()):
        print(f"gpu-check: {why}: run it on a GPU host (nothing was run)", file=sys.stderr)
        return 1
    import torch

    scale = SMOKE_SLOWDOWN if smoke else 1
    logs = Path(tempfile.mkdtemp(prefix="ssondo-gpu-check-"))
    order = list(SHARES)  # the table's order; teachers before extraction (see CHECK_ARGS)
    benches = sorted(
        (p for p in HERE.glob("gpu_*.py") if p.name != Path(__file__).name),
        key=lambda p: (order.index(p.name) if p.name in order else len(order), p.name),
    )
    parts = [("pytest -m gpu", [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider"])]
    for b in benches:
        extra = ["--cpu-smoke-test"] if smoke else CHECK_ARGS.get(b.name, [])
        parts.append((b.name, [sys.executable, str(b), "--json", str(logs / f"{b.stem}.json"), *extra]))

    rows: list[dict[str, Any]] = []
    failures: list[tuple[str, str, str]] = []  # (part, why, its last lines)
    started = time.perf_counter()
    slack = 0.0  # what earlier parts left of their shares: a later part may use it
    for name, cmd in parts:
        t0 = time.perf_counter()
        share = SHARES.get(name, 60) * scale
        status, output = _run(cmd, share + slack, logs / f"{name.replace(' ', '_')}.log")
        seconds = time.perf_counter() - t0
        problem = None
        if status is None:
            problem = f"ran past its {share:.0f} s share (+ {slack:.0f} s left by earlier parts)"
        elif status != 0:
            problem = f"exited with status {status}"
        elif m := CUDA_ERROR.search(output):
            problem = f"printed a CUDA error ({m.group(0)!r})"
        slack = max(0.0, slack + share - seconds)
        if name == "pytest -m gpu":
            r, test_problem = _pytest_row(output, smoke)
            rows.append(r)
            problem = problem or test_problem
        else:
            got = logs / f"{Path(name).stem}.json"
            rows += json.loads(got.read_text()) if got.is_file() else []
        rows.append(row(name, "seconds", round(seconds, 1), "s", f"share {share:.0f} s"))
        if problem:
            failures.append((name, problem, "\n".join(output.splitlines()[-25:])))

    where = "CPU SMOKE TEST: the figures mean nothing" if smoke else torch.cuda.get_device_name()
    print(f"\nGPU check: {where}; torch {torch.__version__} (CUDA {torch.version.cuda})")
    print(_table(rows))
    total = time.perf_counter() - started
    print(f"\ntotal {total:.0f} s (budget {BUDGET_S * scale} s); logs in {logs}")
    for name, problem, tail in failures:
        print(f"\n== {name} FAILED: {problem}; its last lines:\n{tail}", file=sys.stderr)
    if failures:
        print(f"gpu-check FAILED: {', '.join(f'{n} ({p})' for n, p, _ in failures)}", file=sys.stderr)
        return 1
    if total > BUDGET_S * scale:
        print(f"gpu-check FAILED: took {total:.0f} s, over the {BUDGET_S * scale} s budget", file=sys.stderr)
        return 1
    print("gpu-check passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
