"""The life of the processes a command starts, and how a command stops when asked to.

Children die with their parent. ``child_context(method)`` is a multiprocessing context (give it to
``DataLoader(multiprocessing_context=...)`` or use its ``Pool``) whose children, as their very first
act, ask Linux to SIGKILL them when the parent dies (``prctl(PR_SET_PDEATHSIG)``) and exit at once if
the parent is already gone (the PID it had when the child was created is compared with ``getppid``,
which closes the window before the prctl). A spawned child runs this while it unpickles its process
object, before the target's module (torch, the dataset) is imported: torch's own watchdog records
the parent only after those imports, so a parent killed during a slow start-up used to leave its
workers running for good. The resource tracker needs no care: it exits when the last process that
holds its pipe (the parent and its children) is gone, after unlinking what they leaked.

Workers (the default) ignore SIGTERM, SIGINT and SIGUSR1: a batch system (SLURM) or a terminal
sends those to every process of the job, and the parent decides when its workers end
(``terminate()`` of these children sends SIGKILL, also from multiprocessing's exit hook, which
terminates then joins the daemonic children left alive, e.g. a DataLoader's workers after an
error; a DataLoader or a Pool otherwise ends them through their queues; a worker killed under a
DataLoader or a Pool would make the parent fail or hang). A DataLoader worker must re-ignore them
after torch installs its own handlers: pass
``worker_init_fn=WorkerInit(fn)``. Children that are long commands of their own take
``child_context(workers=False)``: they die with the parent but keep their signals.

Stopping. Within ``stop_on_signals()`` the first SIGTERM, SIGINT or SIGUSR1 only records itself;
long loops poll ``stop_requested()`` between units of work (a block, a step, a shard, a clip),
leave every finished unit saved and raise ``Stopped`` saying what was saved. A second SIGINT stops
the process at once (Ctrl-C twice); a repeated SIGTERM or SIGUSR1 changes nothing. Outside
``stop_on_signals()`` nothing is recorded: library calls behave as before.
"""

from __future__ import annotations

import ctypes
import multiprocessing.context as mpc
import os
import signal
import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from multiprocessing import popen_fork, popen_spawn_posix
from typing import Any, TypeVar

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
EXIT_ORPHANED = 3  # status of a child that found its parent gone before it could start
POLL_SECONDS = 0.2  # how often a wait on pool results looks for a stop request

T = TypeVar("T")


# ---------------------------------------------------------------- children die with their parent
def die_with_parent(parent_pid: int) -> None:
    """In a child: be SIGKILLed when the parent dies (Linux), and exit now if it already has."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"prctl(PR_SET_PDEATHSIG) failed: {os.strerror(err)}")
    if os.getppid() != parent_pid:  # died before the prctl: the kernel would never tell us
        os._exit(EXIT_ORPHANED)


def ignore_stop_signals() -> None:
    """The parent alone decides when its children stop (see the module doc)."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


def _start_child(parent_pid: int, workers: bool) -> None:
    die_with_parent(parent_pid)
    if workers:
        ignore_stop_signals()


def _rebuild_in_child(cls: type, parent_pid: int) -> Any:
    """Unpickled first in a spawned child, before the process object's state (its target, args)."""
    _start_child(parent_pid, cls._workers)
    return cls.__new__(cls)


class _ChildProcess:
    """Mixed into a context's Process class: the guard runs first thing in the child."""

    _workers = True  # a worker ignores the stop signals; a job (False) keeps them, to stop itself

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._ssondo_parent = os.getpid()  # the PID the child must see as its parent

    def __reduce__(self) -> tuple:  # spawn: pickle calls _rebuild_in_child, then restores __dict__
        return (_rebuild_in_child, (type(self), self._ssondo_parent), self.__dict__)

    def run(self) -> None:
        _start_child(self._ssondo_parent, self._workers)  # fork: first thing in the child; spawn: a repeat
        super().run()


class _KillOnTerminate:
    """Mixed into a worker's Popen: the worker ignores SIGTERM, so terminating it sends SIGKILL.
    On the Popen, not the Process: multiprocessing's exit hook calls ``p._popen.terminate()`` on
    the daemonic children still alive (a DataLoader's workers, kept by an error's traceback), then
    joins them; a SIGTERM there made the parent wait forever."""

    def terminate(self) -> None:
        self.kill()


class _KillingForkPopen(_KillOnTerminate, popen_fork.Popen):
    pass


class _KillingSpawnPopen(_KillOnTerminate, popen_spawn_posix.Popen):
    pass


class _SpawnWorker(_ChildProcess, mpc.SpawnProcess):
    _Popen = staticmethod(_KillingSpawnPopen)


class _ForkWorker(_ChildProcess, mpc.ForkProcess):
    _Popen = staticmethod(_KillingForkPopen)


