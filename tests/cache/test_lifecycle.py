"""Children die with their parent (real processes, SIGKILL at several moments of start-up), the
stop signals, and the stop request that long loops poll."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ssondo_cache import lifecycle
from ssondo_cache.pack import pack
from tests.cache.conftest import write_audio

REPO = Path(__file__).resolve().parents[2]
GRACE = 10.0  # seconds an orphan may take to go


# ---------------------------------------------------------------- processes, read from /proc
def _stat(pid: int) -> tuple[str, int] | None:
    """(state, parent PID) of a process, None when it does not exist."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return fields[0].decode(), int(fields[1])


def _running(pid: int) -> bool:
    st = _stat(pid)
    return st is not None and st[0] not in ("Z", "X")  # a zombie has exited


def descendants(root: int) -> list[int]:
    """Every live process below ``root`` (children, their children, ...)."""
    parents = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit() and (st := _stat(int(d.name))) and st[0] not in ("Z", "X"):
            parents[int(d.name)] = st[1]
    out, frontier = [], {root}
    while frontier:
        frontier = {p for p, pp in parents.items() if pp in frontier}
        out.extend(frontier)
    return out


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def ignores(pid: int, sig: int) -> bool:
    """Whether process ``pid`` ignores signal ``sig`` (SigIgn mask in /proc/PID/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigIgn:"):
            return bool(int(line.split()[1], 16) >> (sig - 1) & 1)
    return False


def wait_gone(pids: list[int], timeout: float = GRACE) -> list[int]:
    """Those of ``pids`` still running after ``timeout`` seconds (returns as soon as none is)."""
    deadline = time.monotonic() + timeout
    while (left := [p for p in pids if _running(p)]) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


def kill_tree(proc: subprocess.Popen) -> None:
    """Safety net: whatever a failed test left, in the session the test started."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def start(args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.Popen(
        args, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True
    )


def kill_parent_and_check(proc: subprocess.Popen) -> list[str]:
    """SIGKILL ``proc``; the command lines of its descendants still running GRACE s later."""
    children = descendants(proc.pid)
    os.kill(proc.pid, signal.SIGKILL)
    t0 = time.monotonic()
    proc.wait()
    left = [f"{p}: {cmdline(p)}" for p in wait_gone(children)]
    print(f"{len(children)} children, all gone {time.monotonic() - t0:.2f} s after the kill")  # pytest -s
    return left


# ---------------------------------------------------------------- the contexts themselves
PARENT = """
import os, sys, time
sys.path.insert(0, {helpers!r})
from ssondo_cache.lifecycle import child_context
if __name__ == "__main__":  # a spawned child imports this file again, as __mp_main__
    import slow_target
    os.environ["SLOW_IMPORT"] = os.environ["CHILD_SLOW_IMPORT"]  # spawned children import it again
    ctx = child_context({method!r}, workers={workers!r})
    if {pool!r}:
        pool = ctx.Pool(2)
        pool.map_async(slow_target.run, [1, 2])
    else:
        ctx.Process(target=slow_target.run, args=(0,)).start()
    print("started", flush=True)
    time.sleep(600)
"""

# A worker's target module that takes long to import, as torch does in a spawned DataLoader worker.
SLOW_TARGET = """
import time
time.sleep(float(__import__("os").environ.get("SLOW_IMPORT", "0")))
def run(_):
    time.sleep(600)
"""


def _parent(
    tmp_path: Path, method: str, pool: bool = False, slow_import: float = 0.0, workers: bool = True
) -> subprocess.Popen:
    (tmp_path / "slow_target.py").write_text(SLOW_TARGET)
    script = tmp_path / "parent.py"
    script.write_text(PARENT.format(helpers=str(tmp_path), method=method, pool=pool, workers=workers))
    return start([sys.executable, str(script)], env={"CHILD_SLOW_IMPORT": str(slow_import)})


def _children_of(proc: subprocess.Popen, n: int, timeout: float = 30.0, match: str = "") -> list[int]:
    """Wait for ``n`` children of ``proc`` (resource tracker aside) whose command line holds ``match``."""
    deadline = time.monotonic() + timeout
    while len(kids := [p for p in descendants(proc.pid) if _worker(p, match)]) < n:
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert time.monotonic() < deadline, "children did not start"
        time.sleep(0.02)
    return kids


def _worker(pid: int, match: str) -> bool:
    line = cmdline(pid)
    return "resource_tracker" not in line and match in line


@pytest.mark.parametrize("workers", [True, False], ids=["workers", "jobs"])
@pytest.mark.parametrize("method", ["spawn", "fork"])
def test_children_die_with_their_parent(tmp_path: Path, method: str, workers: bool):
    proc = _parent(tmp_path, method, workers=workers)
    try:
        kid = _children_of(proc, 1)[0]
        assert proc.stdout.readline() == b"started\n"
        deadline = time.monotonic() + 30
        while ignores(kid, signal.SIGUSR1) != workers:  # a job keeps its signals, to stop itself
            assert time.monotonic() < deadline, "the child's guard did not run"
            time.sleep(0.02)
        assert kill_parent_and_check(proc) == []
    finally:
        kill_tree(proc)


