"""The `ssondo` command group. Subcommands load lazily, so `ssondo --help` and
`ssondo pack` don't pay for importing torch models they never use.

Errors end here, in one place (``one_line``): a known fault (``ssondo_cache.errors.SsondoError``,
a refused input as ValueError, an OSError) is printed as one line (what failed, which file, why,
what next) with exit status 1. Anything else is a bug and keeps its traceback, as does every error
under ``--debug`` or SSONDO_DEBUG=1."""

from __future__ import annotations

import errno
import importlib
import os
import re

import click

from ssondo_cache.errors import DISK_FULL, SsondoError, disk_full

# command name -> "module:attribute" of a click command
COMMANDS: dict[str, str] = {
    "pack": "pipeline.commands.pack:pack",
    "demo-data": "pipeline.commands.demo_data:demo_data",
    "extract": "pipeline.commands.extract:extract",
    "cache": "pipeline.commands.cache:cache",
    "teachers": "pipeline.commands.teachers:teachers",
    "cluster": "pipeline.commands.cluster:cluster",
    "train": "pipeline.commands.train:train",
    "pretrain": "pipeline.commands.pretrain:pretrain",
    "eval": "pipeline.commands.evaluate:evaluate",
    "export": "pipeline.commands.export:export",
    "ablate": "pipeline.commands.ablate:ablate",
    "demo": "pipeline.commands.demo:demo",
}


KNOWN: tuple[type[BaseException], ...] = (SsondoError, ValueError, OSError)
_WORKER = re.compile(r"^Caught \w+ in DataLoader worker process \d+\.\nOriginal Traceback", re.S)
_LAST_LINE = re.compile(r"^[\w.]+: (.+)$")


def _unwrap(text: str) -> str:
    """The original message of an exception re-raised from a DataLoader worker (torch puts the
    worker's whole traceback in the message; its last line is ``module.Type: message``)."""
    if not _WORKER.match(text):
        return text
    last = text.rstrip().splitlines()[-1]
    m = _LAST_LINE.match(last)
    return m.group(1) if m else last


def one_line(err: BaseException) -> str | None:
    """The one line for a known fault, None for anything else (a bug: it keeps its traceback)."""
    if not isinstance(err, KNOWN):
        return None
    if isinstance(err, OSError) and not isinstance(err, SsondoError):
        if err.errno in DISK_FULL and err.filename:
            return str(disk_full(err.filename, "file", "run the same command again"))
        if err.filename and err.strerror:  # a bare OSError names the file only in its attributes
            return f"{err.strerror}: {err.filename}" + (
                "" if err.errno != errno.EACCES else " (check its permissions)"
            )
    text = _unwrap(str(err)).strip()
    return " ".join(text.split("\n")) if text else type(err).__name__


def debugging(ctx: click.Context | None = None) -> bool:
    return os.environ.get("SSONDO_DEBUG", "") not in ("", "0") or bool(
        ctx is not None and ctx.find_root().params.get("debug")
    )


class LazyGroup(click.Group):
    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except click.ClickException as err:  # a command's own refusal: one line already, or a worker's
            if debugging(ctx) and err.__cause__ is not None:
                raise err.__cause__ from None
            err.message = _unwrap(err.message)
            raise
        except Exception as err:
            line = one_line(err)
            if line is None or debugging(ctx):
                raise
            raise click.ClickException(line) from err

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(name for name in COMMANDS if self._load(name) is not None)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        return self._load(name)

    @staticmethod
    def _load(name: str) -> click.Command | None:
        target = COMMANDS.get(name)
        if target is None:
            return None
        module_name, attr = target.split(":")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as err:
            if err.name == module_name:  # that stage is not built in this version
                return None
            raise
        return getattr(module, attr)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.version_option(package_name="ssondo-pipeline", prog_name="ssondo")
@click.option("--debug", is_flag=True, help="Show the full traceback of an error (also: SSONDO_DEBUG=1).")
def main(debug: bool) -> None:
    """ssondo: distil big audio foundation models into small, fast students.

    Stages, in order: pack -> extract -> cluster -> train -> eval -> export.
    `ssondo demo` runs them all on the embedded demo corpus.
    """


if __name__ == "__main__":
    main()