class _SpawnJob(_ChildProcess, mpc.SpawnProcess):
    _workers = False


class _ForkJob(_ChildProcess, mpc.ForkProcess):
    _workers = False


class _SpawnWorkers(mpc.SpawnContext):
    Process = _SpawnWorker


class _ForkWorkers(mpc.ForkContext):
    Process = _ForkWorker


class _SpawnJobs(mpc.SpawnContext):
    Process = _SpawnJob


class _ForkJobs(mpc.ForkContext):
    Process = _ForkJob


_CONTEXTS: dict[tuple[str, bool], type[mpc.BaseContext]] = {
    ("spawn", True): _SpawnWorkers,
    ("fork", True): _ForkWorkers,
    ("spawn", False): _SpawnJobs,
    ("fork", False): _ForkJobs,
}


def child_context(method: str | None = None, workers: bool = True) -> mpc.BaseContext:
    """A multiprocessing context (``spawn`` or ``fork``) whose children die with their parent.
    None: ``fork`` on Linux (what a DataLoader uses there by default), ``spawn`` elsewhere.
    ``workers``: the children ignore the stop signals (module doc); False for children that are
    long commands of their own (e.g. one training of a grid) and stop themselves on a signal.
    (``forkserver`` children are the server's, not ours: the parent check could not hold.)"""
    if method is None:
        method = "fork" if sys.platform.startswith("linux") else "spawn"
    if (method, workers) not in _CONTEXTS:
        raise ValueError(f"child processes start by spawn or fork, not {method!r}")
    return _CONTEXTS[method, workers]()


@dataclass(frozen=True)
class WorkerInit:
    """``worker_init_fn`` of a DataLoader on ``child_context``: torch's worker installs its own
    SIGTERM handler after the child's guard ran, so ignore the stop signals again, then ``then``."""

    then: Callable[[int], None] | None = None

    def __call__(self, worker_id: int) -> None:
        ignore_stop_signals()
        if self.then is not None:
            self.then(worker_id)


# ---------------------------------------------------------------- stopping at a resumable point
class Stopped(Exception):
    """A long command stopped on a signal at a resumable point; ``saved`` says what is kept."""

    def __init__(self, sig: int, saved: str) -> None:
        self.signal = signal.Signals(sig)
        self.saved = saved
        super().__init__(f"stopped by {self.signal.name}: {saved}")

    @property
    def exit_code(self) -> int:
        return 128 + int(self.signal)  # what a shell reports for a process killed by that signal


_received: list[int] = []  # stop signals seen inside stop_on_signals()


def stop_requested() -> signal.Signals | None:
    """The first stop signal received inside ``stop_on_signals()``, else None."""
    return signal.Signals(_received[0]) if _received else None


def raise_if_stopped(saved: str | Callable[[], str]) -> None:
    """Raise ``Stopped`` if a stop was requested; ``saved`` (or what it returns) says what is kept."""
    sig = stop_requested()
    if sig is not None:
        raise Stopped(sig, saved() if callable(saved) else saved)


def _on_stop_signal(signum: int, frame: Any) -> None:
    if not _received:
        _received.append(signum)
    elif signum == signal.SIGINT:  # Ctrl-C twice: stop now
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
    # a repeated SIGTERM / SIGUSR1 changes nothing: torchrun forwards the SIGTERM that SLURM already
    # sent to every process, and the batch system's SIGKILL is the hard stop


@contextmanager
def stop_on_signals() -> Iterator[None]:
    """Within: SIGTERM, SIGINT and SIGUSR1 ask long loops to stop at a resumable point (module doc).
    Call it in the main thread (Python runs signal handlers there)."""
    previous = {sig: signal.signal(sig, _on_stop_signal) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        _received.clear()


def until_stopped(results: Iterable[T]) -> Iterator[T]:
    """The items of ``results`` until a stop is requested. A multiprocessing pool's ``imap``
    iterator is polled every POLL_SECONDS, so a stop need not wait for the unit in flight."""
    if stop_requested() is not None:  # before iter(): a DataLoader would start its workers
        return
    poll = getattr(results, "next", None)  # multiprocessing.pool.IMapIterator.next(timeout)
    it = iter(results)
    while stop_requested() is None:
        try:
            yield poll(timeout=POLL_SECONDS) if poll is not None else next(it)
        except StopIteration:
            return
        except mpc.TimeoutError:
            continue


def stop_agreed(world_size: int, device: Any = "cpu") -> signal.Signals | None:
    """The stop signal if any of ``world_size`` ranks received one (a collective: every rank calls
    it at the same point, so all stop at the same step), else None."""
    sig = stop_requested()
    if world_size <= 1:
        return sig
    import torch
    import torch.distributed as dist

    flag = torch.tensor([int(sig or 0)], device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    value = int(flag.item())
    return signal.Signals(value) if value else None