@pytest.mark.parametrize("delay", [0.0, 0.5])
def test_a_spawned_child_dies_while_still_importing_its_target(tmp_path: Path, delay: float):
    """The guard runs before the target's module is imported: a parent killed during a slow
    import (torch in a DataLoader worker) does not leave the child to finish it."""
    proc = _parent(tmp_path, "spawn", slow_import=60)
    try:
        kid = _children_of(proc, 1)[0]
        time.sleep(delay)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        assert wait_gone([kid], timeout=3.0) == [], f"child still importing: {cmdline(kid)}"
    finally:
        kill_tree(proc)


def test_pool_workers_die_with_their_parent_and_ignore_stop_signals(tmp_path: Path):
    proc = _parent(tmp_path, "spawn", pool=True)
    try:
        kids = _children_of(proc, 2)
        assert proc.stdout.readline() == b"started\n"
        deadline = time.monotonic() + 30
        while not all(ignores(k, s) for k in kids for s in lifecycle.STOP_SIGNALS):
            assert time.monotonic() < deadline, "pool workers do not ignore the stop signals"
            time.sleep(0.02)
        for kid in kids:
            os.kill(kid, signal.SIGTERM)  # what SLURM sends every process of a job: the parent decides
            os.kill(kid, signal.SIGUSR1)
        time.sleep(0.5)
        assert all(_running(k) for k in kids)
        assert kill_parent_and_check(proc) == []
    finally:
        kill_tree(proc)


def test_a_child_whose_parent_is_already_gone_exits_at_once():
    code = "from ssondo_cache.lifecycle import die_with_parent; die_with_parent(1); print('ran on')"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, timeout=60)
    assert out.returncode == lifecycle.EXIT_ORPHANED and b"ran on" not in out.stdout


def test_terminate_stops_a_child_that_ignores_sigterm():
    ctx = lifecycle.child_context("spawn")
    p = ctx.Process(target=time.sleep, args=(600,))
    p.start()
    try:
        p.terminate()
        p.join(timeout=30)
        assert p.exitcode == -signal.SIGKILL
    finally:
        p.kill()


def test_forkserver_is_refused():
    with pytest.raises(ValueError, match="forkserver"):
        lifecycle.child_context("forkserver")


# ---------------------------------------------------------------- stop requests
@pytest.mark.parametrize("sig", lifecycle.STOP_SIGNALS)
def test_a_stop_signal_is_recorded_then_raised_where_polled(sig: signal.Signals):
    before = signal.getsignal(sig)
    with lifecycle.stop_on_signals():
        assert lifecycle.stop_requested() is None
        lifecycle.raise_if_stopped("nothing")  # no stop asked: returns
        os.kill(os.getpid(), sig)
        time.sleep(0.01)  # the handler runs between bytecodes of the main thread
        assert lifecycle.stop_requested() == sig
        with pytest.raises(lifecycle.Stopped) as info:
            lifecycle.raise_if_stopped(lambda: "3 blocks written")
    assert info.value.exit_code == 128 + sig and info.value.saved == "3 blocks written"
    assert sig.name in str(info.value)
    assert lifecycle.stop_requested() is None and signal.getsignal(sig) == before


REPEAT = """
import os, signal, sys
from ssondo_cache.lifecycle import stop_on_signals, stop_requested
sig = signal.Signals[sys.argv[1]]
with stop_on_signals():
    os.kill(os.getpid(), sig)
    os.kill(os.getpid(), sig)
    print(stop_requested().name, flush=True)
"""


@pytest.mark.parametrize("sig", lifecycle.STOP_SIGNALS, ids=lambda s: s.name)
def test_a_second_sigint_stops_at_once_a_repeated_sigterm_does_not(sig: signal.Signals):
    """torchrun forwards SLURM's SIGTERM to workers that already got it: that must not cut the stop
    short; Ctrl-C twice is a user who wants out now."""
    out = subprocess.run([sys.executable, "-c", REPEAT, sig.name], cwd=REPO, capture_output=True, timeout=60)
    if sig == signal.SIGINT:
        assert out.returncode == -signal.SIGINT and out.stdout == b""
    else:
        assert out.returncode == 0 and out.stdout == f"{sig.name}\n".encode()


def test_until_stopped_does_not_wait_for_the_unit_in_flight():
    ctx = lifecycle.child_context("spawn")
    with ctx.Pool(1) as pool, lifecycle.stop_on_signals():
        results = pool.imap_unordered(time.sleep, [0.0, 600.0, 0.0])
        got, t0 = [], time.monotonic()
        for r in lifecycle.until_stopped(results):
            got.append(r)
            os.kill(os.getpid(), signal.SIGTERM)
        assert lifecycle.stop_requested() == signal.SIGTERM
        assert got == [None] and time.monotonic() - t0 < 10
    assert lifecycle.stop_agreed(world_size=1) is None  # outside: nothing recorded


