"""`make gpu-check`'s driver on a machine without a GPU: one clear line and a non-zero exit, nothing
run; and how it reads pytest's summary (a skipped gpu test on a GPU host is a failure)."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("gpu_check", REPO / "benchmarks" / "gpu_check.py")
gpu_check = importlib.util.module_from_spec(_spec)  # benchmarks/ holds scripts, not a package
_spec.loader.exec_module(gpu_check)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU refusal")
def test_without_a_gpu_it_fails_with_one_line():
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "gpu_check.py")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1 and proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gpu-check: PyTorch sees no CUDA device"), proc.stderr


def test_pytest_summary_is_read_strictly():
    ok, problem = gpu_check._pytest_row("....\n7 passed, 1200 deselected in 50.2s\n", smoke=False)
    assert ok["value"] == 7 and problem is None
    _, problem = gpu_check._pytest_row("6 passed, 1 skipped, 1200 deselected in 3s", smoke=False)
    assert problem == "1 gpu test(s) skipped on a GPU host"
    assert gpu_check._pytest_row("6 passed, 1 skipped in 3s", smoke=True)[1] is None
    assert gpu_check._pytest_row("1 failed, 6 passed in 3s", smoke=False)[1] == "1 gpu test(s) failed"
    assert gpu_check._pytest_row("SKIPPED [2] x.py: 9 passed\n5 passed, 2 errors in 3s", False)[1] == (
        "2 gpu test(s) failed"
    )
    assert gpu_check._pytest_row("1200 deselected in 3s", smoke=False)[1] == "no gpu test ran"
    table = gpu_check._table([gpu_check.row("a", "b", 1234.5, "u", "n")])
    assert table.splitlines()[2].split() == ["a", "b", "1,234.5", "u", "n"]
