"""`ssondo teachers`: list the registered teachers, describe one."""

from __future__ import annotations

import json

import click

from pipeline.commands.options import key_values


@click.group()
def teachers() -> None:
    """Teachers: registry names, hear:<module> (HEAR API) or py:<module>:<callable> (factory)."""


@teachers.command("list")
def list_teachers() -> None:
    """Print the registered teacher names, one per line."""
    from ssondo_cache.teachers import TEACHERS

    for name in TEACHERS.names():
        click.echo(name)


@teachers.command("info")
@click.argument("spec")
@click.option(
    "--checkpoint",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="Checkpoint file of the teacher (none: the teacher's default, e.g. packaged weights).",
)
@click.option(
    "--option",
    "-o",
    "options",
    multiple=True,
    metavar="KEY=VALUE",
    help="Build option passed to the teacher (repeatable), e.g. -o inference_type=fast.",
)
def info(spec: str, checkpoint: str | None, options: tuple[str, ...]) -> None:
    """Build teacher SPEC on the CPU and print what it is (id, rate, dims, front-end) as JSON."""
    from ssondo_cache.teachers import teacher_info

    try:
        facts = teacher_info(spec, checkpoint=checkpoint, **key_values(options))
    except (ValueError, KeyError, TypeError, FileNotFoundError, RuntimeError) as err:
        raise click.ClickException(str(err).strip('"')) from err
    click.echo(json.dumps(facts, indent=2))
