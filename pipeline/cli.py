"""The `ssondo` command group. Subcommands load lazily, so `ssondo --help` and
`ssondo pack` don't pay for importing torch models they never use."""

from __future__ import annotations

import importlib

import click

# command name -> "module:attribute" of a click command
COMMANDS: dict[str, str] = {
    "pack": "pipeline.commands.pack:pack",
    "demo-data": "pipeline.commands.demo_data:demo_data",
    "extract": "pipeline.commands.extract:extract",
    "cache": "pipeline.commands.cache:cache",
    "teachers": "pipeline.commands.teachers:teachers",
    "cluster": "pipeline.commands.cluster:cluster",
    "train": "pipeline.commands.train:train",
    "eval": "pipeline.commands.evaluate:evaluate",
    "export": "pipeline.commands.export:export",
    "ablate": "pipeline.commands.ablate:ablate",
    "demo": "pipeline.commands.demo:demo",
}


class LazyGroup(click.Group):
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
def main() -> None:
    """ssondo: distil big audio foundation models into small, fast students.

    Stages, in order: pack -> extract -> cluster -> train -> eval -> export.
    `ssondo demo` runs them all on the embedded demo corpus.
    """


if __name__ == "__main__":
    main()
