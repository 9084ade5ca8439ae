"""Claim files: two jobs on one workspace split its units (ablation cells, cache blocks, tar
shards) instead of repeating them.

A claim is ``DIR/<unit>.json``, created with O_CREAT|O_EXCL (exactly one creator wins), holding its
owner's host, pid and a random token; the owner touches it every ``heartbeat`` seconds while it works.
Staleness rule, so that a preempted owner never blocks a resubmit:
- owner on THIS host whose pid is gone (kill -9, preemption, a crash): stale at once;
- otherwise (owner on another node, or a pid that was reused): stale once not touched for
  ``stale_after`` seconds (STALE_AFTER = 10 minutes, 20 missed heartbeats: longer than any pause
  of a live owner's heartbeat thread, shorter than a requeued SLURM job takes to start again).
A stale claim is taken over by renaming it aside first: of several jobs that judged it stale, one
rename succeeds, and a job that renamed a fresh claim by mistake (its token is not the stale one)
puts it back with a hard link, which never overwrites. A claim only says who is computing a unit;
whether a unit is finished is the artifact's own record (re-checked after claiming it).
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import threading
import time
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ssondo_cache.provenance import now_iso

STALE_AFTER = 600.0  # seconds without a heartbeat
HEARTBEAT = 30.0


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def read_claim(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):  # gone, or being written this very moment
        return None


def is_stale(path: Path, stale_after: float = STALE_AFTER, now: float | None = None) -> bool:
    info = read_claim(path)
    try:
        age = (time.time() if now is None else now) - path.stat().st_mtime
    except FileNotFoundError:
        return False  # released meanwhile: nothing to take over
    if info is None:
        return age > stale_after  # unreadable for that long: a writer died mid-write
    if info.get("host") == socket.gethostname() and not _pid_alive(int(info.get("pid", -1))):
        return True
    return age > stale_after


@dataclass
class Claim:
    path: Path
    token: str
    heartbeat: float = HEARTBEAT
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> Claim:
        self._thread = threading.Thread(target=self._beat, daemon=True, name=f"claim {self.path.name}")
        self._thread.start()
        return self

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat):
            with suppress(OSError):
                os.utime(self.path)

    def owned(self) -> bool:
        info = read_claim(self.path)
        return info is not None and info.get("token") == self.token

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self.owned():
            with suppress(FileNotFoundError):
                self.path.unlink()

    def __enter__(self) -> Claim:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _create(path: Path, unit: str) -> str | None:
    token = secrets.token_hex(8)
    info = {
        "unit": unit,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "token": token,
        "since": now_iso(),
    }
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return None
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps(info))
        f.flush()
        os.fsync(f.fileno())
    return token


def try_claim(
    folder: Path, unit: str, stale_after: float = STALE_AFTER, heartbeat: float = HEARTBEAT
) -> Claim | None:
    """Claim ``unit`` (a file name) in ``folder``; None when a live owner holds it."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{unit}.json"
    token = _create(path, unit)
    if token is None and is_stale(path, stale_after):
        seen = read_claim(path) or {}
        aside = path.with_name(
            f".{path.name}.stale-{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(4)}"
        )
        try:
            os.rename(path, aside)
        except FileNotFoundError:
            return None  # another launch took it over first
        moved = read_claim(aside) or {}
        if moved.get("token") != seen.get("token"):  # a fresh claim slipped in: give it back
            with suppress(FileExistsError):
                os.link(aside, path)
            aside.unlink()
            return None
        aside.unlink()
        token = _create(path, unit)
    if token is None:
        return None
    return Claim(path, token, heartbeat).start()