# ---------------------------------------------------------------- ssondo extract, killed in start-up
SLOW_TEACHER = "py:tests.cache.test_extract:slow_tiny"


@pytest.fixture(scope="module")
def tiny_work(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("orphans")
    for i in range(16):
        write_audio(root / "audio" / f"c{i}.wav", 1.0, 16000, seed=i)
    pack([root / "audio"], root / "work", shard_size=2, progress=False)
    return root / "work"


def _extract(work: Path) -> subprocess.Popen:
    return start(
        [
            *(sys.executable, "-m", "pipeline.cli", "extract", str(work)),
            *("--teacher", SLOW_TEACHER, "-o", "dim=8", "--ts", "1", "--device", "cpu"),
            *("--batch-size", "8", "--workers", "2", "--no-progress"),
        ]
    )


@pytest.mark.slow
@pytest.mark.parametrize("moment", [0.0, 0.4, 1.5, "first block"])
def test_extract_workers_die_with_a_killed_parent(tiny_work: Path, tmp_path: Path, moment):
    """kill -9 of `ssondo extract` at several moments of its spawned decode workers' start-up (in
    their interpreter start, in the torch import, running): no worker, no resource tracker is left."""
    work = tmp_path / "work"
    subprocess.run(["cp", "-r", str(tiny_work), str(work)], check=True)
    proc = _extract(work)
    try:
        _children_of(proc, 1, timeout=120, match="spawn_main")  # the first worker exists: start-up has begun
        if moment == "first block":
            deadline = time.monotonic() + 120
            while not list((work / "cache").glob("*/ts1-hop1.zarr/done/c/*")):
                assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read().decode()
                time.sleep(0.05)
        else:
            time.sleep(moment)
        assert proc.poll() is None, "extract ended before it could be killed"
        kids = descendants(proc.pid)
        assert any("spawn_main" in cmdline(k) for k in kids), kids
        assert kill_parent_and_check(proc) == []
    finally:
        kill_tree(proc)


# ---------------------------------------------------------------- a worker's error ends the process
# A training whose DataLoader workers (fork, 2) fail on their first read: the error propagates out of
# train() and its traceback keeps the loader's iterator, hence its workers, alive until the exit.
FAILING_TRAIN = """
import sys, torch
torch.set_num_threads(1)
from ssondo_distill import stream
from ssondo_distill.config import load_train_config
from ssondo_distill.trainer import train
def broken(*args, **kwargs):
    raise OSError("simulated: a shard member cannot be read")
stream.read_segment = broken  # forked workers inherit it
train(load_train_config(sys.argv[1]), progress=False)
"""


@pytest.mark.slow
def test_a_training_whose_worker_raises_exits_instead_of_waiting_on_its_workers(tmp_path: Path):
    """multiprocessing's exit hook terminates then joins the daemonic workers left alive; they ignore
    SIGTERM, so terminate() must SIGKILL them there too, or the process never ends."""
    import json

    from ssondo_cache.typed_config import to_dict
    from tests.distill.test_stream import make_corpus, write_cache
    from tests.distill.test_trainer import tiny_cfg

    work = make_corpus(tmp_path / "corpus", n_clips=16, shard_size=4, dim=8)
    write_cache(work, "wide", 16, 4)
    cfg = tmp_path / "train.json"
    cfg.write_text(json.dumps(to_dict(tiny_cfg(work, tmp_path / "run", num_workers=2, epochs=1))))
    proc = start([sys.executable, "-c", FAILING_TRAIN, str(cfg)])
    try:
        _, err = proc.communicate(timeout=60)
        assert proc.returncode != 0 and b"simulated: a shard member" in err, err.decode()[-3000:]
    except subprocess.TimeoutExpired:
        pytest.fail(f"the training hung at exit: {[cmdline(p) for p in descendants(proc.pid)]}")
    finally:
        kill_tree(proc)


DAEMON_LEFT = """
import sys, time
from ssondo_cache.lifecycle import child_context
if __name__ == "__main__":
    ctx = child_context(sys.argv[1])
    ctx.Process(target=time.sleep, args=(600,), daemon=True).start()
    time.sleep(0.5)  # the child is up and ignores SIGTERM
    sys.exit(1)
"""


@pytest.mark.parametrize("method", ["spawn", "fork"])
def test_the_exit_hook_kills_a_daemonic_worker_left_alive(tmp_path: Path, method: str):
    script = tmp_path / "parent.py"
    script.write_text(DAEMON_LEFT)
    proc = start([sys.executable, str(script), method])
    try:
        proc.wait(timeout=30)
        assert proc.returncode == 1, proc.stderr.read().decode()[-2000:]
    finally:
        kill_tree(proc)
