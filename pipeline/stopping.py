"""How a long command ends on SIGTERM, SIGINT or SIGUSR1 (what SLURM sends before it kills a job,
or with ``--signal``): at a resumable point, with one line on stderr saying what was saved and how
to resume, and exit status 128 + the signal (143 SIGTERM, 130 SIGINT, 138 SIGUSR1), so a batch
script can tell a clean stop from a finished run. A second SIGINT (Ctrl-C twice) stops at once."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import click

from ssondo_cache import lifecycle

F = TypeVar("F", bound=Callable[..., Any])


@contextmanager
def stop_cleanly(command: str, resume: str = "run the same command again") -> Iterator[None]:
    """Run the body of ``ssondo COMMAND`` under ``lifecycle.stop_on_signals``."""
    with lifecycle.stop_on_signals():
        try:
            yield
        except lifecycle.Stopped as stop:
            click.echo(
                f"ssondo {command}: stopped by {stop.signal.name}: {stop.saved}; to resume, {resume}",
                err=True,
            )
            raise SystemExit(stop.exit_code) from None


def stops_cleanly(command: str, resume: str = "run the same command again") -> Callable[[F], F]:
    """Decorator form of ``stop_cleanly``, innermost on a click command's function."""

    def decorate(fn: F) -> F:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with stop_cleanly(command, resume):
                return fn(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate
